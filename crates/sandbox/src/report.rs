//! The sandbox's report data: deterministic rows per (ad account, day), so any window's true
//! content can be recomputed and compared with what was loaded.
//!
//! Conversions are restated: a day's conversion count grows linearly from 0 at the end of
//! the day to its final value `restatement` later, like attribution on real ad platforms.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One row of the daily insights report, with the provider's field names and string-typed
/// numbers as the Graph API returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub account_id: String,
    pub date_start: String,
    pub date_stop: String,
    pub campaign_id: String,
    pub campaign_name: String,
    pub impressions: String,
    pub clicks: String,
    pub spend: String,
    pub conversions: String,
}

fn hash(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// The campaigns of an ad account (2 to 4, fixed per account).
pub fn campaigns(account: &str) -> Vec<(String, String)> {
    let count = 2 + hash(&[account, "campaigns"]) % 3;
    (1..=count)
        .map(|i| {
            (
                format!("{account}_c{i}"),
                format!("Campaign {i} of {account}"),
            )
        })
        .collect()
}

/// The rows of `account` for `day` as the provider reports them at `as_of`.
pub fn rows_for_day(
    account: &str,
    day: NaiveDate,
    as_of: DateTime<Utc>,
    restatement: Duration,
) -> Vec<ReportRow> {
    let date = day.format("%Y-%m-%d").to_string();
    let day_end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or(as_of);
    let elapsed = (as_of - day_end).num_seconds().max(0);
    let period = restatement.num_seconds();
    campaigns(account)
        .into_iter()
        .map(|(campaign_id, campaign_name)| {
            let h = hash(&[account, &date, &campaign_id]);
            let impressions = 1_000 + h % 9_000;
            let clicks = impressions / (20 + (h >> 16) % 30);
            let spend_cents = clicks * (20 + (h >> 24) % 80);
            let final_conversions = clicks / 10 + (h >> 32) % 3;
            let conversions = if period <= 0 || elapsed >= period {
                final_conversions
            } else {
                let elapsed = u64::try_from(elapsed).unwrap_or(0);
                let period = u64::try_from(period).unwrap_or(1);
                final_conversions * elapsed / period
            };
            ReportRow {
                account_id: account.to_string(),
                date_start: date.clone(),
                date_stop: date.clone(),
                campaign_id,
                campaign_name,
                impressions: impressions.to_string(),
                clicks: clicks.to_string(),
                spend: format!("{}.{:02}", spend_cents / 100, spend_cents % 100),
                conversions: conversions.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_and_conversions_settle() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let end = day
            .succ_opt()
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let early = rows_for_day("act_1", day, end + Duration::hours(1), Duration::days(2));
        let late = rows_for_day("act_1", day, end + Duration::days(3), Duration::days(2));
        let again = rows_for_day("act_1", day, end + Duration::days(30), Duration::days(2));
        assert_eq!(late, again, "settled rows never change");
        assert_eq!(early.len(), late.len());
        assert!((2..=4).contains(&late.len()));
        let sum = |rows: &[ReportRow]| {
            rows.iter()
                .map(|r| r.conversions.parse::<u64>().unwrap())
                .sum::<u64>()
        };
        assert!(sum(&early) < sum(&late), "conversions are restated upwards");
        assert_eq!(early[0].impressions, late[0].impressions);
    }
}
