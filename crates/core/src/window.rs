//! Windows: the time slices that are synced, recorded in the ledger and back-filled.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The length of a pipeline's windows. Windows are aligned to the Unix epoch in UTC, so a
/// day window runs from midnight to midnight UTC.
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

    /// The instant after which this window's data can no longer be fetched from a provider
    /// that serves `lookback` of history. Providers count whole periods back from the
    /// current one ("the last 60 days"), so a window stays servable until `lookback` after
    /// its end.
    pub fn deadline(self, lookback: Duration) -> DateTime<Utc> {
        self.end + lookback
    }
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
    fn invalid_sizes_are_rejected() {
        assert!(WindowSize::from_seconds(0).is_err());
        assert!(WindowSize::from_seconds(-5).is_err());
        assert!(WindowSize::from_seconds(7_000).is_err());
        assert!(WindowSize::from_seconds(900).is_ok());
        assert!(WindowSize::from_seconds(2 * 86_400).is_ok());
    }
}
