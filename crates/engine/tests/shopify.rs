//! The built-in `shopify` definition run through the engine against an emulator of one
//! shop's OAuth and Admin GraphQL API, as documented at
//! - https://shopify.dev/docs/apps/build/authentication-authorization/authenticate-standalone-apps
//!   (the consent at `/admin/oauth/authorize` with `client_id`, `scope`, `redirect_uri`,
//!   `state`; back with `code`, `hmac`, `shop`, `state`, `timestamp`; the code exchanged at
//!   `/admin/oauth/access_token` with the client's id and secret),
//! - https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens/offline-access-tokens
//!   and …/use-expiring-offline-access-tokens (`expiring=1`: an hour's access token and a
//!   refresh token that changes on every use; a spent one refused),
//! - https://shopify.dev/docs/api/usage/response-codes (401 for a token it does not take,
//!   402 for a frozen shop, 423 for a locked one) and
//!   https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits (THROTTLED in a
//!   200 answer with `extensions.cost.throttleStatus`),
//! - the Admin GraphQL `orders` connection (`first` at most 250, `after`, `query` with
//!   `created_at` bounds, `pageInfo.endCursor`) and `shop { id name myshopifyDomain }`.
//!
//! Scenario: orders loaded day by day; the shop is frozen (402): one `account_blocked`
//! incident and no reauthorization asked; once the owner pays, the probe heals it without
//! a new consent and the frozen days are back-filled; a throttled answer waits and loses
//! nothing; the app uninstalled: one incident that needs a consent, after which the days
//! are back-filled; every refresh spends its refresh token, none is reused.

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Clock, FailureCause, Health, Value, VirtualClock};
use serde_json::json;

const CLIENT_ID: &str = "shopify-emulated-client";
const CLIENT_SECRET: &str = "shpss_emulated";
const SHOP_ID: &str = "gid://shopify/Shop/548380009";

#[derive(Default)]
struct World {
    /// The shop's myshopify subdomain (`acme` for acme.myshopify.com).
    shop: String,
    codes: BTreeSet<String>,
    /// Access tokens → expiry.
    tokens: HashMap<String, DateTime<Utc>>,
    /// The refresh token that is valid now; those spent.
    refresh: Option<String>,
    spent: BTreeSet<String>,
    reused: u32,
    issued: u32,
    frozen: bool,
    /// Consents given (each one a visit of the consent page).
    consents: u32,
    throttle_next: bool,
    throttled: u32,
    /// Order pages asked for past the last one.
    past_the_end: u32,
    refused: Vec<String>,
}

#[derive(Clone)]
struct Emulator {
    world: Arc<Mutex<World>>,
    clock: VirtualClock,
}

fn rest_error(status: u16, text: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"errors": text})),
    )
        .into_response()
}

async fn authorize(
    State(e): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || !get("scope").split(',').any(|s| s == "read_orders") {
        e.world.lock().unwrap().refused.push("consent".into());
        return (StatusCode::BAD_REQUEST, "Oauth error invalid_request").into_response();
    }
    let mut world = e.world.lock().unwrap();
    world.consents += 1;
    world.issued += 1;
    let code = format!("shopify-code-{}", world.issued);
    world.codes.insert(code.clone());
    // Signed as Shopify signs its redirects: the hex HMAC-SHA256 of the other parameters,
    // sorted and joined, keyed with the app's client secret.
    let state = get("state");
    let domain = format!("{}.myshopify.com", world.shop);
    let signed = format!("code={code}&shop={domain}&state={state}&timestamp=1764770000");
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(CLIENT_SECRET.as_bytes())
            .unwrap();
    hmac::Mac::update(&mut mac, signed.as_bytes());
    let signature = hex::encode(hmac::Mac::finalize(mac).into_bytes());
    vendor::redirect_back(
        &get("redirect_uri"),
        &[
            ("code", code.as_str()),
            ("hmac", signature.as_str()),
            ("shop", domain.as_str()),
            ("state", state.as_str()),
            ("timestamp", "1764770000"),
        ],
    )
}

async fn access_token(
    State(e): State<Emulator>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let invalid = || {
        vendor::token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token is invalid",
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
    if get("grant_type") == "refresh_token" {
        let presented = get("refresh_token");
        if world.spent.contains(&presented) {
            world.reused += 1;
        }
        if world.refresh.as_deref() != Some(presented.as_str()) {
            return invalid();
        }
        world.spent.insert(presented);
    } else if !world.codes.remove(&get("code")) || get("expiring") != "1" {
        return invalid();
    }
    world.issued += 1;
    let access = format!("shpat_emulated{}", world.issued);
    let refresh = format!("shprt_emulated{}", world.issued);
    world
        .tokens
        .insert(access.clone(), now + Duration::hours(1));
    world.refresh = Some(refresh.clone());
    Json(
        json!({"access_token": access, "scope": "read_orders", "expires_in": 3600,
        "refresh_token": refresh, "refresh_token_expires_in": 7_776_000}),
    )
    .into_response()
}

/// The shop's id: Acme's, or another one for each other shop.
fn shop_id(shop: &str) -> String {
    match shop {
        "acme" => SHOP_ID.to_string(),
        other => format!("gid://shopify/Shop/{}", 548_380_009 + other.len()),
    }
}

/// The truth of `shop`: orders at 02:00, 11:00 and 20:00 UTC of each day, amounts as
/// strings, ids and amounts its own (Acme's, or those of any other shop).
fn orders_in(shop: &str, day: NaiveDate) -> Vec<serde_json::Value> {
    let offset = if shop == "acme" { 0 } else { 500_000 };
    [2, 11, 20]
        .iter()
        .enumerate()
        .map(|(i, hour)| {
            let at = day.and_hms_opt(*hour, 0, 0).unwrap().and_utc();
            let n = at.timestamp() / 3600 + offset;
            json!({"id": format!("gid://shopify/Order/{n}"), "name": format!("#{}", 1000 + n % 9000),
                "createdAt": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "displayFinancialStatus": if i == 1 { "PENDING" } else { "PAID" },
                "totalPriceSet": {"shopMoney": {"amount": format!("{}.{:02}", 10 + n % 90, n % 100), "currencyCode": "EUR"}}})
        })
        .collect()
}

/// The rows `shop`'s orders of `date` are loaded as, in the order of their id.
fn rows_of(shop: &str, date: NaiveDate) -> Vec<Vec<Value>> {
    let mut rows: Vec<_> = orders_in(shop, date)
        .iter()
        .map(|o| {
            let money = &o["totalPriceSet"]["shopMoney"];
            vec![
                Value::Date(date),
                Value::Text(o["id"].as_str().unwrap().into()),
                Value::Text(o["name"].as_str().unwrap().into()),
                Value::Text(o["displayFinancialStatus"].as_str().unwrap().into()),
                Value::Text(money["amount"].as_str().unwrap().into()),
                Value::Text(money["currencyCode"].as_str().unwrap().into()),
            ]
        })
        .collect();
    rows.sort_by_key(|r| format!("{:?}", r.get(1)));
    rows
}

/// `created_at:>='…' created_at:<'…'`: the two instants.
fn bounds(query: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let from = query.split("created_at:>='").nth(1)?.split('\'').next()?;
    let to = query.split("created_at:<'").nth(1)?.split('\'').next()?;
    Some((
        DateTime::parse_from_rfc3339(from).ok()?.to_utc(),
        DateTime::parse_from_rfc3339(to).ok()?.to_utc(),
    ))
}

fn cost(available: f64) -> serde_json::Value {
    json!({"cost": {"requestedQueryCost": 252, "actualQueryCost": 12,
        "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 100.0}}})
}

async fn graphql(State(e): State<Emulator>, headers: HeaderMap, body: String) -> Response {
    let now = e.clock.now();
    {
        let world = e.world.lock().unwrap();
        let valid = headers
            .get("x-shopify-access-token")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| world.tokens.get(t))
            .is_some_and(|expiry| *expiry > now);
        if !valid {
            return rest_error(
                401,
                "[API] Invalid API key or access token (unrecognized login or wrong password)",
            );
        }
        if world.frozen {
            return rest_error(402, "Unavailable Shop");
        }
    }
    let Ok(request) = serde_json::from_str::<serde_json::Value>(&body) else {
        return rest_error(400, "Bad Request");
    };
    let query = request["query"].as_str().unwrap_or_default();
    let shop = e.world.lock().unwrap().shop.clone();
    if query.contains("shop {") {
        return Json(
            json!({"data": {"shop": {"id": shop_id(&shop), "name": format!("{shop} store"),
            "myshopifyDomain": format!("{shop}.myshopify.com")}}, "extensions": cost(1990.0)}),
        )
        .into_response();
    }
    if !query.contains("orders(first: 250") {
        e.world
            .lock()
            .unwrap()
            .refused
            .push(format!("query {query}"));
        return Json(json!({"errors": [{"message": "Field doesn't exist", "extensions": {"code": "undefinedField"}}]}))
            .into_response();
    }
    {
        let mut world = e.world.lock().unwrap();
        if world.throttle_next {
            world.throttle_next = false;
            world.throttled += 1;
            return Json(
                json!({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                "extensions": cost(42.0)}),
            )
            .into_response();
        }
    }
    let vars = &request["variables"];
    let Some((from, to)) = vars["query"].as_str().and_then(bounds) else {
        e.world.lock().unwrap().refused.push("orders query".into());
        return rest_error(400, "query");
    };
    // 60 days of orders for an app without read_all_orders.
    if from < now - Duration::days(60) {
        e.world
            .lock()
            .unwrap()
            .refused
            .push("older than 60 days".into());
    }
    let all: Vec<_> = from
        .date_naive()
        .iter_days()
        .take_while(|d| d.and_hms_opt(0, 0, 0).unwrap().and_utc() < to)
        .flat_map(|day| orders_in(&shop, day))
        .filter(|o| {
            let at = DateTime::parse_from_rfc3339(o["createdAt"].as_str().unwrap()).unwrap();
            at >= from && at < to
        })
        .collect();
    let after: usize = vars["cursor"]
        .as_str()
        .and_then(|c| c.strip_prefix("cursor-"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Two orders a page, so that days take pages.
    let page: Vec<_> = all.iter().skip(after).take(2).cloned().collect();
    if after > 0 && page.is_empty() {
        e.world.lock().unwrap().past_the_end += 1;
    }
    let next = after + page.len();
    let edges: Vec<_> = page.into_iter().map(|node| json!({"node": node})).collect();
    let end_cursor = (!edges.is_empty()).then(|| format!("cursor-{next}"));
    Json(json!({"data": {"orders": {"edges": edges,
        "pageInfo": {"hasNextPage": next < all.len(), "endCursor": end_cursor}}},
        "extensions": cost(1900.0)}))
    .into_response()
}

async fn emulator(clock: VirtualClock) -> (Emulator, String) {
    let (mut shops, base) = shops(clock, &["acme"]).await;
    (shops.remove(0), base)
}

/// One emulator per shop, each at its own path (`/{shop}/admin/…`) of one server.
async fn shops(clock: VirtualClock, names: &[&str]) -> (Vec<Emulator>, String) {
    let mut app = Router::new();
    let mut shops = Vec::new();
    for name in names {
        let e = Emulator {
            world: Arc::new(Mutex::new(World {
                shop: name.to_string(),
                ..World::default()
            })),
            clock: clock.clone(),
        };
        app = app.merge(
            Router::new()
                .route(&format!("/{name}/admin/oauth/authorize"), get(authorize))
                .route(
                    &format!("/{name}/admin/oauth/access_token"),
                    post(access_token),
                )
                .route(
                    &format!("/{name}/admin/api/2026-10/graphql.json"),
                    post(graphql),
                )
                .with_state(e.clone()),
        );
        shops.push(e);
    }
    (shops, vendor::serve(app).await)
}

/// The built-in definition with the installation's `settings`, each shop's host a path of
/// the emulator at `base` (the shop setting is still rendered into every URL).
fn source(
    base: &str,
    settings: &[(&str, &str)],
) -> gapless_providers::declarative::connector::DeclarativeSource {
    vendor::built_in(
        "shopify",
        &[(
            "https://{settings.shop}.myshopify.com",
            &format!("{base}/{{settings.shop}}"),
        )],
        (CLIENT_ID, CLIENT_SECRET),
        settings,
    )
}

#[tokio::test]
async fn shopify_frozen_shop_heals_on_the_probe_an_uninstall_needs_a_consent_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = |d: i64| start + Duration::days(d - 1);
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (e, base) = emulator(clock.clone()).await;
    let source = Arc::new(source(&base, &[("shop", "acme")]));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    // A redirect that is not Shopify's (its shop changed, or its signature dropped) is
    // refused before its code is spent.
    for tamper in ["shop=acme.myshopify.com", "hmac="] {
        let (pending, callback) = vendor::consent(&engine, "shopify").await;
        let pairs: Vec<(String, String)> = callback
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| !(tamper == "hmac=" && k == "hmac"))
            .map(|(k, v)| {
                if k == "shop" && tamper.starts_with("shop") {
                    (k, "evil.myshopify.com".to_string())
                } else {
                    (k, v)
                }
            })
            .collect();
        let mut forged = callback.clone();
        forged.query_pairs_mut().clear().extend_pairs(&pairs);
        let refused = engine
            .connect_identity(&pending, &forged, "forged", vec![], &engine.caller())
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("not signed by the provider"),
            "{tamper}: {refused}"
        );
    }
    let forged_consents = e.world.lock().unwrap().consents;
    let identity = vendor::connect(&engine, "shopify", "acme-shop", "owner@acme.example").await;
    assert_eq!(identity.upstream_account_id.as_deref(), Some(SHOP_ID));
    let pipeline =
        vendor::daily_pipeline(&engine, identity.id, ("acme", &["orders"]), 7, start).await;
    let run = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=3 {
        run(d).await.unwrap();
    }
    // Throttled once on day 4: the run waits, no incident.
    e.world.lock().unwrap().throttle_next = true;
    run(4).await.unwrap();
    assert_eq!(e.world.lock().unwrap().throttled, 1);
    assert!(engine.store().incidents(None).await.unwrap().is_empty());
    run(5).await.unwrap();

    // `gapless simulate` of a 65-day outage from now (day 6, 01:00): Shopify shows 60 days
    // of orders, so days 6 to 11 would be lost; reauthorizing by 2026-03-06 23:00 loses
    // none.
    let forecast = engine
        .simulate_outage(identity.id, clock.now(), Duration::days(65))
        .await
        .unwrap();
    let forecast = &forecast[0].2;
    assert_eq!(
        (forecast.lost.first().map(|w| w.start), forecast.lost.len()),
        (Some(day(6)), 6)
    );
    assert_eq!(forecast.recovered.len(), 59);
    assert_eq!(
        forecast.reauthorize_by,
        Some(Utc.with_ymd_and_hms(2026, 3, 6, 23, 0, 0).unwrap())
    );

    // The shop is frozen (an unpaid bill) on day 6.
    e.world.lock().unwrap().frozen = true;
    run(6).await.unwrap();
    let incidents = engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].failure.cause, FailureCause::AccountBlocked);
    run(7).await.unwrap();
    // The owner pays on day 8: the next probe finds the shop answering again, the
    // incident closes without a consent, and the frozen days are back-filled.
    e.world.lock().unwrap().frozen = false;
    for d in 8..=9 {
        run(d).await.unwrap();
    }
    clock.set(clock.now() + Duration::hours(2));
    engine.tick().await.unwrap();
    let incidents = engine.store().incidents(None).await.unwrap();
    assert!(
        incidents.iter().all(|i| i.closed_at.is_some()),
        "{incidents:?}"
    );
    let identity = engine.store().identity(identity.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
    assert_eq!(
        e.world.lock().unwrap().consents,
        forged_consents + 1,
        "no new consent"
    );

    // The owner uninstalls the app on day 10: its tokens answer 401 and its refresh
    // token is refused. One incident that needs a new consent; after it, the days are
    // back-filled.
    {
        let mut world = e.world.lock().unwrap();
        world.tokens.clear();
        world.refresh = None;
    }
    run(10).await.unwrap();
    let open: Vec<_> = engine
        .store()
        .incidents(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.closed_at.is_none())
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(
        matches!(open[0].failure.cause, FailureCause::ReauthRequired { .. }),
        "{:?}",
        open[0].failure
    );
    run(11).await.unwrap();
    clock.set(day(12) + Duration::hours(10));
    let (pending, callback) = vendor::consent(&engine, "shopify").await;
    engine
        .reauthorize(identity.id, &pending, &callback)
        .await
        .unwrap();
    engine.tick().await.unwrap();

    vendor::assert_days_equal_truth((&engine, &source), &pipeline, "orders", 1..=11, |date| {
        rows_of("acme", date)
    })
    .await;
    let world = e.world.lock().unwrap();
    assert!(world.refused.is_empty(), "{:?}", world.refused);
    assert_eq!(world.reused, 0, "a spent refresh token was presented again");
    assert_eq!(world.past_the_end, 0, "a page after hasNextPage: false");
    assert!(world.spent.len() >= 8, "refreshes: {}", world.spent.len());
}

/// One installation of the app reaches many shops: the shop is the identity's own setting,
/// given when it is connected (`identity add --setting shop=…`), not one provider entry per
/// shop. Each identity's consent, tokens, probes and reports go to its own shop; one shop
/// uninstalling the app stops only that shop's pipeline, and its reauthorization goes
/// back to that shop.
#[tokio::test]
async fn one_shopify_installation_reaches_two_shops_each_identity_at_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = VirtualClock::new(start + Duration::hours(9));
    let (shops, base) = shops(clock.clone(), &["acme", "bolt"]).await;
    let (acme, bolt) = (&shops[0], &shops[1]);
    // No shop in the installation's settings.
    let source = Arc::new(source(&base, &[]));
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    let redirect = engine.config().redirect_uri();
    let at = |shop: &str| gapless_core::IdentitySettings {
        region: None,
        values: [("shop".to_string(), shop.to_string())].into(),
    };

    // A consent that names no shop, or a setting Shopify does not take per identity, is
    // refused before anyone is sent anywhere.
    let none = engine
        .begin_authorization("shopify")
        .unwrap_err()
        .to_string();
    assert!(none.contains("needs each identity's own shop"), "{none}");
    let mut wrong = at("acme");
    wrong.values.insert("api_version".into(), "2020-01".into());
    let wrong = engine
        .begin_authorization_to("shopify", &wrong, &redirect)
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("api_version is not a setting shopify takes per identity"),
        "{wrong}"
    );
    let region = gapless_core::IdentitySettings {
        region: Some("eu".into()),
        ..at("acme")
    };
    let region = engine
        .begin_authorization_to("shopify", &region, &redirect)
        .unwrap_err()
        .to_string();
    assert!(region.contains("has no region \"eu\""), "{region}");

    let mut identities = Vec::new();
    for (shop, label) in [("acme", "acme-shop"), ("bolt", "bolt-shop")] {
        let pending = engine
            .begin_authorization_to("shopify", &at(shop), &redirect)
            .unwrap();
        assert!(
            pending
                .url
                .starts_with(&format!("{base}/{shop}/admin/oauth/authorize?")),
            "{}",
            pending.url
        );
        let (pending, callback) = vendor::follow(pending).await;
        let (identity, _) = engine
            .connect_identity(&pending, &callback, label, vec![], &engine.caller())
            .await
            .unwrap();
        assert_eq!(identity.upstream_account_id, Some(shop_id(shop)));
        identities.push(identity);
    }
    // The shop is kept with the identity, and read back with it.
    let stored = engine.store().identity(identities[1].id).await.unwrap();
    assert_eq!(stored.settings, at("bolt"));
    let acme_orders =
        vendor::daily_pipeline(&engine, identities[0].id, ("acme", &["orders"]), 1, start).await;
    let bolt_orders =
        vendor::daily_pipeline(&engine, identities[1].id, ("bolt", &["orders"]), 1, start).await;
    let run = |d: i64| vendor::daily_tick(&engine, &clock, start, d);
    for d in 1..=3 {
        run(d).await.unwrap();
    }
    // Bolt's owner uninstalls the app on day 4: only Bolt's identity has an incident,
    // Acme's pipeline keeps loading.
    {
        let mut world = bolt.world.lock().unwrap();
        world.tokens.clear();
        world.refresh = None;
    }
    for d in 4..=5 {
        run(d).await.unwrap();
    }
    let incidents = engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].identity, identities[1].id);
    let acme_ledger = engine.store().ledger(acme_orders.id).await.unwrap();
    assert_eq!(
        acme_ledger
            .iter()
            .filter(|e| matches!(e.state, gapless_core::WindowState::Loaded { .. }))
            .count(),
        5
    );
    // The reauthorization goes to Bolt's own consent page, and back-fills Bolt's days.
    let stored = engine.store().identity(identities[1].id).await.unwrap();
    let pending = engine.begin_reauthorization(&stored).unwrap();
    assert!(
        pending
            .url
            .starts_with(&format!("{base}/bolt/admin/oauth/authorize?")),
        "{}",
        pending.url
    );
    let (pending, callback) = vendor::follow(pending).await;
    engine
        .reauthorize(identities[1].id, &pending, &callback)
        .await
        .unwrap();
    // A consent given for Acme does not reauthorize Bolt's identity.
    let (acme_pending, acme_callback) = vendor::follow(
        engine
            .begin_authorization_to("shopify", &at("acme"), &redirect)
            .unwrap(),
    )
    .await;
    let other = engine
        .reauthorize(identities[1].id, &acme_pending, &acme_callback)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        other.contains("is at shop bolt, the consent was for shop acme"),
        "{other}"
    );
    run(6).await.unwrap();
    for (pipeline, shop) in [(&acme_orders, "acme"), (&bolt_orders, "bolt")] {
        vendor::assert_days_equal_truth((&engine, &source), pipeline, "orders", 1..=6, |date| {
            rows_of(shop, date)
        })
        .await;
    }
    for shop in &shops {
        let world = shop.world.lock().unwrap();
        assert!(
            world.refused.is_empty(),
            "{}: {:?}",
            world.shop,
            world.refused
        );
        assert_eq!(
            world.reused, 0,
            "{}: a spent refresh token again",
            world.shop
        );
    }
    assert_eq!(acme.world.lock().unwrap().consents, 2);
    assert_eq!(bolt.world.lock().unwrap().consents, 2);
}
