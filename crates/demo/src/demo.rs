//! `gapless demo`: an authorization outage survived end to end, in virtual time.
//!
//! The sandbox runs in-process on a free loopback port and shares a virtual clock with the
//! engine. An identity is connected through the real OAuth code flow, a daily pipeline
//! loads into SQLite, the app is revoked on day 10, the identity is reauthorized on day 13,
//! and at the end every window is compared with the sandbox's truth.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{
    Clock, Identity, Pipeline, PipelineId, PipelineState, Row, Value, VirtualClock, WindowSize,
};
use gapless_providers::{ProviderSettings, http::HttpTimeouts};
use gapless_sandbox::{
    DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_USER, Fault, Sandbox,
    SandboxConfig, SandboxHandle, browser,
};
use gapless_store::{Store, StoreLocation};
use gapless_vault::{ClientSecret, Vault};
use serde::Serialize;

use gapless_engine::{Engine, EngineConfig, Event, EventLog};

use crate::DemoError;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the demo keeps its state, warehouse and outbox (replaced on every run).
    pub dir: PathBuf,
    /// The vault to seal credentials with; None creates a key file in `dir`.
    pub vault: Option<Vault>,
    pub days: u32,
    /// The day (1-based) on which the app is revoked.
    pub revoke_day: u32,
    /// The day on which the identity is reauthorized.
    pub reauth_day: u32,
}

/// One window compared with the provider's truth.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WindowCheck {
    pub window: String,
    pub state: String,
    pub rows_loaded: u64,
    pub rows_truth: u64,
    pub matches_truth: bool,
}

/// The demo's result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub data_dir: String,
    pub days: u32,
    pub windows: usize,
    pub windows_loaded: usize,
    pub windows_missing: usize,
    pub windows_lost: usize,
    pub rows_loaded: u64,
    pub rows_truth: u64,
    pub windows_matching_truth: usize,
    pub incidents_opened: usize,
    pub incident_cause: Option<String>,
    pub windows_back_filled: u64,
    pub emails: Vec<String>,
    pub refresh_token_reuse_seen_by_provider: u64,
    pub expired_token_calls_seen_by_provider: u64,
    pub checks: Vec<WindowCheck>,
    pub timeline: Vec<Event>,
}

impl DemoSummary {
    /// True when nothing is missing and every window equals the provider's truth.
    pub fn ok(&self) -> bool {
        self.windows_missing == 0
            && self.windows_lost == 0
            && self.windows_matching_truth == self.windows
            && self.rows_loaded == self.rows_truth
    }
}

/// The first day of the demo.
pub fn demo_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn stage(what: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(format!("{what}: {e}"))
}

/// A running demo world: the sandbox and the engine on one virtual clock, with one
/// identity connected through the OAuth flow and one daily pipeline. Tests drive it too.
#[derive(Debug)]
pub struct DemoWorld {
    pub clock: VirtualClock,
    pub sandbox: SandboxHandle,
    pub engine: Engine,
    pub identity: Identity,
    pub pipeline: Pipeline,
    pub start: DateTime<Utc>,
    dir: PathBuf,
    vault: Vault,
    location: StoreLocation,
    retention: Option<gapless_core::Retention>,
    rotating: bool,
}

impl DemoWorld {
    /// Start the sandbox, open the store in `dir`, connect the demo user's identity
    /// through the consent flow, and create the `acme-daily` pipeline.
    pub async fn start(dir: &Path, vault: Option<Vault>) -> Result<(Self, EventLog), DemoError> {
        let location = StoreLocation::Sqlite {
            data_dir: dir.to_path_buf(),
        };
        Self::start_with(dir, vault, location).await
    }

    /// Like [`DemoWorld::start`] with the state in `location` (e.g. PostgreSQL).
    pub async fn start_with(
        dir: &Path,
        vault: Option<Vault>,
        location: StoreLocation,
    ) -> Result<(Self, EventLog), DemoError> {
        Self::start_configured(dir, vault, location, SandboxConfig::default(), None).await
    }

    /// Like [`DemoWorld::start_configured`] with the state in SQLite in `dir`.
    pub async fn start_sqlite(
        dir: &Path,
        sandbox_config: SandboxConfig,
        declared: Option<gapless_core::Retention>,
    ) -> Result<(Self, EventLog), DemoError> {
        let location = StoreLocation::Sqlite {
            data_dir: dir.to_path_buf(),
        };
        Self::start_configured(dir, None, location, sandbox_config, declared).await
    }

    /// The demo user removes the app (every grant revoked), then the daily runs of `days`.
    pub async fn revoke_and_run(
        &self,
        days: std::ops::RangeInclusive<u32>,
    ) -> Result<EventLog, DemoError> {
        self.sandbox
            .sandbox()
            .apply_fault(gapless_sandbox::Fault::RevokeApp {
                user: DEMO_USER.into(),
            })
            .map_err(|e| DemoError::Step(format!("revoking the app: {e}")))?;
        let mut log = EventLog::default();
        for day in days {
            log.extend(self.daily_run(day).await?);
        }
        Ok(log)
    }

    /// Like [`DemoWorld::start_with`] with the sandbox configured by `sandbox_config`; the
    /// connector declares `declared` as the retention (None: the one the sandbox has).
    pub async fn start_configured(
        dir: &Path,
        vault: Option<Vault>,
        location: StoreLocation,
        sandbox_config: SandboxConfig,
        declared: Option<gapless_core::Retention>,
    ) -> Result<(Self, EventLog), DemoError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| stage(&format!("creating {}", dir.display()), e))?;
        let vault = match vault {
            Some(vault) => vault,
            None => {
                let key_file = dir.join("master.key");
                if !key_file.exists() {
                    gapless_vault::create_key_file(&key_file)?;
                }
                Vault::new(gapless_vault::Keyring::load(None, &key_file)?)
            }
        };
        let start = demo_start();
        let clock = VirtualClock::new(start);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let retention = declared.or_else(|| sandbox_config.retention());
        let rotating = sandbox_config.rotate_refresh_tokens;
        let sandbox = Sandbox::demo(sandbox_config, shared.clone())
            .bind("127.0.0.1:0")
            .await
            .map_err(|e| stage("starting the sandbox", e))?;
        let engine = Self::engine_configured(
            dir,
            &vault,
            &location,
            shared.clone(),
            &sandbox.base_url(),
            (retention, rotating),
            |_| {},
        )
        .await?;
        clock.set(start + Duration::hours(9));
        let pending = engine.begin_authorization(gapless_providers::sandbox::NAME)?;
        let callback = browser::approve(&pending.url, DEMO_USER, DEMO_PASSWORD)
            .await
            .map_err(|e| stage("consent", e))?;
        let (identity, log) = engine
            .connect_identity(
                &pending,
                &callback,
                "acme-ads",
                vec![DEMO_USER.into()],
                &engine.caller(),
            )
            .await?;
        let pipeline = demo_pipeline("acme-daily", identity.id, start);
        engine
            .store()
            .insert_pipeline(&pipeline, clock.now())
            .await?;
        Ok((
            Self {
                clock,
                sandbox,
                engine,
                identity,
                pipeline,
                start,
                dir: dir.to_path_buf(),
                vault,
                location,
                retention,
                rotating,
            },
            log,
        ))
    }

    async fn engine_configured(
        dir: &Path,
        vault: &Vault,
        location: &StoreLocation,
        clock: Arc<dyn Clock>,
        sandbox_url: &str,
        (retention, rotating): (Option<gapless_core::Retention>, bool),
        configure: impl FnOnce(&mut EngineConfig),
    ) -> Result<Engine, DemoError> {
        let store = Store::open(location).await?;
        let mut config = EngineConfig::new(dir.to_path_buf());
        config.fallback_recipients = vec!["data-team@example.com".into()];
        configure(&mut config);
        let mut engine = Engine::new(store, vault.clone(), clock, config)?;
        let mut source = gapless_providers::sandbox::defined(ProviderSettings {
            base_url: sandbox_url.to_string(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: ClientSecret::new(DEMO_CLIENT_SECRET.into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        })?
        .with_rotating_refresh_tokens(rotating);
        if let Some(retention) = retention {
            source = source.with_retention(retention);
        }
        engine.add_source(Arc::new(source));
        Ok(engine)
    }

    /// Another engine instance on the same state, clock and sandbox: a second process, or
    /// the same one after a restart.
    pub async fn new_engine(&self) -> Result<Engine, DemoError> {
        self.new_engine_with(|_| {}).await
    }

    /// Like [`DemoWorld::new_engine`] with a changed configuration.
    pub async fn new_engine_with(
        &self,
        configure: impl FnOnce(&mut EngineConfig),
    ) -> Result<Engine, DemoError> {
        Self::engine_configured(
            &self.dir,
            &self.vault,
            &self.location,
            Arc::new(self.clock.clone()),
            &self.sandbox.base_url(),
            (self.retention, self.rotating),
            configure,
        )
        .await
    }

    /// Connect one more identity of the demo user through the consent flow.
    pub async fn connect(&self, label: &str) -> Result<Identity, DemoError> {
        let pending = self
            .engine
            .begin_authorization(gapless_providers::sandbox::NAME)?;
        let callback = browser::approve(&pending.url, DEMO_USER, DEMO_PASSWORD)
            .await
            .map_err(|e| stage("consent", e))?;
        let (identity, _) = self
            .engine
            .connect_identity(
                &pending,
                &callback,
                label,
                vec![DEMO_USER.into()],
                &self.engine.caller(),
            )
            .await?;
        Ok(identity)
    }

    /// `count` more identities holding copies of the demo identity's credential, written
    /// straight to the store (no consent flow): for benchmarks at scale, with a sandbox
    /// whose refresh tokens do not rotate. Labelled `scale-{first}` onwards; their last
    /// probes are spread over the probe interval, as in a running installation.
    pub async fn clone_identities(
        &self,
        first: usize,
        count: usize,
    ) -> Result<Vec<Identity>, DemoError> {
        let (sealed, _) = self
            .engine
            .store()
            .sealed_credential(self.identity.id)
            .await?;
        let credential = self
            .vault
            .open_credential(&self.identity.id.to_string(), &sealed)?;
        let now = self.clock.now();
        let renews = self
            .engine
            .access_renews(&self.identity.provider, &credential);
        let interval = self.engine.config().probe_interval.num_seconds().max(1);
        let mut out = Vec::with_capacity(count);
        for i in first..first.saturating_add(count) {
            let id = gapless_core::IdentityId::new();
            let spread = i64::try_from(i).unwrap_or(0) * 7_919 % interval;
            let identity = Identity {
                id,
                label: format!("scale-{i}"),
                last_probe_at: Some(now - Duration::seconds(spread)),
                ..self.identity.clone()
            };
            let sealed = self.vault.seal_credential(&id.to_string(), &credential)?;
            let audit = gapless_core::AuditRecord::new(
                self.clock.now(),
                &self.engine.caller(),
                gapless_core::AuditAction::IdentityCreated,
                &identity.label,
            );
            self.engine
                .store()
                .insert_identity(
                    &gapless_store::NewIdentity {
                        next_probe_due: identity
                            .last_probe_at
                            .map(|last| self.engine.next_probe_due(&identity, last)),
                        identity: identity.clone(),
                        sealed,
                        access_renews: Some(renews),
                    },
                    &audit,
                )
                .await?;
            out.push(identity);
        }
        Ok(out)
    }

    /// The access token `identity` holds now (for benchmarks that call the sandbox
    /// directly, next to gapless).
    pub(crate) async fn access_token(
        &self,
        identity: gapless_core::IdentityId,
    ) -> Result<String, DemoError> {
        let (sealed, _) = self.engine.store().sealed_credential(identity).await?;
        match self.vault.open_credential(&identity.to_string(), &sealed)? {
            gapless_vault::Credential::OAuth2 { access_token, .. } => {
                Ok(access_token.expose_secret().to_string())
            }
            _ => Err(DemoError::Step("the identity holds no access token".into())),
        }
    }

    /// The demo ad account's rows loaded into a PostgreSQL warehouse too: the destination
    /// `warehouse` at `target`, an identity `label` holding `credential` (owned by
    /// dba@example.com), and a pipeline `name` like the demo one loading through it.
    pub async fn pipeline_into_postgres(
        &mut self,
        name: &str,
        label: &str,
        target: gapless_destinations::PostgresTarget,
        credential: gapless_vault::Credential,
    ) -> Result<(Identity, Pipeline), DemoError> {
        self.engine.add_postgres_destination("warehouse", target);
        let loader = self
            .engine
            .connect_identity_with_secret(
                ("warehouse", &Default::default()),
                label,
                vec!["dba@example.com".into()],
                credential,
                &self.engine.caller(),
            )
            .await?;
        let pipeline = Pipeline {
            id: gapless_core::PipelineId::new(),
            name: name.into(),
            destination_kind: "postgres".into(),
            destination_target: "warehouse".into(),
            destination_identity: Some(loader.id),
            state: gapless_core::PipelineState::Active,
            ..self.pipeline.clone()
        };
        self.engine
            .store()
            .insert_pipeline(&pipeline, self.clock.now())
            .await?;
        Ok((loader, pipeline))
    }

    /// One more daily pipeline of the demo ad account, read through `identity`, into the
    /// demo warehouse.
    pub async fn add_pipeline(
        &self,
        name: &str,
        identity: gapless_core::IdentityId,
    ) -> Result<Pipeline, DemoError> {
        let pipeline = demo_pipeline(name, identity, self.start);
        self.engine
            .store()
            .insert_pipeline(&pipeline, self.clock.now())
            .await?;
        Ok(pipeline)
    }

    /// Midnight UTC starting day `day` (1-based).
    pub fn day(&self, day: u32) -> DateTime<Utc> {
        self.start + Duration::days(i64::from(day) - 1)
    }

    /// The daily run for day `day`: one hour after its window closed.
    pub async fn daily_run(&self, day: u32) -> Result<EventLog, DemoError> {
        self.clock
            .set(self.day(day) + Duration::days(1) + Duration::hours(1));
        Ok(self.engine.tick().await?)
    }

    /// The account holder reauthorizes through the consent page as `username`.
    pub async fn reauthorize_as(
        &self,
        username: &str,
        password: &str,
    ) -> Result<EventLog, DemoError> {
        self.reauthorize_identity_as(self.identity.id, username, password)
            .await
    }

    /// Like [`DemoWorld::reauthorize_as`] for `identity`.
    pub async fn reauthorize_identity_as(
        &self,
        identity: gapless_core::IdentityId,
        username: &str,
        password: &str,
    ) -> Result<EventLog, DemoError> {
        let pending = self
            .engine
            .begin_authorization(gapless_providers::sandbox::NAME)?;
        let callback = browser::approve(&pending.url, username, password)
            .await
            .map_err(|e| stage("consent", e))?;
        Ok(self
            .engine
            .reauthorize(identity, &pending, &callback)
            .await?)
    }

    /// The account holder removes the app from `identity`'s connection only: the grant of
    /// the refresh token it holds is revoked at the sandbox.
    pub async fn revoke_grant_of(
        &self,
        identity: gapless_core::IdentityId,
    ) -> Result<(), DemoError> {
        let (sealed, _) = self.engine.store().sealed_credential(identity).await?;
        let refresh_token = match self.vault.open_credential(&identity.to_string(), &sealed)? {
            gapless_vault::Credential::OAuth2 {
                refresh_token: Some(token),
                ..
            } => token.expose_secret().to_string(),
            _ => {
                return Err(stage(
                    "revoking a grant",
                    "the identity holds no refresh token",
                ));
            }
        };
        self.sandbox
            .sandbox()
            .apply_fault(Fault::RevokeGrantOf { refresh_token })
            .map_err(|e| stage("revoking a grant", e))
    }

    /// The demo account's rows of `date` as the sandbox served them at `at`, in the
    /// insights stream's columns.
    pub fn truth_rows(&self, date: NaiveDate, at: DateTime<Utc>) -> Vec<Row> {
        self.sandbox
            .sandbox()
            .truth_at(DEMO_AD_ACCOUNT, date, at)
            .into_iter()
            .map(|r| {
                vec![
                    Value::Date(date),
                    Value::Text(r.campaign_id),
                    Value::Text(r.campaign_name),
                    Value::Integer(r.impressions.parse().unwrap_or(-1)),
                    Value::Integer(r.clicks.parse().unwrap_or(-1)),
                    Value::Text(r.spend),
                    Value::Integer(r.conversions.parse().unwrap_or(-1)),
                ]
            })
            .collect()
    }

    /// Every complete window compared with the sandbox's truth now.
    pub async fn check_against_truth(&self) -> Result<Vec<WindowCheck>, DemoError> {
        self.check_pipeline_against_truth(&self.pipeline).await
    }

    /// Compare every complete window of `pipeline` (a pipeline of the demo account, on day
    /// windows in any time zone) in its destination with the provider's truth.
    pub async fn check_pipeline_against_truth(
        &self,
        pipeline: &Pipeline,
    ) -> Result<Vec<WindowCheck>, DemoError> {
        let destination = self.engine.destination_for(pipeline).await?.map_err(|f| {
            stage(
                "opening the warehouse",
                gapless_engine::describe_failure(&f),
            )
        })?;
        let schema = gapless_providers::sandbox::descriptor()
            .stream("insights")
            .map(|s| s.schema.clone())
            .ok_or_else(|| DemoError::Step("the sandbox lost its insights stream".into()))?;
        let ledger = self.engine.store().ledger(pipeline.id).await?;
        let grid = pipeline.grid();
        let mut checks = Vec::new();
        for window in grid.complete_windows(pipeline.start, self.clock.now()) {
            let date: NaiveDate = grid.local_day(window.start);
            let entry = ledger.iter().find(|e| e.window == window);
            // Numbers are restated for a while after their day: a window is compared with
            // what the provider served when it was loaded (its settle re-pull brings the
            // final numbers).
            let served_at = match entry.map(|e| &e.state) {
                Some(gapless_core::WindowState::Loaded { at, .. }) => *at,
                _ => self.clock.now(),
            };
            let truth = self.truth_rows(date, served_at);
            let mut stored = destination
                .read_window(pipeline.id, &schema, window)
                .await
                .map_err(|f| {
                    stage(
                        "reading the warehouse",
                        gapless_engine::describe_failure(&f),
                    )
                })?;
            // Rows in one order whatever the database's collation: by campaign id.
            let mut truth = truth;
            for rows in [&mut stored, &mut truth] {
                rows.sort_by_cached_key(|r| match r.get(1) {
                    Some(Value::Text(campaign)) => campaign.clone(),
                    _ => String::new(),
                });
            }
            let state = entry.map_or("never attempted", |e| e.state.name());
            checks.push(WindowCheck {
                window: grid.label(window),
                state: state.to_string(),
                rows_loaded: stored.len() as u64,
                rows_truth: truth.len() as u64,
                matches_truth: stored == truth,
            });
        }
        Ok(checks)
    }
}

/// A daily pipeline of the demo ad account into the demo warehouse.
pub(crate) fn demo_pipeline(
    name: &str,
    identity: gapless_core::IdentityId,
    start: DateTime<Utc>,
) -> Pipeline {
    Pipeline {
        id: PipelineId::new(),
        name: name.into(),
        source_identity: identity,
        source_resource: DEMO_AD_ACCOUNT.into(),
        streams: vec!["insights".into()],
        destination_kind: "sqlite".into(),
        destination_target: "warehouse.sqlite".into(),
        destination_identity: None,
        window: WindowSize::DAY,
        settle_windows: 2,
        schedule: None,
        time_zone: gapless_core::Tz::UTC,
        start,
        state: PipelineState::Active,
    }
}

/// What the demo in `dir` did over `days` days: its windows against the sandbox's truth,
/// its ledger, incidents, mails, what the provider saw, and the `timeline`.
async fn summarize(
    world: &DemoWorld,
    dir: &Path,
    days: u32,
    timeline: EventLog,
) -> Result<DemoSummary, DemoError> {
    let checks = world.check_against_truth().await?;
    let ledger = world.engine.store().ledger(world.pipeline.id).await?;
    let count = |name: &str| ledger.iter().filter(|e| e.state.name() == name).count();
    let incidents = world
        .engine
        .store()
        .incidents(Some(world.identity.id))
        .await?;
    let mut emails: Vec<String> = std::fs::read_dir(world.engine.outbox_dir())
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    emails.sort();
    let stats = world.sandbox.sandbox().stats();
    let summary = DemoSummary {
        data_dir: dir.display().to_string(),
        days,
        windows: checks.len(),
        windows_loaded: count("loaded"),
        windows_missing: count("missing"),
        windows_lost: count("lost"),
        rows_loaded: checks.iter().map(|c| c.rows_loaded).sum(),
        rows_truth: checks.iter().map(|c| c.rows_truth).sum(),
        windows_matching_truth: checks.iter().filter(|c| c.matches_truth).count(),
        incidents_opened: incidents.len(),
        incident_cause: incidents
            .first()
            .map(|i| gapless_engine::describe_failure(&i.failure)),
        windows_back_filled: timeline
            .events
            .iter()
            .filter(|e| matches!(e, Event::WindowLoaded { purpose, .. } if *purpose == gapless_engine::LoadPurpose::Backfill))
            .count() as u64,
        emails,
        refresh_token_reuse_seen_by_provider: stats.refresh_reuse,
        expired_token_calls_seen_by_provider: stats.expired_token_calls,
        checks,
        timeline: timeline.events,
    };
    Ok(summary)
}

/// Run the demo. `on_event` sees every event as it happens.
pub async fn run(
    options: DemoOptions,
    mut on_event: impl FnMut(&Event),
) -> Result<DemoSummary, DemoError> {
    if options.revoke_day == 0
        || options.revoke_day >= options.reauth_day
        || options.reauth_day > options.days
    {
        return Err(DemoError::Invalid(format!(
            "need 1 <= revoke day ({}) < reauthorization day ({}) <= days ({})",
            options.revoke_day, options.reauth_day, options.days
        )));
    }
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir).map_err(|e| {
            stage(
                &format!("clearing the previous demo in {}", options.dir.display()),
                e,
            )
        })?;
    }
    let mut timeline = EventLog::default();
    let mut record = |log: EventLog, timeline: &mut EventLog| {
        for e in &log.events {
            on_event(e);
        }
        timeline.extend(log);
    };
    let (world, log) = DemoWorld::start(&options.dir, options.vault.clone()).await?;
    record(log, &mut timeline);
    for day in 1..=options.days {
        if day == options.revoke_day {
            world.clock.set(world.day(day) + Duration::hours(12));
            world
                .sandbox
                .sandbox()
                .apply_fault(Fault::RevokeApp {
                    user: DEMO_USER.into(),
                })
                .map_err(|e| stage("revoking the app", e))?;
        }
        if day == options.reauth_day {
            world.clock.set(world.day(day) + Duration::hours(9));
            record(
                world.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await?,
                &mut timeline,
            );
        }
        record(world.daily_run(day).await?, &mut timeline);
    }

    let summary = summarize(&world, &options.dir, options.days, timeline).await?;
    world.engine.store().close().await;
    world.sandbox.shutdown().await;
    Ok(summary)
}
