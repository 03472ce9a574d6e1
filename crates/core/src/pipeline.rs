//! Pipelines: source identity + resource + streams → destination, on a window grid.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{IdentityId, PipelineId, WindowSize};

/// Whether a pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PipelineState {
    Active,
    /// Paused because an identity it depends on needs a human. Its windows keep being
    /// recorded as missing; it resumes when the identity recovers.
    WaitingForIdentity {
        identity: IdentityId,
    },
    /// Paused by an operator.
    Paused {
        reason: String,
    },
}

impl PipelineState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::WaitingForIdentity { .. } => "waiting_for_identity",
            Self::Paused { .. } => "paused",
        }
    }
}

/// A pipeline's definition and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: PipelineId,
    pub name: String,
    pub source_identity: IdentityId,
    /// The upstream resource, e.g. an ad account id.
    pub source_resource: String,
    pub streams: Vec<String>,
    /// The destination's kind, e.g. `sqlite`.
    pub destination_kind: String,
    /// Where in the destination, e.g. a database file or a schema.
    pub destination_target: String,
    /// The identity the destination uses, when it needs one.
    pub destination_identity: Option<IdentityId>,
    pub window: WindowSize,
    /// How many trailing complete windows are re-pulled every run (restated numbers).
    pub settle_windows: u32,
    /// The start of the first window to sync.
    pub start: DateTime<Utc>,
    pub state: PipelineState,
}

impl Pipeline {
    /// How long after a window ends its numbers may still be restated.
    pub fn settle_period(&self) -> chrono::Duration {
        self.window.duration() * i32::try_from(self.settle_windows).unwrap_or(i32::MAX)
    }

    /// Does this pipeline depend on `identity`?
    pub fn uses(&self, identity: IdentityId) -> bool {
        self.source_identity == identity || self.destination_identity == Some(identity)
    }
}
