//! `gapless bench listing`: what a person waits for on a large installation, measured over
//! HTTP against a local server (the API's and the dashboard's listings, `/metrics`).

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::{Context, Result, bail};
use gapless_core::{AuditAction, AuditRecord};
use gapless_store::{ApiToken, TokenScope};
use gapless_vault::BearerToken;
use reqwest::header;
use serde::Serialize;

/// Three runs of one measurement, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Runs {
    min: f64,
    median: f64,
    max: f64,
}

impl Runs {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            min: ms.first().copied().unwrap_or(0.0),
            median: ms.get(ms.len() / 2).copied().unwrap_or(0.0),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct ListingBench {
    identities: usize,
    store: &'static str,
    /// Writing the identities and pipelines through the store.
    setup_secs: f64,
    /// Windows written to the pipelines' ledgers, and how long that took.
    ledger_windows: usize,
    ledger_secs: f64,
    /// `GET /api/identities` (100 identities with their pipelines and incidents).
    api_first_page_ms: Runs,
    /// The same from the middle of the list (`after` a label half way).
    api_middle_page_ms: Runs,
    /// `GET /identities`, the dashboard's first page (200, those that need a person first).
    dashboard_first_page_ms: Runs,
    /// `GET /api/pipelines` (100 pipelines with their window counts).
    api_pipelines_ms: Runs,
    /// `GET /pipelines`, the dashboard's first page (100, each with its heatmap).
    dashboard_pipelines_ms: Runs,
    /// `GET /metrics`.
    metrics_ms: Runs,
    /// Every identity, in pages of 1,000 through the API, as `gapless identity list` reads
    /// them.
    every_identity_ms: Runs,
}

/// A client of the local server, signed in to the API and the dashboard.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    session: String,
}

impl Client {
    async fn get(&self, path: &str, dashboard: bool) -> Result<String> {
        let request = self.http.get(format!("{}{path}", self.base));
        let request = if dashboard {
            request.header(header::COOKIE, &self.session)
        } else {
            request.bearer_auth(&self.token)
        };
        let answer = request.send().await?;
        let status = answer.status();
        let body = answer.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }

    /// Three runs of `GET path`, each timed.
    async fn timed(&self, path: &str, dashboard: bool) -> Result<Runs> {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            self.get(path, dashboard).await?;
            runs.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(Runs::of(runs))
    }

    /// Every identity through the API, page after page; how many were read.
    async fn every_identity(&self) -> Result<usize> {
        let mut read = 0;
        let mut path = "/api/identities?limit=1000".to_string();
        loop {
            let page: serde_json::Value = serde_json::from_str(&self.get(&path, false).await?)?;
            read += page["identities"].as_array().map_or(0, Vec::len);
            match page["next_after"].as_str() {
                Some(after) => {
                    let query = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("limit", "1000")
                        .append_pair("after", after)
                        .finish();
                    path = format!("/api/identities?{query}");
                }
                None => return Ok(read),
            }
        }
    }
}

/// Write `windows` loaded daily windows, ending yesterday, into every pipeline's ledger
/// through the store (a pipeline's windows in one transaction, eight pipelines at a time);
/// how many were written.
async fn fill_ledgers(w: &gapless_demo::demo::DemoWorld, windows: u32) -> Result<usize> {
    use futures_util::{StreamExt, TryStreamExt};
    if windows == 0 {
        return Ok(0);
    }
    let store = w.engine.store();
    let today = gapless_core::Clock::now(&w.clock)
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.pipelines_page(after.as_deref(), 1000).await?;
        ids.extend(page.pipelines.iter().map(|p| (p.id, p.streams.clone())));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let written = futures_util::stream::iter(ids)
        .map(|(pipeline, streams)| async move {
            let stream = streams
                .first()
                .cloned()
                .unwrap_or_else(|| "insights".into());
            let entries: Vec<gapless_core::LedgerEntry> = (1..=i64::from(windows))
                .map(|back| {
                    let start = today - chrono::Duration::days(back);
                    let end = start + chrono::Duration::days(1);
                    gapless_core::LedgerEntry {
                        pipeline,
                        stream: stream.clone(),
                        window: gapless_core::Window::new(start, end),
                        state: gapless_core::WindowState::Loaded {
                            at: end,
                            rows: 10,
                            attempt: 1,
                        },
                        attempts: 1,
                        updated_at: end,
                    }
                })
                .collect();
            store.record_windows(&entries).await?;
            anyhow::Ok(entries.len())
        })
        .buffer_unordered(8)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    Ok(written)
}

/// Sign in to the dashboard with `token` as a person does: the form's CSRF value and
/// cookie, then the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> Result<String> {
    let page = http.get(format!("{base}/login")).send().await?;
    let login_cookie = cookie_pair(&page)?;
    let body = page.text().await?;
    let marker = r#"name="csrf" value=""#;
    let csrf = body
        .split_once(marker)
        .and_then(|(_, rest)| rest.split('"').next())
        .context("the sign-in page has no CSRF field")?
        .to_string();
    let answer = http
        .post(format!("{base}/login"))
        .header(header::COOKIE, login_cookie)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await?;
    cookie_pair(&answer)
}

fn cookie_pair(answer: &reqwest::Response) -> Result<String> {
    let set = answer
        .headers()
        .get(header::SET_COOKIE)
        .context("the server set no cookie")?
        .to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_string())
}

pub async fn run(
    data_dir: &Path,
    identities: u32,
    windows: u32,
    postgres: bool,
    json: bool,
) -> Result<()> {
    let identities = identities as usize;
    let dir = crate::bench::fresh_dir(data_dir, "bench-listing")?;
    let database = crate::bench::test_database(postgres).await?;
    let (store, location) =
        gapless_demo::bench::state_store(&dir, database.as_ref().map(|d| d.location.clone()));
    let (w, _) = gapless_demo::demo::DemoWorld::start_with(&dir, None, location).await?;
    let started = Instant::now();
    gapless_demo::bench::populate(&w, identities).await?;
    let setup_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let written = fill_ledgers(&w, windows).await?;
    let ledger_secs = started.elapsed().as_secs_f64();
    let (client, stop, server) = serve(&w).await?;
    // Clones are labelled scale-0, scale-1, …: one from the middle of the label order.
    let middle = format!("/api/identities?after=scale-{}", identities / 2);
    let mut every = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let read = client.every_identity().await?;
        every.push(started.elapsed().as_secs_f64() * 1000.0);
        if read != identities {
            bail!("the API listed {read} identities of {identities}");
        }
    }
    let b = ListingBench {
        identities,
        store,
        setup_secs,
        ledger_windows: written,
        ledger_secs,
        api_first_page_ms: client.timed("/api/identities", false).await?,
        api_middle_page_ms: client.timed(&middle, false).await?,
        dashboard_first_page_ms: client.timed("/identities", true).await?,
        api_pipelines_ms: client.timed("/api/pipelines", false).await?,
        dashboard_pipelines_ms: client.timed("/pipelines", true).await?,
        metrics_ms: client.timed("/metrics", false).await?,
        every_identity_ms: Runs::of(every),
    };
    let _ = stop.send(());
    let _ = server.await;
    report(&b, json)
}

/// The server on a loopback port over the world's store, with a read token, and a client
/// signed in to it: the client, what stops the server, and the server's task.
async fn serve(
    w: &gapless_demo::demo::DemoWorld,
) -> Result<(
    Client,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let public = base.clone();
    let engine = Arc::new(w.new_engine_with(move |c| c.public_url = public).await?);
    let secret = BearerToken::generate()?;
    let now = gapless_core::Clock::now(&w.clock);
    engine
        .store()
        .insert_api_token(
            &ApiToken {
                id: "bench".into(),
                name: "bench".into(),
                scope: TokenScope::Read,
                created_at: now,
                last_used_at: None,
                revoked_at: None,
            },
            &secret.hash(),
            &AuditRecord::new(now, &engine.caller(), AuditAction::TokenCreated, "bench"),
        )
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gapless_server::serve(
        listener,
        gapless_server::AppState::new(engine, [7; 32]),
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let token = secret.expose_secret().to_string();
    let session = sign_in(&http, &base, &token).await?;
    let client = Client {
        http,
        base,
        token,
        session,
    };
    Ok((client, stop, server))
}

/// The figures, as JSON or as a table.
fn report(b: &ListingBench, json: bool) -> Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(b)?);
    } else {
        say!(
            "listing bench: {} identities with a pipeline each, {} store, over HTTP (min / median / max of 3)",
            b.identities,
            b.store
        );
        say!(
            "  setup through the store:          {:>9.1} s",
            b.setup_secs
        );
        say!(
            "  ledger windows written:           {:>9} in {:.1} s",
            b.ledger_windows,
            b.ledger_secs
        );
        for (what, runs) in [
            ("GET /api/identities (first 100):", &b.api_first_page_ms),
            ("the same, from the middle:", &b.api_middle_page_ms),
            (
                "GET /identities (dashboard, 200):",
                &b.dashboard_first_page_ms,
            ),
            ("GET /api/pipelines (first 100):", &b.api_pipelines_ms),
            (
                "GET /pipelines (dashboard, 100):",
                &b.dashboard_pipelines_ms,
            ),
            ("GET /metrics:", &b.metrics_ms),
            ("every identity, pages of 1,000:", &b.every_identity_ms),
        ] {
            say!(
                "  {what:<34} {:>9.1} / {:.1} / {:.1} ms",
                runs.min,
                runs.median,
                runs.max
            );
        }
    }
    Ok(())
}
