//! Identities: one authorization to one upstream account, and what we know about it. The
//! credential itself lives sealed in the store; this is everything else.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Health, IdentityId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: IdentityId,
    /// The provider's registry name, e.g. `sandbox`.
    pub provider: String,
    /// A human label, unique per installation.
    pub label: String,
    /// Learned from the probe, so nobody has to guess which login it was.
    pub upstream_account_id: Option<String>,
    pub upstream_account_name: Option<String>,
    pub scopes: Vec<String>,
    /// Email addresses of the people who own the upstream login.
    pub owners: Vec<String>,
    pub granted_at: Option<DateTime<Utc>>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// When the whole authorization ends (e.g. 365 days for Amazon SP-API).
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// When the current access token was obtained (refresh timing for unknown expiries).
    pub token_obtained_at: Option<DateTime<Utc>>,
    /// Set while a refresh request may be in flight; a refresher that finds it set after
    /// taking the lease knows its predecessor died after sending (unknown outcome).
    pub refresh_in_flight_since: Option<DateTime<Utc>>,
    /// The last probe, successful or not.
    pub last_probe_at: Option<DateTime<Utc>>,
    pub health: Health,
    /// May be reconnected with another upstream account (after the person reconnecting
    /// confirms it); otherwise a reauthorization must come from the same account.
    #[serde(default)]
    pub allow_any_account: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Identity {
    /// "label (upstream name, id)" for messages.
    pub fn describe(&self) -> String {
        match (&self.upstream_account_name, &self.upstream_account_id) {
            (Some(name), Some(id)) => format!("{} ({name}, {id})", self.label),
            (Some(name), None) => format!("{} ({name})", self.label),
            (None, Some(id)) => format!("{} ({id})", self.label),
            (None, None) => self.label.clone(),
        }
    }
}
