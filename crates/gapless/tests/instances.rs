//! Three `gapless serve` processes on one PostgreSQL, against the sandbox on the wall clock,
//! mailing through an SMTP server: 300 identities with one daily pipeline each, three days
//! due. One process is killed with SIGKILL in the middle of the round and started again.
//! Every window is loaded once into the warehouse, every report range is asked for once
//! (the ranges the killed process had in flight at most twice), every broken identity gets
//! its one Authorization Failure email, and the killed process's work is taken over when
//! its claims run out.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use chrono::{Duration, NaiveDate, Utc};
use common::{gapless, run};
use gapless_core::{Pipeline, PipelineId, PipelineState, WindowSize};
use gapless_engine::{Engine, EngineConfig};
use gapless_notify::testing::SmtpSink;
use gapless_providers::{ProviderSettings, http::HttpTimeouts};
use gapless_sandbox::{
    DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_USER, Fault, Sandbox,
    SandboxConfig, browser,
};
use gapless_store::{Store, StoreLocation, testing::TestDatabase};
use gapless_vault::{ClientSecret, Keyring, Vault};

/// Ana's identities read her ad account and stay healthy.
const HEALTHY: usize = 200;
/// Ben's identities: he removes the app before the round, so each one fails.
const BROKEN: usize = 100;
const BEN: &str = "ben@example.com";
const BEN_PASSWORD: &str = "hunter2 hunter2";
const BEN_ACCOUNT: &str = "act_1002";
/// Days due for each pipeline.
const DAYS: i64 = 3;
const CONCURRENCY: usize = 8;
const CLAIM_TTL_SECS: u64 = 5;

/// One `gapless serve` process of the installation in `data`.
struct Instance {
    data: PathBuf,
    url: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = gapless(&self.data)
            .env("GAPLESS_STORE", &self.url)
            .args([
                "serve",
                // Nothing here calls the HTTP server: any free port.
                "--listen",
                "127.0.0.1:0",
                "--every",
                "1s",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: no claim is released, nothing is flushed.
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        run(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]));
        child.wait().unwrap().success()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Windows loaded so far, from the state store's ledger.
async fn loaded(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger WHERE state = 'loaded'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Consent as `user` through the sandbox's login form, as a person would.
async fn consent(
    engine: &Engine,
    label: &str,
    user: &str,
    password: &str,
) -> gapless_core::IdentityId {
    let pending = engine
        .begin_authorization(gapless_providers::sandbox::NAME)
        .unwrap();
    let callback = browser::approve(&pending.url, user, password)
        .await
        .unwrap();
    let (identity, _) = engine
        .connect_identity(
            &pending,
            &callback,
            label,
            vec![user.into()],
            &engine.caller(),
        )
        .await
        .unwrap();
    identity.id
}

fn pipeline(
    name: &str,
    identity: gapless_core::IdentityId,
    account: &str,
    warehouse: gapless_core::IdentityId,
    start: NaiveDate,
) -> Pipeline {
    Pipeline {
        id: PipelineId::new(),
        name: name.into(),
        source_identity: identity,
        source_resource: account.into(),
        streams: vec!["insights".into()],
        destination_kind: "postgres".into(),
        destination_target: "warehouse".into(),
        destination_identity: Some(warehouse),
        window: WindowSize::DAY,
        settle_windows: 0,
        schedule: None,
        time_zone: gapless_core::Tz::UTC,
        start: start.and_hms_opt(0, 0, 0).unwrap().and_utc(),
        state: PipelineState::Active,
    }
}

/// The installation: an initialized data directory on the PostgreSQL state store, its
/// configuration, and the identities and pipelines written by an engine of this process
/// (consent through the sandbox's form for every identity, each its own grant).
async fn install(
    data: &Path,
    url: &str,
    sandbox: &str,
    smtp: u16,
    public_url: &str,
) -> (BTreeSet<String>, BTreeMap<PipelineId, String>) {
    let (ok, _, err) = run(gapless(data).env("GAPLESS_STORE", url).arg("init"));
    assert!(ok, "{err}");
    std::fs::write(
        data.join("gapless.toml"),
        format!(
            r#"public_url = "{public_url}"
fallback_recipients = ["ops@example.com"]

[providers.sandbox]
base_url = "{sandbox}"
client_id = "{DEMO_CLIENT_ID}"
client_secret_env = "TEST_SANDBOX_SECRET"
rate_limit = "none"

[destinations.warehouse]
kind = "postgres"
url = "{url}"
schema = "reports"

[notify.smtp]
host = "127.0.0.1"
port = {smtp}
security = "plain"

[scheduler]
claim_ttl = "{CLAIM_TTL_SECS}s"
concurrency = {CONCURRENCY}
"#
        ),
    )
    .unwrap();

    let location = StoreLocation::Postgres { url: url.into() };
    let vault = Vault::new(Keyring::load(None, &data.join("master.key")).unwrap());
    let mut engine = Engine::new(
        Store::open(&location).await.unwrap(),
        vault,
        Arc::new(gapless_core::SystemClock),
        EngineConfig::new(data.to_path_buf()),
    )
    .unwrap();
    engine.add_source(Arc::new(
        gapless_providers::sandbox::defined(ProviderSettings {
            base_url: sandbox.into(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: ClientSecret::new(DEMO_CLIENT_SECRET.into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        })
        .unwrap(),
    ));
    let parsed = url::Url::parse(url).unwrap();
    engine.add_postgres_destination(
        "warehouse",
        gapless_destinations::PostgresTarget {
            url: url.into(),
            schema: "reports".into(),
        },
    );
    let warehouse = engine
        .connect_identity_with_secret(
            ("warehouse", &Default::default()),
            "warehouse-loader",
            vec!["dba@example.com".into()],
            gapless_vault::Credential::Password {
                username: parsed.username().to_string(),
                // The test server trusts local connections; an identity never holds an
                // empty password.
                password: gapless_vault::Password::new("trusted-local-server".into()),
            },
            &engine.caller(),
        )
        .await
        .unwrap();
    let start = Utc::now().date_naive() - Duration::days(DAYS);
    let mut broken = BTreeSet::new();
    let mut names = BTreeMap::new();
    for i in 0..HEALTHY + BROKEN {
        let (label, user, password, account) = if i < HEALTHY {
            (
                format!("ana-{i}"),
                DEMO_USER,
                DEMO_PASSWORD,
                DEMO_AD_ACCOUNT,
            )
        } else {
            (format!("ben-{i}"), BEN, BEN_PASSWORD, BEN_ACCOUNT)
        };
        let identity = consent(&engine, &label, user, password).await;
        let p = pipeline(
            &format!("{label}-daily"),
            identity,
            account,
            warehouse.id,
            start,
        );
        engine
            .store()
            .insert_pipeline(&p, Utc::now())
            .await
            .unwrap();
        if i >= HEALTHY {
            broken.insert(label.clone());
        }
        names.insert(p.id, label);
    }
    (broken, names)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_serve_processes_share_the_work_and_one_killed_mid_round_loses_and_repeats_nothing() {
    common::clear_of_boundary(chrono::Duration::days(1)).await;
    let database = TestDatabase::create().await.unwrap();
    let StoreLocation::Postgres { url } = database.location.clone() else {
        panic!("the test database is not PostgreSQL");
    };
    let sandbox = Sandbox::demo(
        SandboxConfig {
            rotate_refresh_tokens: false,
            ..Default::default()
        },
        Arc::new(gapless_core::SystemClock),
    );
    let sandbox = sandbox.bind("127.0.0.1:0").await.unwrap();
    let smtp = SmtpSink::start(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a");
    let (broken, names) = install(
        &first,
        &url,
        &sandbox.base_url(),
        smtp.port,
        "https://gapless.example.com",
    )
    .await;
    // Ben removes the app: each of his identities fails at its first run.
    sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp { user: BEN.into() })
        .unwrap();
    // Every answer takes 40 ms, so the round lasts long enough to be cut in the middle.
    sandbox
        .sandbox()
        .apply_fault(Fault::Slow {
            count: u32::MAX,
            delay_ms: 40,
        })
        .unwrap();

    // Three hosts: each its own data directory with the same key and configuration.
    let mut instances = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(["a", "b", "c"][i]);
        if i > 0 {
            std::fs::create_dir_all(&data).unwrap();
            for file in ["master.key", "gapless.toml"] {
                std::fs::copy(first.join(file), data.join(file)).unwrap();
            }
        }
        instances.push(Instance {
            data,
            url: url.clone(),
            child: None,
            log: dir.path().join(format!("serve-{i}.log")),
        });
    }
    for instance in &mut instances {
        instance.start();
    }

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let windows = (HEALTHY as i64) * DAYS;
    // Mid-round: a third of the windows loaded.
    let deadline = Instant::now() + StdDuration::from_secs(120);
    while loaded(&pool).await < windows / 3 {
        assert!(
            Instant::now() < deadline,
            "a third of the round took over 120 s"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    instances[1].kill();
    let killed_at = Instant::now();
    let at_kill = loaded(&pool).await;
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    instances[1].start();

    let deadline = Instant::now() + StdDuration::from_secs(180);
    loop {
        let done = loaded(&pool).await;
        let delivered = smtp.messages().len();
        if done >= windows && delivered >= BROKEN {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {windows} windows loaded and {delivered} of {BROKEN} emails after 180 s; logs in {}",
            dir.path().display()
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let completed_after_kill = killed_at.elapsed();
    // Let the instances tick a few more times: nothing more may happen.
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    for (i, instance) in instances.iter_mut().enumerate() {
        assert!(instance.stop(), "instance {i} did not stop cleanly");
    }
    eprintln!(
        "{at_kill} of {windows} windows loaded at the kill; the rest within {:.1} s of it",
        completed_after_kill.as_secs_f64()
    );

    // Every window loaded, and its rows are the provider's, once.
    let truth: BTreeMap<NaiveDate, usize> = (0..DAYS)
        .map(|d| {
            let day = Utc::now().date_naive() - Duration::days(DAYS - d);
            (day, sandbox.sandbox().truth(DEMO_AD_ACCOUNT, day).len())
        })
        .collect();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT _gapless_pipeline, _gapless_window_start, count(*) FROM reports.insights GROUP BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        HEALTHY * DAYS as usize,
        "windows in the warehouse"
    );
    for (pipeline, window, count) in &rows {
        let day = NaiveDate::parse_from_str(&window[..10], "%Y-%m-%d").unwrap();
        assert_eq!(
            *count as usize, truth[&day],
            "{pipeline} {window}: rows in the warehouse"
        );
    }
    let history: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT pipeline_id, window_start, count(*) FROM ledger_history WHERE state = 'loaded' GROUP BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history.len(),
        HEALTHY * DAYS as usize,
        "windows loaded in the ledger"
    );

    // Every day asked for once per identity; the killed process's runs in flight again.
    let ranges = sandbox.sandbox().stats().report_ranges;
    let mut asked = BTreeMap::<(String, NaiveDate), u64>::new();
    for (key, count) in &ranges {
        let parts: Vec<&str> = key.split('/').collect();
        let since = NaiveDate::parse_from_str(parts[2], "%Y-%m-%d").unwrap();
        let until = NaiveDate::parse_from_str(parts[3], "%Y-%m-%d").unwrap();
        for day in since.iter_days().take_while(|d| *d <= until) {
            *asked.entry((parts[0].to_string(), day)).or_default() += count;
        }
    }
    assert_eq!(asked.len(), windows as usize, "days asked for: {ranges:?}");
    let again: u64 = asked.values().map(|n| n - 1).sum();
    assert!(
        again <= (CONCURRENCY as u64) * DAYS as u64,
        "{again} days asked for again: {ranges:?}"
    );
    eprintln!("{again} days asked for a second time (runs in flight at the kill)");

    // One Authorization Failure email per broken identity, none for a healthy one.
    let messages = smtp.messages();
    let mut subjects = BTreeMap::<String, usize>::new();
    let mut ids = BTreeMap::<String, usize>::new();
    for m in &messages {
        let parsed = mail_parser::MessageParser::default()
            .parse(&m.data)
            .unwrap();
        *ids.entry(parsed.message_id().unwrap_or_default().to_string())
            .or_default() += 1;
        let subject = parsed.subject().unwrap_or_default().to_string();
        assert!(subject.starts_with("Authorization Failure"), "{subject}");
        let label = subject.split('"').nth(1).unwrap_or_default().to_string();
        *subjects.entry(label).or_default() += 1;
    }
    // A message whose delivery the kill cut between the server's acceptance and its
    // record is sent again by the instance that takes it over, under the same Message-ID
    // (one message to a mail client); at most the deliveries in flight at the kill.
    let again: usize = ids.values().map(|n| n - 1).sum();
    assert!(again <= 16, "{again} messages delivered twice: {ids:?}");
    assert_eq!(ids.len(), BROKEN, "distinct messages: {ids:?}");
    let expected: BTreeMap<String, usize> = broken.iter().map(|l| (l.clone(), 1)).collect();
    let distinct: BTreeMap<String, usize> = subjects
        .into_iter()
        .map(|(label, n)| (label, n.min(1)))
        .collect();
    assert_eq!(distinct, expected, "emails by identity");
    eprintln!("{again} messages delivered a second time (in flight at the kill)");
    assert!(names.values().any(|l| !broken.contains(l)));
}
