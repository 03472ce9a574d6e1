//! Notifications: messages from an incident, written to the outbox first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{IncidentId, NotificationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    AuthorizationFailure,
    Reminder,
    ExpiryWarning,
    Recovery,
    ProviderOutage,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationFailure => "authorization_failure",
            Self::Reminder => "reminder",
            Self::ExpiryWarning => "expiry_warning",
            Self::Recovery => "recovery",
            Self::ProviderOutage => "provider_outage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::AuthorizationFailure,
            Self::Reminder,
            Self::ExpiryWarning,
            Self::Recovery,
            Self::ProviderOutage,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Gave up after the retry budget; kept and shown.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub incident: Option<IncidentId>,
    pub kind: NotificationKind,
    /// Makes each message arrive once: a second insert with the same key is a no-op.
    pub dedupe_key: String,
    /// `file`, `smtp`, `slack`, `webhook`.
    pub channel: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    /// Stable RFC 5322 Message-ID, so a retried delivery is not a second mail.
    pub message_id: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}
