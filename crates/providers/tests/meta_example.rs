//! The built-in `meta_ads` definition run, not only parsed: against an emulator of
//! the Marketing API's Ads Insights endpoint and the Graph API's error envelope, as
//! documented at
//! - https://developers.facebook.com/docs/marketing-api/insights (request: `level`,
//!   `time_increment`, `time_range={"since","until"}`, `fields`, `limit`; metrics sent as
//!   strings; `paging.next` until it is absent),
//! - https://developers.facebook.com/docs/graph-api/guides/error-handling (the envelope and
//!   codes 190 with subcodes, 10 and 200–299, 4/17/32/613, 1 and 2),
//! - https://developers.facebook.com/docs/marketing-api/overview/rate-limiting (80004).
//!
//! The emulator refuses what the API refuses: an account id without `act_`, a `time_range`
//! that is not the documented JSON object of days, an unknown field, a level it does not
//! know (error 100, "Invalid parameter").

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{NaiveDate, TimeZone};
use gapless_core::{FailureCause, ReauthReason, Value, Window};
use gapless_providers::{
    ReportJob, ReportJobs, SourceConnector, declarative::connector::DeclarativeSource,
};
use gapless_vault::Credential;
use graph::{days, graph_error};
use serde_json::json;

mod graph;

const EXAMPLE: &str = include_str!("../definitions/meta_ads.toml");
const TOKEN: &str = "EAAB-long-lived";
const KNOWN_FIELDS: &[&str] = &[
    "campaign_id",
    "campaign_name",
    "adset_id",
    "adset_name",
    "ad_id",
    "ad_name",
    "impressions",
    "clicks",
    "spend",
    "date_start",
    "date_stop",
    "account_id",
];
/// The emulator serves at most this many rows a page, whatever `limit` asks.
const PAGE: usize = 4;

/// What the next insights request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    /// 190/458: the person removed the app.
    AppRemoved,
    /// 200: a permission on the ad account is gone.
    PermissionGone,
    /// 80004: too many calls to this ad account.
    AdAccountThrottled,
    /// 2: a temporary issue.
    Intermittent,
    /// The person was unassigned from the ad account: its node answers 100/33 ("does
    /// not exist, cannot be loaded due to missing permissions") while `/me` works.
    Unassigned,
    /// Served, with the business use case's usage at this many percent of its quota
    /// (`x-business-use-case-usage`, documented at
    /// https://developers.facebook.com/docs/graph-api/overview/rate-limiting: keyed by the
    /// ad account's id, `estimated_time_to_regain_access` in minutes).
    Usage(u32),
}

type Shared = Arc<Mutex<Mode>>;

/// How the next asynchronous report job (AdReportRun) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobPlan {
    /// "Job Completed" at this poll (1 = the first).
    CompletesAtPoll(u32),
    /// "Job Failed", with the v25.0+ error fields.
    Fails,
    /// "Job Running" for ever.
    NeverFinishes,
}

#[derive(Debug)]
struct JobRun {
    rows: Vec<serde_json::Value>,
    polls: u32,
    plan: JobPlan,
}

/// The report jobs the emulator was asked for.
#[derive(Debug)]
struct Jobs {
    plan: JobPlan,
    created: u32,
    runs: HashMap<String, JobRun>,
}

type SharedJobs = Arc<Mutex<Jobs>>;

#[derive(Clone)]
struct Emu {
    mode: Shared,
    jobs: SharedJobs,
}

fn invalid(message: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        &format!("(#100) Invalid parameter: {message}"),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
}

/// The truth: two campaigns, numbers that follow from the day.
/// Graph's answer to a request without the token: error 190.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    (!authorized(headers)).then(|| {
        graph_error(
            StatusCode::BAD_REQUEST,
            190,
            None,
            "Invalid OAuth access token.",
        )
    })
}

fn rows_for(day: NaiveDate) -> Vec<serde_json::Value> {
    rows_at(day, "campaign")
}

/// The truth at a level: two campaigns, each with two ad sets of one ad each; numbers that
/// follow from the day and the object.
fn rows_at(day: NaiveDate, level: &str) -> Vec<serde_json::Value> {
    let n = day.to_string().replace('-', "").parse::<u64>().unwrap() % 1000;
    let mut rows = Vec::new();
    for (c, campaign) in ["6001", "6002"].iter().enumerate() {
        let per_campaign = json!({
            "campaign_id": campaign,
            "campaign_name": format!("Campaign {campaign}"),
            "impressions": (n * 10).to_string(),
            "clicks": n.to_string(),
            "spend": format!("{n}.25"),
            "date_start": day.to_string(),
            "date_stop": day.to_string(),
        });
        if level == "campaign" {
            rows.push(per_campaign);
            continue;
        }
        for a in 0..2u64 {
            let adset = 7001 + 2 * c as u64 + a;
            let ad = adset + 1000;
            let mut row = per_campaign.clone();
            row["adset_id"] = adset.to_string().into();
            row["adset_name"] = format!("Ad set {adset}").into();
            row["impressions"] = (n * 5 + a).to_string().into();
            row["clicks"] = (n / 2 + a).to_string().into();
            row["spend"] = format!("{}.{a}0", n / 2).into();
            if level == "ad" {
                row["ad_id"] = ad.to_string().into();
                row["ad_name"] = format!("Ad {ad}").into();
            }
            rows.push(row);
        }
    }
    rows
}

async fn insights(
    State(emu): State<Emu>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    // `GET /{report_run_id}/insights`: a finished job's result.
    if !account.starts_with("act_") {
        return job_result(&emu.jobs, &account, &q, &headers);
    }
    let current = *emu.mode.lock().unwrap();
    match current {
        Mode::Serve => {}
        Mode::AppRemoved => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                190,
                Some(458),
                "Error validating access token: The user has not authorized application.",
            );
        }
        Mode::PermissionGone => {
            return graph_error(
                StatusCode::FORBIDDEN,
                200,
                None,
                "(#200) Requires ads_read permission to manage the object",
            );
        }
        Mode::AdAccountThrottled => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                80004,
                None,
                "There have been too many calls to this ad-account. Wait a bit and try again.",
            );
        }
        Mode::Intermittent => {
            return graph_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                2,
                None,
                "An unexpected error has occurred. Please retry your request later.",
            );
        }
        Mode::Unassigned => return unsupported_get(&account),
        Mode::Usage(_) => {}
    }
    let all = match requested(&account, &q) {
        Ok(all) => all,
        Err(refused) => return refused,
    };
    let mut answer = page_of(&all, &account, &q, &headers);
    if let Mode::Usage(percent) = current {
        let id = account.trim_start_matches("act_");
        let usage = json!({ id: [{"type": "ads_insights", "call_count": percent,
            "total_cputime": percent / 2, "total_time": percent / 3,
            "estimated_time_to_regain_access": 7}]});
        answer.headers_mut().insert(
            "x-business-use-case-usage",
            usage.to_string().parse().unwrap(),
        );
        answer.headers_mut().insert(
            "x-ad-account-usage",
            r#"{"acc_id_util_pct": 12.5, "reset_time_duration": 0}"#
                .parse()
                .unwrap(),
        );
    }
    answer
}

/// The rows an insights request asks for, or the Graph error refusing it.
#[allow(clippy::result_large_err)]
fn requested(
    account: &str,
    q: &HashMap<String, String>,
) -> Result<Vec<serde_json::Value>, Response> {
    let Some(id) = account.strip_prefix("act_") else {
        return Err(invalid("the ad account id needs its act_ prefix"));
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("ad account id"));
    }
    if !matches!(
        q.get("level").map(String::as_str),
        Some("account" | "campaign" | "adset" | "ad")
    ) {
        return Err(invalid("level"));
    }
    if q.get("time_increment").map(String::as_str) != Some("1") {
        return Err(invalid("time_increment must be 1 for daily rows here"));
    }
    for field in q.get("fields").map(String::as_str).unwrap_or("").split(',') {
        if !KNOWN_FIELDS.contains(&field) {
            return Err(invalid(&format!("unknown field {field}")));
        }
    }
    let Some(range) = q
        .get("time_range")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    else {
        return Err(invalid(
            "time_range must be a JSON object {\"since\":…,\"until\":…}",
        ));
    };
    let day = |key: &str| {
        range[key]
            .as_str()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let (Some(since), Some(until)) = (day("since"), day("until")) else {
        return Err(invalid("time_range since and until are days (YYYY-MM-DD)"));
    };
    if since > until {
        return Err(invalid("time_range since is after until"));
    }
    let level = q.get("level").map_or("campaign", String::as_str);
    let mut all = Vec::new();
    let mut d = since;
    while d <= until {
        all.extend(rows_at(d, level));
        d = d.succ_opt().unwrap();
    }
    Ok(all)
}

/// One page of `all` as Graph pages an edge: `limit`, `after`, `paging.next`.
fn page_of(
    all: &[serde_json::Value],
    node: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .min(PAGE);
    let offset: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<_> = all.iter().skip(offset).take(limit).cloned().collect();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": (offset + page.len()).to_string()}});
    if offset + page.len() < all.len() {
        let host = headers[header::HOST].to_str().unwrap();
        let mut next =
            url::Url::parse(&format!("http://{host}/{GRAPH_VERSION}/{node}/insights")).unwrap();
        for (k, v) in q {
            if k != "after" {
                next.query_pairs_mut().append_pair(k, v);
            }
        }
        next.query_pairs_mut()
            .append_pair("after", &(offset + page.len()).to_string());
        paging["next"] = next.to_string().into();
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

/// The ad accounts the person reaches, as documented for `GET /me/adaccounts` (an
/// `AdAccount` node's `id` is `act_<account_id>`), two a page with `paging.next`.
const AD_ACCOUNTS: &[(&str, &str)] = &[
    ("act_1234", "Acme EU"),
    ("act_5678", "Acme US"),
    ("act_9012", "Acme Brand"),
];

async fn ad_accounts(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Some(fields) = q.get("fields") else {
        // Without fields, Graph returns ids only; the definition asks for names.
        return invalid("fields is required by this emulator");
    };
    if fields
        .split(',')
        .any(|f| !["id", "name", "account_id"].contains(&f))
    {
        return invalid("(#100) Tried accessing nonexisting field");
    }
    let offset: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<_> = AD_ACCOUNTS
        .iter()
        .skip(offset)
        .take(2)
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": (offset + page.len()).to_string()}});
    if offset + page.len() < AD_ACCOUNTS.len() {
        let host = headers[header::HOST].to_str().unwrap();
        paging["next"] = format!(
            "http://{host}/{GRAPH_VERSION}/me/adaccounts?fields={fields}&limit=2&after={}",
            offset + page.len()
        )
        .into();
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

/// Graph's answer for a node the caller cannot load: code 100, subcode 33.
fn unsupported_get(id: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        Some(33),
        &format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
    )
}

/// `GET /act_<id>?fields=…`: the ad account node.
async fn ad_account(
    State(emu): State<Emu>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    // `GET /{report_run_id}`: how an AdReportRun stands.
    if !account.starts_with("act_") {
        return job_status(&emu.jobs, &account, &q);
    }
    let mode = emu.mode;
    let Some((_, name)) = AD_ACCOUNTS.iter().find(|(id, _)| *id == account) else {
        return unsupported_get(&account);
    };
    if *mode.lock().unwrap() == Mode::Unassigned {
        return unsupported_get(&account);
    }
    let fields = q.get("fields").map(String::as_str).unwrap_or("id");
    if fields
        .split(',')
        .any(|f| !["id", "name", "account_id"].contains(&f))
    {
        return invalid("(#100) Tried accessing nonexisting field");
    }
    Json(json!({"id": account, "name": name})).into_response()
}

/// `POST /act_<id>/insights` with the synchronous call's parameters: an AdReportRun.
async fn create_job(
    State(emu): State<Emu>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let rows = match requested(&account, &q) {
        Ok(rows) => rows,
        Err(refused) => return refused,
    };
    let mut jobs = emu.jobs.lock().unwrap();
    jobs.created += 1;
    let id = format!("6{:014}", jobs.created);
    let plan = jobs.plan;
    jobs.runs.insert(
        id.clone(),
        JobRun {
            rows,
            polls: 0,
            plan,
        },
    );
    Json(json!({"report_run_id": id})).into_response()
}

fn job_status(jobs: &SharedJobs, id: &str, q: &HashMap<String, String>) -> Response {
    let mut jobs = jobs.lock().unwrap();
    let Some(run) = jobs.runs.get_mut(id) else {
        return unsupported_get(id);
    };
    for field in q
        .get("fields")
        .map(String::as_str)
        .unwrap_or("id")
        .split(',')
    {
        if ![
            "id",
            "async_status",
            "async_percent_completion",
            "error_message",
            "error_code",
        ]
        .contains(&field)
        {
            return invalid("(#100) Tried accessing nonexisting field");
        }
    }
    run.polls += 1;
    let (status, percent) = match run.plan {
        JobPlan::CompletesAtPoll(n) if run.polls >= n => ("Job Completed", 100),
        JobPlan::CompletesAtPoll(_) | JobPlan::NeverFinishes => ("Job Running", 40),
        JobPlan::Fails => ("Job Failed", 0),
    };
    let mut answer = json!({"id": id, "async_status": status, "async_percent_completion": percent});
    if run.plan == JobPlan::Fails {
        answer["error_code"] = 2490547.into();
        answer["error_message"] = "Report failed, try again later".into();
    }
    Json(answer).into_response()
}

fn job_result(
    jobs: &SharedJobs,
    id: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let jobs = jobs.lock().unwrap();
    let Some(run) = jobs.runs.get(id) else {
        return unsupported_get(id);
    };
    let finished = matches!(run.plan, JobPlan::CompletesAtPoll(n) if run.polls >= n);
    if !finished {
        return invalid("(#100) the report is not ready");
    }
    page_of(&run.rows, id, q, headers)
}

/// The token a consent's code gives: short-lived ("expiring in hours").
const SHORT_TOKEN: &str = "EAAB-short-lived";

/// `POST /oauth/access_token`: a code for a short-lived user token, or — with
/// `grant_type=fb_exchange_token`, the app's id and secret — a short-lived token for a
/// long-lived one (`expires_in` 5183944 s, "about 60 days"), as documented at
/// https://developers.facebook.com/documentation/facebook-login/guides/access-tokens/get-long-lived
async fn token(Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("client_id") != Some("app-1") || field("client_secret") != Some("app-secret") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            101,
            None,
            "Error validating application.",
        );
    }
    if let Some(short) = field("fb_exchange_token") {
        if field("grant_type") != Some("fb_exchange_token") {
            return invalid("grant_type must be fb_exchange_token");
        }
        if short != SHORT_TOKEN {
            return graph_error(
                StatusCode::BAD_REQUEST,
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        return Json(json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 5183944}))
            .into_response();
    }
    match field("code") {
        Some("code-1") => {
            Json(json!({"access_token": SHORT_TOKEN, "token_type": "bearer", "expires_in": 5400}))
                .into_response()
        }
        // A consent whose token expired before it could be traded.
        Some("code-expired") => {
            Json(json!({"access_token": "EAAB-expired", "token_type": "bearer", "expires_in": 60}))
                .into_response()
        }
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            100,
            Some(36009),
            "This authorization code has been used.",
        ),
    }
}

async fn emulator() -> (String, Shared) {
    let (base, mode, _) = emulator_with_jobs(JobPlan::CompletesAtPoll(1)).await;
    (base, mode)
}

async fn emulator_with_jobs(plan: JobPlan) -> (String, Shared, SharedJobs) {
    let jobs: SharedJobs = Arc::new(Mutex::new(Jobs {
        plan,
        created: 0,
        runs: HashMap::new(),
    }));
    let mode: Shared = Arc::new(Mutex::new(Mode::Serve));
    let app = Router::new()
        .route(
            "/me",
            get(
                |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                    if let Some(refused) = unauthorized(&headers) {
                        return refused;
                    }
                    assert_eq!(q.get("fields").map(String::as_str), Some("id,name"));
                    Json(json!({"id": "10158000", "name": "Ana Example"})).into_response()
                },
            ),
        )
        .route("/me/adaccounts", get(ad_accounts))
        .route("/oauth/access_token", axum::routing::post(token))
        .route("/{account}", get(ad_account))
        .route("/{account}/insights", get(insights).post(create_job))
        .with_state(Emu {
            mode: mode.clone(),
            jobs: jobs.clone(),
        });
    // Graph API paths begin with the version the caller pins (`/v25.0/…`).
    let app = Router::new().nest(&format!("/{GRAPH_VERSION}"), app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), mode, jobs)
}

fn source(base: &str) -> DeclarativeSource {
    // Meta's hosts pointed at the emulator; the version the definition pins must be the one
    // the emulator serves.
    graph::source(EXAMPLE, base, Default::default())
}

/// The Graph API version the emulator serves: the latest of the documentation read.
const GRAPH_VERSION: &str = "v25.0";

fn credential() -> Credential {
    graph::token(TOKEN)
}

#[tokio::test]
async fn the_meta_ads_example_reads_daily_campaign_insights_page_by_page() {
    let (base, _) = emulator().await;
    let source = source(&base);
    let probe = source.probe(&credential()).await.unwrap();
    assert_eq!(probe.upstream_account_id, "10158000");
    assert_eq!(probe.upstream_account_name, "Ana Example");
    assert_eq!(
        source.list_resources(&credential()).await.unwrap().unwrap(),
        AD_ACCOUNTS
            .iter()
            .map(|(id, name)| gapless_providers::Resource::direct(*id, *name))
            .collect::<Vec<_>>(),
        "every ad account, over both pages"
    );
    assert_eq!(
        source.probe_resource(&credential(), "act_1234").await,
        Ok(())
    );

    // Three days, two campaigns: six rows over two pages of four.
    let extracted = source
        .extract(&credential(), "act_1234", "campaign_insights", days(1, 4))
        .await
        .unwrap();
    assert_eq!(extracted.requests, 2);
    let mut expected = Vec::new();
    for day in 1..=3 {
        let date = NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        for truth in rows_for(date) {
            expected.push(vec![
                Value::Date(date),
                Value::Text(truth["campaign_id"].as_str().unwrap().into()),
                Value::Text(truth["campaign_name"].as_str().unwrap().into()),
                Value::Integer(truth["impressions"].as_str().unwrap().parse().unwrap()),
                Value::Integer(truth["clicks"].as_str().unwrap().parse().unwrap()),
                Value::Text(truth["spend"].as_str().unwrap().into()),
            ]);
        }
    }
    assert_eq!(extracted.rows, expected);

    // What the API refuses, the emulator refuses: an account without act_ is some other
    // node, which has no insights (100/33).
    let failure = source
        .extract(&credential(), "1234", "campaign_insights", days(1, 2))
        .await
        .unwrap_err();
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("100/33"),
        "{failure:?}"
    );
}

/// A book of jobs in flight on a virtual clock: a pause moves the clock instead of
/// sleeping, so an hour of polling takes no time.
struct VirtualBook {
    jobs: gapless_providers::MemoryReportJobs,
    now: Mutex<chrono::DateTime<chrono::Utc>>,
    pauses: Mutex<Vec<std::time::Duration>>,
}

impl VirtualBook {
    fn new() -> Self {
        Self {
            jobs: Default::default(),
            now: Mutex::new(chrono::Utc.with_ymd_and_hms(2026, 3, 10, 6, 0, 0).unwrap()),
            pauses: Mutex::new(vec![]),
        }
    }

    fn advance(&self, by: chrono::Duration) {
        *self.now.lock().unwrap() += by;
    }
}

#[async_trait::async_trait]
impl ReportJobs for VirtualBook {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.now.lock().unwrap()
    }
    async fn find(
        &self,
        resource: &str,
        stream: &str,
        range: Window,
    ) -> Result<Option<ReportJob>, String> {
        self.jobs.find(resource, stream, range).await
    }
    async fn save(
        &self,
        resource: &str,
        stream: &str,
        range: Window,
        job: &ReportJob,
    ) -> Result<(), String> {
        self.jobs.save(resource, stream, range, job).await
    }
    async fn forget(&self, resource: &str, stream: &str, range: Window) -> Result<(), String> {
        self.jobs.forget(resource, stream, range).await
    }
    async fn pause(&self, for_: std::time::Duration) {
        self.pauses.lock().unwrap().push(for_);
        self.advance(chrono::Duration::from_std(for_).unwrap());
    }
}

const ASYNC: &str = "campaign_insights_async";

#[tokio::test]
async fn an_async_insights_job_is_created_polled_and_read_page_by_page() {
    let (base, _, jobs) = emulator_with_jobs(JobPlan::CompletesAtPoll(3)).await;
    let source = source(&base);
    let book = VirtualBook::new();
    let extracted = source
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap();
    let synchronous = source
        .extract(&credential(), "act_1234", "campaign_insights", days(1, 4))
        .await
        .unwrap();
    assert_eq!(
        extracted.rows, synchronous.rows,
        "the same rows as the sync call"
    );
    // One creation, three polls, two result pages; every one charged.
    assert_eq!(extracted.requests, 1 + 3 + 2);
    assert_eq!(
        *book.pauses.lock().unwrap(),
        vec![
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10)
        ],
        "waits between polls double"
    );
    assert_eq!(jobs.lock().unwrap().created, 1);
    assert_eq!(
        book.find("act_1234", ASYNC, days(1, 4).span).await.unwrap(),
        None,
        "a job whose result was read is forgotten"
    );
}

#[tokio::test]
async fn a_failed_async_job_is_a_window_failure_with_metas_words_and_is_not_kept() {
    let (base, _, _) = emulator_with_jobs(JobPlan::Fails).await;
    let source = source(&base);
    let book = VirtualBook::new();
    let failure = source
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::BadAnswer, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("report_job_failed"));
    let message = failure.provider_message.unwrap_or_default();
    assert!(
        message.contains("Job Failed") && message.contains("Report failed, try again later"),
        "{message}"
    );
    assert_eq!(
        book.find("act_1234", ASYNC, days(1, 4).span).await.unwrap(),
        None
    );
}

/// A job still running when a run has polled long enough leaves its windows waiting, and
/// the next run — after a restart, with a new connector — polls the same job; one that
/// outlives max_wait is abandoned, and only then is a new one asked for.
#[tokio::test]
async fn a_slow_async_job_is_resumed_not_duplicated_and_abandoned_after_max_wait() {
    let (base, _, jobs) = emulator_with_jobs(JobPlan::NeverFinishes).await;
    let book = VirtualBook::new();
    let failure = source(&base)
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::ReportPending, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("report_job_pending"));
    let kept = book
        .find("act_1234", ASYNC, days(1, 4).span)
        .await
        .unwrap()
        .expect("the job is kept");
    // The next run, from a new connector (a restart), polls the same job.
    book.advance(chrono::Duration::minutes(20));
    let again = source(&base)
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap_err();
    assert_eq!(again.provider_code.as_deref(), Some("report_job_pending"));
    assert_eq!(jobs.lock().unwrap().created, 1, "never a second job");
    assert_eq!(
        book.find("act_1234", ASYNC, days(1, 4).span)
            .await
            .unwrap()
            .map(|j| j.id),
        Some(kept.id.clone())
    );
    // Past the hour: abandoned and forgotten; the run after asks for a new one.
    book.advance(chrono::Duration::hours(1));
    let abandoned = source(&base)
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap_err();
    assert_eq!(
        abandoned.provider_code.as_deref(),
        Some("report_job_abandoned")
    );
    assert!(
        abandoned
            .provider_message
            .as_deref()
            .is_some_and(|m| m.contains(&kept.id) && m.contains("1h")),
        "{abandoned:?}"
    );
    assert_eq!(
        book.find("act_1234", ASYNC, days(1, 4).span).await.unwrap(),
        None
    );
    jobs.lock().unwrap().plan = JobPlan::CompletesAtPoll(1);
    let loaded = source(&base)
        .extract_with_jobs(&credential(), "act_1234", ASYNC, days(1, 4), &book)
        .await
        .unwrap();
    assert_eq!(loaded.rows.len(), 6);
    assert_eq!(jobs.lock().unwrap().created, 2);
}

#[tokio::test]
async fn the_meta_ads_example_classifies_graph_errors_by_code_with_the_built_in_table() {
    let (base, mode) = emulator().await;
    let source = source(&base);
    for (set, cause, code) in [
        (
            Mode::AppRemoved,
            FailureCause::ReauthRequired {
                reason: ReauthReason::Revoked,
            },
            "190/458",
        ),
        (Mode::PermissionGone, FailureCause::PermissionLost, "200"),
        (
            Mode::AdAccountThrottled,
            FailureCause::RateLimited {
                retry_after_secs: None,
            },
            "80004",
        ),
        (Mode::Intermittent, FailureCause::Transient, "2"),
    ] {
        *mode.lock().unwrap() = set;
        let failure = source
            .extract(&credential(), "act_1234", "campaign_insights", days(1, 2))
            .await
            .unwrap_err();
        assert_eq!(failure.cause, cause, "{set:?}: {failure:?}");
        assert_eq!(failure.provider_code.as_deref(), Some(code), "{set:?}");
    }
}

/// Unassigned from an ad account while `/me` still answers: the resource probe says so,
/// as Meta's 100/33, a lost permission.
#[tokio::test]
async fn the_meta_ads_resource_probe_finds_an_unassigned_ad_account_while_me_works() {
    let (base, mode) = emulator().await;
    let source = source(&base);
    *mode.lock().unwrap() = Mode::Unassigned;
    assert_eq!(
        source
            .probe(&credential())
            .await
            .unwrap()
            .upstream_account_id,
        "10158000",
        "who-am-I still works"
    );
    let failure = source
        .probe_resource(&credential(), "act_1234")
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost, "{failure:?}");
    assert_eq!(failure.provider_code.as_deref(), Some("100/33"));
    assert!(
        failure
            .provider_message
            .as_deref()
            .is_some_and(|m| m.contains("act_1234")),
        "{failure:?}"
    );
}

/// The consent's short-lived token is traded at once for the long-lived one, which is what
/// is kept, with its 60-day end.
#[tokio::test]
async fn the_consents_short_lived_token_is_traded_for_a_long_lived_one() {
    let (base, _) = emulator().await;
    let source = source(&base);
    let now = chrono::Utc.with_ymd_and_hms(2026, 3, 10, 6, 0, 0).unwrap();
    let tokens = source
        .exchange_code("code-1", "", "http://127.0.0.1/callback", now)
        .await
        .unwrap();
    assert_eq!(tokens.access_token.expose_secret(), TOKEN);
    assert_eq!(
        tokens.access_expires_at,
        Some(now + chrono::Duration::seconds(5_183_944))
    );
    // A code already spent is refused before any trade, read with the Graph table.
    let refused = source
        .exchange_code("code-1-again", "", "http://127.0.0.1/callback", now)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, gapless_providers::TokenError::Refused(f) if f.provider_code.as_deref() == Some("100/36009")),
        "{refused:?}"
    );
}

/// A short-lived token that expired before the trade is refused as Meta says (190/463):
/// the person consents again.
#[tokio::test]
async fn a_short_lived_token_that_cannot_be_traded_needs_a_new_consent() {
    let (base, _) = emulator().await;
    let now = chrono::Utc.with_ymd_and_hms(2026, 3, 10, 6, 0, 0).unwrap();
    let refused = source(&base)
        .exchange_code("code-expired", "", "http://127.0.0.1/callback", now)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, gapless_providers::TokenError::Refused(f) if f.cause == FailureCause::ReauthRequired { reason: ReauthReason::Expired }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_business_use_case_nearly_used_up_says_to_leave_the_account_alone_until_it_resets() {
    let (base, mode) = emulator().await;
    let source = source(&base);
    *mode.lock().unwrap() = Mode::Usage(40);
    let calm = source
        .extract(&credential(), "act_1234", "campaign_insights", days(1, 2))
        .await
        .unwrap();
    assert_eq!(calm.slow_down, None, "40 % is below the definition's 90 %");
    *mode.lock().unwrap() = Mode::Usage(95);
    let busy = source
        .extract(&credential(), "act_1234", "campaign_insights", days(1, 2))
        .await
        .unwrap();
    assert_eq!(busy.rows.len(), 2, "the answer itself is read whole");
    let slow = busy.slow_down.unwrap();
    assert_eq!(
        slow.wait,
        std::time::Duration::from_secs(7 * 60),
        "{slow:?}"
    );
    assert_eq!(slow.said, "x-business-use-case-usage: 95% used");
}

#[tokio::test]
async fn ad_set_and_ad_level_insights_are_read_one_row_per_object_and_day() {
    let (base, _) = emulator().await;
    let source = source(&base);
    for (stream, level) in [("adset_insights", "adset"), ("ad_insights", "ad")] {
        let extracted = source
            .extract(&credential(), "act_1234", stream, days(1, 3))
            .await
            .unwrap();
        let mut expected = Vec::new();
        for day in 1..=2 {
            let date = NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
            for truth in rows_at(date, level) {
                let text = |k: &str| Value::Text(truth[k].as_str().unwrap().into());
                let int = |k: &str| Value::Integer(truth[k].as_str().unwrap().parse().unwrap());
                let mut row = vec![Value::Date(date), text("campaign_id"), text("adset_id")];
                if level == "adset" {
                    row.push(text("adset_name"));
                } else {
                    row.extend([text("ad_id"), text("ad_name")]);
                }
                row.extend([int("impressions"), int("clicks"), text("spend")]);
                expected.push(row);
            }
        }
        assert_eq!(extracted.rows, expected, "{stream}");
        assert_eq!(extracted.rows.len(), 8, "{stream}: four objects a day");
    }
}
