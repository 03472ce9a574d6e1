//! The built-in `tiktok_ads` definition run through the engine, from consent to
//! back-filled truth through TikTok's own revocation error, against an emulator of the
//! TikTok API for Business as documented in tiktok/tiktok-business-api-sdk
//! (`docs/AuthenticationApi.md`, `Oauth2AccessTokenBody.md`, `ReportingApi.md`,
//! `python_sdk/business_api_client/tiktok_business/tiktok_code.py`) and at
//! https://business-api.tiktok.com/portal/docs?id=1740302848100353 :
//! - the advertiser consent at `/portal/auth` with `app_id`, `state` and `redirect_uri`,
//!   back with `auth_code`; `POST /open_api/v1.3/oauth2/access_token/` with the JSON
//!   `{"app_id", "secret", "auth_code"}`; a long-term access token without refresh;
//! - every call with `Access-Token: <token>` (no `Bearer`), every answer an envelope
//!   `{"code", "message", "request_id", "data"}` with HTTP 200, errors included (40105 for
//!   a token that is wrong or revoked, 40001 for an advertiser the user lost, 40002 for a
//!   bad parameter);
//! - `GET /open_api/v1.3/report/integrated/get/` with JSON arrays in the query
//!   (`dimensions`, `metrics`), `page` and `page_size` (at most 1000), rows as
//!   `{"dimensions": {…, "stat_time_day": "YYYY-MM-DD 00:00:00"}, "metrics": {…}}` with
//!   numbers as strings, and `page_info.total_page`.
//!
//! Marked unconfirmed in the reference and taken as written there: the callback's
//! `auth_code` name, the token's `data` keys, the report's response shape, and a 30-day
//! span for daily rows.

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{FailureCause, Value, VirtualClock};
use serde_json::json;

const APP_ID: &str = "7300000000000000001";
const SECRET: &str = "emulated-tiktok-secret";
const USER: &str = "7100000000000000042";
const ADVERTISER: &str = "7000000000000000001";
/// More campaigns than a page of 1000 rows holds: every day takes two pages.
const CAMPAIGNS: u64 = 1200;

#[derive(Default)]
struct World {
    codes: BTreeSet<String>,
    tokens: BTreeSet<String>,
    issued: u32,
    revoked: bool,
    refused: Vec<String>,
    /// The pages asked for: (first day, last day, page number).
    pages: Vec<(NaiveDate, NaiveDate, usize)>,
}

#[derive(Clone)]
struct Emulator {
    world: Arc<Mutex<World>>,
}

fn envelope(code: i64, message: &str, data: serde_json::Value) -> Response {
    Json(json!({"code": code, "message": message, "request_id": "202612031500", "data": data}))
        .into_response()
}

impl Emulator {
    fn refuse(&self, why: &str, code: i64, message: &str) -> Response {
        self.world.lock().unwrap().refused.push(why.into());
        envelope(code, message, json!({}))
    }

    /// The `Access-Token` check of every call.
    fn token_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let world = self.world.lock().unwrap();
        let token = headers.get("access-token").and_then(|v| v.to_str().ok());
        let ok = token.is_some_and(|t| world.tokens.contains(t)) && !world.revoked;
        (!ok).then(|| {
            envelope(
                40105,
                "Access token is incorrect or has been revoked.",
                json!({}),
            )
        })
    }
}

async fn consent(State(e): State<Emulator>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("app_id") != APP_ID || get("redirect_uri").is_empty() {
        return e.refuse("consent", 40002, "app_id and redirect_uri are required");
    }
    let mut world = e.world.lock().unwrap();
    world.issued += 1;
    let code = format!("auth-code-{}", world.issued);
    world.codes.insert(code.clone());
    world.revoked = false;
    vendor::redirect_back(
        &get("redirect_uri"),
        &[
            ("auth_code", code.as_str()),
            ("state", get("state").as_str()),
        ],
    )
}

async fn access_token(State(e): State<Emulator>, body: String) -> Response {
    let Ok(request) = serde_json::from_str::<HashMap<String, serde_json::Value>>(&body) else {
        return e.refuse("token body", 40002, "The request body must be JSON");
    };
    let field = |k: &str| request.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    if field("app_id") != APP_ID || field("secret") != SECRET {
        return e.refuse("token client", 40001, "App id or secret is invalid");
    }
    let mut world = e.world.lock().unwrap();
    if !world.codes.remove(field("auth_code")) {
        return envelope(40110, "Auth code is invalid or expired", json!({}));
    }
    world.issued += 1;
    let token = format!("act.emulated{}", world.issued);
    world.tokens.insert(token.clone());
    envelope(
        0,
        "OK",
        json!({"access_token": token, "advertiser_ids": [ADVERTISER], "scope": [4, 5]}),
    )
}

async fn user_info(State(e): State<Emulator>, headers: HeaderMap) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    envelope(
        0,
        "OK",
        json!({"core_user_id": USER, "display_name": "Acme Marketing", "email": "ads@acme.example"}),
    )
}

/// `GET /open_api/v1.3/oauth2/advertiser/get/?app_id=…&secret=…` with the token: the
/// advertisers the user authorized the app for (`data.list[]` of `advertiser_id`,
/// `advertiser_name`). The app's secret is checked here too.
async fn advertisers(
    State(e): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = e.token_refusal(&headers) {
        return refused;
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("app_id") != APP_ID || get("secret") != SECRET {
        return e.refuse("advertiser listing", 40001, "App id or secret is invalid");
    }
    envelope(
        0,
        "OK",
        json!({"list": [
            {"advertiser_id": ADVERTISER, "advertiser_name": "Acme Ads"},
            {"advertiser_id": "7000000000000000002", "advertiser_name": "Acme Outlet"}]}),
    )
}

async fn advertiser_info(
    State(e): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    let ids: Vec<String> = q
        .get("advertiser_ids")
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    if ids != [ADVERTISER] {
        return envelope(40001, "No permission to operate advertiser", json!({}));
    }
    envelope(
        0,
        "OK",
        json!({"list": [{"advertiser_id": ADVERTISER, "name": "Acme"}]}),
    )
}

/// The truth: `CAMPAIGNS` campaigns a day, numbers (sent as strings) that follow.
fn truth(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = u64::from(day.ordinal());
    (0..CAMPAIGNS)
        .map(|c| {
            let k = n * 100 + c;
            json!({"dimensions": {"campaign_id": format!("{}", 1_800_000_000_000_000_000_u64 + c),
                    "stat_time_day": format!("{day} 00:00:00")},
                "metrics": {"spend": format!("{}.{:02}", k % 90, k % 100),
                    "impressions": format!("{}", 1000 + k), "clicks": format!("{}", k % 31),
                    "conversion": format!("{}", k % 4)}})
        })
        .collect()
}

async fn integrated_report(
    State(e): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let list = |k: &str| serde_json::from_str::<Vec<String>>(get(k)).ok();
    let day = |k: &str| NaiveDate::parse_from_str(get(k), "%Y-%m-%d").ok();
    let known_metrics = ["spend", "impressions", "clicks", "conversion", "cpc", "ctr"];
    let valid = get("report_type") == "BASIC"
        && get("data_level") == "AUCTION_CAMPAIGN"
        && list("dimensions").is_some_and(|d| d == ["campaign_id", "stat_time_day"])
        && list("metrics").is_some_and(|m| m.iter().all(|m| known_metrics.contains(&m.as_str())));
    let (Some(start), Some(end)) = (day("start_date"), day("end_date")) else {
        return e.refuse("dates", 40002, "start_date and end_date are required");
    };
    let page: usize = get("page").parse().unwrap_or(1);
    let page_size: usize = get("page_size").parse().unwrap_or(10);
    if !valid || end < start || (end - start).num_days() >= 30 || page == 0 || page_size > 1000 {
        return e.refuse("parameters", 40002, "Invalid parameters");
    }
    if get("advertiser_id") != ADVERTISER {
        return envelope(40001, "No permission to operate advertiser", json!({}));
    }
    e.world.lock().unwrap().pages.push((start, end, page));
    let rows: Vec<_> = start
        .iter_days()
        .take_while(|d| *d <= end)
        .flat_map(truth)
        .collect();
    let total_page = rows.len().div_ceil(page_size).max(1);
    let this: Vec<_> = rows
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .cloned()
        .collect();
    envelope(
        0,
        "OK",
        json!({"list": this, "page_info": {"page": page, "page_size": page_size,
            "total_number": rows.len(), "total_page": total_page}}),
    )
}

async fn emulator() -> (Emulator, String) {
    let e = Emulator {
        world: Arc::default(),
    };
    let base = vendor::serve(
        Router::new()
            .route("/portal/auth", get(consent))
            .route("/open_api/v1.3/oauth2/access_token/", post(access_token))
            .route("/open_api/v1.3/user/info/", get(user_info))
            .route("/open_api/v1.3/advertiser/info/", get(advertiser_info))
            .route("/open_api/v1.3/oauth2/advertiser/get/", get(advertisers))
            .route(
                "/open_api/v1.3/report/integrated/get/",
                get(integrated_report),
            )
            .with_state(e.clone()),
    )
    .await;
    (e, base)
}

#[tokio::test]
async fn tiktok_ads_revoked_with_a_200_answer_then_reconsented_backfills_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (e, base) = emulator().await;
    let source = Arc::new(vendor::built_in(
        "tiktok_ads",
        &[("https://business-api.tiktok.com", &base)],
        (APP_ID, SECRET),
        &[],
    ));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    let identity = vendor::connect(&engine, "tiktok_ads", "acme-tiktok", "ads@acme.example").await;
    assert_eq!(identity.upstream_account_id.as_deref(), Some(USER));
    // The advertisers the person authorized, as TikTok lists them.
    let listed: Vec<_> = engine
        .resources_of(identity.id)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect();
    assert_eq!(
        listed,
        [
            (ADVERTISER.to_string(), "Acme Ads".to_string()),
            ("7000000000000000002".to_string(), "Acme Outlet".to_string())
        ]
    );
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (ADVERTISER, &["campaign_daily"]),
        3,
        start,
    )
    .await;
    let run = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=5 {
        run(d).await.unwrap();
    }
    // The advertiser removes the app in TikTok Ads Manager on day 6: every call answers
    // HTTP 200 with code 40105.
    e.world.lock().unwrap().revoked = true;
    for d in 6..=8 {
        run(d).await.unwrap();
    }
    let incidents = engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(
        matches!(
            incidents[0].failure.cause,
            FailureCause::ReauthRequired { .. }
        ),
        "{:?}",
        incidents[0].failure
    );
    assert_eq!(incidents[0].failure.provider_code.as_deref(), Some("40105"));

    // Reconsent on day 9: days 6 to 8 are back-filled, each request's rows over the
    // pages TikTok counts (the page after the last, empty, is never asked for).
    clock.set(day(9) + Duration::hours(10));
    let (pending, callback) = vendor::consent(&engine, "tiktok_ads").await;
    engine
        .reauthorize(identity.id, &pending, &callback)
        .await
        .unwrap();
    engine.tick().await.unwrap();
    vendor::assert_days_equal_truth(
        (&engine, &source),
        &pipeline,
        "campaign_daily",
        1..=8,
        |date| {
            let mut rows: Vec<_> = truth(date)
                .iter()
                .map(|r| {
                    let m = &r["metrics"];
                    let int = |k: &str| Value::Integer(m[k].as_str().unwrap().parse().unwrap());
                    vec![
                        Value::Date(date),
                        Value::Text(r["dimensions"]["campaign_id"].as_str().unwrap().into()),
                        Value::Text(m["spend"].as_str().unwrap().into()),
                        int("impressions"),
                        int("clicks"),
                        int("conversion"),
                    ]
                })
                .collect();
            rows.sort_by_key(|r| format!("{:?}", r.get(1)));
            rows
        },
    )
    .await;
    let world = e.world.lock().unwrap();
    assert!(world.refused.is_empty(), "{:?}", world.refused);
    // Every request read exactly the pages its rows fill: none past the last.
    let mut last_page: HashMap<(NaiveDate, NaiveDate), usize> = HashMap::new();
    for (first, last, page) in &world.pages {
        let entry = last_page.entry((*first, *last)).or_default();
        *entry = (*entry).max(*page);
    }
    assert!(last_page.values().any(|p| *p >= 2), "{last_page:?}");
    for ((first, last), pages) in last_page {
        let days = usize::try_from((last - first).num_days() + 1).unwrap();
        let rows = days * usize::try_from(CAMPAIGNS).unwrap();
        assert_eq!(pages, rows.div_ceil(1000), "{first}..{last}");
    }
}
