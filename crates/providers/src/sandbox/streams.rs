//! The daily insights stream for the sandbox's API-key and service-account flavours (the
//! OAuth `sandbox` provider reads it through its definition file): one row per campaign
//! and day, paginated by cursor. The stream's description is the definition's.

use chrono::NaiveDate;
use gapless_core::{Failure, FailureCause, ReportRange, Row, Value};
use gapless_vault::Credential;

use super::SandboxSource;

/// Pages followed for one window before the answer is treated as malformed.
const MAX_PAGES: usize = 10_000;

fn malformed(detail: String) -> Failure {
    Failure::new(FailureCause::Transient)
        .with_code("malformed_response")
        .with_message(detail)
}

fn parse_row(raw: &serde_json::Value) -> Result<Row, Failure> {
    let text = |field: &str| {
        raw.get(field)
            .and_then(|v| v.as_str())
            .ok_or_else(|| malformed(format!("a report row lacks {field}")))
    };
    let integer = |field: &str| {
        let t = text(field)?;
        t.parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| malformed(format!("{field} {t:?} is not an integer")))
    };
    let date = text("date_start")?;
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|_| malformed(format!("date_start {date:?} is not a date")))?;
    let spend = text("spend")?;
    if spend.parse::<f64>().is_err() {
        return Err(malformed(format!("spend {spend:?} is not a number")));
    }
    Ok(vec![
        Value::Date(date),
        Value::Text(text("campaign_id")?.to_string()),
        Value::Text(text("campaign_name")?.to_string()),
        integer("impressions")?,
        integer("clicks")?,
        Value::Text(spend.to_string()),
        integer("conversions")?,
    ])
}

pub(super) async fn extract(
    source: &SandboxSource,
    credential: &Credential,
    resource: &str,
    stream: &str,
    range: ReportRange,
) -> Result<crate::Extracted, Failure> {
    if stream != "insights" {
        return Err(Failure::new(FailureCause::PermissionLost)
            .with_code("unknown_stream")
            .with_message(format!("the sandbox has no stream {stream:?}")));
    }
    if resource.is_empty()
        || !resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Failure::new(FailureCause::PermissionLost)
            .with_code("bad_resource")
            .with_message(format!("{resource:?} is not an ad account id")));
    }
    // The report's days are inclusive, in the account's (the pipeline's) time zone.
    let (since, until) = range.days();
    let mut url = url::Url::parse(&format!("{}/v1/{resource}/insights", source.base_url()))
        .map_err(|e| malformed(format!("report URL: {e}")))?;
    url.query_pairs_mut()
        .append_pair("since", &since.to_string())
        .append_pair("until", &until.to_string())
        .append_pair("limit", "100");
    let mut next = Some(url.to_string());
    let mut rows = Vec::new();
    let mut pages = 0;
    while let Some(page_url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(malformed(format!(
                "more than {MAX_PAGES} pages for one window"
            )));
        }
        let page = source.get_json(credential, &page_url).await?;
        let data = page
            .get("data")
            .and_then(|d| d.as_array())
            .ok_or_else(|| malformed("the report page lacks a data array".into()))?;
        for raw in data {
            rows.push(parse_row(raw)?);
        }
        next = page
            .pointer("/paging/next")
            .and_then(|n| n.as_str())
            .map(str::to_string);
    }
    Ok(crate::Extracted::new(
        rows,
        u32::try_from(pages).unwrap_or(u32::MAX),
    ))
}
