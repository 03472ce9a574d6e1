//! Support for tests that need a PostgreSQL database of their own (used by this crate's and
//! other crates' test suites). The server comes from `GAPLESS_TEST_POSTGRES` (default
//! `postgres://root@127.0.0.1:5432/test`); each [`TestDatabase`] creates a fresh database
//! and drops it when dropped.

use sqlx::{Connection, Executor, PgConnection};

use crate::{StoreError, StoreLocation};

/// The PostgreSQL server tests use.
pub fn postgres_base() -> String {
    std::env::var("GAPLESS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_string())
}

/// A fresh, uniquely named database; dropped with the value.
#[derive(Debug)]
pub struct TestDatabase {
    pub location: StoreLocation,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Result<Self, StoreError> {
        let base = postgres_base();
        let name = format!("gapless_test_{}", uuid::Uuid::new_v4().simple());
        let unreachable = |e: sqlx::Error| StoreError::Unreachable {
            location: crate::redact_url(&base),
            detail: format!(
                "{e} (the test suite needs PostgreSQL; set GAPLESS_TEST_POSTGRES to a role that may create databases)"
            ),
        };
        let mut admin = PgConnection::connect(&base).await.map_err(unreachable)?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let _ = admin.close().await;
        let mut url = url::Url::parse(&base).map_err(|e| StoreError::Config(e.to_string()))?;
        url.set_path(&name);
        Ok(Self {
            location: StoreLocation::Postgres {
                url: url.to_string(),
            },
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A helper thread with its own runtime; FORCE ends connections still open.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&postgres_base()).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}
