//! The built-in `meta_ads` and `facebook_pages` definitions run through the engine, from
//! consent to back-filled truth through Meta's own revocation error, against an emulator of
//! the Graph API as documented at
//! - https://developers.facebook.com/documentation/facebook-login/guides/access-tokens/get-long-lived
//!   (the login dialog's code traded at `/oauth/access_token`, the short-lived user token
//!   traded for a long-lived one with `grant_type=fb_exchange_token`);
//! - https://developers.facebook.com/docs/marketing-api/insights (`GET /act_{id}/insights`
//!   with `level`, `time_increment=1`, `fields`, `time_range={"since","until"}`; metrics as
//!   strings; `paging.next` until it is absent) and `GET /me/adaccounts`;
//! - https://developers.facebook.com/docs/pages-api/manage-pages (`GET /me/accounts`: the
//!   Pages the person can act on, each with its Page access token) and
//!   https://developers.facebook.com/docs/graph-api/reference/insights (Page Insights with
//!   the Page's token only; one record per metric, each value stamped with its day's
//!   `end_time`, the first `since` + 1 day at 08:00 GMT; at most 90 days a request);
//! - https://developers.facebook.com/docs/graph-api/guides/error-handling (the envelope;
//!   190 with subcode 458 once the person removed the app).

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
    routing::get,
};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Clock, FailureCause, ReauthReason, Value, VirtualClock};
use gapless_engine::Engine;
use gapless_providers::declarative::connector::DeclarativeSource;
use serde_json::json;

const VERSION: &str = "v25.0";
const APP_ID: &str = "123456789012345";
const APP_SECRET: &str = "emulated-meta-secret";
const USER: &str = "10158000";
const AD_ACCOUNT: &str = "act_1234";
const PAGE: &str = "1001";
/// The emulator serves at most this many insights rows a page, whatever `limit` asks.
const ROWS_PER_PAGE: usize = 3;
const CAMPAIGNS: [&str; 2] = ["6001", "6002"];
const METRICS: [&str; 2] = ["page_post_engagements", "page_views_total"];

#[derive(Default)]
struct World {
    codes: BTreeSet<String>,
    short_tokens: BTreeSet<String>,
    user_tokens: BTreeSet<String>,
    issued: u32,
    /// Pages the person lost their task on: not listed by /me/accounts.
    removed_pages: BTreeSet<String>,
    /// Requests the emulator refused as the API would (none are expected).
    refused: Vec<String>,
    /// Insights requests served: (node, first day, last day).
    served: Vec<(String, NaiveDate, NaiveDate)>,
    /// The business use case's usage (percent) the insights answers report, if any.
    usage: Option<u32>,
}

#[derive(Clone)]
struct Graph {
    world: Arc<Mutex<World>>,
    base: Arc<Mutex<String>>,
}

fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({"message": message, "type": "OAuthException", "code": code,
        "fbtrace_id": "AxYz123"});
    if let Some(subcode) = subcode {
        error["error_subcode"] = subcode.into();
    }
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

fn page_token(page: &str, user_token: &str) -> String {
    format!("{user_token}-page-{page}")
}

impl Graph {
    fn refuse(&self, why: String) -> Response {
        self.world.lock().unwrap().refused.push(why.clone());
        graph_error(100, None, &format!("(#100) Invalid parameter: {why}"))
    }

    /// The user token a request carries, if it is a live one.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        bearer(headers).filter(|t| self.world.lock().unwrap().user_tokens.contains(t))
    }

    /// Graph's answer to a user token that is not live: 190/458 for a token of an app the
    /// person removed (every token ends with it), 190 otherwise.
    fn user_refused(headers: &HeaderMap) -> Response {
        if bearer(headers).is_some_and(|t| t.starts_with("EAAB-long-")) {
            graph_error(
                190,
                Some(458),
                "Error validating access token: The user has not authorized application 123456789012345.",
            )
        } else {
            graph_error(190, None, "Invalid OAuth access token.")
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    vendor::bearer(headers).map(str::to_string)
}

/// The login dialog: the person approves; back to the redirect URI with a code.
async fn dialog(State(g): State<Graph>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != APP_ID || get("redirect_uri").is_empty() {
        return g.refuse("client_id and redirect_uri are required".into());
    }
    let mut world = g.world.lock().unwrap();
    world.issued += 1;
    let code = format!("code-{}", world.issued);
    world.codes.insert(code.clone());
    vendor::redirect_back(
        &get("redirect_uri"),
        &[("code", code.as_str()), ("state", get("state").as_str())],
    )
}

/// The code for a short-lived token; a short-lived token for a long-lived one.
async fn access_token(
    State(g): State<Graph>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != APP_ID || field("client_secret") != APP_SECRET {
        return graph_error(101, None, "Error validating application.");
    }
    let mut world = g.world.lock().unwrap();
    world.issued += 1;
    let n = world.issued;
    if field("grant_type") == "fb_exchange_token" {
        if !world.short_tokens.remove(&field("fb_exchange_token")) {
            return graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        let token = format!("EAAB-long-{n}");
        world.user_tokens.insert(token.clone());
        return Json(
            json!({"access_token": token, "token_type": "bearer", "expires_in": 5_183_944}),
        )
        .into_response();
    }
    if !world.codes.remove(&field("code")) {
        return graph_error(100, Some(36009), "This authorization code has been used.");
    }
    let token = format!("EAAB-short-{n}");
    world.short_tokens.insert(token.clone());
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": 5400})).into_response()
}

async fn me(State(g): State<Graph>, headers: HeaderMap) -> Response {
    match g.user(&headers) {
        Some(_) => Json(json!({"id": USER, "name": "Ana Example"})).into_response(),
        None => Graph::user_refused(&headers),
    }
}

async fn ad_accounts(State(g): State<Graph>, headers: HeaderMap) -> Response {
    match g.user(&headers) {
        Some(_) => Json(json!({"data": [{"id": AD_ACCOUNT, "name": "Acme Ads"}],
            "paging": {"cursors": {"before": "a", "after": "a"}}}))
        .into_response(),
        None => Graph::user_refused(&headers),
    }
}

async fn pages(State(g): State<Graph>, headers: HeaderMap) -> Response {
    let Some(user) = g.user(&headers) else {
        return Graph::user_refused(&headers);
    };
    let world = g.world.lock().unwrap();
    let data: Vec<_> = [(PAGE, "Acme Corp"), ("1002", "Acme Outlet")]
        .iter()
        .filter(|(id, _)| !world.removed_pages.contains(*id))
        .map(|(id, name)| {
            json!({"id": id, "name": name, "access_token": page_token(id, &user),
            "category": "Retail Company", "tasks": ["ANALYZE", "MANAGE"]})
        })
        .collect();
    Json(json!({"data": data, "paging": {"cursors": {"before": "a", "after": "b"}}}))
        .into_response()
}

/// The token of a request about `page`: that Page's, given to a live user token.
fn page_refusal(g: &Graph, headers: &HeaderMap, page: &str) -> Option<Response> {
    let token = bearer(headers).unwrap_or_default();
    let world = g.world.lock().unwrap();
    if world.user_tokens.contains(&token) {
        return Some(graph_error(
            190,
            None,
            "(#190) This method must be called with a Page Access Token",
        ));
    }
    let live = world
        .user_tokens
        .iter()
        .any(|u| page_token(page, u) == token)
        && !world.removed_pages.contains(page);
    (!live).then(|| {
        graph_error(
            190,
            Some(458),
            "Error validating access token: The user has not authorized application 123456789012345.",
        )
    })
}

async fn node(State(g): State<Graph>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if id == AD_ACCOUNT {
        return match g.user(&headers) {
            Some(_) => Json(json!({"id": AD_ACCOUNT, "name": "Acme Ads"})).into_response(),
            None => Graph::user_refused(&headers),
        };
    }
    if let Some(refused) = page_refusal(&g, &headers, &id) {
        return refused;
    }
    Json(json!({"id": id, "name": "Acme Corp"})).into_response()
}

/// The truth of the ad account: two campaigns, numbers that follow from the day.
fn campaign_rows(day: NaiveDate) -> Vec<serde_json::Value> {
    let n = u64::from(day.ordinal());
    CAMPAIGNS
        .iter()
        .map(|c| {
            json!({"campaign_id": c, "campaign_name": format!("Campaign {c}"),
                "impressions": (n * 10 + 3).to_string(), "clicks": n.to_string(),
                "spend": format!("{n}.25"), "date_start": day.to_string(), "date_stop": day.to_string()})
        })
        .collect()
}

/// The truth of the Page: a metric's value on a day.
fn page_value(metric: &str, day: NaiveDate) -> i64 {
    i64::from(day.ordinal()) * 11 + i64::try_from(metric.len()).unwrap()
}

async fn insights(
    State(g): State<Graph>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if id.starts_with("act_") {
        ad_insights(&g, &headers, &id, &q)
    } else {
        page_insights(&g, &headers, &id, &q)
    }
}

fn ad_insights(g: &Graph, headers: &HeaderMap, id: &str, q: &HashMap<String, String>) -> Response {
    if g.user(headers).is_none() {
        return Graph::user_refused(headers);
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let known = [
        "campaign_id",
        "campaign_name",
        "impressions",
        "clicks",
        "spend",
    ];
    if get("level") != "campaign" || get("time_increment") != "1" {
        return g.refuse(format!(
            "level {:?}, time_increment {:?}",
            get("level"),
            get("time_increment")
        ));
    }
    if let Some(unknown) = get("fields").split(',').find(|f| !known.contains(f)) {
        return g.refuse(format!("unknown field {unknown}"));
    }
    let range: Option<HashMap<String, String>> = serde_json::from_str(&get("time_range")).ok();
    let day = |k: &str| {
        range
            .as_ref()
            .and_then(|r| r.get(k))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(since), Some(until)) = (day("since"), day("until")) else {
        return g.refuse(format!("time_range {:?}", get("time_range")));
    };
    let after: usize = get("after").parse().unwrap_or(0);
    if after == 0 {
        g.world
            .lock()
            .unwrap()
            .served
            .push((id.into(), since, until));
    }
    let rows: Vec<_> = since
        .iter_days()
        .take_while(|d| *d <= until)
        .flat_map(campaign_rows)
        .collect();
    let this: Vec<_> = rows
        .iter()
        .skip(after)
        .take(ROWS_PER_PAGE)
        .cloned()
        .collect();
    let mut paging = json!({"cursors": {"before": "x", "after": "y"}});
    if after + ROWS_PER_PAGE < rows.len() {
        let base = g.base.lock().unwrap().clone();
        let mut next = url::Url::parse(&format!("{base}/{VERSION}/{id}/insights")).unwrap();
        for (k, v) in q.iter().filter(|(k, _)| *k != "after") {
            next.query_pairs_mut().append_pair(k, v);
        }
        next.query_pairs_mut()
            .append_pair("after", &(after + ROWS_PER_PAGE).to_string());
        paging["next"] = next.to_string().into();
    }
    let mut answer = Json(json!({"data": this, "paging": paging})).into_response();
    if let Some(percent) = g.world.lock().unwrap().usage {
        let usage = json!({ id.trim_start_matches("act_"): [{"type": "ads_insights",
            "call_count": percent, "total_cputime": 10, "total_time": 10,
            "estimated_time_to_regain_access": 7}]});
        answer.headers_mut().insert(
            "x-business-use-case-usage",
            usage.to_string().parse().unwrap(),
        );
    }
    answer
}

fn page_insights(
    g: &Graph,
    headers: &HeaderMap,
    page: &str,
    q: &HashMap<String, String>,
) -> Response {
    if let Some(refused) = page_refusal(g, headers, page) {
        return refused;
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let metrics: Vec<String> = get("metric").split(',').map(str::to_string).collect();
    if let Some(unknown) = metrics.iter().find(|m| !METRICS.contains(&m.as_str())) {
        return g.refuse(format!(
            "The value must be a valid insights metric ({unknown})"
        ));
    }
    let day = |k: &str| NaiveDate::parse_from_str(&get(k), "%Y-%m-%d").ok();
    let (Some(since), Some(until)) = (day("since"), day("until")) else {
        return g.refuse("since and until must be dates".into());
    };
    if get("period") != "day" || until <= since || (until - since).num_days() > 90 {
        return g.refuse(format!(
            "period {:?}, since {since}, until {until}",
            get("period")
        ));
    }
    g.world
        .lock()
        .unwrap()
        .served
        .push((page.into(), since, until));
    let data: Vec<_> = metrics
        .iter()
        .map(|m| {
            let values: Vec<_> = since
                .iter_days()
                .take_while(|d| *d < until)
                .map(|d| {
                    json!({"value": page_value(m, d),
                    "end_time": format!("{}T08:00:00+0000", d + Duration::days(1))})
                })
                .collect();
            json!({"name": m, "period": "day", "values": values, "title": m,
                "id": format!("{page}/insights/{m}/day")})
        })
        .collect();
    Json(json!({"data": data, "paging": {
        "next": format!("https://graph.facebook.com/{VERSION}/{page}/insights?since={until}")}}))
    .into_response()
}

async fn emulator() -> (Graph, String) {
    let g = Graph {
        world: Arc::default(),
        base: Arc::default(),
    };
    let api = Router::new()
        .route("/dialog/oauth", get(dialog))
        .route("/oauth/access_token", axum::routing::post(access_token))
        .route("/me", get(me))
        .route("/me/adaccounts", get(ad_accounts))
        .route("/me/accounts", get(pages))
        .route("/{id}", get(node))
        .route("/{id}/insights", get(insights))
        .with_state(g.clone());
    let base = vendor::serve(Router::new().nest(&format!("/{VERSION}"), api)).await;
    *g.base.lock().unwrap() = base.clone();
    (g, base)
}

struct Scenario {
    g: Graph,
    engine: Engine,
    source: Arc<DeclarativeSource>,
    clock: VirtualClock,
    start: DateTime<Utc>,
    identity: gapless_core::Identity,
    pipeline: gapless_core::Pipeline,
}

impl Scenario {
    async fn connected(
        dir: &std::path::Path,
        provider: &str,
        resource: &str,
        stream: &str,
    ) -> Self {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = VirtualClock::new(start + Duration::hours(9));
        let (g, base) = emulator().await;
        let source = Arc::new(vendor::built_in(
            provider,
            &[
                ("https://graph.facebook.com", &base),
                ("https://www.facebook.com", &base),
            ],
            (APP_ID, APP_SECRET),
            &[],
        ));
        let engine = vendor::engine(dir, &clock, source.clone()).await;
        let identity = vendor::connect(&engine, provider, "acme-meta", "ana@acme.example").await;
        assert_eq!(identity.upstream_account_id.as_deref(), Some(USER));
        let pipeline =
            vendor::daily_pipeline(&engine, identity.id, (resource, &[stream]), 2, start).await;
        Self {
            g,
            engine,
            source,
            clock,
            start,
            identity,
            pipeline,
        }
    }

    fn day(&self, d: i64) -> DateTime<Utc> {
        self.start + Duration::days(d - 1)
    }

    /// The tick an hour after day `d` closed.
    async fn run(&self, d: i64) {
        self.clock.set(self.day(d + 1) + Duration::hours(1));
        self.engine.tick().await.unwrap();
    }

    /// Days 1 to 5 loaded; the person removes the app on day 6 (every token answers
    /// 190/458); days 6 to 8 tick; a new consent on day 9 and one tick.
    async fn outage_and_reconsent(&self) {
        for d in 1..=5 {
            self.run(d).await;
        }
        self.g.world.lock().unwrap().user_tokens.clear();
        for d in 6..=8 {
            self.run(d).await;
        }
        let incidents = self.engine.store().incidents(None).await.unwrap();
        assert_eq!(
            incidents.len(),
            1,
            "one incident for the outage: {incidents:?}"
        );
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
            Some("190/458")
        );
        let mails = vendor::mails(&self.engine);
        let failures: Vec<_> = mails
            .iter()
            .filter(|(s, _)| s.starts_with("Authorization Failure"))
            .collect();
        assert_eq!(failures.len(), 1, "{mails:?}");
        assert!(
            failures[0].1.contains("Approve the app again") && failures[0].1.contains("/reauth/"),
            "the cause's fix and the reauthorize link: {}",
            failures[0].1
        );
        self.clock.set(self.day(9) + Duration::hours(10));
        let (pending, callback) = vendor::consent(&self.engine, &self.identity.provider).await;
        self.engine
            .reauthorize(self.identity.id, &pending, &callback)
            .await
            .unwrap();
        self.engine.tick().await.unwrap();
        let world = self.g.world.lock().unwrap();
        assert!(world.refused.is_empty(), "{:?}", world.refused);
    }
}

#[tokio::test]
async fn meta_ads_app_removed_then_reconsented_backfills_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::connected(dir.path(), "meta_ads", AD_ACCOUNT, "campaign_insights").await;
    s.outage_and_reconsent().await;
    vendor::assert_days_equal_truth(
        (&s.engine, &s.source),
        &s.pipeline,
        "campaign_insights",
        1..=8,
        |date| {
            campaign_rows(date)
                .iter()
                .map(|r| {
                    let int = |k: &str| Value::Integer(r[k].as_str().unwrap().parse().unwrap());
                    vec![
                        Value::Date(date),
                        Value::Text(r["campaign_id"].as_str().unwrap().into()),
                        Value::Text(r["campaign_name"].as_str().unwrap().into()),
                        int("impressions"),
                        int("clicks"),
                        Value::Text(r["spend"].as_str().unwrap().into()),
                    ]
                })
                .collect()
        },
    )
    .await;
}

fn page_truth(date: NaiveDate) -> Vec<gapless_core::Row> {
    let mut rows: Vec<_> = METRICS
        .iter()
        .map(|m| {
            vec![
                Value::Date(date),
                Value::Text((*m).into()),
                Value::Integer(page_value(m, date)),
            ]
        })
        .collect();
    rows.sort_by_key(|r| format!("{:?}", r.get(1)));
    rows
}

#[tokio::test]
async fn facebook_pages_app_removed_then_reconsented_backfills_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::connected(dir.path(), "facebook_pages", PAGE, "page_insights").await;
    s.outage_and_reconsent().await;
    vendor::assert_days_equal_truth(
        (&s.engine, &s.source),
        &s.pipeline,
        "page_insights",
        1..=8,
        page_truth,
    )
    .await;
    // Each request asked for whole days the Page keeps, never more than 90.
    let world = s.g.world.lock().unwrap();
    assert!(world.served.iter().all(|(node, since, until)| node == PAGE
        && until > since
        && (*until - *since).num_days() <= 90));
}

#[tokio::test]
async fn a_person_removed_from_a_page_opens_one_incident_naming_the_page_while_me_works() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::connected(dir.path(), "facebook_pages", PAGE, "page_insights").await;
    for d in 1..=3 {
        s.run(d).await;
    }
    // A Page admin takes the person's task away on day 4: /me answers as before, the Page
    // is no longer in /me/accounts.
    s.g.world.lock().unwrap().removed_pages.insert(PAGE.into());
    for d in 4..=5 {
        s.run(d).await;
    }
    let incidents = s.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(
        incidents[0].failure.cause,
        FailureCause::PermissionLost,
        "{:?}",
        incidents[0].failure
    );
    let text = format!("{:?}", incidents[0].failure);
    assert!(text.contains(PAGE), "the Page is named: {text}");
    let mails = vendor::mails(&s.engine);
    assert!(
        mails.iter().any(|(subject, body)| subject.contains("Authorization Failure") && body.contains(PAGE)),
        "{mails:?}"
    );
    // The task given back on day 6: the probe sees the Page again and the missed days are
    // read with its token.
    s.g.world.lock().unwrap().removed_pages.clear();
    for d in 6..=7 {
        s.run(d).await;
    }
    vendor::assert_days_equal_truth(
        (&s.engine, &s.source),
        &s.pipeline,
        "page_insights",
        1..=7,
        page_truth,
    )
    .await;
}

#[tokio::test]
async fn an_ad_account_near_its_quota_is_left_alone_until_meta_says_it_resets() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::connected(dir.path(), "meta_ads", AD_ACCOUNT, "campaign_insights").await;
    // Forty days due at once: two requests (31 days at most each). The first answer says
    // the ad account's business use case is at 95 % of its quota, back in 7 minutes.
    s.g.world.lock().unwrap().usage = Some(95);
    s.clock.set(s.day(41) + Duration::hours(1));
    let log = s.engine.tick().await.unwrap();
    let deferred: Vec<_> = log
        .events
        .iter()
        .filter_map(|e| match e {
            gapless_engine::Event::RequestsDeferred { until, limit, .. } => {
                Some((*until, limit.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        deferred,
        vec![(
            s.clock.now() + Duration::minutes(7),
            "x-business-use-case-usage: 95% used".to_string()
        )],
        "{:?}",
        log.events
    );
    assert_eq!(
        s.g.world.lock().unwrap().served.len(),
        1,
        "the second request waits"
    );
    // Still held a minute later; asked again once Meta's time has passed.
    s.clock.advance(Duration::minutes(1));
    s.engine.tick().await.unwrap();
    assert_eq!(s.g.world.lock().unwrap().served.len(), 1);
    s.g.world.lock().unwrap().usage = None;
    s.clock.advance(Duration::minutes(7));
    s.engine.tick().await.unwrap();
    assert_eq!(s.g.world.lock().unwrap().served.len(), 2);
    let ledger = s.engine.store().ledger(s.pipeline.id).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|e| matches!(e.state, gapless_core::WindowState::Loaded { .. }))
            .count(),
        40
    );
}

/// A second daily pipeline like `like`, of `resource`.
async fn another_pipeline(
    engine: &Engine,
    like: &gapless_core::Pipeline,
    resource: &str,
) -> gapless_core::Pipeline {
    let pipeline = gapless_core::Pipeline {
        id: gapless_core::PipelineId::new(),
        name: format!("{}-{resource}", like.name),
        source_resource: resource.into(),
        ..like.clone()
    };
    engine
        .store()
        .insert_pipeline(&pipeline, engine.clock().now())
        .await
        .unwrap();
    pipeline
}

#[tokio::test]
async fn a_page_lost_stops_only_its_pipeline_until_another_page_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::connected(dir.path(), "facebook_pages", PAGE, "page_insights").await;
    let other = another_pipeline(&s.engine, &s.pipeline, "1002").await;
    let state = |p: &gapless_core::Pipeline| {
        let engine = &s.engine;
        let id = p.id;
        async move { engine.store().pipeline(id).await.unwrap().state }
    };
    let served = |page: &str| {
        s.g.world
            .lock()
            .unwrap()
            .served
            .iter()
            .filter(|(node, ..)| node == page)
            .count()
    };
    for d in 1..=3 {
        s.run(d).await;
    }
    // The person loses their task on Page 1001 on day 4: its pipeline waits; the other
    // Page's pipeline goes on, day after day.
    s.g.world.lock().unwrap().removed_pages.insert(PAGE.into());
    for d in 4..=6 {
        s.run(d).await;
    }
    let incidents = s.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].failure.cause, FailureCause::PermissionLost);
    assert_eq!(incidents[0].affected_pipelines, vec![s.pipeline.id]);
    assert!(matches!(
        state(&s.pipeline).await,
        gapless_core::PipelineState::WaitingForIdentity { .. }
    ));
    assert_eq!(state(&other).await, gapless_core::PipelineState::Active);
    vendor::assert_days_equal_truth(
        (&s.engine, &s.source),
        &other,
        "page_insights",
        1..=6,
        page_truth,
    )
    .await;

    // Day 7: the person loses Page 1002 too. Its run is refused: it was not one Page, and
    // every pipeline of the identity waits — nothing more is asked about either Page.
    s.g.world
        .lock()
        .unwrap()
        .removed_pages
        .insert("1002".into());
    s.run(7).await;
    assert!(matches!(
        state(&other).await,
        gapless_core::PipelineState::WaitingForIdentity { .. }
    ));
    let incidents = s.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1, "still one incident: {incidents:?}");
    assert!(incidents[0].affected_pipelines.contains(&other.id));
    let asked = (served(PAGE), served("1002"));
    s.run(8).await;
    assert_eq!(
        (served(PAGE), served("1002")),
        asked,
        "no request while both wait"
    );

    // Both tasks given back on day 9: the probe finds both Pages, and every missed day of
    // both pipelines is read again.
    s.g.world.lock().unwrap().removed_pages.clear();
    for d in 9..=10 {
        s.run(d).await;
    }
    for pipeline in [&s.pipeline, &other] {
        assert_eq!(state(pipeline).await, gapless_core::PipelineState::Active);
        vendor::assert_days_equal_truth(
            (&s.engine, &s.source),
            pipeline,
            "page_insights",
            1..=10,
            page_truth,
        )
        .await;
    }
}
