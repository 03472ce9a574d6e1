//! Running pipelines: plan (pure), check the identity, keep the token fresh, extract, load,
//! and record every window's outcome. A failure that concerns the identity (authorization,
//! throttling, an outage) stops the run and is handled in `failures`; one that concerns the
//! windows of one request (past the provider's retention, an unusable answer) is recorded
//! for those windows and the run goes on (invariant 11).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use gapless_core::{
    FailedOperation, Failure, FailureCause, Health, HealthEvent, Identity, IdentityId, LedgerEntry,
    MissingReason, Pipeline, PipelineState, ReauthReason, ReportRange, Row, Value, Window,
    WindowGrid, WindowState,
    ledger::{
        PlannedWindow, PlanningLedger, Purpose, SettledHorizon, chunk_windows, plan_sync_from,
    },
};
use gapless_destinations::Destination;
use gapless_providers::{ProviderDescriptor, SourceConnector, StreamDescriptor};
use gapless_store::HealthChange;
use gapless_vault::Credential;

use crate::{
    Engine, EngineError, Event, EventLog, describe_failure,
    failures::{FailureContext, PendingWindows},
    missing::{LedgerMap, missing_entries, missing_reason},
    refresh::Fresh,
};

/// A pipeline's windows to sync now, its ledger, and the windows that passed the
/// provider's retention since the last plan (recorded by whoever carries the plan out).
pub(crate) struct PipelinePlan {
    /// The source identity as it was read for the plan.
    pub identity: Identity,
    pub windows: Vec<PlannedWindow>,
    pub by_key: LedgerMap,
    pub lost: Vec<LedgerEntry>,
}

/// Unusable answers in one run after which the provider counts as failing (transient): the
/// run stops instead of asking for every remaining window.
const MAX_BAD_ANSWERS: u32 = 3;

/// Split the rows of one request over the windows it covered (`items`, adjacent, in time
/// order) by the stream's day column; all to the one window when it covered one (checked by
/// the day column too when windows are whole days). A row dated outside the range is an
/// unusable answer, whoever answered it (the provider, or a spool file).
pub(crate) fn split_by_window(
    rows: Vec<Row>,
    items: &[PlannedWindow],
    stream: &StreamDescriptor,
    grid: &WindowGrid,
) -> Result<Vec<Vec<Row>>, Failure> {
    let day_column = stream
        .day_column
        .as_deref()
        .and_then(|name| stream.schema.columns.iter().position(|c| c.name == name));
    if items.len() <= 1 {
        if let (Some(item), Some(column), true) =
            (items.first(), day_column, grid.size.seconds() % 86_400 == 0)
        {
            for row in &rows {
                if let Some(Value::Date(day)) = row.get(column)
                    && !item.window_holds(grid.day_start(*day))
                {
                    return Err(Failure::new(FailureCause::BadAnswer)
                        .with_code("malformed_response")
                        .with_message(format!(
                            "a row for {day} is outside the {} asked for",
                            grid.label(item.window)
                        )));
                }
            }
        }
        return Ok(vec![rows]);
    }
    let column = day_column.ok_or_else(|| {
        Failure::new(FailureCause::BadAnswer)
            .with_code("no_day_column")
            .with_message("a request covering several windows needs the stream's day column")
    })?;
    let index: HashMap<DateTime<Utc>, usize> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.window.start, i))
        .collect();
    let mut out: Vec<Vec<Row>> = vec![Vec::new(); items.len()];
    for row in rows {
        let day = match row.get(column) {
            Some(Value::Date(day)) => *day,
            other => {
                return Err(Failure::new(FailureCause::BadAnswer)
                    .with_code("malformed_response")
                    .with_message(format!("a row's day column holds {other:?}, not a date")));
            }
        };
        let window = grid.containing(grid.day_start(day));
        let Some(&slot) = index.get(&window.start) else {
            return Err(Failure::new(FailureCause::BadAnswer)
                .with_code("malformed_response")
                .with_message(format!(
                    "the provider answered a row for {day}, outside the {} requested",
                    grid.label(Window::new(
                        items.first().map_or(window.start, |i| i.window.start),
                        items.last().map_or(window.end, |i| i.window.end),
                    ))
                )));
        };
        out[slot].push(row);
    }
    Ok(out)
}

/// How a run of planned windows ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// Every window was synced, spooled or recorded with its failure.
    Done,
    /// The upstream account's request budget was spent: the rest waits, unrecorded.
    Deferred,
    /// Another task of this instance is running the pipeline: nothing was done.
    Busy,
}

/// What a run of planned windows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    pub ran: Ran,
    /// Windows loaded into the destination (not spooled, not recorded missing).
    pub loaded: usize,
}

impl Synced {
    fn nothing(ran: Ran) -> Self {
        Self { ran, loaded: 0 }
    }
}

/// A request the provider refused: its windows (indexes into the run's plan, and the
/// windows themselves) and the classified failure.
struct Refused<'a> {
    group: Vec<usize>,
    items: &'a [PlannedWindow],
    failure: Failure,
}

/// What one run has already tried: the forced refresh a 401-like answer gets once, and
/// how many answers were unusable.
#[derive(Default)]
struct Tries {
    forced_refresh: bool,
    bad_answers: u32,
}

/// How the requests of a run went.
enum Requests {
    /// Every group was asked for and each window loaded, spooled or recorded.
    Completed,
    /// The run stopped early (an identity-level failure, the budget, a busy refresh).
    Stopped(Ran),
}

/// Why a credential that was refused counts as needing reauthorization.
pub(crate) fn refused_reason(credential: &Credential) -> ReauthReason {
    match credential {
        Credential::OAuth2 { .. } => ReauthReason::InvalidGrant,
        _ => ReauthReason::InvalidCredentials,
    }
}

/// One run of a pipeline's planned windows, once the identity and its credential are ready.
struct Run<'a> {
    pipeline: &'a Pipeline,
    identity: &'a Identity,
    connector: Arc<dyn SourceConnector>,
    descriptor: ProviderDescriptor,
    planned: Vec<PlannedWindow>,
    by_key: &'a LedgerMap,
    credential: Credential,
    destination: Option<Arc<dyn Destination>>,
    /// Windows the provider refused as past its retention, recorded (with their message)
    /// when the run ends.
    lost: Vec<LedgerEntry>,
    /// Windows loaded into the destination so far.
    loaded: usize,
}

impl Run<'_> {
    /// The windows of `groups`, for the record when a failure leaves them missing.
    fn windows_of<'g>(
        &self,
        groups: impl IntoIterator<Item = &'g Vec<usize>>,
    ) -> Vec<PlannedWindow> {
        groups
            .into_iter()
            .flatten()
            .map(|&i| self.planned[i].clone())
            .collect()
    }
}

/// A request's windows, the rows the provider answered for each (in order), and when the
/// answer came: what decides whether its windows are settled, however late they are
/// loaded.
struct Answered {
    items: Vec<PlannedWindow>,
    per_window: Vec<Vec<Row>>,
    read_at: DateTime<Utc>,
}

/// What a destination did with a request's windows (each by its place in the request).
#[derive(Default)]
struct Loads {
    /// Committed, with the rows now in each window.
    committed: Vec<(usize, u64)>,
    /// Not committed (failed, or not started after a failure), in order, with their rows.
    not_taken: Vec<(usize, Vec<Row>)>,
    /// The failure handled for the destination.
    trouble: Option<Failure>,
}

/// The ledger entry of `item`'s window, loaded at `now` with `rows` rows.
fn loaded_entry(
    pipeline: &Pipeline,
    item: &PlannedWindow,
    (read_at, now): (DateTime<Utc>, DateTime<Utc>),
    rows: u64,
    attempt: u32,
) -> LedgerEntry {
    LedgerEntry {
        pipeline: pipeline.id,
        stream: item.stream.clone(),
        window: item.window,
        state: WindowState::Loaded {
            at: read_at,
            rows,
            attempt,
        },
        attempts: attempt,
        updated_at: now,
    }
}

/// Whether `item`'s window was dropped from the spool for its age.
fn spool_expired(by_key: &LedgerMap, item: &PlannedWindow) -> bool {
    matches!(
        by_key
            .get(&item.stream, item.window.start)
            .map(|e| &e.state),
        Some(WindowState::Missing {
            reason: MissingReason::SpoolExpired { .. },
            ..
        })
    )
}

impl Engine {
    /// Run the pipelines that are due: claimed in batches through the due index (so a tick
    /// costs what is due, not what exists), run up to `concurrency` at once. One
    /// pipeline's error (a corrupt credential, a destination that cannot be opened) is
    /// reported and does not stop the others.
    pub(crate) async fn run_pipelines(&self, log: &mut EventLog) -> Result<(), EngineError> {
        // Claim only what can run now: the rest stays free for the other instances, and
        // no claim runs out while it waits in a queue here.
        let batch = i64::try_from(self.concurrency()).unwrap_or(16);
        let mut seen = HashSet::new();
        loop {
            // Each batch's claims last from when they are taken, however long the tick.
            let now = self.clock.now();
            let claims = self
                .store
                .claim_due_pipelines(&self.instance, now, self.config.claim_ttl, batch)
                .await?;
            let full = i64::try_from(claims.len()).unwrap_or(i64::MAX) >= batch;
            let mut fresh = Vec::new();
            let mut again = Vec::new();
            for claimed in claims {
                // Run once per tick: one due again at once (deferred by the budget) waits
                // for the next tick.
                if seen.insert(claimed.claim.pipeline) {
                    self.hold(claimed.claim);
                    fresh.push(claimed.pipeline);
                } else {
                    again.push(claimed.claim);
                }
            }
            for claim in &again {
                if let Err(error) = self.store.release_pipeline_claim(claim).await {
                    tracing::warn!(pipeline = %claim.pipeline, %error, "a claim could not be given back; it runs out by itself");
                }
            }
            if fresh.is_empty() {
                break;
            }
            // Only a simulated crash stops the tick; any other error of a run is its event.
            self.each_concurrently(
                fresh,
                |pipeline| async move {
                    let mut own = EventLog::default();
                    let name = pipeline.name.clone();
                    let result = match self.run_claimed(pipeline, &mut own).await {
                        Err(error @ EngineError::Crashed(_)) => Err(error),
                        Err(error) => {
                            tracing::error!(pipeline = %name, %error, "pipeline run failed");
                            own.push(Event::PipelineFailed {
                                at: self.clock.now(),
                                pipeline: name,
                                error: error.to_string(),
                            });
                            Ok(())
                        }
                        Ok(()) => Ok(()),
                    };
                    (own, result)
                },
                log,
            )
            .await?;
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Run a pipeline this instance claimed for the scheduler, then say when it is next
    /// due. Only a simulated crash is an error (the claim then stays until it runs out, as
    /// a real crash would leave it).
    async fn run_claimed(&self, pipeline: Pipeline, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        let id = pipeline.id;
        // A run of it in progress here (a back-fill, a person's run): that run is the run.
        // The row the claim returned is the run's copy (a pipeline deleted since cannot
        // write under the claim: its fence is gone with its row).
        let Some(_running) = self.try_pipeline_lock(id) else {
            return self.release_claim(id).await;
        };
        // A schedule's instant is kept even across an upgrade that made every pipeline due
        // (an unscheduled pipeline is due whenever its due time says so).
        let last_run = if pipeline.schedule.is_some() {
            match self.store.pipeline_last_run(id).await {
                Ok(last_run) => last_run,
                Err(error) => {
                    self.release_claim(id).await?;
                    return Err(error.into());
                }
            }
        } else {
            None
        };
        match pipeline.run_due(last_run, now) {
            Ok(true) => {}
            Ok(false) => {
                let due = match last_run.map(|last| pipeline.next_scheduled(last)) {
                    Some(Ok(Some(next))) => next,
                    _ => now,
                };
                return self.finish_claim(id, due, None).await;
            }
            Err(error) => {
                log.push(Event::PipelineFailed {
                    at: now,
                    pipeline: pipeline.name.clone(),
                    error: error.to_string(),
                });
                return self.finish_claim(id, now, None).await;
            }
        }
        let result = self.run_locked(&pipeline, log).await;
        if let Err(error) = &result
            && !matches!(error, EngineError::Crashed(_))
        {
            tracing::error!(pipeline = %pipeline.name, %error, "pipeline run failed");
            log.push(Event::PipelineFailed {
                at: self.clock.now(),
                pipeline: pipeline.name.clone(),
                error: error.to_string(),
            });
        }
        // A run cut short by the request budget is not a run: it stays due, so the waiting
        // windows go on the next tick the budget allows, not the next schedule.
        self.end_run(&pipeline, &result, Some(now)).await?;
        match result {
            Err(error @ EngineError::Crashed(_)) => Err(error),
            _ => Ok(()),
        }
    }

    /// After a run under this instance's claim: the claim ends with the pipeline's next due
    /// time (a run that got through), or due again at once (one cut short or failed), or
    /// is given back as it was (the pipeline was busy here). A crash leaves it held.
    async fn end_run(
        &self,
        pipeline: &Pipeline,
        result: &Result<Ran, EngineError>,
        ran_at: Option<DateTime<Utc>>,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        // "Again at once" is the next tick, whichever instance ticks: never a tight loop.
        let again = now + self.config.rerun_after;
        match result {
            Err(EngineError::Crashed(_)) => Ok(()),
            Ok(Ran::Busy) => self.release_claim(pipeline.id).await,
            Ok(Ran::Deferred) => self.finish_claim(pipeline.id, again, None).await,
            Ok(Ran::Done) | Err(_) => {
                let due = match self.next_due_of(pipeline).await {
                    Ok(due) if due > now => due,
                    Ok(_) => again,
                    Err(error) => {
                        tracing::warn!(pipeline = %pipeline.name, %error, "when the pipeline is next due is unknown; due again at the next tick");
                        again
                    }
                };
                self.finish_claim(pipeline.id, due, ran_at).await
            }
        }
    }

    /// When `pipeline` next has work, from its ledger as it is now.
    pub(crate) async fn next_due_of(
        &self,
        pipeline: &Pipeline,
    ) -> Result<DateTime<Utc>, EngineError> {
        let now = self.clock.now();
        let source = self.store.identity(pipeline.source_identity).await?;
        let descriptor = self.source(&source.provider)?.descriptor().clone();
        let ledger = self.planning_ledger(pipeline, &descriptor, now).await?;
        gapless_core::ledger::next_due_from(
            pipeline,
            |stream| descriptor.stream(stream).and_then(|s| s.retention),
            &ledger.entries,
            ledger.settled_before,
            now,
            // A pipeline its identity's incident spared runs as if the identity worked.
            if crate::failures::spared(&source, pipeline) {
                Some(now)
            } else {
                source.health.usable_from()
            },
        )
        // The schedule was checked when it was stored.
        .map_err(|e| EngineError::Internal(format!("pipeline {}: {e}", pipeline.name)))
    }

    /// The ledger `pipeline` plans from at `now`: from where every stream's lookback has
    /// passed on, when every window before that is recorded loaded or lost.
    async fn planning_ledger(
        &self,
        pipeline: &Pipeline,
        descriptor: &ProviderDescriptor,
        now: DateTime<Utc>,
    ) -> Result<PlanningLedger, EngineError> {
        let horizon = SettledHorizon::of(
            pipeline,
            |stream| descriptor.stream(stream).and_then(|s| s.retention),
            now,
        );
        Ok(self.store.planning_ledger(pipeline, horizon).await?)
    }

    /// Run every pipeline of `identity` now (waiting for runs in progress); Done only if
    /// every run got through all its windows' requests.
    pub(crate) async fn run_pipelines_of(
        &self,
        identity: IdentityId,
        log: &mut EventLog,
    ) -> Result<Ran, EngineError> {
        let mut all = Ran::Done;
        for pipeline in self.store.pipelines_using(identity).await? {
            if matches!(pipeline.state, PipelineState::Paused { .. }) {
                continue;
            }
            if self.run_pipeline(&pipeline, log).await? != Ran::Done {
                all = Ran::Deferred;
            }
        }
        Ok(all)
    }

    /// Plan a pipeline at the clock's `now` (per stream, each with its own retention); the
    /// windows that passed it are in the plan's `lost`, for the caller to record.
    pub(crate) async fn plan_pipeline(
        &self,
        pipeline: &Pipeline,
    ) -> Result<PipelinePlan, EngineError> {
        let now = self.clock.now();
        let identity = self.store.identity(pipeline.source_identity).await?;
        let descriptor = self.source(&identity.provider)?.descriptor().clone();
        let ledger = self.planning_ledger(pipeline, &descriptor, now).await?;
        let by_key: LedgerMap = ledger.entries.iter().cloned().collect();
        let mut planned: Vec<PlannedWindow> = Vec::new();
        let mut lost = Vec::new();
        for stream in &pipeline.streams {
            let Some(stream_descriptor) = descriptor.stream(stream) else {
                return Err(EngineError::Invalid(format!(
                    "pipeline {} asks for stream {stream:?}, which {} does not offer",
                    pipeline.name, descriptor.name
                )));
            };
            let single = Pipeline {
                streams: vec![stream.clone()],
                ..pipeline.clone()
            };
            let plan = plan_sync_from(
                &single,
                stream_descriptor.retention,
                &ledger.entries,
                ledger.settled_before,
                now,
            );
            planned.extend(plan.windows);
            for (stream, window) in plan.newly_lost {
                let previous = by_key.get(&stream, window.start);
                let reason = match previous.map(|e| &e.state) {
                    Some(WindowState::Missing { reason, .. }) => Some(reason.clone()),
                    _ => None,
                };
                lost.push(LedgerEntry {
                    pipeline: pipeline.id,
                    stream: stream.clone(),
                    window,
                    state: WindowState::Lost { at: now, reason },
                    attempts: previous.map_or(0, |e| e.attempts),
                    updated_at: now,
                });
            }
        }
        planned.sort_by_key(|w| (w.purpose == Purpose::Settle, w.deadline, w.window.start));
        Ok(PipelinePlan {
            identity,
            windows: planned,
            by_key,
            lost,
        })
    }

    /// Record windows that became lost, with a message to the identity's people when no
    /// incident of the identity will report them (its recovery notice names what an outage
    /// lost): a window never becomes lost silently.
    pub(crate) async fn record_lost(
        &self,
        pipeline: &Pipeline,
        identity: &Identity,
        lost: Vec<LedgerEntry>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        if lost.is_empty() {
            return Ok(());
        }
        for entry in &lost {
            log.push(Event::WindowLost {
                at: entry.updated_at,
                pipeline: pipeline.name.clone(),
                stream: entry.stream.clone(),
                window: pipeline.grid().label(entry.window),
                reason: match &entry.state {
                    WindowState::Lost {
                        reason: Some(reason @ MissingReason::PastRetention { .. }),
                        ..
                    } => reason.describe(),
                    _ => "past the provider's lookback".into(),
                },
            });
        }
        let reported_by_incident = matches!(identity.health, Health::NeedsReauth { .. })
            || self.store.open_incident_id(identity.id).await?.is_some();
        let notifications = if reported_by_incident {
            vec![]
        } else {
            self.lost_notifications(identity, pipeline, &lost).await?
        };
        self.record_run(pipeline.id, &lost, &notifications).await?;
        Ok(())
    }

    /// Run one pipeline at the clock's `now`, after any run of it in progress here.
    pub async fn run_pipeline(
        &self,
        pipeline: &Pipeline,
        log: &mut EventLog,
    ) -> Result<Ran, EngineError> {
        let _running = self.pipeline_lock(pipeline.id).await;
        // Another instance running it now: its run is the run.
        if !self.claim_now(pipeline.id).await? {
            return Ok(Ran::Busy);
        }
        // As it is stored now, not as the caller last saw it.
        let pipeline = match self.store.pipeline(pipeline.id).await {
            Ok(pipeline) => pipeline,
            Err(error) => {
                self.release_claim(pipeline.id).await?;
                return Err(error.into());
            }
        };
        let result = self.run_locked(&pipeline, log).await;
        self.end_run(&pipeline, &result, None).await?;
        result
    }

    /// Run `pipeline`, read under its lock, which the caller holds.
    async fn run_locked(
        &self,
        pipeline: &Pipeline,
        log: &mut EventLog,
    ) -> Result<Ran, EngineError> {
        if matches!(pipeline.state, PipelineState::Paused { .. }) {
            return Ok(Ran::Done);
        }
        let plan = self.plan_pipeline(pipeline).await?;
        self.sync_planned(
            pipeline,
            Some(plan.identity),
            &plan.windows,
            &plan.by_key,
            plan.lost,
            log,
        )
        .await
        .map(|synced| synced.ran)
    }

    /// Sync `planned` windows of `pipeline` in order: check both identities, keep the token
    /// fresh, extract, load, record. An identity-level failure stops the run and is recorded
    /// with the windows it leaves missing; a window-level one is recorded for its windows.
    /// `lost` (windows the plan found past the provider's retention) are recorded with the
    /// windows the provider refused, in one message per run.
    pub(crate) async fn sync_planned(
        &self,
        pipeline: &Pipeline,
        source: Option<Identity>,
        planned: &[PlannedWindow],
        by_key: &LedgerMap,
        lost: Vec<LedgerEntry>,
        log: &mut EventLog,
    ) -> Result<Synced, EngineError> {
        let now = self.clock.now();
        // The source identity as the caller just read it, or as stored now.
        let identity = match source {
            Some(identity) if identity.id == pipeline.source_identity => identity,
            _ => self.store.identity(pipeline.source_identity).await?,
        };
        if !identity.health.usable_at(now) && !crate::failures::spared(&identity, pipeline) {
            self.record_lost(pipeline, &identity, lost, log).await?;
            let reason = missing_reason(&identity.health, identity.id);
            let mut missing = EventLog::default();
            let entries = missing_entries(
                pipeline,
                planned,
                by_key,
                &reason,
                &identity.label,
                now,
                &mut missing,
            );
            // "Missing because the identity is broken" is written only while it is: a
            // recovery that committed since sets those windows awaiting the back-fill.
            let written = match reason {
                MissingReason::IdentityBroken { .. } => {
                    self.record_run_while(pipeline.id, &entries, &identity)
                        .await?
                }
                _ => {
                    self.record_run(pipeline.id, &entries, &[]).await?;
                    true
                }
            };
            if written {
                log.extend(missing);
            }
            return Ok(Synced::nothing(Ran::Done));
        }
        let Some(mut run) = self
            .start_run(pipeline, &identity, planned, by_key, log)
            .await?
        else {
            self.record_lost(pipeline, &identity, lost, log).await?;
            return Ok(Synced::nothing(Ran::Done));
        };
        run.lost = lost;
        let requests = self.request_groups(&mut run, log).await;
        // Windows refused as past retention are recorded whatever else happened.
        let lost = std::mem::take(&mut run.lost);
        self.record_lost(pipeline, &identity, lost, log).await?;
        let loaded = run.loaded;
        match requests? {
            Requests::Stopped(ran) => Ok(Synced { ran, loaded }),
            Requests::Completed => {
                // The provider took the credential for every request: as good as a probe
                // of this resource, so the identity's next probe is one interval from now
                // when its pipelines read no other.
                if !planned.is_empty() {
                    let now = self.clock.now();
                    let next = self.next_probe_due(&identity, now);
                    self.store
                        .record_proven(identity.id, &pipeline.source_resource, now, next)
                        .await?;
                }
                // Only a spell that had begun when the run read its identity: the
                // others need no read.
                if matches!(identity.health, Health::Degraded { .. }) {
                    self.end_degraded_spell(identity.id).await?;
                }
                Ok(Synced {
                    ran: Ran::Done,
                    loaded,
                })
            }
        }
    }

    /// Get a run going: the credential fresh, the destination open (or the spool), the
    /// spool drained. None when the run cannot start (the failure is recorded).
    async fn start_run<'a>(
        &self,
        pipeline: &'a Pipeline,
        identity: &'a Identity,
        planned: &[PlannedWindow],
        by_key: &'a LedgerMap,
        log: &mut EventLog,
    ) -> Result<Option<Run<'a>>, EngineError> {
        let connector = self.source_for(identity)?;
        let descriptor = connector.descriptor().clone();
        let credential = match self.credential_for_use(identity.id, false, log).await? {
            Fresh::Ready(c) => c,
            // Another instance is refreshing this identity: its windows wait for the next run.
            Fresh::Busy => return Ok(None),
            Fresh::Failed(failure) => {
                let pending = PendingWindows {
                    pipeline,
                    windows: planned,
                    ledger: by_key,
                };
                self.handle_failure(identity, failure, FailureContext::run(pending), log)
                    .await?;
                return Ok(None);
            }
        };
        let destination = self.destination_of_run(pipeline, &descriptor, log).await?;
        // While the destination takes nothing, a window dropped from the spool for its age
        // is not extracted again only to be spooled again.
        let planned: Vec<PlannedWindow> = planned
            .iter()
            .filter(|item| destination.is_some() || !spool_expired(by_key, item))
            .cloned()
            .collect();
        Ok(Some(Run {
            pipeline,
            identity,
            connector,
            descriptor,
            planned,
            by_key,
            credential,
            destination,
            lost: vec![],
            loaded: 0,
        }))
    }

    /// The destination a run loads into, open and with its spool delivered (oldest
    /// first); None while it cannot take anything (its identity broken, or it fails to open
    /// or to take the spool: recorded), and the run's windows go to the spool.
    async fn destination_of_run(
        &self,
        pipeline: &Pipeline,
        descriptor: &ProviderDescriptor,
        log: &mut EventLog,
    ) -> Result<Option<Arc<dyn Destination>>, EngineError> {
        if let Some(destination_id) = pipeline.destination_identity
            && !self
                .store
                .identity(destination_id)
                .await?
                .health
                .usable_at(self.clock.now())
        {
            return Ok(None);
        }
        let destination = match self.destination_for(pipeline).await? {
            Ok(d) => d,
            Err(failure) => {
                self.destination_trouble(pipeline, failure, log).await?;
                return Ok(None);
            }
        };
        if let Err(failure) = self
            .drain_spool(pipeline, descriptor, destination.as_ref(), log)
            .await?
        {
            self.destination_trouble(pipeline, failure, log).await?;
            return Ok(None);
        }
        Ok(Some(destination))
    }

    /// Ask for the planned windows, joined into requests up to the provider's range, in
    /// order; load or spool each window.
    async fn request_groups(
        &self,
        run: &mut Run<'_>,
        log: &mut EventLog,
    ) -> Result<Requests, EngineError> {
        let now = self.clock.now();
        let pipeline = run.pipeline;
        let mut queue: VecDeque<Vec<usize>> = chunk_windows(&run.planned, |stream| {
            run.descriptor
                .stream(stream)
                .and_then(|s| s.request_span(pipeline.window.seconds()))
        })
        .into();
        let mut tries = Tries::default();
        // The answer of the last request, loaded while the next one is asked for: the
        // destination writes one request's windows while the provider answers the next.
        let mut answered: Option<Answered> = None;
        while let Some(group) = queue.pop_front() {
            let items: Vec<PlannedWindow> = group.iter().map(|&i| run.planned[i].clone()).collect();
            if items.is_empty() {
                continue;
            }
            // A long run keeps its claim; one that lost it stops here.
            self.keep_claim(pipeline.id).await?;
            if let Err(spent) = self.take_request(run.identity) {
                self.load_answered(run, answered.take(), log).await?;
                log.push(Event::RequestsDeferred {
                    at: now,
                    pipeline: pipeline.name.clone(),
                    identity: run.identity.label.clone(),
                    windows: group.len() + queue.iter().map(Vec::len).sum::<usize>(),
                    until: spent.at,
                    limit: spent.limit,
                });
                return Ok(Requests::Stopped(Ran::Deferred));
            }
            // The previous answer's windows are loaded (and recorded) before this answer
            // is looked at: a refusal stops the run with every earlier window accounted for.
            let loading = self.loads_of(run, answered.take());
            let (answer, loads) = tokio::join!(self.request(run, &items), loading);
            self.record_loads(run, loads?, log).await?;
            match answer? {
                Ok(per_window) => {
                    answered = Some(Answered {
                        items,
                        per_window,
                        read_at: self.clock.now(),
                    });
                }
                Err(failure) => {
                    let answered = Refused {
                        group,
                        items: &items,
                        failure,
                    };
                    if let Some(ran) = self
                        .after_refusal(run, answered, &mut queue, &mut tries, log)
                        .await?
                    {
                        return Ok(Requests::Stopped(ran));
                    }
                }
            }
        }
        self.load_answered(run, answered, log).await?;
        Ok(Requests::Completed)
    }

    /// What a refused request leads to: one forced refresh and the same request again, each
    /// window asked for alone (to find those past the retention), the windows failed and
    /// the run going on, or the run stopped (`Some`, with how it ended) and the failure
    /// recorded for the windows not asked for.
    async fn after_refusal(
        &self,
        run: &mut Run<'_>,
        refused: Refused<'_>,
        queue: &mut VecDeque<Vec<usize>>,
        tries: &mut Tries,
        log: &mut EventLog,
    ) -> Result<Option<Ran>, EngineError> {
        let Refused {
            group,
            items,
            mut failure,
        } = refused;
        let pipeline = run.pipeline;
        if failure.cause == FailureCause::Refreshable
            && !tries.forced_refresh
            && matches!(run.credential, Credential::OAuth2 { .. })
        {
            // A 401-like answer gets exactly one forced refresh before it counts.
            tries.forced_refresh = true;
            return match self.credential_for_use(run.identity.id, true, log).await? {
                Fresh::Ready(c) => {
                    run.credential = c;
                    queue.push_front(group);
                    Ok(None)
                }
                Fresh::Busy => Ok(Some(Ran::Done)),
                Fresh::Failed(failure) => {
                    let pending = run.windows_of(std::iter::once(&group).chain(queue.iter()));
                    self.stop_run(run, failure, &pending, None, log).await?;
                    Ok(Some(Ran::Done))
                }
            };
        }
        if failure.cause == FailureCause::OutsideRetention && group.len() > 1 {
            // Which of the windows are past it? Ask for each alone.
            for &i in group.iter().rev() {
                queue.push_front(vec![i]);
            }
            return Ok(None);
        }
        if failure.cause == FailureCause::BadAnswer {
            // The new days and the days still settling before them go in one request; an
            // unusable answer for it is asked for again apart, so that a settling day's
            // trouble (a restated day the provider answers badly) holds up no new day.
            let (settling, rest): (Vec<usize>, Vec<usize>) = group
                .iter()
                .partition(|&&i| run.planned[i].purpose == Purpose::Settle);
            if !settling.is_empty() && !rest.is_empty() {
                queue.push_front(settling);
                queue.push_front(rest);
                return Ok(None);
            }
        }
        if failure.cause.is_window_level() {
            self.window_failed(run, items, &failure, log).await?;
            if failure.cause == FailureCause::BadAnswer {
                tries.bad_answers += 1;
                if tries.bad_answers >= MAX_BAD_ANSWERS {
                    let failure = Failure::new(FailureCause::Transient)
                        .with_code("unusable_answers")
                        .with_message(format!(
                            "{} unusable answers in one run, the last: {}",
                            tries.bad_answers,
                            describe_failure(&failure)
                        ));
                    let pending = run.windows_of(queue.iter());
                    self.stop_run(run, failure, &pending, None, log).await?;
                    return Ok(Some(Ran::Done));
                }
            }
            return Ok(None);
        }
        if failure.cause == FailureCause::Refreshable {
            // Still rejected right after a successful refresh, or a password or API key
            // that nothing can refresh: it counts, at once.
            failure.cause = FailureCause::ReauthRequired {
                reason: refused_reason(&run.credential),
            };
        }
        let operation = FailedOperation {
            pipeline: pipeline.id,
            resource: pipeline.source_resource.clone(),
            stream: items.first().map(|w| w.stream.clone()).unwrap_or_default(),
        };
        let pending = run.windows_of(std::iter::once(&group).chain(queue.iter()));
        self.stop_run(run, failure, &pending, Some(operation), log)
            .await?;
        Ok(Some(Ran::Done))
    }

    /// One report request for adjacent windows of one stream, its rows split by window.
    async fn request(
        &self,
        run: &Run<'_>,
        items: &[PlannedWindow],
    ) -> Result<Result<Vec<Vec<Row>>, Failure>, EngineError> {
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return Ok(Ok(vec![]));
        };
        let Some(stream) = run.descriptor.stream(&first.stream) else {
            // A back-fill plans the pipeline's streams as stored: its provider's definition
            // may have dropped one since.
            return Err(EngineError::Invalid(format!(
                "pipeline {} asks for stream {}, which its provider no longer offers",
                run.pipeline.name, first.stream
            )));
        };
        let span = Window::new(first.window.start, last.window.end);
        let started = std::time::Instant::now();
        let jobs = crate::jobs::StoredJobs {
            store: &self.store,
            clock: self.clock.as_ref(),
            identity: run.identity.id,
            patience: std::time::Duration::MAX,
        };
        let extracted = run
            .connector
            .extract_with_jobs(
                &run.credential,
                &run.pipeline.source_resource,
                &first.stream,
                ReportRange::new(span, run.pipeline.time_zone),
                &jobs,
            )
            .await;
        self.stats
            .record(crate::stats::CallKind::Extract, started, extracted.is_ok());
        tracing::debug!(
            pipeline = %run.pipeline.name,
            windows = items.len(),
            rows = extracted.as_ref().map_or(0, |e| e.rows.len()),
            elapsed_ms = started.elapsed().as_millis(),
            "report request answered"
        );
        Ok(extracted.and_then(|extracted| {
            self.charge_requests(run.identity, extracted.requests);
            if let Some(slow) = &extracted.slow_down {
                // The rows are good; the account's next request waits for its quota.
                let until = chrono::Duration::from_std(slow.wait)
                    .ok()
                    .and_then(|wait| self.clock.now().checked_add_signed(wait))
                    .unwrap_or_else(gapless_core::ledger::far_future);
                self.budgets.hold(run.identity, until, &slow.said);
            }
            split_by_window(extracted.rows, items, stream, &run.pipeline.grid())
        }))
    }

    /// Load (or spool) each window of one answered request and record it.
    async fn load_answered(
        &self,
        run: &mut Run<'_>,
        answered: Option<Answered>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let loads = self.loads_of(run, answered).await?;
        self.record_loads(run, loads, log).await
    }

    /// Load each window of one answered request into the run's destination (none while it
    /// takes nothing: every window is then spooled by [`Engine::record_loads`]). Borrows
    /// nothing of the run, so that the next request can be asked for meanwhile.
    fn loads_of(
        &self,
        run: &Run<'_>,
        answered: Option<Answered>,
    ) -> impl Future<Output = Result<Option<(Answered, Loads)>, EngineError>> + use<'_> {
        let pipeline = run.pipeline.id;
        let name = run.pipeline.name.clone();
        let schema = answered.as_ref().map(|a| {
            let stream = a.items.first().map_or("", |i| i.stream.as_str());
            run.descriptor
                .stream(stream)
                .map(|s| s.schema.clone())
                .ok_or_else(|| {
                    // `request` refused the stream already: never an answer without it.
                    EngineError::Internal(format!(
                        "pipeline {name}: an answer for stream {stream:?}, which its provider does not offer"
                    ))
                })
        });
        let destination = run.destination.clone();
        async move {
            let (Some(mut answered), Some(schema)) = (answered, schema.transpose()?) else {
                return Ok(None);
            };
            let started = std::time::Instant::now();
            let per_window = std::mem::take(&mut answered.per_window);
            let loads = match destination {
                Some(destination) => {
                    self.load_at_once(
                        destination.as_ref(),
                        pipeline,
                        &schema,
                        &answered.items,
                        per_window,
                    )
                    .await?
                }
                None => Loads {
                    not_taken: per_window.into_iter().enumerate().collect(),
                    ..Loads::default()
                },
            };
            tracing::debug!(
                pipeline = %name,
                windows = loads.committed.len(),
                elapsed_ms = started.elapsed().as_millis(),
                "windows loaded"
            );
            Ok(Some((answered, loads)))
        }
    }

    /// Record what the destination did with a request's windows: what it committed is
    /// recorded, its failure handled, and every window it did not commit spooled, in order.
    async fn record_loads(
        &self,
        run: &mut Run<'_>,
        loads: Option<(Answered, Loads)>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let Some((Answered { items, read_at, .. }, loads)) = loads else {
            return Ok(());
        };
        let now = self.clock.now();
        let pipeline = run.pipeline;
        let attempt = |item: &PlannedWindow| {
            run.by_key
                .get(&item.stream, item.window.start)
                .map_or(0, |e| e.attempts)
                + 1
        };
        // The windows the destination committed, recorded together: once for the request,
        // not once per window (a crash between leaves committed windows unrecorded, and
        // they are loaded again: a load replaces its window); before the failure is
        // handled.
        let committed: Vec<(LedgerEntry, Purpose)> = loads
            .committed
            .iter()
            .map(|&(n, count)| {
                let item = &items[n];
                (
                    loaded_entry(pipeline, item, (read_at, now), count, attempt(item)),
                    item.purpose,
                )
            })
            .collect();
        self.record_loaded(run, committed, log).await?;
        if let Some(failure) = loads.trouble {
            self.destination_trouble(pipeline, failure, log).await?;
            run.destination = None;
        }
        for (n, rows) in loads.not_taken {
            let item = &items[n];
            self.spool_window(pipeline, item, (rows, read_at), attempt(item), log)
                .await?;
        }
        Ok(())
    }

    /// Load a request's windows into `destination`, as many at once as it takes, their
    /// answers taken in order; once a failure is taken no more are started and those in
    /// flight end. Of several failures, one that needs a person is kept (a changed password
    /// before a dropped connection).
    async fn load_at_once(
        &self,
        destination: &dyn gapless_destinations::Destination,
        pipeline: gapless_core::PipelineId,
        schema: &gapless_core::StreamSchema,
        items: &[PlannedWindow],
        per_window: Vec<Vec<Row>>,
    ) -> Result<Loads, EngineError> {
        use futures_util::StreamExt as _;
        let mut loads = Loads::default();
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut windows = items.iter().zip(per_window).enumerate();
        let at_once = destination.parallel_loads().max(1);
        loop {
            while loads.trouble.is_none() && in_flight.len() < at_once {
                let Some((n, (item, rows))) = windows.next() else {
                    break;
                };
                in_flight.push_back(async move {
                    let loaded = destination
                        .load_window(pipeline, schema, item.window, &rows)
                        .await;
                    (n, rows, loaded)
                });
            }
            let Some((n, rows, loaded)) = in_flight.next().await else {
                break;
            };
            match loaded {
                Ok(count) => {
                    loads.committed.push((n, count));
                    self.crash_at(crate::CrashPoint::AfterWindowLoaded)?;
                }
                Err(failure) => {
                    if loads
                        .trouble
                        .as_ref()
                        .is_none_or(|held| !held.cause.needs_human() && failure.cause.needs_human())
                    {
                        loads.trouble = Some(failure);
                    }
                    loads.not_taken.push((n, rows));
                }
            }
        }
        loads
            .not_taken
            .extend(windows.map(|(n, (_, rows))| (n, rows)));
        Ok(loads)
    }

    /// Record windows the destination committed, each with its purpose, and their events.
    async fn record_loaded(
        &self,
        run: &mut Run<'_>,
        committed: Vec<(LedgerEntry, Purpose)>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        if committed.is_empty() {
            return Ok(());
        }
        let pipeline = run.pipeline;
        let (entries, purposes): (Vec<LedgerEntry>, Vec<Purpose>) = committed.into_iter().unzip();
        self.record_run(pipeline.id, &entries, &[]).await?;
        for (entry, purpose) in entries.into_iter().zip(purposes) {
            if let WindowState::Loaded { at, rows, .. } = entry.state {
                log.push(Event::WindowLoaded {
                    at,
                    pipeline: pipeline.name.clone(),
                    stream: entry.stream,
                    window: pipeline.grid().label(entry.window),
                    rows,
                    purpose: purpose.into(),
                });
            }
            run.loaded += 1;
        }
        Ok(())
    }

    /// A failure that concerns these windows only: past the provider's retention → lost
    /// (recorded when the run ends, with its message); an unusable answer → missing, retried
    /// by a later run.
    async fn window_failed(
        &self,
        run: &mut Run<'_>,
        items: &[PlannedWindow],
        failure: &Failure,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let detail = failure
            .provider_message
            .clone()
            .unwrap_or_else(|| describe_failure(failure));
        let mut missing = Vec::new();
        for item in items.iter().filter(|i| i.purpose != Purpose::Settle) {
            let previous = run.by_key.get(&item.stream, item.window.start);
            let attempts = previous.map_or(0, |e| e.attempts).saturating_add(1);
            if failure.cause == FailureCause::OutsideRetention {
                run.lost.push(LedgerEntry {
                    pipeline: run.pipeline.id,
                    stream: item.stream.clone(),
                    window: item.window,
                    state: WindowState::Lost {
                        at: now,
                        reason: Some(MissingReason::PastRetention {
                            detail: detail.clone(),
                        }),
                    },
                    attempts,
                    updated_at: now,
                });
                continue;
            }
            // A report still being prepared is not an unusable answer: it is waited for.
            let reason = if failure.cause == FailureCause::ReportPending {
                MissingReason::Transient {
                    detail: describe_failure(failure),
                }
            } else {
                MissingReason::WindowFailed {
                    detail: describe_failure(failure),
                }
            };
            log.push(Event::WindowMissing {
                at: now,
                pipeline: run.pipeline.name.clone(),
                stream: item.stream.clone(),
                window: run.pipeline.grid().label(item.window),
                reason: reason.describe(),
            });
            missing.push(LedgerEntry {
                pipeline: run.pipeline.id,
                stream: item.stream.clone(),
                window: item.window,
                state: WindowState::Missing { reason, since: now },
                attempts,
                updated_at: now,
            });
        }
        self.record_run(run.pipeline.id, &missing, &[]).await?;
        Ok(())
    }

    /// An identity-level failure stops the run: recorded with the windows it leaves missing.
    async fn stop_run(
        &self,
        run: &Run<'_>,
        failure: Failure,
        pending: &[PlannedWindow],
        origin: Option<FailedOperation>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let context = FailureContext {
            windows: Some(PendingWindows {
                pipeline: run.pipeline,
                windows: pending,
                ledger: run.by_key,
            }),
            origin,
        };
        self.handle_failure(run.identity, failure, context, log)
            .await
    }

    /// A run that got through ends a degraded spell.
    async fn end_degraded_spell(&self, identity: IdentityId) -> Result<(), EngineError> {
        let current = self.store.identity(identity).await?;
        if matches!(current.health, Health::Degraded { .. }) {
            let now = self.clock.now();
            let transition = current.health.apply(&HealthEvent::Succeeded, now)?;
            self.store
                .apply_health(&HealthChange::transition_only(identity, transition, now))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use gapless_core::WindowSize;

    fn item(day: u32) -> PlannedWindow {
        PlannedWindow {
            stream: "insights".into(),
            window: WindowSize::DAY
                .containing(Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap()),
            purpose: Purpose::Backfill,
            deadline: None,
        }
    }

    fn row(day: u32) -> Row {
        vec![
            Value::Date(NaiveDate::from_ymd_opt(2026, 1, day).unwrap()),
            Value::Text("c1".into()),
        ]
    }

    #[test]
    fn rows_of_one_request_go_to_their_day_windows_and_strays_are_refused() {
        let stream = gapless_providers::sandbox::descriptor().streams[0].clone();
        let grid = WindowGrid::utc(WindowSize::DAY);
        let items = [item(3), item(4), item(5)];
        let split = split_by_window(vec![row(5), row(3), row(5)], &items, &stream, &grid).unwrap();
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 0, 2]
        );
        let stray = split_by_window(vec![row(3), row(9)], &items, &stream, &grid).unwrap_err();
        assert_eq!(stray.provider_code.as_deref(), Some("malformed_response"));
        assert!(
            stray
                .provider_message
                .as_deref()
                .unwrap_or("")
                .contains("2026-01-09"),
            "{stray:?}"
        );
        let undated = split_by_window(vec![vec![Value::Null]], &items, &stream, &grid).unwrap_err();
        assert_eq!(undated.provider_code.as_deref(), Some("malformed_response"));
    }
}
