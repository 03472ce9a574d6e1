//! `examples/providers/shopify_orders.toml` run, not only parsed: against an emulator of the
//! Shopify REST Admin API as documented at
//! - https://shopify.dev/docs/api/admin-rest/2026-07/resources/order#get-orders-status-any
//!   (`status`, `created_at_min`, `created_at_max` as ISO 8601 with their offset, `limit` at
//!   most 250; orders at `/orders`, prices as strings);
//! - https://shopify.dev/docs/api/usage/pagination-rest (cursor pages through the `Link`
//!   header, `rel="next"` with `page_info`; a request with `page_info` may carry no other
//!   parameter but `limit` and `fields`);
//! - https://shopify.dev/docs/api/admin-rest/2026-07/resources/shop (`/shop.json`);
//! - https://shopify.dev/docs/api/usage/response-codes (401 for a token that was revoked or
//!   whose app was uninstalled).
//!
//! The emulator refuses what the API refuses: a request without the custom app's token, a
//! `limit` over 250, a date without its offset, a `page_info` sent with filters.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use gapless_core::{FailureCause, ReportRange, Tz, Value, Window};
use gapless_providers::{
    ProviderSettings, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{ApiKey, ClientSecret, Credential};
use serde_json::json;

const EXAMPLE: &str = include_str!("../../../examples/providers/shopify_orders.toml");
const TOKEN: &str = "shpat_emulated";
/// Orders a page at most, whatever `limit` asks (so a day takes several pages).
const PAGE: usize = 2;

#[derive(Default)]
struct World {
    revoked: bool,
    refused: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "errors": message }))).into_response()
}

/// The truth: three orders a day, at 02:00, 11:00 and 23:30 UTC.
fn orders_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut day = from.date_naive() - chrono::Days::new(1);
    while day <= to.date_naive() {
        for (i, (h, m)) in [(2, 0), (11, 0), (23, 30)].iter().enumerate() {
            let at = Utc.from_utc_datetime(&day.and_hms_opt(*h, *m, 0).unwrap());
            if at >= from && at <= to {
                let id = at.timestamp() + i64::try_from(i).unwrap();
                all.push(json!({
                    "id": id,
                    "name": format!("#{}", id % 100_000),
                    "created_at": at.with_timezone(&FixedOffset::west_opt(4 * 3600).unwrap()).to_rfc3339(),
                    "currency": "USD",
                    "total_price": format!("{}.{:02}", id % 500, id % 100),
                    "financial_status": "paid",
                }));
            }
        }
        day = day.succ_opt().unwrap();
    }
    all
}

async fn shop(State(w): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&w, &headers) {
        return refused;
    }
    Json(json!({"shop": {"id": 548380009, "name": "Acme Outfitters"}})).into_response()
}

fn unauthorized(w: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok());
    (token != Some(TOKEN) || w.lock().unwrap().revoked).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "[API] Invalid API key or access token (unrecognized login or wrong password)",
        )
    })
}

async fn orders(
    State(w): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = unauthorized(&w, &headers) {
        return refused;
    }
    let refuse = |why: String| {
        w.lock().unwrap().refused.push(why.clone());
        error(StatusCode::BAD_REQUEST, &why)
    };
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    if limit > 250 {
        return refuse("limit must be at most 250".into());
    }
    // A next page: its cursor holds the filters and where it stopped.
    let (from, to, offset) = if let Some(cursor) = q.get("page_info") {
        if let Some(other) = q
            .keys()
            .find(|k| !["page_info", "limit", "fields"].contains(&k.as_str()))
        {
            return refuse(format!("page_info cannot be sent with {other}"));
        }
        let mut parts = cursor.split('_');
        let (Some(from), Some(to), Some(offset)) = (parts.next(), parts.next(), parts.next())
        else {
            return refuse("page_info is not one this API gave".into());
        };
        (
            DateTime::from_timestamp(from.parse().unwrap(), 0).unwrap(),
            DateTime::from_timestamp(to.parse().unwrap(), 0).unwrap(),
            offset.parse::<usize>().unwrap(),
        )
    } else {
        let when = |k: &str| {
            q.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.to_utc())
        };
        if q.get("status").map(String::as_str) != Some("any") {
            return refuse("status any is needed for closed and cancelled orders".into());
        }
        let (Some(from), Some(to)) = (when("created_at_min"), when("created_at_max")) else {
            return refuse(
                "created_at_min and created_at_max are ISO 8601 with their offset".into(),
            );
        };
        (from, to, 0)
    };
    // Shopify's `created_at_max` is inclusive: the window's end instant belongs to the
    // next window, so an order exactly at it would be read twice. None is at midnight here.
    let all = orders_between(from, to);
    let page: Vec<_> = all
        .iter()
        .skip(offset)
        .take(limit.min(PAGE))
        .cloned()
        .collect();
    let mut answer = Json(json!({ "orders": page })).into_response();
    if offset + PAGE < all.len() {
        let host = headers[header::HOST].to_str().unwrap();
        let next = format!(
            "<http://{host}/admin/api/2026-07/orders.json?limit={limit}&page_info={}_{}_{}>; rel=\"next\"",
            from.timestamp(),
            to.timestamp(),
            offset + PAGE
        );
        answer
            .headers_mut()
            .insert(header::LINK, next.parse().unwrap());
    }
    answer
}

async fn emulator() -> (String, Shared) {
    let w: Shared = Arc::default();
    let app = Router::new()
        .route("/admin/api/2026-07/shop.json", get(shop))
        .route("/admin/api/2026-07/orders.json", get(orders))
        .with_state(w.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), w)
}

fn source(base: &str) -> DeclarativeSource {
    let definition = check(EXAMPLE).unwrap_or_else(|p| panic!("{p:#?}"));
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url: base.into(),
            client_id: String::new(),
            client_secret: ClientSecret::new(String::new()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        },
    )
    .unwrap()
}

fn key() -> Credential {
    Credential::ApiKey {
        key: ApiKey::new(TOKEN.into()),
    }
}

#[tokio::test]
async fn the_shopify_orders_example_reads_a_days_orders_over_link_header_pages() {
    let (base, world) = emulator().await;
    let source = source(&base);
    let probe = source.probe(&key()).await.unwrap();
    assert_eq!(probe.upstream_account_id, "548380009");
    assert_eq!(probe.upstream_account_name, "Acme Outfitters");

    let tz: Tz = "UTC".parse().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap();
    let window = Window::new(start, start + Duration::days(1));
    let extracted = source
        .extract(&key(), "shop", "orders", ReportRange::new(window, tz))
        .await
        .unwrap();
    let truth = orders_between(start, start + Duration::days(1));
    assert_eq!(truth.len(), 3, "three orders that day");
    assert_eq!(extracted.requests, 2, "two pages of at most two orders");
    let expected: Vec<Vec<Value>> = truth
        .iter()
        .map(|o| {
            vec![
                Value::Integer(o["id"].as_i64().unwrap()),
                Value::Text(o["name"].as_str().unwrap().into()),
                Value::Text(o["created_at"].as_str().unwrap().into()),
                Value::Text("USD".into()),
                Value::Text(o["total_price"].as_str().unwrap().into()),
                Value::Text("paid".into()),
            ]
        })
        .collect();
    assert_eq!(extracted.rows, expected);
    assert!(
        world.lock().unwrap().refused.is_empty(),
        "{:?}",
        world.lock().unwrap().refused
    );

    // The app uninstalled (or its token revoked): 401, a credential refused — which the
    // engine counts at once for an API key, since nothing can refresh it.
    world.lock().unwrap().revoked = true;
    let failure = source
        .extract(&key(), "shop", "orders", ReportRange::new(window, tz))
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::Refreshable, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("http_401"));
}
