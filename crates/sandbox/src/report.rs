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

/// At most this many campaigns per account (rows per account and day).
pub const MAX_CAMPAIGNS: u32 = 1_000_000;

/// How many campaigns `account` has: `fixed` when the sandbox is configured with a number,
/// else 2 to 4, fixed per account.
pub fn campaign_count(account: &str, fixed: Option<u32>) -> u64 {
    match fixed {
        Some(n) => u64::from(n.clamp(1, MAX_CAMPAIGNS)),
        None => 2 + hash(&[account, "campaigns"]) % 3,
    }
}

/// The `i`-th campaign of `account` (1-based): its id and name.
fn campaign(account: &str, i: u64) -> (String, String) {
    (
        format!("{account}_c{i}"),
        format!("Campaign {i} of {account}"),
    )
}

/// The rows of `account` for `day` as the provider reports them at `as_of`.
pub fn rows_for_day(
    account: &str,
    day: NaiveDate,
    as_of: DateTime<Utc>,
    restatement: Duration,
    campaigns: Option<u32>,
) -> Vec<ReportRow> {
    rows_for_days(
        account,
        (day, day),
        (0, usize::MAX),
        as_of,
        restatement,
        campaigns,
    )
    .0
}

/// Rows `offset..offset + limit` of the report of `account` for the days `since..=until`
/// (day by day, campaign by campaign) as reported at `as_of`, and how many rows the whole
/// report has. Only the rows of the page are computed.
pub fn rows_for_days(
    account: &str,
    (since, until): (NaiveDate, NaiveDate),
    (offset, limit): (usize, usize),
    as_of: DateTime<Utc>,
    restatement: Duration,
    campaigns: Option<u32>,
) -> (Vec<ReportRow>, usize) {
    let per_day = campaign_count(account, campaigns);
    let days = u64::try_from((until - since).num_days() + 1).unwrap_or(0);
    let total = usize::try_from(days.saturating_mul(per_day)).unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(total);
    let rows = (offset..end)
        .filter_map(|n| {
            let n = n as u64;
            let day = since.checked_add_days(chrono::Days::new(n / per_day))?;
            Some(row(
                account,
                day,
                campaign(account, n % per_day + 1),
                as_of,
                restatement,
            ))
        })
        .collect();
    (rows, total)
}

fn row(
    account: &str,
    day: NaiveDate,
    (campaign_id, campaign_name): (String, String),
    as_of: DateTime<Utc>,
    restatement: Duration,
) -> ReportRow {
    let date = day.to_string();
    let day_end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .unwrap_or(as_of);
    let elapsed = (as_of - day_end).num_seconds().max(0);
    let period = restatement.num_seconds();
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
        date_stop: date,
        campaign_id,
        campaign_name,
        impressions: impressions.to_string(),
        clicks: clicks.to_string(),
        spend: format!("{}.{:02}", spend_cents / 100, spend_cents % 100),
        conversions: conversions.to_string(),
    }
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
        let early = rows_for_day(
            "act_1",
            day,
            end + Duration::hours(1),
            Duration::days(2),
            None,
        );
        let late = rows_for_day(
            "act_1",
            day,
            end + Duration::days(3),
            Duration::days(2),
            None,
        );
        let again = rows_for_day(
            "act_1",
            day,
            end + Duration::days(30),
            Duration::days(2),
            None,
        );
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

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn a_page_of_a_range_is_the_slice_of_all_its_rows() {
        let since = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let until = NaiveDate::from_ymd_opt(2026, 1, 7).unwrap();
        let at = Utc::now();
        let (all, total) = rows_for_days(
            "act_9",
            (since, until),
            (0, usize::MAX),
            at,
            Duration::zero(),
            Some(7),
        );
        assert_eq!((all.len(), total), (21, 21));
        let (page, total) = rows_for_days(
            "act_9",
            (since, until),
            (5, 10),
            at,
            Duration::zero(),
            Some(7),
        );
        assert_eq!(total, 21);
        assert_eq!(page, all[5..15].to_vec());
        assert_eq!(page[2].date_start, "2026-01-06");
        assert_eq!(page[2].campaign_id, "act_9_c1");
        let (past_end, _) = rows_for_days(
            "act_9",
            (since, until),
            (20, 10),
            at,
            Duration::zero(),
            Some(7),
        );
        assert_eq!(past_end, all[20..].to_vec());
    }
}
