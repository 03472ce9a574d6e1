//! The Graph-shaped API: who-am-I probe and the paginated daily insights report.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use chrono::{Duration, NaiveDate};

use crate::{
    Sandbox, json_error, report,
    world::{ApiGate, Caller, GraphError},
};

fn graph_error(error: GraphError) -> Response {
    let mut response = json_error(error.http_status, error.body());
    if let Some(secs) = error.retry_after_secs
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn bearer(headers: &HeaderMap, query: &HashMap<String, String>) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::to_string)
        .or_else(|| query.get("access_token").cloned())
        .unwrap_or_default()
}

/// Run the counted faults and authentication common to every API call.
async fn gate(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Caller, Response> {
    let gate = sandbox.world().api_gate();
    match gate {
        ApiGate::Fail(error) => return Err(graph_error(error)),
        ApiGate::Malformed => {
            return Err((
                axum::http::StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service temporarily rerouted</body></html>",
            )
                .into_response());
        }
        ApiGate::Proceed { delay_ms } if delay_ms > 0 => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        ApiGate::Proceed { .. } => {}
    }
    let now = sandbox.now();
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let caller = sandbox.world().key_caller(key, now);
        return caller.map_err(graph_error);
    }
    let token = bearer(headers, query);
    let caller = sandbox.world().caller(&token, now);
    caller.map_err(graph_error)
}

pub(crate) async fn me(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match gate(&sandbox, &headers, &query).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut world = sandbox.world();
    world.stats.probe_requests += 1;
    let accounts: Vec<_> = world
        .accounts_of(&caller.user)
        .into_iter()
        .map(|(id, name)| serde_json::json!({"id": id, "name": name}))
        .collect();
    drop(world);
    Json(serde_json::json!({
        "id": caller.user_id,
        "name": caller.user_name,
        "scopes": caller.scopes,
        "expires_at": caller.expires_at.timestamp(),
        "ad_accounts": {"data": accounts},
    }))
    .into_response()
}

fn bad_parameter(message: &str) -> Response {
    graph_error(GraphError {
        http_status: 400,
        code: 100,
        subcode: None,
        message: format!("(#100) {message}"),
        retry_after_secs: None,
    })
}

/// The report's `since` and `until` days: both required, in order, at most 93 days apart
/// (else what is wrong, for a #100 answer).
fn report_days(query: &HashMap<String, String>) -> Result<(NaiveDate, NaiveDate), &'static str> {
    let parse_day = |name: &str| {
        query
            .get(name)
            .and_then(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
    };
    let (Some(since), Some(until)) = (parse_day("since"), parse_day("until")) else {
        return Err("since and until are required dates (YYYY-MM-DD)");
    };
    if until < since {
        return Err("until must not be before since");
    }
    if (until - since).num_days() >= 93 {
        return Err("the time range may span at most 93 days");
    }
    Ok((since, until))
}

/// The page asked for: (offset from the `after` cursor, `limit` of 1 to 500); else what
/// is wrong, for a #100 answer.
fn page_asked(
    query: &HashMap<String, String>,
    default_page: usize,
) -> Result<(usize, usize), &'static str> {
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => default_page,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => return Err("limit must be between 1 and 500"),
    };
    let offset = match query.get("after") {
        None => 0,
        Some(cursor) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.strip_prefix("offset:")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .ok_or("the after cursor is invalid")?,
    };
    Ok((offset, limit))
}

/// Graph's `paging` of a page followed by the one at `next`: its cursor and its whole URL
/// (on the host the request named).
fn paging(
    headers: &HeaderMap,
    account: &str,
    (since, until): (NaiveDate, NaiveDate),
    limit: usize,
    next: usize,
) -> Option<Paging> {
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{next}"));
    let mut url = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => url::Url::parse(&format!("http://{host}/v1/{account}/insights")).ok(),
        None => url::Url::parse("http://sandbox.invalid/").ok(),
    }?;
    url.query_pairs_mut()
        .append_pair("since", &since.to_string())
        .append_pair("until", &until.to_string())
        .append_pair("limit", &limit.to_string())
        .append_pair("after", &cursor);
    Some(Paging {
        next: url.to_string(),
        cursors: Cursors { after: cursor },
    })
}

pub(crate) async fn insights(
    State(sandbox): State<Sandbox>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match gate(&sandbox, &headers, &query).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = sandbox.now();
    let (restatement, lookback_days, from_start, default_page, campaigns) = {
        let mut world = sandbox.world();
        world.stats.report_requests += 1;
        if let Err(error) = world.authorize_report(&caller, &account) {
            return graph_error(error);
        }
        (
            Duration::seconds(world.config.restatement_secs),
            world.config.lookback_days,
            world.config.lookback_from_start,
            world.config.default_page_size,
            world.config.campaigns_per_account,
        )
    };
    let (since, until) = match report_days(&query) {
        Ok(days) => days,
        Err(wrong) => return bad_parameter(wrong),
    };
    // Past the report's retention: Graph's code 100 with subcode 3018.
    let beyond = if from_start {
        since.and_time(chrono::NaiveTime::MIN).and_utc() < now - Duration::days(lookback_days)
    } else {
        since < now.date_naive() - Duration::days(lookback_days)
    };
    if beyond {
        sandbox.world().stats.refused_past_retention += 1;
        return graph_error(GraphError {
            http_status: 400,
            code: 100,
            subcode: Some(3018),
            message: format!(
                "(#100) The start date of the time range cannot be beyond {lookback_days} days from the current date"
            ),
            retry_after_secs: None,
        });
    }
    let (offset, limit) = match page_asked(&query, default_page) {
        Ok(page) => page,
        Err(wrong) => return bad_parameter(wrong),
    };
    if offset == 0 {
        let grant = caller
            .grant
            .map_or_else(|| "key".to_string(), |g| g.to_string());
        *sandbox
            .world()
            .stats
            .report_ranges
            .entry(format!("{grant}/{account}/{since}/{until}"))
            .or_default() += 1;
    }
    let (page, total) = report::rows_for_days(
        &account,
        (since, until),
        (offset, limit),
        now,
        restatement,
        campaigns,
    );
    let next = offset.saturating_add(limit);
    let paging = (next < total)
        .then(|| paging(&headers, &account, (since, until), limit, next))
        .flatten();
    Json(Page { data: page, paging }).into_response()
}

/// A page of the report as Graph writes it: its rows, and `paging` unless it is the last.
/// Serialized as it is (a `serde_json::Value` built first would cost a map per row).
#[derive(serde::Serialize)]
struct Page {
    data: Vec<report::ReportRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paging: Option<Paging>,
}

/// Graph's `paging` of a page that has a next one.
#[derive(serde::Serialize)]
struct Paging {
    cursors: Cursors,
    next: String,
}

#[derive(serde::Serialize)]
struct Cursors {
    after: String,
}
