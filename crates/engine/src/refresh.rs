//! Token refresh: proactive, single-flight per identity inside the process (a mutex per
//! identity) and across instances (a fenced lease in the store), the rotated token committed
//! before anything uses it, and an explicit path for the unknown outcome (request sent, no
//! answer) that never sends the same refresh token again.

use std::sync::Arc;

use gapless_core::{Failure, FailureCause, IdentityId, ReauthReason};
use gapless_providers::{AuthKind, SourceConnector, TokenError};
use gapless_store::{CredentialUpdate, RefreshStart};
use gapless_vault::{Credential, RefreshToken};

use crate::{Engine, EngineError, Event, EventLog, authorize::credential_from};

/// The result of asking for a usable credential.
#[derive(Debug)]
pub(crate) enum Fresh {
    Ready(Credential),
    Failed(Failure),
    /// Another instance holds the refresh lease; try again later.
    Busy,
}

/// What a credential needs before it is used.
enum Need {
    /// Nothing: use it as it is.
    Nothing,
    /// A new token from the application's own credentials.
    ClientToken,
    /// A refresh with this refresh token.
    Refresh(RefreshToken),
    /// It cannot be used and nothing can renew it.
    Failed(Failure),
}

/// The identity and its credential as read before a refresh.
#[derive(Clone, Copy)]
struct Snapshot<'a> {
    identity: &'a gapless_core::Identity,
    credential: &'a Credential,
    generation: i64,
}

/// Points where a test can simulate a crash (the refresh path, the recovery path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// The refresh is due; its lease is not taken and nothing is recorded or sent yet.
    BeforeSend,
    /// The lease is held and the intent to send recorded (one commit); the refresh token
    /// is not sent yet.
    AfterIntent,
    /// The provider answered (and may have rotated the token); nothing is committed.
    AfterAnswer,
    /// The new credential is committed (the commit ended the lease); nothing after it has
    /// run.
    AfterCommit,
    /// A recovery is committed (credential swapped, incident recovering); nothing is
    /// back-filled yet.
    AfterRecoveryBegan,
    /// One more window of a run is committed by its destination; its ledger row is written
    /// with the request's other windows.
    AfterWindowLoaded,
    /// The back-fill after a recovery ran; the recovery notice is not written yet.
    BeforeRecoveryNotice,
}

/// Decides whether to "crash" at a point (tests only; production has none).
pub type Failpoint = Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>;

/// The stored credential cannot be opened with the configured master key.
pub(crate) fn undecryptable(error: &gapless_vault::VaultError) -> Failure {
    Failure::new(FailureCause::ReauthRequired {
        reason: ReauthReason::Undecryptable,
    })
    .with_code("undecryptable")
    .with_message(error.to_string())
}

/// Does `credential` renew its access token without a person (it holds a refresh token)?
pub(crate) fn renews_itself(credential: &Credential) -> bool {
    matches!(
        credential,
        Credential::OAuth2 {
            refresh_token: Some(_),
            ..
        }
    )
}

/// The name of the lease under which `id`'s token is refreshed.
fn refresh_lease_name(id: IdentityId) -> String {
    format!("refresh:{id}")
}

fn unknown_outcome(detail: &str) -> Failure {
    Failure::new(FailureCause::ReauthRequired {
        reason: ReauthReason::RefreshOutcomeUnknown,
    })
    .with_code("refresh_outcome_unknown")
    .with_message(detail.to_string())
}

impl Engine {
    /// The audit record of a refresh of `identity`'s credential by this instance.
    fn refreshed(&self, identity: &gapless_core::Identity) -> gapless_core::AuditRecord {
        self.audit_record(
            &self.caller(),
            gapless_core::AuditAction::CredentialRefreshed,
            &identity.label,
        )
        .identity(identity.id)
    }

    /// A client-credentials identity gets a new token from the application's own
    /// credentials: no refresh token is spent, so there is no unknown-outcome risk; the lease
    /// still keeps instances from fetching in step.
    async fn renew_client_token(
        &self,
        identity: &gapless_core::Identity,
        generation: i64,
        connector: &dyn SourceConnector,
        log: &mut EventLog,
    ) -> Result<Fresh, EngineError> {
        let now = self.clock.now();
        let id = identity.id;
        let Some(lease) = self.take_refresh_lease(id, now).await? else {
            return Ok(Fresh::Busy);
        };
        let (_, current_sealed, current_generation) =
            self.store.identity_with_credential(id).await?;
        if current_generation != generation {
            self.store.release_lease(&lease).await?;
            return Ok(Fresh::Ready(
                self.vault
                    .open_credential(&id.to_string(), &current_sealed)?,
            ));
        }
        let started = std::time::Instant::now();
        let answer = connector.client_credentials(now).await;
        self.stats
            .record(crate::stats::CallKind::Refresh, started, answer.is_ok());
        let result = match answer {
            Ok(tokens) => {
                let renewed = credential_from(&tokens, None);
                self.commit_renewed(
                    identity,
                    Renewed {
                        at: now,
                        credential: &renewed,
                        generation: current_generation,
                        tokens: &tokens,
                        refresh_expires_at: None,
                        lease: lease.clone(),
                        renews_itself: true,
                    },
                    log,
                )
                .await?;
                // The lease ended with that commit.
                Fresh::Ready(renewed)
            }
            Err(error) => {
                self.store.release_lease(&lease).await?;
                Fresh::Failed(error.failure())
            }
        };
        Ok(result)
    }

    /// The lease under which `id`'s token is refreshed, unless another task or instance
    /// holds it.
    async fn take_refresh_lease(
        &self,
        id: gapless_core::IdentityId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<gapless_store::Lease>, EngineError> {
        Ok(self
            .store
            .acquire_lease(
                &refresh_lease_name(id),
                &self.instance,
                self.config.refresh_lease,
                now,
            )
            .await?)
    }

    pub(crate) fn crash_at(&self, point: CrashPoint) -> Result<(), EngineError> {
        match &self.failpoint {
            Some(f) if f(point) => Err(EngineError::Crashed(point)),
            _ => Ok(()),
        }
    }

    /// The identity's credential, refreshed first when due (or when `force` is set).
    pub(crate) async fn credential_for_use(
        &self,
        id: IdentityId,
        force: bool,
        log: &mut EventLog,
    ) -> Result<Fresh, EngineError> {
        let _single_flight = self.refresh_locks.lock(id).await;
        let now = self.clock.now();
        // Identity and credential from one snapshot, so "due" and the generation agree.
        let (identity, sealed, generation) = self.store.identity_with_credential(id).await?;
        let credential = match self.vault.open_credential(&id.to_string(), &sealed) {
            Ok(credential) => credential,
            // A health state with its incident, not an error retried every tick.
            Err(error) => return Ok(Fresh::Failed(undecryptable(&error))),
        };
        // Keys and passwords (a destination's too) are used as they are: no connector is
        // asked.
        if !matches!(credential, Credential::OAuth2 { .. }) {
            return Ok(Fresh::Ready(credential));
        }
        let connector = self.source_for(&identity)?;
        match self.renewal_need(&identity, &credential, connector.as_ref(), force, now) {
            Need::Nothing => Ok(Fresh::Ready(credential)),
            Need::Failed(failure) => Ok(Fresh::Failed(failure)),
            Need::ClientToken => {
                self.renew_client_token(&identity, generation, connector.as_ref(), log)
                    .await
            }
            Need::Refresh(refresh_token) => {
                let snapshot = Snapshot {
                    identity: &identity,
                    credential: &credential,
                    generation,
                };
                self.refresh_under_lease(snapshot, &refresh_token, connector.as_ref(), log)
                    .await
            }
        }
    }

    /// What the identity's credential needs before it is used at `now`.
    fn renewal_need(
        &self,
        identity: &gapless_core::Identity,
        credential: &Credential,
        connector: &dyn SourceConnector,
        force: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Need {
        let Credential::OAuth2 {
            refresh_token,
            access_expires_at,
            ..
        } = credential
        else {
            return Need::Nothing;
        };
        let obtained = identity
            .token_obtained_at
            .or(identity.granted_at)
            .unwrap_or(identity.created_at);
        let due = force
            || identity.refresh_in_flight_since.is_some()
            || self
                .config
                .refresh
                .refresh_due(identity.id, *access_expires_at, obtained, now);
        if !due {
            return Need::Nothing;
        }
        if connector.descriptor().auth == AuthKind::OAuth2ClientCredentials {
            return Need::ClientToken;
        }
        match refresh_token {
            Some(token) => Need::Refresh(token.clone()),
            None if access_expires_at.is_some_and(|at| at <= now) => Need::Failed(
                Failure::new(FailureCause::ReauthRequired {
                    reason: ReauthReason::Expired,
                })
                .with_code("access_token_expired")
                .with_message("the access token expired and there is no refresh token"),
            ),
            None => Need::Nothing,
        }
    }

    /// Spend `refresh_token` under the identity's refresh lease: take the lease, read the
    /// identity again (another instance may have refreshed since the snapshot, or died
    /// after sending) and record the intent, in one transaction; send; record the answer.
    async fn refresh_under_lease(
        &self,
        snapshot: Snapshot<'_>,
        refresh_token: &RefreshToken,
        connector: &dyn SourceConnector,
        log: &mut EventLog,
    ) -> Result<Fresh, EngineError> {
        let id = snapshot.identity.id;
        let now = self.clock.now();
        let rotating = connector.descriptor().rotating_refresh_tokens;
        self.crash_at(CrashPoint::BeforeSend)?;
        let name = refresh_lease_name(id);
        let request = gapless_store::LeaseRequest {
            name: &name,
            holder: &self.instance,
            ttl: self.config.refresh_lease,
        };
        // The provider's refresh tokens do not rotate: the one we hold still works whatever
        // a lost answer said, so sending it again is safe.
        let started = self
            .store
            .start_refresh(id, &request, snapshot.generation, !rotating, now)
            .await?;
        let lease = match started {
            RefreshStart::Busy => return Ok(Fresh::Busy),
            RefreshStart::InFlight { since } => {
                return Ok(Fresh::Failed(unknown_outcome(&format!(
                    "a refresh started at {since} never recorded its answer"
                ))));
            }
            RefreshStart::Changed {
                identity, sealed, ..
            } => {
                return Ok(Fresh::Ready(
                    self.vault
                        .open_credential(&identity.id.to_string(), &sealed)?,
                ));
            }
            RefreshStart::Started { lease, identity } => {
                if let Some(since) = identity.refresh_in_flight_since {
                    tracing::warn!(identity = %identity.label, %since, "a refresh never recorded its answer; sending it again (refresh tokens of this provider do not rotate)");
                }
                lease
            }
        };
        self.crash_at(CrashPoint::AfterIntent)?;
        let started = std::time::Instant::now();
        let answer = connector.refresh(refresh_token, now).await;
        self.stats
            .record(crate::stats::CallKind::Refresh, started, answer.is_ok());
        self.crash_at(CrashPoint::AfterAnswer)?;
        self.record_refresh_answer(snapshot, answer, lease, rotating, log)
            .await
    }

    /// Commit what the token endpoint answered, ending the lease: the rotated credential,
    /// or the intent kept where the old refresh token may be spent, or cleared where it is
    /// not.
    async fn record_refresh_answer(
        &self,
        snapshot: Snapshot<'_>,
        answer: Result<gapless_providers::TokenSet, TokenError>,
        lease: gapless_store::Lease,
        rotating: bool,
        log: &mut EventLog,
    ) -> Result<Fresh, EngineError> {
        let Snapshot {
            identity,
            credential,
            generation,
        } = snapshot;
        let id = identity.id;
        match answer {
            Ok(tokens) => {
                let renewed = credential_from(&tokens, Some(credential));
                self.commit_renewed(
                    identity,
                    Renewed {
                        at: self.clock.now(),
                        credential: &renewed,
                        generation,
                        tokens: &tokens,
                        refresh_expires_at: tokens
                            .refresh_expires_at
                            .or(identity.refresh_expires_at),
                        lease,
                        renews_itself: renews_itself(&renewed),
                    },
                    log,
                )
                .await?;
                // The lease ended with that commit.
                Ok(Fresh::Ready(renewed))
            }
            Err(TokenError::UnknownOutcome(detail)) if rotating => {
                // Keep the intent: the token may be spent; never send it again.
                self.store.end_refresh(id, &lease, false).await?;
                Ok(Fresh::Failed(unknown_outcome(&detail)))
            }
            Err(TokenError::Unusable(detail)) if rotating => {
                self.store.end_refresh(id, &lease, false).await?;
                Ok(Fresh::Failed(unknown_outcome(&format!(
                    "the provider's answer was unusable, so whether it rotated the token is unknown: {detail}"
                ))))
            }
            Err(error) => {
                // A definite answer (or nothing sent): the old refresh token is unspent.
                self.store.end_refresh(id, &lease, true).await?;
                Ok(Fresh::Failed(error.failure()))
            }
        }
    }
}

/// A credential the provider renewed, to be stored under the lease that asked for it.
struct Renewed<'a> {
    /// The instant the renewal is stored as of (its token's obtained time).
    at: chrono::DateTime<chrono::Utc>,
    credential: &'a Credential,
    /// The stored credential's generation it replaces.
    generation: i64,
    tokens: &'a gapless_providers::TokenSet,
    refresh_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    lease: gapless_store::Lease,
    renews_itself: bool,
}

impl Engine {
    /// Seal and store a renewed credential of `identity` (the commit ends the lease),
    /// then count and log the refresh.
    async fn commit_renewed(
        &self,
        identity: &gapless_core::Identity,
        renewed: Renewed<'_>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = renewed.at;
        let id = identity.id;
        let sealed = self
            .vault
            .seal_credential(&id.to_string(), renewed.credential)?;
        self.store
            .update_credential(
                id,
                &CredentialUpdate {
                    sealed,
                    expected_generation: renewed.generation,
                    access_expires_at: renewed.tokens.access_expires_at,
                    refresh_expires_at: renewed.refresh_expires_at,
                    scopes: None,
                    granted_at: None,
                    authorization_expires_at: None,
                    lease: Some(renewed.lease),
                    upstream_account: None,
                    access_renews: Some(renewed.renews_itself),
                },
                now,
                &self.refreshed(identity),
            )
            .await?;
        self.crash_at(CrashPoint::AfterCommit)?;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log.push(Event::TokenRefreshed {
            at: now,
            identity: identity.label.clone(),
        });
        Ok(())
    }
}
