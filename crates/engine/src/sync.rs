//! Running pipelines: plan (pure), check the identity, keep the token fresh, extract, load,
//! and record every window's outcome. Failures are classified and handled here: transient
//! ones degrade the identity with backoff, the ones that need a human open one incident.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gapless_core::{
    Failure, FailureCause, Health, HealthEvent, Identity, IdentityId, Incident, IncidentId,
    LedgerEntry, MissingReason, Pipeline, PipelineState, ReauthReason, ReportRange, Row, Value,
    Window, WindowGrid, WindowState,
    health::IncidentEffect,
    ledger::{PlannedWindow, Purpose, chunk_windows, plan_sync},
};
use gapless_store::HealthChange;
use gapless_vault::Credential;

use crate::{Engine, EngineError, Event, EventLog, describe_failure, refresh::Fresh};

/// A pipeline's windows to sync now and its ledger by (stream, window start).
pub(crate) struct PipelinePlan {
    pub windows: Vec<PlannedWindow>,
    pub by_key: HashMap<(String, DateTime<Utc>), LedgerEntry>,
}

/// Windows a failure leaves missing: the pipeline, the windows not done yet, its ledger.
pub(crate) type PendingWindows<'a> = (
    &'a Pipeline,
    &'a [PlannedWindow],
    &'a HashMap<(String, DateTime<Utc>), LedgerEntry>,
);

/// Split the rows of one request over the windows it covered (`items`, adjacent, in time
/// order): by the stream's day column when it covered several, all to the one otherwise. A
/// row dated outside the range is a malformed answer.
fn split_by_window(
    rows: Vec<Row>,
    items: &[&PlannedWindow],
    stream: &gapless_providers::StreamDescriptor,
    grid: &WindowGrid,
) -> Result<Vec<Vec<Row>>, Failure> {
    if items.len() <= 1 {
        return Ok(vec![rows]);
    }
    let column = stream
        .day_column
        .as_deref()
        .and_then(|name| stream.schema.columns.iter().position(|c| c.name == name))
        .ok_or_else(|| {
            Failure::new(FailureCause::Transient)
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
                return Err(Failure::new(FailureCause::Transient)
                    .with_code("malformed_response")
                    .with_message(format!("a row's day column holds {other:?}, not a date")));
            }
        };
        let window = grid.containing(grid.day_start(day));
        let Some(&slot) = index.get(&window.start) else {
            return Err(Failure::new(FailureCause::Transient)
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
}

/// Why a credential that was refused counts as needing reauthorization.
pub(crate) fn refused_reason(credential: &Credential) -> ReauthReason {
    match credential {
        Credential::OAuth2 { .. } => ReauthReason::InvalidGrant,
        _ => ReauthReason::InvalidCredentials,
    }
}

fn missing_reason(health: &Health, identity: IdentityId) -> MissingReason {
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

/// A missing reason in words, naming the identity by its label.
fn reason_words(reason: &MissingReason, identity_label: &str) -> String {
    match reason {
        MissingReason::IdentityBroken { cause, since, .. } => format!(
            "{identity_label} needs reauthorization ({cause}) since {}",
            since.format("%Y-%m-%d %H:%M UTC")
        ),
        other => other.describe(),
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
fn missing_entries(
    pipeline: &Pipeline,
    planned: &[PlannedWindow],
    by_key: &HashMap<(String, DateTime<Utc>), LedgerEntry>,
    reason: &MissingReason,
    identity_label: &str,
    now: DateTime<Utc>,
    log: &mut EventLog,
) -> Vec<LedgerEntry> {
    let mut out = Vec::new();
    for item in planned.iter().filter(|w| w.purpose != Purpose::Settle) {
        let previous = by_key.get(&(item.stream.clone(), item.window.start));
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
            reason: reason_words(reason, identity_label),
        });
    }
    out
}

impl Engine {
    /// Run every pipeline that is not paused. One pipeline's error (a corrupt credential, a
    /// destination that cannot be opened) is reported and does not stop the others.
    pub(crate) async fn run_pipelines(&self, log: &mut EventLog) -> Result<(), EngineError> {
        for pipeline in self.store.list_pipelines().await? {
            if matches!(pipeline.state, PipelineState::Paused { .. }) {
                continue;
            }
            let now = self.clock.now();
            let last_run = self.store.pipeline_last_run(pipeline.id).await?;
            match pipeline.run_due(last_run, now) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    log.push(Event::PipelineFailed {
                        at: now,
                        pipeline: pipeline.name.clone(),
                        error: error.to_string(),
                    });
                    continue;
                }
            }
            let ran = match self.run_pipeline(&pipeline, log).await {
                Ok(ran) => ran,
                Err(error) => {
                    tracing::error!(pipeline = %pipeline.name, %error, "pipeline run failed");
                    log.push(Event::PipelineFailed {
                        at: self.clock.now(),
                        pipeline: pipeline.name.clone(),
                        error: error.to_string(),
                    });
                    Ran::Done
                }
            };
            // A run cut short by the request budget is not a run: it stays due, so the
            // waiting windows go on the next tick the budget allows, not the next schedule.
            if ran == Ran::Done {
                self.store.mark_pipeline_run(pipeline.id, now).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn run_pipelines_of(
        &self,
        identity: IdentityId,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        for pipeline in self.store.pipelines_using(identity).await? {
            if matches!(pipeline.state, PipelineState::Paused { .. }) {
                continue;
            }
            self.run_pipeline(&pipeline, log).await?;
        }
        Ok(())
    }

    /// Plan a pipeline at the clock's `now` (per stream, each with its own lookback) and
    /// record the windows that passed the lookback as lost.
    pub(crate) async fn plan_pipeline(
        &self,
        pipeline: &Pipeline,
        log: &mut EventLog,
    ) -> Result<PipelinePlan, EngineError> {
        let now = self.clock.now();
        let identity = self.store.identity(pipeline.source_identity).await?;
        let descriptor = self.source(&identity.provider)?.descriptor().clone();
        let ledger = self.store.ledger(pipeline.id).await?;
        let by_key: HashMap<(String, DateTime<Utc>), LedgerEntry> = ledger
            .iter()
            .map(|e| ((e.stream.clone(), e.window.start), e.clone()))
            .collect();
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
            let plan = plan_sync(&single, stream_descriptor.lookback, &ledger, now);
            planned.extend(plan.windows);
            for (stream, window) in plan.newly_lost {
                let previous = by_key.get(&(stream.clone(), window.start));
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
                log.push(Event::WindowLost {
                    at: now,
                    pipeline: pipeline.name.clone(),
                    stream,
                    window: pipeline.grid().label(window),
                });
            }
        }
        planned.sort_by_key(|w| (w.purpose == Purpose::Settle, w.deadline, w.window.start));
        self.store.record_windows(&lost).await?;
        Ok(PipelinePlan {
            windows: planned,
            by_key,
        })
    }

    /// Run one pipeline at the clock's `now`.
    pub async fn run_pipeline(
        &self,
        pipeline: &Pipeline,
        log: &mut EventLog,
    ) -> Result<Ran, EngineError> {
        let plan = self.plan_pipeline(pipeline, log).await?;
        self.sync_planned(pipeline, &plan.windows, &plan.by_key, log)
            .await
    }

    /// Sync `planned` windows of `pipeline` in order: check both identities, keep the token
    /// fresh, extract, load, record. Stops at the first failure, which is classified and
    /// recorded with the windows it leaves missing.
    pub(crate) async fn sync_planned(
        &self,
        pipeline: &Pipeline,
        planned: &[PlannedWindow],
        by_key: &HashMap<(String, DateTime<Utc>), LedgerEntry>,
        log: &mut EventLog,
    ) -> Result<Ran, EngineError> {
        let now = self.clock.now();
        let identity = self.store.identity(pipeline.source_identity).await?;
        let connector = self.source(&identity.provider)?.clone();
        let descriptor = connector.descriptor().clone();

        if !identity.health.usable_at(now) {
            let reason = missing_reason(&identity.health, identity.id);
            let entries = missing_entries(
                pipeline,
                planned,
                by_key,
                &reason,
                &identity.label,
                now,
                log,
            );
            self.store.record_windows(&entries).await?;
            return Ok(Ran::Done);
        }

        // A broken destination does not stop extraction: windows go to the spool.
        let destination_usable = match pipeline.destination_identity {
            Some(destination_id) => self
                .store
                .identity(destination_id)
                .await?
                .health
                .usable_at(now),
            None => true,
        };
        let mut credential = match self.credential_for_use(identity.id, false, log).await? {
            Fresh::Ready(c) => c,
            // Another instance is refreshing this identity: its windows wait for the next run.
            Fresh::Busy => return Ok(Ran::Done),
            Fresh::Failed(failure) => {
                return self
                    .handle_failure(&identity, failure, Some((pipeline, planned, by_key)), log)
                    .await
                    .map(|()| Ran::Done);
            }
        };
        let mut destination = if destination_usable {
            match self.destination_for(pipeline).await? {
                Ok(d) => Some(d),
                Err(failure) => {
                    self.destination_trouble(pipeline, failure, log).await?;
                    None
                }
            }
        } else {
            None
        };
        // Deliver what is waiting in the spool first, oldest first.
        if let Some(d) = &destination
            && let Err(failure) = self
                .drain_spool(pipeline, &descriptor, d.as_ref(), log)
                .await?
        {
            self.destination_trouble(pipeline, failure, log).await?;
            destination = None;
        }
        // While the destination takes nothing, a window dropped from the spool for its age
        // is not extracted again only to be spooled again.
        let kept: Vec<PlannedWindow>;
        let planned = if destination.is_none() {
            kept = planned
                .iter()
                .filter(|item| {
                    !matches!(
                        by_key
                            .get(&(item.stream.clone(), item.window.start))
                            .map(|e| &e.state),
                        Some(WindowState::Missing {
                            reason: MissingReason::SpoolExpired { .. },
                            ..
                        })
                    )
                })
                .cloned()
                .collect();
            &kept[..]
        } else {
            planned
        };
        let grid = pipeline.grid();
        let groups = chunk_windows(planned, |stream| {
            descriptor
                .stream(stream)
                .and_then(|s| s.request_span(pipeline.window.seconds()))
        });
        // The windows from group `g` on, for the record when a failure leaves them missing.
        let pending_from = |g: usize| -> Vec<PlannedWindow> {
            groups[g..]
                .iter()
                .flatten()
                .map(|&i| planned[i].clone())
                .collect()
        };
        let mut forced_refresh = false;
        let mut group_index = 0;
        while group_index < groups.len() {
            let items: Vec<&PlannedWindow> =
                groups[group_index].iter().map(|&i| &planned[i]).collect();
            let (Some(first), Some(last)) = (items.first(), items.last()) else {
                group_index += 1;
                continue;
            };
            let stream = first.stream.clone();
            let Some(stream_descriptor) = descriptor.stream(&stream) else {
                return Err(EngineError::Invalid(format!("unknown stream {stream}")));
            };
            if let Err(spent) = self.take_request(&identity) {
                log.push(Event::RequestsDeferred {
                    at: now,
                    pipeline: pipeline.name.clone(),
                    identity: identity.label.clone(),
                    windows: groups[group_index..].iter().map(Vec::len).sum(),
                    until: spent.at,
                    limit: spent.limit.to_string(),
                });
                return Ok(Ran::Deferred);
            }
            let span = Window::new(first.window.start, last.window.end);
            let started = std::time::Instant::now();
            let extracted = connector
                .extract(
                    &credential,
                    &pipeline.source_resource,
                    &stream,
                    ReportRange::new(span, pipeline.time_zone),
                )
                .await;
            self.stats
                .record(crate::stats::CallKind::Extract, started, extracted.is_ok());
            let extracted = extracted.and_then(|extracted| {
                self.charge_requests(&identity, extracted.requests);
                split_by_window(extracted.rows, &items, stream_descriptor, &grid)
            });
            let per_window = match extracted {
                Ok(rows) => rows,
                Err(failure)
                    if failure.cause == FailureCause::Refreshable
                        && !forced_refresh
                        && matches!(credential, Credential::OAuth2 { .. }) =>
                {
                    // A 401-like answer gets exactly one forced refresh before it counts.
                    forced_refresh = true;
                    match self.credential_for_use(identity.id, true, log).await? {
                        Fresh::Ready(c) => {
                            credential = c;
                            continue;
                        }
                        Fresh::Busy => return Ok(Ran::Done),
                        Fresh::Failed(failure) => {
                            let pending = pending_from(group_index);
                            return self
                                .handle_failure(
                                    &identity,
                                    failure,
                                    Some((pipeline, &pending, by_key)),
                                    log,
                                )
                                .await
                                .map(|()| Ran::Done);
                        }
                    }
                }
                Err(mut failure) => {
                    if failure.cause == FailureCause::Refreshable {
                        // Still rejected right after a successful refresh, or a password
                        // or API key that nothing can refresh: it counts, at once.
                        failure.cause = FailureCause::ReauthRequired {
                            reason: refused_reason(&credential),
                        };
                    }
                    let pending = pending_from(group_index);
                    return self
                        .handle_failure(&identity, failure, Some((pipeline, &pending, by_key)), log)
                        .await
                        .map(|()| Ran::Done);
                }
            };
            for (item, rows) in items.into_iter().zip(per_window) {
                let previous = by_key.get(&(item.stream.clone(), item.window.start));
                let attempt = previous.map_or(0, |e| e.attempts) + 1;
                let loaded = match &destination {
                    Some(d) => match d
                        .load_window(pipeline.id, &stream_descriptor.schema, item.window, &rows)
                        .await
                    {
                        Ok(count) => Some(count),
                        Err(failure) => {
                            self.destination_trouble(pipeline, failure, log).await?;
                            destination = None;
                            None
                        }
                    },
                    None => None,
                };
                match loaded {
                    Some(count) => {
                        self.store
                            .record_windows(&[LedgerEntry {
                                pipeline: pipeline.id,
                                stream: item.stream.clone(),
                                window: item.window,
                                state: WindowState::Loaded {
                                    at: now,
                                    rows: count,
                                    attempt,
                                },
                                attempts: attempt,
                                updated_at: now,
                            }])
                            .await?;
                        log.push(Event::WindowLoaded {
                            at: now,
                            pipeline: pipeline.name.clone(),
                            stream: item.stream.clone(),
                            window: grid.label(item.window),
                            rows: count,
                            purpose: match item.purpose {
                                Purpose::New => "new",
                                Purpose::Backfill => "backfill",
                                Purpose::Settle => "settle re-pull",
                            }
                            .into(),
                        });
                    }
                    None => {
                        self.spool_window(pipeline, item, rows, attempt, log)
                            .await?;
                    }
                }
            }
            group_index += 1;
        }
        // A success ends a degraded spell.
        let current = self.store.identity(identity.id).await?;
        if matches!(current.health, Health::Degraded { .. }) {
            let transition = current
                .health
                .apply(&HealthEvent::Succeeded, now)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            self.store
                .apply_health(&HealthChange::transition_only(identity.id, transition, now))
                .await?;
        }
        Ok(Ran::Done)
    }

    /// The destination refused: a failure that needs a human goes to the destination's
    /// identity (one incident, its pipelines' windows spooled meanwhile); any other is
    /// reported and retried next run.
    async fn destination_trouble(
        &self,
        pipeline: &Pipeline,
        failure: Failure,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        if let Some(id) = pipeline.destination_identity
            && failure.cause.needs_human()
        {
            let identity = self.store.identity(id).await?;
            return self.handle_failure(&identity, failure, None, log).await;
        }
        tracing::warn!(pipeline = %pipeline.name, failure = %describe_failure(&failure), "destination unavailable");
        log.push(Event::DestinationUnavailable {
            at: self.clock.now(),
            pipeline: pipeline.name.clone(),
            failure: describe_failure(&failure),
        });
        Ok(())
    }

    /// Keep an extracted window in the spool (or, when the spool is full, record it missing).
    async fn spool_window(
        &self,
        pipeline: &Pipeline,
        item: &PlannedWindow,
        rows: Vec<gapless_core::Row>,
        attempt: u32,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let count = rows.len();
        let stored = self.spool.put(&crate::spool::SpooledWindow {
            pipeline: pipeline.id,
            stream: item.stream.clone(),
            window: item.window,
            extracted_at: now,
            rows,
        });
        let (state, event) = match stored {
            Ok(_) => (
                WindowState::Spooled { at: now },
                Event::WindowSpooled {
                    at: now,
                    pipeline: pipeline.name.clone(),
                    stream: item.stream.clone(),
                    window: pipeline.grid().label(item.window),
                    rows: count as u64,
                },
            ),
            Err(error) => {
                let reason = MissingReason::DestinationDown {
                    detail: error.to_string(),
                };
                (
                    WindowState::Missing {
                        reason: reason.clone(),
                        since: now,
                    },
                    Event::WindowMissing {
                        at: now,
                        pipeline: pipeline.name.clone(),
                        stream: item.stream.clone(),
                        window: pipeline.grid().label(item.window),
                        reason: reason.describe(),
                    },
                )
            }
        };
        self.store
            .record_windows(&[LedgerEntry {
                pipeline: pipeline.id,
                stream: item.stream.clone(),
                window: item.window,
                state,
                attempts: attempt,
                updated_at: now,
            }])
            .await?;
        log.push(event);
        Ok(())
    }

    /// Drop spooled windows older than the spool's age limit whose provider still serves
    /// them (with a day to spare): they are recorded missing and extracted again, fresh,
    /// once the destination takes data. A window the provider no longer serves is kept,
    /// however old: the spool holds its only copy.
    pub async fn expire_spool(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        let entries = self
            .spool
            .list(None)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if entries.is_empty() {
            return Ok(());
        }
        let pipelines: HashMap<_, _> = self
            .store
            .list_pipelines()
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        for entry in entries {
            let Some(pipeline) = pipelines.get(&entry.pipeline) else {
                continue;
            };
            // A corrupt file is dealt with when the spool is drained.
            let Ok(spooled) = self.spool.read(&entry) else {
                continue;
            };
            if now - spooled.extracted_at <= self.spool.max_age {
                continue;
            }
            let lookback = self
                .source_of(pipeline)
                .await?
                .stream(&spooled.stream)
                .and_then(|s| s.lookback);
            if lookback
                .is_some_and(|l| spooled.window.deadline(l) <= now + chrono::Duration::days(1))
            {
                continue;
            }
            let reason = MissingReason::SpoolExpired {
                extracted_at: spooled.extracted_at,
            };
            self.record_missing(pipeline, &spooled.stream, spooled.window, reason, log)
                .await?;
            self.spool
                .remove(&entry)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Record one window of `pipeline` missing for `reason`, with its event.
    async fn record_missing(
        &self,
        pipeline: &Pipeline,
        stream: &str,
        window: Window,
        reason: MissingReason,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        self.store
            .record_windows(&[LedgerEntry {
                pipeline: pipeline.id,
                stream: stream.to_string(),
                window,
                state: WindowState::Missing {
                    reason: reason.clone(),
                    since: now,
                },
                attempts: 0,
                updated_at: now,
            }])
            .await?;
        log.push(Event::WindowMissing {
            at: now,
            pipeline: pipeline.name.clone(),
            stream: stream.to_string(),
            window: pipeline.grid().label(window),
            reason: reason.describe(),
        });
        Ok(())
    }

    /// Load spooled windows of `pipeline` into `destination`, oldest first. A corrupt file
    /// is moved aside and its window recorded missing (extracted again while the provider
    /// serves it); the first load failure stops the drain and is returned.
    async fn drain_spool(
        &self,
        pipeline: &Pipeline,
        descriptor: &gapless_providers::ProviderDescriptor,
        destination: &dyn gapless_destinations::Destination,
        log: &mut EventLog,
    ) -> Result<Result<(), Failure>, EngineError> {
        let now = self.clock.now();
        let entries = self
            .spool
            .list(Some(pipeline.id))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        for entry in entries {
            let window = match self.spool.read(&entry) {
                Ok(w) => w,
                Err(error) => {
                    tracing::error!(%error, "corrupt spool file");
                    let reason = MissingReason::DestinationDown {
                        detail: error.to_string(),
                    };
                    let window = pipeline.grid().containing(entry.window_start);
                    self.record_missing(pipeline, &entry.stream, window, reason, log)
                        .await?;
                    continue;
                }
            };
            let Some(schema) = descriptor.stream(&window.stream).map(|s| s.schema.clone()) else {
                continue;
            };
            let rows = window.typed_rows(&schema);
            match destination
                .load_window(pipeline.id, &schema, window.window, &rows)
                .await
            {
                Ok(count) => {
                    self.store
                        .record_windows(&[LedgerEntry {
                            pipeline: pipeline.id,
                            stream: window.stream.clone(),
                            window: window.window,
                            // Data as of its extraction: a spell in the spool does not
                            // make restated numbers settled.
                            state: WindowState::Loaded {
                                at: window.extracted_at,
                                rows: count,
                                attempt: 1,
                            },
                            attempts: 1,
                            updated_at: now,
                        }])
                        .await?;
                    self.spool
                        .remove(&entry)
                        .map_err(|e| EngineError::Invalid(e.to_string()))?;
                    log.push(Event::WindowLoaded {
                        at: now,
                        pipeline: pipeline.name.clone(),
                        stream: window.stream.clone(),
                        window: pipeline.grid().label(window.window),
                        rows: count,
                        purpose: "from the spool".into(),
                    });
                }
                Err(failure) => return Ok(Err(failure)),
            }
        }
        Ok(Ok(()))
    }

    /// Record a classified failure: transient → degraded with backoff; needs a human →
    /// needs_reauth, one incident, dependent pipelines paused, the Authorization Failure
    /// message queued — all with the windows it leaves missing, in one transaction.
    pub(crate) async fn handle_failure(
        &self,
        identity: &Identity,
        failure: Failure,
        windows: Option<PendingWindows<'_>>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let event = if failure.cause.needs_human() {
            HealthEvent::AuthorizationFailure {
                failure: failure.clone(),
            }
        } else {
            HealthEvent::TransientFailure {
                failure: failure.clone(),
            }
        };
        let transition = identity
            .health
            .apply(&event, now)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let reason = missing_reason(&transition.to, identity.id);
        let reason = match (&reason, failure.cause.is_transient()) {
            (MissingReason::Transient { .. }, true) => MissingReason::Transient {
                detail: describe_failure(&failure),
            },
            _ => reason,
        };
        let entries = match windows {
            Some((pipeline, remaining, by_key)) => missing_entries(
                pipeline,
                remaining,
                by_key,
                &reason,
                &identity.label,
                now,
                log,
            ),
            None => vec![],
        };
        let mut change = HealthChange {
            identity: identity.id,
            transition: transition.clone(),
            at: now,
            open_incident: None,
            close_incident: false,
            pipelines: vec![],
            notifications: vec![],
            credential: None,
            ledger: entries,
        };
        if transition.incident == IncidentEffect::Open {
            let affected = self.store.pipelines_using(identity.id).await?;
            let incident = Incident {
                id: IncidentId::new(),
                identity: identity.id,
                failure: failure.clone(),
                opened_at: now,
                closed_at: None,
                affected_pipelines: affected.iter().map(|p| p.id).collect(),
            };
            // The other dependent pipelines' due windows are missing too, from now on.
            let current = windows.map(|(p, _, _)| p.id);
            for other in affected
                .iter()
                .filter(|p| Some(p.id) != current && p.state == PipelineState::Active)
            {
                let plan = self.plan_pipeline(other, log).await?;
                change.ledger.extend(missing_entries(
                    other,
                    &plan.windows,
                    &plan.by_key,
                    &reason,
                    &identity.label,
                    now,
                    log,
                ));
            }
            change.pipelines = affected
                .iter()
                .filter(|p| p.state == PipelineState::Active)
                .map(|p| {
                    (
                        p.id,
                        PipelineState::WaitingForIdentity {
                            identity: identity.id,
                        },
                    )
                })
                .collect();
            change.notifications = self
                .failure_notifications(
                    identity,
                    &incident,
                    &affected,
                    &change.ledger,
                    crate::notices::FailureMessage::First,
                )
                .await?;
            change.open_incident = Some(incident);
            self.store.apply_health(&change).await?;
            log.push(Event::IncidentOpened {
                at: now,
                identity: identity.label.clone(),
                failure: describe_failure(&failure),
                pipelines_paused: affected.iter().map(|p| p.name.clone()).collect(),
            });
        } else {
            self.store.apply_health(&change).await?;
            if failure.cause.is_transient() {
                log.push(Event::IdentityDegraded {
                    at: now,
                    identity: identity.label.clone(),
                    failure: describe_failure(&failure),
                });
            }
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
        let refs: Vec<&PlannedWindow> = items.iter().collect();
        let split = split_by_window(vec![row(5), row(3), row(5)], &refs, &stream, &grid).unwrap();
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 0, 2]
        );
        let stray = split_by_window(vec![row(3), row(9)], &refs, &stream, &grid).unwrap_err();
        assert_eq!(stray.provider_code.as_deref(), Some("malformed_response"));
        assert!(
            stray
                .provider_message
                .as_deref()
                .unwrap_or("")
                .contains("2026-01-09"),
            "{stray:?}"
        );
        let undated = split_by_window(vec![vec![Value::Null]], &refs, &stream, &grid).unwrap_err();
        assert_eq!(undated.provider_code.as_deref(), Some("malformed_response"));
    }
}
