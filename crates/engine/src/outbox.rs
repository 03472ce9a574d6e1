//! The outbox dispatcher: delivers due notifications, retries with backoff, and keeps the
//! ones that cannot be delivered, visible as failed.

use std::collections::HashMap;

use chrono::Duration;

use futures_util::StreamExt;
use gapless_core::{Delivery, Notification, NotificationId, NotificationKind};
use gapless_notify::{Channel, DeliveryError};

use crate::{Engine, EngineError, Event, EventLog};

/// Wait before the next delivery attempt: 1 min, 2 min, 4 min, … at most an hour.
fn retry_backoff(attempts: u32) -> Duration {
    Duration::minutes(1_i64 << attempts.min(6)).min(Duration::hours(1))
}

impl Engine {
    /// Until `stop` turns true: deliver the outbox as soon as a message is committed to it
    /// (a failure mail leaves within the round trip to the channel, not at the end of the
    /// tick that wrote it). The tick's own outbox phase still delivers retries that come
    /// due; both take the same claims, so nothing is sent twice.
    pub async fn deliver_as_written(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = self.store.outbox_written() => {}
                _ = stop.changed() => return,
            }
            let mut log = EventLog::default();
            if let Err(error) = self.dispatch_outbox(&mut log).await {
                tracing::warn!(%error, "delivering new messages failed; the next tick tries again");
            }
            for event in &log.events {
                tracing::info!(event = %event.line(), "outbox");
            }
        }
    }

    /// Deliver every notification due now.
    pub async fn dispatch_outbox(&self, log: &mut EventLog) -> Result<(), EngineError> {
        // One dispatcher at a time in this process (the scheduler, a back-fill after a
        // reauthorization). Across instances, each due row is claimed by one of them: it is
        // hidden from the others while it is delivered, and due again if its holder dies.
        let _single = self.dispatching.lock().await;
        // As many as are delivered at once: none waits here while its claim runs out.
        let batch = i64::try_from(self.config.delivery_concurrency.max(1)).unwrap_or(16);
        loop {
            // Each batch's claims last from when they are taken.
            let now = self.clock.now();
            let claimed = self
                .store
                .claim_due_notifications(&self.instance, now, self.config.claim_ttl, batch)
                .await?;
            if claimed.is_empty() {
                break;
            }
            let tokens: HashMap<NotificationId, i64> = claimed
                .iter()
                .map(|c| (c.notification.id, c.token))
                .collect();
            let due: Vec<Notification> = claimed.into_iter().map(|c| c.notification).collect();
            let mut progressed = false;
            // Deliveries run concurrently (one SMTP round trip waits on the network); the
            // outcomes are recorded as they complete.
            let fallback = Channel::File(self.outbox.clone());
            let mut outcomes =
                futures_util::stream::iter(due.into_iter().map(|n| self.deliver_one(n, &fallback)))
                    .buffer_unordered(self.config.delivery_concurrency.max(1))
                    // What completed meanwhile is recorded together: one round trip for every
                    // message the channel accepted since the last record, not one each.
                    .ready_chunks(self.config.delivery_concurrency.max(1));
            while let Some(completed) = outcomes.next().await {
                progressed |= self.record_outcomes(completed, &tokens, now, log).await?;
            }
            drop(outcomes);
            if !progressed {
                break;
            }
        }
        self.check_backlog(log).await
    }

    /// One attempt to hand `n` to its channel (`fallback` for the fallback outbox); the
    /// sealed body is opened only to be handed over.
    async fn deliver_one(
        &self,
        n: Notification,
        fallback: &Channel,
    ) -> (Notification, Result<String, DeliveryError>) {
        let channel = match n.channel.as_str() {
            "fallback" => Some(fallback),
            name => self.channels.get(name),
        };
        let result = match (channel, self.open_message(&n)) {
            (_, Err(error)) => Err(DeliveryError::Permanent(format!(
                "the message body cannot be opened: {error}"
            ))),
            (Some(channel), Ok(message)) => channel.deliver(&message).await,
            (None, Ok(_)) => Err(DeliveryError::Permanent(format!(
                "channel {:?} is not configured",
                n.channel
            ))),
        };
        (n, result)
    }

    /// Record attempts that completed together (`tokens`: the claim of each): what the
    /// channel accepted first, in one write, so that a failure to record a refusal cannot
    /// leave an accepted message to be sent again. Whether any was delivered.
    async fn record_outcomes(
        &self,
        completed: Vec<(Notification, Result<String, DeliveryError>)>,
        tokens: &HashMap<NotificationId, i64>,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) -> Result<bool, EngineError> {
        let (accepted, refused): (Vec<_>, Vec<_>) = completed
            .into_iter()
            .partition(|(_, result)| result.is_ok());
        let delivered: Vec<(NotificationId, Option<i64>)> = accepted
            .iter()
            .map(|(n, _)| (n.id, tokens.get(&n.id).copied()))
            .collect();
        for id in self.store.mark_delivered_all(&delivered, now).await? {
            tracing::warn!(notification = %id, "delivered after its claim ran out: another instance may deliver it too");
        }
        for (n, result) in accepted {
            if let Ok(receipt) = result {
                log.push(Event::NotificationDelivered {
                    at: now,
                    subject: n.subject.clone(),
                    path: format!("{}: {receipt}", n.channel),
                });
            }
        }
        for (n, result) in refused {
            if let Err(error) = result {
                self.record_failed_attempt(&n, tokens, error, now, log)
                    .await?;
            }
        }
        Ok(!delivered.is_empty())
    }

    /// A delivery attempt failed: retried with backoff while attempts remain and the error
    /// is one to retry, else failed for good; either way visible.
    async fn record_failed_attempt(
        &self,
        n: &Notification,
        tokens: &HashMap<NotificationId, i64>,
        error: DeliveryError,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let attempts = n.delivery.attempts + 1;
        let retry_at = match &error {
            DeliveryError::Retry(_) if attempts < self.config.max_delivery_attempts => {
                Some(now + retry_backoff(attempts))
            }
            _ => None,
        };
        self.store
            .mark_attempt_failed_under(
                n.id,
                tokens.get(&n.id).copied(),
                &error.to_string(),
                retry_at,
            )
            .await?;
        tracing::warn!(notification = %n.id, channel = %n.channel, attempts, %error, "notification delivery failed");
        log.push(Event::NotificationFailed {
            at: now,
            subject: n.subject.clone(),
            error: format!("{}: {error}", n.channel),
        });
        Ok(())
    }

    /// A pending message older than the threshold is itself an alarm: logged, and written
    /// once per hour to the fallback channel (the file outbox), which needs no network.
    async fn check_backlog(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        // After every delivery round: the pending rows only, never the whole outbox.
        let (pending, oldest) = self.store.pending_outbox().await?;
        let Some(oldest) = oldest else {
            return Ok(());
        };
        if now - oldest < self.config.backlog_alarm {
            return Ok(());
        }
        let key = format!("outbox:backlog:{}", now.format("%Y%m%d%H"));
        if self.store.notification_exists_with_prefix(&key).await? {
            return Ok(());
        }
        tracing::error!(pending = pending, %oldest, "notification backlog");
        let text = format!(
            "{} notification(s) are waiting to be delivered; the oldest since {}.\nCheck the channels' settings and `gapless notifications list`.\n",
            pending,
            oldest.format("%Y-%m-%d %H:%M UTC")
        );
        let alarm = Notification {
            id: NotificationId::new(),
            incident: None,
            kind: NotificationKind::OutboxBacklog,
            dedupe_key: key.clone(),
            channel: "fallback".into(),
            recipients: self.config.fallback_recipients.clone(),
            subject: format!("gapless: {} notification(s) not delivered", pending),
            body_html: format!("<p>{}</p>", text.replace('\n', "<br>")),
            body_text: text,
            message_id: format!("<{}@gapless.local>", key.replace(':', ".")),
            created_at: now,
            delivery: Delivery::pending(now),
        };
        self.store.enqueue_notification(&alarm).await?;
        log.push(Event::OutboxBacklog {
            at: now,
            oldest_pending: oldest,
            pending,
        });
        let fallback = Channel::File(self.outbox.clone());
        if fallback.deliver(&alarm).await.is_ok() {
            self.store.mark_delivered(alarm.id, now).await?;
        }
        Ok(())
    }
}
