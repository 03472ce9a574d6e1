//! Pipelines: source identity + resource + streams → destination, on a window grid.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{IdentityId, PipelineId, WindowSize, window::WindowGrid};

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
    /// When the pipeline runs: a cron expression in the pipeline's time zone, e.g.
    /// `0 3 * * *`, or an interval, e.g. `every 6h`; every tick when None. A run syncs every
    /// complete window not loaded yet, so a late run catches up.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The zone whose calendar days the windows follow, and in which cron schedules run.
    #[serde(default = "utc")]
    pub time_zone: Tz,
    /// The start of the first window to sync.
    pub start: DateTime<Utc>,
    pub state: PipelineState,
}

fn utc() -> Tz {
    Tz::UTC
}

/// A schedule that is neither a cron expression nor an interval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule {expression:?} is neither a cron expression (e.g. \"0 3 * * *\") nor an interval (e.g. \"every 6h\"): {detail}"
)]
pub struct InvalidSchedule {
    pub expression: String,
    pub detail: String,
}

/// When a pipeline runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// At the instants a cron expression names, in the pipeline's time zone.
    Cron(Box<croner::Cron>),
    /// Once per interval after the last run.
    Every(chrono::Duration),
}

/// The most trailing windows a pipeline may re-pull until they settle.
pub const MAX_SETTLE_WINDOWS: u32 = 10_000;

/// Parse a schedule: `every <duration>` (e.g. `every 6h`, `every 1h 30m`), or a cron
/// expression (5 fields, or 6 with seconds).
pub fn parse_schedule(expression: &str) -> Result<Schedule, InvalidSchedule> {
    let invalid = |detail: String| InvalidSchedule {
        expression: expression.to_string(),
        detail,
    };
    if let Some(interval) = expression.trim().strip_prefix("every ") {
        let interval = humantime::parse_duration(interval.trim())
            .map_err(|e| invalid(format!("the interval: {e}")))?;
        if interval < std::time::Duration::from_secs(1) {
            return Err(invalid("the interval must be at least one second".into()));
        }
        let interval = chrono::Duration::from_std(interval)
            .ok()
            .filter(|i| *i <= chrono::Duration::days(crate::MAX_DURATION_DAYS))
            .ok_or_else(|| {
                invalid(format!(
                    "the interval must be at most {} days",
                    crate::MAX_DURATION_DAYS
                ))
            })?;
        return Ok(Schedule::Every(interval));
    }
    expression
        .parse::<croner::Cron>()
        .map(|cron| Schedule::Cron(Box::new(cron)))
        .map_err(|e| invalid(e.to_string()))
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
        let schedule = parse_schedule(expression)?;
        let Some(last) = last_run else {
            return Ok(true);
        };
        match schedule {
            // Past the end of the calendar: never due again.
            Schedule::Every(interval) => Ok(last
                .checked_add_signed(interval)
                .is_some_and(|next| next <= now)),
            Schedule::Cron(cron) => {
                match cron.find_next_occurrence(&last.with_timezone(&self.time_zone), false) {
                    Ok(next) => Ok(next <= now),
                    Err(e) => Err(InvalidSchedule {
                        expression: expression.clone(),
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }

    /// The first scheduled instant after `after`; None without a schedule (or when the
    /// schedule names no later instant).
    pub fn next_scheduled(
        &self,
        after: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, InvalidSchedule> {
        let Some(expression) = &self.schedule else {
            return Ok(None);
        };
        match parse_schedule(expression)? {
            Schedule::Every(interval) => Ok(after.checked_add_signed(interval)),
            Schedule::Cron(cron) => {
                match cron.find_next_occurrence(&after.with_timezone(&self.time_zone), false) {
                    Ok(next) => Ok(Some(next.with_timezone(&Utc))),
                    Err(e) => Err(InvalidSchedule {
                        expression: expression.clone(),
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }

    /// The pipeline's windows: its size laid on its time zone's calendar.
    pub fn grid(&self) -> WindowGrid {
        WindowGrid::new(self.window, self.time_zone)
    }

    /// How long after a window ends its numbers may still be restated.
    pub fn settle_period(&self) -> chrono::Duration {
        self.window
            .duration()
            .checked_mul(i32::try_from(self.settle_windows).unwrap_or(i32::MAX))
            .unwrap_or(chrono::Duration::MAX)
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
            time_zone: Tz::UTC,
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
    fn a_bad_schedule_is_named() {
        for bad in ["every day at 3", "at noon", "every 0s", "every"] {
            let err = parse_schedule(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn an_interval_schedule_runs_once_per_interval() {
        let p = pipeline(Some("every 6h"));
        let t = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).unwrap();
        assert!(p.run_due(None, t(1, 0)).unwrap());
        assert!(!p.run_due(Some(t(1, 0)), t(1, 5)).unwrap());
        assert!(p.run_due(Some(t(1, 0)), t(1, 6)).unwrap());
        assert!(
            p.run_due(Some(t(1, 0)), t(3, 0)).unwrap(),
            "catches up after downtime"
        );
        assert!(
            matches!(parse_schedule("every 1h 30m"), Ok(Schedule::Every(d)) if d == Duration::minutes(90))
        );
    }

    #[test]
    fn a_cron_schedule_runs_in_the_pipeline_time_zone() {
        let mut p = pipeline(Some("0 3 * * *"));
        p.time_zone = "America/Los_Angeles".parse().unwrap();
        // 03:00 in Los Angeles in January is 11:00 UTC.
        let last = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let t = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).unwrap();
        assert!(!p.run_due(Some(last), t(2, 10)).unwrap());
        assert!(p.run_due(Some(last), t(2, 11)).unwrap());
    }
}
