//! Handling a classified failure: transient ones degrade the identity with backoff; the ones
//! that need a human open one incident — or continue the identity's recent one, so that a
//! flapping permission is one thread, not one per flap.

use gapless_core::{
    FailedOperation, Failure, HealthEvent, Identity, IdentityId, Incident, IncidentId,
    MissingReason, Pipeline, PipelineId, PipelineState, health::IncidentEffect,
    ledger::PlannedWindow,
};
use gapless_store::{HealthChange, IncidentChange};

use crate::{
    Engine, EngineError, Event, EventLog, describe_failure,
    missing::{LedgerMap, missing_entries, missing_reason},
    notices::FailureMessage,
};

/// The windows of a run that a failure leaves missing.
#[derive(Clone, Copy)]
pub(crate) struct PendingWindows<'a> {
    pub pipeline: &'a Pipeline,
    pub windows: &'a [PlannedWindow],
    pub ledger: &'a LedgerMap,
}

/// What a failure interrupted, besides the identity.
#[derive(Clone, Default)]
pub(crate) struct FailureContext<'a> {
    /// The run it stopped and the windows that run leaves missing.
    pub windows: Option<PendingWindows<'a>>,
    /// The report request that failed (None: a refresh, a probe, a destination).
    pub origin: Option<FailedOperation>,
}

impl<'a> FailureContext<'a> {
    /// A failure outside any run (refresh, probe, destination).
    pub fn none() -> Self {
        Self::default()
    }

    /// A failure of a run before any report request was made (e.g. its refresh).
    pub fn run(windows: PendingWindows<'a>) -> Self {
        Self {
            windows: Some(windows),
            origin: None,
        }
    }
}

/// The active ones of `pipelines`, each to wait for `identity`.
fn waiting_for(identity: IdentityId, pipelines: &[Pipeline]) -> Vec<(PipelineId, PipelineState)> {
    pipelines
        .iter()
        .filter(|p| p.state == PipelineState::Active)
        .map(|p| (p.id, PipelineState::WaitingForIdentity { identity }))
        .collect()
}

impl Engine {
    /// Record a classified failure: transient → degraded with backoff; needs a human →
    /// needs_reauth, one incident (or the recent one continued), dependent pipelines
    /// waiting, the message queued — all with the windows it leaves missing, in one
    /// transaction.
    ///
    /// The change is decided on the identity as it was read; when another task or instance
    /// changed its health meanwhile (two runs failing at once), it is decided again on the
    /// new state: the second failure of an outage joins the first one's incident instead
    /// of sending a "failing again" message.
    pub(crate) async fn handle_failure(
        &self,
        identity: &Identity,
        failure: Failure,
        context: FailureContext<'_>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let mut identity = identity.clone();
        let mut attempts = 0;
        loop {
            let mut decided = EventLog::default();
            let result = self
                .handle_failure_once(&identity, failure.clone(), context.clone(), &mut decided)
                .await;
            match result {
                Err(EngineError::Store(gapless_store::StoreError::StaleHealth { .. }))
                    if attempts < 4 =>
                {
                    attempts += 1;
                    identity = self.store.identity(identity.id).await?;
                }
                other => {
                    log.extend(decided);
                    return other;
                }
            }
        }
    }

    async fn handle_failure_once(
        &self,
        identity: &Identity,
        failure: Failure,
        context: FailureContext<'_>,
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
        let transition = identity.health.apply(&event, now)?;
        let reason = missing_reason(&transition.to, identity.id);
        let reason = match (&reason, failure.cause.is_transient()) {
            (MissingReason::Transient { .. }, true) => MissingReason::Transient {
                detail: describe_failure(&failure),
            },
            _ => reason,
        };
        let entries = match context.windows {
            Some(pending) => missing_entries(
                pending.pipeline,
                pending.windows,
                pending.ledger,
                &reason,
                &identity.label,
                now,
                log,
            ),
            None => vec![],
        };
        let change = HealthChange {
            identity: identity.id,
            transition: transition.clone(),
            at: now,
            incident: IncidentChange::None,
            pipelines: vec![],
            notifications: vec![],
            reauth_links: vec![],
            credential: None,
            ledger: entries,
            backfill: false,
            audit: vec![],
            // A run's failure is written under the run's claim on its pipeline.
            fence: context.windows.and_then(|p| self.held(p.pipeline.id)),
        };
        let mut change = change;
        if transition.incident != IncidentEffect::Open
            && let Some(pending) = context.windows
            && spared(identity, pending.pipeline)
            && failure.cause.needs_human()
        {
            // A pipeline the incident spared is refused too: it was not one resource.
            self.widen_incident(identity, pending.pipeline, &reason, &mut change, log)
                .await?;
        }
        if transition.incident != IncidentEffect::Open {
            self.store.apply_health(&change).await?;
            if failure.cause.is_transient() {
                log.push(Event::IdentityDegraded {
                    at: now,
                    identity: identity.label.clone(),
                    failure: describe_failure(&failure),
                });
            }
            return Ok(());
        }
        self.open_incident(identity, &failure, &context, &reason, change, log)
            .await
    }

    /// The failure needs a human: one incident (or the recent one continued), every
    /// dependent pipeline waiting and its due windows missing, the message queued, in the
    /// transaction of `change`.
    async fn open_incident(
        &self,
        identity: &Identity,
        failure: &Failure,
        context: &FailureContext<'_>,
        reason: &MissingReason,
        mut change: HealthChange,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = change.at;
        let affected = self.affected_by(identity, failure, context).await?;
        let (incident, which) = self
            .incident_for(
                identity.id,
                failure,
                &affected,
                context.origin.clone(),
                &mut change,
            )
            .await?;
        // The other dependent pipelines' due windows are missing too, from now on (a
        // destination's windows go to the spool instead).
        if !self.is_destination(&identity.provider) {
            let current = context.windows.map(|p| p.pipeline.id);
            let others = affected
                .iter()
                .filter(|p| Some(p.id) != current && p.state == PipelineState::Active);
            for other in others {
                self.mark_missing_from_now(other, identity, reason, &mut change, log)
                    .await?;
            }
        }
        change.pipelines = waiting_for(identity.id, &affected);
        let out = self
            .failure_notifications(
                identity,
                &incident,
                &affected,
                &change.ledger,
                which,
                &self.caller(),
            )
            .await?;
        change.notifications = out.messages;
        change.reauth_links = vec![out.link];
        self.store.apply_health(&change).await?;
        log.push(match which {
            FailureMessage::Again(times) => Event::IncidentReopened {
                at: now,
                identity: identity.label.clone(),
                failure: describe_failure(failure),
                times,
            },
            _ => Event::IncidentOpened {
                at: now,
                identity: identity.label.clone(),
                failure: describe_failure(failure),
                pipelines_paused: affected.iter().map(|p| p.name.clone()).collect(),
            },
        });
        Ok(())
    }

    /// The pipelines a failure of `identity` stops. A permission lost on one resource
    /// (named by the request or the probe that met it) stops the pipelines of that
    /// resource only; the identity's other resources go on until one of them is refused
    /// too (then the incident widens to them all).
    async fn affected_by(
        &self,
        identity: &Identity,
        failure: &Failure,
        context: &FailureContext<'_>,
    ) -> Result<Vec<Pipeline>, EngineError> {
        let all = self.store.pipelines_using(identity.id).await?;
        Ok(match resource_scope(identity, failure, context) {
            Some(resource) => all
                .into_iter()
                .filter(|p| p.source_identity != identity.id || p.source_resource == resource)
                .collect(),
            None => all,
        })
    }

    /// The identity's open incident spared `failed` (a lost permission on another
    /// resource); now it was refused too: every pipeline of the identity still running
    /// waits, its due windows missing, and the incident affects them all.
    async fn widen_incident(
        &self,
        identity: &Identity,
        failed: &Pipeline,
        reason: &MissingReason,
        change: &mut HealthChange,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let Some(mut incident) = self
            .store
            .latest_incident(identity.id)
            .await?
            .filter(|i| i.closed_at.is_none())
        else {
            return Ok(());
        };
        let running: Vec<Pipeline> = self
            .store
            .pipelines_using(identity.id)
            .await?
            .into_iter()
            .filter(|p| p.source_identity == identity.id && p.state == PipelineState::Active)
            .collect();
        for other in running.iter().filter(|p| p.id != failed.id) {
            self.mark_missing_from_now(other, identity, reason, change, log)
                .await?;
        }
        change.pipelines = waiting_for(identity.id, &running);
        if !running.iter().any(|p| p.id == failed.id) {
            change.pipelines.push((
                failed.id,
                PipelineState::WaitingForIdentity {
                    identity: identity.id,
                },
            ));
        }
        for (id, _) in &change.pipelines {
            if !incident.affected_pipelines.contains(id) {
                incident.affected_pipelines.push(*id);
            }
        }
        change.incident = IncidentChange::Widen {
            id: incident.id,
            affected: incident.affected_pipelines,
        };
        Ok(())
    }

    /// Add to `change` what a pipeline that did not run loses with its identity: the
    /// windows past the retention now (its incident's messages report them) and its due
    /// windows, missing for `reason`.
    async fn mark_missing_from_now(
        &self,
        pipeline: &Pipeline,
        identity: &Identity,
        reason: &MissingReason,
        change: &mut HealthChange,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = change.at;
        let plan = self.plan_pipeline(pipeline).await?;
        for lost in &plan.lost {
            log.push(Event::WindowLost {
                at: now,
                pipeline: pipeline.name.clone(),
                stream: lost.stream.clone(),
                window: pipeline.grid().label(lost.window),
                reason: "past the provider's lookback".into(),
            });
        }
        change.ledger.extend(plan.lost);
        change.ledger.extend(missing_entries(
            pipeline,
            &plan.windows,
            &plan.by_key,
            reason,
            &identity.label,
            now,
            log,
        ));
        Ok(())
    }

    /// The incident a new authorization failure belongs to: the identity's recent one
    /// (recovering, or closed within `reopen_within`) continued, else a new one. Sets the
    /// change's incident effect and says which message to send.
    async fn incident_for(
        &self,
        identity: IdentityId,
        failure: &Failure,
        affected: &[Pipeline],
        origin: Option<FailedOperation>,
        change: &mut HealthChange,
    ) -> Result<(Incident, FailureMessage), EngineError> {
        let now = self.clock.now();
        let recent = self
            .store
            .latest_incident(identity)
            .await?
            .filter(|i| i.continues_at(now, self.config.reopen_within));
        Ok(match recent {
            Some(mut incident) => {
                incident.failure = failure.clone();
                incident.origin = origin;
                incident.closed_at = None;
                incident.recovering_since = None;
                incident.reopened = incident.reopened.saturating_add(1);
                incident.affected_pipelines = affected.iter().map(|p| p.id).collect();
                change.incident = IncidentChange::Reopen {
                    id: incident.id,
                    failure: failure.clone(),
                    origin: incident.origin.clone(),
                    affected: incident.affected_pipelines.clone(),
                };
                let times = incident.reopened;
                (incident, FailureMessage::Again(times))
            }
            None => {
                let incident = Incident {
                    id: IncidentId::new(),
                    identity,
                    failure: failure.clone(),
                    opened_at: now,
                    closed_at: None,
                    affected_pipelines: affected.iter().map(|p| p.id).collect(),
                    origin,
                    recovering_since: None,
                    reopened: 0,
                };
                change.incident = IncidentChange::Open(incident.clone());
                (incident, FailureMessage::First)
            }
        })
    }
}

/// The resource a failure of `identity` is about, when it stops that resource only: a
/// lost permission met by a request or a probe about one resource of a source identity.
fn resource_scope<'a>(
    identity: &Identity,
    failure: &Failure,
    context: &'a FailureContext<'_>,
) -> Option<&'a str> {
    let origin = context.origin.as_ref()?;
    (failure.cause == gapless_core::FailureCause::PermissionLost
        && context
            .windows
            .is_none_or(|p| p.pipeline.source_identity == identity.id))
    .then_some(origin.resource.as_str())
}

/// Whether `pipeline` runs although its source identity needs a person: the identity's
/// incident is a permission lost on another resource, which left this pipeline running.
pub(crate) fn spared(identity: &Identity, pipeline: &Pipeline) -> bool {
    matches!(
        &identity.health,
        gapless_core::Health::NeedsReauth { failure, .. }
            if failure.cause == gapless_core::FailureCause::PermissionLost
    ) && pipeline.source_identity == identity.id
        && pipeline.state == PipelineState::Active
}
