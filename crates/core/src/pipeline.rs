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
    /// When the pipeline runs: a cron expression (UTC), e.g. `0 3 * * *`; every tick when
    /// None. A run syncs every complete window not loaded yet, so a late run catches up.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The start of the first window to sync.
    pub start: DateTime<Utc>,
    pub state: PipelineState,
}

/// A schedule that is not a cron expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {expression:?} is not a cron expression: {detail}")]
pub struct InvalidSchedule {
    pub expression: String,
    pub detail: String,
}

/// Parse a cron expression (5 fields, or 6 with seconds).
pub fn parse_schedule(expression: &str) -> Result<croner::Cron, InvalidSchedule> {
    expression
        .parse::<croner::Cron>()
        .map_err(|e| InvalidSchedule {
            expression: expression.to_string(),
            detail: e.to_string(),
        })
}

impl Pipeline {
    /// Is a run due at `now`, given the last run? Without a schedule, always; with one,
    /// when a scheduled instant passed since the last run (or there was none).
    pub fn run_due(
        &self,
        last_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, InvalidSchedule> {
        let Some(expression) = &self.schedule else {
            return Ok(true);
        };
        let cron = parse_schedule(expression)?;
        let Some(last) = last_run else {
            return Ok(true);
        };
        match cron.find_next_occurrence(&last, false) {
            Ok(next) => Ok(next <= now),
            Err(e) => Err(InvalidSchedule {
                expression: expression.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// How long after a window ends its numbers may still be restated.
    pub fn settle_period(&self) -> chrono::Duration {
        self.window.duration() * i32::try_from(self.settle_windows).unwrap_or(i32::MAX)
    }

    /// Does this pipeline depend on `identity`?
    pub fn uses(&self, identity: IdentityId) -> bool {
        self.source_identity == identity || self.destination_identity == Some(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn pipeline(schedule: Option<&str>) -> Pipeline {
        Pipeline {
            id: PipelineId::new(),
            name: "p".into(),
            source_identity: IdentityId::new(),
            source_resource: "r".into(),
            streams: vec!["s".into()],
            destination_kind: "sqlite".into(),
            destination_target: "w".into(),
            destination_identity: None,
            window: WindowSize::DAY,
            settle_windows: 0,
            schedule: schedule.map(str::to_string),
            start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            state: PipelineState::Active,
        }
    }

    #[test]
    fn a_daily_cron_runs_once_per_day_and_catches_up_after_downtime() {
        let p = pipeline(Some("0 3 * * *"));
        let t = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).unwrap();
        assert!(p.run_due(None, t(1, 0)).unwrap(), "never ran: due");
        assert!(!p.run_due(Some(t(1, 3)), t(1, 23)).unwrap());
        assert!(p.run_due(Some(t(1, 3)), t(2, 3)).unwrap());
        // Down for two days: the first tick after is due once.
        assert!(p.run_due(Some(t(1, 3)), t(4, 10)).unwrap());
        assert!(
            !p.run_due(Some(t(4, 10)), t(4, 10) + Duration::hours(5))
                .unwrap()
        );
        assert!(pipeline(None).run_due(Some(t(1, 3)), t(1, 4)).unwrap());
    }

    #[test]
    fn a_bad_cron_expression_is_named() {
        let err = parse_schedule("every day at 3").unwrap_err();
        assert!(err.to_string().contains("every day at 3"), "{err}");
    }
}
