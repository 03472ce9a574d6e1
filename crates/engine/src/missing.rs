//! Windows recorded as missing: why (from the identity's health), and the ledger entries
//! that say so. Read by the run (`sync`) and by failure handling (`failures`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gapless_core::{
    Health, IdentityId, LedgerEntry, MissingReason, Pipeline, WindowState,
    ledger::{PlannedWindow, Purpose},
};

use crate::{Engine, EngineError, Event, EventLog, describe_failure};

/// A pipeline's ledger, found by stream and window start (without building a key to look
/// one up).
#[derive(Debug, Default)]
pub(crate) struct LedgerMap(HashMap<String, HashMap<DateTime<Utc>, LedgerEntry>>);

impl LedgerMap {
    /// The entry of `stream`'s window that starts at `start`.
    pub(crate) fn get(&self, stream: &str, start: DateTime<Utc>) -> Option<&LedgerEntry> {
        self.0.get(stream)?.get(&start)
    }

    /// `entry` in place of its window's entry, if there was one.
    pub(crate) fn insert(&mut self, entry: LedgerEntry) {
        self.0
            .entry(entry.stream.clone())
            .or_default()
            .insert(entry.window.start, entry);
    }

    /// Every entry, in no particular order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.0.values().flat_map(HashMap::values)
    }

    /// Every entry, in no particular order.
    pub(crate) fn into_entries(self) -> impl Iterator<Item = LedgerEntry> {
        self.0.into_values().flat_map(HashMap::into_values)
    }
}

impl FromIterator<LedgerEntry> for LedgerMap {
    fn from_iter<I: IntoIterator<Item = LedgerEntry>>(entries: I) -> Self {
        let mut map = Self::default();
        for entry in entries {
            map.insert(entry);
        }
        map
    }
}

pub(crate) fn missing_reason(health: &Health, identity: IdentityId) -> MissingReason {
    match health {
        Health::NeedsReauth { failure, since } => MissingReason::IdentityBroken {
            identity,
            cause: failure.cause,
            since: *since,
        },
        Health::Degraded { last, .. } => MissingReason::Transient {
            detail: format!("waiting to retry after {}", describe_failure(last)),
        },
        Health::Paused { reason, .. } => MissingReason::Transient {
            detail: format!("identity paused: {reason}"),
        },
        Health::Healthy | Health::Expiring { .. } => MissingReason::Transient {
            detail: "not attempted".into(),
        },
    }
}

fn same_reason_kind(a: &MissingReason, b: &MissingReason) -> bool {
    match (a, b) {
        (
            MissingReason::IdentityBroken {
                identity: x,
                since: s,
                ..
            },
            MissingReason::IdentityBroken {
                identity: y,
                since: t,
                ..
            },
        ) => x == y && s == t,
        (MissingReason::Transient { detail: x }, MissingReason::Transient { detail: y })
        | (
            MissingReason::DestinationDown { detail: x },
            MissingReason::DestinationDown { detail: y },
        ) => x == y,
        _ => false,
    }
}

/// Ledger entries recording `planned` windows as missing for `reason` (settle re-pulls
/// of loaded windows stay loaded; unchanged missing windows are not rewritten).
pub(crate) fn missing_entries(
    pipeline: &Pipeline,
    planned: &[PlannedWindow],
    by_key: &LedgerMap,
    reason: &MissingReason,
    identity_label: &str,
    now: DateTime<Utc>,
    log: &mut EventLog,
) -> Vec<LedgerEntry> {
    let mut out = Vec::new();
    for item in planned.iter().filter(|w| w.purpose != Purpose::Settle) {
        let previous = by_key.get(&item.stream, item.window.start);
        if let Some(WindowState::Missing { reason: old, .. }) = previous.map(|e| &e.state)
            && same_reason_kind(old, reason)
        {
            continue;
        }
        out.push(LedgerEntry {
            pipeline: pipeline.id,
            stream: item.stream.clone(),
            window: item.window,
            state: WindowState::Missing {
                reason: reason.clone(),
                since: now,
            },
            attempts: previous.map_or(0, |e| e.attempts),
            updated_at: now,
        });
        log.push(Event::WindowMissing {
            at: now,
            pipeline: pipeline.name.clone(),
            stream: item.stream.clone(),
            window: pipeline.grid().label(item.window),
            reason: reason.describe_with(Some(identity_label)),
        });
    }
    out
}

impl Engine {
    /// A pipeline's ledger by (stream, window start).
    pub(crate) async fn ledger_map(
        &self,
        pipeline: gapless_core::PipelineId,
    ) -> Result<LedgerMap, EngineError> {
        Ok(self.store.ledger(pipeline).await?.into_iter().collect())
    }
}
