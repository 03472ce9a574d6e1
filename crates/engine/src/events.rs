//! What the engine did, for timelines, the CLI and tests.

use chrono::{DateTime, Utc};
use gapless_core::ledger::Purpose;
use serde::Serialize;

/// Why a window was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadPurpose {
    /// Its first load.
    New,
    /// It was missing: a back-fill.
    Backfill,
    /// Re-pulled because the provider restates recent numbers.
    Settle,
    /// Kept in the spool while the destination was down, loaded now.
    Spool,
}

impl From<Purpose> for LoadPurpose {
    fn from(purpose: Purpose) -> Self {
        match purpose {
            Purpose::New => Self::New,
            Purpose::Backfill => Self::Backfill,
            Purpose::Settle => Self::Settle,
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    IdentityConnected {
        at: DateTime<Utc>,
        identity: String,
        upstream_account: String,
    },
    TokenRefreshed {
        at: DateTime<Utc>,
        identity: String,
    },
    WindowLoaded {
        at: DateTime<Utc>,
        pipeline: String,
        stream: String,
        window: String,
        rows: u64,
        purpose: LoadPurpose,
    },
    WindowMissing {
        at: DateTime<Utc>,
        pipeline: String,
        stream: String,
        window: String,
        reason: String,
    },
    WindowLost {
        at: DateTime<Utc>,
        pipeline: String,
        stream: String,
        window: String,
        /// Why, in words (the provider's own when it refused the window).
        reason: String,
    },
    IdentityDegraded {
        at: DateTime<Utc>,
        identity: String,
        failure: String,
    },
    IncidentOpened {
        at: DateTime<Utc>,
        identity: String,
        failure: String,
        pipelines_paused: Vec<String>,
    },
    /// An identity failed again while its incident recovered or soon after it closed: the
    /// same incident continues (`times` since it opened).
    IncidentReopened {
        at: DateTime<Utc>,
        identity: String,
        failure: String,
        times: u32,
    },
    /// What failed works again: the incident recovers while its windows are back-filled.
    IncidentRecovering {
        at: DateTime<Utc>,
        identity: String,
    },
    IdentityReauthorized {
        at: DateTime<Utc>,
        identity: String,
        upstream_account: String,
    },
    IncidentClosed {
        at: DateTime<Utc>,
        identity: String,
        recovered_windows: u64,
        lost_windows: u64,
    },
    NotificationDelivered {
        at: DateTime<Utc>,
        subject: String,
        path: String,
    },
    NotificationFailed {
        at: DateTime<Utc>,
        subject: String,
        error: String,
    },
    IdentityProbed {
        at: DateTime<Utc>,
        identity: String,
        result: String,
    },
    ExpiryWarning {
        at: DateTime<Utc>,
        identity: String,
        kind: String,
        expires_at: DateTime<Utc>,
        horizon_days: i64,
    },
    ProviderOutage {
        at: DateTime<Utc>,
        provider: String,
        failing: usize,
        total: usize,
    },
    ReminderQueued {
        at: DateTime<Utc>,
        identity: String,
        number: u32,
        escalated: bool,
    },
    OutboxBacklog {
        at: DateTime<Utc>,
        oldest_pending: DateTime<Utc>,
        pending: u64,
    },
    WindowSpooled {
        at: DateTime<Utc>,
        pipeline: String,
        stream: String,
        window: String,
        rows: u64,
    },
    DestinationUnavailable {
        at: DateTime<Utc>,
        pipeline: String,
        failure: String,
    },
    /// An identity could not be checked (refreshed, probed, forecast) at all.
    IdentityCheckFailed {
        at: DateTime<Utc>,
        identity: String,
        error: String,
    },
    /// The upstream account's request budget is spent: `windows` wait for a run at or
    /// after `until` (nothing was asked of the provider).
    RequestsDeferred {
        at: DateTime<Utc>,
        pipeline: String,
        identity: String,
        windows: usize,
        until: DateTime<Utc>,
        limit: String,
    },
    /// A pipeline could not run at all (not a provider failure: those are recorded).
    PipelineFailed {
        at: DateTime<Utc>,
        pipeline: String,
        error: String,
    },
    /// A phase of a scheduler tick failed as a whole; the other phases ran.
    PhaseFailed {
        at: DateTime<Utc>,
        phase: String,
        error: String,
    },
}

impl Event {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::IdentityConnected { at, .. }
            | Self::TokenRefreshed { at, .. }
            | Self::WindowLoaded { at, .. }
            | Self::WindowMissing { at, .. }
            | Self::WindowLost { at, .. }
            | Self::IdentityDegraded { at, .. }
            | Self::IncidentOpened { at, .. }
            | Self::IncidentReopened { at, .. }
            | Self::IncidentRecovering { at, .. }
            | Self::PhaseFailed { at, .. }
            | Self::IdentityReauthorized { at, .. }
            | Self::IncidentClosed { at, .. }
            | Self::NotificationDelivered { at, .. }
            | Self::NotificationFailed { at, .. }
            | Self::PipelineFailed { at, .. }
            | Self::RequestsDeferred { at, .. }
            | Self::IdentityCheckFailed { at, .. }
            | Self::IdentityProbed { at, .. }
            | Self::ExpiryWarning { at, .. }
            | Self::ProviderOutage { at, .. }
            | Self::ReminderQueued { at, .. }
            | Self::OutboxBacklog { at, .. }
            | Self::WindowSpooled { at, .. }
            | Self::DestinationUnavailable { at, .. } => *at,
        }
    }

    /// Routine detail (token refreshes, settle re-pulls) that a summary timeline can skip.
    pub fn is_detail(&self) -> bool {
        match self {
            Self::TokenRefreshed { .. } | Self::IdentityProbed { .. } => true,
            Self::WindowLoaded { purpose, .. } => *purpose == LoadPurpose::Settle,
            _ => false,
        }
    }

    /// One line for a timeline.
    // Long by design: one arm per kind of event, each its own sentence.
    pub fn line(&self) -> String {
        let when = self.at().format("%Y-%m-%d %H:%M");
        let what = match self {
            Self::IdentityConnected {
                identity,
                upstream_account,
                ..
            } => format!("identity {identity} connected (upstream account {upstream_account})"),
            Self::TokenRefreshed { identity, .. } => {
                format!("access token of {identity} refreshed (refresh token rotated)")
            }
            Self::WindowLoaded {
                pipeline,
                stream,
                window,
                rows,
                purpose,
                ..
            } => format!(
                "{pipeline}/{stream} {window}: loaded {rows} rows ({})",
                match purpose {
                    LoadPurpose::New => "new",
                    LoadPurpose::Backfill => "backfill",
                    LoadPurpose::Settle => "settle re-pull",
                    LoadPurpose::Spool => "from the spool",
                }
            ),
            Self::WindowMissing {
                pipeline,
                stream,
                window,
                reason,
                ..
            } => format!("{pipeline}/{stream} {window}: MISSING, {reason}"),
            Self::WindowLost {
                pipeline,
                stream,
                window,
                reason,
                ..
            } => format!("{pipeline}/{stream} {window}: LOST ({reason})"),
            Self::IncidentReopened {
                identity,
                failure,
                times,
                ..
            } => format!(
                "INCIDENT of {identity} continues: failing again ({times} time(s)): {failure}"
            ),
            Self::IncidentRecovering { identity, .. } => {
                format!("incident of {identity} recovering: back-filling what it missed")
            }
            Self::PhaseFailed { phase, error, .. } => {
                format!("scheduler phase {phase} failed: {error}")
            }
            Self::IdentityDegraded {
                identity, failure, ..
            } => format!("identity {identity} degraded: {failure}; retrying with backoff"),
            Self::IncidentOpened {
                identity,
                failure,
                pipelines_paused,
                ..
            } => format!(
                "INCIDENT opened for {identity}: {failure}; paused: {}",
                pipelines_paused.join(", ")
            ),
            Self::IdentityReauthorized {
                identity,
                upstream_account,
                ..
            } => format!(
                "identity {identity} reauthorized (same upstream account {upstream_account})"
            ),
            Self::IncidentClosed {
                identity,
                recovered_windows,
                lost_windows,
                ..
            } => format!(
                "incident of {identity} closed: {recovered_windows} window(s) back-filled, {lost_windows} lost"
            ),
            Self::NotificationDelivered { subject, path, .. } => {
                format!("email \"{subject}\" written to {path}")
            }
            Self::NotificationFailed { subject, error, .. } => {
                format!("email \"{subject}\" not delivered: {error}")
            }
            Self::PipelineFailed {
                pipeline, error, ..
            } => format!("{pipeline}: could not run: {error}"),
            Self::RequestsDeferred {
                pipeline,
                identity,
                windows,
                until,
                limit,
                ..
            } => format!(
                "{pipeline}: {windows} window(s) wait for {identity}'s request budget ({limit}) until {}",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Self::IdentityCheckFailed {
                identity, error, ..
            } => format!("identity {identity}: could not be checked: {error}"),
            Self::IdentityProbed {
                identity, result, ..
            } => format!("probe of {identity}: {result}"),
            Self::ExpiryWarning {
                identity,
                kind,
                expires_at,
                horizon_days,
                ..
            } => format!(
                "{identity}: {kind} expires {} (within {horizon_days} day(s))",
                expires_at.format("%Y-%m-%d %H:%M UTC")
            ),
            Self::ProviderOutage {
                provider,
                failing,
                total,
                ..
            } => format!(
                "PROVIDER OUTAGE {provider}: {failing} of {total} identities failing transiently"
            ),
            Self::WindowSpooled {
                pipeline,
                stream,
                window,
                rows,
                ..
            } => format!(
                "{pipeline}/{stream} {window}: SPOOLED {rows} rows (destination unavailable)"
            ),
            Self::DestinationUnavailable {
                pipeline, failure, ..
            } => format!("{pipeline}: destination unavailable: {failure}"),
            Self::ReminderQueued {
                identity,
                number,
                escalated,
                ..
            } => format!(
                "reminder {number} about {identity} queued{}",
                if *escalated { " (escalated)" } else { "" }
            ),
            Self::OutboxBacklog {
                oldest_pending,
                pending,
                ..
            } => format!(
                "OUTBOX BACKLOG: {pending} message(s) pending, the oldest since {}",
                oldest_pending.format("%Y-%m-%d %H:%M UTC")
            ),
        };
        format!("{when}  {what}")
    }
}

/// Events in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EventLog {
    pub events: Vec<Event>,
}

impl EventLog {
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    pub fn extend(&mut self, other: EventLog) {
        self.events.extend(other.events);
    }
}
