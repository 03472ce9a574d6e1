//! The outbox dispatcher: delivers due notifications, retries with backoff, and keeps the
//! ones that cannot be delivered, visible as failed.

use chrono::Duration;

use crate::{Engine, EngineError, Event, EventLog};

/// Wait before the next delivery attempt: 1 min, 2 min, 4 min, … at most an hour.
fn retry_backoff(attempts: u32) -> Duration {
    Duration::minutes(1_i64 << attempts.min(6)).min(Duration::hours(1))
}

impl Engine {
    /// Deliver every notification due now.
    pub async fn dispatch_outbox(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        for n in self.store.due_notifications(now, 100).await? {
            match self.outbox.deliver(&n) {
                Ok(path) => {
                    self.store.mark_delivered(n.id, now).await?;
                    log.push(Event::NotificationDelivered {
                        at: now,
                        subject: n.subject.clone(),
                        path: path.display().to_string(),
                    });
                }
                Err(error) => {
                    let attempts = n.attempts + 1;
                    let retry_at = (attempts < self.config.max_delivery_attempts)
                        .then(|| now + retry_backoff(attempts));
                    self.store
                        .mark_attempt_failed(n.id, &error.to_string(), retry_at)
                        .await?;
                    tracing::warn!(notification = %n.id, attempts, %error, "notification delivery failed");
                    log.push(Event::NotificationFailed {
                        at: now,
                        subject: n.subject.clone(),
                        error: error.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
