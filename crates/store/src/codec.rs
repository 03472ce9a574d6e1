//! Encoding of values into columns and back, with errors that name the column.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{Row, any::AnyRow};

use crate::StoreError;

/// RFC 3339 with microseconds and `Z`: fixed width, so text order is time order. Instants
/// outside the years 0000–9999 (the engine's "never", `DateTime::MAX_UTC`) are stored as
/// the nearest end of that range: written as they are, a year of six digits takes a sign
/// (`+262142-…`) and would sort before every ordinary date.
pub(crate) fn ts(at: DateTime<Utc>) -> String {
    let earliest = DateTime::<Utc>::from_timestamp(-62_167_219_200, 0);
    let latest = DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_000);
    let at = match (earliest, latest) {
        (Some(earliest), Some(latest)) => at.clamp(earliest, latest),
        _ => at,
    };
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// When something taken at `now` for `ttl` runs out (the latest time there is, rather than
/// an overflow, for a ttl too long to add).
pub(crate) fn expiry(now: DateTime<Utc>, ttl: chrono::Duration) -> DateTime<Utc> {
    now.checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub(crate) fn ts_opt(at: Option<DateTime<Utc>>) -> Option<String> {
    at.map(ts)
}

pub(crate) fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "value to store".into(),
        detail: e.to_string(),
    })
}

fn corrupt(column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: format!("column {column}"),
        detail: detail.to_string(),
    }
}

pub(crate) fn get_str(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    row.try_get::<String, _>(column)
        .map_err(|e| corrupt(column, e))
}

pub(crate) fn get_opt_str(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    row.try_get::<Option<String>, _>(column)
        .map_err(|e| corrupt(column, e))
}

pub(crate) fn get_i64(row: &AnyRow, column: &str) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(column)
        .map_err(|e| corrupt(column, e))
}

pub(crate) fn get_u32(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    let v = get_i64(row, column)?;
    u32::try_from(v).map_err(|_| corrupt(column, format!("{v} is out of range")))
}

pub(crate) fn get_bytes(row: &AnyRow, column: &str) -> Result<Vec<u8>, StoreError> {
    row.try_get::<Vec<u8>, _>(column)
        .map_err(|e| corrupt(column, e))
}

pub(crate) fn parse_ts(column: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(column, format!("{text:?}: {e}")))
}

pub(crate) fn get_ts(row: &AnyRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_ts(column, &get_str(row, column)?)
}

pub(crate) fn get_opt_ts(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    get_opt_str(row, column)?
        .map(|t| parse_ts(column, &t))
        .transpose()
}

pub(crate) fn get_json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let text = get_str(row, column)?;
    serde_json::from_str(&text).map_err(|e| corrupt(column, e))
}

pub(crate) fn get_id<T: std::str::FromStr>(row: &AnyRow, column: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let text = get_str(row, column)?;
    text.parse().map_err(|e| corrupt(column, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_past_the_four_digit_years_keep_their_order_as_text() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ts(DateTime::<Utc>::MAX_UTC), "9999-12-31T23:59:59.999999Z");
        assert_eq!(ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000000Z");
        assert!(ts(DateTime::<Utc>::MAX_UTC) > ts(now));
        assert!(ts(DateTime::<Utc>::MIN_UTC) < ts(now));
        assert_eq!(ts(now), "2026-12-04T05:00:00.000000Z");
    }

    #[test]
    fn a_claim_or_lease_taken_for_longer_than_time_lasts_runs_out_at_the_end_of_time() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(expiry(now, chrono::Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            expiry(now, chrono::Duration::minutes(5)),
            now + chrono::Duration::minutes(5)
        );
    }
}
