//! The built-in `linkedin_ads` definition run through the engine, from consent to
//! back-filled truth and to the warning before its year ends, against an emulator of
//! LinkedIn's OAuth and Marketing API as documented at
//! - https://learn.microsoft.com/en-us/linkedin/shared/authentication/authorization-code-flow
//!   and …/authentication/programmatic-refresh-tokens (the consent at
//!   `/oauth/v2/authorization`, the token endpoint `/oauth/v2/accessToken` with the client
//!   in the form; 60-day access tokens; a refresh token that lasts 365 days from the
//!   consent, which a refresh does not extend: `refresh_token_expires_in` counts down),
//! - https://learn.microsoft.com/en-us/linkedin/consumer/integrations/self-serve/sign-in-with-linkedin-v2
//!   (`GET /v2/userinfo`: `sub`, `name`),
//! - https://learn.microsoft.com/en-us/linkedin/marketing/integrations/ads-reporting/ads-reporting
//!   (`GET /rest/adAnalytics?q=analytics&pivot=CAMPAIGN&timeGranularity=DAILY` with the
//!   Rest.li `dateRange=(start:(year:…,month:…,day:…),end:(…))` and
//!   `accounts=List(urn%3Ali%3AsponsoredAccount%3A…)`; elements with `dateRange` and
//!   `pivotValues`; no paging),
//! - https://learn.microsoft.com/en-us/linkedin/marketing/integrations/ads/cursor-based-pagination
//!   (from version 202401 the `adAccounts` search pages by `pageSize`, default 100, and
//!   `pageToken`, the next page's token in `metadata.nextPageToken`; no longer by `start`
//!   and `count`),
//! - https://learn.microsoft.com/en-us/linkedin/shared/api-guide/concepts/error-handling
//!   (`{"status", "serviceErrorCode", "code", "message"}`; 401 for a revoked token).
//!
//! The emulator refuses a call without `LinkedIn-Version` or the Rest.li protocol header,
//! a token it did not issue or that the member revoked, a date range that is not the
//! Rest.li record, an account the member does not reach.

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Clock, FailureCause, ReauthReason, Value, VirtualClock};
use serde_json::json;

const CLIENT_ID: &str = "86emulatedclient";
const CLIENT_SECRET: &str = "WPL_AP1.emulated";
const MEMBER: &str = "782bbtaQ";
const ACCOUNT: &str = "507404993";
const REFRESH: &str = "AQWemulatedrefresh";

#[derive(Default)]
struct World {
    codes: HashMap<String, String>,
    tokens: HashMap<String, DateTime<Utc>>,
    issued: u32,
    /// When the member consented: the refresh token ends 365 days later.
    consented_at: Option<DateTime<Utc>>,
    revoked: bool,
    refused: Vec<String>,
    /// Pages of the ad account search asked for.
    account_pages: u32,
}

#[derive(Clone)]
struct Emulator {
    world: Arc<Mutex<World>>,
    clock: VirtualClock,
}

fn li_error(status: StatusCode, service: u32, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"status": status.as_u16(), "serviceErrorCode": service, "code": code, "message": message})),
    )
        .into_response()
}

impl Emulator {
    fn refuse(&self, why: &str, response: Response) -> Response {
        self.world.lock().unwrap().refused.push(why.into());
        response
    }

    /// The bearer token's check, then (`rest`) the versioned API's headers.
    fn refusal(&self, headers: &HeaderMap, rest: bool) -> Option<Response> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let world = self.world.lock().unwrap();
        let token = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        let Some(expiry) = token.and_then(|t| world.tokens.get(t)) else {
            return Some(li_error(
                StatusCode::UNAUTHORIZED,
                65600,
                "INVALID_ACCESS_TOKEN",
                "Invalid access token",
            ));
        };
        if world.revoked {
            return Some(li_error(
                StatusCode::UNAUTHORIZED,
                65601,
                "REVOKED_ACCESS_TOKEN",
                "The token used in the request has been revoked by the user",
            ));
        }
        if *expiry <= self.clock.now() {
            return Some(li_error(
                StatusCode::UNAUTHORIZED,
                65602,
                "EXPIRED_ACCESS_TOKEN",
                "The token used in the request has expired",
            ));
        }
        drop(world);
        if rest
            && (header("linkedin-version").is_none_or(|v| v.len() != 6)
                || header("x-restli-protocol-version") != Some("2.0.0"))
        {
            return Some(self.refuse(
                "headers",
                li_error(
                    StatusCode::BAD_REQUEST,
                    0,
                    "VERSION_MISSING",
                    "A version must be present in the LinkedIn-Version header",
                ),
            ));
        }
        None
    }
}

async fn authorization(
    State(e): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID
        || get("response_type") != "code"
        || !get("scope").split(' ').any(|s| s == "r_ads_reporting")
    {
        return e.refuse(
            "consent",
            (StatusCode::BAD_REQUEST, "invalid request").into_response(),
        );
    }
    let mut world = e.world.lock().unwrap();
    world.issued += 1;
    let code = format!("AQTemulatedcode{}", world.issued);
    world.codes.insert(code.clone(), get("redirect_uri"));
    vendor::redirect_back(
        &get("redirect_uri"),
        &[("code", code.as_str()), ("state", get("state").as_str())],
    )
}

async fn access_token(
    State(e): State<Emulator>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let invalid = |description: &str| {
        vendor::token_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
    };
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return vendor::token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let now = e.clock.now();
    let mut world = e.world.lock().unwrap();
    match get("grant_type").as_str() {
        "authorization_code" => {
            if world.codes.remove(&get("code")) != Some(get("redirect_uri")) {
                return invalid("Unable to retrieve access token: authorization code not found");
            }
            world.consented_at = Some(now);
            world.revoked = false;
        }
        "refresh_token" => {
            let ends = world.consented_at.map(|at| at + Duration::days(365));
            if world.revoked || get("refresh_token") != REFRESH || ends.is_none_or(|e| e <= now) {
                return invalid(
                    "The provided authorization grant or refresh token is invalid, expired or revoked",
                );
            }
        }
        _ => return invalid("grant_type"),
    }
    world.issued += 1;
    let token = format!("AQVemulated{}", world.issued);
    world.tokens.insert(token.clone(), now + Duration::days(60));
    let remaining = world.consented_at.unwrap() + Duration::days(365) - now;
    Json(json!({"access_token": token, "expires_in": 5_184_000,
        "refresh_token": REFRESH, "refresh_token_expires_in": remaining.num_seconds(),
        "scope": "r_ads,r_ads_reporting,openid,profile"}))
    .into_response()
}

async fn userinfo(State(e): State<Emulator>, headers: HeaderMap) -> Response {
    if let Some(r) = e.refusal(&headers, false) {
        return r;
    }
    Json(json!({"sub": MEMBER, "name": "Jane Doe", "email_verified": true})).into_response()
}

/// How many ad accounts the member reaches: three pages of the search.
const ACCOUNTS: u64 = 250;

/// The member's ad accounts, ours among them, as the cursor-paged search gives them.
fn account_ids() -> Vec<u64> {
    let ours: u64 = ACCOUNT.parse().unwrap();
    (0..ACCOUNTS).map(|i| ours - 200 + i).collect()
}

/// `GET /rest/adAccounts?q=search&…&pageSize=…&pageToken=…`.
async fn search_accounts(
    State(e): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = e.refusal(&headers, true) {
        return r;
    }
    if q.get("q").map(String::as_str) != Some("search")
        || q.contains_key("start")
        || q.contains_key("count")
    {
        // Index paging is gone since 202401: a client using it would read one page only.
        return e.refuse(
            "account search parameters",
            li_error(
                StatusCode::BAD_REQUEST,
                100,
                "ILLEGAL_ARGUMENT",
                "Invalid query parameters",
            ),
        );
    }
    let size: usize = q
        .get("pageSize")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let from: usize = match q.get("pageToken") {
        None => 0,
        Some(token) => match token.strip_prefix("cursor-").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                return e.refuse(
                    "page token",
                    li_error(
                        StatusCode::BAD_REQUEST,
                        100,
                        "ILLEGAL_ARGUMENT",
                        "Invalid pageToken",
                    ),
                );
            }
        },
    };
    e.world.lock().unwrap().account_pages += 1;
    let ids = account_ids();
    let page: Vec<_> = ids
        .iter()
        .skip(from)
        .take(size)
        .map(|id| json!({"id": id, "name": format!("Account {id}"), "status": "ACTIVE"}))
        .collect();
    let next = from + page.len();
    let metadata = if next < ids.len() {
        json!({"nextPageToken": format!("cursor-{next}")})
    } else {
        json!({})
    };
    Json(json!({"elements": page, "metadata": metadata})).into_response()
}

async fn ad_account(
    State(e): State<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = e.refusal(&headers, true) {
        return r;
    }
    if id != ACCOUNT {
        return li_error(
            StatusCode::FORBIDDEN,
            100,
            "ACCESS_DENIED",
            "Not enough permissions to access: adAccounts.GET.20261101",
        );
    }
    Json(json!({"id": ACCOUNT.parse::<u64>().unwrap(), "name": "Acme B2B", "status": "ACTIVE"}))
        .into_response()
}

/// `(start:(year:2026,month:1,day:5),end:(year:2026,month:1,day:7))`.
fn rest_li_range(text: &str) -> Option<(NaiveDate, NaiveDate)> {
    let inner = text.strip_prefix("(start:(")?.strip_suffix("))")?;
    let (start, end) = inner.split_once("),end:(")?;
    let day = |record: &str| {
        let mut parts = HashMap::new();
        for pair in record.split(',') {
            let (k, v) = pair.split_once(':')?;
            parts.insert(k, v.parse::<u32>().ok()?);
        }
        NaiveDate::from_ymd_opt(
            i32::try_from(*parts.get("year")?).ok()?,
            *parts.get("month")?,
            *parts.get("day")?,
        )
    };
    Some((day(start)?, day(end)?))
}

fn date_record(day: NaiveDate) -> serde_json::Value {
    json!({"year": day.year(), "month": day.month(), "day": day.day()})
}

/// The truth: two campaigns, numbers that follow from the day.
fn truth(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = i64::from(day.ordinal());
    [101_u64, 102]
        .iter()
        .map(|c| {
            let k = n * 3 + i64::try_from(*c).unwrap();
            json!({"dateRange": {"start": date_record(day), "end": date_record(day)},
                "pivotValues": [format!("urn:li:sponsoredCampaign:{c}")],
                "impressions": 500 + k, "clicks": k % 17,
                "costInLocalCurrency": format!("{}.{:02}", k % 40, k % 100),
                "externalWebsiteConversions": k % 3})
        })
        .collect()
}

async fn ad_analytics(
    State(e): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = e.refusal(&headers, true) {
        return r;
    }
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let range = rest_li_range(get("dateRange"));
    let Some((start, end)) = range.filter(|_| {
        get("q") == "analytics" && get("pivot") == "CAMPAIGN" && get("timeGranularity") == "DAILY"
    }) else {
        return e.refuse(
            "parameters",
            li_error(
                StatusCode::BAD_REQUEST,
                100,
                "ILLEGAL_ARGUMENT",
                "Invalid param",
            ),
        );
    };
    // No activity and no access look alike: an empty answer (as documented).
    if get("accounts") != format!("List(urn:li:sponsoredAccount:{ACCOUNT})") {
        return Json(json!({"elements": [], "paging": {"start": 0, "count": 10, "links": []}}))
            .into_response();
    }
    let elements: Vec<_> = start
        .iter_days()
        .take_while(|d| *d <= end)
        .flat_map(truth)
        .collect();
    Json(json!({"elements": elements, "paging": {"start": 0, "count": 10, "links": []}}))
        .into_response()
}

async fn emulator(clock: VirtualClock) -> (Emulator, String) {
    let e = Emulator {
        world: Arc::default(),
        clock,
    };
    let base = vendor::serve(
        Router::new()
            .route("/oauth/v2/authorization", get(authorization))
            .route("/oauth/v2/accessToken", post(access_token))
            .route("/v2/userinfo", get(userinfo))
            .route("/rest/adAccounts", get(search_accounts))
            .route("/rest/adAccounts/{id}", get(ad_account))
            .route("/rest/adAnalytics", get(ad_analytics))
            .with_state(e.clone()),
    )
    .await;
    (e, base)
}

#[tokio::test]
async fn linkedin_ads_revoked_then_reconsented_backfills_and_warns_before_its_year_ends() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (e, base) = emulator(clock.clone()).await;
    let source = Arc::new(vendor::built_in(
        "linkedin_ads",
        &[
            ("https://www.linkedin.com", &base),
            ("https://api.linkedin.com", &base),
        ],
        (CLIENT_ID, CLIENT_SECRET),
        &[],
    ));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;

    let identity = vendor::connect(
        &engine,
        "linkedin_ads",
        "acme-linkedin",
        "marketing@example.com",
    )
    .await;
    assert_eq!(identity.upstream_account_id.as_deref(), Some(MEMBER));
    assert_eq!(
        identity.refresh_expires_at,
        Some(clock.now() + Duration::days(365))
    );
    // Every ad account the member reaches, over the search's three pages.
    let listed: Vec<u64> = engine
        .resources_of(identity.id)
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|r| r.id.parse().unwrap())
        .collect();
    assert_eq!(listed, account_ids());
    assert_eq!(e.world.lock().unwrap().account_pages, 3);
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (ACCOUNT, &["campaign_analytics"]),
        7,
        start,
    )
    .await;
    let run = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=5 {
        run(d).await.unwrap();
    }
    // The member revokes the app in their LinkedIn settings on day 6.
    e.world.lock().unwrap().revoked = true;
    run(6).await.unwrap();
    run(7).await.unwrap();
    let incidents = engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(
        incidents[0].failure.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked
        },
        "{:?}",
        incidents[0].failure
    );
    assert_eq!(
        incidents[0].failure.provider_code.as_deref(),
        Some("65601/REVOKED_ACCESS_TOKEN")
    );

    // The member consents again on day 9.
    clock.set(day(9) + Duration::hours(10));
    let (pending, callback) = vendor::consent(&engine, "linkedin_ads").await;
    engine
        .reauthorize(identity.id, &pending, &callback)
        .await
        .unwrap();
    engine.tick().await.unwrap();
    vendor::assert_days_equal_truth(
        (&engine, &source),
        &pipeline,
        "campaign_analytics",
        1..=8,
        |date| {
            truth(date)
                .iter()
                .map(|r| {
                    vec![
                        Value::Date(date),
                        Value::Text(r["pivotValues"][0].as_str().unwrap().into()),
                        Value::Integer(r["impressions"].as_i64().unwrap()),
                        Value::Integer(r["clicks"].as_i64().unwrap()),
                        Value::Text(r["costInLocalCurrency"].as_str().unwrap().into()),
                        Value::Integer(r["externalWebsiteConversions"].as_i64().unwrap()),
                    ]
                })
                .collect()
        },
    )
    .await;
    let subjects: Vec<_> = vendor::mails(&engine).into_iter().map(|(s, _)| s).collect();
    assert!(
        subjects.iter().any(|s| s.contains("Authorization Failure")),
        "{subjects:?}"
    );

    // The year from the new consent counts down through refreshes; 29 days before it ends
    // the people are warned, with the reauthorize link.
    let identity = engine.store().identity(identity.id).await.unwrap();
    let ends = day(9) + Duration::hours(10) + Duration::days(365);
    assert_eq!(identity.refresh_expires_at, Some(ends));
    clock.set(ends - Duration::days(29));
    engine.tick().await.unwrap();
    let subjects: Vec<_> = vendor::mails(&engine).into_iter().map(|(s, _)| s).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.contains("Authorization expiring") && s.contains("LinkedIn Ads")),
        "{subjects:?}"
    );
    // The access tokens were renewed on the way (60 days each): the year did not move.
    let identity = engine.store().identity(identity.id).await.unwrap();
    assert!(
        identity.token_obtained_at > Some(day(9) + Duration::days(60)),
        "{:?}",
        identity.token_obtained_at
    );
    assert_eq!(identity.refresh_expires_at, Some(ends));
    let refused = e.world.lock().unwrap().refused.clone();
    assert!(refused.is_empty(), "{refused:?}");
}
