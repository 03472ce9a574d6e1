//! Delivering windows when the destination is in trouble: the spool (write, drain, expire)
//! and the destination's failures.

use std::collections::HashMap;

use gapless_core::{
    Failure, LedgerEntry, MissingReason, Pipeline, Window, WindowState, ledger::PlannedWindow,
};

use crate::{Engine, EngineError, Event, EventLog, describe_failure};

impl Engine {
    /// A spool operation (directory reads, file reads and writes, fsyncs), run off the
    /// async workers; `what` names it if its task stops.
    pub(crate) async fn spool_io<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&crate::spool::Spool) -> Result<T, crate::spool::SpoolError> + Send + 'static,
    ) -> Result<Result<T, crate::spool::SpoolError>, EngineError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || op(&spool))
            .await
            .map_err(|e| EngineError::Internal(format!("the spool {what} stopped: {e}")))
    }

    /// The spool's windows of `pipeline` (None: of every pipeline).
    pub(crate) async fn spool_list(
        &self,
        pipeline: Option<gapless_core::PipelineId>,
    ) -> Result<Vec<crate::spool::SpoolEntry>, EngineError> {
        Ok(self
            .spool_io("listing", move |s| s.list(pipeline))
            .await??)
    }

    /// A spooled window as its file holds it (checked against its MAC).
    async fn spool_read(
        &self,
        entry: &crate::spool::SpoolEntry,
    ) -> Result<Result<crate::spool::SpooledWindow, crate::spool::SpoolError>, EngineError> {
        let entry = entry.clone();
        self.spool_io("read", move |s| s.read(&entry)).await
    }

    /// Forget a delivered spooled window.
    async fn forget_spooled(&self, entry: &crate::spool::SpoolEntry) -> Result<(), EngineError> {
        let entry = entry.clone();
        Ok(self
            .spool_io("removal", move |s| s.remove(&entry))
            .await??)
    }

    /// A window the ledger says is spooled but whose file is gone is missing again, and
    /// extracted again while the provider serves it.
    async fn reconcile_spool(
        &self,
        pipeline: &Pipeline,
        ledger: &crate::missing::LedgerMap,
        entries: &[crate::spool::SpoolEntry],
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let present: std::collections::HashSet<(&str, chrono::DateTime<chrono::Utc>)> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.window_start))
            .collect();
        for entry in ledger.entries() {
            if matches!(entry.state, WindowState::Spooled { .. })
                && !present.contains(&(entry.stream.as_str(), entry.window.start))
            {
                let reason = MissingReason::DestinationDown {
                    detail:
                        "its spooled copy is gone; extracted again while the provider serves it"
                            .into(),
                };
                self.record_missing(pipeline, &entry.stream, entry.window, reason, log)
                    .await?;
            }
        }
        Ok(())
    }

    /// A spooled window is loaded only as what its ledger row says is spooled there, with
    /// rows inside its days (the same check as a provider's answer).
    fn spooled_window_fits(
        &self,
        pipeline: &Pipeline,
        descriptor: &gapless_providers::ProviderDescriptor,
        ledger: &crate::missing::LedgerMap,
        entry: &crate::spool::SpoolEntry,
        window: crate::spool::SpooledWindow,
    ) -> Result<
        (
            crate::spool::SpooledWindow,
            Vec<gapless_core::Row>,
            gapless_core::StreamSchema,
        ),
        String,
    > {
        match ledger.get(&entry.stream, entry.window_start) {
            Some(LedgerEntry {
                state: WindowState::Spooled { .. },
                window: recorded,
                ..
            }) if *recorded == window.window => {}
            Some(other) => {
                return Err(format!(
                    "the ledger has {} spooled, not the window the file says",
                    pipeline.grid().label(other.window),
                ));
            }
            None => {
                return Err(
                    "the ledger has no such window spooled (loaded or recorded otherwise since)"
                        .into(),
                );
            }
        }
        let Some(stream) = descriptor.stream(&window.stream) else {
            return Err(format!("the provider has no stream {}", window.stream));
        };
        let rows = window.typed_rows(&stream.schema);
        let item = PlannedWindow {
            stream: window.stream.clone(),
            window: window.window,
            purpose: gapless_core::ledger::Purpose::Backfill,
            deadline: None,
        };
        let rows = crate::sync::split_by_window(rows, &[item], stream, &pipeline.grid())
            .map_err(|f| crate::describe_failure(&f))?
            .into_iter()
            .flatten()
            .collect();
        Ok((window, rows, stream.schema.clone()))
    }

    /// The destination refused: a failure that needs a human goes to the destination's
    /// identity (one incident, its pipelines' windows spooled meanwhile); any other is
    /// reported and retried next run.
    pub(crate) async fn destination_trouble(
        &self,
        pipeline: &Pipeline,
        failure: Failure,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        if let Some(id) = pipeline.destination_identity
            && failure.cause.needs_human()
        {
            let identity = self.store.identity(id).await?;
            return self
                .handle_failure(
                    &identity,
                    failure,
                    crate::failures::FailureContext::none(),
                    log,
                )
                .await;
        }
        tracing::warn!(pipeline = %pipeline.name, failure = %describe_failure(&failure), "destination unavailable");
        log.push(Event::DestinationUnavailable {
            at: self.clock.now(),
            pipeline: pipeline.name.clone(),
            failure: describe_failure(&failure),
        });
        Ok(())
    }

    /// Keep a window extracted at `extracted_at` in the spool (or, when the spool is full,
    /// record it missing).
    pub(crate) async fn spool_window(
        &self,
        pipeline: &Pipeline,
        item: &PlannedWindow,
        (rows, extracted_at): (Vec<gapless_core::Row>, chrono::DateTime<chrono::Utc>),
        attempt: u32,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let count = rows.len();
        let spooled = crate::spool::SpooledWindow {
            pipeline: pipeline.id,
            stream: item.stream.clone(),
            window: item.window,
            extracted_at,
            rows,
        };
        let stored = self.spool_io("write", move |s| s.put(&spooled)).await?;
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
        self.record_run(
            pipeline.id,
            &[LedgerEntry {
                pipeline: pipeline.id,
                stream: item.stream.clone(),
                window: item.window,
                state,
                attempts: attempt,
                updated_at: now,
            }],
            &[],
        )
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
        let entries = self.spool_list(None).await?;
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
            let Ok(spooled) = self.spool_read(&entry).await? else {
                continue;
            };
            if now - spooled.extracted_at <= self.spool.max_age {
                continue;
            }
            let retention = self
                .source_of(pipeline)
                .await?
                .stream(&spooled.stream)
                .and_then(|s| s.retention);
            let deadline = retention.and_then(|r| r.deadline(spooled.window));
            if deadline.is_some_and(|d| d - chrono::Duration::days(1) <= now) {
                continue;
            }
            let reason = MissingReason::SpoolExpired {
                extracted_at: spooled.extracted_at,
            };
            // Under the pipeline's claim, as a run's writes are; a pipeline running now
            // (here or elsewhere) is dealt with on a later tick.
            let Some(_running) = self.try_pipeline_lock(pipeline.id) else {
                continue;
            };
            if !self.claim_now(pipeline.id).await? {
                continue;
            }
            let recorded = self
                .record_missing(pipeline, &spooled.stream, spooled.window, reason, log)
                .await;
            // The window is missing now: the pipeline is due to extract it again.
            self.finish_claim(pipeline.id, now, None).await?;
            recorded?;
            self.forget_spooled(&entry).await?;
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
        self.record_run(
            pipeline.id,
            &[LedgerEntry {
                pipeline: pipeline.id,
                stream: stream.to_string(),
                window,
                state: WindowState::Missing {
                    reason: reason.clone(),
                    since: now,
                },
                attempts: 0,
                updated_at: now,
            }],
            &[],
        )
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
    pub(crate) async fn drain_spool(
        &self,
        pipeline: &Pipeline,
        descriptor: &gapless_providers::ProviderDescriptor,
        destination: &dyn gapless_destinations::Destination,
        log: &mut EventLog,
    ) -> Result<Result<(), Failure>, EngineError> {
        let now = self.clock.now();
        let entries = self.spool_list(Some(pipeline.id)).await?;
        // The ledger is the truth about what is spooled.
        let ledger: crate::missing::LedgerMap = self
            .store
            .spooled_windows(pipeline.id)
            .await?
            .into_iter()
            .collect();
        self.reconcile_spool(pipeline, &ledger, &entries, log)
            .await?;
        for entry in entries {
            let checked = self
                .spool_read(&entry)
                .await?
                .map_err(|e| e.to_string())
                .and_then(|w| self.spooled_window_fits(pipeline, descriptor, &ledger, &entry, w));
            let (window, rows, schema) = match checked {
                Ok(fit) => fit,
                Err(why) => {
                    tracing::error!(file = %entry.path.display(), %why, "spool file refused");
                    // Set aside (if `read` did not already) and extracted again.
                    let _ = std::fs::rename(&entry.path, entry.path.with_extension("corrupt"));
                    let reason = MissingReason::DestinationDown { detail: why };
                    let window = pipeline.grid().containing(entry.window_start);
                    self.record_missing(pipeline, &entry.stream, window, reason, log)
                        .await?;
                    continue;
                }
            };
            match destination
                .load_window(pipeline.id, &schema, window.window, &rows)
                .await
            {
                Ok(count) => {
                    self.record_run(
                        pipeline.id,
                        &[LedgerEntry {
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
                        }],
                        &[],
                    )
                    .await?;
                    self.forget_spooled(&entry).await?;
                    log.push(Event::WindowLoaded {
                        at: now,
                        pipeline: pipeline.name.clone(),
                        stream: window.stream.clone(),
                        window: pipeline.grid().label(window.window),
                        rows: count,
                        purpose: crate::LoadPurpose::Spool,
                    });
                }
                Err(failure) => return Ok(Err(failure)),
            }
        }
        Ok(Ok(()))
    }
}
