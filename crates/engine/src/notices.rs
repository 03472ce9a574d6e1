//! Building notifications from live state: the gap, the deadline and the counts come from
//! the ledger and the provider's lookback at the moment the message is written.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use gapless_core::{
    DeliveryState, Identity, Incident, IncidentId, LedgerEntry, Notification, NotificationId,
    NotificationKind, Pipeline, WindowState, ledger::gaps,
};
use gapless_notify::{FailureNotice, RecoveryNotice, Rendered};

use crate::{Engine, EngineError, Event, EventLog};

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

fn duration_words(d: Duration) -> String {
    let days = d.num_days();
    let hours = d.num_hours() - days * 24;
    match (days, hours) {
        (0, h) => format!("{h} hour(s)"),
        (d, 0) => format!("{d} day(s)"),
        (d, h) => format!("{d} day(s) {h} hour(s)"),
    }
}

/// A new reauthorize link: its URL (which holds the token, shown only here) and when it
/// stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
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
}

impl Engine {
    /// Queue the Authorization Failure message of `identity`'s open incident again, with a
    /// fresh reauthorize link, for the same recipients (delivered by the next tick); returns
    /// how many messages were queued (one per channel). An identity without an open incident has nothing to fix.
    pub async fn resend_reauth_message(
        &self,
        identity: gapless_core::IdentityId,
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
        let messages = self
            .failure_notifications(&identity, &incident, &affected, &[], FailureMessage::Resent)
            .await?;
        self.store.enqueue_notifications(&messages).await?;
        Ok(messages.len())
    }

    /// A new link for `identity`, for its open incident if it has one (an operator's "copy
    /// link").
    pub async fn reauth_link_for(
        &self,
        identity: gapless_core::IdentityId,
    ) -> Result<MintedLink, EngineError> {
        let incident = self.store.open_incident_id(identity).await?;
        self.mint_reauth_link(identity, incident).await
    }

    /// A new single-use reauthorize link for `identity` (sent for `incident`, or ahead of
    /// an expiry): the URL with its token, which is not kept; only its hash is stored.
    pub async fn mint_reauth_link(
        &self,
        identity: gapless_core::IdentityId,
        incident: Option<gapless_core::IncidentId>,
    ) -> Result<MintedLink, EngineError> {
        let now = self.clock.now();
        let token = gapless_vault::BearerToken::generate()?;
        let link = gapless_store::ReauthLink {
            id: uuid::Uuid::new_v4().to_string(),
            identity,
            incident,
            created_at: now,
            expires_at: now + self.config.reauth_link_lifetime,
            used_at: None,
            revoked_at: None,
        };
        self.store.insert_reauth_link(&link, &token.hash()).await?;
        Ok(MintedLink {
            url: format!(
                "{}/reauth/{}",
                self.config.public_url.trim_end_matches('/'),
                token.expose_secret()
            ),
            expires_at: link.expires_at,
        })
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
    /// dedupe key and the Message-ID derive from it).
    pub(crate) fn notifications(
        &self,
        key: &str,
        incident: Option<IncidentId>,
        kind: NotificationKind,
        recipients: Vec<String>,
        rendered: Rendered,
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let mut channels: Vec<&String> = self.channels.keys().collect();
        channels.sort();
        channels
            .into_iter()
            .map(|channel| Notification {
                id: NotificationId::new(),
                incident,
                kind,
                dedupe_key: format!("{key}:{channel}"),
                channel: channel.clone(),
                recipients: recipients.clone(),
                subject: rendered.subject.clone(),
                body_text: rendered.text.clone(),
                body_html: rendered.html.clone(),
                message_id: format!("<{}.{channel}@gapless.local>", key.replace(':', ".")),
                state: DeliveryState::Pending,
                attempts: 0,
                last_error: None,
                created_at: now,
                next_attempt_at: now,
                delivered_at: None,
            })
            .collect()
    }

    /// The Authorization Failure message of a new incident. `new_entries` are the ledger
    /// rows written in the same transaction.
    pub(crate) async fn failure_notifications(
        &self,
        identity: &Identity,
        incident: &Incident,
        affected: &[Pipeline],
        new_entries: &[LedgerEntry],
        which: FailureMessage,
    ) -> Result<Vec<Notification>, EngineError> {
        let reminder = match which {
            FailureMessage::Reminder(n) => Some(n),
            FailureMessage::First | FailureMessage::Resent => None,
        };
        let mut gap_lines = Vec::new();
        // (deadline, first lost window, lookback days)
        let mut earliest: Option<(DateTime<Utc>, String, i64)> = None;
        for pipeline in affected {
            let descriptor = self.source_of(pipeline).await?;
            let mut ledger: HashMap<(String, DateTime<Utc>), LedgerEntry> = self
                .store
                .ledger(pipeline.id)
                .await?
                .into_iter()
                .map(|e| ((e.stream.clone(), e.window.start), e))
                .collect();
            for e in new_entries.iter().filter(|e| e.pipeline == pipeline.id) {
                ledger.insert((e.stream.clone(), e.window.start), e.clone());
            }
            let entries: Vec<LedgerEntry> = ledger.into_values().collect();
            for stream in &pipeline.streams {
                let lookback = descriptor.stream(stream).and_then(|s| s.lookback);
                let of_stream: Vec<LedgerEntry> = entries
                    .iter()
                    .filter(|e| &e.stream == stream)
                    .cloned()
                    .collect();
                for gap in gaps(&of_stream, lookback) {
                    if gap.state != "missing" {
                        continue;
                    }
                    let last = gap.to - Duration::seconds(1);
                    let range = if day(gap.from) == day(last) {
                        day(gap.from)
                    } else {
                        format!("{} to {}", day(gap.from), day(last))
                    };
                    let until = gap
                        .recoverable_until
                        .map(|u| format!(", recoverable until {}", when(u)))
                        .unwrap_or_default();
                    gap_lines.push(format!(
                        "{}/{stream}: {range} ({} window(s)){until}",
                        pipeline.name, gap.windows
                    ));
                    if let (Some(until), Some(lookback)) = (gap.recoverable_until, lookback)
                        && earliest.as_ref().is_none_or(|(d, _, _)| until < *d)
                    {
                        earliest = Some((until, day(gap.from), lookback.num_days()));
                    }
                }
            }
        }
        if earliest.is_none() {
            // Nothing missing yet: the window running now is the first that will be.
            for pipeline in affected {
                let descriptor = self.source_of(pipeline).await?;
                let running = pipeline.grid().containing(incident.opened_at);
                for stream in &pipeline.streams {
                    if let Some(lookback) = descriptor.stream(stream).and_then(|s| s.lookback) {
                        let until = running.deadline(lookback);
                        if earliest.as_ref().is_none_or(|(d, _, _)| until < *d) {
                            earliest = Some((until, day(running.start), lookback.num_days()));
                        }
                    }
                }
            }
        }
        let failure = &incident.failure;
        let notice = FailureNotice {
            incident_id: incident.id.to_string(),
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: match (
                &identity.upstream_account_name,
                &identity.upstream_account_id,
            ) {
                (Some(name), Some(id)) => Some(format!("{name}, {id}")),
                (None, Some(id)) => Some(id.clone()),
                (Some(name), None) => Some(name.clone()),
                (None, None) => None,
            },
            cause_words: failure.cause.plain_words().to_string(),
            provider_code: failure
                .provider_code
                .clone()
                .unwrap_or_else(|| failure.cause.code()),
            provider_message: failure.provider_message.clone(),
            what_to_do: failure.cause.what_to_do().to_string(),
            since: when(incident.opened_at),
            reauthorize_url: self
                .mint_reauth_link(identity.id, Some(incident.id))
                .await?
                .url,
            pipelines: affected.iter().map(|p| p.name.clone()).collect(),
            gaps: gap_lines,
            deadline: earliest.as_ref().map(|(d, _, _)| when(*d)),
            first_lost_range: earliest
                .as_ref()
                .map(|(_, r, _)| r.clone())
                .unwrap_or_default(),
            lookback_days: earliest.as_ref().map_or(0, |(_, _, l)| *l),
            reminder,
        };
        let (key, kind, at, escalate) = match which {
            FailureMessage::First => (
                format!("incident:{}:authorization_failure", incident.id),
                NotificationKind::AuthorizationFailure,
                incident.opened_at,
                false,
            ),
            FailureMessage::Resent => (
                format!(
                    "incident:{}:resent:{}",
                    incident.id,
                    self.clock.now().timestamp_micros()
                ),
                NotificationKind::AuthorizationFailure,
                self.clock.now(),
                false,
            ),
            FailureMessage::Reminder(n) => (
                format!("incident:{}:reminder:{n}", incident.id),
                NotificationKind::Reminder,
                self.clock.now(),
                self.config.reminders.escalates(n),
            ),
        };
        Ok(self.notifications(
            &key,
            Some(incident.id),
            kind,
            self.recipients_for(Some(identity), affected, escalate),
            notice.render()?,
            at,
        ))
    }

    /// After a recovery and its backfill: count what came back and what was lost, and queue
    /// the recovery message.
    pub(crate) async fn report_recovery(
        &self,
        incident_id: IncidentId,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let incident = self.store.incident(incident_id).await?;
        let identity = self.store.identity(incident.identity).await?;
        let mut recovered = 0;
        let mut lost = 0;
        let mut lost_ranges = Vec::new();
        let mut names = Vec::new();
        for pipeline_id in &incident.affected_pipelines {
            let Ok(pipeline) = self.store.pipeline(*pipeline_id).await else {
                continue;
            };
            names.push(pipeline.name.clone());
            let ledger: HashMap<(String, DateTime<Utc>), LedgerEntry> = self
                .store
                .ledger(pipeline.id)
                .await?
                .into_iter()
                .map(|e| ((e.stream.clone(), e.window.start), e))
                .collect();
            for key in self
                .store
                .windows_missing_since(pipeline.id, incident.opened_at)
                .await?
            {
                match ledger.get(&key).map(|e| &e.state) {
                    Some(WindowState::Loaded { .. }) => recovered += 1,
                    Some(WindowState::Lost { .. }) => {
                        lost += 1;
                        lost_ranges.push(format!("{}/{} {}", pipeline.name, key.0, day(key.1)));
                    }
                    _ => {}
                }
            }
        }
        let notice = RecoveryNotice {
            incident_id: incident.id.to_string(),
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: identity.upstream_account_name.clone(),
            outage_from: when(incident.opened_at),
            recovered_at: when(now),
            outage_duration: duration_words(now - incident.opened_at),
            recovered_windows: recovered,
            lost_windows: lost,
            lost_ranges,
            pipelines: names,
        };
        for notification in self.notifications(
            &format!("incident:{}:recovery", incident.id),
            Some(incident.id),
            NotificationKind::Recovery,
            self.recipients(Some(&identity), false),
            notice.render()?,
            now,
        ) {
            self.store.enqueue_notification(&notification).await?;
        }
        log.push(Event::IncidentClosed {
            at: now,
            identity: identity.label.clone(),
            recovered_windows: recovered,
            lost_windows: lost,
        });
        Ok(())
    }
}

impl Engine {
    /// Remind the recipients of every open incident on the configured schedule, with the
    /// current gap and deadline; from the configured reminder on, escalate.
    pub async fn send_reminders(&self, log: &mut EventLog) -> Result<(), EngineError> {
        let now = self.clock.now();
        for incident in self.store.incidents(None).await? {
            if !incident.is_open() {
                continue;
            }
            let Some(number) = self.config.reminders.due(incident.opened_at, now) else {
                continue;
            };
            let key = format!("incident:{}:reminder:{number}", incident.id);
            if self.store.notification_exists_with_prefix(&key).await? {
                continue;
            }
            let identity = self.store.identity(incident.identity).await?;
            let mut affected = Vec::new();
            for id in &incident.affected_pipelines {
                if let Ok(p) = self.store.pipeline(*id).await {
                    affected.push(p);
                }
            }
            for n in self
                .failure_notifications(
                    &identity,
                    &incident,
                    &affected,
                    &[],
                    FailureMessage::Reminder(number),
                )
                .await?
            {
                self.store.enqueue_notification(&n).await?;
            }
            log.push(Event::ReminderQueued {
                at: now,
                identity: identity.label.clone(),
                number,
                escalated: self.config.reminders.escalates(number),
            });
        }
        Ok(())
    }

    /// An expiry warning for one identity and horizon.
    pub(crate) async fn expiry_notifications(
        &self,
        identity: &Identity,
        forecast: &gapless_core::lifecycle::ExpiryForecast,
    ) -> Result<Vec<Notification>, EngineError> {
        let now = self.clock.now();
        let pipelines = self
            .store
            .pipelines_using(identity.id)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let notice = gapless_notify::ExpiryNotice {
            provider: self.display_name(&identity.provider),
            identity_label: identity.label.clone(),
            upstream_account: identity.upstream_account_name.clone(),
            kind: forecast.kind.as_str().replace('_', " "),
            expires_at: when(forecast.at),
            days_left: (forecast.at - now).num_days().max(0),
            reauthorize_url: self.mint_reauth_link(identity.id, None).await?.url,
            pipelines,
        };
        Ok(self.notifications(
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
        ))
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
        Ok(self.notifications(
            &format!("provider:{provider}:outage:{}", since.timestamp()),
            None,
            NotificationKind::ProviderOutage,
            self.recipients(None, true),
            notice.render()?,
            self.clock.now(),
        ))
    }
}
