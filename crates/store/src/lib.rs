//! The store: gapless's durable state on SQLite (embedded default) or PostgreSQL (several
//! instances), behind one repository API.
//!
//! Queries are written once, with `$n` placeholders that both dialects accept, and run
//! through sqlx's `Any` driver; row mapping is by hand (no sqlx macros). Migrations are one
//! folder per dialect, embedded in the binary. Every state change that belongs together is
//! one transaction (see [`Store::apply_health`]).

mod access;
mod audit;
mod claims;
mod codec;
mod identities;
mod incidents;
mod jobs;
mod leases;
mod ledger;
mod listing;
mod notifications;
mod pipelines;
#[doc(hidden)]
#[cfg(feature = "testing")]
pub mod testing;

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    time::Duration,
};

use sqlx::{
    AnyPool,
    any::AnyPoolOptions,
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
};

pub use access::{ApiToken, NewReauthLink, ReauthLink, TokenScope};
pub use audit::{AuditBreak, AuditFilter, AuditVerification, GENESIS_HASH, MAX_AUDIT_PAGE};
pub use claims::{ClaimedNotification, ClaimedPipeline, MAX_CLAIM_BATCH, PipelineClaim};
pub use identities::{
    CandidatePage, Checked, CredentialUpdate, HealthChange, IncidentChange, LeaseRequest,
    NewIdentity, RefreshStart,
};
pub use incidents::DueReminder;
pub use jobs::StoredJob;
pub use leases::Lease;
pub use listing::{
    IdentityCursor, IdentityOrder, IdentityPage, LedgerSummary, MAX_IDENTITY_PAGE, PipelinePage,
    TimeCursor, TimePage,
};
pub use notifications::OutboxStats;

/// Which database holds the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `gapless.sqlite` inside this data directory.
    Sqlite { data_dir: PathBuf },
    /// A `postgres://` URL.
    Postgres { url: String },
}

impl StoreLocation {
    /// `--store` / `GAPLESS_STORE` if given (a `postgres://` or `postgresql://` URL, or
    /// `sqlite`), else SQLite in `data_dir`.
    pub fn from_setting(store: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        match store.map(str::trim) {
            None | Some("") | Some("sqlite") => Ok(Self::Sqlite {
                data_dir: data_dir.to_path_buf(),
            }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres {
                    url: url.to_string(),
                })
            }
            Some(other) => Err(StoreError::Config(format!(
                "store {:?} is not understood: use a postgres:// URL or \"sqlite\"",
                redact_url(other)
            ))),
        }
    }

    /// A description without credentials, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { data_dir } => format!("sqlite:{}", data_dir.join(SQLITE_FILE).display()),
            Self::Postgres { url } => redact_url(url),
        }
    }
}

/// The state file inside the data directory.
pub const SQLITE_FILE: &str = "gapless.sqlite";

/// A URL with its password replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the store. Messages name what was wrong; database errors are summarized, and a
/// store URL never appears with its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store at {location}: {detail}")]
    Unreachable { location: String, detail: String },
    #[error("migrating the store failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// A health change was decided on a state of the identity that another task or
    /// instance has changed since: nothing was written; decide again on the new state.
    #[error(
        "the health of identity {identity} changed while a change of it was decided; nothing was written"
    )]
    StaleHealth { identity: String },
    #[error("identity {label} is used by pipeline(s) {pipelines}; delete or repoint them first")]
    IdentityInUse { label: String, pipelines: String },
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    /// A unique constraint refused the write: a row with the same key exists.
    #[error("already exists: {}", database_message(.source))]
    Duplicate {
        #[source]
        source: sqlx::Error,
    },
    /// A foreign key refused the write: it refers to a row that does not exist.
    #[error("refers to something that does not exist: {}", database_message(.source))]
    MissingReference {
        #[source]
        source: sqlx::Error,
    },
    #[error("database error: {}", database_message(.source))]
    Database {
        #[source]
        source: sqlx::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(source: sqlx::Error) -> Self {
        match &source {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate { source },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Self::MissingReference { source }
            }
            _ => Self::Database { source },
        }
    }
}

/// A database error in a few words: the server's message, or what went wrong on the way.
fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        sqlx::Error::Io(e) => format!("connection: {e}"),
        other => other.to_string(),
    }
}

/// The repository over one database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// The dispatcher's connections (its claims, its records, the outbox counts it and
    /// `/metrics` read): on PostgreSQL a pool of its own, so that claiming and recording
    /// deliveries never waits behind a busy sweep's statements (a failure's mail leaves as
    /// its transaction commits, however many runs are in flight); on SQLite the one
    /// connection.
    outbox_pool: AnyPool,
    backend: Backend,
    /// Signalled after each commit that put a message in the outbox (shared by clones):
    /// the dispatcher delivers it at once instead of at the next tick.
    outbox_written: std::sync::Arc<tokio::sync::Notify>,
    /// Chains pending audit entries, one task of this process at a time (shared by clones).
    sealer: std::sync::Arc<audit::Sealer>,
}

/// The migrations of each dialect: (version, name, SQL). Append; never edit a released one.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../migrations/sqlite/0002_lifecycle.sql"),
    ),
    (
        3,
        "notify",
        include_str!("../migrations/sqlite/0003_notify.sql"),
    ),
    (
        4,
        "schedules",
        include_str!("../migrations/sqlite/0004_schedules.sql"),
    ),
    (
        5,
        "time zones",
        include_str!("../migrations/sqlite/0005_time_zones.sql"),
    ),
    (
        6,
        "access",
        include_str!("../migrations/sqlite/0006_access.sql"),
    ),
    (
        7,
        "any account",
        include_str!("../migrations/sqlite/0007_any_account.sql"),
    ),
    (
        8,
        "incident recovery",
        include_str!("../migrations/sqlite/0008_incident_recovery.sql"),
    ),
    (
        9,
        "key checks",
        include_str!("../migrations/sqlite/0009_key_checks.sql"),
    ),
    (
        10,
        "link attempts",
        include_str!("../migrations/sqlite/0010_link_attempts.sql"),
    ),
    (
        11,
        "ended sessions",
        include_str!("../migrations/sqlite/0011_ended_sessions.sql"),
    ),
    (
        12,
        "audit log",
        include_str!("../migrations/sqlite/0012_audit_log.sql"),
    ),
    (
        13,
        "lookup indexes",
        include_str!("../migrations/sqlite/0013_lookup_indexes.sql"),
    ),
    (
        14,
        "claims",
        include_str!("../migrations/sqlite/0014_claims.sql"),
    ),
    (
        15,
        "report_jobs",
        include_str!("../migrations/sqlite/0015_report_jobs.sql"),
    ),
    (
        16,
        "probe_index",
        include_str!("../migrations/sqlite/0016_probe_index.sql"),
    ),
    (
        17,
        "sweep_indexes",
        include_str!("../migrations/sqlite/0017_sweep_indexes.sql"),
    ),
    (
        18,
        "expiry_sweep",
        include_str!("../migrations/sqlite/0018_expiry_sweep.sql"),
    ),
    (
        19,
        "probe_due",
        include_str!("../migrations/sqlite/0019_probe_due.sql"),
    ),
    (
        20,
        "audit_pending",
        include_str!("../migrations/sqlite/0020_audit_pending.sql"),
    ),
    (
        21,
        "window_counts",
        include_str!("../migrations/sqlite/0021_window_counts.sql"),
    ),
    (
        22,
        "reminder_due",
        include_str!("../migrations/sqlite/0022_reminder_due.sql"),
    ),
    (
        23,
        "renewal_unknown",
        include_str!("../migrations/sqlite/0023_renewal_unknown.sql"),
    ),
    (
        24,
        "newest_first",
        include_str!("../migrations/sqlite/0024_newest_first.sql"),
    ),
    (
        25,
        "applied_settings",
        include_str!("../migrations/sqlite/0025_applied_settings.sql"),
    ),
    (
        26,
        "window_counts_per_statement",
        include_str!("../migrations/sqlite/0026_window_counts_per_statement.sql"),
    ),
    (
        27,
        "identity_settings",
        include_str!("../migrations/sqlite/0027_identity_settings.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../migrations/postgres/0002_lifecycle.sql"),
    ),
    (
        3,
        "notify",
        include_str!("../migrations/postgres/0003_notify.sql"),
    ),
    (
        4,
        "schedules",
        include_str!("../migrations/postgres/0004_schedules.sql"),
    ),
    (
        5,
        "time zones",
        include_str!("../migrations/postgres/0005_time_zones.sql"),
    ),
    (
        6,
        "access",
        include_str!("../migrations/postgres/0006_access.sql"),
    ),
    (
        7,
        "any account",
        include_str!("../migrations/postgres/0007_any_account.sql"),
    ),
    (
        8,
        "incident recovery",
        include_str!("../migrations/postgres/0008_incident_recovery.sql"),
    ),
    (
        9,
        "key checks",
        include_str!("../migrations/postgres/0009_key_checks.sql"),
    ),
    (
        10,
        "link attempts",
        include_str!("../migrations/postgres/0010_link_attempts.sql"),
    ),
    (
        11,
        "ended sessions",
        include_str!("../migrations/postgres/0011_ended_sessions.sql"),
    ),
    (
        12,
        "audit log",
        include_str!("../migrations/postgres/0012_audit_log.sql"),
    ),
    (
        13,
        "lookup indexes",
        include_str!("../migrations/postgres/0013_lookup_indexes.sql"),
    ),
    (
        14,
        "claims",
        include_str!("../migrations/postgres/0014_claims.sql"),
    ),
    (
        15,
        "report_jobs",
        include_str!("../migrations/postgres/0015_report_jobs.sql"),
    ),
    (
        16,
        "probe_index",
        include_str!("../migrations/postgres/0016_probe_index.sql"),
    ),
    (
        17,
        "sweep_indexes",
        include_str!("../migrations/postgres/0017_sweep_indexes.sql"),
    ),
    (
        18,
        "expiry_sweep",
        include_str!("../migrations/postgres/0018_expiry_sweep.sql"),
    ),
    (
        19,
        "probe_due",
        include_str!("../migrations/postgres/0019_probe_due.sql"),
    ),
    (
        20,
        "audit_pending",
        include_str!("../migrations/postgres/0020_audit_pending.sql"),
    ),
    (
        21,
        "window_counts",
        include_str!("../migrations/postgres/0021_window_counts.sql"),
    ),
    (
        22,
        "reminder_due",
        include_str!("../migrations/postgres/0022_reminder_due.sql"),
    ),
    (
        23,
        "renewal_unknown",
        include_str!("../migrations/postgres/0023_renewal_unknown.sql"),
    ),
    (
        24,
        "newest_first",
        include_str!("../migrations/postgres/0024_newest_first.sql"),
    ),
    (
        25,
        "applied_settings",
        include_str!("../migrations/postgres/0025_applied_settings.sql"),
    ),
    (
        26,
        "window_counts_per_statement",
        include_str!("../migrations/postgres/0026_window_counts_per_statement.sql"),
    ),
    (
        27,
        "identity_settings",
        include_str!("../migrations/postgres/0027_identity_settings.sql"),
    ),
];

/// The embedded migrations of one dialect, as sqlx's migrator takes them.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>>
    {
        Box::pin(std::future::ready(Ok(self
            .0
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect())))
    }
}

/// A pool without sqlx's background maintenance task (no idle timeout, no maximum
/// lifetime, no minimum of connections). In sqlx 0.8.6 that task can spin a core forever
/// once the pool's idle count wraps below zero (sqlx issue #3645, fixed after 0.8.6): seen
/// here as a process stuck at exit and a test spinning for minutes. Connections are still
/// checked before each use, so one the server closed is replaced then.
fn no_maintenance_task(options: AnyPoolOptions) -> AnyPoolOptions {
    options
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
}

/// The connection URL of `location`, its backend and the pool's size. SQLite's data
/// directory is created when needed; an empty database file there is refused.
fn connection_url(location: &StoreLocation) -> Result<(String, Backend, u32), StoreError> {
    match location {
        StoreLocation::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
            let file = data_dir.join(SQLITE_FILE);
            // An empty file where the state should be is a failed copy or restore, not a
            // new installation.
            if std::fs::metadata(&file).is_ok_and(|m| m.len() == 0) {
                return Err(StoreError::Config(format!(
                    "{} exists but is empty: it is not a gapless state database (a failed copy or restore?); restore it, or remove it to start a new installation",
                    file.display()
                )));
            }
            let path = file.to_str().ok_or_else(|| {
                StoreError::Config(format!(
                    "data directory {} is not UTF-8",
                    data_dir.display()
                ))
            })?;
            // One writer at a time is SQLite's model; a single connection avoids
            // lock-upgrade failures between pooled connections of one process.
            Ok((format!("sqlite://{path}?mode=rwc"), Backend::Sqlite, 1))
        }
        StoreLocation::Postgres { url } => Ok((url.clone(), Backend::Postgres, 8)),
    }
}

async fn migrations(backend: Backend) -> Result<Migrator, StoreError> {
    let files = match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    };
    Migrator::new(Embedded(files))
        .await
        .map_err(StoreError::Migrate)
}

impl Store {
    /// Open (creating the data directory and database file when needed) and migrate.
    pub async fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, backend, max) = connection_url(location)?;
        let unreachable = |e: sqlx::Error| StoreError::Unreachable {
            location: location.describe(),
            detail: summarize_connect_error(&e),
        };
        // One direct attempt first: an unreachable or misconfigured store fails at once
        // instead of after the pool's retries.
        let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .map_err(unreachable)?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = no_maintenance_task(AnyPoolOptions::new())
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(unreachable)?;
        let outbox_pool = match backend {
            Backend::Sqlite => pool.clone(),
            // Opened on first use; at most two, whatever the main pool's size.
            Backend::Postgres => no_maintenance_task(AnyPoolOptions::new())
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&url)
                .map_err(unreachable)?,
        };
        let store = Self {
            pool,
            outbox_pool,
            backend,
            outbox_written: Default::default(),
            sealer: Default::default(),
        };
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&store.pool)
                .await?;
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&store.pool)
                .await?;
        }
        store.refuse_a_foreign_database(location).await?;
        migrations(backend)
            .await?
            .run(&store.pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(store)
    }

    /// A database with tables but no record of gapless's migrations belongs to something
    /// else: gapless never writes its tables into it.
    async fn refuse_a_foreign_database(&self, location: &StoreLocation) -> Result<(), StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
            Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables WHERE table_schema = current_schema()"
            }
        };
        let tables: Vec<String> = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| codec::get_str(r, "name"))
            .collect::<Result<_, _>>()?;
        if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
            return Err(StoreError::Config(format!(
                "{} holds tables ({}) but is not a gapless state database; point gapless at its own database",
                location.describe(),
                tables
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begin a write transaction (`BEGIN IMMEDIATE` on SQLite, so the write lock is taken
    /// up front).
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        self.begin_in(&self.pool).await
    }

    /// A transaction on `pool` (the main one or the outbox's), taking SQLite's write lock
    /// at once.
    pub(crate) async fn begin_in(
        &self,
        pool: &AnyPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => pool.begin().await?,
        })
    }

    /// Returns once a message was committed to the outbox through this store (or a clone)
    /// since the last time it returned; a commit while nobody waits is not missed.
    pub async fn outbox_written(&self) {
        self.outbox_written.notified().await;
    }

    /// Called after a commit that added `count` messages to the outbox.
    pub(crate) fn wrote_to_outbox(&self, count: usize) {
        if count > 0 {
            self.outbox_written.notify_one();
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The connections of the outbox dispatcher (see `outbox_pool`).
    pub(crate) fn outbox_pool(&self) -> &AnyPool {
        &self.outbox_pool
    }

    pub async fn close(&self) {
        self.outbox_pool.close().await;
        self.pool.close().await;
    }
}

fn summarize_connect_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(e) => format!("connection failed: {e}"),
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Configuration(e) => format!("invalid store URL: {e}"),
        sqlx::Error::PoolTimedOut => "timed out connecting".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_pool_has_no_maintenance_task_that_can_spin_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreLocation::Sqlite {
            data_dir: dir.path().to_path_buf(),
        })
        .await
        .unwrap();
        for pool in [store.pool(), store.outbox_pool()] {
            let options = pool.options();
            assert_eq!(
                (
                    options.get_min_connections(),
                    options.get_idle_timeout(),
                    options.get_max_lifetime()
                ),
                (0, None, None)
            );
        }
        store.close().await;
    }

    #[test]
    fn every_migration_file_is_embedded_for_both_dialects() {
        for (dialect, list) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect);
            let files = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(
                files,
                list.len(),
                "{dialect}: a migration file is not embedded"
            );
            for (i, (version, _, _)) in list.iter().enumerate() {
                assert_eq!(
                    *version,
                    i as i64 + 1,
                    "{dialect}: versions are consecutive"
                );
            }
        }
        assert_eq!(SQLITE_MIGRATIONS.len(), POSTGRES_MIGRATIONS.len());
    }
}
