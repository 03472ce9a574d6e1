//! Windows: the time slices that are synced, recorded in the ledger and back-filled.

use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The length of a pipeline's windows. On its own it aligns windows to the Unix epoch in
/// UTC; a [`WindowGrid`] aligns them to a time zone's calendar days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WindowSize {
    seconds: i64,
}

/// A window size that is not a positive whole number of seconds dividing a day evenly or a
/// multiple of a day.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid window size of {0} seconds: it must be positive and divide a day, or be whole days"
)]
pub struct InvalidWindowSize(pub i64);

impl WindowSize {
    pub const DAY: Self = Self { seconds: 86_400 };
    pub const HOUR: Self = Self { seconds: 3_600 };

    pub fn from_seconds(seconds: i64) -> Result<Self, InvalidWindowSize> {
        if seconds <= 0 || (86_400 % seconds != 0 && seconds % 86_400 != 0) {
            return Err(InvalidWindowSize(seconds));
        }
        Ok(Self { seconds })
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }

    pub fn duration(self) -> Duration {
        Duration::seconds(self.seconds)
    }

    /// The window that contains the instant `at`.
    pub fn containing(self, at: DateTime<Utc>) -> Window {
        let ts = at.timestamp();
        let start_ts = ts.div_euclid(self.seconds) * self.seconds;
        let start = DateTime::from_timestamp(start_ts, 0).unwrap_or(at);
        Window {
            start,
            end: start + self.duration(),
        }
    }

    /// All complete windows (ended at or before `until`) starting from the window containing
    /// `from`, oldest first.
    pub fn complete_windows(self, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Window> {
        let mut out = Vec::new();
        let mut window = self.containing(from);
        while window.end <= until {
            out.push(window);
            window = Window {
                start: window.end,
                end: window.end + self.duration(),
            };
        }
        out
    }
}

/// A pipeline's windows: a size laid on the calendar of a time zone. Day windows run from
/// local midnight to local midnight (23 or 25 hours on daylight-saving days); windows of
/// several days count whole local days from 1970-01-01; windows shorter than a day tile each
/// local day from its midnight, the last one cut at the next midnight when the day's length
/// is not a multiple of the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGrid {
    pub size: WindowSize,
    pub time_zone: Tz,
}

const EPOCH_DAY: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");

impl WindowGrid {
    pub fn new(size: WindowSize, time_zone: Tz) -> Self {
        Self { size, time_zone }
    }

    pub fn utc(size: WindowSize) -> Self {
        Self::new(size, Tz::UTC)
    }

    /// The instant a local day begins: its midnight, or the first instant of the day when
    /// midnight is skipped by a daylight-saving change.
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        let tz = self.time_zone;
        for minutes in (0..=180).step_by(15) {
            let local = day.and_time(NaiveTime::MIN) + Duration::minutes(minutes);
            if let Some(at) = tz.from_local_datetime(&local).earliest() {
                return at.with_timezone(&Utc);
            }
        }
        // No zone skips more than three hours; fall back to UTC midnight.
        day.and_time(NaiveTime::MIN).and_utc()
    }

    /// The local calendar day that contains `at`.
    pub fn local_day(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.time_zone).date_naive()
    }

    /// The window that contains the instant `at`.
    pub fn containing(&self, at: DateTime<Utc>) -> Window {
        if self.time_zone == Tz::UTC {
            return self.size.containing(at);
        }
        let seconds = self.size.seconds();
        let day = self.local_day(at);
        if seconds % 86_400 == 0 {
            let days = seconds / 86_400;
            let index = (day - EPOCH_DAY).num_days().div_euclid(days) * days;
            let first = EPOCH_DAY + Duration::days(index);
            return Window {
                start: self.day_start(first),
                end: self.day_start(first + Duration::days(days)),
            };
        }
        let mut day_start = self.day_start(day);
        if at < day_start {
            // `at` lies in the skipped part of a day that starts late: the previous day.
            day_start = self.day_start(day - Duration::days(1));
        }
        let next_day = self.day_start(self.local_day(day_start) + Duration::days(1));
        let offset = (at - day_start).num_seconds().div_euclid(seconds) * seconds;
        let start = day_start + Duration::seconds(offset);
        Window {
            start,
            end: (start + self.size.duration()).min(next_day),
        }
    }

    /// All complete windows (ended at or before `until`) starting from the window containing
    /// `from`, oldest first.
    pub fn complete_windows(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Window> {
        if self.time_zone == Tz::UTC {
            return self.size.complete_windows(from, until);
        }
        let mut out = Vec::new();
        let mut window = self.containing(from);
        while window.end <= until {
            out.push(window);
            window = self.containing(window.end);
        }
        out
    }

    /// Is `window` exactly one local day of this grid's zone?
    fn local_day_of(&self, window: Window) -> Option<NaiveDate> {
        let day = self.local_day(window.start);
        (window.start == self.day_start(day)
            && window.end == self.day_start(day + Duration::days(1)))
        .then_some(day)
    }

    /// The local days `window` covers, first and last inclusive: what a provider that
    /// reports by day in this zone is asked for.
    pub fn days(&self, window: Window) -> (NaiveDate, NaiveDate) {
        let last = if window.end > window.start {
            window.end - Duration::seconds(1)
        } else {
            window.end
        };
        (self.local_day(window.start), self.local_day(last))
    }

    /// A window as people of the zone read it: `2026-01-05` for a local day, else its
    /// local bounds with their offset.
    /// The windows from the one containing `from` to the one ending at `to` (exclusive), in
    /// words: one window's label, or "FIRST to LAST".
    pub fn range_label(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
        let first = self.containing(from);
        let last = self.containing(to.checked_sub_signed(Duration::seconds(1)).unwrap_or(to));
        if first == last || to <= first.end {
            self.label(first)
        } else {
            format!("{} to {}", self.label(first), self.label(last))
        }
    }

    pub fn label(&self, window: Window) -> String {
        if let Some(day) = self.local_day_of(window) {
            return day.format("%Y-%m-%d").to_string();
        }
        if self.time_zone == Tz::UTC {
            return window.to_string();
        }
        let tz = self.time_zone;
        format!(
            "{}..{}",
            window.start.with_timezone(&tz).format("%Y-%m-%dT%H:%M%:z"),
            window.end.with_timezone(&tz).format("%Y-%m-%dT%H:%M%:z")
        )
    }
}

/// What one extraction request covers: one window, or several adjacent ones when the
/// provider serves a longer range per request, read in the pipeline's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    pub span: Window,
    pub time_zone: Tz,
}

impl ReportRange {
    pub fn new(span: Window, time_zone: Tz) -> Self {
        Self { span, time_zone }
    }

    /// The local days covered, first and last inclusive: what a provider that reports by
    /// day is asked for.
    pub fn days(&self) -> (NaiveDate, NaiveDate) {
        WindowGrid::new(WindowSize::DAY, self.time_zone).days(self.span)
    }
}

/// A time zone name that is not in the IANA database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown time zone {0:?}: use an IANA name such as UTC, Europe/Berlin or America/Los_Angeles"
)]
pub struct UnknownTimeZone(pub String);

/// Parse an IANA time zone name.
pub fn parse_time_zone(name: &str) -> Result<Tz, UnknownTimeZone> {
    name.parse::<Tz>()
        .map_err(|_| UnknownTimeZone(name.to_string()))
}

/// One time slice `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self { start, end }
    }

    /// How long the window is.
    pub fn length(self) -> Duration {
        self.end - self.start
    }
}

/// Days from outside (a back-fill's range, a pipeline's start) are taken from this range
/// only: every window computation on them stays inside the calendar.
pub fn check_day(what: &str, day: NaiveDate) -> Result<(), String> {
    let (first, last) = (
        NaiveDate::from_ymd_opt(1970, 1, 1),
        NaiveDate::from_ymd_opt(9999, 12, 31),
    );
    match (first, last) {
        (Some(first), Some(last)) if day >= first && day <= last => Ok(()),
        _ => Err(format!(
            "{what} {day} is outside the days gapless works with (1970-01-01 to 9999-12-31)"
        )),
    }
}

/// A duration for people, in the largest unit that fits it whole or the two largest that
/// describe it: `3 days`, `1 day 6 hours`, `90 minutes` → `1 hour 30 minutes`, `45 seconds`.
pub fn duration_text(d: Duration) -> String {
    let total = d.num_seconds();
    if total < 0 {
        return format!(
            "-{}",
            duration_text(Duration::seconds(total.saturating_neg()))
        );
    }
    let units: [(i64, &str); 4] = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let mut parts = Vec::new();
    let mut rest = total;
    for (size, name) in units {
        let n = rest / size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            rest -= n * size;
        }
        if parts.len() == 2 {
            break;
        }
        if !parts.is_empty() && rest == 0 {
            break;
        }
    }
    if parts.is_empty() {
        return "0 seconds".into();
    }
    parts.join(" ")
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end - self.start == Duration::days(1) && self.start.time() == chrono::NaiveTime::MIN
        {
            write!(f, "{}", self.start.format("%Y-%m-%d"))
        } else {
            write!(
                f,
                "{}..{}",
                self.start.format("%Y-%m-%dT%H:%MZ"),
                self.end.format("%Y-%m-%dT%H:%MZ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn day_windows_align_to_midnight_utc() {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 13, 45, 0).unwrap();
        let w = WindowSize::DAY.containing(at);
        assert_eq!(w.start, Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap());
        assert_eq!(w.end, Utc.with_ymd_and_hms(2026, 1, 6, 0, 0, 0).unwrap());
        assert_eq!(w.to_string(), "2026-01-05");
    }

    #[test]
    fn complete_windows_exclude_the_running_window() {
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 4, 1, 0, 0).unwrap();
        let ws = WindowSize::DAY.complete_windows(from, now);
        assert_eq!(ws.len(), 3);
        assert_eq!(
            ws[2].end,
            Utc.with_ymd_and_hms(2026, 1, 4, 0, 0, 0).unwrap()
        );
        let hours = WindowSize::HOUR.complete_windows(from, from + Duration::minutes(150));
        assert_eq!(hours.len(), 2);
    }

    #[test]
    fn day_windows_follow_local_midnight_across_daylight_saving() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let grid = WindowGrid::new(WindowSize::DAY, berlin);
        // 2026-03-29: clocks go forward at 02:00, the day has 23 hours.
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 12, 0, 0).unwrap();
        let w = grid.containing(at);
        assert_eq!(
            w.start,
            Utc.with_ymd_and_hms(2026, 3, 28, 23, 0, 0).unwrap()
        );
        assert_eq!(w.end, Utc.with_ymd_and_hms(2026, 3, 29, 22, 0, 0).unwrap());
        assert_eq!(w.end - w.start, Duration::hours(23));
        assert_eq!(grid.label(w), "2026-03-29");
        assert_eq!(
            grid.days(w),
            (
                w.start.with_timezone(&berlin).date_naive(),
                w.start.with_timezone(&berlin).date_naive()
            )
        );
        // 2026-10-25: clocks go back, the day has 25 hours.
        let w = grid.containing(Utc.with_ymd_and_hms(2026, 10, 25, 12, 0, 0).unwrap());
        assert_eq!(w.end - w.start, Duration::hours(25));
        // The windows tile time with no hole and no overlap.
        let from = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let until = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let all = grid.complete_windows(from, until);
        assert!(all.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(all.len(), 245, "March 1 to October 31");
        assert!(all.iter().all(|w| grid.label(*w).len() == 10));
    }

    #[test]
    fn hour_windows_tile_short_and_long_local_days() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let grid = WindowGrid::new(WindowSize::HOUR, ny);
        let day = |d: u32| grid.day_start(NaiveDate::from_ymd_opt(2026, 3, d).unwrap());
        let short = grid.complete_windows(day(8), day(9));
        assert_eq!(short.len(), 23);
        let long = WindowGrid::new(WindowSize::HOUR, ny).complete_windows(
            grid.day_start(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
            grid.day_start(NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()),
        );
        assert_eq!(long.len(), 25);
        // On the 23-hour day a 2-hour grid's last window is cut at midnight.
        let two = WindowGrid::new(WindowSize::from_seconds(2 * 3600).unwrap(), ny);
        let ws = two.complete_windows(day(8), day(9));
        assert_eq!(ws.len(), 12);
        assert_eq!(ws[11].end - ws[11].start, Duration::hours(1));
        assert_eq!(ws[11].end, day(9));
    }

    #[test]
    fn utc_grid_matches_epoch_alignment_and_zones_are_named() {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 13, 45, 0).unwrap();
        let grid = WindowGrid::utc(WindowSize::DAY);
        assert_eq!(grid.containing(at), WindowSize::DAY.containing(at));
        assert_eq!(grid.label(grid.containing(at)), "2026-01-05");
        let week = WindowGrid::new(
            WindowSize::from_seconds(7 * 86_400).unwrap(),
            "Asia/Tokyo".parse().unwrap(),
        );
        let w = week.containing(at);
        assert_eq!(w.end - w.start, Duration::days(7));
        assert!(w.start <= at && at < w.end);
        let err = parse_time_zone("Mars/Olympus").unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        assert!(WindowSize::from_seconds(0).is_err());
        assert!(WindowSize::from_seconds(-5).is_err());
        assert!(WindowSize::from_seconds(7_000).is_err());
        assert!(WindowSize::from_seconds(900).is_ok());
        assert!(WindowSize::from_seconds(2 * 86_400).is_ok());
    }
}
