//! The scheduler beside the HTTP server, supervised: a tick that fails or panics is logged,
//! counted in `/metrics` and tried again on the next interval, and `/readyz` says so when
//! no tick has completed for a few intervals — the process never keeps answering "ready"
//! with a dead scheduler.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use gapless_engine::{EngineError, EventLog};

/// How many intervals may pass without a completed tick before the process is not ready.
const MISSED_TICKS: u32 = 3;
/// Slack on top, for a slow tick.
const GRACE: Duration = Duration::from_secs(60);

/// What the supervised scheduler reports about itself.
#[derive(Debug)]
pub struct SchedulerHealth {
    every: Duration,
    grace: Duration,
    started: Instant,
    last_completed: Mutex<Option<Instant>>,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
}

impl SchedulerHealth {
    pub fn new(every: Duration) -> Self {
        Self::with_grace(every, GRACE)
    }

    /// With `grace` on top of the missed intervals instead of a minute.
    pub fn with_grace(every: Duration, grace: Duration) -> Self {
        Self {
            every,
            grace,
            started: Instant::now(),
            last_completed: Mutex::new(None),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        }
    }

    fn tick_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Ticks completed, failed (an error), panicked.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.completed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.panicked.load(Ordering::Relaxed),
        )
    }

    /// Ok while a tick completed within the last few intervals (or the process is younger
    /// than that); otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        let allowed = self
            .every
            .saturating_mul(MISSED_TICKS)
            .saturating_add(self.grace);
        let since = self
            .last_completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or(self.started);
        let quiet = since.elapsed();
        if quiet <= allowed {
            return Ok(());
        }
        let (_, failed, panicked) = self.counts();
        Err(format!(
            "no scheduler tick has completed for {}s ({failed} failed, {panicked} panicked)",
            quiet.as_secs()
        ))
    }
}

/// Run `tick` every `every` until `stop` changes, whatever each tick does: an error or a
/// panic is logged and counted, and the next tick runs on time.
pub async fn supervise<F, Fut>(
    health: &SchedulerHealth,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<EventLog, EngineError>>,
{
    loop {
        match AssertUnwindSafe(tick()).catch_unwind().await {
            Ok(Ok(log)) => {
                for event in &log.events {
                    tracing::info!(event = %event.line(), "tick");
                }
                health.tick_completed();
            }
            Ok(Err(error)) => {
                health.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "scheduler tick failed; trying again next interval");
            }
            Err(panic) => {
                health.panicked.fetch_add(1, Ordering::Relaxed);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(panic = %what, "scheduler tick panicked; trying again next interval");
            }
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(health.every) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tick_that_panics_or_fails_is_counted_and_the_next_one_runs() {
        let health = SchedulerHealth::new(Duration::from_millis(5));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut n = 0;
        supervise(&health, stop, || {
            n += 1;
            let round = n;
            let stop_tx = stop_tx.clone();
            async move {
                match round {
                    1 => panic!("a date overflowed"),
                    2 => Err(EngineError::Invalid("the store went away".into())),
                    _ => {
                        let _ = stop_tx.send(true);
                        Ok(EventLog::default())
                    }
                }
            }
        })
        .await;
        assert_eq!(health.counts(), (1, 1, 1));
        assert!(health.ready().is_ok());
    }

    #[test]
    fn not_ready_when_no_tick_completed_for_a_few_intervals() {
        let health = SchedulerHealth::with_grace(Duration::from_millis(1), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(20));
        health.panicked.fetch_add(4, Ordering::Relaxed);
        let why = health.ready().unwrap_err();
        assert!(why.contains("4 panicked"), "{why}");
        health.tick_completed();
        assert!(health.ready().is_ok());
    }
}
