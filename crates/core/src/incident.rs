//! Incidents: one episode of an identity being unusable, from the first confirmed failure to
//! recovery. Every notification hangs from one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Failure, IdentityId, IncidentId, PipelineId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub identity: IdentityId,
    pub failure: Failure,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The pipelines that depended on the identity when the incident opened.
    pub affected_pipelines: Vec<PipelineId>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }
}
