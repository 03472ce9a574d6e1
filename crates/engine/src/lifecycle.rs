//! The identity lifecycle outside pipeline runs: proactive refresh, scheduled and on-demand
//! probes, expiry warnings and provider outage detection.

use chrono::Duration;
use gapless_core::{
    FailedOperation, Failure, FailureCause, Health, HealthEvent, Identity, IdentityId, Pipeline,
    PipelineState, health::IncidentEffect,
};
use gapless_providers::ProbeReport;
use gapless_store::HealthChange;
use gapless_vault::Credential;

use crate::{Engine, EngineError, Event, EventLog, describe_failure, refresh::Fresh};

/// What asking the provider who this is gave.
enum Asked {
    /// It answered (or failed to), with the credential it was asked with.
    Answered {
        credential: Credential,
        probed: Result<ProbeReport, Failure>,
    },
    /// The probe ended before an answer counted: busy elsewhere, or the refresh failed.
    Done(ProbeOutcome),
}

/// One provider's identities, for outage detection.
#[derive(Default)]
struct ProviderTally {
    /// Degraded within the last hour.
    failing: usize,
    /// Usable or degraded (those waiting for a person or paused do not count).
    total: usize,
    /// The earliest of the failing ones' failures.
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// The failing identities, described.
    labels: Vec<String>,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The credential works; what the provider says about it.
    Passed(ProbeReport),
    /// The credential works but does not reach what the pipelines need (a resource or a
    /// scope is missing).
    Insufficient {
        report: ProbeReport,
        missing: Vec<String>,
    },
    /// The probe failed, classified.
    Failed(String),
    /// Another instance is refreshing the identity right now.
    Busy,
}

/// Identities a sweep (refresh, expiry) reads per page.
const SWEEP_PAGE: u32 = 500;

impl Engine {
    /// Refresh every usable OAuth identity whose access token is due.
    pub async fn refresh_due(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        // A token is refreshed `margin` plus at most `jitter` before it expires, never
        // earlier (half its life is later still): one that expires after this bound is not
        // due, and is not read.
        let policy = &self.config.refresh;
        let bound = now
            .checked_add_signed(policy.margin)
            .and_then(|at| at.checked_add_signed(policy.jitter))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        // A token of unknown expiry is due `unknown_expiry_interval` less at most `jitter`
        // after it was obtained: one obtained after this bound is not due, and not read.
        let obtained_bound = now
            .checked_sub_signed(policy.unknown_expiry_interval)
            .and_then(|at| at.checked_add_signed(policy.jitter))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        // A page at a time: however many tokens are due at once (an instance back after a
        // day away), the sweep holds one page of rows, not all of them.
        let mut after = None;
        let mut first_error = None;
        loop {
            let page = self
                .store
                .refresh_candidates(bound, obtained_bound, after.as_ref(), SWEEP_PAGE)
                .await?;
            self.report_unreadable(page.unreadable, now, log);
            let usable = self.refresh_due_of(page.identities, now).await?;
            let swept = self
                .each_concurrently(
                    usable,
                    |identity| async move {
                        let mut own = EventLog::default();
                        let result = self.refresh_one(&identity, &mut own).await;
                        (own, result)
                    },
                    log,
                )
                .await;
            if let Err(error) = swept {
                first_error.get_or_insert(error);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return first_error.map_or(Ok(()), Err),
            }
        }
    }

    /// Of a page of candidates, the ones to refresh now. Only what is due is opened: the
    /// identity row carries the token's expiry, so an identity whose token is not due
    /// costs no decryption and no query.
    async fn refresh_due_of(
        &self,
        candidates: Vec<(Identity, Option<bool>)>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Identity>, EngineError> {
        let mut usable: Vec<Identity> = Vec::new();
        for (identity, renews) in candidates {
            if !identity.health.usable_at(now) {
                continue;
            }
            if identity.access_expires_at.is_none()
                && identity.refresh_in_flight_since.is_none()
                && !self.renewal_known_possible(&identity, renews).await?
            {
                continue;
            }
            if self.token_maybe_due(&identity, now) {
                usable.push(identity);
            }
        }
        Ok(usable)
    }

    /// When the probe after one at `last` is due: the provider's own probe interval (when
    /// its definition sets one, else the configured one) less a per-identity jitter of
    /// under a tenth of it. Checked: an instant near the end of the calendar is "never".
    pub fn next_probe_due(
        &self,
        identity: &Identity,
        last: chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        let interval = self
            .sources
            .get(&identity.provider)
            .and_then(|s| s.descriptor().probe_interval)
            .unwrap_or(self.config.probe_interval);
        let jitter = Duration::seconds(
            (identity.id.as_uuid().as_u128() % 600) as i64 * interval.num_seconds() / 6000,
        );
        last.checked_add_signed(interval)
            .and_then(|at| at.checked_sub_signed(jitter))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }

    /// A row a sweep could not read is reported (on each tick it is due); the others are
    /// served.
    fn report_unreadable(
        &self,
        unreadable: Vec<(String, gapless_store::StoreError)>,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) {
        for (id, error) in unreadable {
            log.push(Event::IdentityCheckFailed {
                at: now,
                identity: id,
                error: error.to_string(),
            });
        }
    }

    /// Can the credential of `identity` (no known expiry) renew its access token at all?
    /// Learned once and recorded on the identity row, so that the refresh sweep reads it no
    /// more when it cannot. A credential that cannot be opened counts as "may": the
    /// refresh opens it and reports it.
    async fn renewal_known_possible(
        &self,
        identity: &Identity,
        renews: Option<bool>,
    ) -> Result<bool, EngineError> {
        match renews {
            Some(known) => Ok(known),
            None => Ok(self.learn_renewal(identity).await?.unwrap_or(true)),
        }
    }

    /// Could the identity's token be due for renewal at `now`? False when its row says the
    /// token is good for a while (keys and passwords never get here once their kind is
    /// learned: [`Self::renewal_known_possible`]).
    fn token_maybe_due(&self, identity: &Identity, now: chrono::DateTime<chrono::Utc>) -> bool {
        let obtained = identity
            .token_obtained_at
            .or(identity.granted_at)
            .unwrap_or(identity.created_at);
        identity.refresh_in_flight_since.is_some()
            || self.config.refresh.refresh_due(
                identity.id,
                identity.access_expires_at,
                obtained,
                now,
            )
    }

    /// Refresh one identity's token if it is due.
    async fn refresh_one(
        &self,
        identity: &Identity,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        match self.credential_for_use(identity.id, false, log).await {
            Ok(Fresh::Failed(failure)) => {
                self.handle_failure(
                    identity,
                    failure,
                    crate::failures::FailureContext::none(),
                    log,
                )
                .await
            }
            Ok(Fresh::Ready(_) | Fresh::Busy) => Ok(()),
            Err(error) => self.isolate(identity, Err(error), log),
        }
    }

    /// Should a probe run for this identity now? Identities that need a new credential are
    /// not probed (that would only hammer a dead credential), except when the cause can heal
    /// at the provider without one (account unlocked, permission restored) and the
    /// credential is a token rather than a password or API key.
    fn probe_allowed(identity: &Identity, credential: &Credential) -> bool {
        match &identity.health {
            Health::NeedsReauth { failure, .. } => {
                matches!(
                    failure.cause,
                    FailureCause::AccountBlocked | FailureCause::PermissionLost
                ) && matches!(credential, Credential::OAuth2 { .. })
            }
            _ => true,
        }
    }

    /// The resources `id` can read, as its provider lists them now (refreshing the token
    /// first when due), without recording anything about the identity's health: `Err` with
    /// the reason when they cannot be listed now.
    pub async fn resources_of(
        &self,
        id: IdentityId,
    ) -> Result<Result<Vec<gapless_providers::Resource>, String>, EngineError> {
        let (connector, credential) = match self.askable(id).await? {
            Ok(usable) => usable,
            Err(reason) => return Ok(Err(reason)),
        };
        let listed = match connector.list_resources(&credential).await {
            Ok(Some(listed)) => Ok(listed),
            Ok(None) => connector.probe(&credential).await.map(|report| {
                report
                    .resources
                    .into_iter()
                    .map(|(id, name)| gapless_providers::Resource::direct(id, name))
                    .collect()
            }),
            Err(failure) => Err(failure),
        };
        Ok(listed.map_err(|failure| crate::describe_failure(&failure)))
    }

    /// Whether `id` reaches `resource`, asked by the provider's own resource probe (for a
    /// resource a listing does not show, such as a client account reached through a
    /// manager): Ok(true) when it answered, Ok(false) when the provider has no such
    /// request, `Err` with the reason when it refused or cannot be asked now. Records
    /// nothing about the identity's health.
    pub async fn reaches(
        &self,
        id: IdentityId,
        resource: &str,
    ) -> Result<Result<bool, String>, EngineError> {
        let (connector, credential) = match self.askable(id).await? {
            Ok(usable) => usable,
            Err(reason) => return Ok(Err(reason)),
        };
        if !connector.probes_resources() {
            return Ok(Ok(false));
        }
        Ok(connector
            .probe_resource(&credential, resource)
            .await
            .map(|()| true)
            .map_err(|failure| crate::describe_failure(&failure)))
    }

    /// The connector and a usable credential of `id`, for a question asked on a person's
    /// behalf; `Err` with the reason when nothing may be asked of the provider now.
    async fn askable(
        &self,
        id: IdentityId,
    ) -> Result<
        Result<
            (
                std::sync::Arc<dyn gapless_providers::SourceConnector>,
                Credential,
            ),
            String,
        >,
        EngineError,
    > {
        let identity = self.store.identity(id).await?;
        let connector = self.source_for(&identity)?;
        // A credential that needs a person is not sent to the provider again.
        if matches!(
            identity.health,
            Health::NeedsReauth { .. } | Health::Paused { .. }
        ) {
            return Ok(Err(format!(
                "{} is {}; nothing is asked of the provider until then",
                identity.label, identity.health
            )));
        }
        let mut log = EventLog::default();
        Ok(match self.credential_for_use(id, false, &mut log).await? {
            crate::refresh::Fresh::Ready(credential) => Ok((connector, credential)),
            crate::refresh::Fresh::Failed(failure) => Err(crate::describe_failure(&failure)),
            crate::refresh::Fresh::Busy => Err("another instance is refreshing its token".into()),
        })
    }

    /// Probe one identity now: refresh if due, ask the provider who this is, record what it
    /// learned, and move the health accordingly (a working credential heals a degraded or
    /// blocked identity; a failure is classified like any other).
    pub async fn probe_identity(
        &self,
        id: IdentityId,
        log: &mut EventLog,
    ) -> Result<ProbeOutcome, EngineError> {
        let now = self.clock.now();
        let identity = self.store.identity(id).await?;
        let (sealed, _) = self.store.sealed_credential(id).await?;
        let stored = match self.vault.open_credential(&id.to_string(), &sealed) {
            Ok(stored) => stored,
            Err(error) if matches!(identity.health, Health::NeedsReauth { .. }) => {
                return Ok(ProbeOutcome::Failed(format!("not probed: {error}")));
            }
            Err(error) => {
                return self
                    .probe_failed(&identity, crate::refresh::undecryptable(&error), log)
                    .await;
            }
        };
        if let Some(refused) = Self::not_probed_now(&identity, &stored, now) {
            return Ok(ProbeOutcome::Failed(refused));
        }
        // An identity waiting for a human is probed only to see whether it healed: its
        // failures change nothing (its incident is open already).
        let healing = matches!(identity.health, Health::NeedsReauth { .. });
        // The pipelines that read from it, read once: what the listing and the resource
        // probes are checked against.
        let readers = self.readers_of(id).await?;
        let (credential, probed) = match self.ask_provider(&identity, &readers, log).await? {
            Asked::Answered { credential, probed } => (credential, probed),
            Asked::Done(outcome) => return Ok(outcome),
        };
        let report = match probed {
            Ok(report) => report,
            Err(mut failure) => {
                if failure.cause == FailureCause::Refreshable {
                    // Refused right after a refresh, or a key or password that nothing can
                    // refresh: it counts.
                    failure.cause = FailureCause::ReauthRequired {
                        reason: crate::sync::refused_reason(&credential),
                    };
                }
                if healing && !failure.cause.needs_human() {
                    // A temporary error while waiting for a human says nothing.
                    let next = self.next_probe_due(&identity, now);
                    self.store.mark_probed(id, now, next).await?;
                    return Ok(ProbeOutcome::Failed(describe_failure(&failure)));
                }
                return self.probe_failed(&identity, failure, log).await;
            }
        };
        let (report, missing) = self.record_probe(&identity, report, now).await?;
        // Does it still reach every resource its pipelines read? A resource gone is an
        // outage of the identity, named by the resource, even while who-am-I works.
        if missing.is_empty()
            && let Some(outcome) = self
                .check_resources(&identity, &credential, &readers, &report, healing, log)
                .await?
        {
            return Ok(outcome);
        }
        log.push(Event::IdentityProbed {
            at: now,
            identity: identity.label.clone(),
            result: if missing.is_empty() {
                format!(
                    "ok: {} ({})",
                    report.upstream_account_name, report.upstream_account_id
                )
            } else {
                format!("works but lacks {}", missing.join(", "))
            },
        });
        if !missing.is_empty() {
            return Ok(ProbeOutcome::Insufficient { report, missing });
        }
        self.probe_passed(&identity, &credential, report, now, log)
            .await
    }

    /// Ask the provider who this is with a usable credential: refreshed when due, whatever
    /// the health (a locked account's refresh token still works, and an expired access
    /// token must not look like the lock), and refreshed once more on a 401-like answer
    /// before that answer counts (invariant 4), on this path as on every other.
    async fn ask_provider(
        &self,
        identity: &Identity,
        readers: &[Pipeline],
        log: &mut EventLog,
    ) -> Result<Asked, EngineError> {
        let id = identity.id;
        let mut forced = false;
        loop {
            let credential = match self.credential_for_use(id, forced, log).await? {
                Fresh::Ready(c) => c,
                Fresh::Busy => return Ok(Asked::Done(ProbeOutcome::Busy)),
                Fresh::Failed(failure) => {
                    return Ok(Asked::Done(
                        self.probe_failed(identity, failure, log).await?,
                    ));
                }
            };
            let started = std::time::Instant::now();
            let probed = self.run_probe(identity, &credential, readers).await?;
            self.stats
                .record(crate::stats::CallKind::Probe, started, probed.is_ok());
            let refreshable = crate::refresh::renews_itself(&credential);
            if !forced
                && refreshable
                && matches!(&probed, Err(f) if f.cause == FailureCause::Refreshable)
            {
                forced = true;
                continue;
            }
            return Ok(Asked::Answered { credential, probed });
        }
    }

    /// The pipelines that read from `id` and are not paused.
    async fn readers_of(&self, id: IdentityId) -> Result<Vec<Pipeline>, EngineError> {
        Ok(self
            .store
            .pipelines_using(id)
            .await?
            .into_iter()
            .filter(|p| p.source_identity == id)
            .filter(|p| !matches!(p.state, PipelineState::Paused { .. }))
            .collect())
    }

    /// After a who-am-I that worked: whether every resource the identity's pipelines read
    /// still answers. A resource gone is a failure of the identity named by the resource
    /// (its outcome is returned); while waiting for a human it only keeps the incident open.
    async fn check_resources(
        &self,
        identity: &Identity,
        credential: &Credential,
        readers: &[Pipeline],
        report: &ProbeReport,
        healing: bool,
        log: &mut EventLog,
    ) -> Result<Option<ProbeOutcome>, EngineError> {
        let Some((operation, pipeline, failure)) = self
            .unreachable_resource(identity, credential, report, readers)
            .await?
        else {
            return Ok(None);
        };
        let detail = format!(
            "resource {} of pipeline {pipeline}: {}",
            operation.resource,
            describe_failure(&failure)
        );
        log.push(Event::IdentityProbed {
            at: self.clock.now(),
            identity: identity.label.clone(),
            result: format!("who-am-I works, but {detail}"),
        });
        if healing {
            // Its incident is open already; it stays open until the resource answers.
            return Ok(Some(ProbeOutcome::Insufficient {
                report: report.clone(),
                missing: vec![detail],
            }));
        }
        self.handle_failure(
            identity,
            failure,
            crate::failures::FailureContext {
                windows: None,
                origin: Some(operation),
            },
            log,
        )
        .await?;
        Ok(Some(ProbeOutcome::Failed(detail)))
    }

    /// Why `identity` is not probed at `now`, if it is not: it needs a new credential, it
    /// is paused, or its backoff (or the provider's Retry-After) has not passed.
    fn not_probed_now(
        identity: &Identity,
        stored: &Credential,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        if !Self::probe_allowed(identity, stored) {
            return Some(format!(
                "not probed: {} needs a new credential ({})",
                identity.label, identity.health
            ));
        }
        match &identity.health {
            Health::Paused { .. } => Some(format!("not probed: {} is paused", identity.label)),
            Health::Degraded { retry_at, .. } if now < *retry_at => Some(format!(
                "not probed: {} waits until {} (backoff after {})",
                identity.label,
                retry_at.format("%Y-%m-%d %H:%M:%S UTC"),
                identity.health
            )),
            _ => None,
        }
    }

    /// Record what a probe learned (when, whose, which scopes) and say which scopes the
    /// provider's pipelines need that the credential lacks. A probe that cannot say whose
    /// the credential is (the consent named the account) leaves the account as it is.
    async fn record_probe(
        &self,
        identity: &Identity,
        report: ProbeReport,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(ProbeReport, Vec<String>), EngineError> {
        let next = self.next_probe_due(identity, now);
        self.store.mark_probed(identity.id, now, next).await?;
        let report = if report.upstream_account_id.is_empty() {
            ProbeReport {
                upstream_account_id: identity.upstream_account_id.clone().unwrap_or_default(),
                upstream_account_name: identity.upstream_account_name.clone().unwrap_or_default(),
                ..report
            }
        } else {
            report
        };
        self.store
            .update_probe_facts(
                identity.id,
                &report.upstream_account_id,
                &report.upstream_account_name,
                &report.scopes,
                now,
            )
            .await?;
        let required = match self.source(&identity.provider) {
            Ok(connector) => connector.descriptor().default_scopes.clone(),
            Err(_) => vec![],
        };
        let missing = required
            .iter()
            .filter(|s| !report.scopes.is_empty() && !report.scopes.contains(s))
            .map(|s| format!("scope {s}"))
            .collect();
        Ok((report, missing))
    }

    /// A probe that passed: the health follows, and an incident closes only when the
    /// request that opened it works again (invariant 10).
    async fn probe_passed(
        &self,
        identity: &Identity,
        credential: &Credential,
        report: ProbeReport,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) -> Result<ProbeOutcome, EngineError> {
        let transition = identity.health.apply(&HealthEvent::Succeeded, now)?;
        if transition.incident == IncidentEffect::Close {
            // A who-am-I alone never closes an incident that a report request opened: that
            // request must work again.
            if let Some(still) = self
                .failed_operation_still_fails(identity, credential, log)
                .await?
            {
                log.push(Event::IdentityProbed {
                    at: now,
                    identity: identity.label.clone(),
                    result: format!("who-am-I works, but {still}"),
                });
                return Ok(ProbeOutcome::Insufficient {
                    report,
                    missing: vec![still],
                });
            }
            self.recover(identity, transition, None, log).await?;
        } else if transition.is_change() {
            self.store
                .apply_health(&HealthChange::transition_only(identity.id, transition, now))
                .await?;
        }
        Ok(ProbeOutcome::Passed(report))
    }

    /// The first resource a pipeline of `identity` reads that the credential no longer
    /// reaches, with the failure that says so: absent from the resources the probe listed,
    /// or refused by the provider's resource probe (one request per resource, from the
    /// account's budget). Only failures that need a human count: a throttled or failing
    /// resource probe says nothing about access, and the run will tell.
    async fn unreachable_resource(
        &self,
        identity: &Identity,
        credential: &Credential,
        report: &ProbeReport,
        pipelines: &[Pipeline],
    ) -> Result<Option<(FailedOperation, String, Failure)>, EngineError> {
        if pipelines.is_empty() {
            return Ok(None);
        }
        let connector = self.source_for(identity)?;
        let has_resource_probe = connector.probes_resources();
        let mut asked = std::collections::HashSet::new();
        for pipeline in pipelines {
            let resource = &pipeline.source_resource;
            if !asked.insert(resource.clone()) {
                continue;
            }
            let operation = FailedOperation {
                pipeline: pipeline.id,
                resource: resource.clone(),
                stream: pipeline.streams.first().cloned().unwrap_or_default(),
            };
            // The provider's own resource probe is the authority where it has one (a
            // listing may show only part of what is reachable, as Google's lists the
            // customers reached directly, not a manager's clients).
            if has_resource_probe {
                if self.take_request(identity).is_err() {
                    // The budget is spent: the rest waits for the next probe.
                    return Ok(None);
                }
                let started = std::time::Instant::now();
                let answer = connector.probe_resource(credential, resource).await;
                self.stats
                    .record(crate::stats::CallKind::Probe, started, answer.is_ok());
                match answer {
                    Err(failure) if failure.cause.needs_human() => {
                        return Ok(Some((operation, pipeline.name.clone(), failure)));
                    }
                    _ => continue,
                }
            }
            if !report.resources.is_empty() && !report.resources.iter().any(|(r, _)| r == resource)
            {
                let failure = Failure::new(FailureCause::PermissionLost)
                    .with_code("resource_not_listed")
                    .with_message(format!(
                        "{resource} is no longer among the resources {} can read",
                        identity.label
                    ));
                return Ok(Some((operation, pipeline.name.clone(), failure)));
            }
        }
        Ok(None)
    }

    /// Does the report request that opened the identity's incident still fail? Asks for the
    /// latest complete window of its pipeline, resource and stream (one request from the
    /// account's budget). Some(what fails, in words) while it does — or while it cannot be
    /// told (throttled, a temporary error, the budget spent); None when it works, or when
    /// the incident was not opened by a report request.
    async fn failed_operation_still_fails(
        &self,
        identity: &Identity,
        credential: &Credential,
        log: &mut EventLog,
    ) -> Result<Option<String>, EngineError> {
        let Some(incident) = self.store.latest_incident(identity.id).await? else {
            return Ok(None);
        };
        let Some(origin) = incident.origin.filter(|_| incident.closed_at.is_none()) else {
            return Ok(None);
        };
        let Ok(pipeline) = self.store.pipeline(origin.pipeline).await else {
            // The pipeline is gone: nothing is left to prove.
            return Ok(None);
        };
        let what = format!(
            "resource {} (stream {}) still fails",
            origin.resource, origin.stream
        );
        if self.take_request(identity).is_err() {
            return Ok(Some(format!(
                "{what}: not checked yet (request budget spent)"
            )));
        }
        let now = self.clock.now();
        let grid = pipeline.grid();
        let current = grid.containing(now);
        let latest = grid.containing(
            current
                .start
                .checked_sub_signed(Duration::seconds(1))
                .unwrap_or(current.start),
        );
        let connector = self.source_for(identity)?;
        let started = std::time::Instant::now();
        let jobs = crate::jobs::StoredJobs {
            store: &self.store,
            clock: self.clock.as_ref(),
            identity: identity.id,
            // A probe does not wait for a report: a job being prepared means it works.
            patience: std::time::Duration::ZERO,
        };
        let answer = connector
            .extract_with_jobs(
                credential,
                &origin.resource,
                &origin.stream,
                gapless_core::ReportRange::new(latest, pipeline.time_zone),
                &jobs,
            )
            .await;
        self.stats
            .record(crate::stats::CallKind::Extract, started, answer.is_ok());
        match answer {
            Ok(extracted) => {
                self.charge_requests(identity, extracted.requests);
                Ok(None)
            }
            // The provider answered past the authorization: it works.
            Err(failure) if failure.cause.is_window_level() => Ok(None),
            Err(failure) => {
                let _ = log;
                Ok(Some(format!("{what}: {}", describe_failure(&failure))))
            }
        }
    }

    /// A probe (or the refresh before it) failed: recorded like any other failure.
    async fn probe_failed(
        &self,
        identity: &Identity,
        failure: gapless_core::Failure,
        log: &mut EventLog,
    ) -> Result<ProbeOutcome, EngineError> {
        let now = self.clock.now();
        let next = self.next_probe_due(identity, now);
        self.store.mark_probed(identity.id, now, next).await?;
        let detail = describe_failure(&failure);
        log.push(Event::IdentityProbed {
            at: now,
            identity: identity.label.clone(),
            result: format!("failed: {detail}"),
        });
        self.handle_failure(
            identity,
            failure,
            crate::failures::FailureContext::none(),
            log,
        )
        .await?;
        Ok(ProbeOutcome::Failed(detail))
    }

    /// Connect to a credentialed destination and check its privileges; the report names the
    /// role and the destination.
    pub(crate) async fn probe_destination(
        &self,
        name: &str,
        credential: &Credential,
    ) -> Result<ProbeReport, gapless_core::Failure> {
        use gapless_destinations::Destination as _;
        let destination = self.credentialed_destination(name, credential)?;
        destination.probe().await?;
        let who = match credential {
            Credential::Password { username, .. } => username.clone(),
            _ => String::new(),
        };
        let account = format!("{who} on {name}");
        Ok(ProbeReport {
            upstream_account_id: account.clone(),
            upstream_account_name: account,
            scopes: vec!["create tables".into()],
            access_expires_at: None,
            resources: vec![],
        })
    }

    /// Ask the provider (or the destination) who this credential is.
    async fn run_probe(
        &self,
        identity: &Identity,
        credential: &Credential,
        readers: &[Pipeline],
    ) -> Result<Result<ProbeReport, gapless_core::Failure>, EngineError> {
        if self.is_destination(&identity.provider) {
            return Ok(self.probe_destination(&identity.provider, credential).await);
        }
        let connector = self.source_for(identity)?;
        let mut report = match connector.probe(credential).await {
            Ok(report) => report,
            Err(failure) => return Ok(Err(failure)),
        };
        // A listing of its own is asked for only when pipelines read from the identity
        // (they are what it is checked against) and no resource probe asks each of them.
        if report.resources.is_empty() && !readers.is_empty() && !connector.probes_resources() {
            match connector.list_resources(credential).await {
                Ok(Some(listed)) => {
                    report.resources = listed.into_iter().map(|r| (r.id, r.name)).collect();
                }
                Ok(None) => {}
                Err(failure) => return Ok(Err(failure)),
            }
        }
        Ok(Ok(report))
    }

    /// Probe identities whose last probe is older than the probe interval (jittered per
    /// identity so they do not all fire together).
    pub async fn probe_due(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        let mut due_now = Vec::new();
        let gapless_store::Checked {
            identities: candidates,
            unreadable,
        } = self.store.identities_probe_due(now).await?;
        self.report_unreadable(unreadable, now, log);
        for identity in candidates {
            if matches!(identity.health, Health::Paused { .. }) {
                continue;
            }
            let due_at = identity
                .last_probe_at
                .map(|last| self.next_probe_due(&identity, last));
            if let Some(due_at) = due_at
                && due_at > now
            {
                // Its row did not say (or said another interval): said now, so the next
                // ticks do not read it before it is due.
                self.store
                    .set_probe_due(identity.id, identity.last_probe_at, due_at)
                    .await?;
                continue;
            }
            // A probe shares the account's request budget with syncs; a spent budget
            // moves it to a later tick.
            // One instance probes: the one that moves the identity's last probe time.
            if (self.is_destination(&identity.provider) || self.take_request(&identity).is_ok())
                && self
                    .store
                    .claim_probe(
                        identity.id,
                        identity.last_probe_at,
                        now,
                        self.next_probe_due(&identity, now),
                    )
                    .await?
            {
                due_now.push(identity);
            }
        }
        self.each_concurrently(
            due_now,
            |identity| async move {
                let mut own = EventLog::default();
                let result = self.probe_identity(identity.id, &mut own).await;
                let result = self.isolate(&identity, result.map(|_| ()), &mut own);
                (own, result)
            },
            log,
        )
        .await
    }

    /// Move identities with a known expiry inside a warning horizon to `expiring` and emit
    /// one warning per horizon.
    pub async fn check_expiries(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        let Some(longest) = self.config.expiry.horizons.iter().copied().max() else {
            return Ok(());
        };
        // Nothing that ends after the longest horizon can be forecast: those are not read.
        let until = now
            .checked_add_signed(longest)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        // A page at a time, as the refresh sweep reads. An unreadable row is logged by the
        // reader; the refresh and probe sweeps report it as an event, not this one.
        let mut after = None;
        loop {
            let page = self
                .store
                .expiry_candidates(now, until, after.as_ref(), SWEEP_PAGE)
                .await?;
            for (identity, renews) in page.identities {
                let result = self.check_expiry(&identity, renews, now, log).await;
                self.isolate(&identity, result, log)?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// One identity's error in a sweep is reported and does not stop the others (a crash
    /// simulated by a test still propagates).
    fn isolate(
        &self,
        identity: &Identity,
        result: Result<(), EngineError>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        match result {
            Err(error @ EngineError::Crashed(_)) => Err(error),
            Err(error) => {
                tracing::error!(identity = %identity.label, %error, "identity check failed");
                log.push(Event::IdentityCheckFailed {
                    at: self.clock.now(),
                    identity: identity.label.clone(),
                    error: error.to_string(),
                });
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Does `identity`'s access token renew without a person: by the application's own
    /// credentials (client credentials) or by a refresh token? `known` is what the identity
    /// row says; when it says nothing, it is learned (and recorded) as by
    /// [`Self::learn_renewal`]; a credential that cannot be opened counts as "no".
    async fn renews_itself(
        &self,
        identity: &Identity,
        known: Option<bool>,
    ) -> Result<bool, EngineError> {
        match known {
            Some(known) => Ok(known),
            None => Ok(self.learn_renewal(identity).await?.unwrap_or(false)),
        }
    }

    /// Learn whether `identity`'s credential renews its access token by itself and record
    /// it with the identity: by its provider's kind where that says, else by opening the
    /// credential, once per credential (see [`Self::access_renews`]). `None` when the
    /// credential cannot be opened (not recorded: that is the refresh's to report).
    async fn learn_renewal(&self, identity: &Identity) -> Result<Option<bool>, EngineError> {
        if let Some(renews) = self.renewal_by_kind(&identity.provider) {
            self.store
                .record_access_renews(identity.id, renews, None)
                .await?;
            return Ok(Some(renews));
        }
        let (sealed, generation) = self.store.sealed_credential(identity.id).await?;
        let Ok(credential) = self
            .vault
            .open_credential(&identity.id.to_string(), &sealed)
        else {
            return Ok(None);
        };
        let renews = crate::refresh::renews_itself(&credential);
        self.store
            .record_access_renews(identity.id, renews, Some(generation))
            .await?;
        Ok(Some(renews))
    }

    /// Whether `credential`, of `provider`, renews its access token without a person: by
    /// the provider's kind where that says (client credentials renew, keys and passwords do
    /// not), else by the credential (a refresh token renews it).
    pub fn access_renews(&self, provider: &str, credential: &gapless_vault::Credential) -> bool {
        self.renewal_by_kind(provider)
            .unwrap_or_else(|| crate::refresh::renews_itself(credential))
    }

    fn renewal_by_kind(&self, provider: &str) -> Option<bool> {
        use gapless_providers::AuthKind;
        match self.source(provider).map(|s| s.descriptor().auth) {
            Ok(AuthKind::OAuth2ClientCredentials) => Some(true),
            Ok(AuthKind::ApiKey | AuthKind::Password) => Some(false),
            _ => None,
        }
    }

    async fn check_expiry(
        &self,
        identity: &Identity,
        renews: Option<bool>,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        {
            // Only what a person must renew is warned of. Whether the credential renews its
            // access token by itself matters only when that token is what ends first.
            let Some(first) = self.config.expiry.forecast(identity, false, now) else {
                return Ok(());
            };
            let renews_itself = first.kind == gapless_core::lifecycle::ExpiryKind::AccessToken
                && self.renews_itself(identity, renews).await?;
            let Some(forecast) = self.config.expiry.forecast(identity, renews_itself, now) else {
                return Ok(());
            };
            let transition = identity
                .health
                .apply(&HealthEvent::ExpiryApproaching { at: forecast.at }, now)?;
            let warned_before = matches!(identity.health, Health::Expiring { at } if at == forecast.at)
                && self
                    .store
                    .expiry_warned(identity.id, forecast.at, forecast.horizon)
                    .await?;
            let mut change = HealthChange::transition_only(identity.id, transition, now);
            if warned_before {
                if change.transition.is_change() {
                    self.store.apply_health(&change).await?;
                }
                return Ok(());
            }
            // The state, the warning and its record in one transaction: a crash neither
            // loses the warning nor sends it twice, and of two instances one writes it.
            let out = self.expiry_notifications(identity, &forecast).await?;
            change.notifications = out.messages;
            change.reauth_links = vec![out.link];
            if self
                .store
                .warn_expiry(&change, forecast.at, forecast.horizon)
                .await?
            {
                log.push(Event::ExpiryWarning {
                    at: now,
                    identity: identity.label.clone(),
                    kind: forecast.kind.as_str().to_string(),
                    expires_at: forecast.at,
                    horizon_days: forecast.horizon.num_days(),
                });
            }
        }
        Ok(())
    }

    /// One provider outage instead of many degraded identities: when enough identities of
    /// one provider are degraded at once, report it once.
    pub async fn detect_provider_outages(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        // Only the degraded identities are read, and the working ones of a provider with
        // failures counted: a tick with no failure reads nothing else.
        let degraded = self.store.identities_in_state("degraded").await?;
        let mut by_provider: std::collections::BTreeMap<String, ProviderTally> =
            std::collections::BTreeMap::new();
        for identity in &degraded {
            if let Health::Degraded { since, .. } = &identity.health
                && now - *since <= Duration::hours(1)
            {
                let tally = by_provider.entry(identity.provider.clone()).or_default();
                tally.failing += 1;
                tally.since = Some(tally.since.map_or(*since, |s| s.min(*since)));
                tally.labels.push(identity.describe());
            }
        }
        for (provider, tally) in &mut by_provider {
            tally.total = self.store.working_identities_of(provider).await?;
        }
        // An open outage of a provider with no recent failure is closed below.
        for provider in self.store.open_provider_outages().await? {
            by_provider.entry(provider).or_default();
        }
        for (
            provider,
            ProviderTally {
                failing,
                total,
                since,
                labels,
            },
        ) in by_provider
        {
            let provider = provider.as_str();
            if !self.config.outage.is_outage(failing, total) {
                self.store.close_provider_outage(provider).await?;
                continue;
            }
            let since = since.unwrap_or(now);
            // One notice per outage: only the instance that opens it writes one.
            let notices = self.outage_notifications(provider, failing, total, since, labels)?;
            if self
                .store
                .open_provider_outage(provider, since, &notices)
                .await?
            {
                tracing::warn!(provider, failing, total, "provider outage");
                log.push(Event::ProviderOutage {
                    at: now,
                    provider: provider.to_string(),
                    failing,
                    total,
                });
            }
        }
        Ok(())
    }
}
