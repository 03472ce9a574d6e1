//! Identities: one authorization to one upstream account, and what we know about it. The
//! credential itself lives sealed in the store; this is everything else.

use std::collections::BTreeMap;

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
    /// Where this identity lives at the provider, chosen when it was connected and kept for
    /// its whole life (a reauthorization goes to the same place): its region and its own
    /// values of the settings the provider takes per identity (a Shopify shop).
    #[serde(default, skip_serializing_if = "IdentitySettings::is_empty")]
    pub settings: IdentitySettings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An identity's own region and setting values at its provider (none: the provider's as
/// the installation configured it). Not secret: a definition refuses a secret setting per
/// identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentitySettings {
    /// The provider's region (e.g. `eu`), when the identity's differs from the
    /// installation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Values of the provider's per-identity settings, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

impl IdentitySettings {
    pub fn is_empty(&self) -> bool {
        self.region.is_none() && self.values.is_empty()
    }

    /// `region eu, shop acme` for messages (empty when there is nothing).
    pub fn describe(&self) -> String {
        self.region
            .iter()
            .map(|r| format!("region {r}"))
            .chain(self.values.iter().map(|(k, v)| format!("{k} {v}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
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
