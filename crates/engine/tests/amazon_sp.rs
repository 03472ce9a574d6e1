//! The built-in `amazon_sp` definition run through the engine for a year of
//! virtual time, against emulators of Seller Central's consent, Login with Amazon and the
//! Selling Partner API as documented at
//! - https://developer-docs.amazon.com/sp-api/docs/website-authorization-workflow (the
//!   consent at `/apps/authorize/consent` with `application_id`, `state`, `redirect_uri`
//!   and `version=beta` for a draft application; back with `spapi_oauth_code`, `state`
//!   and `selling_partner_id`; the code exchanged at Login with Amazon within 5 minutes),
//! - https://developer-docs.amazon.com/sp-api/docs/renew-authorizations (a seller's
//!   authorization of a public application lasts 365 days),
//! - https://developer-docs.amazon.com/sp-api/docs/connecting-to-the-selling-partner-api
//!   (`x-amz-access-token` on every call; no AWS signature since 2023-10-02),
//! - the models `sellers-api-model/sellers.json` (`GET /sellers/v1/marketplaceParticipations`)
//!   and `reports-api-model/reports_2021-06-30.json` (`createReport` → 202 `reportId`;
//!   `getReport` with `processingStatus` IN_QUEUE, IN_PROGRESS, DONE and
//!   `reportDocumentId`; `getReportDocument` → a pre-signed `url` and
//!   `compressionAlgorithm`), and `schemas/reports/sellerSalesAndTrafficReport.json` (the
//!   document: `salesAndTrafficByDate[]` with `salesByDate` and `trafficByDate`),
//! - https://developer-docs.amazon.com/sp-api/docs/order-tracking-reports-attributes (the
//!   columns of `GET_FLAT_FILE_ALL_ORDERS_DATA_BY_ORDER_DATE_GENERAL`, a tab-separated
//!   flat file with a header row; a pending order's prices are empty).
//!
//! The emulators refuse what Amazon refuses: a consent without the application's id (or
//! without `version=beta` while the application is a draft, MD1000), a call without the
//! access token header or with an expired or revoked token (403 `Unauthorized`), a report
//! of another type, a marketplace the seller is not in, a range ending in the future, a
//! download carrying the token, and — once 365 days have passed since the seller's
//! consent — every refresh (`invalid_grant`).

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::HashMap,
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
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Clock, VirtualClock, WindowState};
use gapless_providers::SourceConnector;
use serde_json::json;

const CLIENT_ID: &str = "amzn1.application-oa2-client.spemulated";
const CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.spemulated";
const APPLICATION_ID: &str = "amzn1.sp.solution.emulated";
const SELLER: &str = "A3EMULATEDSELLER";
const MARKETPLACE: &str = "ATVPDKIKX0DER";

#[derive(Default)]
struct World {
    storage: String,
    codes: HashMap<String, (String, DateTime<Utc>)>,
    tokens: HashMap<String, DateTime<Utc>>,
    issued: u32,
    /// When the seller authorized the application: the authorization ends a year later.
    authorized_at: Option<DateTime<Utc>>,
    /// Reports: id → (type, start, end, polls).
    reports: HashMap<String, (String, DateTime<Utc>, DateTime<Utc>, u32)>,
    /// A flat file covering this day is written without its `item-price` column.
    drop_price_column: Option<NaiveDate>,
    refused: Vec<String>,
}

const SALES_AND_TRAFFIC: &str = "GET_SALES_AND_TRAFFIC_REPORT";
const ORDERS_BY_DATE: &str = "GET_FLAT_FILE_ALL_ORDERS_DATA_BY_ORDER_DATE_GENERAL";

#[derive(Clone)]
struct Emulator {
    world: Arc<Mutex<World>>,
    clock: VirtualClock,
}

fn sp_error(status: StatusCode, code: &str, message: &str, details: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"code": code, "message": message, "details": details}]})),
    )
        .into_response()
}

impl Emulator {
    fn refuse(&self, why: &str, response: Response) -> Response {
        self.world.lock().unwrap().refused.push(why.into());
        response
    }

    fn token_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let world = self.world.lock().unwrap();
        let valid = headers
            .get("x-amz-access-token")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| world.tokens.get(t))
            .is_some_and(|expiry| *expiry > self.clock.now());
        (!valid).then(|| {
            sp_error(
                StatusCode::FORBIDDEN,
                "Unauthorized",
                "Access to requested resource is denied.",
                "The access token you provided is revoked, malformed or invalid.",
            )
        })
    }
}

/// Seller Central's consent: the seller signs in and authorizes the application.
async fn consent(State(e): State<Emulator>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("application_id") != APPLICATION_ID {
        return e.refuse(
            "consent",
            (StatusCode::BAD_REQUEST, "unknown application").into_response(),
        );
    }
    // Only Seller Central's own parameters (stricter than Amazon may be: it proves the
    // consent this definition builds is not an RFC 6749 one).
    if ["client_id", "response_type", "scope", "code_challenge"]
        .iter()
        .any(|k| q.contains_key(*k))
    {
        return e.refuse(
            "RFC 6749 parameters in Seller Central's consent",
            (StatusCode::BAD_REQUEST, "unexpected parameters").into_response(),
        );
    }
    if get("version") != "beta" {
        // The emulated application is a draft.
        return e.refuse(
            "consent without version=beta",
            (StatusCode::BAD_REQUEST, "MD1000").into_response(),
        );
    }
    let now = e.clock.now();
    let mut world = e.world.lock().unwrap();
    world.issued += 1;
    let code = format!("ANspcode{}", world.issued);
    world.codes.insert(code.clone(), (get("redirect_uri"), now));
    world.authorized_at = Some(now);
    vendor::redirect_back(
        &get("redirect_uri"),
        &[
            ("spapi_oauth_code", code.as_str()),
            ("state", get("state").as_str()),
            ("selling_partner_id", SELLER),
        ],
    )
}

/// Login with Amazon's token endpoint.
async fn token(State(e): State<Emulator>, Form(form): Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let invalid = |what: &str| {
        vendor::token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("The request has an invalid grant parameter : {what}"),
        )
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
        "authorization_code" => match world.codes.remove(&get("code")) {
            Some((redirect, at))
                if redirect == get("redirect_uri") && now - at <= Duration::minutes(5) => {}
            _ => return invalid("code"),
        },
        "refresh_token" => {
            let lapsed = world
                .authorized_at
                .is_none_or(|at| now >= at + Duration::days(365));
            if lapsed || get("refresh_token") != "Atzr|sp-grant" {
                return invalid("refresh_token");
            }
        }
        _ => return invalid("grant_type"),
    }
    world.issued += 1;
    let access = format!("Atza|sp-{}", world.issued);
    world
        .tokens
        .insert(access.clone(), now + Duration::hours(1));
    Json(
        json!({"access_token": access, "token_type": "bearer", "expires_in": 3600,
        "refresh_token": "Atzr|sp-grant"}),
    )
    .into_response()
}

async fn participations(State(e): State<Emulator>, headers: HeaderMap) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    Json(
        json!({"payload": [{"marketplace": {"id": MARKETPLACE, "name": "Amazon.com",
        "countryCode": "US", "defaultCurrencyCode": "USD", "defaultLanguageCode": "en_US",
        "domainName": "www.amazon.com"},
        "participation": {"isParticipating": true, "hasSuspendedListings": false},
        "storeName": "Acme Goods"}]}),
    )
    .into_response()
}

async fn create_report(State(e): State<Emulator>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    let invalid = |why: &str| {
        e.refuse(
            why,
            sp_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "Invalid input",
                why,
            ),
        )
    };
    let Ok(request) = serde_json::from_str::<serde_json::Value>(&body) else {
        return invalid("body");
    };
    let kind = request["reportType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if ![SALES_AND_TRAFFIC, ORDERS_BY_DATE].contains(&kind.as_str())
        || request["marketplaceIds"] != json!([MARKETPLACE])
    {
        return invalid("report type or marketplace");
    }
    let time = |k: &str| {
        request[k]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let (Some(start), Some(end)) = (time("dataStartTime"), time("dataEndTime")) else {
        return invalid("dataStartTime and dataEndTime");
    };
    if end > e.clock.now() || end < start {
        return invalid("range");
    }
    let mut world = e.world.lock().unwrap();
    let id = format!("{}", 50_000 + world.reports.len());
    world.reports.insert(id.clone(), (kind, start, end, 0));
    (StatusCode::ACCEPTED, Json(json!({"reportId": id}))).into_response()
}

async fn get_report(
    State(e): State<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    let mut world = e.world.lock().unwrap();
    let Some((kind, _, _, polls)) = world.reports.get_mut(&id) else {
        return sp_error(StatusCode::NOT_FOUND, "NotFound", "Report not found", "");
    };
    *polls += 1;
    let answer = match *polls {
        1 => json!({"reportId": id, "reportType": kind, "processingStatus": "IN_QUEUE"}),
        2 => json!({"reportId": id, "reportType": kind, "processingStatus": "IN_PROGRESS"}),
        _ => json!({"reportId": id, "reportType": kind,
            "processingStatus": "DONE", "reportDocumentId": format!("amzn1.spdoc.1.4.na.{id}")}),
    };
    Json(answer).into_response()
}

async fn get_document(
    State(e): State<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = e.token_refusal(&headers) {
        return r;
    }
    let storage = e.world.lock().unwrap().storage.clone();
    let report = id.trim_start_matches("amzn1.spdoc.1.4.na.");
    Json(json!({"reportDocumentId": id,
        "url": format!("{storage}/sp-reports/{report}.gz?X-Amz-Expires=300&X-Amz-Signature=emulated"),
        "compressionAlgorithm": "GZIP"}))
    .into_response()
}

/// The truth: one seller's day in one marketplace.
fn truth(day: NaiveDate) -> serde_json::Value {
    let n = i64::from(day.ordinal()) + i64::from(day.year() - 2026) * 400;
    json!({"date": day.to_string(),
        "salesByDate": {"orderedProductSales": {"amount": format!("{}.{:02}", 100 + n, n % 100).parse::<f64>().unwrap(), "currencyCode": "USD"},
            "unitsOrdered": 3 + n % 11, "totalOrderItems": 2 + n % 7, "unitsRefunded": n % 2},
        "trafficByDate": {"pageViews": 40 + n, "sessions": 30 + n % 13, "buyBoxPercentage": 100.0}})
}

async fn download(
    State(e): State<Emulator>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key("x-amz-access-token") || headers.contains_key(header::AUTHORIZATION) {
        return e.refuse(
            "download with the token",
            (
                StatusCode::BAD_REQUEST,
                "<Error><Code>InvalidArgument</Code></Error>",
            )
                .into_response(),
        );
    }
    let world = e.world.lock().unwrap();
    let Some((kind, start, end, _)) = world.reports.get(file.trim_end_matches(".gz")) else {
        return (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response();
    };
    if kind == ORDERS_BY_DATE {
        let without_price = world
            .drop_price_column
            .is_some_and(|d| (start.date_naive()..=end.date_naive()).contains(&d));
        return gzip(&flat_file(*start, *end, without_price)).into_response();
    }
    let (start, end) = (start.date_naive(), end.date_naive());
    let days: Vec<_> = start
        .iter_days()
        .take_while(|d| *d <= end)
        .map(truth)
        .collect();
    let document = json!({"reportSpecification": {"reportType": "GET_SALES_AND_TRAFFIC_REPORT",
        "reportOptions": {"dateGranularity": "DAY", "asinGranularity": "PARENT"},
        "dataStartTime": start.to_string(), "dataEndTime": end.to_string(),
        "marketplaceIds": [MARKETPLACE]},
        "salesAndTrafficByDate": days, "salesAndTrafficByAsin": []});
    gzip(&serde_json::to_vec(&document).unwrap()).into_response()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The columns of the flat file, in Amazon's order.
const FLAT_FILE_COLUMNS: &[&str] = &[
    "amazon-order-id",
    "merchant-order-id",
    "purchase-date",
    "last-updated-date",
    "order-status",
    "fulfillment-channel",
    "sales-channel",
    "order-channel",
    "ship-service-level",
    "product-name",
    "sku",
    "asin",
    "item-status",
    "quantity",
    "currency",
    "item-price",
    "item-tax",
    "shipping-price",
    "shipping-tax",
    "gift-wrap-price",
    "gift-wrap-tax",
    "item-promotion-discount",
    "ship-promotion-discount",
    "ship-city",
    "ship-state",
    "ship-postal-code",
    "ship-country",
    "promotion-ids",
    "is-business-order",
    "purchase-order-number",
    "price-designation",
];

/// The truth of the orders placed on `day`: a shipped one (a product name with a quote in
/// it), and a pending one whose prices Amazon has not set yet (empty cells).
fn orders_on(day: NaiveDate) -> Vec<HashMap<&'static str, String>> {
    let n = day.ordinal();
    let at = |hour: u32| format!("{day}T{hour:02}:17:05+00:00");
    // 03:17 UTC is the evening before in the Americas: it tests the day of a timestamp.
    let shipped = HashMap::from([
        ("amazon-order-id", format!("113-{n:07}-0000001")),
        ("purchase-date", at(3)),
        ("last-updated-date", at(20)),
        ("order-status", "Shipped".to_string()),
        ("fulfillment-channel", "Amazon".to_string()),
        ("sales-channel", "Amazon.com".to_string()),
        (
            "product-name",
            format!("12\" steel ruler, pack of {}", 1 + n % 3),
        ),
        ("sku", "R-12".to_string()),
        ("asin", "B000RULER1".to_string()),
        ("item-status", "Shipped".to_string()),
        ("quantity", (1 + n % 3).to_string()),
        ("currency", "USD".to_string()),
        ("item-price", format!("{}.{:02}", 9 + n % 20, n % 100)),
        ("item-tax", format!("0.{:02}", n % 90)),
        ("shipping-price", "4.99".to_string()),
        ("item-promotion-discount", "0.0".to_string()),
        ("ship-country", "US".to_string()),
    ]);
    let pending = HashMap::from([
        ("amazon-order-id", format!("114-{n:07}-0000002")),
        ("purchase-date", at(23)),
        ("last-updated-date", at(23)),
        ("order-status", "Pending".to_string()),
        ("fulfillment-channel", "Merchant".to_string()),
        ("sales-channel", "Amazon.com".to_string()),
        ("product-name", "\"Classic\" fountain pen".to_string()),
        ("sku", "P-1".to_string()),
        ("asin", "B000PEN001".to_string()),
        ("item-status", "Unshipped".to_string()),
        ("quantity", "1".to_string()),
        ("ship-country", "CA".to_string()),
    ]);
    vec![shipped, pending]
}

/// The flat file of the orders placed from `start` to `end` (inclusive): a header row and
/// one row per order item, tab-separated, unquoted.
fn flat_file(start: DateTime<Utc>, end: DateTime<Utc>, without_price: bool) -> Vec<u8> {
    let columns: Vec<&str> = FLAT_FILE_COLUMNS
        .iter()
        .copied()
        .filter(|c| !(without_price && *c == "item-price"))
        .collect();
    let mut text = columns.join("\t") + "\n";
    let (first, last) = (start.date_naive(), end.date_naive());
    for day in first.iter_days().take_while(|d| *d <= last) {
        for order in orders_on(day).into_iter().filter(|o| {
            let placed = DateTime::parse_from_rfc3339(&o["purchase-date"]).unwrap();
            placed >= start && placed <= end
        }) {
            let cells: Vec<&str> = columns
                .iter()
                .map(|c| order.get(c).map_or("", String::as_str))
                .collect();
            text += &(cells.join("\t") + "\n");
        }
    }
    text.into_bytes()
}

async fn emulators(clock: VirtualClock) -> (Emulator, String, String, String) {
    let e = Emulator {
        world: Arc::default(),
        clock,
    };
    let seller_central = vendor::serve(
        Router::new()
            .route("/apps/authorize/consent", get(consent))
            .with_state(e.clone()),
    )
    .await;
    let lwa = vendor::serve(
        Router::new()
            .route("/auth/o2/token", post(token))
            .with_state(e.clone()),
    )
    .await;
    let api = vendor::serve(
        Router::new()
            .route("/sellers/v1/marketplaceParticipations", get(participations))
            .route("/reports/2021-06-30/reports", post(create_report))
            .route("/reports/2021-06-30/reports/{id}", get(get_report))
            .route("/reports/2021-06-30/documents/{id}", get(get_document))
            .with_state(e.clone()),
    )
    .await;
    let storage = vendor::serve(
        Router::new()
            .route("/sp-reports/{file}", get(download))
            .with_state(e.clone()),
    )
    .await;
    e.world.lock().unwrap().storage = storage;
    (e, seller_central, lwa, api)
}

/// The emulators, the built-in definition pointed at them (polling every 10 ms) and an
/// engine running it.
async fn seller_central(
    dir: &std::path::Path,
    clock: &VirtualClock,
) -> (
    Emulator,
    Arc<gapless_providers::declarative::connector::DeclarativeSource>,
    gapless_engine::Engine,
) {
    let (e, seller_central, lwa, api) = emulators(clock.clone()).await;
    let source = Arc::new(vendor::built_in(
        "amazon_sp",
        &[
            ("https://sellercentral.amazon.com", &seller_central),
            ("https://api.amazon.com", &lwa),
            ("https://sellingpartnerapi-na.amazon.com", &api),
            ("poll_every = \"15s\"", "poll_every = \"10ms\""),
        ],
        (CLIENT_ID, CLIENT_SECRET),
        &[
            ("application_id", APPLICATION_ID),
            ("consent_version", "beta"),
        ],
    ));
    let engine = vendor::engine(dir, clock, source.clone()).await;
    (e, source, engine)
}

#[tokio::test]
async fn amazon_sp_warns_before_the_365_day_authorization_ends_and_a_renewal_loses_no_day() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (e, source, engine) = seller_central(dir.path(), &clock).await;

    let identity =
        vendor::connect(&engine, "amazon_sp", "acme-seller", "ecommerce@example.com").await;
    assert_eq!(identity.upstream_account_id.as_deref(), Some(SELLER));
    // A redirect that names no seller, or another seller, renews nothing.
    for (to, expected) in [("", "does not name the account"), ("A9OTHERSELLER", "")] {
        let (pending, callback) = vendor::consent(&engine, "amazon_sp").await;
        let mut edited = callback.clone();
        edited.query_pairs_mut().clear().extend_pairs(
            callback
                .query_pairs()
                .filter(|(k, _)| k != "selling_partner_id")
                .chain((!to.is_empty()).then(|| ("selling_partner_id".into(), to.into()))),
        );
        let err = engine
            .reauthorize(identity.id, &pending, &edited)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected) && (to.is_empty() || err.contains(to)),
            "{err}"
        );
    }
    let identity = engine.store().identity(identity.id).await.unwrap();
    assert_eq!(identity.upstream_account_id.as_deref(), Some(SELLER));
    let consented = clock.now();
    assert_eq!(
        identity.authorization_expires_at,
        Some(consented + Duration::days(365))
    );
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (MARKETPLACE, &["sales_traffic_by_date"]),
        7,
        start,
    )
    .await;

    // A week at a time for ten months, then every day: the daily tick at 01:00.
    let tick = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    let mut d = 1;
    while d < 320 {
        tick(d).await.unwrap();
        d += 7;
    }
    while d <= 368 {
        tick(d).await.unwrap();
        d += 1;
    }
    let subjects: Vec<String> = vendor::mails(&engine).into_iter().map(|(s, _)| s).collect();
    let warnings: Vec<_> = subjects
        .iter()
        .filter(|s| s.contains("Authorization expiring"))
        .collect();
    assert_eq!(warnings.len(), 3, "{subjects:?}");
    // The authorization ended on day 366 at 09:00: one incident, and its mail.
    let incidents = engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let failure_mail = vendor::mails(&engine)
        .into_iter()
        .find(|(s, _)| s.contains("Authorization Failure"))
        .expect("a failure mail");
    assert!(failure_mail.1.contains("Act by"), "{}", failure_mail.1);

    // The seller renews the authorization on day 370: another year, and the days the
    // expiry held up are back-filled.
    clock.set(day(370) + Duration::hours(10));
    let (pending, callback) = vendor::consent(&engine, "amazon_sp").await;
    engine
        .reauthorize(identity.id, &pending, &callback)
        .await
        .unwrap();
    let renewed = engine.store().identity(identity.id).await.unwrap();
    assert_eq!(
        renewed.authorization_expires_at,
        Some(clock.now() + Duration::days(365))
    );
    engine.tick().await.unwrap();
    let ledger = engine.store().ledger(pipeline.id).await.unwrap();
    for d in 1..=369 {
        let window = gapless_core::Window::new(day(d), day(d + 1));
        let entry = ledger
            .iter()
            .find(|e| e.window == window)
            .unwrap_or_else(|| panic!("day {d} is not in the ledger"));
        assert!(
            matches!(entry.state, WindowState::Loaded { .. }),
            "day {d}: {:?}",
            entry.state
        );
    }
    let schema = source
        .descriptor()
        .stream("sales_traffic_by_date")
        .unwrap()
        .schema
        .clone();
    let destination = engine.destination_for(&pipeline).await.unwrap().unwrap();
    for d in [1, 200, 366, 369] {
        let window = gapless_core::Window::new(day(d), day(d + 1));
        let rows = destination
            .read_window(pipeline.id, &schema, window)
            .await
            .unwrap();
        let t = truth(day(d).date_naive());
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0][1],
            gapless_core::Value::Text(
                t["salesByDate"]["orderedProductSales"]["amount"].to_string()
            ),
            "day {d}"
        );
        assert_eq!(
            rows[0][3],
            gapless_core::Value::Integer(t["salesByDate"]["unitsOrdered"].as_i64().unwrap())
        );
    }
    let refused = e.world.lock().unwrap().refused.clone();
    assert!(refused.is_empty(), "{refused:?}");
}

/// The order items of the flat-file orders report, read from its tab-separated document:
/// a quote inside a product name is text, a pending order's empty prices are NULL. A
/// document without one of its columns loads nothing of its days, which stay missing with
/// the reason and are read again once Amazon serves them whole.
#[tokio::test]
async fn amazon_sp_order_items_come_from_the_tab_separated_flat_file_and_one_without_a_column_loads_nothing()
 {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (e, source, engine) = seller_central(dir.path(), &clock).await;
    let identity =
        vendor::connect(&engine, "amazon_sp", "acme-seller", "ecommerce@example.com").await;
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        (MARKETPLACE, &["orders_by_date"]),
        0,
        start,
    )
    .await;
    // The same seller's orders by the days of Los Angeles: an order at 03:17 UTC was
    // placed the evening before there.
    let pacific: gapless_core::Tz = "America/Los_Angeles".parse().unwrap();
    let local = gapless_core::Pipeline {
        id: gapless_core::PipelineId::new(),
        name: "orders-pacific".into(),
        time_zone: pacific,
        start: pacific
            .with_ymd_and_hms(2026, 2, 1, 0, 0, 0)
            .unwrap()
            .with_timezone(&Utc),
        ..pipeline.clone()
    };
    engine
        .store()
        .insert_pipeline(&local, engine.clock().now())
        .await
        .unwrap();
    let tick = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=3 {
        tick(d).await.unwrap();
    }
    // Day 4's document comes without its item-price column.
    e.world.lock().unwrap().drop_price_column = Some(day(4).date_naive());
    tick(4).await.unwrap();
    let ledger = engine.store().ledger(pipeline.id).await.unwrap();
    let day_4 = ledger
        .iter()
        .find(|entry| entry.window.start == day(4))
        .expect("day 4 is in the ledger");
    match &day_4.state {
        WindowState::Missing { reason, .. } => {
            let said = reason.describe();
            assert!(said.contains("no column \"item-price\""), "{said}");
        }
        other => panic!("day 4 is {other:?}"),
    }
    let schema = source
        .descriptor()
        .stream("orders_by_date")
        .unwrap()
        .schema
        .clone();
    let destination = engine.destination_for(&pipeline).await.unwrap().unwrap();
    let stored = destination
        .read_window(
            pipeline.id,
            &schema,
            gapless_core::Window::new(day(4), day(5)),
        )
        .await
        .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
    // Served whole again: day 4 is read with day 5.
    e.world.lock().unwrap().drop_price_column = None;
    tick(5).await.unwrap();
    vendor::assert_days_equal_truth(
        (&engine, &source),
        &pipeline,
        "orders_by_date",
        1..=5,
        |date| orders_on(date).iter().map(|o| order_row(date, o)).collect(),
    )
    .await;
    // Each day of Los Angeles holds the orders placed in it there, whichever UTC day.
    vendor::assert_days_equal_truth(
        (&engine, &source),
        &local,
        "orders_by_date",
        1..=4,
        |date| {
            let mut rows: Vec<_> = [date, date.succ_opt().unwrap()]
                .into_iter()
                .flat_map(orders_on)
                .filter(|o| {
                    DateTime::parse_from_rfc3339(&o["purchase-date"])
                        .unwrap()
                        .with_timezone(&pacific)
                        .date_naive()
                        == date
                })
                .map(|o| order_row(date, &o))
                .collect();
            rows.sort_by_key(|r| format!("{:?}", r.get(1)));
            rows
        },
    )
    .await;
    let world = e.world.lock().unwrap();
    assert!(world.refused.is_empty(), "{:?}", world.refused);
}

/// An order item as the `orders_by_date` stream loads it, on day `date`.
fn order_row(date: NaiveDate, o: &HashMap<&'static str, String>) -> Vec<gapless_core::Value> {
    let text = |v: Option<&String>| {
        v.map_or(gapless_core::Value::Null, |t| {
            gapless_core::Value::Text(t.clone())
        })
    };
    vec![
        gapless_core::Value::Date(date),
        text(o.get("amazon-order-id")),
        text(o.get("purchase-date")),
        text(o.get("last-updated-date")),
        text(o.get("order-status")),
        text(o.get("fulfillment-channel")),
        text(o.get("sales-channel")),
        text(o.get("sku")),
        text(o.get("asin")),
        text(o.get("product-name")),
        text(o.get("item-status")),
        gapless_core::Value::Integer(o["quantity"].parse().unwrap()),
        text(o.get("currency")),
        text(o.get("item-price")),
        text(o.get("item-tax")),
        text(o.get("shipping-price")),
        text(o.get("item-promotion-discount")),
        text(o.get("ship-country")),
    ]
}
