//! Connecting and reauthorizing identities through the OAuth code flow: a consent URL with
//! `state` and PKCE, the callback, the code exchange, and validation (probe, same upstream
//! account, required scopes) before anything is stored or replaced (invariant 9).

use std::{collections::HashMap, fmt};

use gapless_core::{
    AuditAction, AuditRecord, Caller, Failure, Health, HealthEvent, Identity, IdentityId,
    PipelineState, health::IncidentEffect,
};
use gapless_providers::{ProbeReport, TokenError, TokenSet};
use gapless_store::{CredentialUpdate, HealthChange, IncidentChange, NewIdentity};
use gapless_vault::Credential;

use crate::{Engine, EngineError, Event, EventLog};

/// A consent in progress: send the person to `url`, then hand the callback URL back.
pub struct PendingAuthorization {
    pub provider: String,
    /// The region and settings of the identity it connects (its own shop, its region).
    pub settings: gapless_core::IdentitySettings,
    pub url: String,
    state: String,
    verifier: String,
    redirect_uri: String,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("provider", &self.provider)
            .field("settings", &self.settings)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Why a callback did not produce a usable credential. Nothing is stored in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    #[error("the callback's state does not match the authorization request (possible forgery)")]
    StateMismatch,
    #[error("the provider did not grant access: {0}")]
    Denied(String),
    #[error("the callback carries no authorization code")]
    MissingCode,
    #[error("the callback is not signed by the provider: {0}")]
    Unsigned(String),
    #[error(
        "the callback does not name the account ({0}), or names it with characters no account id has"
    )]
    MissingAccount(String),
    #[error("the code exchange failed: {0}")]
    Token(#[from] TokenError),
    #[error("the new credential does not pass the probe: {}", crate::describe_failure(.0))]
    Probe(Failure),
    #[error(
        "the new credential belongs to upstream account {got}, but this identity is {expected}; {}",
        if *.may_confirm { "this identity accepts another account only when you confirm the switch" } else { "reconnect with the same account" }
    )]
    DifferentAccount {
        expected: String,
        got: String,
        /// The identity accepts another account if the person confirms.
        may_confirm: bool,
    },
    #[error("the new credential lacks required scope(s): {}", .0.join(", "))]
    MissingScopes(Vec<String>),
}

impl PendingAuthorization {
    /// The `state` the provider will send back to the callback.
    pub fn state(&self) -> &str {
        &self.state
    }
}

impl Engine {
    /// Start a consent for `provider` with its default scopes.
    pub fn begin_authorization(&self, provider: &str) -> Result<PendingAuthorization, EngineError> {
        self.begin_authorization_to(
            provider,
            &gapless_core::IdentitySettings::default(),
            &self.config.redirect_uri(),
        )
    }

    /// Start the consent that reauthorizes `identity` (at its own region and settings),
    /// back to the server's callback.
    pub fn begin_reauthorization(
        &self,
        identity: &Identity,
    ) -> Result<PendingAuthorization, EngineError> {
        self.begin_authorization_to(
            &identity.provider,
            &identity.settings,
            &self.config.redirect_uri(),
        )
    }

    /// Start a consent for an identity with `settings` (its own region or shop; those of
    /// the identity being reauthorized) whose callback goes to `redirect_uri` (the
    /// server's, or a loopback listener of the CLI, like `gcloud auth login`).
    pub fn begin_authorization_to(
        &self,
        provider: &str,
        settings: &gapless_core::IdentitySettings,
        redirect_uri: &str,
    ) -> Result<PendingAuthorization, EngineError> {
        let connector = self.placed_source(provider, settings)?;
        let redirect_uri = redirect_uri.to_string();
        let scopes = connector.descriptor().default_scopes.clone();
        let request = connector
            .authorization_request(&redirect_uri, &scopes)
            .map_err(CallbackError::Token)?;
        Ok(PendingAuthorization {
            provider: provider.to_string(),
            settings: settings.clone(),
            url: request.url,
            state: request.state,
            verifier: request.verifier,
            redirect_uri,
        })
    }

    /// Check the callback, exchange the code, probe the new credential.
    async fn complete(
        &self,
        pending: &PendingAuthorization,
        callback: &url::Url,
    ) -> Result<(TokenSet, ProbeReport), EngineError> {
        let params: HashMap<String, String> = callback.query_pairs().into_owned().collect();
        if params.get("state").map(String::as_str) != Some(pending.state.as_str()) {
            return Err(CallbackError::StateMismatch.into());
        }
        if let Some(error) = params.get("error") {
            return Err(CallbackError::Denied(error.clone()).into());
        }
        let connector = self.placed_source(&pending.provider, &pending.settings)?;
        // Where the provider signs its redirect, nothing of an unsigned one is used.
        let pairs: Vec<(String, String)> = callback.query_pairs().into_owned().collect();
        connector
            .verify_callback(&pairs)
            .map_err(CallbackError::Unsigned)?;
        let names = connector.callback_params();
        let code = params.get(&names.code).ok_or(CallbackError::MissingCode)?;
        let now = self.clock.now();
        let tokens = connector
            .exchange_code(code, &pending.verifier, &pending.redirect_uri, now)
            .await
            .map_err(CallbackError::Token)?;
        let credential = credential_from(&tokens, None);
        let mut probe = connector
            .probe(&credential)
            .await
            .map_err(CallbackError::Probe)?;
        // Where the consent names the account, that is whose the credential is.
        if let Some(name) = &names.account {
            let account = params
                .get(name)
                .filter(|a| {
                    !a.is_empty()
                        && a.len() <= 128
                        && a.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                })
                .ok_or_else(|| CallbackError::MissingAccount(name.clone()))?;
            probe.upstream_account_id = account.clone();
            if probe.upstream_account_name.is_empty() {
                probe.upstream_account_name = account.clone();
            }
        }
        let required = &connector.descriptor().default_scopes;
        // What was granted: as the token answer says, else the probe, else the scope the
        // consent's redirect echoes (Login with Amazon says it only there). A provider
        // that says it nowhere is not second-guessed: its answers will tell.
        let echoed = params
            .get("scope")
            .map(|s| gapless_providers::oauth::split_scopes(s))
            .unwrap_or_default();
        let granted = [&tokens.scopes, &probe.scopes, &echoed]
            .into_iter()
            .find(|s| !s.is_empty());
        let Some(granted) = granted else {
            return Ok((tokens, probe));
        };
        let missing: Vec<String> = required
            .iter()
            .filter(|s| !granted.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(CallbackError::MissingScopes(missing).into());
        }
        Ok((tokens, probe))
    }

    /// Finish a consent by creating a new identity.
    pub async fn connect_identity(
        &self,
        pending: &PendingAuthorization,
        callback: &url::Url,
        label: &str,
        owners: Vec<String>,
        caller: &Caller,
    ) -> Result<(Identity, EventLog), EngineError> {
        if label.trim().is_empty() {
            return Err(EngineError::Invalid(
                "an identity needs a non-empty label".into(),
            ));
        }
        let (tokens, probe) = self.complete(pending, callback).await?;
        let now = self.clock.now();
        let lifetimes = self.source(&pending.provider)?.descriptor().lifetimes;
        let identity = self
            .create_identity(
                (&pending.provider, &pending.settings),
                label,
                owners,
                &credential_from(&tokens, None),
                &probe,
                Expiries {
                    access: tokens.access_expires_at,
                    refresh: tokens.refresh_expires_at,
                    authorization: lifetimes.authorization_expires_at(now),
                },
                scopes_of(&tokens, &probe),
                caller,
            )
            .await?;
        let mut log = EventLog::default();
        log.push(Event::IdentityConnected {
            at: now,
            identity: identity.label.clone(),
            upstream_account: identity.describe(),
        });
        Ok((identity, log))
    }

    /// Finish a consent by replacing the credential of `identity` — only after the new one
    /// passed the probe, belongs to the same upstream account and has the required scopes.
    /// Then the identity is healthy, its pipelines resume, missed windows are back-filled and
    /// the recovery is reported.
    pub async fn reauthorize(
        &self,
        identity_id: IdentityId,
        pending: &PendingAuthorization,
        callback: &url::Url,
    ) -> Result<EventLog, EngineError> {
        self.reauthorize_then(identity_id, pending, callback, ReauthOptions::default())
            .await
    }

    /// [`Engine::reauthorize`], with the back-fill now or left to the caller.
    pub async fn reauthorize_then(
        &self,
        identity_id: IdentityId,
        pending: &PendingAuthorization,
        callback: &url::Url,
        options: ReauthOptions,
    ) -> Result<EventLog, EngineError> {
        let identity = self.store.identity(identity_id).await?;
        // Read with the identity, before the slow validation: a swap by someone else
        // meanwhile makes this one fail instead of overwriting it.
        let (_, generation) = self.store.sealed_credential(identity_id).await?;
        if identity.provider != pending.provider {
            return Err(EngineError::Invalid(format!(
                "identity {} is a {} identity, the consent was for {}",
                identity.label, identity.provider, pending.provider
            )));
        }
        if identity.settings != pending.settings {
            return Err(EngineError::Invalid(format!(
                "identity {} is at {}, the consent was for {}",
                identity.label,
                place(&identity.settings),
                place(&pending.settings)
            )));
        }
        let (tokens, probe) = self.complete(pending, callback).await?;
        let now = self.clock.now();
        let authorization_expires_at = self
            .source(&identity.provider)?
            .descriptor()
            .lifetimes
            .authorization_expires_at(now);
        self.swap_validated(
            &identity,
            &credential_from(&tokens, None),
            &probe,
            Expiries {
                access: tokens.access_expires_at,
                refresh: tokens.refresh_expires_at,
                authorization: authorization_expires_at,
            },
            scopes_of(&tokens, &probe),
            options,
            generation,
        )
        .await
    }
}

/// The expiries a new credential brings.
pub(crate) struct Expiries {
    access: Option<chrono::DateTime<chrono::Utc>>,
    refresh: Option<chrono::DateTime<chrono::Utc>>,
    authorization: Option<chrono::DateTime<chrono::Utc>>,
}

impl Engine {
    /// A token from the client-credentials grant, and the probe of it.
    async fn service_token(
        &self,
        provider: &str,
        settings: &gapless_core::IdentitySettings,
    ) -> Result<(TokenSet, Credential, ProbeReport), EngineError> {
        let connector = self.placed_source(provider, settings)?;
        let tokens = connector
            .client_credentials(self.clock.now())
            .await
            .map_err(CallbackError::Token)?;
        let credential = credential_from(&tokens, None);
        let probe = connector
            .probe(&credential)
            .await
            .map_err(CallbackError::Probe)?;
        Ok((tokens, credential, probe))
    }

    /// Store a new identity with its validated credential (sealed for its row id) and what
    /// the probe learned.
    #[allow(clippy::too_many_arguments)]
    async fn create_identity(
        &self,
        (provider, settings): (&str, &gapless_core::IdentitySettings),
        label: &str,
        owners: Vec<String>,
        credential: &Credential,
        probe: &ProbeReport,
        expiries: Expiries,
        scopes: Vec<String>,
        caller: &Caller,
    ) -> Result<Identity, EngineError> {
        let now = self.clock.now();
        let identity = Identity {
            id: IdentityId::new(),
            provider: provider.to_string(),
            label: label.trim().to_string(),
            upstream_account_id: Some(probe.upstream_account_id.clone()),
            upstream_account_name: Some(probe.upstream_account_name.clone()),
            scopes,
            owners,
            granted_at: Some(now),
            access_expires_at: expiries.access,
            refresh_expires_at: expiries.refresh,
            authorization_expires_at: expiries.authorization,
            token_obtained_at: Some(now),
            refresh_in_flight_since: None,
            last_probe_at: Some(now),
            health: Health::Healthy,
            allow_any_account: false,
            settings: settings.clone(),
            created_at: now,
            updated_at: now,
        };
        let sealed = self
            .vault
            .seal_credential(&identity.id.to_string(), credential)?;
        let mut audit = self
            .audit_record(caller, AuditAction::IdentityCreated, &identity.label)
            .identity(identity.id)
            .with("provider", identity.provider.clone())
            .with("upstream_account", identity.describe())
            .with("generation", 1);
        if !identity.settings.is_empty() {
            audit = audit.with("at_provider", identity.settings.describe());
        }
        self.store
            .insert_identity(
                &NewIdentity {
                    identity: identity.clone(),
                    sealed,
                    next_probe_due: Some(self.next_probe_due(&identity, now)),
                    access_renews: Some(self.access_renews(provider, credential)),
                },
                &audit,
            )
            .await?;
        Ok(identity)
    }

    /// Replace `identity`'s credential with a validated one (it passed `probe`): refused
    /// when it belongs to another upstream account; otherwise swapped in the transaction
    /// that heals the identity, closes its incident and resumes its pipelines, followed by
    /// the backfill and the recovery report.
    #[allow(clippy::too_many_arguments)]
    async fn swap_validated(
        &self,
        identity: &Identity,
        credential: &Credential,
        probe: &ProbeReport,
        expiries: Expiries,
        scopes: Vec<String>,
        options: ReauthOptions,
        generation: i64,
    ) -> Result<EventLog, EngineError> {
        let mut switched = None;
        if let Some(expected) = &identity.upstream_account_id
            && expected != &probe.upstream_account_id
        {
            if !(identity.allow_any_account && options.accept_other_account) {
                return Err(CallbackError::DifferentAccount {
                    expected: identity.describe(),
                    got: format!(
                        "{} ({})",
                        probe.upstream_account_name, probe.upstream_account_id
                    ),
                    may_confirm: identity.allow_any_account,
                }
                .into());
            }
            switched = Some((
                probe.upstream_account_id.clone(),
                probe.upstream_account_name.clone(),
            ));
        }
        let now = self.clock.now();
        let transition = identity.health.apply(&HealthEvent::Reauthorized, now)?;
        let sealed = self
            .vault
            .seal_credential(&identity.id.to_string(), credential)?;
        let mut log = EventLog::default();
        log.push(Event::IdentityReauthorized {
            at: now,
            identity: identity.label.clone(),
            upstream_account: identity.describe(),
        });
        let incident = self.store.open_incident_id(identity.id).await?;
        let caller = options.caller.clone().unwrap_or_else(|| self.caller());
        let mut audit = self
            .audit_record(&caller, AuditAction::CredentialSwapped, &identity.label)
            .identity(identity.id)
            .with("upstream_account", identity.describe());
        if let Some((id, name)) = &switched {
            audit = audit.with("switched_to", format!("{name} ({id})"));
        }
        self.recover_state(
            identity,
            transition,
            Some(CredentialUpdate {
                sealed,
                expected_generation: generation,
                access_expires_at: expiries.access,
                refresh_expires_at: expiries.refresh,
                scopes: Some(scopes),
                granted_at: Some(now),
                authorization_expires_at: expiries.authorization,
                lease: None,
                upstream_account: switched,
                // Learned by the next expiry sweep (the provider decides for client
                // credentials).
                access_renews: None,
            }),
            vec![audit],
            &mut log,
        )
        .await?;
        if !options.defer_backfill {
            self.resume_after_recovery(identity.id, incident, &mut log)
                .await?;
        }
        Ok(log)
    }

    /// Apply a recovering transition (reauthorization, or a probe and the failed operation
    /// that work again): one transaction heals the identity, moves its incident to
    /// `recovering` and resumes its pipelines; then the back-fill runs and the recovery is
    /// reported in the transaction that closes the incident. A crash in between leaves the
    /// incident recovering, which the next tick finishes (`finish_recoveries`).
    pub(crate) async fn recover(
        &self,
        identity: &Identity,
        transition: gapless_core::Transition,
        credential: Option<CredentialUpdate>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let incident = self.store.open_incident_id(identity.id).await?;
        self.recover_state(identity, transition, credential, vec![], log)
            .await?;
        self.resume_after_recovery(identity.id, incident, log).await
    }

    /// The recovering transaction: credential swap, health, the incident recovering, the
    /// waiting pipelines set active and the reasons of their missing windows updated.
    async fn recover_state(
        &self,
        identity: &Identity,
        transition: gapless_core::Transition,
        credential: Option<CredentialUpdate>,
        audit: Vec<AuditRecord>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let dependents = self.store.pipelines_using(identity.id).await?;
        let recovers = transition.incident == IncidentEffect::Close;
        self.store
            .apply_health(&HealthChange {
                identity: identity.id,
                transition,
                at: now,
                incident: if recovers {
                    IncidentChange::Recover
                } else {
                    IncidentChange::None
                },
                pipelines: dependents
                    .iter()
                    .filter(|p| {
                        p.state
                            == PipelineState::WaitingForIdentity {
                                identity: identity.id,
                            }
                    })
                    .map(|p| (p.id, PipelineState::Active))
                    .collect(),
                notifications: vec![],
                reauth_links: vec![],
                credential,
                ledger: vec![],
                // The windows missing because the identity was broken now wait for the
                // back-fill (read and rewritten in the recovering transaction).
                backfill: recovers,
                audit,
                fence: None,
            })
            .await?;
        if recovers {
            log.push(Event::IncidentRecovering {
                at: now,
                identity: identity.label.clone(),
            });
        }
        self.crash_at(crate::CrashPoint::AfterRecoveryBegan)?;
        Ok(())
    }

    /// After a recovery: run the identity's pipelines (the back-fill of what the provider
    /// still serves), then report the recovery of `incident` and deliver.
    pub async fn resume_after_recovery(
        &self,
        identity: IdentityId,
        incident: Option<gapless_core::IncidentId>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        self.complete_recovery(identity, incident, log).await?;
        self.dispatch_outbox(log).await?;
        Ok(())
    }

    /// Back-fill, then report and close the incident if it is still recovering and the
    /// back-fill got through (a run cut short by the request budget is finished later).
    async fn complete_recovery(
        &self,
        identity: IdentityId,
        incident: Option<gapless_core::IncidentId>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let ran = self.run_pipelines_of(identity, log).await?;
        if let Some(incident) = incident
            && ran == crate::Ran::Done
        {
            self.report_recovery(incident, log).await?;
        }
        Ok(())
    }

    /// Finish every recovery left unfinished (a crash or a restart after the swap, a
    /// back-fill cut short by the request budget): back-fill and report, once.
    pub async fn finish_recoveries(&self, log: &mut EventLog) -> Result<(), EngineError> {
        for incident in self.store.recovering_incidents().await? {
            match self
                .complete_recovery(incident.identity, Some(incident.id), log)
                .await
            {
                Ok(()) => {}
                Err(error @ EngineError::Crashed(_)) => return Err(error),
                Err(error) => {
                    tracing::error!(incident = %incident.id, %error, "finishing a recovery failed");
                    log.push(Event::PhaseFailed {
                        at: self.clock.now(),
                        phase: format!("recovery of incident {}", incident.id),
                        error: error.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// How a reauthorization goes beyond the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReauthOptions {
    /// Return right after the swap; the caller runs [`Engine::resume_after_recovery`] (e.g.
    /// in the background, showing progress). Otherwise the back-fill runs and the recovery
    /// is reported before returning.
    pub defer_backfill: bool,
    /// The person reconnecting confirmed switching the identity to another upstream
    /// account; honoured only for an identity that allows any account.
    pub accept_other_account: bool,
    /// Who reauthorizes, for the audit log (the engine's own caller when none).
    pub caller: Option<Caller>,
}

impl Engine {
    /// Probe a password or API-key credential for `provider` before anything is saved.
    async fn validate_secret(
        &self,
        (provider, settings): (&str, &gapless_core::IdentitySettings),
        credential: &Credential,
    ) -> Result<ProbeReport, EngineError> {
        let empty = match credential {
            Credential::ApiKey { key } => key.expose_secret().trim().is_empty(),
            Credential::Password { username, password } => {
                username.trim().is_empty() || password.is_empty()
            }
            Credential::OAuth2 { .. } => true,
        };
        if empty {
            return Err(EngineError::Invalid(
                "the key or password is empty; nothing was saved".into(),
            ));
        }
        if self.is_destination(provider) {
            if !settings.is_empty() {
                return Err(EngineError::Invalid(format!(
                    "{provider} is a destination: it takes no region or setting per identity (given: {})",
                    settings.describe()
                )));
            }
            return Ok(self
                .probe_destination(provider, credential)
                .await
                .map_err(CallbackError::Probe)?);
        }
        let connector = self.placed_source(provider, settings)?;
        if connector.descriptor().auth != gapless_providers::AuthKind::ApiKey
            && connector.descriptor().auth != gapless_providers::AuthKind::Password
        {
            return Err(EngineError::Invalid(format!(
                "{provider} is not connected with a key or password"
            )));
        }
        Ok(connector.probe(credential).await.map_err(|mut failure| {
            // A key or password refused is wrong, not an access token to renew.
            if failure.cause == gapless_core::FailureCause::Refreshable {
                failure.cause = gapless_core::FailureCause::ReauthRequired {
                    reason: gapless_core::ReauthReason::InvalidCredentials,
                };
            }
            CallbackError::Probe(failure)
        })?)
    }

    /// Create an identity for the application's own service account (client-credentials
    /// grant): a token, then the probe, then the save.
    pub async fn connect_service_identity(
        &self,
        (provider, settings): (&str, &gapless_core::IdentitySettings),
        label: &str,
        owners: Vec<String>,
        caller: &Caller,
    ) -> Result<Identity, EngineError> {
        if label.trim().is_empty() {
            return Err(EngineError::Invalid(
                "an identity needs a non-empty label".into(),
            ));
        }
        let (tokens, credential, probe) = self.service_token(provider, settings).await?;
        let identity = self
            .create_identity(
                (provider, settings),
                label,
                owners,
                &credential,
                &probe,
                Expiries {
                    access: tokens.access_expires_at,
                    refresh: None,
                    authorization: None,
                },
                scopes_of(&tokens, &probe),
                caller,
            )
            .await?;
        Ok(identity)
    }

    /// Reconnect a client-credentials identity (after the operator fixed the application's
    /// credentials): a new token, the probe, the same account — then the swap and recovery.
    pub async fn reauthorize_service(
        &self,
        identity_id: IdentityId,
    ) -> Result<EventLog, EngineError> {
        let identity = self.store.identity(identity_id).await?;
        // Read with the identity, before the slow validation: a swap by someone else
        // meanwhile makes this one fail instead of overwriting it.
        let (_, generation) = self.store.sealed_credential(identity_id).await?;
        let (tokens, credential, probe) = self
            .service_token(&identity.provider, &identity.settings)
            .await?;
        self.swap_validated(
            &identity,
            &credential,
            &probe,
            Expiries {
                access: tokens.access_expires_at,
                refresh: None,
                authorization: None,
            },
            scopes_of(&tokens, &probe),
            ReauthOptions::default(),
            generation,
        )
        .await
    }

    /// Create an identity from an API key or a password — saved only after it passed the
    /// probe, which also names the upstream account.
    pub async fn connect_identity_with_secret(
        &self,
        (provider, settings): (&str, &gapless_core::IdentitySettings),
        label: &str,
        owners: Vec<String>,
        credential: Credential,
        caller: &Caller,
    ) -> Result<Identity, EngineError> {
        if label.trim().is_empty() {
            return Err(EngineError::Invalid(
                "an identity needs a non-empty label".into(),
            ));
        }
        let probe = self
            .validate_secret((provider, settings), &credential)
            .await?;
        let identity = self
            .create_identity(
                (provider, settings),
                label,
                owners,
                &credential,
                &probe,
                Expiries {
                    access: None,
                    refresh: None,
                    authorization: None,
                },
                probe.scopes.clone(),
                caller,
            )
            .await?;
        Ok(identity)
    }

    /// Replace a password or API key — only after the new one passed the probe and
    /// belongs to the same upstream account; the old one stays until then.
    pub async fn reauthorize_with_secret(
        &self,
        identity_id: IdentityId,
        credential: Credential,
    ) -> Result<EventLog, EngineError> {
        self.reauthorize_with_secret_then(identity_id, credential, ReauthOptions::default())
            .await
    }

    /// [`Engine::reauthorize_with_secret`], with the back-fill now or left to the caller.
    pub async fn reauthorize_with_secret_then(
        &self,
        identity_id: IdentityId,
        credential: Credential,
        options: ReauthOptions,
    ) -> Result<EventLog, EngineError> {
        let identity = self.store.identity(identity_id).await?;
        // Read with the identity, before the slow validation: a swap by someone else
        // meanwhile makes this one fail instead of overwriting it.
        let (_, generation) = self.store.sealed_credential(identity_id).await?;
        let probe = self
            .validate_secret((&identity.provider, &identity.settings), &credential)
            .await?;
        self.swap_validated(
            &identity,
            &credential,
            &probe,
            Expiries {
                access: None,
                refresh: None,
                authorization: None,
            },
            probe.scopes.clone(),
            options,
            generation,
        )
        .await
    }
}

/// Where an identity is, for messages: "its region eu, shop acme" or "the provider's
/// default place".
fn place(settings: &gapless_core::IdentitySettings) -> String {
    if settings.is_empty() {
        "the provider's own region and settings".to_string()
    } else {
        settings.describe()
    }
}

fn scopes_of(tokens: &TokenSet, probe: &ProbeReport) -> Vec<String> {
    if probe.scopes.is_empty() {
        tokens.scopes.clone()
    } else {
        probe.scopes.clone()
    }
}

/// The credential to store for a token response. A response without a refresh token keeps
/// the previous one (providers that do not rotate).
pub(crate) fn credential_from(tokens: &TokenSet, previous: Option<&Credential>) -> Credential {
    let kept = match previous {
        Some(Credential::OAuth2 { refresh_token, .. }) => refresh_token.clone(),
        _ => None,
    };
    Credential::OAuth2 {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone().or(kept),
        access_expires_at: tokens.access_expires_at,
    }
}
