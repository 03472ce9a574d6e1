//! The engine: executes the core's decisions against the store, the vault, providers,
//! destinations and notification channels. All decisions come from `gapless-core`; this
//! crate is the IO edge that wires them, with time from an injected [`Clock`].

mod authorize;
mod backfill;

pub mod budget;
mod claims;
mod delivery;

mod events;
mod failures;
mod jobs;
mod keys;
mod lifecycle;
mod locks;
mod missing;
mod notices;
mod outbox;
mod refresh;
pub mod spool;
pub mod stats;
mod sync;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use chrono::Duration;
use gapless_core::{
    AuditAction, AuditRecord, Caller, Clock, Failure, IdentityId, ReminderPolicy,
    lifecycle::{ExpiryPolicy, OutagePolicy, RefreshPolicy},
};
use gapless_destinations::{Destination, PostgresDestination, PostgresTarget};
use gapless_notify::{Channel, FileOutbox};
use gapless_providers::SourceConnector;
use gapless_store::Store;
use gapless_vault::Vault;

pub use authorize::{CallbackError, PendingAuthorization, ReauthOptions};
pub use backfill::{BackfillOutcome, BackfillPlan};
pub use events::{Event, EventLog, LoadPurpose};
pub use keys::{KeyUsage, Resealed};
pub use lifecycle::ProbeOutcome;
pub use notices::{MintedLink, RecoverySummary};
pub use refresh::{CrashPoint, Failpoint};
pub use sync::Ran;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (relative destination paths and the file outbox live here).
    pub data_dir: PathBuf,
    /// The public base URL of this installation, used in links.
    pub public_url: String,
    /// The From address of notifications.
    pub notify_from: String,
    /// Who is told when an identity has no owners.
    pub fallback_recipients: Vec<String>,
    /// When access tokens are refreshed.
    pub refresh: RefreshPolicy,
    /// How long a refresh lease lasts. Kept well above the HTTP request timeout, so a
    /// refresh cannot outlive its lease.
    pub refresh_lease: Duration,
    /// Delivery attempts before a notification is marked failed.
    pub max_delivery_attempts: u32,
    /// How often each identity is probed.
    pub probe_interval: Duration,
    /// When expiries are warned about.
    pub expiry: ExpiryPolicy,
    /// When failing identities of one provider are a provider outage.
    pub outage: OutagePolicy,
    /// When open incidents remind and escalate.
    pub reminders: ReminderPolicy,
    /// Who is told, besides identity owners.
    pub recipients: RecipientPolicy,
    /// A pending notification older than this is itself an alarm.
    pub backlog_alarm: Duration,
    /// Deliveries in flight at once.
    pub delivery_concurrency: usize,
    /// The spool's size limit in bytes.
    pub spool_max_bytes: u64,
    /// Spooled windows older than this are shown as stale.
    pub spool_max_age: Duration,
    /// How long a reauthorize link sent in a message works (it works once).
    pub reauth_link_lifetime: Duration,
    /// A failure this soon after an incident closed continues it (one thread, a "failing
    /// again" message) instead of opening a new one.
    pub reopen_within: Duration,
    /// Who this process acts as in the audit log when no caller is named (a CLI command:
    /// its user). None: the scheduler of this instance.
    pub actor: Option<gapless_core::Actor>,
    /// How long a claim on a pipeline lasts without renewal: a run renews it while it
    /// works, so this bounds how long the work of an instance that died waits.
    pub claim_ttl: Duration,
    /// Pipeline runs, refreshes and probes in flight at once in this instance (each kind
    /// on its own; the request budgets of the accounts still apply). None: 128 on
    /// PostgreSQL; 16 on SQLite, whose one connection the runs (and the outbox dispatcher
    /// with them) would only queue for.
    pub concurrency: Option<usize>,
    /// A pipeline with work left after a run (a window that failed, a run cut short) is due
    /// again this much later: at the next tick, not in a loop.
    pub rerun_after: Duration,
}

/// Recipients besides identity owners.
#[derive(Debug, Clone, Default)]
pub struct RecipientPolicy {
    /// Told about every identity (entries are addresses or `group:NAME`).
    pub defaults: Vec<String>,
    /// Replaces `defaults` for the identity with this label.
    pub per_identity: HashMap<String, Vec<String>>,
    /// Owners of the pipeline with this name: told about its identities' incidents.
    pub per_pipeline: HashMap<String, Vec<String>>,
    /// Added to reminders from the escalating one on, and to provider outages.
    pub escalation: Vec<String>,
    /// Named groups of addresses.
    pub groups: HashMap<String, Vec<String>>,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            public_url: "http://127.0.0.1:8080".into(),
            notify_from: "gapless <gapless@localhost>".into(),
            fallback_recipients: vec!["operators@localhost".into()],
            refresh: RefreshPolicy::default(),
            refresh_lease: Duration::seconds(90),
            max_delivery_attempts: 8,
            probe_interval: Duration::hours(1),
            expiry: ExpiryPolicy::default(),
            outage: OutagePolicy::default(),
            reminders: ReminderPolicy::default(),
            recipients: RecipientPolicy::default(),
            backlog_alarm: Duration::minutes(30),
            delivery_concurrency: 16,
            spool_max_bytes: 1 << 30,
            spool_max_age: Duration::days(7),
            reauth_link_lifetime: Duration::days(7),
            reopen_within: Duration::hours(24),
            actor: None,
            claim_ttl: Duration::minutes(5),
            concurrency: None,
            rerun_after: Duration::seconds(30),
        }
    }

    /// The redirect URI registered with OAuth providers.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url.trim_end_matches('/'))
    }
}

/// Errors of engine operations. Provider failures during syncs are not errors: they are
/// recorded (ledger, health, incident) and reported as events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] gapless_store::StoreError),
    #[error(transparent)]
    Vault(#[from] gapless_vault::VaultError),
    #[error(transparent)]
    Provider(#[from] gapless_providers::registry::RegistryError),
    #[error(transparent)]
    Destination(#[from] gapless_destinations::DestinationError),
    #[error(transparent)]
    Notify(#[from] gapless_notify::NotifyError),
    #[error(
        "no connector is configured for provider {0:?}: configure it under [providers.{0}] in gapless.toml (`gapless provider show {0}` says what it needs)"
    )]
    NoConnector(String),
    #[error("authorization failed: {0}")]
    Authorization(#[from] CallbackError),
    /// What was asked is not possible (bad input, a state that does not allow it): the
    /// caller can act on the message.
    #[error("{0}")]
    Invalid(String),
    /// The spool could not be read or written (a fault of this machine, not the caller's).
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// A health state machine refused an event: a fault of gapless, not of the caller.
    #[error("internal: {0}")]
    Transition(#[from] gapless_core::IllegalTransition),
    /// Any other fault of gapless itself; reported as a server error, its detail only logged.
    #[error("internal: {0}")]
    Internal(String),
    #[error("simulated crash at {0:?}")]
    Crashed(CrashPoint),
    #[error("{0}")]
    Busy(String),
    #[error(
        "master key version {version} is not the key this installation's data was sealed with (its fingerprint differs); give the right key for version {version} in the key file or GAPLESS_MASTER_KEY — nothing was sealed with the wrong one"
    )]
    WrongKey { version: u32 },
}

/// Connectors built for identities' own regions and settings.
type PlacedSources = HashMap<(String, gapless_core::IdentitySettings), Arc<dyn SourceConnector>>;

/// The most connectors kept for identities' own regions and settings (one per shop, say;
/// each holds its definition): past it they are built again as they are used.
const PLACED_MAX: usize = 4096;

/// The engine.
pub struct Engine {
    store: Store,
    vault: Vault,
    clock: Arc<dyn Clock>,
    sources: HashMap<String, Arc<dyn SourceConnector>>,
    /// Connectors for identities with their own region or settings, by provider and those
    /// (built on first use; forgotten all at once past [`PLACED_MAX`]).
    placed: Mutex<PlacedSources>,
    destinations: Mutex<HashMap<(String, String), Arc<dyn Destination>>>,
    opening_destination: tokio::sync::Mutex<()>,
    /// Destinations reached with an identity's credential, by name.
    destination_targets: HashMap<String, PostgresTarget>,
    outbox: FileOutbox,
    /// Delivery channels by the name notification rows carry (`email` at least).
    channels: HashMap<String, Channel>,
    config: EngineConfig,
    /// This instance's name as a lease holder.
    instance: String,
    /// One refresh of an identity's token at a time in this instance.
    refresh_locks: locks::KeyedLocks<IdentityId>,
    /// One run of a pipeline at a time in this instance (the scheduler, a back-fill after a
    /// reauthorization and one started from the API never load the same window at once).
    pipeline_locks: locks::KeyedLocks<gapless_core::PipelineId>,
    /// Pipelines with a back-fill running in this instance (one at a time each).
    backfills: Arc<Mutex<std::collections::HashSet<gapless_core::PipelineId>>>,
    dispatching: tokio::sync::Mutex<()>,
    /// The claims on pipelines this instance holds, for its runs' fenced writes.
    claims: Mutex<HashMap<gapless_core::PipelineId, gapless_store::PipelineClaim>>,
    failpoint: Option<Failpoint>,
    refreshes: std::sync::atomic::AtomicU64,
    spool: spool::Spool,
    budgets: budget::Budgets,
    stats: stats::Stats,
    /// Whether this engine's first reminder sweep has had every open incident looked at
    /// again (the schedule may have changed since the last engine ran).
    reminders_rescheduled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance", &self.instance)
            .field("store", &self.store)
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        store: Store,
        vault: Vault,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let outbox = FileOutbox::new(config.data_dir.join("outbox"), &config.notify_from)?;
        let spool = spool::Spool::new(
            config.data_dir.join("spool"),
            config.spool_max_bytes,
            config.spool_max_age,
            vault.derive_key("gapless spool files v1"),
        );
        Ok(Self {
            store,
            vault,
            sources: HashMap::new(),
            placed: Mutex::default(),
            destinations: Mutex::new(HashMap::new()),
            opening_destination: tokio::sync::Mutex::new(()),
            destination_targets: HashMap::new(),
            channels: HashMap::from([("email".to_string(), Channel::File(outbox.clone()))]),
            outbox,
            config,
            instance: format!("gapless-{}", uuid::Uuid::new_v4()),
            refresh_locks: locks::KeyedLocks::default(),
            pipeline_locks: locks::KeyedLocks::default(),
            backfills: Arc::new(Mutex::new(std::collections::HashSet::new())),
            dispatching: tokio::sync::Mutex::new(()),
            claims: Mutex::new(HashMap::new()),
            failpoint: None,
            refreshes: std::sync::atomic::AtomicU64::new(0),
            reminders_rescheduled: std::sync::atomic::AtomicBool::new(false),
            spool,
            budgets: budget::Budgets::new(clock.clone()),
            stats: stats::Stats::default(),
            clock,
        })
    }

    /// Deliver notifications of the channel `name` (`email`, `slack`, `webhook`) through
    /// `channel`. Email goes to the file outbox until an SMTP channel replaces it.
    pub fn set_channel(&mut self, name: &str, channel: Channel) {
        self.channels.insert(name.to_string(), channel);
    }

    /// Simulate crashes in the refresh path (tests).
    pub fn set_failpoint(&mut self, failpoint: Failpoint) {
        self.failpoint = Some(failpoint);
    }

    /// Refreshes this instance completed.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Make a source connector available under its provider name.
    pub fn add_source(&mut self, connector: Arc<dyn SourceConnector>) {
        self.sources
            .insert(connector.descriptor().name.to_string(), connector);
    }

    /// A key for `purpose` derived from the master key (e.g. to sign session cookies).
    pub fn derive_key(&self, purpose: &str) -> zeroize::Zeroizing<[u8; 32]> {
        self.vault.derive_key(purpose)
    }

    /// Counts and latencies of provider calls.
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    /// Replace `provider`'s request budget per upstream account (None: unlimited).
    pub fn set_rate_limit(&mut self, provider: &str, limit: Option<gapless_core::RateLimit>) {
        self.budgets.set_limit(provider, limit);
    }

    /// Take one request from the budget of `identity`'s upstream account.
    pub(crate) fn take_request(
        &self,
        identity: &gapless_core::Identity,
    ) -> Result<(), budget::Spent> {
        self.budgets
            .take(identity, self.default_rate_limit(&identity.provider))
    }

    /// The request just taken for `identity` took `requests` in all (pages).
    pub(crate) fn charge_requests(&self, identity: &gapless_core::Identity, requests: u32) {
        self.budgets.charge(
            identity,
            self.default_rate_limit(&identity.provider),
            requests,
        );
    }

    fn default_rate_limit(&self, provider: &str) -> Option<gapless_core::RateLimit> {
        self.sources
            .get(provider)
            .and_then(|s| s.descriptor().rate_limit)
    }

    /// The spool of windows waiting for their destination.
    pub fn spool(&self) -> &spool::Spool {
        &self.spool
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.outbox.dir().to_path_buf()
    }

    /// Make a PostgreSQL destination available under `name`; identities whose provider is
    /// `name` hold its password.
    pub fn add_postgres_destination(&mut self, name: &str, target: PostgresTarget) {
        self.destination_targets.insert(name.to_string(), target);
    }

    /// Is `name` a configured destination (rather than a source)?
    pub fn is_destination(&self, name: &str) -> bool {
        self.destination_targets.contains_key(name)
    }

    /// A destination reached with `identity`'s credential.
    pub(crate) fn credentialed_destination(
        &self,
        target_name: &str,
        credential: &gapless_vault::Credential,
    ) -> Result<PostgresDestination, Failure> {
        let target = self.destination_targets.get(target_name).ok_or_else(|| {
            Failure::new(gapless_core::FailureCause::PermissionLost)
                .with_code("unknown_destination")
                .with_message(format!(
                    "no destination named {target_name:?} is configured"
                ))
        })?;
        match credential {
            gapless_vault::Credential::Password { username, password } => {
                PostgresDestination::new(target, username, password)
            }
            other => Err(Failure::new(gapless_core::FailureCause::ReauthRequired {
                reason: gapless_core::ReauthReason::InvalidCredentials,
            })
            .with_code("wrong_credential_kind")
            .with_message(format!(
                "a database destination needs a username and password, not {}",
                other.kind()
            ))),
        }
    }

    /// The destination of a pipeline: opened with its destination identity's credential when
    /// it has one (cached per credential generation), else by kind and target.
    pub async fn destination_for(
        &self,
        pipeline: &gapless_core::Pipeline,
    ) -> Result<Result<Arc<dyn Destination>, Failure>, EngineError> {
        let Some(identity) = pipeline.destination_identity else {
            // A destination that cannot be opened right now (a full disk, a missing mount)
            // is a destination failure: windows go to the spool.
            return match self
                .destination(&pipeline.destination_kind, &pipeline.destination_target)
                .await
            {
                Ok(d) => Ok(Ok(d)),
                Err(EngineError::Destination(
                    e @ gapless_destinations::DestinationError::Open { .. },
                )) => Ok(Err(Failure::new(gapless_core::FailureCause::Transient)
                    .with_code("destination_open")
                    .with_message(e.to_string()))),
                Err(other) => Err(other),
            };
        };
        let (sealed, generation) = self.store.sealed_credential(identity).await?;
        let key = (format!("identity:{identity}"), generation.to_string());
        if let Some(d) = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Ok(d.clone()));
        }
        let credential = match self.vault.open_credential(&identity.to_string(), &sealed) {
            Ok(credential) => credential,
            Err(error) => return Ok(Err(refresh::undecryptable(&error))),
        };
        let opened: Arc<dyn Destination> =
            match self.credentialed_destination(&pipeline.destination_target, &credential) {
                Ok(d) => Arc::new(d),
                Err(failure) => return Ok(Err(failure)),
            };
        self.destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, opened.clone());
        Ok(Ok(opened))
    }

    /// What a configured provider is (auth kind, streams, …).
    pub fn provider(
        &self,
        name: &str,
    ) -> Result<&gapless_providers::ProviderDescriptor, EngineError> {
        Ok(self.source(name)?.descriptor())
    }

    pub(crate) fn source(&self, provider: &str) -> Result<&Arc<dyn SourceConnector>, EngineError> {
        self.sources
            .get(provider)
            .ok_or_else(|| EngineError::NoConnector(provider.to_string()))
    }

    /// The connector that makes the requests of an identity of `provider` with `settings`
    /// (its own region, its own shop): the provider's own when the identity has none.
    pub(crate) fn placed_source(
        &self,
        provider: &str,
        settings: &gapless_core::IdentitySettings,
    ) -> Result<Arc<dyn SourceConnector>, EngineError> {
        let base = self.source(provider)?;
        if settings.is_empty() {
            return Ok(base.for_identity(settings)?.unwrap_or_else(|| base.clone()));
        }
        let key = (provider.to_string(), settings.clone());
        let placed = || self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(connector) = placed().get(&key) {
            return Ok(connector.clone());
        }
        let built = base.for_identity(settings)?.unwrap_or_else(|| base.clone());
        let mut placed = placed();
        if placed.len() >= PLACED_MAX {
            placed.clear();
        }
        placed.insert(key, built.clone());
        Ok(built)
    }

    /// The connector of `identity`'s requests.
    pub(crate) fn source_for(
        &self,
        identity: &gapless_core::Identity,
    ) -> Result<Arc<dyn SourceConnector>, EngineError> {
        self.placed_source(&identity.provider, &identity.settings)
    }

    /// The destination of a pipeline, opened once and cached.
    pub async fn destination(
        &self,
        kind: &str,
        target: &str,
    ) -> Result<Arc<dyn Destination>, EngineError> {
        let key = (kind.to_string(), target.to_string());
        let cached = || {
            self.destinations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned()
        };
        if let Some(d) = cached() {
            return Ok(d);
        }
        // One opening at a time: concurrent runs into one new destination share it instead
        // of each opening its own.
        let _opening = self.opening_destination.lock().await;
        if let Some(d) = cached() {
            return Ok(d);
        }
        let opened = gapless_destinations::open(kind, target, &self.config.data_dir).await?;
        self.destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, opened.clone());
        Ok(opened)
    }

    /// Check every master key version against the fingerprint recorded for it, before
    /// anything is sealed: a wrong key for a version is refused by name. A version seen for
    /// the first time has its fingerprint recorded — after a credential sealed with it, if
    /// one exists, was opened with it.
    pub async fn verify_keys(&self) -> Result<(), EngineError> {
        let recorded: HashMap<u32, String> =
            self.store.key_fingerprints().await?.into_iter().collect();
        for version in self.vault.versions() {
            let Some(fingerprint) = self.vault.fingerprint(version) else {
                continue;
            };
            match recorded.get(&version.0) {
                Some(known) if *known == fingerprint => {}
                Some(_) => return Err(EngineError::WrongKey { version: version.0 }),
                None => {
                    if let Some((row, sealed)) =
                        self.store.credential_sealed_with(version.0).await?
                        && self.vault.open_credential(&row, &sealed).is_err()
                    {
                        return Err(EngineError::WrongKey { version: version.0 });
                    }
                    let audit = self.audit_record(
                        &self.caller(),
                        AuditAction::KeyAdded,
                        &format!("key version {}", version.0),
                    );
                    self.store
                        .record_key_fingerprint(version.0, &fingerprint, self.clock.now(), &audit)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Delete an identity (refused, naming them, while pipelines use it), after revoking its
    /// credential at the provider (RFC 7009) where the provider offers that, so the grant
    /// ends there too.
    pub async fn delete_identity(
        &self,
        id: IdentityId,
        caller: &Caller,
    ) -> Result<Revocation, EngineError> {
        let identity = self.store.identity(id).await?;
        let mut audit = self
            .audit_record(caller, AuditAction::IdentityDeleted, &identity.label)
            .identity(id)
            .with("provider", identity.provider.clone());
        if !self.store.pipelines_using(id).await?.is_empty() {
            // The store's refusal names the pipelines.
            self.store.delete_identity(id, &audit).await?;
        }
        let revocation = match self.source_for(&identity) {
            Err(EngineError::NoConnector(_)) => Revocation::NotOffered,
            Err(error) => Revocation::Failed(error.to_string()),
            Ok(connector) => {
                let (sealed, _) = self.store.sealed_credential(id).await?;
                match self.vault.open_credential(&id.to_string(), &sealed) {
                    Err(error) => Revocation::Failed(error.to_string()),
                    Ok(credential) => match connector.revoke(&credential).await {
                        Ok(true) => Revocation::Revoked,
                        Ok(false) => Revocation::NotOffered,
                        Err(error) => Revocation::Failed(error.to_string()),
                    },
                }
            }
        };
        audit = audit.with("revoked_at_provider", revocation.words());
        self.store.delete_identity(id, &audit).await?;
        Ok(revocation)
    }

    /// Who this engine acts as when no caller is named: the configured actor (a CLI
    /// command's user), else the scheduler of this instance.
    pub fn caller(&self) -> Caller {
        Caller::new(
            self.config
                .actor
                .clone()
                .unwrap_or_else(|| gapless_core::Actor::Scheduler(self.instance.clone())),
        )
    }

    /// The user name a password identity signs in with (not a secret: the reauthorize
    /// page shows it); None for every other kind of credential, and for one that cannot be
    /// opened (whose page must still let someone type a new one).
    pub async fn username_of(
        &self,
        identity: gapless_core::IdentityId,
    ) -> Result<Option<String>, EngineError> {
        let (sealed, _) = self.store.sealed_credential(identity).await?;
        Ok(
            match self.vault.open_credential(&identity.to_string(), &sealed) {
                Ok(gapless_vault::Credential::Password { username, .. }) => Some(username),
                _ => None,
            },
        )
    }

    /// An audit record of a change made now by `caller`.
    pub(crate) fn audit_record(
        &self,
        caller: &Caller,
        action: AuditAction,
        subject: &str,
    ) -> AuditRecord {
        AuditRecord::new(self.clock.now(), caller, action, subject)
    }

    /// Wait for the lock that makes runs of one pipeline take turns in this instance.
    pub(crate) async fn pipeline_lock(
        &self,
        pipeline: gapless_core::PipelineId,
    ) -> locks::KeyedGuard<gapless_core::PipelineId> {
        self.pipeline_locks.lock(pipeline).await
    }

    /// The pipeline's run lock, if no run of it holds it now.
    pub(crate) fn try_pipeline_lock(
        &self,
        pipeline: gapless_core::PipelineId,
    ) -> Option<locks::KeyedGuard<gapless_core::PipelineId>> {
        self.pipeline_locks.try_lock(pipeline)
    }

    /// One scheduler tick at the clock's `now`: refresh due tokens, run every pipeline,
    /// finish recoveries, probe due identities, warn about expiries, detect provider outages,
    /// remind open incidents, deliver the outbox. The phases are independent: one that
    /// fails is reported (an event and the log) and the others still run — above all the
    /// delivery of the outbox. Only a simulated crash stops the tick.
    pub async fn tick(&self) -> Result<EventLog, EngineError> {
        let mut log = EventLog::default();
        macro_rules! phase {
            ($name:literal, $work:ident) => {{
                let started = std::time::Instant::now();
                let result = self.$work(&mut log).await;
                self.phase($name, started, result, &mut log)?;
            }};
        }
        phase!("refresh", refresh_due);
        phase!("pipelines", run_pipelines);
        phase!("recoveries", finish_recoveries);
        phase!("spool", expire_spool);
        phase!("probes", probe_due);
        phase!("expiries", check_expiries);
        phase!("outages", detect_provider_outages);
        phase!("reminders", send_reminders);
        phase!("outbox", dispatch_outbox);
        phase!("audit", seal_audit);
        Ok(log)
    }

    /// Runs of one kind in flight at once in this instance (see
    /// [`EngineConfig::concurrency`]).
    pub fn concurrency(&self) -> usize {
        match self.config.concurrency {
            Some(n) => n.max(1),
            // The work waits on providers, not on this machine: 10,000 pipelines behind a
            // provider answering in 200 ms take 170 s a round at 16, 67 s at 64, 45 s at
            // 128 (bench scale, PostgreSQL, 2 cores); 1,000 failures at once still reach
            // the mail server within 0.3 s of each (p99, bench notify).
            None if self.store.backend() == gapless_store::Backend::Postgres => 128,
            None => 16,
        }
    }

    /// Run `work` for each item, up to `concurrency` at once; each returns its own events,
    /// added to `log` in the items' order. The first error (in that order) is returned
    /// after all of them ended.
    pub(crate) async fn each_concurrently<T, Fut>(
        &self,
        items: Vec<T>,
        work: impl Fn(T) -> Fut,
        log: &mut EventLog,
    ) -> Result<(), EngineError>
    where
        Fut: std::future::Future<Output = (EventLog, Result<(), EngineError>)>,
    {
        use futures_util::StreamExt;
        let mut done: Vec<(usize, EventLog, Result<(), EngineError>)> =
            futures_util::stream::iter(items.into_iter().enumerate().map(|(i, item)| {
                let running = work(item);
                async move {
                    let (own, result) = running.await;
                    (i, own, result)
                }
            }))
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        done.sort_by_key(|(i, _, _)| *i);
        let mut first = None;
        for (_, own, result) in done {
            log.extend(own);
            if let Err(error) = result {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Chain the audit entries that a process left pending (one that died between a commit
    /// and its seal); each write seals its own.
    async fn seal_audit(&self, _log: &mut EventLog) -> Result<(), EngineError> {
        let sealed = self.store.seal_audit().await?;
        if sealed > 0 {
            tracing::info!(sealed, "audit entries left pending were chained");
        }
        Ok(())
    }

    /// A phase's failure is reported and does not stop the tick (a simulated crash does).
    /// How long it took (wall time, for operators) is logged at debug level.
    fn phase(
        &self,
        name: &'static str,
        started: std::time::Instant,
        result: Result<(), EngineError>,
        log: &mut EventLog,
    ) -> Result<(), EngineError> {
        tracing::debug!(
            phase = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduler phase ended"
        );
        match result {
            Ok(()) => Ok(()),
            Err(error @ EngineError::Crashed(_)) => Err(error),
            Err(error) => {
                tracing::error!(phase = name, %error, "a scheduler phase failed");
                log.push(Event::PhaseFailed {
                    at: self.clock.now(),
                    phase: name.to_string(),
                    error: error.to_string(),
                });
                Ok(())
            }
        }
    }
}

/// What became of an identity's grant at the provider when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The provider revoked it.
    Revoked,
    /// The provider offers no revocation (or the identity holds a key or password).
    NotOffered,
    /// Revocation was tried and failed: the grant may still be valid at the provider.
    Failed(String),
}

impl Revocation {
    /// In a few words, for the audit log.
    pub fn words(&self) -> String {
        match self {
            Self::Revoked => "revoked".into(),
            Self::NotOffered => "not offered".into(),
            Self::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// A failure as one line for humans.
pub fn describe_failure(failure: &Failure) -> String {
    match (&failure.provider_code, &failure.provider_message) {
        (Some(code), Some(message)) => format!("{} ({code}: {message})", failure.cause),
        (Some(code), None) => format!("{} ({code})", failure.cause),
        _ => failure.cause.to_string(),
    }
}
