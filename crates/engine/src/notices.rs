//! Building notifications from live state: the gap, the deadline and the counts come from
//! the ledger and the provider's lookback at the moment the message is written.

use chrono::{DateTime, Utc};
use gapless_core::{
    Delivery, Identity, Incident, IncidentId, LedgerEntry, MissingReason, Notification,
    NotificationId, NotificationKind, Pipeline, WindowState, duration_text, ledger::gaps,
};
use gapless_notify::{
    CredentialKind, FailureNotice, LostNotice, RecoveryNotice, Rendered, SpoolSummary,
};

use crate::{Engine, EngineError, Event, EventLog};

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How a sealed message body begins.
pub(crate) const SEALED_BODY: &str = "sealed:";

/// A new reauthorize link: its URL (which holds the token, shown only here) and when it
/// stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Messages and the reauthorize link they carry, recorded in one transaction: a message
/// that is not written (another instance queued it first) leaves no link behind.
pub(crate) struct Outgoing {
    pub(crate) messages: Vec<Notification>,
    pub(crate) link: gapless_store::NewReauthLink,
}

/// Where one failure message goes in the outbox: its dedupe key, kind, date, and whether
/// the escalation recipients get it too.
struct Addressing {
    key: String,
    kind: NotificationKind,
    at: DateTime<Utc>,
    escalate: bool,
}

/// The upstream account of `identity` in words: its name and id, or whichever is known.
fn upstream_account_words(identity: &Identity) -> Option<String> {
    match (
        &identity.upstream_account_name,
        &identity.upstream_account_id,
    ) {
        (Some(name), Some(id)) if name != id => Some(format!("{name}, {id}")),
        (_, Some(id)) => Some(id.clone()),
        (Some(name), None) => Some(name.clone()),
        (None, None) => None,
    }
}

/// The resource, stream and pipeline an incident concerns, when it concerns one only.
fn origin_words(incident: &Incident, affected: &[Pipeline]) -> Option<String> {
    incident.origin.as_ref().map(|origin| {
        let pipeline = affected
            .iter()
            .find(|p| p.id == origin.pipeline)
            .map(|p| format!(" (pipeline {})", p.name))
            .unwrap_or_default();
        format!(
            "resource {}, stream {}{pipeline}",
            origin.resource, origin.stream
        )
    })
}

/// Which Authorization Failure message to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureMessage {
    /// The first, when the incident opens.
    First,
    /// Reminder number n.
    Reminder(u32),
    /// Sent again on an operator's request, with a fresh link.
    Resent,
    /// The identity failed again after a recovery: the n-th time, same incident.
    Again(u32),
}

impl Engine {
    /// Queue the Authorization Failure message of `identity`'s open incident again, with a
    /// fresh reauthorize link, for the same recipients (delivered by the next tick); the
    /// links sent before are revoked (the message is resent because they may have gone to
    /// the wrong place). Returns how many messages were queued (one per channel). An
    /// identity without an open incident has nothing to fix.
    pub async fn resend_reauth_message(
        &self,
        identity: gapless_core::IdentityId,
        caller: &gapless_core::Caller,
    ) -> Result<usize, EngineError> {
        let identity = self.store.identity(identity).await?;
        let Some(incident) = self.store.open_incident_id(identity.id).await? else {
            return Err(EngineError::Invalid(format!(
                "{} has no open incident, so there is no failure message to send; copy a link instead to reauthorize ahead of time",
                identity.label
            )));
        };
        let incident = self.store.incident(incident).await?;
        let mut affected = Vec::new();
        for id in &incident.affected_pipelines {
            if let Ok(p) = self.store.pipeline(*id).await {
                affected.push(p);
            }
        }
        let revoked = self
            .audit_record(
                caller,
                gapless_core::AuditAction::LinkRevoked,
                &identity.label,
            )
            .identity(identity.id)
            .with("why", "the failure message was sent again");
        self.store
            .revoke_reauth_links(identity.id, self.clock.now(), &revoked)
            .await?;
        let out = self
            .failure_notifications(
                &identity,
                &incident,
                &affected,
                &[],
                FailureMessage::Resent,
                caller,
            )
            .await?;
        self.store
            .enqueue_notifications(&out.messages, std::slice::from_ref(&out.link))
            .await?;
        Ok(out.messages.len())
    }

    /// A new link for `identity`, for its open incident if it has one (an operator's "copy
    /// link").
    pub async fn reauth_link_for(
        &self,
        identity: gapless_core::IdentityId,
        caller: &gapless_core::Caller,
    ) -> Result<MintedLink, EngineError> {
        let incident = self.store.open_incident_id(identity).await?;
        self.mint_reauth_link(identity, incident, caller).await
    }

    /// A new single-use reauthorize link for `identity` (sent for `incident`, or ahead of
    /// an expiry), recorded now: the URL with its token, which is not kept; only its hash
    /// is stored.
    pub async fn mint_reauth_link(
        &self,
        identity: gapless_core::IdentityId,
        incident: Option<gapless_core::IncidentId>,
        caller: &gapless_core::Caller,
    ) -> Result<MintedLink, EngineError> {
        let label = self.store.identity(identity).await?.label;
        let (new, minted) = self.prepare_reauth_link(identity, &label, incident, caller)?;
        self.store
            .insert_reauth_link(&new.link, &new.token_hash, &new.audit)
            .await?;
        Ok(minted)
    }

    /// A new reauthorize link not recorded yet: the caller records it in the transaction
    /// of the message that carries it.
    fn prepare_reauth_link(
        &self,
        identity: gapless_core::IdentityId,
        label: &str,
        incident: Option<gapless_core::IncidentId>,
        caller: &gapless_core::Caller,
    ) -> Result<(gapless_store::NewReauthLink, MintedLink), EngineError> {
        let now = self.clock.now();
        let token = gapless_vault::BearerToken::generate()?;
        let link = gapless_store::ReauthLink {
            id: uuid::Uuid::new_v4().to_string(),
            identity,
            incident,
            created_at: now,
            expires_at: now
                .checked_add_signed(self.config.reauth_link_lifetime)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            used_at: None,
            revoked_at: None,
            failed_attempts: 0,
        };
        let mut audit = self
            .audit_record(caller, gapless_core::AuditAction::LinkMinted, label)
            .identity(identity)
            .with("link", link.id.clone())
            .with("expires_at", link.expires_at.to_rfc3339());
        if let Some(incident) = incident {
            audit = audit.with("incident", incident.to_string());
        }
        let minted = MintedLink {
            url: format!(
                "{}/reauth/{}",
                self.config.public_url.trim_end_matches('/'),
                token.expose_secret()
            ),
            expires_at: link.expires_at,
        };
        Ok((
            gapless_store::NewReauthLink {
                link,
                token_hash: token.hash(),
                audit,
            },
            minted,
        ))
    }

    /// The provider's name for people: a source's display name, or the destination's name.
    pub fn display_name(&self, provider: &str) -> String {
        match self.source(provider) {
            Ok(connector) => connector.descriptor().display_name.to_string(),
            Err(_) => provider.to_string(),
        }
    }

    /// The descriptor of a pipeline's source.
    pub(crate) async fn source_of(
        &self,
        pipeline: &Pipeline,
    ) -> Result<gapless_providers::ProviderDescriptor, EngineError> {
        let identity = self.store.identity(pipeline.source_identity).await?;
        Ok(self.source(&identity.provider)?.descriptor().clone())
    }

    /// The people an identity's messages go to: its owners, then the configured recipients
    /// (a per-identity list replaces the defaults; `group:NAME` expands), then the escalation
    /// chain when `escalate`; the fallback recipients when nobody is left.
    pub(crate) fn recipients(&self, identity: Option<&Identity>, escalate: bool) -> Vec<String> {
        self.recipients_for(identity, &[], escalate)
    }

    /// [`Engine::recipients`] plus the owners of the affected pipelines.
    pub(crate) fn recipients_for(
        &self,
        identity: Option<&Identity>,
        pipelines: &[Pipeline],
        escalate: bool,
    ) -> Vec<String> {
        let policy = &self.config.recipients;
        let mut wanted: Vec<String> = identity.map(|i| i.owners.clone()).unwrap_or_default();
        let configured = identity
            .and_then(|i| policy.per_identity.get(&i.label))
            .unwrap_or(&policy.defaults);
        wanted.extend(configured.iter().cloned());
        for pipeline in pipelines {
            if let Some(owners) = policy.per_pipeline.get(&pipeline.name) {
                wanted.extend(owners.iter().cloned());
            }
        }
        if escalate {
            wanted.extend(policy.escalation.iter().cloned());
        }
        let mut out: Vec<String> = Vec::new();
        for entry in wanted {
            let expanded = match entry.strip_prefix("group:") {
                Some(group) => policy.groups.get(group).cloned().unwrap_or_default(),
                None => vec![entry],
            };
            for address in expanded {
                if !out.contains(&address) {
                    out.push(address);
                }
            }
        }
        if out.is_empty() {
            out = self.config.fallback_recipients.clone();
        }
        out
    }

    /// One outbox row per configured channel for a message identified by `key` (stable: the
    /// dedupe key and the Message-ID derive from it). The bodies are sealed by the vault for
    /// their row: they carry reauthorize links, which are credentials (invariant 13).
    pub(crate) fn notifications(
        &self,
        key: &str,
        incident: Option<IncidentId>,
        kind: NotificationKind,
        recipients: Vec<String>,
        rendered: Rendered,
        now: DateTime<Utc>,
    ) -> Result<Vec<Notification>, EngineError> {
        let mut channels: Vec<&String> = self.channels.keys().collect();
        channels.sort();
        channels
            .into_iter()
            .map(|channel| {
                let id = NotificationId::new();
                Ok(Notification {
                    id,
                    incident,
                    kind,
                    dedupe_key: format!("{key}:{channel}"),
                    channel: channel.clone(),
                    recipients: recipients.clone(),
                    subject: rendered.subject.clone(),
                    body_text: self.seal_body(id, "text", &rendered.text)?,
                    body_html: self.seal_body(id, "html", &rendered.html)?,
                    message_id: format!("<{}.{channel}@gapless.local>", key.replace(':', ".")),
                    created_at: now,
                    delivery: Delivery::pending(now),
                })
            })
            .collect()
    }

    /// A message body sealed for its row and part: `sealed:<key version>:<base64>`.
    pub(crate) fn seal_body(
        &self,
        id: NotificationId,
        part: &str,
        body: &str,
    ) -> Result<String, EngineError> {
        use base64::Engine as _;
        let sealed = self
            .vault
            .seal(&format!("notification:{id}:{part}"), body.as_bytes())?;
        Ok(format!(
            "{SEALED_BODY}{}:{}",
            sealed.key_version.0,
            base64::engine::general_purpose::STANDARD.encode(&sealed.ciphertext)
        ))
    }

    /// `n` with its bodies opened (for delivery, and for operators' tools that show a
    /// message). A body stored before bodies were sealed is returned as it is.
    pub fn open_message(&self, n: &Notification) -> Result<Notification, EngineError> {
        Ok(Notification {
            body_text: self.open_body(n.id, "text", &n.body_text)?,
            body_html: self.open_body(n.id, "html", &n.body_html)?,
            ..n.clone()
        })
    }

    fn open_body(
        &self,
        id: NotificationId,
        part: &str,
        stored: &str,
    ) -> Result<String, EngineError> {
        use base64::Engine as _;
        let Some(rest) = stored.strip_prefix(SEALED_BODY) else {
            return Ok(stored.to_string());
        };
        let corrupt = || {
            EngineError::Vault(gapless_vault::VaultError::Undecryptable {
                row: format!("notification:{id}:{part}"),
            })
        };
        let (version, encoded) = rest.split_once(':').ok_or_else(corrupt)?;
        let version: u32 = version.parse().map_err(|_| corrupt())?;
        let ciphertext = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| corrupt())?;
        let plain = self.vault.open(
            &format!("notification:{id}:{part}"),
            &gapless_vault::Sealed {
                key_version: gapless_vault::KeyVersion(version),
                ciphertext,
            },
        )?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }

    /// The Authorization Failure message of an incident (first, reminder, resent, or
    /// "failing again"). `new_entries` are the ledger rows written in the same transaction.
    // Long as the notice is: one line per field of the message, read from live state.
    pub(crate) async fn failure_notifications(
        &self,
        identity: &Identity,
        incident: &Incident,
        affected: &[Pipeline],
        new_entries: &[LedgerEntry],
        which: FailureMessage,
        caller: &gapless_core::Caller,
    ) -> Result<Outgoing, EngineError> {
        let destination = self.is_destination(&identity.provider);
        let (gap_lines, earliest) = if destination {
            (vec![], None)
        } else {
            self.gaps_and_deadline(identity, incident, affected, new_entries)
                .await?
        };
        let failure = &incident.failure;
        let now = self.clock.now();
        let (new_link, link) =
            self.prepare_reauth_link(identity.id, &identity.label, Some(incident.id), caller)?;
        let notice = FailureNotice {
            incident_id: incident.id.to_string(),
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: upstream_account_words(identity),
            headline: self
                .credential_kind(identity)
                .headline(failure.cause)
                .to_string(),
            cause_words: failure.cause.plain_words().to_string(),
            resource: origin_words(incident, affected),
            provider_code: failure
                .provider_code
                .clone()
                .unwrap_or_else(|| failure.cause.code()),
            provider_message: failure.provider_message.clone(),
            what_to_do: self
                .credential_kind(identity)
                .what_to_do(failure.cause)
                .to_string(),
            opened: when(incident.opened_at),
            since: when(match which {
                FailureMessage::Again(_) => now,
                _ => incident.opened_at,
            }),
            reauthorize_url: link.url,
            link_words: self.credential_kind(identity).link_words(&identity.label),
            pipelines: affected.iter().map(|p| p.name.clone()).collect(),
            gaps: gap_lines,
            deadline: earliest.as_ref().map(|d| when(d.at)),
            first_lost_range: earliest
                .as_ref()
                .map(|d| d.first.clone())
                .unwrap_or_default(),
            history: earliest
                .as_ref()
                .map(|d| duration_text(d.retention.lookback()))
                .unwrap_or_default(),
            reminder: match which {
                FailureMessage::Reminder(n) => Some(n),
                _ => None,
            },
            again: match which {
                FailureMessage::Again(n) => Some(n),
                _ => None,
            },
            spool: if destination {
                Some(self.spool_summary(affected).await?)
            } else {
                None
            },
        };
        let to = self.addressing(which, incident, now);
        Ok(Outgoing {
            messages: self.notifications(
                &to.key,
                Some(incident.id),
                to.kind,
                self.recipients_for(Some(identity), affected, to.escalate),
                notice.render()?,
                to.at,
            )?,
            link: new_link,
        })
    }

    /// The outbox key, kind, date and escalation of one of an incident's failure messages.
    fn addressing(
        &self,
        which: FailureMessage,
        incident: &Incident,
        now: DateTime<Utc>,
    ) -> Addressing {
        let (key, kind, at, escalate) = match which {
            FailureMessage::First => (
                format!("incident:{}:authorization_failure", incident.id),
                NotificationKind::AuthorizationFailure,
                incident.opened_at,
                false,
            ),
            FailureMessage::Again(n) => (
                format!("incident:{}:failing_again:{n}", incident.id),
                NotificationKind::AuthorizationFailure,
                now,
                false,
            ),
            FailureMessage::Resent => (
                format!("incident:{}:resent:{}", incident.id, now.timestamp_micros()),
                NotificationKind::AuthorizationFailure,
                now,
                false,
            ),
            FailureMessage::Reminder(n) => (
                format!("incident:{}:reminder:{n}", incident.id),
                NotificationKind::Reminder,
                now,
                self.config.reminders.escalates(n),
            ),
        };
        Addressing {
            key,
            kind,
            at,
            escalate,
        }
    }

    fn credential_kind(&self, identity: &Identity) -> CredentialKind {
        if self.is_destination(&identity.provider) {
            return CredentialKind::Password;
        }
        match self.source(&identity.provider).map(|s| s.descriptor().auth) {
            Ok(gapless_providers::AuthKind::Password) => CredentialKind::Password,
            Ok(gapless_providers::AuthKind::ApiKey) => CredentialKind::ApiKey,
            _ => CredentialKind::Token,
        }
    }

    /// The missing ranges of the affected pipelines in words, and the earliest deadline:
    /// when the oldest missing window (or, with nothing missing yet, the one running now)
    /// becomes lost.
    async fn gaps_and_deadline(
        &self,
        identity: &Identity,
        incident: &Incident,
        affected: &[Pipeline],
        new_entries: &[LedgerEntry],
    ) -> Result<(Vec<String>, Option<Deadline>), EngineError> {
        let mut gap_lines = Vec::new();
        let mut earliest: Option<Deadline> = None;
        let mut consider = |candidate: Deadline| {
            if earliest.as_ref().is_none_or(|d| candidate.at < d.at) {
                earliest = Some(candidate);
            }
        };
        for pipeline in affected {
            // The failing identity's own pipelines (nearly always all) need no second read.
            let descriptor = if pipeline.source_identity == identity.id {
                self.source(&identity.provider)?.descriptor().clone()
            } else {
                self.source_of(pipeline).await?
            };
            let grid = pipeline.grid();
            let mut ledger: crate::missing::LedgerMap = self.ledger_map(pipeline.id).await?;
            for e in new_entries.iter().filter(|e| e.pipeline == pipeline.id) {
                ledger.insert(e.clone());
            }
            let entries: Vec<LedgerEntry> = ledger.into_entries().collect();
            for stream in &pipeline.streams {
                let retention = descriptor.stream(stream).and_then(|s| s.retention);
                let of_stream: Vec<LedgerEntry> = entries
                    .iter()
                    .filter(|e| &e.stream == stream)
                    .cloned()
                    .collect();
                let mut missing_any = false;
                for gap in gaps(&of_stream, retention) {
                    if gap.state != "missing" {
                        continue;
                    }
                    missing_any = true;
                    let range = grid.range_label(gap.from, gap.to);
                    let until = gap
                        .recoverable_until
                        .map(|u| format!(", recoverable until {}", when(u)))
                        .unwrap_or_default();
                    gap_lines.push(format!(
                        "{}/{stream}: {range} ({} window(s)){until}",
                        pipeline.name, gap.windows
                    ));
                    if let (Some(at), Some(retention)) = (gap.recoverable_until, retention) {
                        consider(Deadline {
                            at,
                            first: grid.label(grid.containing(gap.from)),
                            retention,
                        });
                    }
                }
                // Nothing missing yet: the window running now is the first that will be.
                if !missing_any && let Some(retention) = retention {
                    let running = grid.containing(incident.opened_at);
                    if let Some(at) = retention.deadline(running) {
                        consider(Deadline {
                            at,
                            first: grid.label(running),
                            retention,
                        });
                    }
                }
            }
        }
        Ok((gap_lines, earliest))
    }

    /// What waits in the spool for the affected pipelines (a destination's incident).
    async fn spool_summary(&self, affected: &[Pipeline]) -> Result<SpoolSummary, EngineError> {
        let mut windows = 0;
        let mut bytes = 0;
        let mut oldest: Option<DateTime<Utc>> = None;
        for pipeline in affected {
            for entry in self.spool_list(Some(pipeline.id)).await? {
                windows += 1;
                bytes += entry.bytes;
            }
            for entry in self.store.ledger(pipeline.id).await? {
                if let WindowState::Spooled { at } = entry.state {
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok(SpoolSummary {
            windows,
            used: bytes_text(bytes),
            limit: bytes_text(self.spool.max_bytes),
            max_age: duration_text(self.spool.max_age),
            oldest: oldest.map(when),
        })
    }

    /// A message naming windows that became lost while no incident of their identity was
    /// open (an incident's recovery notice names what its outage lost).
    pub(crate) async fn lost_notifications(
        &self,
        identity: &Identity,
        pipeline: &Pipeline,
        lost: &[LedgerEntry],
    ) -> Result<Vec<Notification>, EngineError> {
        let (Some(first), Some(last)) = (lost.first(), lost.last()) else {
            return Ok(vec![]);
        };
        let grid = pipeline.grid();
        let mut why: Vec<String> = Vec::new();
        for entry in lost {
            let reason = match &entry.state {
                WindowState::Lost {
                    reason: Some(MissingReason::PastRetention { detail }),
                    ..
                } => format!("{} said: {detail}", self.display_name(&identity.provider)),
                _ => {
                    let retention = self
                        .source_of(pipeline)
                        .await?
                        .stream(&entry.stream)
                        .and_then(|s| s.retention);
                    match retention {
                        Some(r) => format!("they are older than the provider's retention ({r})"),
                        None => "they are past the provider's retention".into(),
                    }
                }
            };
            if !why.contains(&reason) {
                why.push(reason);
            }
        }
        let notice = LostNotice {
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            pipeline: pipeline.name.clone(),
            windows: lost
                .iter()
                .map(|e| format!("{} {}", e.stream, grid.label(e.window)))
                .collect(),
            why: why.join("; "),
        };
        let key = format!(
            "pipeline:{}:lost:{}:{}:{}",
            pipeline.id,
            first.window.start.timestamp(),
            last.window.start.timestamp(),
            lost.len()
        );
        self.notifications(
            &key,
            None,
            NotificationKind::WindowsLost,
            self.recipients_for(Some(identity), std::slice::from_ref(pipeline), false),
            notice.render()?,
            self.clock.now(),
        )
    }

    /// After a recovery and its back-fill: count what came back, what was lost and what is
    /// still missing, and close the incident with its recovery notice in one transaction
    /// (false when it was not recovering any more).
    pub(crate) async fn report_recovery(
        &self,
        incident_id: IncidentId,
        log: &mut EventLog,
    ) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let incident = self.store.incident(incident_id).await?;
        let Some(recovered_at) = incident.recovering_since else {
            return Ok(false);
        };
        let identity = self.store.identity(incident.identity).await?;
        let destination = self.is_destination(&identity.provider);
        let mut counts = RecoveryCounts::default();
        let mut names = Vec::new();
        for pipeline_id in &incident.affected_pipelines {
            let Ok(pipeline) = self.store.pipeline(*pipeline_id).await else {
                continue;
            };
            names.push(pipeline.name.clone());
            self.count_recovery(&pipeline, &incident, destination, &mut counts)
                .await?;
        }
        let notice = RecoveryNotice {
            incident_id: incident.id.to_string(),
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: identity.upstream_account_name.clone(),
            outage_from: when(incident.opened_at),
            recovered_at: when(recovered_at),
            outage_duration: duration_text(recovered_at - incident.opened_at),
            recovered_windows: counts.recovered,
            lost_windows: counts.lost,
            lost_ranges: counts.lost_ranges,
            still_missing: counts.still_missing,
            pipelines: names,
            destination,
        };
        // Each recovery of a continued incident is its own message.
        let key = match incident.reopened {
            0 => format!("incident:{}:recovery", incident.id),
            n => format!("incident:{}:recovery:{n}", incident.id),
        };
        let notifications = self.notifications(
            &key,
            Some(incident.id),
            NotificationKind::Recovery,
            self.recipients(Some(&identity), false),
            notice.render()?,
            now,
        )?;
        self.crash_at(crate::CrashPoint::BeforeRecoveryNotice)?;
        if !self
            .store
            .finish_recovery(incident.id, now, &notifications)
            .await?
        {
            return Ok(false);
        }
        log.push(Event::IncidentClosed {
            at: now,
            identity: identity.label.clone(),
            recovered_windows: counts.recovered,
            lost_windows: counts.lost,
        });
        Ok(true)
    }

    /// What the recovery of `incident` has brought back so far, read from the ledger.
    pub async fn recovery_summary(
        &self,
        incident: IncidentId,
    ) -> Result<RecoverySummary, EngineError> {
        let incident = self.store.incident(incident).await?;
        let identity = self.store.identity(incident.identity).await?;
        let destination = self.is_destination(&identity.provider);
        let mut counts = RecoveryCounts::default();
        for pipeline_id in &incident.affected_pipelines {
            if let Ok(pipeline) = self.store.pipeline(*pipeline_id).await {
                self.count_recovery(&pipeline, &incident, destination, &mut counts)
                    .await?;
            }
        }
        Ok(RecoverySummary {
            recovered: counts.recovered,
            lost: counts.lost,
            still_missing: counts.still_missing,
            state: incident.state(),
        })
    }

    /// What became of one pipeline's windows that went missing (or, for a destination, were
    /// spooled) during `incident`.
    async fn count_recovery(
        &self,
        pipeline: &Pipeline,
        incident: &Incident,
        destination: bool,
        counts: &mut RecoveryCounts,
    ) -> Result<(), EngineError> {
        let ledger: crate::missing::LedgerMap = self.ledger_map(pipeline.id).await?;
        let state = if destination { "spooled" } else { "missing" };
        for (stream, start) in self
            .store
            .windows_in_state_since(pipeline.id, state, incident.opened_at)
            .await?
        {
            match ledger.get(&stream, start).map(|e| &e.state) {
                Some(WindowState::Loaded { .. }) => counts.recovered += 1,
                Some(WindowState::Lost { .. }) => {
                    counts.lost += 1;
                    let window = pipeline.grid().containing(start);
                    counts.lost_ranges.push(format!(
                        "{}/{} {}",
                        pipeline.name,
                        stream,
                        pipeline.grid().label(window)
                    ));
                }
                Some(WindowState::Missing { .. } | WindowState::Spooled { .. }) => {
                    counts.still_missing += 1;
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// What a recovery has brought back so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySummary {
    /// Windows of the outage loaded (or delivered from the spool).
    pub recovered: u64,
    /// Windows of the outage past the provider's retention.
    pub lost: u64,
    /// Windows of the outage not loaded yet (the back-fill goes on).
    pub still_missing: u64,
    /// Where the incident stands.
    pub state: gapless_core::IncidentState,
}

/// The deadline of an incident: when its first window is lost, which window, by what rule.
struct Deadline {
    at: DateTime<Utc>,
    first: String,
    retention: gapless_core::Retention,
}

#[derive(Default)]
struct RecoveryCounts {
    recovered: u64,
    lost: u64,
    still_missing: u64,
    lost_ranges: Vec<String>,
}

/// A size for people: `512 B`, `3.2 KiB`, `1.0 GiB`.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// At most this many incidents are looked at by one reminder sweep; the rest wait for the
/// next tick, the longest waiting first.
const REMINDER_BATCH: u32 = 1000;

impl Engine {
    /// Remind the recipients of every open incident on the configured schedule, with the
    /// current gap and deadline; from the configured reminder on, escalate. Reads only the
    /// incidents whose next look is due (each look writes when the next is due), so a tick
    /// costs the reminders due, not the incidents there are. When an engine's first sweep
    /// finds the configured schedule changed since the stored ones were computed, it looks
    /// at every open incident again, so that the change applies at once, also to incidents
    /// whose schedule had ended.
    pub async fn send_reminders(&self, log: &mut EventLog) -> Result<(), EngineError> {
        use std::sync::atomic::Ordering;
        if !self.reminders_rescheduled.load(Ordering::Acquire) {
            self.store
                .reschedule_reminders(&self.config.reminders.schedule())
                .await?;
            self.reminders_rescheduled.store(true, Ordering::Release);
        }
        let now = self.clock.now();
        for due in self.store.reminders_due(now, REMINDER_BATCH).await? {
            // One incident that cannot be reminded (its identity unreadable, say) is
            // reported and passed: the others, due after it, still go out.
            let identity = due.incident.identity;
            if let Err(error) = self.remind_one(&due, now, log).await {
                tracing::error!(%identity, %error, "a reminder could not be prepared");
                log.push(Event::IdentityCheckFailed {
                    at: now,
                    identity: identity.to_string(),
                    error: error.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Look at one incident whose reminder sweep is due: queue its reminder when one is
    /// due and not queued yet, and write when to look at it next.
    async fn remind_one(
        &self,
        due: &gapless_store::DueReminder,
        now: chrono::DateTime<chrono::Utc>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let policy = &self.config.reminders;
        let incident = &due.incident;
        let number = policy
            .due(incident.opened_at, now)
            .filter(|n| *n > due.reminded);
        let next = policy
            .next_after(incident.opened_at, number.unwrap_or(due.reminded))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let Some(number) = number else {
            self.store
                .schedule_reminder(incident.id, due.reminded, due.reminded, next, &[], &[])
                .await?;
            return Ok(());
        };
        // An incident's first counted reminder may have been queued before reminders were
        // counted (by an earlier version): it is not queued twice.
        let key = format!("incident:{}:reminder:{number}", incident.id);
        if due.reminded == 0 && self.store.notification_exists_with_prefix(&key).await? {
            self.store
                .schedule_reminder(incident.id, 0, number, next, &[], &[])
                .await?;
            return Ok(());
        }
        let identity = self.store.identity(incident.identity).await?;
        let mut affected = Vec::new();
        for id in &incident.affected_pipelines {
            if let Ok(p) = self.store.pipeline(*id).await {
                affected.push(p);
            }
        }
        let out = self
            .failure_notifications(
                &identity,
                incident,
                &affected,
                &[],
                FailureMessage::Reminder(number),
                &self.caller(),
            )
            .await?;
        // Queued (with its link) only by the instance that moves the count on.
        if self
            .store
            .schedule_reminder(
                incident.id,
                due.reminded,
                number,
                next,
                &out.messages,
                std::slice::from_ref(&out.link),
            )
            .await?
        {
            log.push(Event::ReminderQueued {
                at: now,
                identity: identity.label.clone(),
                number,
                escalated: policy.escalates(number),
            });
        }
        Ok(())
    }

    /// An expiry warning for one identity and horizon.
    pub(crate) async fn expiry_notifications(
        &self,
        identity: &Identity,
        forecast: &gapless_core::lifecycle::ExpiryForecast,
    ) -> Result<Outgoing, EngineError> {
        let now = self.clock.now();
        let pipelines = self
            .store
            .pipelines_using(identity.id)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let (new_link, link) =
            self.prepare_reauth_link(identity.id, &identity.label, None, &self.caller())?;
        let notice = gapless_notify::ExpiryNotice {
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: identity.upstream_account_name.clone(),
            kind: forecast.kind.as_str().replace('_', " "),
            expires_at: when(forecast.at),
            days_left: (forecast.at - now).num_days().max(0),
            reauthorize_url: link.url,
            pipelines,
        };
        let messages = self.notifications(
            &format!(
                "identity:{}:expiry:{}:{}:{}d",
                identity.id,
                forecast.kind.as_str(),
                forecast.at.timestamp(),
                forecast.horizon.num_days()
            ),
            None,
            NotificationKind::ExpiryWarning,
            self.recipients(Some(identity), false),
            notice.render()?,
            now,
        )?;
        Ok(Outgoing {
            messages,
            link: new_link,
        })
    }

    /// One provider outage notice.
    pub(crate) fn outage_notifications(
        &self,
        provider: &str,
        failing: usize,
        total: usize,
        since: DateTime<Utc>,
        identities: Vec<String>,
    ) -> Result<Vec<Notification>, EngineError> {
        let notice = gapless_notify::OutageNotice {
            provider: self.display_name(provider),
            failing,
            total,
            since: when(since),
            identities,
        };
        self.notifications(
            &format!("provider:{provider}:outage:{}", since.timestamp()),
            None,
            NotificationKind::ProviderOutage,
            self.recipients(None, true),
            notice.render()?,
            self.clock.now(),
        )
    }
}
