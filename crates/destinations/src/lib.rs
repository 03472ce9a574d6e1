//! Destinations: where windows are loaded. Loading a window replaces that window's rows in
//! one transaction, so retries, settle re-pulls and backfills never duplicate (invariant 2).

mod postgres;
mod sqlite;
mod sqlstate;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use gapless_core::{Column, Failure, PipelineId, Row, StreamSchema, Window};

pub use postgres::{PostgresDestination, PostgresTarget};
pub use sqlite::SqliteDestination;

/// A destination's operations. Failures come back classified.
#[async_trait]
pub trait Destination: Send + Sync + std::fmt::Debug {
    /// Replace `window`'s rows of `schema`'s table for `pipeline` with `rows`, in one
    /// transaction; returns the number of rows now in the window.
    async fn load_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
        rows: &[Row],
    ) -> Result<u64, Failure>;

    /// The rows stored for a window, in primary-key order (for verification).
    async fn read_window(
        &self,
        pipeline: PipelineId,
        schema: &StreamSchema,
        window: Window,
    ) -> Result<Vec<Row>, Failure>;

    /// A cheap check that the destination accepts writes.
    async fn probe(&self) -> Result<(), Failure>;

    /// How many windows of one request it loads at once, each in its own transaction
    /// (1: one after another, as a single-writer database must).
    fn parallel_loads(&self) -> usize {
        1
    }
}

/// Errors opening a destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestinationError {
    #[error("unknown destination kind {0:?}; known kinds: sqlite")]
    UnknownKind(String),
    #[error("cannot open destination {target}: {detail}")]
    Open { target: String, detail: String },
    #[error("invalid name {0:?}: names are lower-case letters, digits and underscores")]
    InvalidName(String),
}

/// Open the destination of `kind` at `target`; relative paths are inside `data_dir`.
pub async fn open(
    kind: &str,
    target: &str,
    data_dir: &Path,
) -> Result<Arc<dyn Destination>, DestinationError> {
    match kind {
        "sqlite" => {
            let path = Path::new(target);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                data_dir.join(path)
            };
            Ok(Arc::new(SqliteDestination::open(&path).await?))
        }
        other => Err(DestinationError::UnknownKind(other.to_string())),
    }
}

/// Check a table or column name: `[a-z_][a-z0-9_]*`, at most 63 characters.
pub fn check_name(name: &str) -> Result<&str, DestinationError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(name)
    } else {
        Err(DestinationError::InvalidName(name.to_string()))
    }
}

/// Every row has one value per column of `schema`; else the window is refused whole.
pub(crate) fn check_row_shape(schema: &StreamSchema, rows: &[Row]) -> Result<(), Failure> {
    match rows.iter().find(|r| r.len() != schema.columns.len()) {
        None => Ok(()),
        Some(bad) => Err(Failure::new(gapless_core::FailureCause::Transient)
            .with_code("row_shape")
            .with_message(format!(
                "a row has {} values but {} has {} columns",
                bad.len(),
                schema.name,
                schema.columns.len()
            ))),
    }
}

/// How a window is named in its rows' `_gapless_window_start` column.
fn window_key(window: Window) -> String {
    window
        .start
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The statement reading a window's rows back in primary-key order: `table` as the
/// destination writes it, each column selected as `column` says, and `unkeyed` ordering the
/// rows of a stream without a key. Binds `$1` the pipeline, `$2` the window's key.
fn select_window(
    table: &str,
    schema: &StreamSchema,
    column: impl Fn(&Column) -> String,
    unkeyed: &str,
) -> String {
    let names: Vec<String> = schema.columns.iter().map(column).collect();
    let order = if schema.primary_key.is_empty() {
        unkeyed.to_string()
    } else {
        let keys: Vec<String> = schema
            .primary_key
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        keys.join(", ")
    };
    format!(
        "SELECT {} FROM {table} WHERE _gapless_pipeline = $1 AND _gapless_window_start = $2 ORDER BY {order}",
        names.join(", ")
    )
}
