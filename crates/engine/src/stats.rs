//! Counters of what the engine asked of providers, for metrics. Latencies are wall time of
//! the calls (measured, never used to decide anything).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

/// Counts and total latency of provider calls by kind.
#[derive(Debug, Default)]
pub struct Stats {
    refreshes: Call,
    probes: Call,
    extractions: Call,
}

#[derive(Debug, Default)]
struct Call {
    count: AtomicU64,
    failed: AtomicU64,
    micros: AtomicU64,
}

/// One kind of call as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallStats {
    pub count: u64,
    pub failed: u64,
    pub seconds_sum: f64,
}

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Refresh,
    Probe,
    Extract,
}

impl Stats {
    fn call(&self, kind: CallKind) -> &Call {
        match kind {
            CallKind::Refresh => &self.refreshes,
            CallKind::Probe => &self.probes,
            CallKind::Extract => &self.extractions,
        }
    }

    /// Record a call that started at `started` and succeeded or not.
    pub(crate) fn record(&self, kind: CallKind, started: Instant, ok: bool) {
        let call = self.call(kind);
        call.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            call.failed.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        call.micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn read(&self, kind: CallKind) -> CallStats {
        let call = self.call(kind);
        CallStats {
            count: call.count.load(Ordering::Relaxed),
            failed: call.failed.load(Ordering::Relaxed),
            seconds_sum: call.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}
