//! Incidents: one episode of an identity being unusable, from the first confirmed failure to
//! recovery. Every notification hangs from one.
//!
//! An incident is `open` while the identity fails, `recovering` once there is evidence that
//! what failed works again (a reauthorization, or the failed operation succeeding) while the
//! missed windows are back-filled, and `closed` when the recovery has been reported. A
//! failure during the back-fill, or soon after the close, continues the same incident and its
//! thread instead of opening a new one.

use chrono::{DateTime, Duration, Utc};
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
    /// The operation that failed, when it was a report request: only that operation
    /// succeeding again (not a who-am-I probe) is evidence that the incident is over.
    pub origin: Option<FailedOperation>,
    /// Since when the identity works again while its missed windows are back-filled.
    pub recovering_since: Option<DateTime<Utc>>,
    /// How many times the identity failed again after a recovery had begun or ended.
    pub reopened: u32,
}

/// A report request that failed: which pipeline, upstream resource and stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedOperation {
    pub pipeline: PipelineId,
    pub resource: String,
    pub stream: String,
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentState {
    /// The identity fails; reminders go out.
    Open,
    /// It works again; the back-fill runs and the recovery is reported when it ends.
    Recovering,
    /// The recovery was reported.
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Recovering => "recovering",
            Self::Closed => "closed",
        }
    }
}

impl Incident {
    pub fn state(&self) -> IncidentState {
        match (self.closed_at, self.recovering_since) {
            (Some(_), _) => IncidentState::Closed,
            (None, Some(_)) => IncidentState::Recovering,
            (None, None) => IncidentState::Open,
        }
    }

    /// Is the identity still failing (not recovering, not closed)?
    pub fn is_open(&self) -> bool {
        self.state() == IncidentState::Open
    }

    /// Does a new authorization failure at `now` continue this incident (its thread) rather
    /// than open a new one? Yes while it recovers, and within `reopen_within` of its close:
    /// a flapping permission is one incident, not one per flap.
    pub fn continues_at(&self, now: DateTime<Utc>, reopen_within: Duration) -> bool {
        match self.closed_at {
            None => true,
            Some(closed) => now >= closed && now - closed <= reopen_within,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureCause;
    use chrono::TimeZone;

    fn incident() -> Incident {
        Incident {
            id: IncidentId::new(),
            identity: IdentityId::new(),
            failure: Failure::new(FailureCause::PermissionLost),
            opened_at: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            closed_at: None,
            affected_pipelines: vec![],
            origin: None,
            recovering_since: None,
            reopened: 0,
        }
    }

    #[test]
    fn states_follow_recovery_and_close() {
        let mut i = incident();
        assert_eq!(i.state(), IncidentState::Open);
        assert!(i.is_open());
        i.recovering_since = Some(i.opened_at + Duration::hours(1));
        assert_eq!(i.state(), IncidentState::Recovering);
        assert!(!i.is_open());
        i.closed_at = Some(i.opened_at + Duration::hours(2));
        assert_eq!(i.state(), IncidentState::Closed);
    }

    #[test]
    fn a_failure_soon_after_the_close_continues_the_incident() {
        let mut i = incident();
        let closed = i.opened_at + Duration::hours(2);
        i.closed_at = Some(closed);
        let within = Duration::hours(24);
        assert!(i.continues_at(closed + Duration::hours(3), within));
        assert!(!i.continues_at(closed + Duration::hours(25), within));
        // A clock that went backwards is not "soon after".
        assert!(!i.continues_at(closed - Duration::hours(1), within));
        i.closed_at = None;
        assert!(i.continues_at(closed + Duration::days(400), within));
    }
}
