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
            .execute(format!("CREATE DATABASE {name}").as_str())
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
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// A private PostgreSQL cluster with password (SCRAM) authentication, started by a test on
/// its own port with `initdb`, stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    as_postgres_user: bool,
    /// The superuser's name and password.
    pub admin: (String, String),
}

fn pg_bin() -> Result<std::path::PathBuf, String> {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL binaries not found in /usr/lib/postgresql: {e}"))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "initdb not found under /usr/lib/postgresql/*/bin".to_string())
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

impl PrivatePostgres {
    /// Start a fresh cluster. Root runs the server as the `postgres` system user (the
    /// server refuses to run as root).
    pub async fn start() -> Result<Self, String> {
        let bin = pg_bin()?;
        let dir =
            std::env::temp_dir().join(format!("gapless-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let as_postgres_user = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let admin = (
            "gapless_admin".to_string(),
            format!("admin-{}", uuid::Uuid::new_v4().simple()),
        );
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &admin.1).map_err(|e| e.to_string())?;
        if as_postgres_user {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("chown of the cluster directory failed".into());
            }
        }
        let cluster = Self {
            port: free_port()?,
            dir,
            bin,
            as_postgres_user,
            admin,
        };
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                &cluster.admin.0,
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
            ],
        )?;
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &cluster.dir.join("log").display().to_string(),
                "-w",
                "-o",
                &format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    cluster.port,
                    cluster.dir.display()
                ),
                "start",
            ],
        )?;
        Ok(cluster)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let output = if self.as_postgres_user {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&program).args(args).output()
        }
        .map_err(|e| format!("{tool}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A URL for `user` (password left out when None) on `database`.
    pub fn url(&self, user: &str, password: Option<&str>, database: &str) -> String {
        match password {
            Some(p) => format!("postgres://{user}:{p}@127.0.0.1:{}/{database}", self.port),
            None => format!("postgres://{user}@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// Run SQL as the superuser on `database`.
    pub async fn admin_sql(&self, database: &str, sql: &str) -> Result<(), String> {
        let mut conn =
            PgConnection::connect(&self.url(&self.admin.0, Some(&self.admin.1), database))
                .await
                .map_err(|e| e.to_string())?;
        conn.execute(sql).await.map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
