//! The audit log's vocabulary: who changed which trust, and how.
//!
//! Every change of trust (an identity created or deleted, a credential swapped or refreshed,
//! a reauthorize link minted, spent, locked or revoked, an API token created, revoked or used
//! for a write, a provider definition added, updated or removed, a key added, retired or used
//! to re-seal) is one [`AuditRecord`]. Records never hold a secret: a credential is named by
//! its generation, a link by its id, a token by its name.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::IdentityId;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Actor {
    /// A `gapless` command, run by this operating-system user.
    Cli(String),
    /// A REST API call authenticated by the API token of this name.
    ApiToken(String),
    /// The dashboard, signed in with the API token of this name.
    Dashboard(String),
    /// Someone holding the reauthorize link with this id.
    Link(String),
    /// The scheduler of the instance of this name (refreshes, failure messages).
    Scheduler(String),
}

impl Actor {
    /// The kind of actor as stored (`cli`, `api_token`, `dashboard`, `link`, `scheduler`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cli(_) => "cli",
            Self::ApiToken(_) => "api_token",
            Self::Dashboard(_) => "dashboard",
            Self::Link(_) => "link",
            Self::Scheduler(_) => "scheduler",
        }
    }

    /// The name within its kind.
    pub fn name(&self) -> &str {
        match self {
            Self::Cli(n)
            | Self::ApiToken(n)
            | Self::Dashboard(n)
            | Self::Link(n)
            | Self::Scheduler(n) => n,
        }
    }

    /// Rebuild from the stored kind and name.
    pub fn from_parts(kind: &str, name: &str) -> Option<Self> {
        let name = name.to_string();
        Some(match kind {
            "cli" => Self::Cli(name),
            "api_token" => Self::ApiToken(name),
            "dashboard" => Self::Dashboard(name),
            "link" => Self::Link(name),
            "scheduler" => Self::Scheduler(name),
            _ => return None,
        })
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

/// Who asks for a change, and from where: the actor and, for HTTP, the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub address: Option<String>,
}

impl Caller {
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            address: None,
        }
    }

    pub fn from_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    IdentityCreated,
    IdentityDeleted,
    /// A new credential from a person (reauthorization by link or CLI).
    CredentialSwapped,
    /// A new access token from a refresh.
    CredentialRefreshed,
    LinkMinted,
    LinkSpent,
    LinkLocked,
    LinkRevoked,
    TokenCreated,
    TokenRevoked,
    /// An API token used for a request that changes something.
    ApiWrite,
    ProviderAdded,
    ProviderUpdated,
    ProviderRemoved,
    KeyAdded,
    KeyRetired,
    /// Credentials and messages sealed again under the current key.
    KeyResealed,
}

impl AuditAction {
    pub const ALL: [Self; 17] = [
        Self::IdentityCreated,
        Self::IdentityDeleted,
        Self::CredentialSwapped,
        Self::CredentialRefreshed,
        Self::LinkMinted,
        Self::LinkSpent,
        Self::LinkLocked,
        Self::LinkRevoked,
        Self::TokenCreated,
        Self::TokenRevoked,
        Self::ApiWrite,
        Self::ProviderAdded,
        Self::ProviderUpdated,
        Self::ProviderRemoved,
        Self::KeyAdded,
        Self::KeyRetired,
        Self::KeyResealed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdentityCreated => "identity_created",
            Self::IdentityDeleted => "identity_deleted",
            Self::CredentialSwapped => "credential_swapped",
            Self::CredentialRefreshed => "credential_refreshed",
            Self::LinkMinted => "link_minted",
            Self::LinkSpent => "link_spent",
            Self::LinkLocked => "link_locked",
            Self::LinkRevoked => "link_revoked",
            Self::TokenCreated => "token_created",
            Self::TokenRevoked => "token_revoked",
            Self::ApiWrite => "api_write",
            Self::ProviderAdded => "provider_added",
            Self::ProviderUpdated => "provider_updated",
            Self::ProviderRemoved => "provider_removed",
            Self::KeyAdded => "key_added",
            Self::KeyRetired => "key_retired",
            Self::KeyResealed => "key_resealed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of trust, before it is chained into the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// Where the actor came from: the client address for HTTP, none otherwise.
    pub source: Option<String>,
    pub action: AuditAction,
    /// The identity concerned, if any (kept after the identity is deleted).
    pub identity: Option<IdentityId>,
    /// What the change is about, in words: an identity's label, a token's or a provider's
    /// name, a key version.
    pub subject: String,
    /// Facts without secrets: generations, link ids, counts, request paths.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl AuditRecord {
    pub fn new(
        at: DateTime<Utc>,
        caller: &Caller,
        action: AuditAction,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            at,
            actor: caller.actor.clone(),
            source: caller.address.clone(),
            action,
            identity: None,
            subject: subject.into(),
            detail: serde_json::Map::new(),
        }
    }

    pub fn identity(mut self, id: IdentityId) -> Self {
        self.identity = Some(id);
        self
    }

    /// Add one fact to the detail.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// A record as it stands in the log: its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The hash of the entry before (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this entry's fields and `prev_hash`, hex.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_their_names() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(AuditAction::parse("nothing"), None);
    }

    #[test]
    fn actors_round_trip_through_kind_and_name() {
        for actor in [
            Actor::Cli("ops".into()),
            Actor::ApiToken("ci".into()),
            Actor::Dashboard("admin".into()),
            Actor::Link("l1".into()),
            Actor::Scheduler("gapless-1".into()),
        ] {
            assert_eq!(
                Actor::from_parts(actor.kind(), actor.name()),
                Some(actor.clone())
            );
        }
        assert_eq!(Actor::from_parts("robot", "x"), None);
    }
}
