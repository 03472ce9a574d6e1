//! Answers that cannot be read whole leave their windows missing, with a reason a person
//! can act on, and nothing of them loaded: a gzip-compressed CSV report cut short, a CSV
//! report without one of its columns, a report job whose status the definition does not
//! know. The emulator serves a definition of the format's own (a CSV stream and a job
//! stream), so each fault is one day of an otherwise good run; the next run after the
//! fault is gone loads those days.

#![allow(clippy::unwrap_used)]

mod vendor;

use std::{
    collections::{BTreeSet, HashMap},
    io::Write as _,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{Value, VirtualClock, WindowState};
use serde_json::json;

const DEFINITION: &str = r#"
[provider]
name = "reports_emu"
display_name = "Reports emulator"
base_url = "http://emulator.invalid"

[auth]
kind = "oauth2"
authorize_url = "http://emulator.invalid/authorize"
token_url = "http://emulator.invalid/token"
scopes = ["reports"]
lifetimes = { access = "1h" }

[probe.request]
url = "/me"
[probe]
account_id = "/id"

[[streams]]
name = "units_csv"
request = { url = "/reports/{resource}/units.csv.gz?day={window.first_day}" }
format = "csv"
compression = "gzip"
primary_key = ["date", "sku"]
day_field = "date"
fields = [
  { name = "date", type = "date" },
  { name = "sku", type = "text" },
  { name = "units", type = "integer" },
]

[[streams]]
name = "units_job"
request = { url = "/unused" }
format = "csv"
primary_key = ["date", "sku"]
day_field = "date"
fields = [
  { name = "date", type = "date" },
  { name = "sku", type = "text" },
  { name = "units", type = "integer" },
]

[streams.job]
create = { method = "POST", url = "/jobs?account={resource}&day={window.first_day}" }
id = "/id"
poll = { url = "/jobs/{job}" }
status = "/status"
done = ["DONE"]
failed = ["FAILED"]
pending = ["RUNNING"]
result_url = "/url"
poll_every = "1s"
poll_for = "2s"
"#;

/// What the emulator does wrong, and on which day.
#[derive(Default)]
struct Faults {
    truncated_gzip: Option<NaiveDate>,
    missing_column: Option<NaiveDate>,
    unknown_status: Option<NaiveDate>,
}

#[derive(Default)]
struct World {
    faults: Faults,
    codes: BTreeSet<String>,
    tokens: BTreeSet<String>,
    issued: u32,
    /// Jobs by id: their day.
    jobs: HashMap<String, NaiveDate>,
}

type Shared = Arc<Mutex<World>>;

fn truth(day: NaiveDate) -> Vec<(String, i64)> {
    ["A-1", "B-2", "C-3"]
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            (
                (*sku).to_string(),
                i64::from(day.ordinal()) * 10 + i64::try_from(i).unwrap(),
            )
        })
        .collect()
}

fn csv(day: NaiveDate, with_units: bool) -> String {
    let mut text = if with_units {
        "date,sku,units\n"
    } else {
        "date,sku\n"
    }
    .to_string();
    for (sku, units) in truth(day) {
        if with_units {
            text.push_str(&format!("{day},{sku},{units}\n"));
        } else {
            text.push_str(&format!("{day},{sku}\n"));
        }
    }
    text
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

fn live(w: &Shared, headers: &HeaderMap) -> bool {
    vendor::bearer(headers).is_some_and(|t| w.lock().unwrap().tokens.contains(t))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_token"})),
    )
        .into_response()
}

fn day_of(q: &HashMap<String, String>) -> NaiveDate {
    NaiveDate::parse_from_str(&q["day"], "%Y-%m-%d").unwrap()
}

async fn units_csv(
    State(w): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !live(&w, &headers) {
        return unauthorized();
    }
    let day = day_of(&q);
    let faults = &w.lock().unwrap().faults;
    let mut body = gzip(&csv(day, faults.missing_column != Some(day)));
    if faults.truncated_gzip == Some(day) {
        body.truncate(body.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/gzip")], body).into_response()
}

async fn create_job(
    State(w): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !live(&w, &headers) {
        return unauthorized();
    }
    let mut world = w.lock().unwrap();
    world.issued += 1;
    let id = format!("job-{}", world.issued);
    world.jobs.insert(id.clone(), day_of(&q));
    Json(json!({"id": id})).into_response()
}

async fn poll_job(State(w): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !live(&w, &headers) {
        return unauthorized();
    }
    let world = w.lock().unwrap();
    let day = world.jobs[&id];
    let status = if world.faults.unknown_status == Some(day) {
        "EXPIRED"
    } else {
        "DONE"
    };
    Json(json!({"id": id, "status": status, "url": format!("/results/{id}.csv")})).into_response()
}

async fn job_result(State(w): State<Shared>, Path(file): Path<String>) -> Response {
    let world = w.lock().unwrap();
    let id = file.trim_end_matches(".csv");
    csv(world.jobs[id], true).into_response()
}

#[tokio::test]
async fn a_cut_gzip_a_missing_column_and_an_unknown_job_status_leave_their_days_missing_with_a_reason()
 {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let date = |d: i64| (start + Duration::days(d - 1)).date_naive();
    let clock = VirtualClock::new(start + Duration::hours(9));
    let world: Shared = Arc::default();
    {
        let mut w = world.lock().unwrap();
        w.faults.truncated_gzip = Some(date(2));
        w.faults.missing_column = Some(date(3));
        w.faults.unknown_status = Some(date(2));
    }
    let base = vendor::serve(
        Router::new()
            .route(
                "/authorize",
                get(|State(w): State<Shared>, Query(q): Query<HashMap<String, String>>| async move {
                    let code = {
                        let mut world = w.lock().unwrap();
                        world.issued += 1;
                        let code = format!("code-{}", world.issued);
                        world.codes.insert(code.clone());
                        code
                    };
                    vendor::redirect_back(&q["redirect_uri"], &[("code", code.as_str()), ("state", q["state"].as_str())])
                }),
            )
            .route(
                "/token",
                post(|State(w): State<Shared>, body: String| async move {
                    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                    let mut world = w.lock().unwrap();
                    let known = form.get("code").is_some_and(|c| world.codes.remove(c))
                        || form.get("refresh_token").is_some_and(|r| r == "refresh-1");
                    if !known {
                        return vendor::token_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown grant");
                    }
                    world.issued += 1;
                    let token = format!("token-{}", world.issued);
                    world.tokens.insert(token.clone());
                    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "refresh_token": "refresh-1"}))
                        .into_response()
                }),
            )
            .route(
                "/me",
                get(|State(w): State<Shared>, headers: HeaderMap| async move {
                    if live(&w, &headers) { Json(json!({"id": "acct-1"})).into_response() } else { unauthorized() }
                }),
            )
            .route("/reports/{account}/units.csv.gz", get(units_csv))
            .route("/jobs", post(create_job))
            .route("/jobs/{id}", get(poll_job))
            .route("/results/{file}", get(job_result))
            .with_state(world.clone()),
    )
    .await;
    let text = DEFINITION.replace("http://emulator.invalid", &base);
    let definition =
        gapless_providers::declarative::check::check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let source = Arc::new(
        gapless_providers::declarative::connector::DeclarativeSource::new(
            definition,
            gapless_providers::ProviderSettings {
                base_url: String::new(),
                client_id: "client-1".into(),
                client_secret: gapless_vault::ClientSecret::new("secret-1".into()),
                timeouts: Default::default(),
                settings: Default::default(),
            },
        )
        .unwrap(),
    );
    let engine = vendor::engine(dir.path(), &clock, source.clone()).await;
    let identity =
        vendor::connect(&engine, "reports_emu", "acme-reports", "ops@acme.example").await;
    let pipeline = vendor::daily_pipeline(
        &engine,
        identity.id,
        ("acct-1", &["units_csv", "units_job"]),
        0,
        start,
    )
    .await;
    clock.set(start + Duration::days(4) + Duration::hours(1));
    engine.tick().await.unwrap();

    let ledger = engine.store().ledger(pipeline.id).await.unwrap();
    let state = |stream: &str, d: i64| {
        ledger
            .iter()
            .find(|e| e.stream == stream && e.window.start.date_naive() == date(d))
            .map(|e| e.state.clone())
            .unwrap_or_else(|| panic!("{stream} day {d} is not in the ledger"))
    };
    let destination = engine.destination_for(&pipeline).await.unwrap().unwrap();
    use gapless_providers::SourceConnector as _;
    for (stream, d, words) in [
        ("units_csv", 2, "gzip"),
        ("units_csv", 3, "units"),
        ("units_job", 2, "EXPIRED"),
    ] {
        match state(stream, d) {
            WindowState::Missing { reason, .. } => {
                let said = reason.describe();
                assert!(said.contains(words), "{stream} day {d}: {said}");
            }
            other => panic!("{stream} day {d} is {other:?}"),
        }
        let schema = source.descriptor().stream(stream).unwrap().schema.clone();
        let start = pipeline.start + Duration::days(d - 1);
        let window = gapless_core::Window::new(start, start + Duration::days(1));
        let stored = destination
            .read_window(pipeline.id, &schema, window)
            .await
            .unwrap();
        assert!(
            stored.is_empty(),
            "nothing of {stream} day {d} is loaded: {stored:?}"
        );
    }
    // The days before the faults are loaded. A run that met three unusable answers stops
    // (a provider answering garbage is not asked for more); what it did not reach waits,
    // missing with that reason.
    for stream in ["units_csv", "units_job"] {
        assert!(
            matches!(state(stream, 1), WindowState::Loaded { .. }),
            "{stream} day 1"
        );
        for d in 2..=4 {
            match state(stream, d) {
                WindowState::Loaded { .. } => {}
                WindowState::Missing { reason, .. } => assert!(
                    reason.describe().contains("unusable")
                        || (stream, d) == ("units_csv", 2)
                        || (stream, d) == ("units_csv", 3)
                        || (stream, d) == ("units_job", 2),
                    "{stream} day {d}: {}",
                    reason.describe()
                ),
                other => panic!("{stream} day {d} is {other:?}"),
            }
        }
    }

    // The faults gone, the next run loads those days, equal to the truth.
    world.lock().unwrap().faults = Faults::default();
    clock.advance(Duration::minutes(30));
    engine.tick().await.unwrap();
    for stream in ["units_csv", "units_job"] {
        vendor::assert_days_equal_truth((&engine, &source), &pipeline, stream, 1..=4, |day| {
            truth(day)
                .into_iter()
                .map(|(sku, units)| vec![Value::Date(day), Value::Text(sku), Value::Integer(units)])
                .collect()
        })
        .await;
    }
}
