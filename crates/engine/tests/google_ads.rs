//! The built-in `google_ads` definition run through the engine, from consent to back-filled
//! truth through Google's own revocation error, against an emulator of Google's OAuth and
//! the Google Ads API as documented at
//! - https://developers.google.com/identity/protocols/oauth2/web-server (the consent with
//!   `access_type=offline` and `prompt=consent`, back with `code` and `state`; the code for
//!   an access token of an hour and a refresh token; a refresh answered without a new
//!   refresh token; a revoked grant answered `invalid_grant`, "Token has been expired or
//!   revoked.");
//! - https://developers.google.com/google-ads/api/rest/reference/rest/v26/customers/listAccessibleCustomers
//!   and .../googleAds/searchStream (GAQL in a JSON body, the answer a JSON array of batches
//!   with `results`, numbers of 64 bits as strings; no developer token required since its
//!   sunset on 2026-09-09);
//! - https://openid.net/specs/openid-connect-core-1_0.html#UserInfo (`sub`, `email`).

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{FailureCause, Value, VirtualClock};
use serde_json::json;

const CLIENT_ID: &str = "1234-emulated.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-emulated";
const SUB: &str = "107691503500061507151";
const CUSTOMER: &str = "3333333333";
const SELECT: &str = "SELECT campaign.id, campaign.name, segments.date, metrics.impressions, metrics.clicks, metrics.cost_micros, metrics.conversions FROM campaign WHERE segments.date BETWEEN '";

#[derive(Default)]
struct World {
    codes: BTreeSet<String>,
    access: BTreeSet<String>,
    refresh: BTreeSet<String>,
    issued: u32,
    refused: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

fn ads_error(code: u16, rpc: &str, category: &str, name: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({"error": {"code": code, "message": "Request failed (emulated)", "status": rpc,
            "details": [{"@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                "errors": [{"errorCode": {category: name}, "message": name}], "requestId": "req-1"}]}})),
    )
        .into_response()
}

fn live(world: &Shared, headers: &HeaderMap) -> bool {
    vendor::bearer(headers).is_some_and(|t| world.lock().unwrap().access.contains(t))
}

async fn consent(State(w): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let mut world = w.lock().unwrap();
    if get("client_id") != CLIENT_ID
        || get("response_type") != "code"
        || get("access_type") != "offline"
        || !get("scope").contains("https://www.googleapis.com/auth/adwords")
    {
        world.refused.push(format!("consent {q:?}"));
        return (StatusCode::BAD_REQUEST, "invalid_request").into_response();
    }
    world.issued += 1;
    let code = format!("4/0A-code-{}", world.issued);
    world.codes.insert(code.clone());
    vendor::redirect_back(
        &get("redirect_uri"),
        &[("code", code.as_str()), ("state", get("state").as_str())],
    )
}

async fn token(State(w): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return vendor::token_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized");
    }
    let mut world = w.lock().unwrap();
    world.issued += 1;
    let access = format!("ya29.emulated-{}", world.issued);
    match field("grant_type").as_str() {
        "authorization_code" if world.codes.remove(&field("code")) => {
            let refresh = format!("1//refresh-{}", world.issued);
            world.refresh.insert(refresh.clone());
            world.access.insert(access.clone());
            Json(json!({"access_token": access, "expires_in": 3599, "refresh_token": refresh,
                "scope": "https://www.googleapis.com/auth/adwords openid email", "token_type": "Bearer"}))
            .into_response()
        }
        "refresh_token" if world.refresh.contains(&field("refresh_token")) => {
            world.access.insert(access.clone());
            Json(json!({"access_token": access, "expires_in": 3599,
                "scope": "https://www.googleapis.com/auth/adwords openid email", "token_type": "Bearer"}))
            .into_response()
        }
        _ => vendor::token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Token has been expired or revoked.",
        ),
    }
}

async fn userinfo(State(w): State<Shared>, headers: HeaderMap) -> Response {
    if !live(&w, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    Json(json!({"sub": SUB, "email": "ana@acme.example", "email_verified": true})).into_response()
}

async fn accessible(State(w): State<Shared>, headers: HeaderMap) -> Response {
    if !live(&w, &headers) {
        return ads_error(
            401,
            "UNAUTHENTICATED",
            "authenticationError",
            "OAUTH_TOKEN_REVOKED",
        );
    }
    Json(json!({"resourceNames": [format!("customers/{CUSTOMER}")]})).into_response()
}

/// The truth: two campaigns a day, numbers that follow from the day.
fn results(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = i64::from(day.ordinal());
    ["501", "502"]
        .iter()
        .map(|c| {
            json!({"campaign": {"resourceName": format!("customers/{CUSTOMER}/campaigns/{c}"), "id": c,
                    "name": format!("Campaign {c}")},
                "segments": {"date": day.to_string()},
                "metrics": {"impressions": (n * 100).to_string(), "clicks": n.to_string(),
                    "costMicros": (n * 1_230_000).to_string(), "conversions": 1.5}})
        })
        .collect()
}

async fn search_stream(
    State(w): State<Shared>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !live(&w, &headers) {
        return ads_error(
            401,
            "UNAUTHENTICATED",
            "authenticationError",
            "OAUTH_TOKEN_REVOKED",
        );
    }
    let query = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["query"].as_str().map(str::to_string))
        .unwrap_or_default();
    if customer != CUSTOMER {
        return ads_error(
            403,
            "PERMISSION_DENIED",
            "authorizationError",
            "USER_PERMISSION_DENIED",
        );
    }
    // The resource probe asks for the customer itself.
    if query == "SELECT customer.id FROM customer LIMIT 1" {
        return Json(json!([{"results": [{"customer": {"id": CUSTOMER}}]}])).into_response();
    }
    let dates = query.strip_prefix(SELECT).and_then(|rest| {
        let (from, rest) = rest.split_once("' AND '")?;
        let to = rest.strip_suffix('\'')?;
        Some((
            NaiveDate::parse_from_str(from, "%Y-%m-%d").ok()?,
            NaiveDate::parse_from_str(to, "%Y-%m-%d").ok()?,
        ))
    });
    let Some((from, to)) = dates.filter(|(from, to)| from <= to) else {
        w.lock().unwrap().refused.push(format!("query {query:?}"));
        return ads_error(400, "INVALID_ARGUMENT", "queryError", "UNEXPECTED_INPUT");
    };
    // Batches of at most three results, then the stream's bookkeeping alone.
    let all: Vec<_> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .flat_map(results)
        .collect();
    let mut batches: Vec<_> = all
        .chunks(3)
        .map(|chunk| json!({"results": chunk, "fieldMask": "campaign.id,campaign.name", "requestId": "req-1"}))
        .collect();
    batches.push(
        json!({"fieldMask": "campaign.id", "requestId": "req-1", "queryResourceConsumption": "12"}),
    );
    Json(batches).into_response()
}

#[tokio::test]
async fn google_ads_revoked_grant_then_reconsented_backfills_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let world: Shared = Arc::default();
    let base = vendor::serve(
        Router::new()
            .route("/o/oauth2/v2/auth", get(consent))
            .route("/token", post(token))
            .route("/v1/userinfo", get(userinfo))
            .route("/v26/customers:listAccessibleCustomers", get(accessible))
            .route(
                "/v26/customers/{customer}/googleAds:searchStream",
                post(search_stream),
            )
            .with_state(world.clone()),
    )
    .await;
    let hosts = [
        "https://googleads.googleapis.com",
        "https://oauth2.googleapis.com",
        "https://accounts.google.com",
        "https://openidconnect.googleapis.com",
    ];
    let replacements: Vec<(&str, &str)> = hosts.iter().map(|h| (*h, base.as_str())).collect();
    let source = Arc::new(vendor::built_in(
        "google_ads",
        &replacements,
        (CLIENT_ID, CLIENT_SECRET),
        &[],
    ));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    let identity = vendor::connect(&engine, "google_ads", "acme-google", "ana@acme.example").await;
    assert_eq!(identity.upstream_account_id.as_deref(), Some(SUB));
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (CUSTOMER, &["campaign_daily"]),
        3,
        start,
    )
    .await;
    let run = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=5 {
        run(d).await.unwrap();
    }
    // The person removes the app's access in their Google account on day 6: the refresh
    // token and every access token stop working.
    {
        let mut w = world.lock().unwrap();
        w.refresh.clear();
        w.access.clear();
    }
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
    assert_eq!(
        incidents[0].failure.provider_code.as_deref(),
        Some("invalid_grant")
    );
    let mails = vendor::mails(&engine);
    let failures: Vec<_> = mails
        .iter()
        .filter(|(s, _)| s.starts_with("Authorization Failure"))
        .collect();
    assert_eq!(failures.len(), 1, "{mails:?}");
    assert!(
        failures[0].1.contains("What to do") && failures[0].1.contains("/reauth/"),
        "{}",
        failures[0].1
    );

    // A new consent on day 9: days 6 to 8 are back-filled.
    clock.set(day(9) + Duration::hours(10));
    let (pending, callback) = vendor::consent(&engine, "google_ads").await;
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
            results(date)
                .iter()
                .map(|r| {
                    let m = &r["metrics"];
                    let int = |k: &str| Value::Integer(m[k].as_str().unwrap().parse().unwrap());
                    vec![
                        Value::Date(date),
                        Value::Text(r["campaign"]["id"].as_str().unwrap().into()),
                        Value::Text(r["campaign"]["name"].as_str().unwrap().into()),
                        int("impressions"),
                        int("clicks"),
                        int("costMicros"),
                        Value::Text("1.5".into()),
                    ]
                })
                .collect()
        },
    )
    .await;
    let w = world.lock().unwrap();
    assert!(w.refused.is_empty(), "{:?}", w.refused);
}
