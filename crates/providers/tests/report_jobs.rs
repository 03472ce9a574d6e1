//! Asynchronous report jobs whose result is a pre-signed URL on another origin, shaped as
//! Amazon Ads reporting v3 documents them:
//! - https://advertising.amazon.com/API/docs/en-us/guides/reporting/v3/get-started
//!   (`POST /reporting/reports` with `Content-Type:
//!   application/vnd.createasyncreportrequest.v3+json`, the `Amazon-Advertising-API-ClientId`
//!   and `Amazon-Advertising-API-Scope` headers; the report object with `reportId` and
//!   `status` PENDING → PROCESSING → COMPLETED, then `url`: a pre-signed S3 URL serving a
//!   gzip-compressed JSON array of rows).
//!
//! The storage emulator refuses what S3 refuses for a pre-signed URL: a request that also
//! carries an `Authorization` header ("Only one auth mechanism allowed"). A truncated gzip
//! is refused whole: nothing of it is loaded.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::TimeZone;
use gapless_core::{FailureCause, ReportRange, Tz, Value, Window};
use gapless_providers::{
    MemoryReportJobs, ProviderSettings, SettingValues, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{AccessToken, ClientSecret, Credential};
use serde_json::json;

const DEFINITION: &str = r#"
[provider]
name = "amazon_ads_reports"
display_name = "Amazon Ads (reporting v3)"
base_url = "http://api.invalid"

[auth]
kind = "oauth2"
authorize_url = "https://www.amazon.com/ap/oa"
token_url = "https://api.amazon.com/auth/o2/token"
scopes = ["advertising::campaign_management"]

[settings.client_id]
description = "The Login with Amazon client id, sent as Amazon-Advertising-API-ClientId"

[probe.request]
url = "/v2/profiles"
[probe]
account_id = "/0/accountInfo/id"

[[streams]]
name = "sp_campaigns"
# The finished report's file, at the URL its status gives.
request = { url = "/unused" }
compression = "gzip"
primary_key = ["date", "campaign_id"]
day_field = "date"
max_range = "31d"
lookback = "95d"
fields = [
  { name = "date", type = "date" },
  { name = "campaign_id", type = "text", pointer = "/campaignId" },
  { name = "impressions", type = "integer" },
  { name = "cost", type = "decimal" },
]

[streams.job]
create = { method = "POST", url = "/reporting/reports", headers = { "Amazon-Advertising-API-ClientId" = "{settings.client_id}", "Amazon-Advertising-API-Scope" = "{resource}", "Content-Type" = "application/vnd.createasyncreportrequest.v3+json" }, body = "{{\"name\":\"gapless\",\"startDate\":\"{window.first_day}\",\"endDate\":\"{window.last_day}\",\"configuration\":{{\"adProduct\":\"SPONSORED_PRODUCTS\",\"groupBy\":[\"campaign\"],\"columns\":[\"impressions\",\"cost\",\"campaignId\",\"date\"],\"reportTypeId\":\"spCampaigns\",\"timeUnit\":\"DAILY\",\"format\":\"GZIP_JSON\"}}}}" }
id = "/reportId"
poll = { url = "/reporting/reports/{job}", headers = { "Amazon-Advertising-API-ClientId" = "{settings.client_id}", "Amazon-Advertising-API-Scope" = "{resource}" } }
status = "/status"
done = ["COMPLETED"]
failed = ["FAILED"]
pending = ["PENDING", "PROCESSING"]
message = "/failureReason"
result_url = "/url"
poll_every = "10ms"
"#;

const TOKEN: &str = "Atza|emulated";
const PROFILE: &str = "3498127765544";
const CLIENT_ID: &str = "amzn1.application-oa2-client.emulated";

#[derive(Default)]
struct World {
    storage: String,
    reports: HashMap<String, (u32, String, String)>,
    truncate: bool,
    expired: bool,
    downloads_with_authorization: u32,
}

type Shared = Arc<Mutex<World>>;

fn error(status: StatusCode, code: &str, details: &str) -> Response {
    (status, Json(json!({"code": code, "details": details}))).into_response()
}

fn refused(headers: &HeaderMap) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Not authorized",
        ));
    }
    if header("amazon-advertising-api-clientid") != Some(CLIENT_ID) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "400",
            "Amazon-Advertising-API-ClientId is required",
        ));
    }
    if header("amazon-advertising-api-scope") != Some(PROFILE) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "403",
            "Amazon-Advertising-API-Scope names no profile of this user",
        ));
    }
    None
}

async fn create(State(world): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/vnd.createasyncreportrequest.v3+json")
    {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "415", "Content-Type");
    }
    let request: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::BAD_REQUEST, "400", "body is not JSON"),
    };
    let config = &request["configuration"];
    if config["groupBy"].as_array().is_none_or(|g| g.is_empty())
        || config["timeUnit"] != "DAILY"
        || config["format"] != "GZIP_JSON"
    {
        return error(StatusCode::BAD_REQUEST, "400", "configuration");
    }
    let (Some(start), Some(end)) = (request["startDate"].as_str(), request["endDate"].as_str())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "400",
            "startDate and endDate are required",
        );
    };
    let mut world = world.lock().unwrap();
    let id = format!("b09d780d-44d8-425c-a3fc-{:012}", world.reports.len() + 1);
    world
        .reports
        .insert(id.clone(), (0, start.to_string(), end.to_string()));
    Json(json!({"reportId": id, "status": "PENDING", "url": null, "failureReason": null}))
        .into_response()
}

async fn status(
    State(world): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    let mut world = world.lock().unwrap();
    let storage = world.storage.clone();
    let Some((polls, _, _)) = world.reports.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "404", "report not found");
    };
    *polls += 1;
    let answer = match *polls {
        1 => json!({"reportId": id, "status": "PROCESSING", "url": null}),
        _ => json!({"reportId": id, "status": "COMPLETED",
            "url": format!("{storage}/offline-report-storage/report-{id}.json.gz?X-Amz-Expires=3599&X-Amz-Signature=emulated"),
            "urlExpiresAt": "2026-03-10T07:00:00Z"}),
    };
    Json(answer).into_response()
}

fn rows(start: &str, end: &str) -> Vec<serde_json::Value> {
    let (start, end) = (
        chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d").unwrap(),
        chrono::NaiveDate::parse_from_str(end, "%Y-%m-%d").unwrap(),
    );
    start
        .iter_days()
        .take_while(|d| *d <= end)
        .map(|d| json!({"campaignId": 158410630682987_u64, "date": d.to_string(), "impressions": 2216, "cost": 14.5}))
        .collect()
}

async fn download(
    State(world): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut world = world.lock().unwrap();
    if headers.contains_key(header::AUTHORIZATION) {
        world.downloads_with_authorization += 1;
        return (
            StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
        )
            .into_response();
    }
    if world.expired {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        )
            .into_response();
    }
    let id = file
        .trim_start_matches("report-")
        .trim_end_matches(".json.gz");
    let Some((_, start, end)) = world.reports.get(id) else {
        return (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response();
    };
    let body = serde_json::to_vec(&rows(start, end)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let mut bytes = gz.finish().unwrap();
    if world.truncate {
        bytes.truncate(bytes.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn emulators() -> (String, Shared) {
    let world: Shared = Arc::default();
    let api = serve(
        Router::new()
            .route("/reporting/reports", post(create))
            .route("/reporting/reports/{id}", get(status))
            .with_state(world.clone()),
    )
    .await;
    // The storage is another origin (another port), as S3 is for the API.
    let storage = serve(
        Router::new()
            .route("/offline-report-storage/{file}", get(download))
            .with_state(world.clone()),
    )
    .await;
    world.lock().unwrap().storage = storage;
    (api, world)
}

fn source(api: &str) -> DeclarativeSource {
    let definition = check(DEFINITION).unwrap_or_else(|p| panic!("{p:#?}"));
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url: api.into(),
            client_id: CLIENT_ID.into(),
            client_secret: ClientSecret::new("secret".into()),
            timeouts: HttpTimeouts::default(),
            settings: SettingValues::new([("client_id".to_string(), CLIENT_ID.to_string())].into()),
        },
    )
    .unwrap()
}

fn credential() -> Credential {
    Credential::OAuth2 {
        access_token: AccessToken::new(TOKEN.into()),
        refresh_token: None,
        access_expires_at: None,
    }
}

fn days(from: u32, to: u32) -> ReportRange {
    let tz = Tz::UTC;
    ReportRange::new(
        Window::new(
            tz.with_ymd_and_hms(2026, 3, from, 0, 0, 0)
                .unwrap()
                .to_utc(),
            tz.with_ymd_and_hms(2026, 3, to, 0, 0, 0).unwrap().to_utc(),
        ),
        tz,
    )
}

#[tokio::test]
async fn a_report_at_a_presigned_url_on_another_origin_is_fetched_without_the_credential() {
    let (api, world) = emulators().await;
    let extracted = source(&api)
        .extract_with_jobs(
            &credential(),
            PROFILE,
            "sp_campaigns",
            days(5, 8),
            &MemoryReportJobs::default(),
        )
        .await
        .unwrap();
    assert_eq!(world.lock().unwrap().downloads_with_authorization, 0);
    assert_eq!(extracted.rows.len(), 3);
    assert_eq!(
        extracted.rows[0],
        vec![
            Value::Date(chrono::NaiveDate::from_ymd_opt(2026, 3, 5).unwrap()),
            Value::Text("158410630682987".into()),
            Value::Integer(2216),
            Value::Text("14.5".into()),
        ]
    );
    // Create, two polls, the download.
    assert_eq!(extracted.requests, 4);
}

/// Run one job with the storage changed by `spoil`: the failure, and whether the job is
/// still kept afterwards.
async fn spoiled(spoil: impl FnOnce(&mut World)) -> (gapless_core::Failure, bool) {
    use gapless_providers::ReportJobs;
    let (api, world) = emulators().await;
    spoil(&mut world.lock().unwrap());
    let jobs = MemoryReportJobs::default();
    let failure = source(&api)
        .extract_with_jobs(&credential(), PROFILE, "sp_campaigns", days(5, 8), &jobs)
        .await
        .unwrap_err();
    let kept = jobs
        .find(PROFILE, "sp_campaigns", days(5, 8).span)
        .await
        .unwrap()
        .is_some();
    (failure, kept)
}

#[tokio::test]
async fn a_truncated_report_file_is_refused_whole_and_its_job_not_kept() {
    let (failure, kept) = spoiled(|w| w.truncate = true).await;
    assert_eq!(failure.cause, FailureCause::BadAnswer, "{failure:?}");
    assert!(!kept);
}

/// An expired pre-signed URL (S3 answers 403 AccessDenied) says nothing about the identity:
/// the result is unusable, not a lost permission, and a new job is asked for next time.
#[tokio::test]
async fn a_storage_refusal_is_an_unusable_result_not_a_lost_permission() {
    let (failure, kept) = spoiled(|w| w.expired = true).await;
    assert_eq!(failure.cause, FailureCause::BadAnswer, "{failure:?}");
    assert!(!kept);
}
