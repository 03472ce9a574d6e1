//! The built-in `meta_ads` definition run, not only parsed: against an emulator of
//! the Marketing API's Ads Insights endpoint and the Graph API's error envelope, as
//! documented at
//! - https://developers.facebook.com/docs/marketing-api/insights (request: `level`,
//!   `time_increment`, `time_range={"since","until"}`, `fields`, `limit`; metrics sent as
//!   strings; `paging.next` until it is absent),
//! - https://developers.facebook.com/docs/graph-api/guides/error-handling (the envelope and
//!   codes 190 with subcodes, 10 and 200–299, 4/17/32/613, 1 and 2),
//! - https://developers.facebook.com/docs/marketing-api/overview/rate-limiting (80004).
//!
//! The emulator refuses what the API refuses: an account id without `act_`, a `time_range`
//! that is not the documented JSON object of days, an unknown field, a level it does not
//! know (error 100, "Invalid parameter").

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{NaiveDate, TimeZone};
use gapless_core::{FailureCause, ReauthReason, ReportRange, Tz, Value, Window};
use gapless_providers::{
    ProviderSettings, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{AccessToken, ClientSecret, Credential};
use serde_json::json;

const EXAMPLE: &str = include_str!("../definitions/meta_ads.toml");
const TOKEN: &str = "EAAB-long-lived";
const KNOWN_FIELDS: &[&str] = &[
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "date_start",
    "date_stop",
    "account_id",
];
/// The emulator serves at most this many rows a page, whatever `limit` asks.
const PAGE: usize = 4;

/// What the next insights request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    /// 190/458: the person removed the app.
    AppRemoved,
    /// 200: a permission on the ad account is gone.
    PermissionGone,
    /// 80004: too many calls to this ad account.
    AdAccountThrottled,
    /// 2: a temporary issue.
    Intermittent,
    /// The person was unassigned from the ad account: its node answers 100/33 ("does
    /// not exist, cannot be loaded due to missing permissions") while `/me` works.
    Unassigned,
}

type Shared = Arc<Mutex<Mode>>;

fn graph_error(status: StatusCode, code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AxYz123",
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = subcode.into();
    }
    (status, Json(json!({ "error": error }))).into_response()
}

fn invalid(message: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        &format!("(#100) Invalid parameter: {message}"),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
}

/// The truth: two campaigns, numbers that follow from the day.
/// Graph's answer to a request without the token: error 190.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    (!authorized(headers)).then(|| {
        graph_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "Invalid OAuth access token.",
        )
    })
}

fn rows_for(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = day.to_string().replace('-', "").parse::<u64>().unwrap() % 1000;
    ["6001", "6002"]
        .iter()
        .map(|campaign| {
            json!({
                "campaign_id": campaign,
                "campaign_name": format!("Campaign {campaign}"),
                "impressions": (n * 10).to_string(),
                "clicks": n.to_string(),
                "spend": format!("{n}.25"),
                "date_start": day.to_string(),
                "date_stop": day.to_string(),
            })
        })
        .collect()
}

async fn insights(
    State(mode): State<Shared>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let current = *mode.lock().unwrap();
    match current {
        Mode::Serve => {}
        Mode::AppRemoved => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                190,
                Some(458),
                "Error validating access token: The user has not authorized application.",
            );
        }
        Mode::PermissionGone => {
            return graph_error(
                StatusCode::FORBIDDEN,
                200,
                None,
                "(#200) Requires ads_read permission to manage the object",
            );
        }
        Mode::AdAccountThrottled => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                80004,
                None,
                "There have been too many calls to this ad-account. Wait a bit and try again.",
            );
        }
        Mode::Intermittent => {
            return graph_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                2,
                None,
                "An unexpected error has occurred. Please retry your request later.",
            );
        }
        Mode::Unassigned => return unsupported_get(&account),
    }
    let Some(id) = account.strip_prefix("act_") else {
        return invalid("the ad account id needs its act_ prefix");
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("ad account id");
    }
    if !matches!(
        q.get("level").map(String::as_str),
        Some("account" | "campaign" | "adset" | "ad")
    ) {
        return invalid("level");
    }
    if q.get("time_increment").map(String::as_str) != Some("1") {
        return invalid("time_increment must be 1 for daily rows here");
    }
    for field in q.get("fields").map(String::as_str).unwrap_or("").split(',') {
        if !KNOWN_FIELDS.contains(&field) {
            return invalid(&format!("unknown field {field}"));
        }
    }
    let Some(range) = q
        .get("time_range")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    else {
        return invalid("time_range must be a JSON object {\"since\":…,\"until\":…}");
    };
    let day = |key: &str| {
        range[key]
            .as_str()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(since), Some(until)) = (day("since"), day("until")) else {
        return invalid("time_range since and until are days (YYYY-MM-DD)");
    };
    if since > until {
        return invalid("time_range since is after until");
    }
    let mut all = Vec::new();
    let mut d = since;
    while d <= until {
        all.extend(rows_for(d));
        d = d.succ_opt().unwrap();
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .min(PAGE);
    let offset: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<_> = all.iter().skip(offset).take(limit).cloned().collect();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": (offset + page.len()).to_string()}});
    if offset + page.len() < all.len() {
        let host = headers[header::HOST].to_str().unwrap();
        let mut next =
            url::Url::parse(&format!("http://{host}/{GRAPH_VERSION}/{account}/insights")).unwrap();
        for (k, v) in &q {
            if k != "after" {
                next.query_pairs_mut().append_pair(k, v);
            }
        }
        next.query_pairs_mut()
            .append_pair("after", &(offset + page.len()).to_string());
        paging["next"] = next.to_string().into();
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

/// The ad accounts the person reaches, as documented for `GET /me/adaccounts` (an
/// `AdAccount` node's `id` is `act_<account_id>`), two a page with `paging.next`.
const AD_ACCOUNTS: &[(&str, &str)] = &[
    ("act_1234", "Acme EU"),
    ("act_5678", "Acme US"),
    ("act_9012", "Acme Brand"),
];

async fn ad_accounts(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Some(fields) = q.get("fields") else {
        // Without fields, Graph returns ids only; the definition asks for names.
        return invalid("fields is required by this emulator");
    };
    if fields
        .split(',')
        .any(|f| !["id", "name", "account_id"].contains(&f))
    {
        return invalid("(#100) Tried accessing nonexisting field");
    }
    let offset: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<_> = AD_ACCOUNTS
        .iter()
        .skip(offset)
        .take(2)
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": (offset + page.len()).to_string()}});
    if offset + page.len() < AD_ACCOUNTS.len() {
        let host = headers[header::HOST].to_str().unwrap();
        paging["next"] = format!(
            "http://{host}/{GRAPH_VERSION}/me/adaccounts?fields={fields}&limit=2&after={}",
            offset + page.len()
        )
        .into();
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

/// Graph's answer for a node the caller cannot load: code 100, subcode 33.
fn unsupported_get(id: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        Some(33),
        &format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
    )
}

/// `GET /act_<id>?fields=…`: the ad account node.
async fn ad_account(
    State(mode): State<Shared>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Some((_, name)) = AD_ACCOUNTS.iter().find(|(id, _)| *id == account) else {
        return unsupported_get(&account);
    };
    if *mode.lock().unwrap() == Mode::Unassigned {
        return unsupported_get(&account);
    }
    let fields = q.get("fields").map(String::as_str).unwrap_or("id");
    if fields
        .split(',')
        .any(|f| !["id", "name", "account_id"].contains(&f))
    {
        return invalid("(#100) Tried accessing nonexisting field");
    }
    Json(json!({"id": account, "name": name})).into_response()
}

async fn emulator() -> (String, Shared) {
    let mode: Shared = Arc::new(Mutex::new(Mode::Serve));
    let app = Router::new()
        .route(
            "/me",
            get(
                |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                    if let Some(refused) = unauthorized(&headers) {
                        return refused;
                    }
                    assert_eq!(q.get("fields").map(String::as_str), Some("id,name"));
                    Json(json!({"id": "10158000", "name": "Ana Example"})).into_response()
                },
            ),
        )
        .route("/me/adaccounts", get(ad_accounts))
        .route("/{account}", get(ad_account))
        .route("/{account}/insights", get(insights))
        .with_state(mode.clone());
    // Graph API paths begin with the version the caller pins (`/v25.0/…`).
    let app = Router::new().nest(&format!("/{GRAPH_VERSION}"), app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), mode)
}

fn source(base: &str) -> DeclarativeSource {
    let definition = check(EXAMPLE).unwrap_or_else(|p| panic!("{p:#?}"));
    // The version the definition pins must be the one the emulator serves.
    let base_url = definition
        .provider
        .base_url
        .get_ref()
        .replace("https://graph.facebook.com", base);
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url,
            client_id: "app-1".into(),
            client_secret: ClientSecret::new("app-secret".into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        },
    )
    .unwrap()
}

/// The Graph API version the emulator serves: the latest of the documentation read.
const GRAPH_VERSION: &str = "v25.0";

fn credential() -> Credential {
    Credential::OAuth2 {
        access_token: AccessToken::new(TOKEN.into()),
        refresh_token: None,
        access_expires_at: None,
    }
}

fn days(from: u32, to: u32) -> ReportRange {
    let tz: Tz = "America/Los_Angeles".parse().unwrap();
    let start = tz
        .with_ymd_and_hms(2026, 3, from, 0, 0, 0)
        .unwrap()
        .to_utc();
    let end = tz.with_ymd_and_hms(2026, 3, to, 0, 0, 0).unwrap().to_utc();
    ReportRange::new(Window::new(start, end), tz)
}

#[tokio::test]
async fn the_meta_ads_example_reads_daily_campaign_insights_page_by_page() {
    let (base, _) = emulator().await;
    let source = source(&base);
    let probe = source.probe(&credential()).await.unwrap();
    assert_eq!(probe.upstream_account_id, "10158000");
    assert_eq!(probe.upstream_account_name, "Ana Example");
    assert_eq!(
        source.list_resources(&credential()).await.unwrap().unwrap(),
        AD_ACCOUNTS
            .iter()
            .map(|(id, name)| (id.to_string(), name.to_string()))
            .collect::<Vec<_>>(),
        "every ad account, over both pages"
    );
    assert_eq!(
        source.probe_resource(&credential(), "act_1234").await,
        Ok(true)
    );

    // Three days, two campaigns: six rows over two pages of four.
    let extracted = source
        .extract(&credential(), "act_1234", "campaign_insights", days(1, 4))
        .await
        .unwrap();
    assert_eq!(extracted.requests, 2);
    let mut expected = Vec::new();
    for day in 1..=3 {
        let date = NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        for truth in rows_for(date) {
            expected.push(vec![
                Value::Date(date),
                Value::Text(truth["campaign_id"].as_str().unwrap().into()),
                Value::Text(truth["campaign_name"].as_str().unwrap().into()),
                Value::Integer(truth["impressions"].as_str().unwrap().parse().unwrap()),
                Value::Integer(truth["clicks"].as_str().unwrap().parse().unwrap()),
                Value::Text(truth["spend"].as_str().unwrap().into()),
            ]);
        }
    }
    assert_eq!(extracted.rows, expected);

    // What the API refuses, the emulator refuses: an account without act_.
    let failure = source
        .extract(&credential(), "1234", "campaign_insights", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(failure.provider_code.as_deref(), Some("100"), "{failure:?}");
}

#[tokio::test]
async fn the_meta_ads_example_classifies_graph_errors_by_code_with_the_built_in_table() {
    let (base, mode) = emulator().await;
    let source = source(&base);
    for (set, cause, code) in [
        (
            Mode::AppRemoved,
            FailureCause::ReauthRequired {
                reason: ReauthReason::Revoked,
            },
            "190/458",
        ),
        (Mode::PermissionGone, FailureCause::PermissionLost, "200"),
        (
            Mode::AdAccountThrottled,
            FailureCause::RateLimited {
                retry_after_secs: None,
            },
            "80004",
        ),
        (Mode::Intermittent, FailureCause::Transient, "2"),
    ] {
        *mode.lock().unwrap() = set;
        let failure = source
            .extract(&credential(), "act_1234", "campaign_insights", days(1, 2))
            .await
            .unwrap_err();
        assert_eq!(failure.cause, cause, "{set:?}: {failure:?}");
        assert_eq!(failure.provider_code.as_deref(), Some(code), "{set:?}");
    }
}

/// Unassigned from an ad account while `/me` still answers: the resource probe says so,
/// as Meta's 100/33, a lost permission.
#[tokio::test]
async fn the_meta_ads_resource_probe_finds_an_unassigned_ad_account_while_me_works() {
    let (base, mode) = emulator().await;
    let source = source(&base);
    *mode.lock().unwrap() = Mode::Unassigned;
    assert_eq!(
        source
            .probe(&credential())
            .await
            .unwrap()
            .upstream_account_id,
        "10158000",
        "who-am-I still works"
    );
    let failure = source
        .probe_resource(&credential(), "act_1234")
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("100/33"));
    assert!(
        failure
            .provider_message
            .as_deref()
            .is_some_and(|m| m.contains("act_1234")),
        "{failure:?}"
    );
}
