//! Running pipelines: plan (pure), check the identity, keep the token fresh, extract, load,
//! and record every window's outcome. Failures are classified and handled here: transient
//! ones degrade the identity with backoff, the ones that need a human open one incident.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gapless_core::{
    Failure, FailureCause, Health, HealthEvent, Identity, IdentityId, Incident, IncidentId,
    LedgerEntry, MissingReason, Pipeline, PipelineState, ReauthReason, WindowState,
    health::IncidentEffect,
    ledger::{PlannedWindow, Purpose, plan_sync},
};
use gapless_providers::SourceConnector;
use gapless_store::{CredentialUpdate, HealthChange};
use gapless_vault::Credential;

use crate::{Engine, EngineError, Event, EventLog, authorize::credential_from, describe_failure};

/// The result of trying to get a usable credential.
enum Fresh {
    Ready(Credential),
    Failed(Failure),
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
            window: item.window.to_string(),
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
            if let Err(error) = self.run_pipeline(&pipeline, log).await {
                tracing::error!(pipeline = %pipeline.name, %error, "pipeline run failed");
                log.push(Event::PipelineFailed {
                    at: self.clock.now(),
                    pipeline: pipeline.name.clone(),
                    error: error.to_string(),
                });
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

    /// Run one pipeline at the clock's `now`.
    pub async fn run_pipeline(
        &self,
        pipeline: &Pipeline,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let identity = self.store.identity(pipeline.source_identity).await?;
        let connector = self.source(&identity.provider)?.clone();
        let descriptor = connector.descriptor().clone();
        let ledger = self.store.ledger(pipeline.id).await?;
        let by_key: HashMap<(String, DateTime<Utc>), LedgerEntry> = ledger
            .iter()
            .map(|e| ((e.stream.clone(), e.window.start), e.clone()))
            .collect();

        // Plan per stream, each with its own lookback.
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
                    window: window.to_string(),
                });
            }
        }
        planned.sort_by_key(|w| (w.purpose == Purpose::Settle, w.deadline, w.window.start));
        self.store.record_windows(&lost).await?;

        if !identity.health.usable_at(now) {
            let reason = missing_reason(&identity.health, identity.id);
            let entries = missing_entries(
                pipeline,
                &planned,
                &by_key,
                &reason,
                &identity.label,
                now,
                log,
            );
            self.store.record_windows(&entries).await?;
            return Ok(());
        }

        let mut credential = match self
            .fresh_credential(&identity, &connector, false, log)
            .await?
        {
            Fresh::Ready(c) => c,
            Fresh::Failed(failure) => {
                return self
                    .handle_failure(&identity, failure, pipeline, &planned, &by_key, log)
                    .await;
            }
        };
        let destination = self
            .destination(&pipeline.destination_kind, &pipeline.destination_target)
            .await?;
        let mut forced_refresh = false;
        let mut index = 0;
        while index < planned.len() {
            let item = &planned[index];
            let previous = by_key.get(&(item.stream.clone(), item.window.start));
            let attempt = previous.map_or(0, |e| e.attempts) + 1;
            let extracted = connector
                .extract(
                    &credential,
                    &pipeline.source_resource,
                    &item.stream,
                    item.window,
                )
                .await;
            let rows = match extracted {
                Ok(rows) => rows,
                Err(failure) if failure.cause == FailureCause::Refreshable && !forced_refresh => {
                    // A 401-like answer gets exactly one forced refresh before it counts.
                    forced_refresh = true;
                    match self
                        .fresh_credential(&identity, &connector, true, log)
                        .await?
                    {
                        Fresh::Ready(c) => {
                            credential = c;
                            continue;
                        }
                        Fresh::Failed(failure) => {
                            return self
                                .handle_failure(
                                    &identity,
                                    failure,
                                    pipeline,
                                    &planned[index..],
                                    &by_key,
                                    log,
                                )
                                .await;
                        }
                    }
                }
                Err(mut failure) => {
                    if failure.cause == FailureCause::Refreshable {
                        // Still rejected right after a successful refresh: it counts.
                        failure.cause = FailureCause::ReauthRequired {
                            reason: ReauthReason::InvalidGrant,
                        };
                    }
                    return self
                        .handle_failure(
                            &identity,
                            failure,
                            pipeline,
                            &planned[index..],
                            &by_key,
                            log,
                        )
                        .await;
                }
            };
            let schema = descriptor
                .stream(&item.stream)
                .map(|s| s.schema.clone())
                .ok_or_else(|| EngineError::Invalid(format!("unknown stream {}", item.stream)))?;
            match destination
                .load_window(pipeline.id, &schema, item.window, &rows)
                .await
            {
                Ok(count) => {
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
                        window: item.window.to_string(),
                        rows: count,
                        purpose: match item.purpose {
                            Purpose::New => "new",
                            Purpose::Backfill => "backfill",
                            Purpose::Settle => "settle re-pull",
                        }
                        .into(),
                    });
                }
                Err(failure) => {
                    let reason = MissingReason::DestinationDown {
                        detail: describe_failure(&failure),
                    };
                    let entries = missing_entries(
                        pipeline,
                        &planned[index..],
                        &by_key,
                        &reason,
                        &identity.label,
                        now,
                        log,
                    );
                    self.store.record_windows(&entries).await?;
                    return Ok(());
                }
            }
            index += 1;
        }
        // A success ends a degraded spell.
        let current = self.store.identity(identity.id).await?;
        if matches!(current.health, Health::Degraded { .. }) {
            let transition = current
                .health
                .apply(&HealthEvent::Succeeded, now)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            self.store
                .apply_health(&HealthChange {
                    identity: identity.id,
                    transition,
                    at: now,
                    open_incident: None,
                    close_incident: false,
                    pipelines: vec![],
                    notifications: vec![],
                    credential: None,
                    ledger: vec![],
                })
                .await?;
        }
        Ok(())
    }

    /// The identity's credential, refreshed first when the access token is (nearly) expired
    /// or when `force` is set. A rotated token is committed before it is used.
    async fn fresh_credential(
        &self,
        identity: &Identity,
        connector: &std::sync::Arc<dyn SourceConnector>,
        force: bool,
        log: &mut EventLog,
    ) -> Result<Fresh, EngineError> {
        let now = self.clock.now();
        let (sealed, generation) = self.store.sealed_credential(identity.id).await?;
        let credential = self
            .vault
            .open_credential(&identity.id.to_string(), &sealed)?;
        let Credential::OAuth2 {
            refresh_token,
            access_expires_at,
            ..
        } = &credential
        else {
            return Ok(Fresh::Ready(credential));
        };
        let due = access_expires_at.is_some_and(|at| at - self.config.refresh_margin <= now);
        if !(force || due) {
            return Ok(Fresh::Ready(credential));
        }
        let Some(refresh_token) = refresh_token else {
            if access_expires_at.is_some_and(|at| at <= now) {
                return Ok(Fresh::Failed(
                    Failure::new(FailureCause::ReauthRequired {
                        reason: ReauthReason::Expired,
                    })
                    .with_code("access_token_expired")
                    .with_message("the access token expired and there is no refresh token"),
                ));
            }
            return Ok(Fresh::Ready(credential));
        };
        match connector.refresh(refresh_token, now).await {
            Ok(tokens) => {
                let renewed = credential_from(&tokens, Some(&credential));
                let sealed = self
                    .vault
                    .seal_credential(&identity.id.to_string(), &renewed)?;
                self.store
                    .update_credential(
                        identity.id,
                        &CredentialUpdate {
                            sealed,
                            expected_generation: generation,
                            access_expires_at: tokens.access_expires_at,
                            refresh_expires_at: tokens
                                .refresh_expires_at
                                .or(identity.refresh_expires_at),
                            scopes: None,
                            granted_at: None,
                            lease: None,
                        },
                        now,
                    )
                    .await?;
                log.push(Event::TokenRefreshed {
                    at: now,
                    identity: identity.label.clone(),
                });
                Ok(Fresh::Ready(renewed))
            }
            Err(error) => Ok(Fresh::Failed(error.failure())),
        }
    }

    /// Record a classified failure: transient → degraded with backoff; needs a human →
    /// needs_reauth, one incident, dependent pipelines paused, the Authorization Failure
    /// message queued — all with the windows it leaves missing, in one transaction.
    async fn handle_failure(
        &self,
        identity: &Identity,
        failure: Failure,
        pipeline: &Pipeline,
        remaining: &[PlannedWindow],
        by_key: &HashMap<(String, DateTime<Utc>), LedgerEntry>,
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
        let entries = missing_entries(
            pipeline,
            remaining,
            by_key,
            &reason,
            &identity.label,
            now,
            log,
        );
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
            change.notifications = vec![
                self.failure_notification(identity, &incident, &affected, &change.ledger)
                    .await?,
            ];
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
