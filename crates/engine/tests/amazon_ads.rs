//! The built-in `amazon_ads` definition run through the engine, from consent to
//! back-filled truth, against emulators of Login with Amazon and the Amazon Ads API as
//! documented at
//! - https://advertising.amazon.com/API/docs/en-us/guides/account-management/authorization/overview
//!   and …/authorization/access-tokens (the consent at `/ap/oa`, the token endpoint
//!   `/auth/o2/token` with `client_id` and `client_secret` in the form, refresh tokens
//!   returned unchanged by a refresh, `invalid_grant` once the person revoked the grant;
//!   every call with `Amazon-Advertising-API-ClientId`, and all but the profile listing
//!   with `Amazon-Advertising-API-Scope`),
//! - https://developer.amazon.com/docs/login-with-amazon/customer-profile.html and
//!   …/obtain-customer-profile.html (`GET /user/profile` with `profile:user_id`: the
//!   `user_id`; `invalid_token` for a token it does not take),
//! - https://advertising.amazon.com/API/docs/en-us/guides/account-management/authorization/profiles
//!   (`GET /v2/profiles`, `profileId` a number),
//! - https://advertising.amazon.com/API/docs/en-us/guides/reporting/v3/get-started,
//!   …/reporting/v3/report-types/campaign and …/reporting/v3/faq (`POST /reporting/reports`
//!   with `application/vnd.createasyncreportrequest.v3+json`; `spCampaigns`, at most 31 days
//!   a report, 95 days back; PENDING → PROCESSING → COMPLETED with a pre-signed `url` to a
//!   gzip-compressed JSON array; a duplicate request while the first is not complete is
//!   refused with HTTP 425).
//!
//! The emulators refuse what Amazon refuses: a call without the client id header or the
//! profile scope, a profile the person does not reach, a report of another type or
//! format, a range longer than 31 days or starting more than 95 days back, a duplicate,
//! a download that carries the credential (S3 takes one auth mechanism), a spent or
//! expired authorization code, a code verifier that does not match its challenge.

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Clock, FailureCause, Value, VirtualClock, WindowState};
use gapless_engine::{Engine, EventLog};
use gapless_providers::{SourceConnector, declarative::connector::DeclarativeSource};
use serde_json::json;
use sha2::Digest;

const CLIENT_ID: &str = "amzn1.application-oa2-client.emulated";
const CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.emulated";
const USER_ID: &str = "amzn1.account.AEMULATEDUSER";
const PROFILE: u64 = 3_498_127_765_544;
const OTHER_PROFILE: u64 = 1_111_222_333_444;

#[derive(Default)]
struct World {
    storage: String,
    /// Codes issued at consent: code → (redirect URI, challenge, issued at).
    codes: HashMap<String, (String, String, DateTime<Utc>)>,
    /// Access tokens → expiry.
    tokens: HashMap<String, DateTime<Utc>>,
    issued: u32,
    /// The person revoked the app's access (Amazon account → Login with Amazon).
    revoked: bool,
    /// Profiles the person reaches.
    profiles: BTreeSet<u64>,
    /// Reports by id.
    reports: HashMap<String, Report>,
    /// Requests refused, by why (none is expected from gapless).
    refused: Vec<String>,
    downloads: u32,
    /// Reports stay PROCESSING.
    stalled: bool,
}

#[derive(Clone)]
struct Report {
    profile: u64,
    start: NaiveDate,
    end: NaiveDate,
    polls: u32,
    body: String,
}

#[derive(Clone)]
struct Emulator {
    world: Arc<Mutex<World>>,
    clock: VirtualClock,
}

fn ads_error(status: StatusCode, code: &str, details: &str) -> Response {
    (status, Json(json!({"code": code, "details": details}))).into_response()
}

fn lwa_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

impl Emulator {
    fn refuse(&self, why: &str, response: Response) -> Response {
        self.world.lock().unwrap().refused.push(why.to_string());
        response
    }

    /// A bearer token the emulator issued and that has not expired.
    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let world = self.world.lock().unwrap();
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| world.tokens.get(t))
            .is_some_and(|expiry| *expiry > self.clock.now())
            && !world.revoked
    }

    /// The Ads API's checks of every call: the token, the client id, and (`scope`) the
    /// profile header naming a profile the person reaches.
    fn ads_refusal(&self, headers: &HeaderMap, scope: bool) -> Option<Response> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !self.token_ok(headers) {
            return Some(ads_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "Not authorized to access this advertiser",
            ));
        }
        if header("amazon-advertising-api-clientid") != Some(CLIENT_ID) {
            return Some(self.refuse(
                "client id header",
                ads_error(
                    StatusCode::BAD_REQUEST,
                    "400",
                    "Amazon-Advertising-API-ClientId is missing or wrong",
                ),
            ));
        }
        if scope {
            let Some(profile) = header("amazon-advertising-api-scope") else {
                return Some(self.refuse(
                    "scope header",
                    ads_error(
                        StatusCode::UNAUTHORIZED,
                        "UNAUTHORIZED",
                        "Scope header is missing",
                    ),
                ));
            };
            let reached = profile
                .parse::<u64>()
                .is_ok_and(|p| self.world.lock().unwrap().profiles.contains(&p));
            if !reached {
                return Some(ads_error(
                    StatusCode::FORBIDDEN,
                    "403",
                    "Not authorized to access scope",
                ));
            }
        }
        None
    }
}

/// `GET /ap/oa`: the person signs in and allows; back to the redirect URI with a code.
async fn consent(State(e): State<Emulator>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID
        || get("response_type") != "code"
        || !get("scope")
            .split(' ')
            .any(|s| s == "advertising::campaign_management")
    {
        return e.refuse(
            "consent",
            (StatusCode::BAD_REQUEST, "invalid consent request").into_response(),
        );
    }
    let mut world = e.world.lock().unwrap();
    world.issued += 1;
    let code = format!("ANemulatedcode{}", world.issued);
    world.codes.insert(
        code.clone(),
        (get("redirect_uri"), get("code_challenge"), e.clock.now()),
    );
    world.revoked = false;
    vendor::redirect_back(
        &get("redirect_uri"),
        &[
            ("code", code.as_str()),
            ("scope", get("scope").as_str()),
            ("state", get("state").as_str()),
        ],
    )
}

/// `POST /auth/o2/token`: a code or the refresh token for an hour's access token.
async fn token(State(e): State<Emulator>, Form(form): Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let now = e.clock.now();
    let mut world = e.world.lock().unwrap();
    match get("grant_type").as_str() {
        "authorization_code" => {
            let Some((redirect, challenge, at)) = world.codes.remove(&get("code")) else {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The request has an invalid grant parameter : code",
                );
            };
            let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(get("code_verifier").as_bytes()));
            if redirect != get("redirect_uri") || now - at > Duration::minutes(5) {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The request has an invalid grant parameter : code",
                );
            }
            if !challenge.is_empty() && verifier != challenge {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The request has an invalid grant parameter : code_verifier",
                );
            }
        }
        "refresh_token" => {
            if world.revoked || get("refresh_token") != "Atzr|emulated-grant" {
                return lwa_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.",
                );
            }
        }
        _ => {
            return lwa_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type",
            );
        }
    }
    world.issued += 1;
    let access = format!("Atza|emulated-{}", world.issued);
    world
        .tokens
        .insert(access.clone(), now + Duration::hours(1));
    Json(
        json!({"access_token": access, "token_type": "bearer", "expires_in": 3600,
        "refresh_token": "Atzr|emulated-grant"}),
    )
    .into_response()
}

/// `GET /user/profile`: the person's user id (`profile:user_id`).
async fn user_profile(State(e): State<Emulator>, headers: HeaderMap) -> Response {
    if !e.token_ok(&headers) {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token provided is expired, revoked, malformed, or invalid for other reasons.",
        );
    }
    Json(json!({"user_id": USER_ID})).into_response()
}

fn profile_json(id: u64) -> serde_json::Value {
    json!({"profileId": id, "countryCode": "US", "currencyCode": "USD",
        "timezone": "America/Los_Angeles",
        "accountInfo": {"marketplaceStringId": "ATVPDKIKX0DER", "id": "ENTITYEMULATED",
            "type": "seller", "name": format!("Seller {id}"), "validPaymentMethod": true}})
}

/// `GET /v2/profiles`: the profiles the person reaches in this region.
async fn profiles(State(e): State<Emulator>, headers: HeaderMap) -> Response {
    if let Some(r) = e.ads_refusal(&headers, false) {
        return r;
    }
    let list: Vec<_> = e
        .world
        .lock()
        .unwrap()
        .profiles
        .iter()
        .map(|p| profile_json(*p))
        .collect();
    Json(list).into_response()
}

/// `GET /v2/profiles/{profileId}`.
async fn profile(State(e): State<Emulator>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    if let Some(r) = e.ads_refusal(&headers, false) {
        return r;
    }
    if !e.world.lock().unwrap().profiles.contains(&id) {
        return ads_error(
            StatusCode::FORBIDDEN,
            "403",
            "Not authorized to access scope",
        );
    }
    Json(profile_json(id)).into_response()
}

/// The campaign report types, as the reporting v3 campaign page lists them: ad product,
/// report type, retention in days, and the columns the definition may ask for (metrics
/// every campaign report has, and Sponsored Products' attributed ones).
const REPORT_TYPES: &[(&str, &str, i64, &[&str])] = &[
    (
        "SPONSORED_PRODUCTS",
        "spCampaigns",
        95,
        &[
            "date",
            "campaignId",
            "campaignName",
            "impressions",
            "clicks",
            "cost",
            "purchases14d",
            "sales14d",
            "campaignBudgetCurrencyCode",
        ],
    ),
    (
        "SPONSORED_BRANDS",
        "sbCampaigns",
        60,
        &[
            "date",
            "campaignId",
            "campaignName",
            "impressions",
            "clicks",
            "cost",
        ],
    ),
    (
        "SPONSORED_DISPLAY",
        "sdCampaigns",
        65,
        &[
            "date",
            "campaignId",
            "campaignName",
            "impressions",
            "clicks",
            "cost",
        ],
    ),
];

/// `POST /reporting/reports`.
async fn create_report(State(e): State<Emulator>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = e.ads_refusal(&headers, true) {
        return r;
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/vnd.createasyncreportrequest.v3+json")
    {
        return e.refuse(
            "content type",
            ads_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "415",
                "Cannot consume content type",
            ),
        );
    }
    let Ok(request) = serde_json::from_str::<serde_json::Value>(&body) else {
        return e.refuse(
            "body",
            ads_error(StatusCode::BAD_REQUEST, "400", "Malformed request body"),
        );
    };
    let c = &request["configuration"];
    let columns: Vec<&str> = c["columns"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let known = REPORT_TYPES
        .iter()
        .find(|(product, id, _, _)| c["adProduct"] == *product && c["reportTypeId"] == *id);
    let Some((_, _, retention, offered)) = known.filter(|_| {
        c["format"] == "GZIP_JSON"
            && c["timeUnit"] == "DAILY"
            && columns.contains(&"date")
            && c["groupBy"] == json!(["campaign"])
    }) else {
        return e.refuse(
            "configuration",
            ads_error(
                StatusCode::BAD_REQUEST,
                "400",
                "Invalid report configuration",
            ),
        );
    };
    if columns.iter().any(|col| !offered.contains(col)) {
        return e.refuse(
            "configuration",
            ads_error(
                StatusCode::BAD_REQUEST,
                "400",
                "Invalid report configuration",
            ),
        );
    }
    let day = |k: &str| {
        request[k]
            .as_str()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(start), Some(end)) = (day("startDate"), day("endDate")) else {
        return e.refuse(
            "dates",
            ads_error(
                StatusCode::BAD_REQUEST,
                "400",
                "startDate and endDate are required",
            ),
        );
    };
    let today = e.clock.now().date_naive();
    if end < start || (end - start).num_days() + 1 > 31 {
        return e.refuse(
            "range over 31 days",
            ads_error(
                StatusCode::BAD_REQUEST,
                "400",
                "The date range must be at most 31 days",
            ),
        );
    }
    if start < today - Duration::days(*retention) || end >= today {
        return e.refuse(
            "outside the retention",
            ads_error(
                StatusCode::BAD_REQUEST,
                "400",
                "startDate is past the report type's retention, or endDate is not before today",
            ),
        );
    }
    let stalled = e.world.lock().unwrap().stalled;
    let profile: u64 = headers["amazon-advertising-api-scope"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut world = e.world.lock().unwrap();
    if let Some((id, _)) = world
        .reports
        .iter()
        .find(|(_, r)| r.profile == profile && r.body == body && (r.polls < 2 || stalled))
    {
        let detail = format!("The Request is a duplicate of : {id}");
        return (
            StatusCode::from_u16(425).unwrap(),
            Json(json!({"code": "425", "detail": detail})),
        )
            .into_response();
    }
    let id = format!("b09d780d-44d8-425c-a3fc-{:012}", world.reports.len() + 1);
    world.reports.insert(
        id.clone(),
        Report {
            profile,
            start,
            end,
            polls: 0,
            body,
        },
    );
    Json(
        json!({"reportId": id, "status": "PENDING", "url": null, "urlExpiresAt": null,
        "fileSize": null, "failureReason": null, "configuration": c}),
    )
    .into_response()
}

/// `GET /reporting/reports/{reportId}`: PROCESSING, then COMPLETED with a pre-signed URL.
async fn report_status(
    State(e): State<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = e.ads_refusal(&headers, true) {
        return r;
    }
    let now = e.clock.now();
    let mut world = e.world.lock().unwrap();
    let storage = world.storage.clone();
    let stalled = world.stalled;
    let Some(report) = world.reports.get_mut(&id) else {
        return ads_error(StatusCode::NOT_FOUND, "404", "Report not found");
    };
    report.polls += 1;
    let answer = if report.polls < 2 || stalled {
        json!({"reportId": id, "status": "PROCESSING", "url": null, "failureReason": null})
    } else {
        json!({"reportId": id, "status": "COMPLETED", "fileSize": 100,
            "url": format!("{storage}/offline-report-storage-us-east-1-prod/report-{id}.json.gz?X-Amz-Expires=3599&X-Amz-Signature=emulated"),
            "urlExpiresAt": (now + Duration::seconds(3599)).to_rfc3339(), "failureReason": null})
    };
    Json(answer).into_response()
}

/// The truth: two campaigns of the profile, numbers that follow from the day.
fn truth(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = i64::from(day.ordinal());
    [
        (158_410_630_682_987_u64, "Brand – exact"),
        (158_410_630_682_988, "Generic"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (id, name))| {
        let k = n * 10 + i as i64;
        json!({"date": day.to_string(), "campaignId": id, "campaignName": name,
                "impressions": 1000 + k, "clicks": 10 + k % 7,
                "cost": format!("{}.{:02}", 5 + k % 13, k % 100).parse::<f64>().unwrap(),
                "purchases14d": k % 5, "sales14d": (k % 5) as f64 * 19.99})
    })
    .collect()
}

/// The storage's pre-signed download: a gzip-compressed JSON array of rows.
async fn download(
    State(e): State<Emulator>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return e.refuse(
            "download with a credential",
            (
                StatusCode::BAD_REQUEST,
                "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
            )
                .into_response(),
        );
    }
    let mut world = e.world.lock().unwrap();
    world.downloads += 1;
    let id = file
        .trim_start_matches("report-")
        .trim_end_matches(".json.gz");
    let Some(report) = world.reports.get(id) else {
        return (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response();
    };
    // Only the columns the report asked for, as Amazon serves them.
    let asked: serde_json::Value = serde_json::from_str(&report.body).unwrap();
    let columns = asked["configuration"]["columns"]
        .as_array()
        .unwrap()
        .clone();
    let rows: Vec<_> = report
        .start
        .iter_days()
        .take_while(|d| *d <= report.end)
        .flat_map(truth)
        .map(|row| {
            columns
                .iter()
                .filter_map(|c| c.as_str())
                .map(|c| (c.to_string(), row[c].clone()))
                .collect::<serde_json::Map<_, _>>()
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&rows).unwrap()).unwrap();
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        gz.finish().unwrap(),
    )
        .into_response()
}

/// Login with Amazon, the Ads API and the report storage, each on its own origin.
async fn emulators(clock: VirtualClock) -> (Emulator, String, String) {
    let e = Emulator {
        world: Arc::default(),
        clock,
    };
    e.world.lock().unwrap().profiles = [PROFILE, OTHER_PROFILE].into();
    let lwa = vendor::serve(
        Router::new()
            .route("/ap/oa", get(consent))
            .route("/auth/o2/token", post(token))
            .route("/user/profile", get(user_profile))
            .with_state(e.clone()),
    )
    .await;
    let api = vendor::serve(
        Router::new()
            .route("/v2/profiles", get(profiles))
            .route("/v2/profiles/{id}", get(profile))
            .route("/reporting/reports", post(create_report))
            .route("/reporting/reports/{id}", get(report_status))
            .with_state(e.clone()),
    )
    .await;
    let storage = vendor::serve(
        Router::new()
            .route(
                "/offline-report-storage-us-east-1-prod/{file}",
                get(download),
            )
            .with_state(e.clone()),
    )
    .await;
    e.world.lock().unwrap().storage = storage;
    (e, lwa, api)
}

/// The built-in definition, pointed at the emulators (and polling every 10 ms for 300 ms
/// instead of every 5 s for 2 min: the pauses between polls are real time).
fn source(lwa: &str, api: &str) -> DeclarativeSource {
    vendor::built_in(
        "amazon_ads",
        &[
            ("https://www.amazon.com", lwa),
            ("https://api.amazon.com", lwa),
            ("https://advertising-api.amazon.com", api),
            ("poll_every = \"5s\"", "poll_every = \"10ms\""),
            ("poll_for = \"2m\"", "poll_for = \"300ms\""),
        ],
        (CLIENT_ID, CLIENT_SECRET),
        &[],
    )
}

struct Scenario {
    dir: tempfile::TempDir,
    clock: VirtualClock,
    emulator: Emulator,
    engine: Engine,
    source: Arc<DeclarativeSource>,
    start: DateTime<Utc>,
}

impl Scenario {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = VirtualClock::new(start + Duration::hours(9));
        let (emulator, lwa, api) = emulators(clock.clone()).await;
        let source = Arc::new(source(&lwa, &api));
        let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
        Self {
            dir,
            clock,
            emulator,
            engine,
            source,
            start,
        }
    }

    fn day(&self, day: i64) -> DateTime<Utc> {
        self.start + Duration::days(day - 1)
    }

    async fn consent(&self) -> (gapless_engine::PendingAuthorization, url::Url) {
        vendor::consent(&self.engine, "amazon_ads").await
    }

    fn mails(&self) -> Vec<(String, String)> {
        vendor::mails(&self.engine)
    }

    /// The daily tick of day `day`: an hour after its window closed.
    async fn daily_run(&self, day: i64) -> EventLog {
        self.clock.set(self.day(day + 1) + Duration::hours(1));
        self.engine.tick().await.unwrap()
    }
}

#[tokio::test]
async fn amazon_ads_outage_longer_than_the_lookback_loses_exactly_the_windows_past_it() {
    let s = Scenario::start().await;
    let (pending, callback) = s.consent().await;
    let (identity, _) = s
        .engine
        .connect_identity(
            &pending,
            &callback,
            "acme-amazon",
            vec!["ads-team@example.com".into()],
            &s.engine.caller(),
        )
        .await
        .unwrap();
    assert_eq!(identity.upstream_account_id.as_deref(), Some(USER_ID));
    let pipeline = vendor::daily_pipeline(
        &s.engine,
        identity.id,
        (&PROFILE.to_string(), &STREAMS.map(|(stream, ..)| stream)),
        14,
        s.start,
    )
    .await;

    for day in 1..=9 {
        s.daily_run(day).await;
    }
    // `gapless simulate` beforehand: an outage from now (day 10, 01:00) to day 120, 10:00
    // loses what each report type's retention no longer reaches then; reauthorizing by the
    // shortest one's deadline loses nothing.
    let forecast = s
        .engine
        .simulate_outage(
            identity.id,
            s.clock.now(),
            s.day(120) + Duration::hours(10) - s.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(forecast.len(), 3);
    for ((_, stream, f), (name, last_lost, deadline)) in forecast.iter().zip(STREAMS) {
        assert_eq!(stream, name);
        assert_eq!(
            f.lost.len(),
            usize::try_from(last_lost - 9).unwrap(),
            "{stream}"
        );
        assert_eq!(f.lost[0].start, s.day(10), "{stream}");
        assert_eq!(f.lost.last().unwrap().start, s.day(last_lost), "{stream}");
        assert_eq!(f.recovered.len(), usize::try_from(119 - last_lost).unwrap());
        assert_eq!(f.reauthorize_by.unwrap().to_rfc3339(), deadline, "{stream}");
    }

    // The person removes the app from their Amazon account on day 10.
    s.emulator.world.lock().unwrap().revoked = true;
    s.daily_run(10).await;
    let incidents = s.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(matches!(
        incidents[0].failure.cause,
        FailureCause::ReauthRequired { .. }
    ));
    // The first mail names the first deadline: 2026-01-10 of Sponsored Brands is served
    // until 60 days after it began, less the margin.
    let failure = s
        .mails()
        .into_iter()
        .find(|(subject, _)| subject.contains("Authorization Failure"));
    let (_, text) = failure.expect("a failure mail");
    assert!(text.contains("2026-03-10"), "{text}");
    assert!(text.contains(&pipeline.name), "{text}");

    // 110 days later (the tick goes on every day; nothing is asked of Amazon meanwhile
    // beyond the probes' backoff), the person reauthorizes.
    for day in (11..=119).step_by(9) {
        s.daily_run(day).await;
    }
    s.clock.set(s.day(120) + Duration::hours(10));
    let (pending, callback) = s.consent().await;
    s.engine
        .reauthorize(identity.id, &pending, &callback)
        .await
        .unwrap();
    s.engine.tick().await.unwrap();

    let refused = s.emulator.world.lock().unwrap().refused.clone();
    assert!(refused.is_empty(), "{refused:?}");
    let ledger = s.engine.store().ledger(pipeline.id).await.unwrap();
    let destination = s.engine.destination_for(&pipeline).await.unwrap().unwrap();
    let gaps = s.engine.gaps(&pipeline).await.unwrap();
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    for (stream, last_lost, _) in STREAMS {
        let schema = s.source.descriptor().stream(stream).unwrap().schema.clone();
        let mut lost = Vec::new();
        for day in 1..=119 {
            let window = gapless_core::Window::new(s.day(day), s.day(day + 1));
            let entry = ledger
                .iter()
                .find(|e| e.window == window && e.stream == stream)
                .unwrap_or_else(|| panic!("{stream} day {day} is not in the ledger"));
            match &entry.state {
                WindowState::Loaded { .. } => {
                    let mut stored = destination
                        .read_window(pipeline.id, &schema, window)
                        .await
                        .unwrap();
                    stored.sort_by_key(|r| format!("{:?}", r[1]));
                    let date = s.day(day).date_naive();
                    let expected: Vec<_> = truth(date)
                        .iter()
                        .map(|r| expected_row(date, r)[..schema.columns.len()].to_vec())
                        .collect();
                    assert_eq!(stored, expected, "{stream} day {day}");
                }
                WindowState::Lost { .. } => lost.push(day),
                other => panic!("{stream} day {day}: {other:?}"),
            }
        }
        // Reauthorized on day 120 at 10:00: a day is served while less than the
        // retention (less the hour's margin) has passed since it began.
        assert_eq!(lost, (10..=last_lost).collect::<Vec<_>>(), "{stream}");
        let gap = gaps.iter().find(|g| g.stream == stream).unwrap();
        assert_eq!(gap.state, "lost");
        assert_eq!((gap.from, gap.to), (s.day(10), s.day(last_lost + 1)));
        assert_eq!(i64::from(gap.windows), last_lost - 9);
    }
    let _ = &s.dir;
}

/// The streams of the scenario: the last day an outage from day 10 to day 120 loses
/// (95, 60 and 65 days of retention), and the deadline to lose none.
const STREAMS: [(&str, i64, &str); 3] = [
    ("sp_campaigns", 25, "2026-04-14T23:00:00+00:00"),
    ("sb_campaigns", 60, "2026-03-10T23:00:00+00:00"),
    ("sd_campaigns", 55, "2026-03-15T23:00:00+00:00"),
];

/// A row of the truth in the columns of `sp_campaigns` (the other streams take the first
/// six).
fn expected_row(date: NaiveDate, r: &serde_json::Value) -> Vec<Value> {
    vec![
        Value::Date(date),
        Value::Text(r["campaignId"].to_string()),
        Value::Text(r["campaignName"].as_str().unwrap().into()),
        Value::Integer(r["impressions"].as_i64().unwrap()),
        Value::Integer(r["clicks"].as_i64().unwrap()),
        Value::Text(r["cost"].to_string()),
        Value::Integer(r["purchases14d"].as_i64().unwrap()),
        Value::Text(r["sales14d"].to_string()),
    ]
}

/// A credential the emulated Login with Amazon issued, outside the engine.
async fn credential(e: &Emulator, lwa: &str) -> gapless_vault::Credential {
    let code = "ANdirectcode";
    e.world.lock().unwrap().codes.insert(
        code.into(),
        (
            "http://127.0.0.1/callback".into(),
            String::new(),
            e.clock.now(),
        ),
    );
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{lwa}/auth/o2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "http://127.0.0.1/callback"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    gapless_vault::Credential::OAuth2 {
        access_token: gapless_vault::AccessToken::new(
            answer["access_token"].as_str().unwrap().into(),
        ),
        refresh_token: None,
        access_expires_at: None,
    }
}

fn days(from: u32, to: u32) -> gapless_core::ReportRange {
    gapless_core::ReportRange::new(
        gapless_core::Window::new(
            Utc.with_ymd_and_hms(2026, 1, from, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, to, 0, 0, 0).unwrap(),
        ),
        gapless_core::Tz::UTC,
    )
}

#[tokio::test]
async fn amazon_ads_probes_the_person_lists_profiles_and_finds_a_profile_taken_away() {
    let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 1, 20, 9, 0, 0).unwrap());
    let (e, lwa, api) = emulators(clock).await;
    let source = source(&lwa, &api);
    let credential = credential(&e, &lwa).await;
    let report = source.probe(&credential).await.unwrap();
    assert_eq!(report.upstream_account_id, USER_ID);
    let listed = source.list_resources(&credential).await.unwrap().unwrap();
    assert_eq!(
        listed,
        vec![
            gapless_providers::Resource::direct(
                OTHER_PROFILE.to_string(),
                format!("Seller {OTHER_PROFILE}")
            ),
            gapless_providers::Resource::direct(PROFILE.to_string(), format!("Seller {PROFILE}")),
        ]
    );
    assert!(source.probes_resources());
    source
        .probe_resource(&credential, &PROFILE.to_string())
        .await
        .unwrap();
    // The person's access to the advertiser is removed: Amazon answers 403 for it.
    e.world.lock().unwrap().profiles.remove(&PROFILE);
    let failure = source
        .probe_resource(&credential, &PROFILE.to_string())
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("403"));
    // The login itself still works.
    source.probe(&credential).await.unwrap();
    // An access token past its hour is renewed, not a reason to reconnect.
    e.clock.advance(Duration::hours(2));
    let failure = source.probe(&credential).await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::Refreshable, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("invalid_token"));
}

/// A report's id lost between its creation and the state store (a crash, a job given up
/// after max_wait): Amazon refuses the same request while the first report is prepared
/// (425). The windows wait; no second report is made and the identity is not failed.
#[tokio::test]
async fn amazon_ads_duplicate_report_request_waits_for_the_report_being_prepared() {
    let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 1, 20, 9, 0, 0).unwrap());
    let (e, lwa, api) = emulators(clock).await;
    let source = source(&lwa, &api);
    let credential = credential(&e, &lwa).await;
    e.world.lock().unwrap().stalled = true;
    async fn days_5_to_7(
        source: &DeclarativeSource,
        credential: &gapless_vault::Credential,
        jobs: &gapless_providers::MemoryReportJobs,
    ) -> Result<gapless_providers::Extracted, gapless_core::Failure> {
        let profile = PROFILE.to_string();
        source
            .extract_with_jobs(credential, &profile, "sp_campaigns", days(5, 8), jobs)
            .await
    }
    let extract = |jobs| days_5_to_7(&source, &credential, jobs);
    let first = gapless_providers::MemoryReportJobs::default();
    let failure = extract(&first).await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::ReportPending, "{failure:?}");
    let forgotten = gapless_providers::MemoryReportJobs::default();
    let failure = extract(&forgotten).await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::ReportPending, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("425"));
    assert_eq!(e.world.lock().unwrap().reports.len(), 1);
    // Once the report is ready, the run that kept its id reads it.
    e.world.lock().unwrap().stalled = false;
    let extracted = extract(&first).await.unwrap();
    assert_eq!(extracted.rows.len(), 6);
    assert_eq!(e.world.lock().unwrap().reports.len(), 1);
}

/// An identity connected in Europe while the installation's region is North America: the
/// person consents at Europe's Login with Amazon, and the identity keeps its region — its
/// token refreshes, profile listing and reports go to Europe's hosts, and its
/// reauthorization is Europe's consent again. North America's hosts see nothing of it.
#[tokio::test]
async fn amazon_ads_identity_in_europe_consents_refreshes_and_reads_in_europe() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (na, na_lwa, na_api) = emulators(clock.clone()).await;
    let (eu, eu_lwa, eu_api) = emulators(clock.clone()).await;
    eu.world.lock().unwrap().profiles = [OTHER_PROFILE].into();
    // Login with Amazon's profile (the probe) is one host for every region, and takes a
    // token of any region: here it is served by the emulator that issued the token.
    let profile = format!("{eu_lwa}/user/profile");
    let source = Arc::new(vendor::built_in(
        "amazon_ads",
        &[
            ("https://api.amazon.com/user/profile", &profile),
            ("https://www.amazon.com", &na_lwa),
            ("https://api.amazon.com", &na_lwa),
            ("https://advertising-api.amazon.com", &na_api),
            ("https://eu.account.amazon.com", &eu_lwa),
            ("https://api.amazon.co.uk", &eu_lwa),
            ("https://advertising-api-eu.amazon.com", &eu_api),
            ("poll_every = \"5s\"", "poll_every = \"10ms\""),
            ("poll_for = \"2m\"", "poll_for = \"300ms\""),
        ],
        (CLIENT_ID, CLIENT_SECRET),
        &[],
    ));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    let europe = gapless_core::IdentitySettings {
        region: Some("eu".into()),
        values: Default::default(),
    };
    let pending = engine
        .begin_authorization_to("amazon_ads", &europe, &engine.config().redirect_uri())
        .unwrap();
    assert!(
        pending.url.starts_with(&format!("{eu_lwa}/ap/oa?")),
        "{}",
        pending.url
    );
    let (pending, callback) = vendor::follow(pending).await;
    let (identity, _) = engine
        .connect_identity(&pending, &callback, "acme-eu", vec![], &engine.caller())
        .await
        .unwrap();
    assert_eq!(identity.settings, europe);
    // Europe's profiles, listed by Europe's API.
    let listed: Vec<String> = engine
        .resources_of(identity.id)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [OTHER_PROFILE.to_string()]);
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (&OTHER_PROFILE.to_string(), &["sp_campaigns"]),
        0,
        start,
    )
    .await;
    // Three days, a day apart: the hour-long token is refreshed at Europe's endpoint.
    for d in 1..=3 {
        vendor::daily_tick(&engine, &clock, start, d).await.unwrap();
    }
    let ledger = engine.store().ledger(pipeline.id).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|e| matches!(e.state, WindowState::Loaded { .. }))
            .count(),
        3,
        "{ledger:?}"
    );
    // A reauthorization goes to Europe's consent page.
    let stored = engine.store().identity(identity.id).await.unwrap();
    let again = engine.begin_reauthorization(&stored).unwrap();
    assert!(
        again.url.starts_with(&format!("{eu_lwa}/ap/oa?")),
        "{}",
        again.url
    );
    {
        let eu = eu.world.lock().unwrap();
        assert!(eu.refused.is_empty(), "{:?}", eu.refused);
        assert!(
            eu.issued >= 3,
            "consent and refreshes in Europe: {}",
            eu.issued
        );
        assert!(!eu.reports.is_empty());
    }
    let na = na.world.lock().unwrap();
    assert_eq!(
        (na.issued, na.reports.len(), na.refused.len()),
        (0, 0, 0),
        "North America saw nothing"
    );
}
