//! A provider run from its definition against a local HTTP server: each pagination kind,
//! the window in the pipeline's time zone, error rules (an HTTP 200 with an error body),
//! and the answers that must end in a clear error rather than a hang: a missing records
//! pointer, a page loop, an answer over the size limit.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{Query, Request},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::TimeZone;
use gapless_core::{FailureCause, ReauthReason, ReportRange, Tz, Value, Window};
use gapless_providers::{
    ProviderSettings, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{ApiKey, ClientSecret, Credential};
use serde_json::json;

type Params = Query<HashMap<String, String>>;

fn item(n: u64) -> serde_json::Value {
    json!({"id": n, "day": "2026-03-01", "amount": format!("{n}.50")})
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

fn items(from: u64, to: u64) -> Vec<serde_json::Value> {
    (from..to).map(item).collect()
}

async fn serve() -> String {
    let app = Router::new()
        .route(
            "/me",
            get(|headers: HeaderMap| async move {
                if headers.get("x-key").and_then(|v| v.to_str().ok()) != Some("k-1") {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "bad key"})),
                    )
                        .into_response();
                }
                Json(json!({
                    "account": {"id": 42, "name": "Acme"},
                    "scopes": "read,write",
                    "stores": [{"store_id": "s1", "title": "EU"}, {"store_id": "s2"}],
                }))
                .into_response()
            }),
        )
        .route(
            "/me-plain",
            get(|| async { Json(json!({"account": {"id": 42}, "stores": ["s1", 7]})) }),
        )
        .route(
            "/me-broken",
            get(|| async {
                Json(json!({"account": {"id": 42}, "stores": [{"store_id": "s1"}, {"title": "no id"}]}))
            }),
        )
        .route(
            "/next_url",
            get(|Query(q): Params, request: Request| async move {
                let page: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let host = request.headers()[header::HOST]
                    .to_str()
                    .unwrap()
                    .to_string();
                let next = (page < 3).then(|| format!("http://{host}/next_url?page={}", page + 1));
                Json(json!({"data": items(page * 10, page * 10 + 2), "paging": {"next": next}}))
            }),
        )
        .route(
            "/cursor",
            get(|Query(q): Params| async move {
                let (data, next) = match q.get("after").map(String::as_str) {
                    None => (items(1, 3), Some("c2")),
                    Some("c2") => (items(3, 5), Some("c3")),
                    _ => (items(5, 6), None),
                };
                Json(json!({"result": {"rows": data}, "next_cursor": next}))
            }),
        )
        .route(
            "/offset",
            get(|Query(q): Params| async move {
                let offset: u64 = q["offset"].parse().unwrap();
                let limit: u64 = q["limit"].parse().unwrap();
                Json(json!({"data": items(offset, (offset + limit).min(5))}))
            }),
        )
        .route(
            "/page",
            get(|Query(q): Params| async move {
                let page: u64 = q["page"].parse().unwrap();
                Json(json!({"data": if page <= 2 { items(page, page + 1) } else { vec![] }}))
            }),
        )
        .route(
            "/link",
            get(|Query(q): Params| async move {
                let p: u64 = q.get("p").and_then(|p| p.parse().ok()).unwrap_or(1);
                let mut response = Json(json!({"data": items(p, p + 1)})).into_response();
                if p < 3 {
                    let link = format!(
                        "</link?p={}>; rel=\"next\", </link?p=1>; rel=\"first\"",
                        p + 1
                    );
                    response
                        .headers_mut()
                        .insert(header::LINK, link.parse().unwrap());
                }
                response
            }),
        )
        .route(
            "/window",
            get(|Query(q): Params| async move {
                Json(json!({"data": [{"id": 1, "day": q["since"], "amount": q["until"]}]}))
            }),
        )
        .route(
            "/loop",
            get(|| async { Json(json!({"data": items(1, 2), "paging": {"next": "/loop"}})) }),
        )
        .route("/missing", get(|| async { Json(json!({"items": []})) }))
        .route(
            "/elsewhere",
            get(|| async {
                Json(json!({"data": items(1, 2), "paging": {"next": "http://attacker.example/x"}}))
            }),
        )
        .route(
            "/commas",
            get(|Query(q): Params| async move {
                let p: u64 = q.get("p").and_then(|p| p.parse().ok()).unwrap_or(1);
                let mut response = Json(json!({"data": items(p, p + 1)})).into_response();
                if p < 2 {
                    let link = "<https://other.example/x>; rel=\"prev\", </commas?p=2&fields=id,name>; rel=\"next\"";
                    response
                        .headers_mut()
                        .insert(header::LINK, link.parse().unwrap());
                }
                response
            }),
        )
        .route(
            "/same_page",
            get(|| async { Json(json!({"data": items(1, 3)})) }),
        )
        .route(
            "/big",
            get(|| async { Json(json!({"data": items(0, 5000)})) }),
        )
        .route(
            "/error200",
            get(|| async {
                Json(
                    json!({"error": {"code": 190, "error_subcode": 458, "message": "app removed"}}),
                )
            }),
        )
        .route(
            "/graphql",
            post(|headers: HeaderMap, body: String| async move {
                // A vendor media type, named by the definition, replaces application/json.
                if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
                    != Some("application/vnd.local+json")
                {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "wrong media type").into_response();
                }
                let Ok(request) = serde_json::from_str::<serde_json::Value>(&body) else {
                    return (StatusCode::BAD_REQUEST, "not JSON").into_response();
                };
                // The first page asks with "after": null, as GraphQL APIs expect.
                let (data, next) = match &request["variables"]["after"] {
                    serde_json::Value::Null => (items(1, 3), json!("c2")),
                    serde_json::Value::String(c) if c == "c2" => (items(3, 5), json!(null)),
                    _ => return (StatusCode::BAD_REQUEST, "bad cursor").into_response(),
                };
                if request["variables"]["first"] != 2 {
                    return (StatusCode::BAD_REQUEST, "first must be a number").into_response();
                }
                Json(json!({"data": {"orders": {"nodes": data, "pageInfo": {"endCursor": next}}}}))
                    .into_response()
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                Json(json!({"data": items(1, 2)}))
            }),
        )
        .route(
            "/settings",
            get(|headers: HeaderMap, Query(q): Params| async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                if header("x-account-key") != Some("secret-7") {
                    return (StatusCode::UNAUTHORIZED, "no account key").into_response();
                }
                let manager = header("login-customer-id").unwrap_or("none").to_string();
                Json(json!({"data": [{"id": 1, "day": "2026-03-01", "amount": manager, "region": q.get("region")}]}))
                    .into_response()
            }),
        )
        .route(
            "/report.csv.gz",
            get(|Query(q): Params| async move {
                let csv = match q.get("variant").map(String::as_str) {
                    // A column the definition needs is missing.
                    Some("no_amount") => "id,day\n1,2026-03-01\n".to_string(),
                    _ => "id,day,amount\n1,2026-03-01,1.50\n2,2026-03-02,\n3,2026-03-03,7\n".to_string(),
                };
                let mut packed = gzip(&csv);
                if q.get("variant").map(String::as_str) == Some("truncated") {
                    packed.truncate(packed.len() - 6);
                }
                ([(header::CONTENT_TYPE, "application/octet-stream")], packed).into_response()
            }),
        )
        .route(
            "/search_stream",
            get(|| async {
                Json(json!([
                    {"results": [item(1), item(2)], "fieldMask": "id,day,amount"},
                    {"results": [item(3)]},
                    {"fieldMask": "id,day,amount", "requestId": "r-1"}
                ]))
            }),
        )
        .route(
            "/accounts",
            get(|Query(q): Params, request: Request| async move {
                let host = request.headers()[header::HOST].to_str().unwrap().to_string();
                match q.get("after").map(String::as_str) {
                    None => Json(json!({
                        "data": [{"id": "act_1", "name": "EU"}],
                        "paging": {"next": format!("http://{host}/accounts?after=1")}
                    })),
                    _ => Json(json!({"data": [{"id": "act_2"}], "paging": {}})),
                }
            }),
        )
        .route(
            "/exhausted",
            get(|| async {
                // google.rpc.Status with a RetryInfo detail (Google APIs' documented shape).
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many requests",
                        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31.5s"}]}})),
                )
            }),
        )
        .route(
            "/throttled",
            get(|| async {
                let mut r: Response = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, "30".parse().unwrap());
                r
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// `app` served on a loopback port: its base URL.
async fn serve_app(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn definition(base: &str, stream: &str) -> String {
    format!(
        r#"
[provider]
name = "local"
display_name = "Local"
base_url = "{base}"

[auth]
kind = "api_key"
in = "header"
name = "X-Key"

[probe.request]
url = "/me"
[probe]
account_id = "/account/id"
account_name = "/account/name"
scopes = "/scopes"
resources = "/stores"
resource_id = "/store_id"
resource_name = "/title"

[[errors]]
body = {{ "/error/code" = 190, "/error/error_subcode" = [458, 459] }}
cause = "reauth_required/revoked"
code_pointer = "/error/code"
message_pointer = "/error/message"

[[streams]]
name = "items"
primary_key = ["id"]
fields = [
  {{ name = "id", type = "integer" }},
  {{ name = "day", type = "date" }},
  {{ name = "amount", type = "text" }},
]
max_response_bytes = 20000
{stream}
"#
    )
}

fn source(base: &str, stream: &str) -> DeclarativeSource {
    source_from(&definition(base, stream))
}

fn source_from(text: &str) -> DeclarativeSource {
    let d = check(text).unwrap_or_else(|p| panic!("{p:#?}\n{text}"));
    DeclarativeSource::new(
        d,
        ProviderSettings {
            base_url: String::new(),
            client_id: String::new(),
            client_secret: ClientSecret::new(String::new()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        },
    )
    .unwrap()
}

/// The connector of `d` with the installation's setting `values` (no OAuth client).
fn source_with(
    d: gapless_providers::declarative::definition::Definition,
    values: &[(&str, &str)],
) -> Result<DeclarativeSource, gapless_providers::RegistryError> {
    DeclarativeSource::new(
        d,
        ProviderSettings {
            base_url: String::new(),
            client_id: String::new(),
            client_secret: ClientSecret::new(String::new()),
            timeouts: HttpTimeouts::default(),
            settings: gapless_providers::SettingValues::new(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        },
    )
}

fn key() -> Credential {
    Credential::ApiKey {
        key: ApiKey::new("k-1".into()),
    }
}

fn range() -> ReportRange {
    let tz: Tz = "Asia/Tokyo".parse().unwrap();
    let start = tz.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap().to_utc();
    let end = tz.with_ymd_and_hms(2026, 3, 8, 0, 0, 0).unwrap().to_utc();
    ReportRange::new(Window::new(start, end), tz)
}

async fn ids(source: &DeclarativeSource) -> (Vec<i64>, u32) {
    let extracted = source
        .extract(&key(), "r1", "items", range())
        .await
        .unwrap();
    let ids = extracted
        .rows
        .iter()
        .map(|r| match r[0] {
            Value::Integer(i) => i,
            _ => -1,
        })
        .collect();
    (ids, extracted.requests)
}

#[tokio::test]
async fn every_pagination_kind_reads_every_page_once() {
    let base = serve().await;
    let cases = [
        (
            r#"request = { url = "/next_url" }
records = "/data"
pagination = { kind = "next_url", pointer = "/paging/next" }"#,
            vec![10, 11, 20, 21, 30, 31],
            3,
        ),
        (
            r#"request = { url = "/cursor" }
records = "/result/rows"
pagination = { kind = "cursor", pointer = "/next_cursor", param = "after" }"#,
            vec![1, 2, 3, 4, 5],
            3,
        ),
        (
            r#"request = { url = "/offset" }
records = "/data"
pagination = { kind = "offset", page_size = 2 }"#,
            vec![0, 1, 2, 3, 4],
            // Stops at the empty page, not a short one.
            4,
        ),
        (
            r#"request = { url = "/page" }
records = "/data"
pagination = { kind = "page" }"#,
            vec![1, 2],
            3,
        ),
        (
            r#"request = { url = "/commas" }
records = "/data"
pagination = { kind = "link_header" }"#,
            vec![1, 2],
            2,
        ),
        (
            r#"request = { url = "/link" }
records = "/data"
pagination = { kind = "link_header" }"#,
            vec![1, 2, 3],
            3,
        ),
    ];
    for (stream, expected, requests) in cases {
        let (got, made) = ids(&source(&base, stream)).await;
        assert_eq!(got, expected, "{stream}");
        assert_eq!(made, requests, "{stream}");
    }
}

#[tokio::test]
async fn the_window_is_asked_for_in_the_pipeline_time_zone() {
    let base = serve().await;
    let s = source(
        &base,
        r#"request = { url = "/window?since={window.first_day}&until={window.start:%H%M%z}" }
records = "/data""#,
    );
    let extracted = s.extract(&key(), "r1", "items", range()).await.unwrap();
    // Tokyo's 1 March starts at 15:00 UTC on 28 February.
    assert_eq!(
        extracted.rows[0][1],
        Value::Date(chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    );
    assert_eq!(extracted.rows[0][2], Value::Text("0000+0900".into()));
}

#[tokio::test]
async fn bad_answers_end_in_a_clear_error_not_a_hang() {
    let base = serve().await;
    let error = |stream: &str| {
        let s = source(&base, stream);
        async move { s.extract(&key(), "r1", "items", range()).await.unwrap_err() }
    };
    let looped = error(
        r#"request = { url = "/loop" }
records = "/data"
pagination = { kind = "next_url", pointer = "/paging/next" }"#,
    )
    .await;
    assert!(
        looped
            .provider_message
            .as_deref()
            .unwrap()
            .contains("page loop"),
        "{looped:?}"
    );
    let elsewhere = error(
        r#"request = { url = "/elsewhere" }
records = "/data"
pagination = { kind = "next_url", pointer = "/paging/next" }"#,
    )
    .await;
    assert!(
        elsewhere
            .provider_message
            .as_deref()
            .unwrap()
            .contains("another host (attacker.example)"),
        "the key is not sent to another host: {elsewhere:?}"
    );
    let ignored = error(
        r#"request = { url = "/same_page" }
records = "/data"
pagination = { kind = "page" }"#,
    )
    .await;
    assert!(
        ignored
            .provider_message
            .as_deref()
            .unwrap()
            .contains("same page twice"),
        "{ignored:?}"
    );
    let missing = error("request = { url = \"/missing\" }\nrecords = \"/data\"").await;
    assert!(
        missing
            .provider_message
            .as_deref()
            .unwrap()
            .contains("no array of records at \"/data\""),
        "{missing:?}"
    );
    // An answer without its records concerns that request's windows only.
    assert_eq!(missing.cause, FailureCause::BadAnswer);
    let big = error("request = { url = \"/big\" }\nrecords = \"/data\"").await;
    assert_eq!(
        big.provider_code.as_deref(),
        Some("response_too_large"),
        "{big:?}"
    );
    let revoked = error("request = { url = \"/error200\" }\nrecords = \"/data\"").await;
    assert_eq!(
        revoked.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked
        },
        "an HTTP 200 with an error body, by the definition's rule"
    );
    assert_eq!(revoked.provider_message.as_deref(), Some("app removed"));
    let throttled = error("request = { url = \"/throttled\" }\nrecords = \"/data\"").await;
    assert_eq!(
        throttled.cause,
        FailureCause::RateLimited {
            retry_after_secs: Some(30)
        }
    );
}

#[tokio::test]
async fn the_probe_reads_the_account_and_a_wrong_key_is_classified() {
    let base = serve().await;
    let s = source(&base, "request = { url = \"/page\" }\nrecords = \"/data\"");
    let report = s.probe(&key()).await.unwrap();
    assert_eq!(report.upstream_account_id, "42");
    assert_eq!(report.upstream_account_name, "Acme");
    assert_eq!(report.scopes, vec!["read", "write"]);
    assert_eq!(
        report.resources,
        vec![("s1".into(), "EU".into()), ("s2".into(), "s2".into())]
    );
    let wrong = Credential::ApiKey {
        key: ApiKey::new("k-2".into()),
    };
    let failure = s.probe(&wrong).await.unwrap_err();
    assert_eq!(
        failure.cause,
        FailureCause::Refreshable,
        "401: refreshed once (for OAuth), then reauthorization"
    );
    assert_eq!(s.descriptor().name, "local");
    assert_eq!(s.descriptor().probe_interval, None);
    let limited = source(
        &base,
        "request = { url = \"/page\" }\nrecords = \"/data\"\n[limits]\nrequests = \"10/1m\"\nprobe_every = \"6h\"",
    );
    assert_eq!(
        limited.descriptor().probe_interval,
        Some(chrono::Duration::hours(6))
    );
    assert_eq!(
        limited.descriptor().rate_limit.map(|l| l.to_string()),
        Some("10/1m".to_string())
    );
    assert_eq!(s.descriptor().streams[0].schema.columns.len(), 3);
}

#[tokio::test]
async fn probe_resources_given_as_plain_strings_are_accepted_and_an_item_without_an_id_is_an_error()
{
    let base = serve().await;
    let stream = "request = { url = \"/page\" }\nrecords = \"/data\"";
    let plain =
        source_from(&definition(&base, stream).replace("url = \"/me\"", "url = \"/me-plain\""));
    let report = plain.probe(&key()).await.unwrap();
    assert_eq!(
        report.resources,
        vec![("s1".into(), "s1".into()), ("7".into(), "7".into())]
    );
    let broken =
        source_from(&definition(&base, stream).replace("url = \"/me\"", "url = \"/me-broken\""));
    let failure = broken.probe(&key()).await.unwrap_err();
    assert_eq!(failure.provider_code.as_deref(), Some("malformed_response"));
    assert!(
        failure
            .provider_message
            .as_deref()
            .unwrap_or_default()
            .contains("resource 1 of the probe's answer (at \"/stores\") has no id at /store_id"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn declared_lifetimes_fill_the_expiries_a_token_answer_does_not_state() {
    use axum::routing::post;
    let app = Router::new().route(
        "/token",
        post(|| async {
            Json(json!({"access_token": "at-2", "refresh_token": "rt-2", "token_type": "bearer"}))
        }),
    );
    let base = serve_app(app).await;
    let text = format!(
        r#"
[provider]
name = "lifetimes"
display_name = "Lifetimes"
base_url = "{base}"

[auth]
kind = "oauth2"
authorize_url = "/authorize"
token_url = "/token"
scopes = ["read"]
lifetimes = {{ access = "1h", refresh = "14d" }}

[probe.request]
url = "/me"
[probe]
account_id = "/id"

[[streams]]
name = "items"
request = {{ url = "/items" }}
records = "/data"
primary_key = ["id"]
fields = [{{ name = "id", type = "integer" }}]
"#
    );
    let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let source = DeclarativeSource::new(
        d,
        ProviderSettings {
            base_url: String::new(),
            client_id: "client".into(),
            client_secret: ClientSecret::new("secret".into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        },
    )
    .unwrap();
    let now = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 7, 0, 0).unwrap();
    let tokens = source
        .refresh(&gapless_vault::RefreshToken::new("rt-1".into()), now)
        .await
        .unwrap();
    assert_eq!(
        tokens.refresh_expires_at,
        Some(now + chrono::Duration::days(14))
    );
    assert_eq!(
        tokens.access_expires_at,
        Some(now + chrono::Duration::hours(1))
    );
}

#[tokio::test]
async fn a_graphql_body_pages_by_a_cursor_that_is_null_on_the_first_page() {
    let base = serve().await;
    let source = source(
        &base,
        r#"request = { method = "POST", url = "/graphql", headers = { "Content-Type" = "application/vnd.local+json" }, body = '{{"query": "query($after: String) {{ orders(first: $first, after: $after) }}", "variables": {{"after": "{cursor}", "first": {limit}}}}}' }
records = "/data/orders/nodes"
pagination = { kind = "cursor", pointer = "/data/orders/pageInfo/endCursor", page_size = 2 }"#,
    );
    assert_eq!(ids(&source).await, (vec![1, 2, 3, 4], 2));
}

#[tokio::test]
async fn a_report_request_has_its_own_timeout_longer_than_the_token_calls() {
    let base = serve().await;
    let with_timeout = |report_timeout: &str| {
        let text = definition(
            &base,
            &format!(
                "request = {{ url = \"/slow\" }}\nrecords = \"/data\"\n[limits]\nreport_timeout = \"{report_timeout}\""
            ),
        );
        let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
        DeclarativeSource::new(
            d,
            ProviderSettings {
                base_url: String::new(),
                client_id: String::new(),
                client_secret: ClientSecret::new(String::new()),
                // Token and probe calls: one second.
                timeouts: HttpTimeouts {
                    connect: std::time::Duration::from_secs(1),
                    request: std::time::Duration::from_secs(1),
                },
                settings: Default::default(),
            },
        )
        .unwrap()
    };
    // A 1.5 s report answers within a 5 s report timeout, beyond the 1 s of token calls.
    assert_eq!(ids(&with_timeout("5s")).await, (vec![1], 1));
    let failure = with_timeout("1s")
        .extract(&key(), "r1", "items", range())
        .await
        .unwrap_err();
    assert_eq!(failure.cause, FailureCause::Transient);
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("timeout"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn installation_settings_fill_headers_and_parameters_and_an_optional_one_unset_is_left_out() {
    let base = serve().await;
    let text = definition(
        &base,
        r#"request = { url = "/settings?region={settings.region}", headers = { "X-Account-Key" = "{settings.account_key}", "login-customer-id" = "{settings.login_customer_id}" } }
records = "/data"

[settings.account_key]
description = "The account key from the vendor's console"
secret = true

[settings.login_customer_id]
description = "The manager account, when reports are read through one"
required = false

[settings.region]
description = "The data region"
required = false"#,
    );
    let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let with = |values: &[(&str, &str)]| source_with(d.clone(), values);
    let amount = async |source: DeclarativeSource| {
        let extracted = source
            .extract(&key(), "r1", "items", range())
            .await
            .unwrap();
        extracted.rows[0][2].clone()
    };
    let only_required = with(&[("account_key", "secret-7")]).unwrap();
    assert_eq!(amount(only_required).await, Value::Text("none".into()));
    let with_manager = with(&[("account_key", "secret-7"), ("login_customer_id", "123")]).unwrap();
    assert_eq!(amount(with_manager).await, Value::Text("123".into()));

    // A missing required setting is an error naming it; so is one the definition lacks.
    let missing = with(&[]).unwrap_err().to_string();
    assert!(
        missing.contains("providers.local.settings.account_key is required")
            && missing.contains("from the vendor's console"),
        "{missing}"
    );
    let unknown = with(&[("account_key", "k"), ("acount_key", "k")])
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("acount_key is not a setting"), "{unknown}");
    // The value of a secret setting never shows in the connector's Debug.
    let source = with(&[("account_key", "secret-7")]).unwrap();
    assert!(!format!("{source:?}").contains("secret-7"));

    // A template that names a setting the definition does not declare is refused.
    let problems = check(&text.replace("{settings.region}", "{settings.regoin}")).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("{settings.regoin} names a setting")),
        "{problems:#?}"
    );
    // An optional setting inside a path cannot be left out: the check renders it unset.
    let problems = check(&text.replace(
        "/settings?region={settings.region}",
        "/settings/{settings.region}",
    ))
    .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("the first page cannot be rendered")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn a_gzipped_csv_and_a_streamed_array_of_batches_are_read_and_broken_ones_refused_whole() {
    let base = serve().await;
    let csv = |variant: &str| {
        source(
            &base,
            &format!(
                "request = {{ url = \"/report.csv.gz?variant={variant}\" }}\nformat = \"csv\"\ncompression = \"gzip\""
            ),
        )
    };
    let extracted = csv("whole")
        .extract(&key(), "r1", "items", range())
        .await
        .unwrap();
    assert_eq!(
        extracted
            .rows
            .iter()
            .map(|r| r[2].clone())
            .collect::<Vec<_>>(),
        vec![
            Value::Text("1.50".into()),
            Value::Null,
            Value::Text("7".into())
        ]
    );
    for (variant, words) in [
        ("truncated", "cannot be read whole"),
        ("no_amount", "no column \"amount\""),
    ] {
        let failure = csv(variant)
            .extract(&key(), "r1", "items", range())
            .await
            .unwrap_err();
        // The request's windows stay missing, with the reason; nothing of it is loaded.
        assert_eq!(failure.cause, FailureCause::BadAnswer, "{variant}");
        assert!(
            failure.provider_message.as_deref().unwrap().contains(words),
            "{variant}: {failure:?}"
        );
    }
    let batches = source(
        &base,
        "request = { url = \"/search_stream\" }\nformat = \"json_batches\"\nrecords = \"/results\"",
    );
    assert_eq!(ids(&batches).await, (vec![1, 2, 3], 1));
    // Pointer pagination needs one JSON document.
    let problems = check(&definition(
        &base,
        "request = { url = \"/x\" }\nformat = \"csv\"\npagination = { kind = \"next_url\", pointer = \"/next\" }",
    ))
    .unwrap_err();
    assert!(
        problems.iter().any(|p| p.message.contains("not one")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn a_resources_request_lists_every_page_of_what_the_identity_can_read() {
    let base = serve().await;
    let text = definition(&base, "request = { url = \"/x\" }\nrecords = \"/data\"")
        .replace(
            "resources = \"/stores\"\nresource_id = \"/store_id\"\nresource_name = \"/title\"\n",
            "",
        )
        .replace(
            "[[errors]]",
            "[resources]\nrequest = { url = \"/accounts\" }\nitems = \"/data\"\nnext = \"/paging/next\"\n\n[[errors]]",
        );
    let source = source_from(&text);
    // The probe itself stays one request; the listing is asked for on its own.
    assert!(source.probe(&key()).await.unwrap().resources.is_empty());
    assert_eq!(
        source.list_resources(&key()).await.unwrap().unwrap(),
        vec![
            gapless_providers::Resource::direct("act_1", "EU"),
            gapless_providers::Resource::direct("act_2", "act_2")
        ]
    );
    // Listing resources twice is refused: one of them would never be read.
    let both = text.replace(
        "scopes = \"/scopes\"",
        "scopes = \"/scopes\"\nresources = \"/stores\"",
    );
    let problems = check(&both).unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "probe.resources"),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn a_wait_the_body_names_is_taken_over_retry_after() {
    let base = serve().await;
    let text = definition(&base, "request = { url = \"/exhausted\" }\nrecords = \"/data\"").replace(
        "[[streams]]",
        "[[errors]]\nbody = { \"/error/status\" = \"RESOURCE_EXHAUSTED\" }\ncause = \"rate_limited\"\nretry_after_pointer = \"/error/details/0/retryDelay\"\nmessage_pointer = \"/error/message\"\n\n[[streams]]",
    );
    let failure = source_from(&text)
        .extract(&key(), "r1", "items", range())
        .await
        .unwrap_err();
    assert_eq!(
        failure.cause,
        FailureCause::RateLimited {
            retry_after_secs: Some(32)
        }
    );
    let problems = check(&text.replace(
        "cause = \"rate_limited\"\nretry",
        "cause = \"transient\"\nretry",
    ))
    .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("only applies to cause")),
        "{problems:#?}"
    );
}

/// An identity in another region of the provider, or with its own value of a setting
/// taken per identity, is served by a connector of its own: its requests go to that
/// region's hosts or carry that value. The installation's connector makes no request while
/// a required per-identity value is missing, and what a definition does not take per
/// identity is refused.
#[tokio::test]
async fn an_identity_in_another_region_or_with_its_own_setting_has_a_connector_of_its_own() {
    let na = serve().await;
    let account = |id: u64| {
        move |headers: HeaderMap| async move {
            if headers.get("x-key").and_then(|v| v.to_str().ok()) != Some("k-1") {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            Json(json!({"account": {"id": id}, "stores": []})).into_response()
        }
    };
    let eu = serve_app(
        Router::new()
            .route("/me", get(account(43)))
            .route("/t1/me", get(account(44))),
    )
    .await;
    let account_of = async |source: &dyn SourceConnector| {
        source
            .probe(&key())
            .await
            .map(|report| report.upstream_account_id)
    };

    // Regions: the installation's (na), and eu for one identity.
    let regional = source_from(
        &(definition(&na, "request = { url = \"/items\" }").replace(
            "display_name = \"Local\"",
            "display_name = \"Local\"\nregion = \"na\"",
        ) + &format!("\n[regions.eu]\ndescription = \"Europe\"\nbase_url = \"{eu}\"\n")),
    );
    let in_region = |region: &str| gapless_core::IdentitySettings {
        region: Some(region.into()),
        values: Default::default(),
    };
    assert_eq!(account_of(&regional).await.unwrap(), "42");
    assert!(
        regional
            .for_identity(&Default::default())
            .unwrap()
            .is_none()
    );
    let european = regional.for_identity(&in_region("eu")).unwrap().unwrap();
    assert_eq!(account_of(european.as_ref()).await.unwrap(), "43");
    assert_eq!(
        account_of(
            regional
                .for_identity(&in_region("na"))
                .unwrap()
                .unwrap()
                .as_ref()
        )
        .await
        .unwrap(),
        "42"
    );
    let unknown = regional
        .for_identity(&in_region("fe"))
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("has no region \"fe\""), "{unknown}");
    let not_taken = regional
        .for_identity(&gapless_core::IdentitySettings {
            region: None,
            values: [("tenant".to_string(), "t1".to_string())].into(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        not_taken.contains("tenant is not a setting local takes per identity (it takes: none)"),
        "{not_taken}"
    );

    // A setting per identity: the installation gives none, each identity its own.
    let tenanted = source_from(
        &(definition(
            &format!("{eu}/{{settings.tenant}}"),
            "request = { url = \"/items\" }",
        ) + "\n[settings.tenant]\ndescription = \"The tenant\"\nper_identity = true\n"),
    );
    let awaiting = account_of(&tenanted).await.unwrap_err();
    assert!(
        awaiting
            .provider_message
            .as_deref()
            .is_some_and(|m| m.contains("needs each identity's own tenant")),
        "{awaiting:?}"
    );
    assert!(tenanted.for_identity(&Default::default()).is_err());
    let of_tenant = |tenant: &str| gapless_core::IdentitySettings {
        region: None,
        values: [("tenant".to_string(), tenant.to_string())].into(),
    };
    let t1 = tenanted.for_identity(&of_tenant("t1")).unwrap().unwrap();
    assert_eq!(account_of(t1.as_ref()).await.unwrap(), "44");
    // A value that would change the host, not name a label in it, is refused.
    let host = tenanted
        .for_identity(&of_tenant("evil.example/x"))
        .unwrap_err()
        .to_string();
    assert!(host.contains("letters, digits"), "{host}");
}

/// A secret a vendor wants in a request's query (TikTok's advertiser listing asks for the
/// app secret) is sent, and never shows in what a failure says or in the connector's
/// `Debug`: neither when the host does not answer nor when it answers an error page.
#[tokio::test]
async fn a_secret_in_a_listing_query_never_shows_in_a_failure() {
    const CANARY: &str = "canary-secret-7f3a";
    let base = serve().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    };
    for host in [base.as_str(), closed.as_str()] {
        let text = definition(host, "request = { url = \"/items\" }").replace(
            "resources = \"/stores\"\nresource_id = \"/store_id\"\nresource_name = \"/title\"\n",
            "",
        ) + "\n[settings.client_secret]\ndescription = \"The app secret\"\nsecret = true\n\n[resources]\nrequest = { url = \"/no-such-listing?secret={settings.client_secret}\" }\n";
        let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
        let source = source_with(d, &[("client_secret", CANARY)]).unwrap();
        let failure = source.list_resources(&key()).await.unwrap_err();
        let said = format!("{failure:?} {failure}");
        assert!(!said.contains(CANARY), "{said}");
        assert!(!format!("{source:?}").contains(CANARY));
    }
    // Declared without `secret = true`, the setting that defaults to the client's secret
    // is refused.
    let problems = check(
        &(definition(&base, "request = { url = \"/items\" }")
            + "\n[settings.client_secret]\ndescription = \"The app secret\"\n"),
    )
    .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("must be declared secret")),
        "{problems:#?}"
    );
}

/// A listing that sends the next page's token in its body (a POST search) reads every
/// page: a page is its URL and its body, so the same URL with another token is no loop.
/// A token written as a number is a token too.
#[tokio::test]
async fn a_listing_paged_by_a_token_in_its_body_reads_every_page() {
    let app = Router::new()
        .route(
            "/me",
            get(|| async { Json(json!({"account": {"id": 42}})) }),
        )
        .route(
            "/search",
            post(|body: String| async move {
                let asked: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                match &asked["pageToken"] {
                    serde_json::Value::Null => Json(
                        json!({"elements": [{"id": "a1"}], "metadata": {"nextPageToken": "t2"}}),
                    ),
                    t if t == "t2" => {
                        Json(json!({"elements": [{"id": "a2"}], "metadata": {"nextPageToken": 3}}))
                    }
                    t if t == "3" => Json(json!({"elements": [{"id": "a3"}], "metadata": {}})),
                    _ => Json(json!({"elements": [{"id": "unexpected"}]})),
                }
            }),
        );
    let base = serve_app(app).await;
    let text = definition(&base, "request = { url = \"/items\" }").replace(
        "resources = \"/stores\"\nresource_id = \"/store_id\"\nresource_name = \"/title\"\n",
        "",
    ) + "\n[resources]\nrequest = { method = \"POST\", url = \"/search\", body = '{{\"pageToken\": \"{cursor}\"}}' }\nitems = \"/elements\"\ncursor = \"/metadata/nextPageToken\"\n";
    let source = source_from(&text);
    let listed: Vec<String> = source
        .list_resources(&key())
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ["a1", "a2", "a3"]);
}

/// A provider whose error page echoes the request's query (and so the secret a vendor
/// wants there) does not put the secret into the failure gapless keeps.
#[tokio::test]
async fn a_secret_echoed_by_an_error_page_is_cut_out_of_the_failure() {
    const CANARY: &str = "canary-echoed-5b1e";
    let app = Router::new().route(
        "/listing",
        get(|request: Request| async move {
            let query = request.uri().query().unwrap_or_default().to_string();
            (
                StatusCode::BAD_REQUEST,
                format!("<html>Bad request: {query} is not accepted</html>"),
            )
        }),
    );
    let base = serve_app(app).await;
    let text = definition(&base, "request = { url = \"/items\" }").replace(
        "resources = \"/stores\"\nresource_id = \"/store_id\"\nresource_name = \"/title\"\n",
        "",
    ) + "\n[settings.client_secret]\ndescription = \"The app secret\"\nsecret = true\n\n[resources]\nrequest = { url = \"/listing?app=7&secret={settings.client_secret}\" }\n";
    let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let source = source_with(d, &[("client_secret", CANARY)]).unwrap();
    let failure = source.list_resources(&key()).await.unwrap_err();
    let said = failure.provider_message.clone().unwrap_or_default();
    assert!(said.contains("secret=[secret]"), "{said}");
    assert!(!format!("{failure:?}").contains(CANARY), "{failure:?}");
}
