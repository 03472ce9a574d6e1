//! Gaps and on-demand backfill of a pipeline.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gapless_core::{
    GapRange, LedgerEntry, MissingReason, Pipeline, Window, WindowState,
    ledger::{PlannedWindow, Purpose, chunk_windows, gaps},
};
use serde::Serialize;

use crate::{Engine, EngineError, EventLog, missing::LedgerMap};

/// What a backfill of a date range will do.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillPlan {
    pub pipeline: String,
    /// Windows to pull, the ones closest to leaving the lookback first.
    pub windows: Vec<PlannedWindow>,
    /// Windows of the range the provider no longer serves.
    pub unrecoverable: Vec<(String, Window)>,
    /// Requests to the provider, estimated from the rows each window had when last loaded
    /// (one page per window when unknown).
    pub estimated_requests: u64,
}

/// What a backfill did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillOutcome {
    pub loaded: usize,
    /// Windows not loaded because the run stopped at a failure (recorded in the ledger).
    pub not_loaded: usize,
    pub stopped_because: Option<String>,
}

/// The most windows (per stream) one backfill plans: bounds the plan's memory whatever
/// range is asked for (more than 27 years of days, 11 years of hours).
const MAX_BACKFILL_WINDOWS: i64 = 100_000;

/// Marks a pipeline's back-fill as running until dropped.
struct BackfillGuard {
    running: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<gapless_core::PipelineId>>>,
    pipeline: gapless_core::PipelineId,
}

impl BackfillGuard {
    fn take(
        running: &std::sync::Arc<
            std::sync::Mutex<std::collections::HashSet<gapless_core::PipelineId>>,
        >,
        pipeline: gapless_core::PipelineId,
    ) -> Option<Self> {
        let inserted = running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pipeline);
        inserted.then(|| Self {
            running: running.clone(),
            pipeline,
        })
    }
}

impl Drop for BackfillGuard {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.pipeline);
    }
}

/// Rows per page the connectors ask for (used for request estimates).
const PAGE_ROWS: u64 = 100;

impl Engine {
    /// The gaps of a pipeline: missing, spooled and lost ranges from the ledger, plus
    /// complete windows not synced yet, each with the date until which it is recoverable.
    pub async fn gaps(&self, pipeline: &Pipeline) -> Result<Vec<GapRange>, EngineError> {
        let now = self.clock.now();
        let descriptor = self.source_of(pipeline).await?;
        let ledger = self.store.ledger(pipeline.id).await?;
        let known: std::collections::HashSet<(String, DateTime<Utc>)> = ledger
            .iter()
            .map(|e| (e.stream.clone(), e.window.start))
            .collect();
        let mut out = Vec::new();
        for stream in &pipeline.streams {
            let retention = descriptor.stream(stream).and_then(|s| s.retention);
            let mut entries: Vec<LedgerEntry> = ledger
                .iter()
                .filter(|e| &e.stream == stream)
                .cloned()
                .collect();
            for window in pipeline.grid().complete_windows(pipeline.start, now) {
                if !known.contains(&(stream.clone(), window.start)) {
                    entries.push(LedgerEntry {
                        pipeline: pipeline.id,
                        stream: stream.clone(),
                        window,
                        state: WindowState::Missing {
                            reason: MissingReason::Transient {
                                detail: "not synced yet".into(),
                            },
                            since: now,
                        },
                        attempts: 0,
                        updated_at: now,
                    });
                }
            }
            out.extend(gaps(&entries, retention));
        }
        Ok(out)
    }

    /// Is a back-fill of `pipeline` running in this instance?
    pub fn backfill_running(&self, pipeline: gapless_core::PipelineId) -> bool {
        self.backfills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&pipeline)
    }

    /// A missing or lost window's reason in words for people: the identity by its label,
    /// times to the second.
    pub async fn reason_words(&self, reason: &MissingReason) -> String {
        let label = match reason.identity() {
            Some(id) => self.store.identity(id).await.ok().map(|i| i.label),
            None => None,
        };
        reason.describe_with(label.as_deref())
    }

    /// Plan a backfill of `[from, to)`: every window of the range is pulled again (loaded
    /// ones too), except those past the provider's lookback, which are reported.
    pub async fn plan_backfill(
        &self,
        pipeline: &Pipeline,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BackfillPlan, EngineError> {
        check_backfill_range(pipeline, from, to)?;
        let now = self.clock.now();
        let descriptor = self.source_of(pipeline).await?;
        let ledger = self.store.ledger(pipeline.id).await?;
        let mut plan = BackfillPlan {
            pipeline: pipeline.name.clone(),
            windows: vec![],
            unrecoverable: vec![],
            estimated_requests: 0,
        };
        let first = pipeline.grid().containing(from).start;
        for stream in &pipeline.streams {
            let retention = descriptor.stream(stream).and_then(|s| s.retention);
            for window in pipeline.grid().complete_windows(first, now.min(to)) {
                if window.start >= to {
                    break;
                }
                let deadline = retention.and_then(|r| r.deadline(window));
                if deadline.is_some_and(|d| d <= now) {
                    plan.unrecoverable.push((stream.clone(), window));
                    continue;
                }
                plan.windows.push(PlannedWindow {
                    stream: stream.clone(),
                    window,
                    purpose: Purpose::Backfill,
                    deadline,
                });
            }
        }
        if plan.windows.is_empty() {
            return Err(nothing_to_backfill(pipeline, &descriptor, &plan, now));
        }
        plan.windows
            .sort_by_key(|w| (w.deadline, w.window.start, w.stream.clone()));
        plan.estimated_requests = estimated_requests(pipeline, &descriptor, &plan.windows, &ledger);
        Ok(plan)
    }

    /// Run a planned backfill window by window; `progress(done, total)` after each. Stops
    /// at the first window that does not load (the failure is recorded like any other).
    pub async fn backfill(
        &self,
        pipeline: &Pipeline,
        plan: &BackfillPlan,
        log: &mut EventLog,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<BackfillOutcome, EngineError> {
        // The same back-fill asked for twice (a double click, a retried API call) runs once.
        let Some(_running) = BackfillGuard::take(&self.backfills, pipeline.id) else {
            return Err(EngineError::Busy(format!(
                "a back-fill of {} is running; wait for it to finish",
                pipeline.name
            )));
        };
        // The ledger is read once: each step only writes its own window.
        let by_key: LedgerMap = self.ledger_map(pipeline.id).await?;
        // The scheduler's runs of this pipeline wait meanwhile: one task loads a window.
        let _running = self.pipeline_lock(pipeline.id).await;
        if !self.claim_now(pipeline.id).await? {
            return Err(EngineError::Busy(format!(
                "another instance is running {} now; start the back-fill again when it is done",
                pipeline.name
            )));
        }
        let result = self
            .backfill_claimed(pipeline, plan, log, &mut progress, by_key)
            .await;
        if !matches!(result, Err(EngineError::Crashed(_))) {
            self.release_claim(pipeline.id).await?;
        }
        result
    }

    /// The back-fill's windows, under this instance's claim on the pipeline.
    async fn backfill_claimed(
        &self,
        pipeline: &Pipeline,
        plan: &BackfillPlan,
        log: &mut EventLog,
        progress: &mut impl FnMut(usize, usize),
        by_key: LedgerMap,
    ) -> Result<BackfillOutcome, EngineError> {
        let total = plan.windows.len();
        let mut outcome = BackfillOutcome::default();
        let descriptor = self.source_of(pipeline).await?;
        let mut done = 0;
        for group in request_groups(pipeline, &descriptor, &plan.windows) {
            let items: Vec<PlannedWindow> =
                group.iter().map(|&i| plan.windows[i].clone()).collect();
            let before = log.events.len();
            let loaded = self
                .sync_planned(pipeline, None, &items, &by_key, vec![], log)
                .await?
                .loaded;
            done += loaded;
            outcome.loaded += loaded;
            progress(done, total);
            if loaded == items.len() {
                continue;
            }
            outcome.not_loaded = total - done;
            outcome.stopped_because = Some(
                log.events[before..]
                    .iter()
                    .map(|e| e.line())
                    .next_back()
                    .unwrap_or_else(|| "the window was not loaded".into()),
            );
            break;
        }
        Ok(outcome)
    }
}

/// The plan's windows grouped into requests as the provider allows (see
/// [`chunk_windows`]).
fn request_groups(
    pipeline: &Pipeline,
    descriptor: &gapless_providers::ProviderDescriptor,
    windows: &[PlannedWindow],
) -> Vec<Vec<usize>> {
    chunk_windows(windows, |stream| {
        descriptor
            .stream(stream)
            .and_then(|s| s.request_span(pipeline.window.seconds()))
    })
}

impl Engine {
    /// What an outage of `identity` from `start` for `length` would do to every pipeline
    /// that depends on it: (pipeline, stream, forecast).
    pub async fn simulate_outage(
        &self,
        identity: gapless_core::IdentityId,
        start: DateTime<Utc>,
        length: chrono::Duration,
    ) -> Result<Vec<(String, String, gapless_core::ledger::OutageForecast)>, EngineError> {
        let mut out = Vec::new();
        for pipeline in self.store.pipelines_using(identity).await? {
            let descriptor = self.source_of(&pipeline).await?;
            let ledger = self.store.ledger(pipeline.id).await?;
            for stream in &pipeline.streams {
                let retention = descriptor.stream(stream).and_then(|s| s.retention);
                out.push((
                    pipeline.name.clone(),
                    stream.clone(),
                    gapless_core::ledger::simulate_outage(
                        &pipeline, stream, retention, &ledger, start, length,
                    ),
                ));
            }
        }
        Ok(out)
    }
}

/// A backfill range is forward and not longer than [`MAX_BACKFILL_WINDOWS`] windows.
fn check_backfill_range(
    pipeline: &Pipeline,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), EngineError> {
    if from >= to {
        return Err(EngineError::Invalid(format!(
            "the range is reversed or empty: from {} is not before to {}",
            from.format("%Y-%m-%d"),
            to.format("%Y-%m-%d")
        )));
    }
    let windows = (to - from).num_seconds() / pipeline.window.seconds().max(1);
    if windows > MAX_BACKFILL_WINDOWS {
        return Err(EngineError::Invalid(format!(
            "the range spans about {windows} windows; one backfill takes at most {MAX_BACKFILL_WINDOWS} (split the range)"
        )));
    }
    Ok(())
}

/// Why a plan holds no window to pull: every window of the range is past the lookback
/// (with the oldest day still served), or the range holds no complete window.
fn nothing_to_backfill(
    pipeline: &Pipeline,
    descriptor: &gapless_providers::ProviderDescriptor,
    plan: &BackfillPlan,
    now: DateTime<Utc>,
) -> EngineError {
    if plan.unrecoverable.is_empty() {
        return EngineError::Invalid(format!(
            "no complete window of {} lies in the range",
            pipeline.name
        ));
    }
    let oldest = pipeline
        .streams
        .iter()
        .filter_map(|s| descriptor.stream(s).and_then(|d| d.retention))
        .map(|r| r.lookback())
        .min()
        .and_then(|l| now.checked_sub_signed(l))
        .map(|oldest| oldest.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    EngineError::Invalid(format!(
        "every window of the range is past the provider's lookback: nothing can be recovered (the oldest day still served is {oldest})"
    ))
}

/// One request series per group of windows the provider serves at once; a window with
/// rows known from the ledger needs as many pages as last time.
fn estimated_requests(
    pipeline: &Pipeline,
    descriptor: &gapless_providers::ProviderDescriptor,
    windows: &[PlannedWindow],
    ledger: &[LedgerEntry],
) -> u64 {
    let rows: HashMap<(&str, DateTime<Utc>), u64> = ledger
        .iter()
        .filter_map(|e| match e.state {
            WindowState::Loaded { rows, .. } => Some(((e.stream.as_str(), e.window.start), rows)),
            _ => None,
        })
        .collect();
    request_groups(pipeline, descriptor, windows)
        .iter()
        .map(|group| {
            let known: u64 = group
                .iter()
                .filter_map(|&i| {
                    let w = &windows[i];
                    rows.get(&(w.stream.as_str(), w.window.start)).copied()
                })
                .sum();
            known.div_ceil(PAGE_ROWS).max(1)
        })
        .sum()
}
