//! `gapless bench refresh`: identities refreshed and probed per second by gapless (store,
//! vault, lease and all) next to raw HTTP requests per second against the same sandbox
//! endpoints, measured in one run.

use std::time::Instant;

use base64::Engine as _;
use chrono::Duration;
use gapless_sandbox::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_USER, browser};
use serde::Serialize;

use gapless_engine::{EventLog, ProbeOutcome};

use crate::{
    DemoError,
    demo::{DemoWorld, demo_start},
};

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshBench {
    pub identities: usize,
    pub rounds: usize,
    /// Identities refreshed per second by `Engine::refresh_due` (refresh + seal + fenced
    /// commit under a lease).
    pub gapless_refreshes_per_sec: f64,
    /// Identities probed per second by `Engine::probe_identity`.
    pub gapless_probes_per_sec: f64,
    /// Raw refresh-token grants per second on the sandbox's token endpoint.
    pub raw_token_requests_per_sec: f64,
    /// Raw who-am-I requests per second on the sandbox's probe endpoint.
    pub raw_probe_requests_per_sec: f64,
}

fn bench_error(e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(format!("bench: {e}"))
}

/// Run the benchmark with `identities` identities over `rounds` rounds.
pub async fn refresh(
    dir: &std::path::Path,
    identities: usize,
    rounds: usize,
) -> Result<RefreshBench, DemoError> {
    let identities = identities.max(1);
    let rounds = rounds.max(1);
    let (w, _) = DemoWorld::start(dir, None).await?;
    let mut ids = vec![w.identity.id];
    for i in 1..identities {
        ids.push(w.connect(&format!("bench-{i}")).await?.id);
    }

    let refresh_time = gapless_refreshes(&w, identities, rounds).await?;
    let probe_time = gapless_probes(&w, &ids, rounds).await?;
    let raw_count = identities * rounds;
    let (raw_token_time, raw_probe_time) = raw_http(&w, raw_count).await?;
    let rate = |n: usize, t: std::time::Duration| n as f64 / t.as_secs_f64().max(1e-9);
    Ok(RefreshBench {
        identities,
        rounds,
        gapless_refreshes_per_sec: rate(identities * rounds, refresh_time),
        gapless_probes_per_sec: rate(identities * rounds, probe_time),
        raw_token_requests_per_sec: rate(raw_count, raw_token_time),
        raw_probe_requests_per_sec: rate(raw_count, raw_probe_time),
    })
}

/// gapless refreshing every identity `rounds` times (two hours apart in virtual time): the
/// time the refresh sweeps took.
async fn gapless_refreshes(
    w: &DemoWorld,
    identities: usize,
    rounds: usize,
) -> Result<std::time::Duration, DemoError> {
    let mut refresh_time = std::time::Duration::ZERO;
    let before = w.engine.refresh_count();
    for _ in 0..rounds {
        w.clock.advance(Duration::hours(2));
        let started = Instant::now();
        w.engine.refresh_due(&mut EventLog::default()).await?;
        refresh_time += started.elapsed();
    }
    let refreshed = w.engine.refresh_count() - before;
    if refreshed != (identities * rounds) as u64 {
        return Err(bench_error(format!(
            "expected {} refreshes, saw {refreshed}",
            identities * rounds
        )));
    }
    Ok(refresh_time)
}

/// gapless probing every identity of `ids` `rounds` times (tokens are fresh: no refresh):
/// the time the probes took.
async fn gapless_probes(
    w: &DemoWorld,
    ids: &[gapless_core::IdentityId],
    rounds: usize,
) -> Result<std::time::Duration, DemoError> {
    let mut probe_time = std::time::Duration::ZERO;
    for _ in 0..rounds {
        let started = Instant::now();
        for id in ids {
            let outcome = w
                .engine
                .probe_identity(*id, &mut EventLog::default())
                .await?;
            if !matches!(outcome, ProbeOutcome::Passed(_)) {
                return Err(bench_error(format!("probe failed: {outcome:?}")));
            }
        }
        probe_time += started.elapsed();
    }
    Ok(probe_time)
}

/// Raw HTTP against the same endpoints: one consent, then a chain of `count` refreshes and
/// `count` who-am-I calls: the time of each series.
async fn raw_http(
    w: &DemoWorld,
    count: usize,
) -> Result<(std::time::Duration, std::time::Duration), DemoError> {
    let base = w.sandbox.base_url();
    let http = reqwest::Client::new();
    let token = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{base}/oauth/token");
        async move {
            http.post(url)
                .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
                .form(&form)
                .send()
                .await
                .map_err(bench_error)?
                .json::<serde_json::Value>()
                .await
                .map_err(bench_error)
        }
    };
    let mut answer = token(raw_consent(&base).await?).await?;
    let started = Instant::now();
    for _ in 0..count {
        let refresh_token = answer["refresh_token"]
            .as_str()
            .ok_or_else(|| bench_error(format!("no refresh token: {answer}")))?
            .to_string();
        answer = token(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh_token),
        ])
        .await?;
    }
    let raw_token_time = started.elapsed();
    let access = answer["access_token"]
        .as_str()
        .ok_or_else(|| bench_error("no access token"))?
        .to_string();
    let started = Instant::now();
    for _ in 0..count {
        let status = http
            .get(format!("{base}/v1/me"))
            .bearer_auth(&access)
            .send()
            .await
            .map_err(bench_error)?
            .status();
        if !status.is_success() {
            return Err(bench_error(format!("probe answered {status}")));
        }
    }
    let raw_probe_time = started.elapsed();
    Ok((raw_token_time, raw_probe_time))
}

/// The demo user's consent through the sandbox's browser pages (PKCE): the form that
/// exchanges its code for tokens.
async fn raw_consent(base: &str) -> Result<Vec<(&'static str, String)>, DemoError> {
    let verifier = "bench-verifier-0123456789-0123456789-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let redirect = "http://127.0.0.1:9/callback";
    let mut authorize = url::Url::parse(&format!("{base}/oauth/authorize")).map_err(bench_error)?;
    authorize
        .query_pairs_mut()
        .append_pair("client_id", DEMO_CLIENT_ID)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "ads_read business_management")
        .append_pair("state", "bench")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = browser::approve(authorize.as_str(), DEMO_USER, DEMO_PASSWORD)
        .await
        .map_err(bench_error)?;
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| bench_error("no code"))?;
    Ok(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", redirect.into()),
        ("code_verifier", verifier.into()),
    ])
}

/// The figures of a notification run.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyBench {
    pub incidents: usize,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Wall time to confirm every failure (one sweep) and queue its message.
    pub confirm_all_ms: f64,
    /// From the start of the sweep that confirmed the failures to the SMTP server's
    /// acceptance of each Authorization Failure mail, with the dispatcher delivering each
    /// as its failure commits (as `serve` and `run` do): the burst's figures.
    pub since_sweep: Spread,
    /// From the moment the engine handled each failure (the provider's refusal in hand:
    /// the `created_at` of its message, on a clock that follows the wall clock during the
    /// sweep) to the SMTP server's acceptance of that message, paired by Message-ID.
    pub since_failure: Spread,
    pub mails_accepted: usize,
}

/// First, median, 99th percentile and last of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub first_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// The spread of `values` (milliseconds); zeros when there are none.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| {
            let last = values.len().saturating_sub(1);
            values
                .get(((last as f64) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            first_ms: pick(0.0),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        }
    }
}

/// Where a bench keeps its state: `postgres` when given, else SQLite in `dir`; and its name.
pub fn state_store(
    dir: &std::path::Path,
    postgres: Option<gapless_store::StoreLocation>,
) -> (&'static str, gapless_store::StoreLocation) {
    match postgres {
        Some(location) => ("postgres", location),
        None => (
            "sqlite",
            gapless_store::StoreLocation::Sqlite {
                data_dir: dir.to_path_buf(),
            },
        ),
    }
}

/// `incidents` identities break at once; how long until their mails are accepted by a local
/// SMTP server. The state is SQLite in `dir`, or `postgres` (a fresh database on the test
/// server).
pub async fn notify(
    dir: &std::path::Path,
    incidents: usize,
    postgres: Option<gapless_store::StoreLocation>,
) -> Result<NotifyBench, DemoError> {
    use gapless_notify::testing::SmtpSink;
    let incidents = incidents.max(1);
    let sink = SmtpSink::start(0).await.map_err(bench_error)?;
    let (store, location) = state_store(dir, postgres);
    let (mut w, _) = DemoWorld::start_with(dir, None, location).await?;
    for i in 1..incidents {
        w.connect(&format!("client-{i}")).await?;
    }
    w.engine.set_channel(
        "email",
        gapless_notify::testing::plain_smtp(sink.port, std::time::Duration::from_secs(20))
            .map_err(bench_error)?,
    );
    w.sandbox
        .sandbox()
        .apply_fault(gapless_sandbox::Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .map_err(bench_error)?;
    w.clock.advance(Duration::hours(2));
    // During the sweep the virtual clock follows the wall clock (from a thread of its own,
    // so a busy runtime can only make it lag: a message's `created_at` then reads earlier
    // and its latency longer, never shorter).
    let base = gapless_core::Clock::now(&w.clock);
    let started = Instant::now();
    let follower = WallClockFollower::start(&w.clock, base, started);
    // As in `serve`: the dispatcher delivers each mail as its failure commits.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweep = async {
        let mut log = EventLog::default();
        let swept = w.engine.refresh_due(&mut log).await;
        let confirmed = started.elapsed();
        for _ in 0..6_000 {
            if sink.messages().len() >= incidents {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        swept.map(|()| confirmed)
    };
    let ((), confirmed) = tokio::join!(w.engine.deliver_as_written(stopped), sweep);
    drop(follower);
    let confirmed = confirmed?;
    let received = sink.messages();
    if received.len() != incidents {
        return Err(bench_error(format!(
            "expected {incidents} mails, the SMTP server accepted {}",
            received.len()
        )));
    }
    let since_start = |accepted: Instant| (accepted - started).as_secs_f64() * 1000.0;
    let after_failure = after_failure(&w, base, &received, since_start).await?;
    Ok(NotifyBench {
        incidents,
        store: store.into(),
        confirm_all_ms: confirmed.as_secs_f64() * 1000.0,
        since_sweep: Spread::of(
            received
                .iter()
                .map(|m| since_start(m.accepted_at))
                .collect(),
        ),
        since_failure: Spread::of(after_failure),
        mails_accepted: received.len(),
    })
}

/// A virtual clock set to `base` plus the wall time since `started`, every 250 µs, from a
/// thread of its own, until this is dropped.
struct WallClockFollower {
    following: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WallClockFollower {
    fn start(
        clock: &gapless_core::VirtualClock,
        base: chrono::DateTime<chrono::Utc>,
        started: Instant,
    ) -> Self {
        let following = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread = {
            let (clock, following) = (clock.clone(), following.clone());
            std::thread::spawn(move || {
                while following.load(std::sync::atomic::Ordering::Relaxed) {
                    let elapsed = Duration::from_std(started.elapsed()).unwrap_or_default();
                    clock.set(base + elapsed);
                    std::thread::sleep(std::time::Duration::from_micros(250));
                }
            })
        };
        Self {
            following,
            thread: Some(thread),
        }
    }
}

impl Drop for WallClockFollower {
    fn drop(&mut self) {
        self.following
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// For each mail `received`, milliseconds from its failure (the `created_at` of its
/// message in the outbox, found by Message-ID, from `base`) to the server's acceptance
/// (`since_start` of it).
async fn after_failure(
    w: &DemoWorld,
    base: chrono::DateTime<chrono::Utc>,
    received: &[gapless_notify::testing::Received],
    since_start: impl Fn(Instant) -> f64,
) -> Result<Vec<f64>, DemoError> {
    let handled: std::collections::HashMap<String, f64> = w
        .engine
        .store()
        .notifications(false)
        .await?
        .into_iter()
        .map(|n| {
            let at = (n.created_at - base).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            (n.message_id, at)
        })
        .collect();
    let mut after_failure = Vec::with_capacity(received.len());
    for mail in received {
        let id = message_id(&mail.data)
            .ok_or_else(|| bench_error("a mail without a Message-ID header"))?;
        let failed_at = handled
            .get(id.as_str())
            .ok_or_else(|| bench_error(format!("no message {id} in the outbox")))?;
        after_failure.push(since_start(mail.accepted_at) - failed_at);
    }
    Ok(after_failure)
}

/// The Message-ID header of a mail as the SMTP server received it.
fn message_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_string())
        })
}

/// The figures of the gap computation benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct GapsBench {
    pub pipelines: usize,
    pub days: usize,
    pub ledger_entries: usize,
    pub gap_ranges: usize,
    /// Wall time of `ledger::gaps` over every pipeline.
    pub gaps_ms: f64,
    /// Wall time of `ledger::plan_sync` (the scheduler's per-run plan) over every pipeline.
    pub plan_ms: f64,
}

/// Compute gaps (and sync plans) for `pipelines` pipelines with `days` daily windows each,
/// about 3% of them missing in runs and a few lost. The ledgers are built before timing.
pub fn gaps(pipelines: usize, days: usize) -> GapsBench {
    use gapless_core::{IdentityId, ledger};
    let start = crate::demo::demo_start();
    let now = start + Duration::days(days as i64) + Duration::hours(1);
    let identity = IdentityId::new();
    let mut total_entries = 0;
    let mut gap_ranges = 0;
    let mut gaps_time = std::time::Duration::ZERO;
    let mut plan_time = std::time::Duration::ZERO;
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..pipelines {
        let p = crate::demo::demo_pipeline("bench", identity, start);
        let entries = synthetic_ledger(&p, days, now, &mut seed);
        total_entries += entries.len();
        let started = Instant::now();
        let g = ledger::gaps(
            &entries,
            gapless_core::Retention::conservative(Duration::days(37 * 30)).ok(),
        );
        gaps_time += started.elapsed();
        gap_ranges += g.len();
        let started = Instant::now();
        let plan = ledger::plan_sync(
            &p,
            gapless_core::Retention::conservative(Duration::days(37 * 30)).ok(),
            &entries,
            now,
        );
        plan_time += started.elapsed();
        std::hint::black_box((g, plan));
    }
    GapsBench {
        pipelines,
        days,
        ledger_entries: total_entries,
        gap_ranges,
        gaps_ms: gaps_time.as_secs_f64() * 1000.0,
        plan_ms: plan_time.as_secs_f64() * 1000.0,
    }
}

/// `days` daily windows of `p` from its start: loaded, but for runs of one to five days
/// (about one day in a hundred starts one, from `seed`): lost in the first 30 days,
/// missing after them.
fn synthetic_ledger(
    p: &gapless_core::Pipeline,
    days: usize,
    now: chrono::DateTime<chrono::Utc>,
    seed: &mut u64,
) -> Vec<gapless_core::LedgerEntry> {
    use gapless_core::{LedgerEntry, MissingReason, Window, WindowState};
    let mut entries = Vec::with_capacity(days);
    let mut missing_run = 0u32;
    for d in 0..days {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        if missing_run == 0 && seed.is_multiple_of(100) {
            missing_run = 1 + (*seed >> 8) as u32 % 5;
        }
        let window_start = p.start + Duration::days(d as i64);
        let window = Window::new(window_start, window_start + Duration::days(1));
        let state = if missing_run > 0 {
            missing_run -= 1;
            if d < 30 {
                WindowState::Lost {
                    at: now,
                    reason: None,
                }
            } else {
                WindowState::Missing {
                    reason: MissingReason::IdentityBroken {
                        identity: p.source_identity,
                        cause: gapless_core::FailureCause::Transient,
                        since: window.end,
                    },
                    since: window.end,
                }
            }
        } else {
            WindowState::Loaded {
                at: window.end + Duration::days(3),
                rows: 4,
                attempt: 1,
            }
        };
        entries.push(LedgerEntry {
            pipeline: p.id,
            stream: "insights".into(),
            window,
            state,
            attempts: 1,
            updated_at: window.end,
        });
    }
    entries
}

/// The figures of the load benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBench {
    pub rows: usize,
    /// gapless: one window replaced in one transaction (delete the window, then a text
    /// COPY straight into the table).
    pub gapless_rows_per_sec: f64,
    pub gapless_ms: f64,
    /// `psql \copy` of the same rows (CSV) into a table of the same types.
    pub psql_copy_rows_per_sec: f64,
    pub psql_copy_ms: f64,
    /// `psql \copy` of the same rows into a table shaped as the destination's (the
    /// pipeline and window columns, and their index), in a database of its own.
    pub psql_copy_shaped_rows_per_sec: f64,
    pub psql_copy_shaped_ms: f64,
    /// gapless's rate over each `psql \copy` rate: to the bare table, to the shaped one.
    pub ratio: f64,
    pub ratio_shaped: f64,
    /// Then small windows replaced one by one in the table that holds the big one (the
    /// path of a daily run): how many, rows in each, and the time of each load.
    pub small_windows: usize,
    pub small_window_rows: usize,
    pub small_window_ms_p50: f64,
    pub small_window_ms_max: f64,
}

/// Load `rows` rows into PostgreSQL (a fresh database on the test server) through the
/// PostgreSQL destination, and the same rows with `psql \copy`.
pub async fn load(rows: usize) -> Result<LoadBench, DemoError> {
    use gapless_core::{PipelineId, Row, Window};
    use gapless_destinations::Destination;
    use gapless_store::{StoreLocation, testing::TestDatabase};

    let database = TestDatabase::create().await?;
    let StoreLocation::Postgres { url } = &database.location else {
        return Err(bench_error("the test database is not PostgreSQL"));
    };
    let destination = bench_destination(url)?;
    let schema = gapless_providers::sandbox::descriptor()
        .stream("insights")
        .map(|s| s.schema.clone())
        .ok_or_else(|| bench_error("no insights stream"))?;
    let data = insights_rows(rows)?;
    let start = demo_start();
    let window = Window::new(start, start + Duration::days(1));
    let pipeline = PipelineId::new();
    let started = Instant::now();
    let loaded = destination
        .load_window(pipeline, &schema, window, &data)
        .await
        .map_err(|f| bench_error(gapless_engine::describe_failure(&f)))?;
    let gapless_time = started.elapsed();
    if loaded != rows as u64 {
        return Err(bench_error(format!("loaded {loaded} of {rows} rows")));
    }
    // Daily windows of another pipeline, each replaced twice (a load, then a settle
    // re-pull), into the table that now holds the big window.
    const SMALL_WINDOWS: usize = 100;
    const SMALL_ROWS: usize = 100;
    let small: Vec<Row> = data.iter().take(SMALL_ROWS).cloned().collect();
    let other = PipelineId::new();
    let mut times = Vec::with_capacity(SMALL_WINDOWS * 2);
    for pass in 0..2 {
        for n in 0..SMALL_WINDOWS {
            let day_start = start + Duration::days(1 + n as i64);
            let started = Instant::now();
            destination
                .load_window(
                    other,
                    &schema,
                    Window::new(day_start, day_start + Duration::days(1)),
                    &small,
                )
                .await
                .map_err(|f| {
                    bench_error(format!(
                        "pass {pass}: {}",
                        gapless_engine::describe_failure(&f)
                    ))
                })?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let small_p50 = times.get(times.len() / 2).copied().unwrap_or_default();
    let small_max = times.last().copied().unwrap_or_default();

    let psql_time = psql_copy(url, &data, &BulkTable::Bare)?;
    drop(database);
    let shaped_database = TestDatabase::create().await?;
    let shaped_time = psql_copy(
        shaped_database.url(),
        &data,
        &BulkTable::Shaped(&pipeline.to_string()),
    )?;
    drop(shaped_database);
    let rate = |t: std::time::Duration| rows as f64 / t.as_secs_f64().max(1e-9);
    Ok(LoadBench {
        rows,
        gapless_rows_per_sec: rate(gapless_time),
        gapless_ms: gapless_time.as_secs_f64() * 1000.0,
        psql_copy_rows_per_sec: rate(psql_time),
        psql_copy_ms: psql_time.as_secs_f64() * 1000.0,
        psql_copy_shaped_rows_per_sec: rate(shaped_time),
        psql_copy_shaped_ms: shaped_time.as_secs_f64() * 1000.0,
        ratio: rate(gapless_time) / rate(psql_time).max(1e-9),
        ratio_shaped: rate(gapless_time) / rate(shaped_time).max(1e-9),
        small_windows: SMALL_WINDOWS * 2,
        small_window_rows: SMALL_ROWS,
        small_window_ms_p50: small_p50,
        small_window_ms_max: small_max,
    })
}

/// The PostgreSQL destination at `url` (its user and password), into schema `bench`.
fn bench_destination(url: &str) -> Result<gapless_destinations::PostgresDestination, DemoError> {
    let parsed = url::Url::parse(url).map_err(bench_error)?;
    let target = gapless_destinations::PostgresTarget {
        url: url.to_string(),
        schema: "bench".into(),
    };
    gapless_destinations::PostgresDestination::new(
        &target,
        parsed.username(),
        &gapless_vault::Password::new(parsed.password().unwrap_or("").to_string()),
    )
    .map_err(|f| bench_error(gapless_engine::describe_failure(&f)))
}

/// `rows` rows of the sandbox's insights stream, all of one day.
fn insights_rows(rows: usize) -> Result<Vec<gapless_core::Row>, DemoError> {
    use gapless_core::Value;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).ok_or_else(|| bench_error("date"))?;
    Ok((0..rows)
        .map(|i| {
            vec![
                Value::Date(day),
                Value::Text(format!("act_1001_c{i}")),
                Value::Text(format!("Campaign {i} of act_1001")),
                Value::Integer(1000 + (i as i64 % 9000)),
                Value::Integer(i as i64 % 300),
                Value::Text(format!("{}.{:02}", i % 5000, i % 100)),
                Value::Integer(i as i64 % 17),
            ]
        })
        .collect())
}

fn tempfile_dir() -> Result<std::path::PathBuf, DemoError> {
    let dir = std::env::temp_dir().join(format!("gapless-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(bench_error)?;
    Ok(dir)
}

/// The figures of a scale run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleBench {
    pub identities: usize,
    pub instances: usize,
    pub concurrency: usize,
    pub latency_ms: u64,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Creating the identities and pipelines through the store, with the two ticks of the
    /// memory measure.
    pub setup_secs: f64,
    /// The round in which every pipeline has one new day due: all instances ticking until
    /// each window is loaded (refresh, report request, parse, load, ledger).
    pub round_secs: f64,
    pub windows_loaded: usize,
    pub pipelines_per_sec: f64,
    /// One tick of one instance a minute later, when nothing but a few probes is due.
    pub idle_tick_ms: f64,
    /// Resident memory each identity at rest adds: from a tenth of them to all of them, each
    /// time after a tick before any of their windows is due (the in-process sandbox, the
    /// store's caches and what the allocator kept of the second, larger tick count too).
    pub rss_idle_bytes_per_identity: Option<f64>,
    /// Resident memory added per identity after the round as well (also what the sandbox
    /// keeps of the tokens it issued, and what the allocator kept of the round's peak).
    pub rss_bytes_per_identity: Option<f64>,
}

/// All `engines` tick together, 31 s apart in virtual time, until `windows` windows are
/// loaded (a run that found its token being refreshed elsewhere is due at the next tick);
/// at most ten ticks. The windows loaded and the time it took.
async fn round_of(
    w: &DemoWorld,
    engines: &[gapless_engine::Engine],
    windows: usize,
) -> Result<(usize, std::time::Duration), DemoError> {
    let started = Instant::now();
    let mut loaded = 0;
    for _ in 0..10 {
        let ticks = engines.iter().map(|e| e.tick());
        for log in futures_util::future::join_all(ticks).await {
            let log = log?;
            no_failure(&log)?;
            loaded += log
                .events
                .iter()
                .filter(|e| matches!(e, gapless_engine::Event::WindowLoaded { .. }))
                .count();
        }
        if loaded >= windows {
            return Ok((loaded, started.elapsed()));
        }
        w.clock.advance(Duration::seconds(31));
    }
    Err(bench_error(format!(
        "only {loaded} of {windows} windows loaded in ten ticks"
    )))
}

/// A bench's tick in which a run, a phase or an identity failed measured something else
/// than it says (a copy that came due, a sandbox refusing): an error naming the first.
fn no_failure(log: &gapless_engine::EventLog) -> Result<(), DemoError> {
    use gapless_engine::Event;
    match log.events.iter().find(|e| {
        matches!(
            e,
            Event::PipelineFailed { .. } | Event::PhaseFailed { .. } | Event::IncidentOpened { .. }
        )
    }) {
        Some(failed) => Err(bench_error(format!(
            "the bench's tick failed: {}",
            failed.line()
        ))),
        None => Ok(()),
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Grow the world to `identities` identities, clones of its own through the store, each
/// new one with one daily pipeline of the sandbox ad account.
pub async fn populate(w: &DemoWorld, identities: usize) -> Result<(), DemoError> {
    grow(w, 0, identities.saturating_sub(1)).await
}

/// `count` more identities (numbered from `first`), each with one daily pipeline.
async fn grow(w: &DemoWorld, first: usize, count: usize) -> Result<(), DemoError> {
    let clones = w.clone_identities(first, count).await?;
    for (i, identity) in clones.iter().enumerate() {
        w.add_pipeline(&format!("scale-{}-daily", first + i + 1), identity.id)
            .await?;
    }
    Ok(())
}

/// `identities` identities, each with one daily pipeline of the sandbox ad account, run by
/// `instances` engines on one store; the sandbox answers each API call after `latency_ms`.
/// The store is SQLite in `dir`, or `postgres` (a fresh database on the test server).
/// Request budgets are off: every identity reads the same sandbox account.
pub async fn scale(
    dir: &std::path::Path,
    identities: usize,
    instances: usize,
    concurrency: Option<usize>,
    latency_ms: u64,
    postgres: Option<gapless_store::StoreLocation>,
) -> Result<ScaleBench, DemoError> {
    let identities = identities.max(1);
    let instances = instances.max(1);
    let (store, location) = state_store(dir, postgres);
    let sandbox = gapless_sandbox::SandboxConfig {
        rotate_refresh_tokens: false,
        ..Default::default()
    };
    let (w, _) = DemoWorld::start_configured(dir, None, location, sandbox, None).await?;
    let mut engines = Vec::with_capacity(instances);
    for _ in 0..instances {
        let mut engine = w.new_engine_with(|c| c.concurrency = concurrency).await?;
        engine.set_rate_limit(gapless_providers::sandbox::NAME, None);
        engines.push(engine);
    }
    let rss_before = rss_bytes();
    // A tenth first, then the rest, each followed by a tick before any of their windows is
    // due (day 1 has not closed; the probes that come due then run, about one identity in
    // twenty): the memory the rest adds is what an identity at rest costs, the setup's
    // passing allocations having been made (and kept by the allocator) once.
    let started = Instant::now();
    let tenth = (identities / 10).max(1);
    grow(&w, 0, tenth - 1).await?;
    engines[0].tick().await?;
    let rss_tenth = rss_bytes();
    grow(&w, tenth - 1, identities - tenth).await?;
    engines[0].tick().await?;
    let rss_idle = rss_bytes();
    let setup_secs = started.elapsed().as_secs_f64();
    if latency_ms > 0 {
        w.sandbox
            .sandbox()
            .apply_fault(gapless_sandbox::Fault::Slow {
                count: u32::MAX,
                delay_ms: latency_ms,
            })
            .map_err(bench_error)?;
    }
    // Day 1 closed an hour ago: one window due per pipeline.
    w.clock.set(w.day(2) + Duration::hours(1));
    let (loaded, round) = round_of(&w, &engines, identities).await?;
    w.clock.advance(Duration::minutes(1));
    let started = Instant::now();
    engines[0].tick().await?;
    let idle = started.elapsed();
    let per_identity = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / identities as f64)
        }
        _ => None,
    };
    Ok(ScaleBench {
        identities,
        instances,
        concurrency: engines[0].concurrency(),
        latency_ms,
        store: store.into(),
        setup_secs,
        round_secs: round.as_secs_f64(),
        windows_loaded: loaded,
        pipelines_per_sec: loaded as f64 / round.as_secs_f64().max(1e-9),
        idle_tick_ms: idle.as_secs_f64() * 1000.0,
        rss_idle_bytes_per_identity: match (rss_tenth, rss_idle) {
            (Some(tenth_in), Some(all_in)) if identities > tenth => {
                Some(all_in.saturating_sub(tenth_in) as f64 / (identities - tenth) as f64)
            }
            _ => None,
        },
        rss_bytes_per_identity: per_identity(rss_bytes()),
    })
}

/// The figures of a due-work run at a size the consent flow cannot reach.
#[derive(Debug, Clone, Serialize)]
pub struct DueBench {
    pub identities: usize,
    pub pipelines: usize,
    /// Identities and pipelines created through the store as `scale` does (openable
    /// credentials, one daily pipeline each); the rest are copies of them.
    pub templates: usize,
    pub setup_secs: f64,
    /// Copying the templates by SQL up to `identities`, and `ANALYZE`.
    pub replicate_secs: f64,
    /// Ticks a minute apart, in milliseconds: every due-work query of a tick (refresh,
    /// pipeline claims, recoveries, spool, probes, expiries, outages, reminders, outbox,
    /// audit), and the probes of the templates that came due in that minute.
    pub idle_tick_ms: Spread,
    /// The ticks until every template's pipeline, due again, loaded its new day (the
    /// copies are not due): the cost of some due work among all the rows.
    pub round_secs: f64,
    pub windows_loaded: usize,
}

/// `identities` identities in the PostgreSQL store at `postgres`: `templates` of them
/// created through the store with one daily pipeline each, the rest copied from them by
/// SQL (rounded up to a multiple of `templates`) with their due times from the fourth day,
/// spread over a day (a copy's credential cannot be opened).
/// Then ticks a minute apart, and the round in which the templates' pipelines are due.
pub async fn due(
    dir: &std::path::Path,
    identities: usize,
    templates: usize,
    postgres: gapless_store::StoreLocation,
) -> Result<DueBench, DemoError> {
    let templates = templates.clamp(1, identities.max(1));
    let copies =
        u32::try_from(identities.div_ceil(templates).saturating_sub(1)).map_err(bench_error)?;
    let sandbox = gapless_sandbox::SandboxConfig {
        rotate_refresh_tokens: false,
        ..Default::default()
    };
    let (w, _) = DemoWorld::start_configured(dir, None, postgres, sandbox, None).await?;
    let mut engine = w.new_engine_with(|_| {}).await?;
    engine.set_rate_limit(gapless_providers::sandbox::NAME, None);
    let started = Instant::now();
    populate(&w, templates).await?;
    engine.tick().await?;
    let setup_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (copied, copied_pipelines) = w
        .engine
        .store()
        .replicate_for_bench(copies, w.day(4), 86_400)
        .await?;
    let replicate_secs = started.elapsed().as_secs_f64();
    let mut idle = Vec::new();
    for _ in 0..5 {
        w.clock.advance(Duration::minutes(1));
        let started = Instant::now();
        let log = engine.tick().await?;
        idle.push(started.elapsed().as_secs_f64() * 1000.0);
        no_failure(&log)?;
    }
    w.clock.set(w.day(2) + Duration::hours(1));
    let (loaded, round) = round_of(&w, std::slice::from_ref(&engine), templates).await?;
    let round_secs = round.as_secs_f64();
    Ok(DueBench {
        identities: templates + usize::try_from(copied).map_err(bench_error)?,
        pipelines: templates + usize::try_from(copied_pipelines).map_err(bench_error)?,
        templates,
        setup_secs,
        replicate_secs,
        idle_tick_ms: Spread::of(idle),
        round_secs,
        windows_loaded: loaded,
    })
}

/// Where `bench e2e` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eDestination {
    /// The SQLite warehouse in the bench's directory.
    Sqlite,
    /// A fresh database on the PostgreSQL test server.
    Postgres,
}

/// The figures of an end-to-end run.
#[derive(Debug, Clone, Serialize)]
pub struct E2eBench {
    pub destination: String,
    pub rows_per_window: usize,
    pub windows: usize,
    pub rows: u64,
    /// Report requests the sandbox served (pages of at most 500 rows, as the definition asks).
    pub requests: u64,
    /// From the first tick until every window is loaded and recorded: token, report
    /// requests over HTTP, JSON parsing, windowing, loading, ledger.
    pub secs: f64,
    pub rows_per_sec: f64,
    pub ms_per_window: f64,
    /// The same report pages fetched over HTTP from the sandbox one after another, bodies
    /// read and not parsed: what the emulator and the loopback can serve at most.
    pub sandbox_http_rows_per_sec: f64,
    /// The same rows, already in a CSV file, loaded by the database's own bulk loader
    /// (`psql \copy`, or `sqlite3 .import` in one transaction) into a table of the same
    /// column types.
    pub bulk_tool: String,
    pub bulk_secs: f64,
    pub bulk_rows_per_sec: f64,
    /// gapless's rows/s divided by the bulk loader's.
    pub ratio: f64,
    /// The same rows through the bulk loader into a table shaped as the destination
    /// makes it (the window columns and the index its replace-window delete uses).
    pub bulk_shaped_secs: f64,
    pub bulk_shaped_rows_per_sec: f64,
    /// gapless's rows/s divided by the bulk loader's into the shaped table.
    pub ratio_shaped: f64,
    /// Every window read back from the destination equals the sandbox's rows.
    pub verified_windows: usize,
}

/// The path a user runs, end to end: the sandbox serves `rows_per_window` rows per daily
/// window (in pages of 500, over HTTP), `windows` windows are due, and the engine ticks
/// until each is loaded into `destination` and recorded in the ledger (state in SQLite in
/// `dir`). Then the same rows go through the database's own bulk loader, for comparison.
pub async fn e2e(
    dir: &std::path::Path,
    rows_per_window: usize,
    windows: usize,
    destination: E2eDestination,
) -> Result<E2eBench, DemoError> {
    let rows_per_window = rows_per_window.clamp(1, gapless_sandbox::report::MAX_CAMPAIGNS as usize);
    let windows = windows.clamp(1, 3_650);
    let sandbox = gapless_sandbox::SandboxConfig {
        rotate_refresh_tokens: false,
        campaigns_per_account: u32::try_from(rows_per_window).ok(),
        // The clock jumps `windows` days ahead at once: a refresh token that lived 90 days
        // would have ended before the first run (and every window with it).
        refresh_token_ttl_secs: None,
        lookback_days: i64::try_from(windows).unwrap_or(3_650).saturating_add(30),
        ..Default::default()
    };
    let location = gapless_store::StoreLocation::Sqlite {
        data_dir: dir.to_path_buf(),
    };
    let (mut w, _) = DemoWorld::start_configured(dir, None, location, sandbox, None).await?;
    let database = match destination {
        E2eDestination::Sqlite => None,
        E2eDestination::Postgres => Some(gapless_store::testing::TestDatabase::create().await?),
    };
    let pipeline = match &database {
        None => w.pipeline.clone(),
        Some(database) => to_postgres(&mut w, database).await?,
    };
    // `windows` days have closed an hour ago.
    w.clock.set(
        w.day(u32::try_from(windows).unwrap_or(u32::MAX)) + Duration::days(1) + Duration::hours(1),
    );
    let requests_before = w.sandbox.sandbox().stats().report_requests;
    let started = Instant::now();
    let rows = tick_until_loaded(&w, windows).await?;
    let elapsed = started.elapsed();
    let requests = w.sandbox.sandbox().stats().report_requests - requests_before;
    let checks = w.check_pipeline_against_truth(&pipeline).await?;
    if let Some(bad) = checks.iter().find(|c| !c.matches_truth) {
        return Err(bench_error(format!(
            "window {} differs from the sandbox's rows ({} loaded, {} true)",
            bad.window, bad.rows_loaded, bad.rows_truth
        )));
    }

    let sandbox_http = fetch_pages(&w, windows).await?;
    let bulk = bulk_baseline(&w, dir, database.as_ref(), windows).await?;
    drop(database);
    let rate = |rows: u64, t: std::time::Duration| rows as f64 / t.as_secs_f64().max(1e-9);
    let rows_per_sec = rate(rows, elapsed);
    let bulk_rows_per_sec = rate(bulk.rows, bulk.bare);
    let bulk_shaped_rows_per_sec = rate(bulk.rows, bulk.shaped);
    Ok(E2eBench {
        destination: match destination {
            E2eDestination::Sqlite => "sqlite",
            E2eDestination::Postgres => "postgres",
        }
        .into(),
        rows_per_window,
        windows,
        rows,
        requests,
        secs: elapsed.as_secs_f64(),
        rows_per_sec,
        ms_per_window: elapsed.as_secs_f64() * 1000.0 / windows as f64,
        sandbox_http_rows_per_sec: rate(rows, sandbox_http),
        bulk_tool: bulk.tool.into(),
        bulk_secs: bulk.bare.as_secs_f64(),
        bulk_rows_per_sec,
        ratio: rows_per_sec / bulk_rows_per_sec.max(1e-9),
        bulk_shaped_secs: bulk.shaped.as_secs_f64(),
        bulk_shaped_rows_per_sec,
        ratio_shaped: rows_per_sec / bulk_shaped_rows_per_sec.max(1e-9),
        verified_windows: checks.len(),
    })
}

/// The demo pipeline replaced by one loading into `database` with a password identity of
/// its own.
async fn to_postgres(
    w: &mut DemoWorld,
    database: &gapless_store::testing::TestDatabase,
) -> Result<gapless_core::Pipeline, DemoError> {
    let gapless_store::StoreLocation::Postgres { url } = &database.location else {
        return Err(bench_error("the test database is not PostgreSQL"));
    };
    let parsed = url::Url::parse(url).map_err(bench_error)?;
    // A server that trusts local connections ignores the password, but an identity never
    // holds an empty one.
    let password = parsed.password().unwrap_or("trusted-local-server");
    let credential = gapless_vault::Credential::Password {
        username: parsed.username().to_string(),
        password: gapless_vault::Password::new(password.to_string()),
    };
    let target = gapless_destinations::PostgresTarget {
        url: url.clone(),
        schema: "reports".into(),
    };
    let (_, pipeline) = w
        .pipeline_into_postgres("bench-to-postgres", "bench-warehouse", target, credential)
        .await?;
    // The demo pipeline would load the same windows into SQLite meanwhile.
    w.engine.store().delete_pipeline(w.pipeline.id).await?;
    Ok(pipeline)
}

/// Tick the world's engine until `windows` windows are loaded: the rows loaded.
async fn tick_until_loaded(w: &DemoWorld, windows: usize) -> Result<u64, DemoError> {
    let (mut loaded, mut rows) = (0, 0);
    for _ in 0..1_000 {
        let log = w.engine.tick().await?;
        for event in &log.events {
            if let gapless_engine::Event::WindowLoaded { rows: n, .. } = event {
                loaded += 1;
                rows += n;
            }
        }
        if loaded >= windows {
            return Ok(rows);
        }
        w.clock.advance(Duration::seconds(31));
    }
    Err(bench_error(format!(
        "only {loaded} of {windows} windows loaded"
    )))
}

/// What the database's own bulk loader took for the same rows.
struct BulkBaseline {
    tool: &'static str,
    rows: u64,
    /// Into a table of the report's columns alone.
    bare: std::time::Duration,
    /// Into a table shaped as the destination makes it: the two window columns first and
    /// the index the replace-window delete uses.
    shaped: std::time::Duration,
}

/// The same rows as the first `windows` days through the database's own bulk loader,
/// into a bare table and into one shaped as the destination's, each in a database of its
/// own (on PostgreSQL, the shaped table in a second fresh one).
async fn bulk_baseline(
    w: &DemoWorld,
    dir: &std::path::Path,
    database: Option<&gapless_store::testing::TestDatabase>,
    windows: usize,
) -> Result<BulkBaseline, DemoError> {
    use gapless_core::{Clock as _, Row};

    let now = w.clock.now();
    let truth: Vec<Row> = (1..=windows)
        .flat_map(|day| w.truth_rows(w.day(u32::try_from(day).unwrap_or(1)).date_naive(), now))
        .collect();
    let rows = truth.len() as u64;
    let pipeline = w.pipeline.id.to_string();
    match database {
        Some(database) => {
            let gapless_store::StoreLocation::Postgres { url } = &database.location else {
                return Err(bench_error("the test database is not PostgreSQL"));
            };
            let other = gapless_store::testing::TestDatabase::create().await?;
            Ok(BulkBaseline {
                tool: "psql \\copy",
                rows,
                bare: psql_copy(url, &truth, &BulkTable::Bare)?,
                shaped: psql_copy(other.url(), &truth, &BulkTable::Shaped(&pipeline))?,
            })
        }
        None => Ok(BulkBaseline {
            tool: "sqlite3 .import",
            rows,
            bare: sqlite_import(dir, &truth, &BulkTable::Bare)?,
            shaped: sqlite_import(dir, &truth, &BulkTable::Shaped(&pipeline))?,
        }),
    }
}

/// The table a baseline loads into.
enum BulkTable<'a> {
    /// The insights columns alone, typed as the destinations type them.
    Bare,
    /// As the destinations make a stream's table (the PostgreSQL and SQLite ones alike):
    /// the pipeline and window-start columns first, and an index on the two; each row
    /// with this pipeline id and its day's window start.
    Shaped(&'a str),
}

/// The insights columns, typed as the PostgreSQL destination types them.
const PG_COLUMNS: &str = "date date, campaign_id text, campaign_name text, impressions bigint, clicks bigint, spend numeric, conversions bigint";

/// The insights columns, typed as the SQLite destination types them (a day and a decimal
/// as text).
const SQLITE_COLUMNS: &str = "date TEXT, campaign_id TEXT, campaign_name TEXT, impressions INTEGER, clicks INTEGER, spend TEXT, conversions INTEGER";

impl BulkTable<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Bare => "bench_bulk",
            Self::Shaped(_) => "bench_shaped",
        }
    }

    /// The statements that make the table with `columns` (each ending with `;`).
    fn create(&self, columns: &str) -> String {
        match self {
            Self::Bare => format!("CREATE TABLE bench_bulk ({columns});"),
            Self::Shaped(_) => format!(
                "CREATE TABLE bench_shaped (_gapless_pipeline text NOT NULL, _gapless_window_start text NOT NULL, {columns}); \
                 CREATE INDEX bench_shaped_gapless_window ON bench_shaped (_gapless_pipeline, _gapless_window_start);"
            ),
        }
    }
}

/// `rows` as a CSV file for `table` in a new directory (which the caller removes).
fn write_csv(
    rows: &[gapless_core::Row],
    table: &BulkTable<'_>,
) -> Result<(std::path::PathBuf, std::path::PathBuf), DemoError> {
    use gapless_core::Value;
    use std::io::Write as _;
    let dir = tempfile_dir()?;
    let csv = dir.join("rows.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&csv).map_err(bench_error)?);
    for row in rows {
        let mut fields: Vec<String> = Vec::with_capacity(row.len() + 2);
        if let BulkTable::Shaped(pipeline) = table {
            let day = match row.first() {
                Some(Value::Date(d)) => d.format("%Y-%m-%dT00:00:00Z").to_string(),
                _ => String::new(),
            };
            fields.extend([pipeline.to_string(), day]);
        }
        fields.extend(row.iter().map(|v| match v {
            Value::Null => String::new(),
            Value::Integer(i) => i.to_string(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Text(t) => format!("\"{}\"", t.replace('"', "\"\"")),
        }));
        writeln!(file, "{}", fields.join(",")).map_err(bench_error)?;
    }
    file.flush().map_err(bench_error)?;
    Ok((dir, csv))
}

/// The time `psql \copy` takes to load `rows` (from a CSV file written beforehand) into
/// `table`, new in the database at `url`.
fn psql_copy(
    url: &str,
    rows: &[gapless_core::Row],
    table: &BulkTable<'_>,
) -> Result<std::time::Duration, DemoError> {
    let (dir, csv) = write_csv(rows, table)?;
    let psql = |command: &str| {
        std::process::Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", url, "-c", command])
            .output()
            .map_err(|e| bench_error(format!("psql: {e}")))
    };
    let created = psql(&table.create(PG_COLUMNS))?;
    if !created.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(bench_error(format!(
            "psql could not create the table: {}",
            String::from_utf8_lossy(&created.stderr)
        )));
    }
    let started = Instant::now();
    let output = psql(&format!(
        "\\copy {} FROM '{}' CSV",
        table.name(),
        csv.display()
    ))?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(bench_error(format!(
            "psql \\copy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(elapsed)
}

/// The time `sqlite3 .import` takes to load `rows` (from a CSV file written beforehand)
/// into `table`, new in a new database file in `dir`, in one transaction.
fn sqlite_import(
    dir: &std::path::Path,
    rows: &[gapless_core::Row],
    table: &BulkTable<'_>,
) -> Result<std::time::Duration, DemoError> {
    let (csv_dir, csv) = write_csv(rows, table)?;
    let database = dir.join(format!("{}.sqlite", table.name()));
    let script = format!(
        "{}\nBEGIN;\n.import --csv {} {}\nCOMMIT;\n",
        table.create(SQLITE_COLUMNS),
        csv.display(),
        table.name()
    );
    let started = Instant::now();
    let output = std::process::Command::new("sqlite3")
        .args(["-bail", &database.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            child.wait_with_output()
        })
        .map_err(|e| bench_error(format!("sqlite3: {e}")))?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&csv_dir);
    if !output.status.success() {
        return Err(bench_error(format!(
            "sqlite3 .import failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(elapsed)
}

/// The time to fetch every report page of the demo account's first `windows` days from
/// the sandbox (31 days per range, as the connector asks), reading each body unparsed.
async fn fetch_pages(w: &DemoWorld, windows: usize) -> Result<std::time::Duration, DemoError> {
    let token = w.access_token(w.identity.id).await?;
    let http = reqwest::Client::new();
    let base = w.sandbox.base_url();
    let started = Instant::now();
    let mut first_day = 1;
    while first_day <= windows {
        let last_day = (first_day + 30).min(windows);
        let day = |n: usize| {
            w.day(u32::try_from(n).unwrap_or(1))
                .date_naive()
                .to_string()
        };
        let mut next = Some(format!(
            "{base}/v1/{}/insights?since={}&until={}&limit=500",
            gapless_sandbox::DEMO_AD_ACCOUNT,
            day(first_day),
            day(last_day)
        ));
        while let Some(url) = next.take() {
            let body = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(bench_error)?
                .bytes()
                .await
                .map_err(bench_error)?;
            // Only the next page's address is looked for, without parsing the page.
            let text = String::from_utf8_lossy(&body);
            next = text.find("\"next\":\"").and_then(|at| {
                let rest = &text[at + 8..];
                rest.find('"').map(|end| rest[..end].replace("\\/", "/"))
            });
        }
        first_day = last_day + 1;
    }
    Ok(started.elapsed())
}

/// The figures of a simulation: identities living through random revocations and
/// reauthorizations in virtual time, and what the ledger says at the end.
#[derive(Debug, Clone, Serialize)]
pub struct SimulateBench {
    pub identities: usize,
    pub days: u32,
    pub lookback_days: u32,
    pub seed: u64,
    /// Connecting every identity through the consent flow and creating its pipeline.
    pub setup_secs: f64,
    /// The simulated days: revocations, reauthorizations and one engine tick per day
    /// (refresh, runs, back-fills, probes, expiry checks, messages), against the sandbox
    /// over HTTP, the state and the warehouse in SQLite.
    pub run_secs: f64,
    pub ticks: usize,
    pub outages: usize,
    /// Outages whose identity was not reauthorized before the end.
    pub outages_open: usize,
    pub incidents: usize,
    pub windows: usize,
    pub windows_loaded: usize,
    pub windows_lost: usize,
    /// Windows past the provider's lookback when their identity was reauthorized (or at
    /// the end, for an outage still open): the only ones that may be lost.
    pub windows_lost_expected: usize,
    /// Windows of outages still open, not yet past the lookback.
    pub windows_missing: usize,
    /// Broken invariants, described: empty when every window the provider still served
    /// was loaded, each lost window was past the lookback, and each outage was one
    /// incident.
    pub violations: Vec<String>,
}

/// One outage of one identity: its grant revoked on `revoked` (before that day's tick),
/// a new consent on `reauthorized` (None: not before the end).
#[derive(Debug, Clone, Copy)]
struct Outage {
    identity: usize,
    revoked: u32,
    reauthorized: Option<u32>,
}

/// Outages for `identities` identities over `days` days: each identity healthy for 10 to
/// four times the lookback days (at least 20), then out for 1 to twice the lookback, and
/// so on (so about half the outages outlast the lookback). A pure function of the seed.
fn outage_plan(identities: usize, days: u32, lookback: u32, seed: u64) -> Vec<Outage> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut plan = Vec::new();
    for identity in 0..identities {
        let mut day = rng.u32(0..10);
        loop {
            day = day.saturating_add(rng.u32(10..=lookback.saturating_mul(4).max(20)));
            if day > days {
                break;
            }
            let back = day.saturating_add(rng.u32(1..=lookback.saturating_mul(2).max(1)));
            plan.push(Outage {
                identity,
                revoked: day,
                reauthorized: (back <= days).then_some(back),
            });
            day = back;
        }
    }
    plan
}

/// `identities` identities of the demo user, each connected through its own consent and
/// read by one daily pipeline, live `days` days in virtual time: a person removes the app
/// from an identity's connection and reauthorizes it later ([`outage_plan`]), and the
/// engine ticks once a day. The sandbox serves `lookback_days` days back. At the end the
/// ledger and the incidents are checked against the plan. Request budgets are off: every
/// identity reads the same sandbox account.
pub async fn simulate(
    dir: &std::path::Path,
    identities: usize,
    days: u32,
    lookback_days: u32,
    seed: u64,
) -> Result<SimulateBench, DemoError> {
    let identities = identities.clamp(1, 100_000);
    let days = days.clamp(1, 3_650);
    let lookback_days = lookback_days.clamp(1, 3_650);
    let sandbox = gapless_sandbox::SandboxConfig {
        lookback_days: i64::from(lookback_days),
        ..Default::default()
    };
    let location = gapless_store::StoreLocation::Sqlite {
        data_dir: dir.to_path_buf(),
    };
    let (mut w, _) = DemoWorld::start_configured(dir, None, location, sandbox, None).await?;
    // Every identity reads the one sandbox account: its request budget would be one
    // account's for all of them (at 10,000 a day's runs outgrow it), so it is off, as in
    // the scale bench.
    w.engine
        .set_rate_limit(gapless_providers::sandbox::NAME, None);
    let started = Instant::now();
    let mut members = vec![(w.identity.id, w.pipeline.clone())];
    for i in 1..identities {
        let identity = w.connect(&format!("sim-{i}")).await?;
        let pipeline = w
            .add_pipeline(&format!("sim-{i}-daily"), identity.id)
            .await?;
        members.push((identity.id, pipeline));
    }
    let setup_secs = started.elapsed().as_secs_f64();

    let plan = outage_plan(identities, days, lookback_days, seed);
    let started = Instant::now();
    for day in 1..=days {
        w.clock
            .set(w.day(day) + Duration::days(1) + Duration::hours(1));
        for outage in plan.iter().filter(|o| o.revoked == day) {
            w.revoke_grant_of(members[outage.identity].0).await?;
        }
        for outage in plan.iter().filter(|o| o.reauthorized == Some(day)) {
            w.reauthorize_identity_as(members[outage.identity].0, DEMO_USER, DEMO_PASSWORD)
                .await?;
        }
        w.engine.tick().await?;
    }
    let run_secs = started.elapsed().as_secs_f64();

    let tally = tally(&w, &members, &plan, days, lookback_days).await?;
    Ok(SimulateBench {
        identities,
        days,
        lookback_days,
        seed,
        setup_secs,
        run_secs,
        ticks: days as usize,
        outages: plan.len(),
        outages_open: plan.iter().filter(|o| o.reauthorized.is_none()).count(),
        incidents: tally.incidents,
        windows: identities * days as usize,
        windows_loaded: tally.loaded,
        windows_lost: tally.lost,
        windows_lost_expected: tally.expected_lost,
        windows_missing: tally.missing,
        violations: tally.violations,
    })
}

/// What the simulation's ledgers and incidents hold, against its plan.
#[derive(Default)]
struct Tally {
    loaded: usize,
    lost: usize,
    missing: usize,
    expected_lost: usize,
    incidents: usize,
    /// Where the ledger or the incidents disagree with the plan.
    violations: Vec<String>,
}

/// Count every member's windows and incidents after the simulated `days`, and name each
/// disagreement with `plan`: a window lost that the provider still served, a window
/// missing outside an open outage, a window absent from the ledger, an outage without
/// exactly one incident.
async fn tally(
    w: &DemoWorld,
    members: &[(gapless_core::IdentityId, gapless_core::Pipeline)],
    plan: &[Outage],
    days: u32,
    lookback_days: u32,
) -> Result<Tally, DemoError> {
    use gapless_core::WindowState;

    let mut t = Tally::default();
    // The day (1-based) a window's date is.
    let day_of = |start: chrono::DateTime<chrono::Utc>| {
        u32::try_from((start - w.start).num_days() + 1).unwrap_or(0)
    };
    for (index, (identity, pipeline)) in members.iter().enumerate() {
        let outages: Vec<&Outage> = plan.iter().filter(|o| o.identity == index).collect();
        // A window of day k in an outage is gone when the sandbox no longer served it at
        // the reauthorization (day a, the clock on the next day): k <= a - lookback.
        let expected = |k: u32| {
            outages.iter().any(|o| {
                let end = o.reauthorized.unwrap_or(days.saturating_add(1));
                let gone_before = o.reauthorized.unwrap_or(days).saturating_sub(lookback_days);
                k >= o.revoked && k < end && k <= gone_before
            })
        };
        let in_open_outage = |k: u32| {
            outages
                .iter()
                .any(|o| o.reauthorized.is_none() && k >= o.revoked)
        };
        t.expected_lost += (1..=days).filter(|k| expected(*k)).count();
        let ledger = w.engine.store().ledger(pipeline.id).await?;
        let mut seen = 0;
        for entry in &ledger {
            let k = day_of(entry.window.start);
            if k == 0 || k > days {
                continue;
            }
            seen += 1;
            match &entry.state {
                WindowState::Loaded { .. } => t.loaded += 1,
                WindowState::Lost { .. } => {
                    t.lost += 1;
                    if !expected(k) {
                        t.violations.push(format!(
                            "{}: day {k} lost while the provider still served it",
                            pipeline.name
                        ));
                    }
                }
                other => {
                    t.missing += 1;
                    if !in_open_outage(k) {
                        t.violations.push(format!(
                            "{}: day {k} is {} outside an open outage",
                            pipeline.name,
                            other.name()
                        ));
                    }
                }
            }
        }
        if seen != days as usize {
            t.violations.push(format!(
                "{}: {seen} of {days} windows in the ledger",
                pipeline.name
            ));
        }
        let opened = w.engine.store().incidents(Some(*identity)).await?.len();
        t.incidents += opened;
        if opened != outages.len() {
            t.violations.push(format!(
                "{}: {opened} incident(s) for {} outage(s)",
                pipeline.name,
                outages.len()
            ));
        }
    }
    Ok(t)
}
