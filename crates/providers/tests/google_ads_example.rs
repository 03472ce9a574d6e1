//! The built-in `google_ads` definition run against an emulator of the Google Ads API as
//! documented at
//! - https://developers.google.com/google-ads/api/reference/rpc/v26/CustomerService/ListAccessibleCustomers
//!   (`{"resourceNames": ["customers/…"]}`),
//! - https://developers.google.com/google-ads/api/reference/rpc/v26/SearchGoogleAdsStreamResponse
//!   (`POST customers/{id}/googleAds:searchStream` with `{"query": GAQL}` answers a JSON array
//!   of batches: `results`, `fieldMask`, `requestId`; int64 metrics as strings),
//! - https://developers.google.com/google-ads/api/docs/concepts/call-structure (a client
//!   account reached through a manager needs `login-customer-id`, else
//!   `USER_PERMISSION_DENIED`; the developer-token header is no longer required),
//! - https://developers.google.com/google-ads/api/docs/best-practices/quotas
//!   (`RESOURCE_EXHAUSTED` with `quotaErrorDetails.retryDelay`),
//! - https://developers.google.com/identity/openid-connect/openid-connect#obtainuserinfo
//!   (userinfo: `sub`, `email`).
//!
//! The emulator refuses what the API refuses: a body that is not JSON or has no query, a
//! query without its date range, a client account without its manager's id.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{NaiveDate, TimeZone};
use gapless_core::{FailureCause, ReauthReason, ReportRange, Tz, Value, Window};
use gapless_providers::{
    ProviderSettings, Resource, SettingValues, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{AccessToken, ClientSecret, Credential, RefreshToken};
use serde_json::json;

const EXAMPLE: &str = include_str!("../definitions/google_ads.toml");
const TOKEN: &str = "ya29.emulated";
/// A manager account, a client under it, and an account the person reaches directly.
const MANAGER: &str = "1111111111";
const CLIENT: &str = "2222222222";
const DIRECT: &str = "3333333333";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Revoked,
    Exhausted,
}

type Shared = Arc<Mutex<Mode>>;

fn status(
    code: u16,
    rpc: &str,
    category: &str,
    name: &str,
    details: serde_json::Value,
) -> Response {
    let mut error = json!({"errorCode": {category: name}, "message": format!("{name} (emulated)")});
    if !details.is_null() {
        error["details"] = details;
    }
    (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({"error": {
            "code": code,
            "message": "Request failed (emulated)",
            "status": rpc,
            "details": [{
                "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                "errors": [error],
                "requestId": "req-1",
            }],
        }})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
}

/// The truth: two campaigns a day, numbers that follow from the day.
fn results_for(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = day.to_string().replace('-', "").parse::<i64>().unwrap() % 1000;
    ["501", "502"]
        .iter()
        .map(|campaign| {
            json!({
                "campaign": {"resourceName": format!("customers/{DIRECT}/campaigns/{campaign}"), "id": campaign, "name": format!("Campaign {campaign}")},
                "segments": {"date": day.to_string()},
                "metrics": {"impressions": (n * 100).to_string(), "clicks": n.to_string(), "costMicros": (n * 1_230_000).to_string(), "conversions": 1.5},
            })
        })
        .collect()
}

fn between(query: &str) -> Option<(NaiveDate, NaiveDate)> {
    let rest = query.split_once("segments.date BETWEEN '")?.1;
    let (from, rest) = rest.split_once("' AND '")?;
    let to = rest.split_once('\'')?.0;
    Some((
        NaiveDate::parse_from_str(from, "%Y-%m-%d").ok()?,
        NaiveDate::parse_from_str(to, "%Y-%m-%d").ok()?,
    ))
}

async fn search_stream(
    State(mode): State<Shared>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !bearer(&headers) {
        return status(
            401,
            "UNAUTHENTICATED",
            "authenticationError",
            "OAUTH_TOKEN_INVALID",
            json!(null),
        );
    }
    match *mode.lock().unwrap() {
        Mode::Serve => {}
        Mode::Revoked => {
            return status(
                401,
                "UNAUTHENTICATED",
                "authenticationError",
                "OAUTH_TOKEN_REVOKED",
                json!(null),
            );
        }
        Mode::Exhausted => {
            return status(
                429,
                "RESOURCE_EXHAUSTED",
                "quotaError",
                "RESOURCE_EXHAUSTED",
                json!({"quotaErrorDetails": {"rateScope": "ACCOUNT", "rateName": "Requests per account", "retryDelay": "45s"}}),
            );
        }
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/json")
    {
        return status(
            400,
            "INVALID_ARGUMENT",
            "requestError",
            "INVALID_INPUT",
            json!(null),
        );
    }
    let login = headers
        .get("login-customer-id")
        .and_then(|v| v.to_str().ok());
    let reachable = match customer.as_str() {
        DIRECT => true,
        // The manager itself, directly or naming itself as the login customer.
        MANAGER => login.is_none_or(|l| l == MANAGER),
        CLIENT => login == Some(MANAGER),
        _ => false,
    };
    if !reachable {
        return status(
            403,
            "PERMISSION_DENIED",
            "authorizationError",
            "USER_PERMISSION_DENIED",
            json!(null),
        );
    }
    let Some(query) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["query"].as_str().map(str::to_string))
    else {
        return status(
            400,
            "INVALID_ARGUMENT",
            "requestError",
            "INVALID_INPUT",
            json!(null),
        );
    };
    // The accounts under a manager (`customer_client`, documented at
    // https://developers.google.com/google-ads/api/docs/account-management/get-account-hierarchy):
    // level 0 is the customer asked, its clients below; a customer that is not a manager
    // has only itself.
    if let Some(filter) = query.strip_prefix(
        "SELECT customer_client.id, customer_client.descriptive_name FROM customer_client",
    ) {
        if filter != " WHERE customer_client.level >= 1" {
            return status(
                400,
                "INVALID_ARGUMENT",
                "queryError",
                "UNEXPECTED_INPUT",
                json!(null),
            );
        }
        let clients: Vec<serde_json::Value> = if customer == MANAGER {
            [(CLIENT, "Client Co"), ("4444444444", "Other Client")]
                .iter()
                .map(|(id, name)| json!({"customerClient": {"resourceName": format!("customers/{customer}/customerClients/{id}"), "id": id, "descriptiveName": name}}))
                .collect()
        } else {
            vec![]
        };
        let mut batches = vec![];
        if !clients.is_empty() {
            batches.push(json!({"results": clients, "fieldMask": "customerClient.id,customerClient.descriptiveName", "requestId": "req-4"}));
        }
        batches.push(json!({"fieldMask": "customerClient.id", "requestId": "req-4"}));
        return Json(batches).into_response();
    }
    // A query without segments.date needs no date range: the customer itself.
    if !query.contains("segments.date") {
        if query != "SELECT customer.id FROM customer LIMIT 1" {
            return status(
                400,
                "INVALID_ARGUMENT",
                "queryError",
                "UNRECOGNIZED_FIELD",
                json!(null),
            );
        }
        return Json(json!([{"results": [{"customer": {"resourceName": format!("customers/{customer}"), "id": customer}}], "fieldMask": "customer.id", "requestId": "req-3"}]))
            .into_response();
    }
    let Some((from, to)) = between(&query) else {
        return status(
            400,
            "INVALID_ARGUMENT",
            "queryError",
            "EXPECTED_FILTERS_ON_DATE_RANGE",
            json!(null),
        );
    };
    let mut results = Vec::new();
    let mut day = from;
    while day <= to {
        results.extend(results_for(day));
        day = day.succ_opt().unwrap();
    }
    let mut batches: Vec<serde_json::Value> = results
        .chunks(3)
        .map(|chunk| json!({"results": chunk, "fieldMask": "campaign.id,campaign.name,segments.date,metrics.impressions,metrics.clicks,metrics.costMicros,metrics.conversions", "requestId": "req-2"}))
        .collect();
    // The last batch carries no results, only the stream's bookkeeping.
    batches.push(
        json!({"fieldMask": "campaign.id", "requestId": "req-2", "queryResourceConsumption": "12"}),
    );
    Json(batches).into_response()
}

async fn emulator() -> (String, Shared) {
    let mode: Shared = Arc::new(Mutex::new(Mode::Serve));
    let app = Router::new()
        .route(
            "/v1/userinfo",
            get(|headers: HeaderMap| async move {
                if !bearer(&headers) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token"}))).into_response();
                }
                Json(json!({"sub": "107691503500061507151", "email": "ana@example.com", "email_verified": true}))
                    .into_response()
            }),
        )
        .route(
            "/v26/customers:listAccessibleCustomers",
            get(|headers: HeaderMap| async move {
                if !bearer(&headers) {
                    return status(401, "UNAUTHENTICATED", "authenticationError", "OAUTH_TOKEN_INVALID", json!(null));
                }
                Json(json!({"resourceNames": [format!("customers/{MANAGER}"), format!("customers/{DIRECT}")]}))
                    .into_response()
            }),
        )
        .route("/v26/customers/{customer}/googleAds:searchStream", post(search_stream))
        .with_state(mode.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), mode)
}

/// The example as an installation runs it, with Google's hosts pointed at the emulator.
fn source(base: &str, manager: Option<&str>) -> DeclarativeSource {
    let text = EXAMPLE.replace("https://openidconnect.googleapis.com", base);
    let definition = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let mut settings = std::collections::BTreeMap::new();
    if let Some(manager) = manager {
        settings.insert("login_customer_id".to_string(), manager.to_string());
    }
    DeclarativeSource::new(
        definition.clone(),
        ProviderSettings {
            // The version the definition pins: the emulator serves only the documented one.
            base_url: definition
                .provider
                .base_url
                .get_ref()
                .replace("https://googleads.googleapis.com", base),
            client_id: "client.apps.googleusercontent.com".into(),
            client_secret: ClientSecret::new("secret".into()),
            timeouts: HttpTimeouts::default(),
            settings: SettingValues::new(settings),
        },
    )
    .unwrap()
}

fn credential() -> Credential {
    Credential::OAuth2 {
        access_token: AccessToken::new(TOKEN.into()),
        refresh_token: Some(RefreshToken::new("1//refresh".into())),
        access_expires_at: None,
    }
}

fn days(from: u32, to: u32) -> ReportRange {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let start = tz
        .with_ymd_and_hms(2026, 5, from, 0, 0, 0)
        .unwrap()
        .to_utc();
    let end = tz.with_ymd_and_hms(2026, 5, to, 0, 0, 0).unwrap().to_utc();
    ReportRange::new(Window::new(start, end), tz)
}

#[tokio::test]
async fn the_google_ads_example_lists_customers_and_reads_daily_campaign_metrics() {
    let (base, _) = emulator().await;
    let direct = source(&base, None);
    let probe = direct.probe(&credential()).await.unwrap();
    assert_eq!(probe.upstream_account_name, "ana@example.com");
    assert_eq!(
        direct.list_resources(&credential()).await.unwrap().unwrap(),
        vec![
            Resource::direct(MANAGER, MANAGER),
            Resource::direct(DIRECT, DIRECT),
            Resource {
                id: CLIENT.into(),
                name: "Client Co".into(),
                parent: Some(MANAGER.into()),
            },
            Resource {
                id: "4444444444".into(),
                name: "Other Client".into(),
                parent: Some(MANAGER.into()),
            },
        ],
        "customer ids without their customers/ prefix, then the manager's clients under it"
    );
    // Each customer a pipeline reads is probed on its own: a client of the manager is not
    // reachable without login-customer-id.
    assert_eq!(direct.probe_resource(&credential(), DIRECT).await, Ok(()));
    let refused = direct
        .probe_resource(&credential(), CLIENT)
        .await
        .unwrap_err();
    assert_eq!(refused.cause, FailureCause::PermissionLost, "{refused:?}");
    assert_eq!(
        refused.provider_code.as_deref(),
        Some("USER_PERMISSION_DENIED")
    );
    assert_eq!(
        source(&base, Some(MANAGER))
            .probe_resource(&credential(), CLIENT)
            .await,
        Ok(())
    );
    let extracted = direct
        .extract(&credential(), DIRECT, "campaign_daily", days(1, 4))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for day in 1..=3 {
        let date = NaiveDate::from_ymd_opt(2026, 5, day).unwrap();
        for truth in results_for(date) {
            let metric = |name: &str| {
                truth["metrics"][name]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            };
            expected.push(vec![
                Value::Date(date),
                Value::Text(truth["campaign"]["id"].as_str().unwrap().into()),
                Value::Text(truth["campaign"]["name"].as_str().unwrap().into()),
                Value::Integer(metric("impressions")),
                Value::Integer(metric("clicks")),
                Value::Integer(metric("costMicros")),
                Value::Text("1.5".into()),
            ]);
        }
    }
    assert_eq!(extracted.rows, expected);
    assert_eq!(extracted.requests, 1, "one stream, whatever its batches");

    // A client account is refused without its manager's id, and read with it.
    let failure = direct
        .extract(&credential(), CLIENT, "campaign_daily", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost);
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("USER_PERMISSION_DENIED")
    );
    let through_manager = source(&base, Some(MANAGER));
    let extracted = through_manager
        .extract(&credential(), CLIENT, "campaign_daily", days(1, 2))
        .await
        .unwrap();
    assert_eq!(extracted.rows.len(), 2);
}

#[tokio::test]
async fn the_google_ads_example_classifies_a_revoked_token_and_waits_out_a_quota() {
    let (base, mode) = emulator().await;
    let source = source(&base, None);
    *mode.lock().unwrap() = Mode::Revoked;
    let failure = source
        .extract(&credential(), DIRECT, "campaign_daily", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(
        failure.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked
        }
    );
    *mode.lock().unwrap() = Mode::Exhausted;
    let failure = source
        .extract(&credential(), DIRECT, "campaign_daily", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(
        failure.cause,
        FailureCause::RateLimited {
            retry_after_secs: Some(45)
        }
    );
}
