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
    url: String,
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
            url: url.to_string(),
            name,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Run `sql` (one or more statements) in the database, on a connection of its own.
    pub async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        let mut conn = PgConnection::connect(self.url()).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
        let _ = conn.close().await;
        Ok(())
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
    /// With TLS: the private CA's certificate (PEM) that signed the server's.
    pub ca_certificate: Option<std::path::PathBuf>,
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
        Self::start_with(false).await
    }

    /// Start a fresh cluster that also takes TLS, with a certificate for 127.0.0.1 and
    /// `localhost` signed by a private CA made for it (`openssl`): the CA's certificate is
    /// [`Self::ca_certificate`].
    pub async fn start_tls() -> Result<Self, String> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Result<Self, String> {
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
        let mut cluster = Self {
            port: free_port()?,
            dir,
            bin,
            as_postgres_user,
            admin,
            ca_certificate: None,
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
        let tls_options = if tls {
            let (ca, certificate, key) = cluster.private_ca()?;
            cluster.ca_certificate = Some(ca);
            format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                certificate.display(),
                key.display()
            )
        } else {
            String::new()
        };
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
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{tls_options}",
                    cluster.port,
                    cluster.dir.display()
                ),
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// A private CA and a server certificate it signed for 127.0.0.1 and `localhost`, in
    /// the cluster's directory: (CA certificate, server certificate, server key). The key
    /// belongs to the server's user, readable by it alone, as PostgreSQL requires.
    fn private_ca(
        &self,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf), String> {
        let tls = self.dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
        let path = |name: &str| tls.join(name).display().to_string();
        std::fs::write(
            tls.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| e.to_string())?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gapless test private CA",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("server.ext"),
            "-out",
            &path("server.crt"),
        ])?;
        let key = tls.join("server.key");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        if self.as_postgres_user {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&tls)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("chown of the certificates failed".into());
            }
        }
        Ok((tls.join("ca.pem"), tls.join("server.crt"), key))
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
        };
        succeeded(tool, output)
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

impl crate::Store {
    /// For benchmarks at a size the consent flow cannot reach in minutes: every identity
    /// and pipeline now in this PostgreSQL store is copied `copies` times by one
    /// `INSERT … SELECT` each. A copy's identity keeps its template's sealed credential,
    /// which cannot be opened under the copy's id, so a copy must never come due while it
    /// is measured: its probe, its access-token expiry and its pipeline's next run are
    /// spread evenly over `spread_secs` seconds from `due_from`. Returns the rows written
    /// (identities, pipelines).
    pub async fn replicate_for_bench(
        &self,
        copies: u32,
        due_from: chrono::DateTime<chrono::Utc>,
        spread_secs: u32,
    ) -> Result<(u64, u64), StoreError> {
        if self.backend() != crate::Backend::Postgres {
            return Err(StoreError::Config(
                "replicating rows for a bench needs a PostgreSQL store".into(),
            ));
        }
        let shifted = "to_char(($2::timestamptz + make_interval(secs => n * $3 / ($1 + 1))) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
        let identity_id = |column: &str| format!("md5('identity-' || n || {column})::uuid::text");
        let identities = self
            .replicate_table("identities", |column| match column {
                "id" => Some(identity_id("t.id")),
                "label" => Some("t.label || '-copy-' || n".into()),
                "probe_due_at" | "access_expires_at" => Some(shifted.into()),
                _ => None,
            })
            .await?;
        let written_identities = self
            .run_replication(&identities, copies, due_from, spread_secs)
            .await?;
        let pipelines = self
            .replicate_table("pipelines", |column| match column {
                "id" => Some("md5('pipeline-' || n || t.id)::uuid::text".into()),
                "name" => Some("t.name || '-copy-' || n".into()),
                "source_identity_id" => Some(identity_id("t.source_identity_id")),
                "due_at" => Some(shifted.into()),
                _ => None,
            })
            .await?;
        let written_pipelines = self
            .run_replication(&pipelines, copies, due_from, spread_secs)
            .await?;
        sqlx::query("ANALYZE identities, pipelines")
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok((written_identities, written_pipelines))
    }

    /// `INSERT INTO table (every column) SELECT …` from the table's rows and a series `n`
    /// (`$1` copies): each column as `replaced` says, else the template's value.
    async fn replicate_table(
        &self,
        table: &str,
        replaced: impl Fn(&str) -> Option<String>,
    ) -> Result<String, StoreError> {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        let values: Vec<String> = columns
            .iter()
            .map(|c| replaced(c).unwrap_or_else(|| format!("t.{c}")))
            .collect();
        Ok(format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {table} t CROSS JOIN generate_series(1, $1) AS n",
            columns.join(", "),
            values.join(", ")
        ))
    }

    async fn run_replication(
        &self,
        sql: &str,
        copies: u32,
        due_from: chrono::DateTime<chrono::Utc>,
        spread_secs: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql)
            .bind(i64::from(copies))
            .bind(crate::codec::ts(due_from))
            .bind(i64::from(spread_secs.max(1)))
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(done.rows_affected())
    }
}

/// Run `openssl` with `args`; its output when it fails.
fn openssl(args: &[&str]) -> Result<(), String> {
    let command = format!("openssl {}", args.first().copied().unwrap_or_default());
    succeeded(
        &command,
        std::process::Command::new("openssl").args(args).output(),
    )
}

/// Whether the run of `tool` succeeded; else what it wrote.
fn succeeded(tool: &str, output: std::io::Result<std::process::Output>) -> Result<(), String> {
    let output = output.map_err(|e| format!("{tool}: {e}"))?;
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
