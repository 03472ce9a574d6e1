//! How long a provider serves a stream's history, and so when a window becomes lost.
//!
//! Providers say "the last 60 days" but differ in where they count from: some refuse a
//! request as soon as its *start* is older than the limit, others serve a day until the limit
//! has passed since its *end*. A stream declares which ([`CountedFrom`], default the
//! conservative [`CountedFrom::Start`]) and a safety margin, so that gapless never asks for a
//! window the provider already refuses, and the deadlines in messages are the real ones.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::Window;

/// Where a lookback is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountedFrom {
    /// A window is served until `lookback` after its start (the conservative reading).
    #[default]
    Start,
    /// A window is served until `lookback` after its end.
    End,
}

impl CountedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "from_start",
            Self::End => "from_end",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "from_start" | "start" => Some(Self::Start),
            "from_end" | "end" => Some(Self::End),
            _ => None,
        }
    }
}

/// A stream's retention at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    lookback: Duration,
    counted_from: CountedFrom,
    margin: Duration,
}

/// A retention that cannot be: why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRetention {
    #[error("a lookback must be longer than zero")]
    NotPositive,
    #[error("a lookback longer than {max_days} days is not a retention limit (leave it out)")]
    TooLong { max_days: i64 },
    #[error("the safety margin ({margin}) must be shorter than the lookback ({lookback})")]
    MarginTooLong { margin: String, lookback: String },
    #[error("the safety margin must not be negative")]
    NegativeMargin,
}

impl Retention {
    /// The longest lookback accepted (100 years); longer means "unlimited".
    pub const MAX_DAYS: i64 = crate::MAX_DURATION_DAYS;

    /// The margin when a definition does not set one: an hour, or a tenth of a shorter
    /// lookback.
    pub fn default_margin(lookback: Duration) -> Duration {
        Duration::hours(1).min(lookback / 10)
    }

    pub fn new(
        lookback: Duration,
        counted_from: CountedFrom,
        margin: Duration,
    ) -> Result<Self, InvalidRetention> {
        if lookback <= Duration::zero() {
            return Err(InvalidRetention::NotPositive);
        }
        if lookback > Duration::days(Self::MAX_DAYS) {
            return Err(InvalidRetention::TooLong {
                max_days: Self::MAX_DAYS,
            });
        }
        if margin < Duration::zero() {
            return Err(InvalidRetention::NegativeMargin);
        }
        if margin >= lookback {
            return Err(InvalidRetention::MarginTooLong {
                margin: crate::window::duration_text(margin),
                lookback: crate::window::duration_text(lookback),
            });
        }
        Ok(Self {
            lookback,
            counted_from,
            margin,
        })
    }

    /// Counted from the start with the default margin.
    pub fn conservative(lookback: Duration) -> Result<Self, InvalidRetention> {
        Self::new(lookback, CountedFrom::Start, Self::default_margin(lookback))
    }

    pub fn lookback(&self) -> Duration {
        self.lookback
    }

    pub fn counted_from(&self) -> CountedFrom {
        self.counted_from
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// The instant from which `window` is no longer asked for: the provider's limit less the
    /// safety margin. None when that lies beyond the representable calendar (never).
    pub fn deadline(&self, window: Window) -> Option<DateTime<Utc>> {
        let anchor = match self.counted_from {
            CountedFrom::Start => window.start,
            CountedFrom::End => window.end,
        };
        anchor
            .checked_add_signed(self.lookback)?
            .checked_sub_signed(self.margin)
    }

    /// Is `window` past its deadline at `now`?
    pub fn is_past(&self, window: Window, now: DateTime<Utc>) -> bool {
        self.deadline(window).is_some_and(|d| d <= now)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} counted {}",
            crate::window::duration_text(self.lookback),
            match self.counted_from {
                CountedFrom::Start => "from a window's start",
                CountedFrom::End => "from a window's end",
            }
        )?;
        if !self.margin.is_zero() {
            write!(f, ", {} margin", crate::window::duration_text(self.margin))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// `days` counted from a window's end, without margin.
    pub(crate) fn from_end(days: i64) -> Retention {
        Retention::new(Duration::days(days), CountedFrom::End, Duration::zero())
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> Window {
        let start = Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap();
        Window::new(start, start + Duration::days(1))
    }

    #[test]
    fn counted_from_start_is_a_day_earlier_than_from_end_for_day_windows() {
        let from_start =
            Retention::new(Duration::days(3), CountedFrom::Start, Duration::zero()).unwrap();
        let from_end =
            Retention::new(Duration::days(3), CountedFrom::End, Duration::zero()).unwrap();
        assert_eq!(from_start.deadline(day(1)), Some(day(4).start));
        assert_eq!(from_end.deadline(day(1)), Some(day(5).start));
        let with_margin =
            Retention::new(Duration::days(3), CountedFrom::Start, Duration::hours(2)).unwrap();
        assert_eq!(
            with_margin.deadline(day(1)),
            Some(day(4).start - Duration::hours(2))
        );
        assert!(with_margin.is_past(day(1), day(4).start - Duration::hours(2)));
        assert!(!with_margin.is_past(day(1), day(4).start - Duration::hours(3)));
    }

    #[test]
    fn bounds_are_checked_where_a_retention_is_made() {
        assert_eq!(
            Retention::conservative(Duration::zero()),
            Err(InvalidRetention::NotPositive)
        );
        assert!(matches!(
            Retention::conservative(Duration::days(99_999_999)),
            Err(InvalidRetention::TooLong { .. })
        ));
        assert!(matches!(
            Retention::new(Duration::hours(1), CountedFrom::End, Duration::hours(1)),
            Err(InvalidRetention::MarginTooLong { .. })
        ));
        // A short lookback gets a margin it can hold.
        let short = Retention::conservative(Duration::minutes(30)).unwrap();
        assert_eq!(short.margin(), Duration::minutes(3));
    }

    #[test]
    fn a_deadline_beyond_the_calendar_is_never_not_a_panic() {
        let r = Retention::new(
            Duration::days(Retention::MAX_DAYS),
            CountedFrom::End,
            Duration::zero(),
        )
        .unwrap();
        let end_of_time = Window::new(DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC);
        assert_eq!(r.deadline(end_of_time), None);
        assert!(!r.is_past(end_of_time, DateTime::<Utc>::MAX_UTC));
    }
}
