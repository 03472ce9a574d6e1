//! The ledger: the durable record of every window, and the pure computations over it —
//! which windows a run should sync, which have become lost, and where the gaps are.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{FailureCause, IdentityId, Pipeline, PipelineId, Retention, Window};

/// Why a window is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MissingReason {
    /// An identity the pipeline depends on needs a human since `since`.
    IdentityBroken {
        identity: IdentityId,
        cause: FailureCause,
        since: DateTime<Utc>,
    },
    /// A transient failure; the window is retried.
    Transient { detail: String },
    /// The destination could not take the window.
    DestinationDown { detail: String },
    /// Its extraction waited in the spool longer than the spool's age limit and was
    /// dropped while the provider still served the window: it is extracted again, fresh,
    /// once the destination takes data.
    SpoolExpired { extracted_at: DateTime<Utc> },
    /// The provider's answer for this window could not be used (malformed, a row outside
    /// the range); the window is retried by the next run, the others went on.
    WindowFailed { detail: String },
    /// The provider refused the window as outside its retention (the provider's words).
    PastRetention { detail: String },
    /// The identity works again since `since`; the window is back-filled by the next run.
    AwaitingBackfill {
        identity: IdentityId,
        since: DateTime<Utc>,
    },
}

impl MissingReason {
    /// Two reasons of the same kind (and identity) belong to the same gap.
    fn same_kind(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::IdentityBroken { identity: a, .. },
                Self::IdentityBroken { identity: b, .. },
            ) => a == b,
            (
                Self::AwaitingBackfill { identity: a, .. },
                Self::AwaitingBackfill { identity: b, .. },
            ) => a == b,
            (Self::Transient { .. }, Self::Transient { .. })
            | (Self::DestinationDown { .. }, Self::DestinationDown { .. })
            | (Self::SpoolExpired { .. }, Self::SpoolExpired { .. })
            | (Self::WindowFailed { .. }, Self::WindowFailed { .. })
            | (Self::PastRetention { .. }, Self::PastRetention { .. }) => true,
            _ => false,
        }
    }

    /// The reason in words; `label` names an identity by its label (see
    /// [`MissingReason::identity`]), else it is called "the identity".
    pub fn describe_with(&self, label: Option<&str>) -> String {
        let who = label.unwrap_or("the identity");
        match self {
            Self::IdentityBroken { cause, since, .. } => format!(
                "{who} needs {} ({cause}) since {}",
                if cause.needs_new_credential() {
                    "reauthorization"
                } else {
                    "attention"
                },
                since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Self::AwaitingBackfill { since, .. } => format!(
                "{who} works again since {}; back-filled by the next run",
                since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            other => other.describe(),
        }
    }

    /// The identity a reason names, if any.
    pub fn identity(&self) -> Option<IdentityId> {
        match self {
            Self::IdentityBroken { identity, .. } | Self::AwaitingBackfill { identity, .. } => {
                Some(*identity)
            }
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::IdentityBroken { .. } | Self::AwaitingBackfill { .. } => self.describe_with(None),
            Self::WindowFailed { detail } => {
                format!("the provider's answer for this window was unusable: {detail}")
            }
            Self::PastRetention { detail } => {
                format!("the provider no longer serves this window: {detail}")
            }
            Self::Transient { detail } => format!("transient failure: {detail}"),
            Self::DestinationDown { detail } => format!("destination unavailable: {detail}"),
            Self::SpoolExpired { extracted_at } => format!(
                "extracted {} and spooled past the spool's age limit; extracted again when the destination takes data",
                extracted_at.format("%Y-%m-%d %H:%M UTC")
            ),
        }
    }
}

/// The state of one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WindowState {
    /// The destination committed the window. `at` is when its data was read from the
    /// provider (for a window delivered from the spool, its extraction), which is what
    /// decides whether it is settled.
    Loaded {
        at: DateTime<Utc>,
        rows: u64,
        attempt: u32,
    },
    /// Not loaded yet, and why.
    Missing {
        reason: MissingReason,
        since: DateTime<Utc>,
    },
    /// Extracted and waiting for the destination.
    Spooled { at: DateTime<Utc> },
    /// Past the provider's lookback: unrecoverable.
    Lost {
        at: DateTime<Utc>,
        reason: Option<MissingReason>,
    },
}

impl WindowState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Loaded { .. } => "loaded",
            Self::Missing { .. } => "missing",
            Self::Spooled { .. } => "spooled",
            Self::Lost { .. } => "lost",
        }
    }
}

/// One window of one stream of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub pipeline: PipelineId,
    pub stream: String,
    pub window: Window,
    pub state: WindowState,
    /// How many times the window was attempted.
    pub attempts: u32,
    pub updated_at: DateTime<Utc>,
}

/// Why a window is in a sync plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Never attempted.
    New,
    /// Recorded missing: a backfill.
    Backfill,
    /// Already loaded, re-pulled because the provider restates recent numbers.
    Settle,
}

/// One window to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWindow {
    pub stream: String,
    pub window: Window,
    pub purpose: Purpose,
    /// When the window falls out of the provider's lookback, if it has one.
    pub deadline: Option<DateTime<Utc>>,
}

impl PlannedWindow {
    /// Does the window contain the instant `at`?
    pub fn window_holds(&self, at: DateTime<Utc>) -> bool {
        self.window.start <= at && at < self.window.end
    }
}

/// Group planned windows into requests. A stream whose provider serves up to `max_span`
/// per request (Some) has adjacent windows of it joined, up to that span: the ones after a
/// group's first window, then, in the span left, the ones before it (a daily run plans the
/// new day first and the settling days before it after: one request for all). Others get
/// one request per window. Groups keep the plan's order (by their first planned window),
/// so the windows closest to their deadline are still asked for first. Each group is a
/// list of indices into `planned`, its windows adjacent and in time order.
pub fn chunk_windows(
    planned: &[PlannedWindow],
    max_span: impl Fn(&str) -> Option<Duration>,
) -> Vec<Vec<usize>> {
    let by_start: HashMap<(&str, DateTime<Utc>), usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.stream.as_str(), p.window.start), i))
        .collect();
    let by_end: HashMap<(&str, DateTime<Utc>), usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.stream.as_str(), p.window.end), i))
        .collect();
    let mut taken = vec![false; planned.len()];
    let mut out = Vec::new();
    for (i, first) in planned.iter().enumerate() {
        if taken[i] {
            continue;
        }
        taken[i] = true;
        let mut group = VecDeque::from([i]);
        if let Some(max) = max_span(&first.stream) {
            let stream = first.stream.as_str();
            let (mut start, mut end) = (first.window.start, first.window.end);
            while let Some(&j) = by_start.get(&(stream, end)) {
                if taken[j] || planned[j].window.end - start > max {
                    break;
                }
                taken[j] = true;
                group.push_back(j);
                end = planned[j].window.end;
            }
            while let Some(&j) = by_end.get(&(stream, start)) {
                if taken[j] || end - planned[j].window.start > max {
                    break;
                }
                taken[j] = true;
                group.push_front(j);
                start = planned[j].window.start;
            }
        }
        out.push(group.into());
    }
    out
}

/// What a run of a pipeline should do at `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Windows to sync, the ones closest to their deadline first.
    pub windows: Vec<PlannedWindow>,
    /// Windows never loaded that passed the lookback: to be recorded lost.
    pub newly_lost: Vec<(String, Window)>,
}

/// Plan a run of `pipeline` at `now` from its ledger. `lookback` is how far back the source
/// serves data (None: unlimited). Complete windows that are not loaded are planned (new ones
/// and backfills, oldest deadline first), then loaded windows that are not settled yet are
/// re-pulled: a window is settled once it was loaded at least the settle period
/// (`settle_windows` × window size) after its end, because providers restate recent numbers.
/// Keying this on the load time rather than on "the last N windows" means a settle re-pull
/// missed during an outage or downtime is made up afterwards. Catch-up after downtime falls
/// out of this too: every complete window is considered.
pub fn plan_sync(
    pipeline: &Pipeline,
    retention: Option<Retention>,
    ledger: &[LedgerEntry],
    now: DateTime<Utc>,
) -> SyncPlan {
    plan_sync_from(pipeline, retention, ledger, None, now)
}

/// [`plan_sync`] from a ledger read from a [`SettledHorizon`] on: before `settled_before`,
/// only the windows with an entry in `ledger` are looked at (the others have a loaded or
/// lost entry, which no plan asks for again).
pub fn plan_sync_from(
    pipeline: &Pipeline,
    retention: Option<Retention>,
    ledger: &[LedgerEntry],
    settled_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> SyncPlan {
    let by_key: HashMap<(&str, DateTime<Utc>), &LedgerEntry> = ledger
        .iter()
        .filter(|e| e.pipeline == pipeline.id)
        .map(|e| ((e.stream.as_str(), e.window.start), e))
        .collect();
    let complete = pipeline.grid().complete_windows(pipeline.start, now);
    let settle_period = pipeline.settle_period();
    let mut plan = SyncPlan::default();
    let mut settle = Vec::new();
    for stream in &pipeline.streams {
        for window in &complete {
            let deadline = retention.and_then(|r| r.deadline(*window));
            let past_lookback = deadline.is_some_and(|d| d <= now);
            let entry = by_key.get(&(stream.as_str(), window.start));
            if entry.is_none() && settled_before.is_some_and(|settled| window.start < settled) {
                continue;
            }
            let purpose = match entry.map(|e| &e.state) {
                None => Some(Purpose::New),
                Some(WindowState::Missing { .. }) => Some(Purpose::Backfill),
                Some(WindowState::Loaded { at, .. })
                    if window
                        .end
                        .checked_add_signed(settle_period)
                        .is_none_or(|settles| *at < settles)
                        && !past_lookback =>
                {
                    settle.push(PlannedWindow {
                        stream: stream.clone(),
                        window: *window,
                        purpose: Purpose::Settle,
                        deadline,
                    });
                    None
                }
                Some(_) => None,
            };
            if let Some(purpose) = purpose {
                if past_lookback {
                    plan.newly_lost.push((stream.clone(), *window));
                } else {
                    plan.windows.push(PlannedWindow {
                        stream: stream.clone(),
                        window: *window,
                        purpose,
                        deadline,
                    });
                }
            }
        }
    }
    plan.windows
        .sort_by_key(|w| (w.deadline, w.window.start, w.stream.clone()));
    plan.windows.extend(settle);
    plan
}

/// Where a run may start reading a pipeline's ledger: every complete window before
/// `before` is past the lookback of every stream of the pipeline, so a window there whose
/// entry says loaded or lost can never be planned again, and only the open ones (missing,
/// spooled) matter. That holds only if each of those windows has an entry: `windows` is
/// how many entries that takes (the windows from `from`, the first window of the
/// pipeline's grid, to `before`, × streams), for the reader to compare with the entries
/// it counts there, of the pipeline's streams only (a back-fill may have recorded days
/// before the pipeline's start), before it trusts the horizon. A run then reads what the
/// lookback still holds and what is open, not the pipeline's whole history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledHorizon {
    pub from: DateTime<Utc>,
    pub before: DateTime<Utc>,
    pub windows: u64,
}

impl SettledHorizon {
    /// The horizon of `pipeline` at `now`; None when a stream's provider has no lookback
    /// limit (any window may still be asked for) or no window is past it yet.
    pub fn of(
        pipeline: &Pipeline,
        retention: impl Fn(&str) -> Option<Retention>,
        now: DateTime<Utc>,
    ) -> Option<SettledHorizon> {
        let complete = pipeline.grid().complete_windows(pipeline.start, now);
        let mut before: Option<usize> = None;
        for stream in &pipeline.streams {
            let retention = retention(stream)?;
            // Deadlines grow with the window: the first one still served ends the run.
            let served = complete
                .iter()
                .position(|w| !retention.is_past(*w, now))
                .unwrap_or(complete.len());
            before = Some(before.map_or(served, |b| b.min(served)));
        }
        let settled = before.filter(|&n| n > 0)?;
        let streams = u64::try_from(pipeline.streams.len()).ok()?;
        Some(SettledHorizon {
            from: complete.first()?.start,
            before: complete.get(settled - 1)?.end,
            windows: u64::try_from(settled).ok()?.checked_mul(streams)?,
        })
    }
}

/// A pipeline's ledger as a run plans from it: every entry (`settled_before` None), or
/// those from a [`SettledHorizon`] on with the open ones before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanningLedger {
    pub entries: Vec<LedgerEntry>,
    pub settled_before: Option<DateTime<Utc>>,
}

/// The latest instant the scheduler keeps: further than any plan looks, and still ordered
/// as text where instants are stored as text.
pub fn far_future() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When a pipeline next has work, given its ledger after a run at `now` and from when its
/// source may be used (`source_usable_from`; None while it waits for a person).
///
/// With a schedule: the schedule's next instant. Without: windows still to be pulled (new
/// or missing ones) or waiting in the spool make it due as soon as the source may be used;
/// while the source waits for a person, it is due when the next window closes (recorded
/// missing, so the gaps stay current) or a waiting window reaches the end of the
/// provider's lookback (recorded lost), whichever comes first. Windows that passed the
/// lookback and are not recorded lost yet make it due at once. Otherwise it is due when
/// the next window closes or the first settle re-pull falls due. So an idle pipeline, or
/// one waiting for a reauthorization, costs nothing until something is to be done.
pub fn next_due(
    pipeline: &Pipeline,
    retention: impl Fn(&str) -> Option<Retention>,
    ledger: &[LedgerEntry],
    now: DateTime<Utc>,
    source_usable_from: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, crate::pipeline::InvalidSchedule> {
    next_due_from(pipeline, retention, ledger, None, now, source_usable_from)
}

/// [`next_due`] from a ledger read from a [`SettledHorizon`] on (see [`plan_sync_from`]).
pub fn next_due_from(
    pipeline: &Pipeline,
    retention: impl Fn(&str) -> Option<Retention>,
    ledger: &[LedgerEntry],
    settled_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    source_usable_from: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, crate::pipeline::InvalidSchedule> {
    if pipeline.schedule.is_some() {
        return Ok(pipeline
            .next_scheduled(now)?
            .unwrap_or_else(far_future)
            .min(far_future()));
    }
    let ready = source_usable_from.map(|at| at.max(now));
    let next_close = pipeline.grid().containing(now.max(pipeline.start)).end;
    let mut due = next_close;
    let mut pending = ledger
        .iter()
        .any(|e| matches!(e.state, WindowState::Spooled { .. }));
    let settle_period = pipeline.settle_period();
    for stream in &pipeline.streams {
        let single = Pipeline {
            streams: vec![stream.clone()],
            ..pipeline.clone()
        };
        let plan = plan_sync_from(&single, retention(stream), ledger, settled_before, now);
        if !plan.newly_lost.is_empty() {
            return Ok(now);
        }
        for window in &plan.windows {
            if window.purpose == Purpose::Settle {
                // A settle re-pull waits for the source too (a backoff that has not ended).
                if let Some(ready) = ready {
                    let settles = window
                        .window
                        .end
                        .checked_add_signed(settle_period)
                        .unwrap_or_else(far_future);
                    due = due.min(settles.max(ready));
                }
                continue;
            }
            pending = true;
            if let Some(deadline) = window.deadline {
                due = due.min(deadline.max(now));
            }
        }
    }
    Ok(match (pending, ready) {
        (true, Some(ready)) => ready,
        _ => due,
    }
    .min(far_future()))
}

/// A run of consecutive windows of one stream in the same non-loaded state for the same
/// kind of reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRange {
    pub pipeline: PipelineId,
    pub stream: String,
    /// Start of the first window.
    pub from: DateTime<Utc>,
    /// End of the last window (exclusive).
    pub to: DateTime<Utc>,
    pub windows: u32,
    /// `missing`, `spooled` or `lost`.
    pub state: String,
    pub reason: Option<MissingReason>,
    /// The last instant at which the oldest window of the range can still be fetched.
    pub recoverable_until: Option<DateTime<Utc>>,
}

/// Group the non-loaded windows of a ledger into ranges.
pub fn gaps(ledger: &[LedgerEntry], retention: Option<Retention>) -> Vec<GapRange> {
    let mut entries: Vec<&LedgerEntry> = ledger
        .iter()
        .filter(|e| !matches!(e.state, WindowState::Loaded { .. }))
        .collect();
    entries.sort_by(|a, b| {
        (a.pipeline, &a.stream, a.window.start).cmp(&(b.pipeline, &b.stream, b.window.start))
    });
    let mut out: Vec<GapRange> = Vec::new();
    for entry in entries {
        let reason = match &entry.state {
            WindowState::Missing { reason, .. } => Some(reason.clone()),
            WindowState::Lost { reason, .. } => reason.clone(),
            _ => None,
        };
        let extends = out.last().is_some_and(|last| {
            last.pipeline == entry.pipeline
                && last.stream == entry.stream
                && last.to == entry.window.start
                && last.state == entry.state.name()
                && match (&last.reason, &reason) {
                    (Some(a), Some(b)) => a.same_kind(b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if extends {
            if let Some(last) = out.last_mut() {
                last.to = entry.window.end;
                last.windows += 1;
            }
            continue;
        }
        let recoverable_until = match entry.state {
            WindowState::Lost { .. } => None,
            _ => retention.and_then(|r| r.deadline(entry.window)),
        };
        out.push(GapRange {
            pipeline: entry.pipeline,
            stream: entry.stream.clone(),
            from: entry.window.start,
            to: entry.window.end,
            windows: 1,
            state: entry.state.name().to_string(),
            reason,
            recoverable_until,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PipelineState, ReauthReason, WindowSize};
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap()
    }

    fn pipeline(settle: u32) -> Pipeline {
        Pipeline {
            id: PipelineId::new(),
            name: "p".into(),
            source_identity: IdentityId::new(),
            source_resource: "act_1".into(),
            streams: vec!["insights".into()],
            destination_kind: "sqlite".into(),
            destination_target: "w.sqlite".into(),
            destination_identity: None,
            window: WindowSize::DAY,
            settle_windows: settle,
            schedule: None,
            time_zone: chrono_tz::Tz::UTC,
            start: day(1),
            state: PipelineState::Active,
        }
    }

    fn entry(p: &Pipeline, d: u32, state: WindowState) -> LedgerEntry {
        LedgerEntry {
            pipeline: p.id,
            stream: "insights".into(),
            window: WindowSize::DAY.containing(day(d)),
            state,
            attempts: 1,
            updated_at: day(d),
        }
    }

    fn loaded() -> WindowState {
        WindowState::Loaded {
            at: day(1),
            rows: 3,
            attempt: 1,
        }
    }

    fn broken(identity: IdentityId) -> WindowState {
        WindowState::Missing {
            reason: MissingReason::IdentityBroken {
                identity,
                cause: FailureCause::ReauthRequired {
                    reason: ReauthReason::Revoked,
                },
                since: day(4),
            },
            since: day(4),
        }
    }

    #[test]
    fn adjacent_windows_of_a_stream_are_joined_up_to_the_provider_span() {
        let planned: Vec<PlannedWindow> = (1..=10)
            .flat_map(|d| {
                ["a", "b"].map(|stream| PlannedWindow {
                    stream: stream.into(),
                    window: WindowSize::DAY.containing(day(d)),
                    purpose: Purpose::Backfill,
                    deadline: None,
                })
            })
            .collect();
        let spans = |s: &str| (s == "a").then(|| Duration::days(4));
        let groups = chunk_windows(&planned, spans);
        // Stream a: days 1-4, 5-8, 9-10; stream b: one request per day.
        let a: Vec<usize> = groups
            .iter()
            .filter(|g| planned[g[0]].stream == "a")
            .map(Vec::len)
            .collect();
        assert_eq!(a, vec![4, 4, 2]);
        assert_eq!(groups.len(), 3 + 10);
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..20).collect::<Vec<_>>(),
            "every window exactly once"
        );
        // A hole (day 5 not planned) ends a group.
        let holed: Vec<PlannedWindow> = planned
            .iter()
            .filter(|p| p.stream == "a" && p.window.start != day(5))
            .cloned()
            .collect();
        let lens: Vec<usize> = chunk_windows(&holed, spans).iter().map(Vec::len).collect();
        assert_eq!(lens, vec![4, 4, 1]);
    }

    /// A daily run plans the new day first and the days still settling after it; they
    /// are adjacent, so one request asks for all of them (not one for the new day and one
    /// for the settling days), up to the provider's span.
    #[test]
    fn settling_days_planned_after_the_new_day_join_its_request() {
        let window = |d: u32, purpose: Purpose| PlannedWindow {
            stream: "a".into(),
            window: WindowSize::DAY.containing(day(d)),
            purpose,
            deadline: None,
        };
        let planned = vec![
            window(5, Purpose::New),
            window(3, Purpose::Settle),
            window(4, Purpose::Settle),
        ];
        let groups = chunk_windows(&planned, |_| Some(Duration::days(31)));
        assert_eq!(groups, vec![vec![1, 2, 0]], "days 3, 4, 5 in time order");
        // The span still bounds the group: the new day and the day before it only.
        let groups = chunk_windows(&planned, |_| Some(Duration::days(2)));
        assert_eq!(groups, vec![vec![2, 0], vec![1]]);
    }

    #[test]
    fn an_idle_pipeline_is_next_due_when_its_next_window_closes_or_settles() {
        let p = pipeline(2);
        let now = day(6) + Duration::hours(1);
        // Days 1-4 settled long ago, day 5 loaded 1 h after its end: it settles (is pulled
        // again) 48 h after its end, before that the day-6 window closes at day 7.
        let mut ledger: Vec<_> = (1..=4)
            .map(|d| {
                let state = WindowState::Loaded {
                    at: day(d + 3),
                    rows: 3,
                    attempt: 1,
                };
                entry(&p, d, state)
            })
            .collect();
        ledger.push(entry(
            &p,
            5,
            WindowState::Loaded {
                at: now,
                rows: 3,
                attempt: 1,
            },
        ));
        assert_eq!(next_due(&p, |_| None, &ledger, now, READY).unwrap(), day(7));
        // Without settling: nothing before day 7 either.
        let settled = pipeline(0);
        let ledger0: Vec<_> = ledger
            .iter()
            .map(|e| LedgerEntry {
                pipeline: settled.id,
                ..e.clone()
            })
            .collect();
        assert_eq!(
            next_due(&settled, |_| None, &ledger0, now, READY).unwrap(),
            day(7)
        );
        // A settle re-pull that falls due before the next window closes comes first.
        let hourly = Pipeline {
            window: WindowSize::from_seconds(86_400 * 7).unwrap(),
            ..pipeline(1)
        };
        let week = hourly.grid().containing(day(5));
        let loaded_early = LedgerEntry {
            pipeline: hourly.id,
            stream: "insights".into(),
            window: week,
            state: WindowState::Loaded {
                at: week.end,
                rows: 1,
                attempt: 1,
            },
            attempts: 1,
            updated_at: week.end,
        };
        let due = next_due(&hourly, |_| None, &[loaded_early], week.end, READY).unwrap();
        assert_eq!(due, week.end + Duration::days(7));
    }

    #[test]
    fn a_pipeline_with_windows_to_pull_or_spooled_is_due_at_once() {
        let p = pipeline(0);
        let now = day(6) + Duration::hours(1);
        let loaded_after_end = |d: u32| WindowState::Loaded {
            at: day(d + 1),
            rows: 3,
            attempt: 1,
        };
        let mut ledger: Vec<_> = (1..=5).map(|d| entry(&p, d, loaded_after_end(d))).collect();
        assert_eq!(next_due(&p, |_| None, &ledger, now, READY).unwrap(), day(7));
        ledger[2] = entry(&p, 3, broken(IdentityId::new()));
        assert_eq!(next_due(&p, |_| None, &ledger, now, READY).unwrap(), now);
        ledger[2] = entry(&p, 3, WindowState::Spooled { at: day(4) });
        assert_eq!(next_due(&p, |_| None, &ledger, now, READY).unwrap(), now);
        // A window never asked for (day 5 of a longer ledger gap) is due too.
        ledger.truncate(3);
        assert_eq!(next_due(&p, |_| None, &ledger, now, READY).unwrap(), now);
    }

    const READY: Option<DateTime<Utc>> = Some(DateTime::<Utc>::MIN_UTC);

    #[test]
    fn a_pipeline_waiting_for_its_source_is_due_when_a_window_closes_or_nears_its_lookback() {
        let p = pipeline(0);
        let now = day(6) + Duration::hours(1);
        let waiting = entry(&p, 5, broken(IdentityId::new()));
        let mut ledger: Vec<_> = (1..=4)
            .map(|d| {
                let state = WindowState::Loaded {
                    at: day(d + 1),
                    rows: 3,
                    attempt: 1,
                };
                entry(&p, d, state)
            })
            .collect();
        ledger.push(waiting);
        // Waiting for a person: the next window's close records it missing too.
        assert_eq!(next_due(&p, |_| None, &ledger, now, None).unwrap(), day(7));
        // Backing off until noon: due then.
        let noon = day(6) + Duration::hours(12);
        assert_eq!(
            next_due(&p, |_| None, &ledger, now, Some(noon)).unwrap(),
            noon
        );
        // A settle re-pull that is overdue waits for the backoff too.
        let settling = Pipeline {
            start: day(5),
            ..pipeline(2)
        };
        // Day 5 was loaded right after it ended (it settles at day 8); days 6-8 are settled.
        let recent: Vec<_> = (5..=8)
            .map(|d| {
                let at = if d == 5 { day(6) } else { day(d + 3) };
                let state = WindowState::Loaded {
                    at,
                    rows: 3,
                    attempt: 1,
                };
                entry(&settling, d, state)
            })
            .collect();
        let late = day(9) + Duration::hours(1);
        let ready = late + Duration::hours(3);
        assert_eq!(
            next_due(&settling, |_| None, &recent, late, Some(ready)).unwrap(),
            ready
        );
        // A waiting window whose lookback ends first makes it due then, to record it lost.
        let retention = Retention::new(
            Duration::hours(12),
            crate::CountedFrom::End,
            Duration::zero(),
        )
        .unwrap();
        let deadline = retention
            .deadline(WindowSize::DAY.containing(day(5)))
            .unwrap();
        assert!(deadline > now && deadline < day(7), "{deadline}");
        assert_eq!(
            next_due(&p, |_| Some(retention), &ledger, now, None).unwrap(),
            deadline
        );
        // Once past it, due at once (the run records it lost).
        assert_eq!(
            next_due(
                &p,
                |_| Some(retention),
                &ledger,
                deadline + Duration::hours(1),
                None
            )
            .unwrap(),
            deadline + Duration::hours(1)
        );
    }

    #[test]
    fn a_scheduled_pipeline_is_next_due_at_its_schedule() {
        let p = Pipeline {
            schedule: Some("0 3 * * *".into()),
            ..pipeline(0)
        };
        let now = day(6) + Duration::hours(5);
        assert_eq!(
            next_due(&p, |_| None, &[], now, READY).unwrap(),
            day(7) + Duration::hours(3)
        );
        let every = Pipeline {
            schedule: Some("every 6h".into()),
            ..pipeline(0)
        };
        assert_eq!(
            next_due(&every, |_| None, &[], now, READY).unwrap(),
            now + Duration::hours(6)
        );
        let broken = Pipeline {
            schedule: Some("every day at noon".into()),
            ..pipeline(0)
        };
        assert!(next_due(&broken, |_| None, &[], now, READY).is_err());
    }

    #[test]
    fn first_run_plans_every_complete_window_oldest_first() {
        let p = pipeline(2);
        let plan = plan_sync(&p, None, &[], day(4) + Duration::hours(1));
        let starts: Vec<_> = plan.windows.iter().map(|w| w.window.start).collect();
        assert_eq!(starts, vec![day(1), day(2), day(3)]);
        assert!(plan.windows.iter().all(|w| w.purpose == Purpose::New));
    }

    #[test]
    fn settle_period_re_pulls_loaded_windows_until_they_are_settled() {
        let p = pipeline(2);
        // Windows 1–4 were last loaded 49 h after they ended (settled); window 5 only 1 h.
        let ledger: Vec<_> = (1..=5)
            .map(|d| {
                let after = if d == 5 { 1 } else { 49 };
                entry(
                    &p,
                    d,
                    WindowState::Loaded {
                        at: day(d + 1) + Duration::hours(after),
                        rows: 3,
                        attempt: 1,
                    },
                )
            })
            .collect();
        let plan = plan_sync(&p, None, &ledger, day(7) + Duration::hours(1));
        let got: Vec<_> = plan
            .windows
            .iter()
            .map(|w| (w.window.start, w.purpose))
            .collect();
        assert_eq!(
            got,
            vec![(day(6), Purpose::New), (day(5), Purpose::Settle),],
            "window 6 is new; window 5 was loaded 1 h after its end, less than the 48 h settle period"
        );
    }

    #[test]
    fn a_settle_re_pull_missed_during_an_outage_is_made_up() {
        let p = pipeline(2);
        // Window 3 was loaded one hour after its end, then the outage hid it from re-pulls.
        let ledger = vec![entry(
            &p,
            3,
            WindowState::Loaded {
                at: day(4) + Duration::hours(1),
                rows: 3,
                attempt: 1,
            },
        )];
        let plan = plan_sync(&p, None, &ledger, day(9));
        assert!(
            plan.windows
                .iter()
                .any(|w| w.window.start == day(3) && w.purpose == Purpose::Settle)
        );
        // Loaded again after the settle period: settled, not planned.
        let settled = vec![entry(
            &p,
            3,
            WindowState::Loaded {
                at: day(6),
                rows: 3,
                attempt: 2,
            },
        )];
        let plan = plan_sync(&p, None, &settled, day(9));
        assert!(!plan.windows.iter().any(|w| w.window.start == day(3)));
    }

    #[test]
    fn missing_windows_are_back_filled_and_past_lookback_become_lost() {
        let p = pipeline(0);
        let id = IdentityId::new();
        let mut ledger: Vec<_> = (1..=3).map(|d| entry(&p, d, loaded())).collect();
        ledger.extend((4..=8).map(|d| entry(&p, d, broken(id))));
        // Lookback of 5 days at the start of day 10: the provider serves days 5 to 9, so the
        // windows of days 4 (ended day 5 + 5 days = day 10) and older are lost.
        let plan = plan_sync(
            &p,
            Some(crate::retention::tests_support::from_end(5)),
            &ledger,
            day(10),
        );
        let lost: Vec<_> = plan.newly_lost.iter().map(|(_, w)| w.start).collect();
        assert_eq!(lost, vec![day(4)]);
        let planned: Vec<_> = plan
            .windows
            .iter()
            .map(|w| (w.window.start, w.purpose))
            .collect();
        assert_eq!(
            planned,
            vec![
                (day(5), Purpose::Backfill),
                (day(6), Purpose::Backfill),
                (day(7), Purpose::Backfill),
                (day(8), Purpose::Backfill),
                (day(9), Purpose::New),
            ]
        );
        assert_eq!(plan.windows[0].deadline, Some(day(11)));
    }

    #[test]
    fn gaps_group_consecutive_windows_with_their_deadline() {
        let p = pipeline(0);
        let id = IdentityId::new();
        let mut ledger: Vec<_> = (1..=3).map(|d| entry(&p, d, loaded())).collect();
        ledger.extend((4..=6).map(|d| entry(&p, d, broken(id))));
        ledger.push(entry(&p, 7, loaded()));
        ledger.push(entry(
            &p,
            8,
            WindowState::Missing {
                reason: MissingReason::Transient {
                    detail: "503".into(),
                },
                since: day(9),
            },
        ));
        let gaps = gaps(&ledger, Some(crate::retention::tests_support::from_end(30)));
        assert_eq!(gaps.len(), 2);
        assert_eq!(
            (gaps[0].from, gaps[0].to, gaps[0].windows),
            (day(4), day(7), 3)
        );
        // Window 4 ends at day 5: servable for 30 days after that.
        assert_eq!(gaps[0].recoverable_until, Some(day(5) + Duration::days(30)));
        assert_eq!(gaps[1].windows, 1);
    }

    #[test]
    fn fully_loaded_ledger_has_no_gaps() {
        let p = pipeline(0);
        let ledger: Vec<_> = (1..=9).map(|d| entry(&p, d, loaded())).collect();
        assert!(gaps(&ledger, None).is_empty());
    }

    /// A daily pipeline of two streams, each served for 10 days after a window's end.
    fn two_streams_served_ten_days() -> (Pipeline, Retention) {
        let mut p = pipeline(1);
        p.streams = vec!["insights".into(), "spend".into()];
        let retention = Retention::new(
            Duration::days(10),
            crate::CountedFrom::End,
            Duration::zero(),
        )
        .unwrap();
        (p, retention)
    }

    /// Planning from the ledger read past the settled horizon plans exactly what planning
    /// from the whole ledger does, and says when the pipeline is next due the same way.
    #[test]
    fn a_plan_from_the_ledger_past_the_settled_horizon_is_the_plan_from_the_whole_ledger() {
        let (p, retention) = two_streams_served_ten_days();
        let now = day(28) + Duration::hours(1);
        let horizon = SettledHorizon::of(&p, |_| Some(retention), now).unwrap();
        // Days 1–17 end at least 10 days before day 28 01:00: past the lookback.
        assert_eq!(horizon.before, day(18));
        assert_eq!(horizon.windows, 17 * 2);
        let of = |stream: &str, d: u32, state: WindowState| LedgerEntry {
            stream: stream.into(),
            ..entry(&p, d, state)
        };
        let lost = || WindowState::Lost {
            at: day(20),
            reason: None,
        };
        let loaded_at = |at| WindowState::Loaded {
            at,
            rows: 3,
            attempt: 1,
        };
        let mut ledger = Vec::new();
        for stream in ["insights", "spend"] {
            for d in 1..=26 {
                let state = match (stream, d) {
                    // Open windows before the horizon: one still missing (it becomes
                    // lost), one in the spool.
                    ("insights", 3) => broken(p.source_identity),
                    ("spend", 5) => WindowState::Spooled { at: day(6) },
                    (_, 7..=9) => lost(),
                    // Recent ones: missing, loaded but not settled, settled.
                    ("spend", 24) => broken(p.source_identity),
                    (_, 26) => loaded_at(day(27)),
                    _ => loaded_at(day(d + 2)),
                };
                ledger.push(of(stream, d, state));
            }
        }
        let read: Vec<LedgerEntry> = ledger
            .iter()
            .filter(|e| {
                e.window.start >= horizon.before
                    || matches!(
                        e.state,
                        WindowState::Missing { .. } | WindowState::Spooled { .. }
                    )
            })
            .cloned()
            .collect();
        assert_eq!(read.len(), 2 * 9 + 2);
        for stream in ["insights", "spend"] {
            let single = Pipeline {
                streams: vec![stream.into()],
                ..p.clone()
            };
            let whole = plan_sync(&single, Some(retention), &ledger, now);
            let past = plan_sync_from(&single, Some(retention), &read, Some(horizon.before), now);
            assert_eq!(past, whole, "{stream}");
            // Without the horizon the short ledger would plan the settled windows again.
            assert_ne!(plan_sync(&single, Some(retention), &read, now), whole);
        }
        // Day 27 is not in the ledger: new, and planned from both.
        let whole = plan_sync(&p, Some(retention), &ledger, now);
        assert!(whole.windows.iter().any(|w| w.window.start == day(27)));
        assert!(whole.newly_lost.iter().any(|(_, w)| w.start == day(3)));
        for ready in [None, Some(now)] {
            assert_eq!(
                next_due_from(
                    &p,
                    |_| Some(retention),
                    &read,
                    Some(horizon.before),
                    now,
                    ready
                )
                .unwrap(),
                next_due(&p, |_| Some(retention), &ledger, now, ready).unwrap(),
            );
        }
    }

    #[test]
    fn no_window_is_settled_while_a_stream_is_served_without_a_limit_or_before_any_passed_it() {
        let (p, retention) = two_streams_served_ten_days();
        let now = day(28);
        let limited = |s: &str| (s == "insights").then_some(retention);
        assert_eq!(SettledHorizon::of(&p, limited, now), None);
        assert_eq!(SettledHorizon::of(&p, |_| Some(retention), day(5)), None);
        assert_eq!(
            SettledHorizon::of(&p, |_| Some(retention), day(12)),
            Some(SettledHorizon {
                from: day(1),
                before: day(2),
                windows: 2
            })
        );
    }
}

/// What an outage of `length` starting at `start` would do to a pipeline's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageForecast {
    /// Windows that would be missing when the outage ends and can still be fetched then.
    pub recovered: Vec<Window>,
    /// Windows that would be past the lookback when the outage ends.
    pub lost: Vec<Window>,
    /// The last instant to reauthorize without losing any window.
    pub reauthorize_by: Option<DateTime<Utc>>,
}

/// Simulate an outage of one stream of `pipeline` from `start` for `length`: the windows
/// already missing plus those that would complete during the outage; at its end, the ones
/// past `lookback` are lost and the rest recovered.
pub fn simulate_outage(
    pipeline: &Pipeline,
    stream: &str,
    retention: Option<Retention>,
    ledger: &[LedgerEntry],
    start: DateTime<Utc>,
    length: Duration,
) -> OutageForecast {
    let end = start
        .checked_add_signed(length)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let loaded: std::collections::HashSet<DateTime<Utc>> = ledger
        .iter()
        .filter(|e| e.pipeline == pipeline.id && e.stream == stream)
        .filter(|e| {
            matches!(
                e.state,
                WindowState::Loaded { .. } | WindowState::Lost { .. }
            )
        })
        .map(|e| e.window.start)
        .collect();
    let mut forecast = OutageForecast {
        recovered: vec![],
        lost: vec![],
        reauthorize_by: None,
    };
    for window in pipeline.grid().complete_windows(pipeline.start, end) {
        // Loaded before the outage (a window completing after `start` is synced after it).
        if loaded.contains(&window.start) && window.end <= start {
            continue;
        }
        let deadline = retention.and_then(|r| r.deadline(window));
        if deadline.is_some_and(|d| d <= end) {
            forecast.lost.push(window);
        } else {
            forecast.recovered.push(window);
        }
        if let Some(d) = deadline {
            forecast.reauthorize_by = Some(forecast.reauthorize_by.map_or(d, |r| r.min(d)));
        }
    }
    forecast
}

#[cfg(test)]
mod simulate_tests {
    use super::*;
    use crate::{PipelineState, WindowSize};
    use chrono::TimeZone;

    #[test]
    fn a_long_outage_loses_the_oldest_windows_and_names_the_last_safe_day() {
        let day =
            |d: i64| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::days(d - 1);
        let p = Pipeline {
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
            schedule: None,
            time_zone: chrono_tz::Tz::UTC,
            start: day(1),
            state: PipelineState::Active,
        };
        // Days 1..=10 loaded; an outage from day 11 for 70 days with a 60-day lookback.
        let ledger: Vec<_> = (1..=10)
            .map(|d| LedgerEntry {
                pipeline: p.id,
                stream: "s".into(),
                window: WindowSize::DAY.containing(day(d)),
                state: WindowState::Loaded {
                    at: day(d + 1),
                    rows: 1,
                    attempt: 1,
                },
                attempts: 1,
                updated_at: day(d + 1),
            })
            .collect();
        let f = simulate_outage(
            &p,
            "s",
            Some(crate::retention::tests_support::from_end(60)),
            &ledger,
            day(11),
            Duration::days(70),
        );
        assert_eq!(
            f.recovered.len() + f.lost.len(),
            70,
            "windows 11..=80 complete during it"
        );
        assert_eq!(f.lost.len(), 10);
        assert_eq!(f.lost[0].start, day(11));
        assert_eq!(f.reauthorize_by, Some(day(12) + Duration::days(60)));
        // A short outage loses nothing.
        let f = simulate_outage(
            &p,
            "s",
            Some(crate::retention::tests_support::from_end(60)),
            &ledger,
            day(11),
            Duration::days(3),
        );
        assert!(f.lost.is_empty());
        assert_eq!(f.recovered.len(), 3);
    }
}
