//! The PostgreSQL destination: a window replaces its rows in the target table in one
//! transaction (a delete by the window index, then one INSERT of arrays for a small window
//! or a text `COPY` straight into the table). Tables are created from the stream schema.
//! The password comes from the destination's identity; errors are classified by SQLSTATE.

use std::str::FromStr;

use crate::sqlstate::classify_sqlstate;
use async_trait::async_trait;
use chrono::NaiveDate;
use gapless_core::{
    ColumnKind, Failure, FailureCause, PipelineId, Row, StreamSchema, Value, Window,
};
use gapless_vault::Password;
use sqlx::{
    Connection, PgConnection, Row as _,
    postgres::{PgConnectOptions, PgRow},
};
use tokio::sync::Mutex;

use crate::{Destination, check_name, select_window, window_key};

/// Where a PostgreSQL destination writes.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    /// `postgres://user@host:port/database` (no password: that is the identity's).
    pub url: String,
    /// The schema tables are created in.
    pub schema: String,
}

/// Connections a destination holds at most: windows of one request load
/// [`PARALLEL_LOADS`] at a time, and runs of other pipelines into the same destination
/// share the rest.
const CONNECTIONS: usize = 4;

/// Windows of one request loaded at once (each its own transaction on its own
/// connection): the server's work on one window's rows and index overlaps another's.
const PARALLEL_LOADS: usize = 2;

/// A PostgreSQL destination bound to one credential.
#[derive(Debug)]
pub struct PostgresDestination {
    options: PgConnectOptions,
    schema: String,
    /// Idle connections, opened as they are needed (at most [`CONNECTIONS`] in use), each
    /// checked before it is used again; one that failed is not put back. Not sqlx's pool: its `acquire` keeps retrying a
    /// connection the server refuses until its timeout, and the failure's own code (a
    /// wrong password, a server down) would read as a pool timeout.
    idle: std::sync::Mutex<Vec<PgConnection>>,
    /// A permit per connection in use.
    in_use: tokio::sync::Semaphore,
    /// Tables whose schema, table and window index this destination has made.
    prepared: Mutex<std::collections::HashSet<String>>,
}

fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            classify_sqlstate(&code, db.message())
        }
        sqlx::Error::Io(e) => Failure::new(FailureCause::Transient)
            .with_code("08006")
            .with_message(format!("connection: {e}")),
        sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => {
            Failure::new(FailureCause::Transient)
                .with_code("08001")
                .with_message(error.to_string())
        }
        other => Failure::new(FailureCause::Transient)
            .with_code("postgres")
            .with_message(other.to_string()),
    }
}

fn invalid(detail: String) -> Failure {
    Failure::new(FailureCause::PermissionLost)
        .with_code("invalid_target")
        .with_message(detail)
}

fn pg_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Text => "text",
        ColumnKind::Integer => "bigint",
        ColumnKind::Decimal => "numeric",
        ColumnKind::Date => "date",
    }
}

/// One value as text, for the INSERT of text arrays (the cast to the column type happens in
/// SQL) and the text COPY.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string()),
        Value::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
        Value::Text(t) => Some(t.clone()),
    }
}

/// Windows of at most this many rows are written by one INSERT of arrays, larger ones by
/// COPY.
const INSERT_ROWS_AT_MOST: usize = 2_000;

/// Rows in PostgreSQL's text COPY format, each led by the pipeline and window columns:
/// fields separated by tabs, `\N` for NULL, and backslash, tab, newline and carriage
/// return escaped. The server parses each field as its column's type.
fn text_copy(lead: [&str; 2], rows: &[Row]) -> Vec<u8> {
    use std::io::Write as _;
    fn field(out: &mut Vec<u8>, text: &str) {
        for b in text.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 96);
    for row in rows {
        field(&mut out, lead[0]);
        out.push(b'\t');
        field(&mut out, lead[1]);
        for value in row {
            out.push(b'\t');
            // Written in place: no text made per value (numbers and dates need no escaping;
            // writing to a Vec cannot fail; a date's Display is `%Y-%m-%d`).
            match value {
                Value::Null => out.extend_from_slice(b"\\N"),
                Value::Integer(i) => {
                    let _ = write!(out, "{i}");
                }
                Value::Date(d) => {
                    let _ = write!(out, "{d}");
                }
                Value::Text(text) => field(&mut out, text),
            }
        }
        out.push(b'\n');
    }
    out
}

impl PostgresDestination {
    /// A destination for `target` with `username`/`password`. Nothing is connected yet.
    pub fn new(
        target: &PostgresTarget,
        username: &str,
        password: &Password,
    ) -> Result<Self, Failure> {
        let schema = check_name(&target.schema)
            .map_err(|e| invalid(e.to_string()))?
            .to_string();
        let options = PgConnectOptions::from_str(&target.url)
            .map_err(|e| invalid(format!("the destination URL is not valid: {e}")))?
            .username(username)
            .password(password.expose_secret());
        Ok(Self {
            options,
            schema,
            idle: std::sync::Mutex::new(Vec::new()),
            in_use: tokio::sync::Semaphore::new(CONNECTIONS),
            prepared: Mutex::new(std::collections::HashSet::new()),
        })
    }

    async fn with_conn<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Failure> {
        let idle = || {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let _permit = self
            .in_use
            .acquire()
            .await
            .map_err(|_| Failure::new(FailureCause::Transient).with_code("08003"))?;
        // An idle connection is checked first: one the server closed since (a restart)
        // is replaced here rather than failing a load.
        let taken = idle().pop();
        let reused = match taken {
            Some(mut conn) => conn.ping().await.is_ok().then_some(conn),
            None => None,
        };
        let mut conn = match reused {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.options)
                .await
                .map_err(|e| classify(&e))?,
        };
        match work(&mut conn).await {
            Ok(value) => {
                idle().push(conn);
                Ok(value)
            }
            // A failed connection is not reused.
            Err(error) => Err(classify(&error)),
        }
    }

    /// Make `table`'s schema, table and window index (`statements`) once per destination,
    /// and again after a failed load: one task makes them while the others wait, in one
    /// transaction under an advisory lock on the schema, so that loads of two windows, two
    /// destinations or two instances do not make one schema or table at once
    /// (`CREATE … IF NOT EXISTS` is not safe against a concurrent one).
    async fn prepare(&self, table: &str, statements: &[String]) -> Result<(), Failure> {
        let mut prepared = self.prepared.lock().await;
        if prepared.contains(table) {
            return Ok(());
        }
        let lock = format!("gapless prepare schema {}", self.schema);
        self.with_conn(async |conn| {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(&lock)
                .execute(&mut *tx)
                .await?;
            for statement in statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
        .await?;
        prepared.insert(table.to_string());
        Ok(())
    }

    fn table(&self, schema: &StreamSchema) -> Result<String, Failure> {
        let table = check_name(&schema.name).map_err(|e| invalid(e.to_string()))?;
        for c in &schema.columns {
            check_name(&c.name).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(format!("\"{}\".\"{table}\"", self.schema))
    }
}

fn decode(row: &PgRow, index: usize, kind: ColumnKind) -> Result<Value, sqlx::Error> {
    Ok(match kind {
        ColumnKind::Integer => row
            .try_get::<Option<i64>, _>(index)?
            .map_or(Value::Null, Value::Integer),
        ColumnKind::Date => match row.try_get::<Option<String>, _>(index)? {
            None => Value::Null,
            Some(text) => NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map(Value::Date)
                .unwrap_or(Value::Text(text)),
        },
        ColumnKind::Text | ColumnKind::Decimal => row
            .try_get::<Option<String>, _>(index)?
            .map_or(Value::Null, Value::Text),
    })
}

/// The statements that load a stream's windows into `table`.
struct LoadStatements {
    /// Made once per table and destination: the schema, the table, and the index that the
    /// replace-window delete uses (without it every load scans the whole table).
    prepare: [String; 3],
    /// A window's rows gone before its new ones go in.
    delete: String,
    /// A small window as one INSERT of arrays (one message each way); COPY's several
    /// writes cost more than they save until the window is large.
    insert: String,
    /// A large window, COPYed straight into the table.
    copy: String,
}

impl LoadStatements {
    fn of(table: &str, schema_name: &str, schema: &StreamSchema) -> Self {
        let columns: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("\"{}\" {}", c.name, pg_type(c.kind)))
            .collect();
        let names: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let unnest: Vec<String> = (0..schema.columns.len())
            .map(|i| format!("${}::text[]", i + 3))
            .collect();
        let aliases: Vec<String> = (0..schema.columns.len()).map(|i| format!("c{i}")).collect();
        let casts: Vec<String> = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i}::{}", pg_type(c.kind)))
            .collect();
        Self {
            prepare: [
                format!("CREATE SCHEMA IF NOT EXISTS \"{schema_name}\""),
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (_gapless_pipeline text NOT NULL, _gapless_window_start text NOT NULL, {})",
                    columns.join(", ")
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS \"{}_gapless_window\" ON {table} (_gapless_pipeline, _gapless_window_start)",
                    schema.name
                ),
            ],
            delete: format!(
                "DELETE FROM {table} WHERE _gapless_pipeline = $1 AND _gapless_window_start = $2"
            ),
            insert: format!(
                "INSERT INTO {table} (_gapless_pipeline, _gapless_window_start, {}) SELECT $1, $2, {} FROM UNNEST({}) AS u({})",
                names.join(", "),
                casts.join(", "),
                unnest.join(", "),
                aliases.join(", ")
            ),
            copy: format!(
                "COPY {table} (_gapless_pipeline, _gapless_window_start, {}) FROM STDIN (FORMAT text)",
                names.join(", ")
            ),
        }
    }
}

/// A window's rows as they are sent: columns of text for the INSERT of arrays, or COPY's
/// text format (with the pipeline and window key first) for a large window, written a
/// part at a time while the server takes the part before.
enum Payload<'r> {
    Arrays(Vec<Vec<Option<String>>>),
    Copy(&'r [Row]),
}

/// Rows in one COPY message: the server parses one while the next is written.
const COPY_ROWS_PER_MESSAGE: usize = 2_000;

impl<'r> Payload<'r> {
    fn of(schema: &StreamSchema, rows: &'r [Row]) -> Self {
        if rows.len() <= INSERT_ROWS_AT_MOST {
            Self::Arrays(
                (0..schema.columns.len())
                    .map(|i| rows.iter().map(|r| as_text(&r[i])).collect())
                    .collect(),
            )
        } else {
            Self::Copy(rows)
        }
    }
}

#[async_trait]
impl Destination for PostgresDestination {
    async fn load_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
        rows: &[Row],
    ) -> Result<u64, Failure> {
        let table = self.table(schema)?;
        crate::check_row_shape(schema, rows)?;
        let statements = LoadStatements::of(&table, &self.schema, schema);
        let key = window_key(window);
        let pipeline = pipeline.to_string();
        let payload = Payload::of(schema, rows);
        let count = rows.len() as u64;
        // One load of a window at a time, whoever loads it (another task, another gapless
        // instance): two replace-window loads that both deleted before either inserted
        // would both insert. Held until the transaction ends.
        let lock = format!("gapless load {table} {pipeline} {key}");
        self.prepare(&table, &statements.prepare).await?;
        let loaded = self
            .with_conn(async |conn| {
                // Delete, then COPY the window's rows straight into the table, in one
                // transaction: readers see the old window or the new one.
                let mut tx = conn.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(&lock)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&statements.delete)
                    .bind(&pipeline)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                match payload {
                    Payload::Arrays(columns) => {
                        let mut query = sqlx::query(&statements.insert).bind(&pipeline).bind(&key);
                        for column in columns {
                            query = query.bind(column);
                        }
                        query.execute(&mut *tx).await?;
                    }
                    Payload::Copy(rows) => {
                        let mut copy = tx.copy_in_raw(&statements.copy).await?;
                        for part in rows.chunks(COPY_ROWS_PER_MESSAGE) {
                            copy.send(text_copy([&pipeline, &key], part)).await?;
                        }
                        copy.finish().await?;
                    }
                }
                tx.commit().await?;
                Ok(count)
            })
            .await;
        if loaded.is_err() {
            // The table may have been dropped or changed: made again by the next load.
            self.prepared.lock().await.clear();
        }
        loaded
    }

    fn parallel_loads(&self) -> usize {
        PARALLEL_LOADS
    }

    async fn read_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
    ) -> Result<Vec<Row>, Failure> {
        let table = self.table(schema)?;
        let sql = select_window(
            &table,
            schema,
            |c| match c.kind {
                ColumnKind::Decimal | ColumnKind::Date => format!("\"{}\"::text", c.name),
                _ => format!("\"{}\"", c.name),
            },
            "1",
        );
        let kinds: Vec<ColumnKind> = schema.columns.iter().map(|c| c.kind).collect();
        let pipeline = pipeline.to_string();
        let key = window_key(window);
        self.with_conn(async |conn| {
            let rows = sqlx::query(&sql)
                .bind(&pipeline)
                .bind(&key)
                .fetch_all(&mut *conn)
                .await?;
            rows.iter()
                .map(|row| {
                    kinds
                        .iter()
                        .enumerate()
                        .map(|(i, kind)| decode(row, i, *kind))
                        .collect()
                })
                .collect()
        })
        .await
    }

    /// Connect, then check that the role may create tables in the target schema (or create
    /// the schema when it does not exist yet).
    /// On a connection of its own, opened for the probe: a password changed at the
    /// database is noticed by the next probe, not when the kept connection happens to drop.
    async fn probe(&self) -> Result<(), Failure> {
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .map_err(|e| classify(&e))?;
        let allowed = sqlx::query(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
             THEN has_schema_privilege($1, 'CREATE') \
             ELSE has_database_privilege(current_database(), 'CREATE') END AS allowed",
        )
        .bind(&self.schema)
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get::<bool, _>("allowed"))
        .map_err(|e| classify(&e));
        let _ = conn.close().await;
        let allowed = allowed?;
        if allowed {
            Ok(())
        } else {
            Err(Failure::new(FailureCause::PermissionLost)
                .with_code("42501")
                .with_message(format!(
                    "the role may not create tables in schema {}",
                    self.schema
                )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_copy_escapes_fields_and_writes_nulls() {
        let rows = vec![vec![
            Value::Text("a\tb\\c\nd\re".into()),
            Value::Null,
            Value::Integer(-7),
            Value::Date(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()),
        ]];
        let bytes = text_copy(["p1", "2026-03-01T00:00:00Z"], &rows);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "p1\t2026-03-01T00:00:00Z\ta\\tb\\\\c\\nd\\re\t\\N\t-7\t2026-03-01\n"
        );
    }

    #[test]
    fn copy_writes_every_value_as_the_insert_of_arrays_does() {
        let values = [
            Value::Integer(i64::MIN),
            Value::Integer(0),
            Value::Date(NaiveDate::from_ymd_opt(5, 1, 2).unwrap()),
            Value::Date(NaiveDate::from_ymd_opt(12345, 12, 31).unwrap()),
            Value::Date(NaiveDate::from_ymd_opt(-44, 3, 15).unwrap()),
        ];
        for value in values {
            let line = text_copy(["p", "w"], &[vec![value.clone()]]);
            let text = as_text(&value).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), format!("p\tw\t{text}\n"));
        }
    }
}
