//! The SQLite destination: one table per stream, rows tagged with their pipeline and window.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::NaiveDate;
use gapless_core::{
    ColumnKind, Failure, FailureCause, PipelineId, Row, StreamSchema, Value, Window,
};
use sqlx::{
    Row as _, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};

use crate::{Destination, DestinationError, check_name, select_window, window_key};

#[derive(Debug, Clone)]
pub struct SqliteDestination {
    pool: SqlitePool,
    target: String,
    /// Tables this destination has made (with their window index) since it was opened.
    prepared: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Bound parameters per INSERT: within the limit of any SQLite build (999 before 3.32).
const PARAMETERS_PER_INSERT: usize = 999;

fn classify(error: &sqlx::Error) -> Failure {
    let (cause, code) = match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // Primary result codes: 5 BUSY, 6 LOCKED, 8 READONLY, 13 FULL, 14 CANTOPEN, 3 PERM.
            let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
            let cause = match primary {
                3 | 8 | 14 | 23 => FailureCause::PermissionLost,
                _ => FailureCause::Transient,
            };
            (cause, format!("sqlite/{code}"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            (FailureCause::Transient, "sqlite/io".to_string())
        }
        _ => (FailureCause::Transient, "sqlite".to_string()),
    };
    Failure::new(cause)
        .with_code(code)
        .with_message(error.to_string())
}

fn sql_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Text => "TEXT",
        ColumnKind::Integer => "INTEGER",
        // TEXT keeps decimals exact; NUMERIC affinity would turn "12.30" into a float.
        ColumnKind::Decimal => "TEXT",
        ColumnKind::Date => "TEXT",
    }
}

fn invalid(error: DestinationError) -> Failure {
    Failure::new(FailureCause::PermissionLost)
        .with_code("invalid_schema")
        .with_message(error.to_string())
}

impl SqliteDestination {
    pub async fn open(path: &Path) -> Result<Self, DestinationError> {
        let target = path.display().to_string();
        let open_error = |detail: String| DestinationError::Open {
            target: target.clone(),
            detail,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_error(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        // No idle timeout or maximum lifetime: sqlx 0.8.6's maintenance task for them can
        // spin a core forever (its issue #3645; see the state store's pool).
        let pool = SqlitePoolOptions::new()
            .idle_timeout(None)
            .max_lifetime(None)
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            pool,
            target,
            prepared: Default::default(),
        })
    }

    fn is_prepared(&self, table: &str) -> bool {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(table)
    }

    /// The table and its window index, made once per table (again after a failed load:
    /// the table may have been dropped or changed).
    async fn ensure_table(&self, schema: &StreamSchema) -> Result<(), Failure> {
        let table = check_name(&schema.name).map_err(invalid)?;
        if self.is_prepared(table) {
            return Ok(());
        }
        let mut columns = Vec::new();
        for c in &schema.columns {
            columns.push(format!(
                "\"{}\" {}",
                check_name(&c.name).map_err(invalid)?,
                sql_type(c.kind)
            ));
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (_gapless_pipeline TEXT NOT NULL, _gapless_window_start TEXT NOT NULL, {})",
            columns.join(", ")
        );
        sqlx::query(&sql)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(&e))?;
        let index = format!(
            "CREATE INDEX IF NOT EXISTS \"{table}_gapless_window\" ON \"{table}\" (_gapless_pipeline, _gapless_window_start)"
        );
        sqlx::query(&index)
            .execute(&self.pool)
            .await
            .map_err(|e| classify(&e))?;
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(table.to_string());
        Ok(())
    }

    pub fn target(&self) -> &str {
        &self.target
    }
}

fn decode(row: &SqliteRow, index: usize, kind: ColumnKind) -> Result<Value, Failure> {
    let bad = |e: sqlx::Error| classify(&e);
    Ok(match kind {
        ColumnKind::Integer => row
            .try_get::<Option<i64>, _>(index)
            .map_err(bad)?
            .map_or(Value::Null, Value::Integer),
        ColumnKind::Date => match row.try_get::<Option<String>, _>(index).map_err(bad)? {
            None => Value::Null,
            Some(text) => NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map(Value::Date)
                .unwrap_or(Value::Text(text)),
        },
        ColumnKind::Text | ColumnKind::Decimal => row
            .try_get::<Option<String>, _>(index)
            .map_err(bad)?
            .map_or(Value::Null, Value::Text),
    })
}

#[async_trait]
impl Destination for SqliteDestination {
    async fn load_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
        rows: &[Row],
    ) -> Result<u64, Failure> {
        crate::check_row_shape(schema, rows)?;
        self.ensure_table(schema).await?;
        let table = check_name(&schema.name).map_err(invalid)?;
        let names: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        // Many rows per INSERT: each statement is a round trip to SQLite's worker thread.
        let per_row = schema.columns.len() + 2;
        let rows_per_insert = (PARAMETERS_PER_INSERT / per_row).max(1);
        let insert_of = |count: usize| {
            let tuple = format!("({})", vec!["?"; per_row].join(", "));
            format!(
                "INSERT INTO \"{table}\" (_gapless_pipeline, _gapless_window_start, {}) VALUES {}",
                names.join(", "),
                vec![tuple; count].join(", ")
            )
        };
        let full_insert = insert_of(rows_per_insert);
        let key = window_key(window);
        let pipeline = pipeline.to_string();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify(&e))?;
        let delete = format!(
            "DELETE FROM \"{table}\" WHERE _gapless_pipeline = $1 AND _gapless_window_start = $2"
        );
        let loaded = async {
            sqlx::query(&delete)
                .bind(&pipeline)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            for chunk in rows.chunks(rows_per_insert) {
                let short;
                let sql = if chunk.len() == rows_per_insert {
                    &full_insert
                } else {
                    short = insert_of(chunk.len());
                    &short
                };
                let mut query = sqlx::query(sql);
                for row in chunk {
                    query = query.bind(&pipeline).bind(&key);
                    for value in row {
                        query = match value {
                            Value::Null => query.bind(None::<String>),
                            Value::Integer(i) => query.bind(*i),
                            Value::Date(d) => query.bind(d.format("%Y-%m-%d").to_string()),
                            Value::Text(t) => query.bind(t.as_str()),
                        };
                    }
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = loaded {
            self.prepared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            return Err(classify(&error));
        }
        Ok(rows.len() as u64)
    }

    async fn read_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
    ) -> Result<Vec<Row>, Failure> {
        self.ensure_table(schema).await?;
        let table = check_name(&schema.name).map_err(invalid)?;
        let sql = select_window(
            &format!("\"{table}\""),
            schema,
            |c| format!("\"{}\"", c.name),
            "rowid",
        );
        let rows = sqlx::query(&sql)
            .bind(pipeline.to_string())
            .bind(window_key(window))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify(&e))?;
        rows.iter()
            .map(|row| {
                schema
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| decode(row, i, c.kind))
                    .collect()
            })
            .collect()
    }

    async fn probe(&self) -> Result<(), Failure> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify(&e))?;
        sqlx::query("CREATE TABLE IF NOT EXISTS _gapless_probe (at TEXT)")
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(&e))?;
        tx.rollback().await.map_err(|e| classify(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use gapless_core::Column;

    fn schema() -> StreamSchema {
        StreamSchema {
            name: "insights".into(),
            columns: vec![
                Column {
                    name: "date".into(),
                    kind: ColumnKind::Date,
                },
                Column {
                    name: "campaign_id".into(),
                    kind: ColumnKind::Text,
                },
                Column {
                    name: "clicks".into(),
                    kind: ColumnKind::Integer,
                },
                Column {
                    name: "spend".into(),
                    kind: ColumnKind::Decimal,
                },
            ],
            primary_key: vec!["date".into(), "campaign_id".into()],
        }
    }

    fn row(day: u32, campaign: &str, clicks: i64) -> Row {
        vec![
            Value::Date(NaiveDate::from_ymd_opt(2026, 1, day).unwrap()),
            Value::Text(campaign.into()),
            Value::Integer(clicks),
            Value::Text("12.30".into()),
        ]
    }

    #[tokio::test]
    async fn loading_a_window_twice_replaces_it_and_leaves_other_windows_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = SqliteDestination::open(&dir.path().join("w.sqlite"))
            .await
            .unwrap();
        let p = PipelineId::new();
        let day = |d| {
            let start = Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap();
            Window::new(start, start + Duration::days(1))
        };
        dest.load_window(p, &schema(), day(1), &[row(1, "a", 1), row(1, "b", 2)])
            .await
            .unwrap();
        dest.load_window(p, &schema(), day(2), &[row(2, "a", 5)])
            .await
            .unwrap();
        // A settle re-pull with restated numbers and one campaign fewer.
        dest.load_window(p, &schema(), day(1), &[row(1, "a", 3)])
            .await
            .unwrap();
        dest.load_window(p, &schema(), day(1), &[row(1, "a", 3)])
            .await
            .unwrap();
        assert_eq!(
            dest.read_window(p, &schema(), day(1)).await.unwrap(),
            vec![row(1, "a", 3)]
        );
        assert_eq!(
            dest.read_window(p, &schema(), day(2)).await.unwrap(),
            vec![row(2, "a", 5)]
        );
        // Another pipeline's window of the same day is separate.
        assert!(
            dest.read_window(PipelineId::new(), &schema(), day(1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_window_larger_than_one_insert_is_loaded_whole_in_order_of_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let dest = SqliteDestination::open(&dir.path().join("w.sqlite"))
            .await
            .unwrap();
        let p = PipelineId::new();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let window = Window::new(start, start + Duration::days(1));
        // 166 rows per INSERT with six parameters per row: two full statements and a
        // short one.
        let rows: Vec<Row> = (0..400).map(|i| row(1, &format!("c{i:04}"), i)).collect();
        assert_eq!(
            dest.load_window(p, &schema(), window, &rows).await.unwrap(),
            400
        );
        assert_eq!(dest.read_window(p, &schema(), window).await.unwrap(), rows);
        // Dropped behind its back, the table is made again by the next load.
        sqlx::query("DROP TABLE insights")
            .execute(&dest.pool)
            .await
            .unwrap();
        assert!(dest.load_window(p, &schema(), window, &rows).await.is_err());
        assert_eq!(
            dest.load_window(p, &schema(), window, &rows[..3])
                .await
                .unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn a_malformed_row_aborts_the_whole_window() {
        let dir = tempfile::tempdir().unwrap();
        let dest = SqliteDestination::open(&dir.path().join("w.sqlite"))
            .await
            .unwrap();
        let p = PipelineId::new();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let w = Window::new(start, start + Duration::days(1));
        dest.load_window(p, &schema(), w, &[row(1, "a", 1)])
            .await
            .unwrap();
        let err = dest
            .load_window(p, &schema(), w, &[row(1, "b", 2), vec![Value::Null]])
            .await
            .unwrap_err();
        assert_eq!(err.provider_code.as_deref(), Some("row_shape"));
        // The previous content is intact: the failed load rolled back.
        assert_eq!(
            dest.read_window(p, &schema(), w).await.unwrap(),
            vec![row(1, "a", 1)]
        );
    }

    #[tokio::test]
    async fn hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = SqliteDestination::open(&dir.path().join("w.sqlite"))
            .await
            .unwrap();
        let mut bad = schema();
        bad.name = "x\"; DROP TABLE y; --".into();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let err = dest
            .load_window(PipelineId::new(), &bad, Window::new(start, start), &[])
            .await
            .unwrap_err();
        assert_eq!(err.provider_code.as_deref(), Some("invalid_schema"));
    }
}
