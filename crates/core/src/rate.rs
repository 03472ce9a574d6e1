//! Request budgets: how many requests an upstream account may receive per interval.

use std::{fmt, num::NonZeroU32, str::FromStr};

use chrono::Duration;

/// At most `requests` per `per`, in bursts of up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub per: Duration,
}

/// A rate limit that is not `<requests>/<interval>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit {text:?} is not <requests>/<interval> such as \"200/1h\" or \"10/1s\": {detail}"
)]
pub struct InvalidRateLimit {
    pub text: String,
    pub detail: String,
}

impl RateLimit {
    /// The time one request's share of the budget takes to come back.
    pub fn replenish_interval(&self) -> Duration {
        self.per / i32::try_from(self.requests.get()).unwrap_or(i32::MAX)
    }
}

impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |detail: &str| InvalidRateLimit {
            text: text.to_string(),
            detail: detail.to_string(),
        };
        let (requests, per) = text
            .split_once('/')
            .ok_or_else(|| invalid("there is no '/'"))?;
        let requests: u32 = requests
            .trim()
            .parse()
            .map_err(|_| invalid("the number of requests is not a whole number"))?;
        let requests =
            NonZeroU32::new(requests).ok_or_else(|| invalid("the number of requests is zero"))?;
        let per = humantime::parse_duration(per.trim())
            .map_err(|e| invalid(&format!("the interval: {e}")))?;
        let per = Duration::from_std(per).map_err(|_| invalid("the interval is too long"))?;
        if per < Duration::milliseconds(1) {
            return Err(invalid("the interval is shorter than a millisecond"));
        }
        if per > Duration::days(crate::MAX_DURATION_DAYS) {
            return Err(invalid(&format!(
                "the interval is longer than {} days",
                crate::MAX_DURATION_DAYS
            )));
        }
        Ok(Self { requests, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.per.to_std().unwrap_or_default();
        write!(f, "{}/{}", self.requests, humantime::format_duration(per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_name_what_is_wrong() {
        let limit: RateLimit = "200/1h".parse().unwrap();
        assert_eq!(limit.requests.get(), 200);
        assert_eq!(limit.per, Duration::hours(1));
        assert_eq!(limit.replenish_interval(), Duration::seconds(18));
        assert_eq!(limit.to_string(), "200/1h");
        for bad in ["200", "0/1h", "x/1h", "5/forever", "5/0s", "1/1000000y"] {
            let err = bad.parse::<RateLimit>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
