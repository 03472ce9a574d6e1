//! The built-in `facebook_pages` definition run, not only parsed: against an emulator of
//! the Graph API's Page endpoints as documented at
//! - https://developers.facebook.com/docs/pages-api/manage-pages (`GET /me/accounts` with a
//!   User token: the Pages the person can act on, each with its own Page access token and
//!   tasks; `paging.next` until it is absent),
//! - https://developers.facebook.com/docs/graph-api/reference/insights and
//!   https://developers.facebook.com/documentation/pages-api/platforminsights/page
//!   (`GET /{page-id}/insights?metric=…&period=day&since&until` with a **Page** access token
//!   from a person who can perform the ANALYZE task; one record per metric with its values,
//!   each stamped with the `end_time` of its day, the first being `since` + 1 day at 08:00
//!   GMT; at most 90 days a request; no metric → 3001/1504028; an invalid metric → 100),
//! - https://developers.facebook.com/docs/graph-api/guides/error-handling (the envelope;
//!   190 with subcode 458 when the person removed the app),
//! - https://developers.facebook.com/documentation/facebook-login/guides/access-tokens/get-long-lived
//!   (the short-lived user token traded for a long-lived one).
//!
//! The emulator refuses what the API refuses: Page Insights asked with the person's own
//! token, a Page token of another Page, a range over 90 days, `until` not after `since`, an
//! unknown metric or none, a period other than the ones it knows.

#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{Duration, NaiveDate, TimeZone};
use gapless_core::{FailureCause, ReauthReason, Value};
use gapless_providers::{
    SettingValues, SourceConnector, declarative::connector::DeclarativeSource,
};
use gapless_vault::Credential;
use graph::{days, graph_error};
use serde_json::json;

mod graph;

const DEFINITION: &str = include_str!("../definitions/facebook_pages.toml");
const GRAPH_VERSION: &str = "v25.0";
const USER_TOKEN: &str = "EAAB-user-long-lived";
const SHORT_TOKEN: &str = "EAAB-user-short";
/// The Pages the person manages: id, name.
const PAGES: &[(&str, &str)] = &[
    ("1001", "Acme Corp"),
    ("1002", "Acme Outlet"),
    ("1003", "Acme Careers"),
];
/// The metrics the emulator knows (a retired one answers error 100).
const KNOWN_METRICS: &[&str] = &["page_post_engagements", "page_views_total", "page_follows"];

fn page_token(page: &str) -> String {
    format!("EAAB-page-{page}")
}

/// What has happened to the person's access.
#[derive(Debug, Default)]
struct World {
    /// Pages the person no longer has a task on: not listed by /me/accounts.
    removed: BTreeSet<String>,
    /// Pages listed without a token (the person's tasks there do not include one that
    /// gives it).
    tokenless: BTreeSet<String>,
    /// The person removed the app: every token answers 190/458.
    app_removed: bool,
    /// Insights requests served, by Page.
    insights_requests: HashMap<String, u32>,
}

type Shared = Arc<Mutex<World>>;

fn invalid(message: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        &format!("(#100) {message}"),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Graph's answer to a token it does not take, or to any token once the app is removed.
fn refused(world: &World, token: Option<&str>, accepted: &str) -> Option<Response> {
    if world.app_removed {
        return Some(graph_error(
            StatusCode::BAD_REQUEST,
            190,
            Some(458),
            "Error validating access token: The user has not authorized application 1.",
        ));
    }
    (token != Some(accepted)).then(|| {
        graph_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "Invalid OAuth access token.",
        )
    })
}

/// The truth: a metric's value on a day.
fn truth(metric: &str, day: NaiveDate) -> i64 {
    let n = i64::try_from(day.to_string().replace('-', "").parse::<u64>().unwrap() % 1000).unwrap();
    n * 7 + i64::try_from(metric.len()).unwrap()
}

async fn me(State(world): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = refused(&world.lock().unwrap(), bearer(&headers), USER_TOKEN) {
        return refused;
    }
    Json(json!({"id": "10158000", "name": "Ana Example"})).into_response()
}

/// `GET /me/accounts`: two Pages a page, `paging.next` until the last.
async fn accounts(
    State(world): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let world = world.lock().unwrap();
    if let Some(refused) = refused(&world, bearer(&headers), USER_TOKEN) {
        return refused;
    }
    let fields: BTreeSet<&str> = q
        .get("fields")
        .map(|f| f.split(',').collect())
        .unwrap_or_default();
    if let Some(unknown) = fields
        .iter()
        .find(|f| !["id", "name", "access_token", "tasks", "category"].contains(f))
    {
        return invalid(&format!("Tried accessing nonexisting field ({unknown})"));
    }
    let listed: Vec<&(&str, &str)> = PAGES
        .iter()
        .filter(|(id, _)| !world.removed.contains(*id))
        .collect();
    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let items: Vec<serde_json::Value> = listed
        .iter()
        .skip(after)
        .take(2)
        .map(|(id, name)| {
            let mut item = json!({
                "id": id,
                "name": name,
                "category": "Retail Company",
                "tasks": ["ANALYZE", "ADVERTISE", "MODERATE", "CREATE_CONTENT", "MANAGE"],
            });
            if fields.contains("access_token") && !world.tokenless.contains(*id) {
                item["access_token"] = page_token(id).into();
            }
            item
        })
        .collect();
    let mut paging = json!({"cursors": {"before": "0", "after": (after + 2).to_string()}});
    if after + 2 < listed.len() {
        paging["next"] = format!(
            "{}/{GRAPH_VERSION}/me/accounts?fields={}&limit=2&after={}",
            q.get("base").cloned().unwrap_or_default(),
            q.get("fields").cloned().unwrap_or_default(),
            after + 2
        )
        .into();
    }
    Json(json!({"data": items, "paging": paging})).into_response()
}

/// `GET /{page-id}?fields=id,name` with the Page's token.
async fn page(
    State(world): State<Shared>,
    headers: HeaderMap,
    Path(page): Path<String>,
) -> Response {
    let world = world.lock().unwrap();
    let Some((id, name)) = PAGES.iter().find(|(id, _)| *id == page) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            Some(33),
            "Unsupported get request.",
        );
    };
    if let Some(refused) = refused(&world, bearer(&headers), &page_token(id)) {
        return refused;
    }
    Json(json!({"id": id, "name": name})).into_response()
}

/// `GET /{page-id}/insights`: one record per metric, a value per day with the day's
/// `end_time`.
async fn insights(
    State(world): State<Shared>,
    headers: HeaderMap,
    Path(page): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut world = world.lock().unwrap();
    if bearer(&headers) == Some(USER_TOKEN) && !world.app_removed {
        return graph_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "(#190) This method must be called with a Page Access Token",
        );
    }
    if let Some(refused) = refused(&world, bearer(&headers), &page_token(&page)) {
        return refused;
    }
    let metrics: Vec<&str> = q
        .get("metric")
        .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
        .unwrap_or_default();
    if metrics.is_empty() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            3001,
            Some(1_504_028),
            "Invalid query",
        );
    }
    if let Some(unknown) = metrics.iter().find(|m| !KNOWN_METRICS.contains(m)) {
        return invalid(&format!(
            "The value must be a valid insights metric ({unknown})"
        ));
    }
    if !matches!(
        q.get("period").map(String::as_str),
        Some("day" | "week" | "days_28")
    ) {
        return invalid("period must be one of day, week, days_28");
    }
    let day = |name: &str| {
        q.get(name)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(since), Some(until)) = (day("since"), day("until")) else {
        return invalid("since and until must be dates");
    };
    if until <= since {
        return invalid("until must be after since");
    }
    if (until - since).num_days() > 90 {
        return invalid("There cannot be more than 90 days (7776000 s) between since and until");
    }
    *world.insights_requests.entry(page.clone()).or_default() += 1;
    let data: Vec<serde_json::Value> = metrics
        .iter()
        .map(|metric| {
            let values: Vec<serde_json::Value> = since
                .iter_days()
                .take_while(|d| *d < until)
                .map(|d| {
                    let end = d + Duration::days(1);
                    json!({
                        "value": truth(metric, d),
                        "end_time": format!("{end}T08:00:00+0000"),
                    })
                })
                .collect();
            json!({
                "name": metric,
                "period": "day",
                "values": values,
                "title": format!("Daily {metric}"),
                "description": "Daily: …",
                "id": format!("{page}/insights/{metric}/day"),
            })
        })
        .collect();
    // Graph points to the periods before and after: following them would walk on.
    let later = until + Duration::days((until - since).num_days());
    Json(json!({
        "data": data,
        "paging": {
            "previous": format!("https://graph.facebook.com/{GRAPH_VERSION}/{page}/insights?since={since}&until={until}"),
            "next": format!("https://graph.facebook.com/{GRAPH_VERSION}/{page}/insights?since={until}&until={later}"),
        },
    }))
    .into_response()
}

async fn token(Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("client_id") != Some("app-1") || field("client_secret") != Some("app-secret") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            101,
            None,
            "Error validating application.",
        );
    }
    match (
        field("grant_type"),
        field("fb_exchange_token"),
        field("code"),
    ) {
        (Some("fb_exchange_token"), Some(SHORT_TOKEN), _) => {
            Json(json!({"access_token": USER_TOKEN, "token_type": "bearer", "expires_in": 5183944}))
                .into_response()
        }
        (_, None, Some("code-1")) => {
            Json(json!({"access_token": SHORT_TOKEN, "token_type": "bearer", "expires_in": 5400}))
                .into_response()
        }
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            190,
            Some(463),
            "Error validating access token: Session has expired.",
        ),
    }
}

async fn emulator() -> (String, Shared) {
    let world: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let listing_base = base.clone();
    let app = Router::new()
        .route("/me", get(me))
        .route(
            "/me/accounts",
            get(
                move |state: State<Shared>,
                      headers: HeaderMap,
                      Query(mut q): Query<HashMap<String, String>>| {
                    // The absolute next-page URLs name the emulator's own origin.
                    q.insert("base".into(), listing_base.clone());
                    accounts(state, headers, Query(q))
                },
            ),
        )
        .route("/oauth/access_token", post(token))
        .route("/{page}", get(page))
        .route("/{page}/insights", get(insights))
        .with_state(world.clone());
    let app = Router::new().nest(&format!("/{GRAPH_VERSION}"), app);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, world)
}

fn source_with(base: &str, settings: SettingValues) -> DeclarativeSource {
    graph::source(DEFINITION, base, settings)
}

fn source(base: &str) -> DeclarativeSource {
    source_with(base, SettingValues::default())
}

fn metrics(list: &str) -> SettingValues {
    SettingValues::new([("metrics".to_string(), list.to_string())].into())
}

fn user() -> Credential {
    graph::token(USER_TOKEN)
}

fn expected(metrics: &[&str], from: u32, to: u32) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for metric in metrics {
        for day in from..to {
            let date = NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
            rows.push(vec![
                Value::Date(date),
                Value::Text((*metric).into()),
                Value::Integer(truth(metric, date)),
            ]);
        }
    }
    rows
}

#[tokio::test]
async fn facebook_pages_reads_daily_page_insights_with_each_pages_own_token() {
    let (base, world) = emulator().await;
    let source = source(&base);
    let probe = source.probe(&user()).await.unwrap();
    assert_eq!(probe.upstream_account_id, "10158000");
    assert_eq!(
        source.list_resources(&user()).await.unwrap().unwrap(),
        PAGES
            .iter()
            .map(|(id, name)| gapless_providers::Resource::direct(*id, *name))
            .collect::<Vec<_>>(),
        "every Page, over both pages of the listing"
    );
    assert_eq!(source.probe_resource(&user(), "1001").await, Ok(()));

    // Five days: one record per metric, its values flattened into a row a day, each dated
    // the day before its end_time; the paging.next that walks on is not followed.
    let extracted = source
        .extract(&user(), "1001", "page_insights", days(1, 6))
        .await
        .unwrap();
    // One insights request, and the two pages of the listing that gave the Page's token:
    // all three count against the account's budget.
    assert_eq!(extracted.requests, 3);
    assert_eq!(
        extracted.rows,
        expected(&["page_post_engagements", "page_views_total"], 1, 6)
    );
    assert_eq!(
        world.lock().unwrap().insights_requests.get("1001"),
        Some(&1)
    );

    // The metrics are a setting: an installation asks for others.
    let other = source_with(&base, metrics("page_follows"))
        .extract(&user(), "1002", "page_insights", days(3, 5))
        .await
        .unwrap();
    assert_eq!(other.rows, expected(&["page_follows"], 3, 5));
}

#[tokio::test]
async fn a_person_removed_from_a_page_is_permission_lost_for_that_page_while_me_works() {
    let (base, world) = emulator().await;
    let source = source(&base);
    world.lock().unwrap().removed.insert("1002".into());
    assert!(source.probe(&user()).await.is_ok(), "/me still answers");
    assert_eq!(source.probe_resource(&user(), "1001").await, Ok(()));
    let failure = source.probe_resource(&user(), "1002").await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("resource_not_listed")
    );
    assert!(
        failure
            .provider_message
            .as_deref()
            .unwrap_or("")
            .contains("1002"),
        "the Page is named: {failure:?}"
    );
    let failure = source
        .extract(&user(), "1002", "page_insights", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(world.lock().unwrap().insights_requests.get("1002"), None);

    // Listed, but without a token for it.
    world.lock().unwrap().tokenless.insert("1003".into());
    let failure = source.probe_resource(&user(), "1003").await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("resource_token_missing")
    );
    assert!(
        failure
            .provider_message
            .as_deref()
            .unwrap_or("")
            .contains("Acme Careers"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn the_app_removed_by_the_person_needs_a_new_consent() {
    let (base, world) = emulator().await;
    let source = source(&base);
    world.lock().unwrap().app_removed = true;
    let failure = source
        .extract(&user(), "1001", "page_insights", days(1, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.cause,
            FailureCause::ReauthRequired {
                reason: ReauthReason::Revoked
            }
        ),
        "{failure:?}"
    );
    assert_eq!(failure.provider_code.as_deref(), Some("190/458"));
}

#[tokio::test]
async fn a_retired_metric_is_refused_by_meta_and_nothing_is_loaded() {
    let (base, _) = emulator().await;
    let failure = source_with(&base, metrics("page_fans"))
        .extract(&user(), "1001", "page_insights", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(failure.provider_code.as_deref(), Some("100"), "{failure:?}");
    assert!(
        failure
            .provider_message
            .as_deref()
            .unwrap_or("")
            .contains("valid insights metric"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn the_consents_short_lived_token_is_traded_for_a_long_lived_one() {
    let (base, _) = emulator().await;
    let source = source(&base);
    let request = source
        .authorization_request(
            "https://gapless.example/callback",
            &source.descriptor().default_scopes,
        )
        .unwrap();
    assert!(
        request
            .url
            .contains("scope=pages_show_list%2Cpages_read_engagement%2Cread_insights"),
        "{}",
        request.url
    );
    let now = chrono::Utc.with_ymd_and_hms(2026, 3, 10, 6, 0, 0).unwrap();
    let tokens = source
        .exchange_code("code-1", "", "https://gapless.example/callback", now)
        .await
        .unwrap();
    assert_eq!(tokens.access_token.expose_secret(), USER_TOKEN);
}
