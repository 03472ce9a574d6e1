//! The ledger: one row per window with its state, and the history of every change.

use chrono::{DateTime, Utc};
use gapless_core::{
    Health, IdentityId, LedgerEntry, MissingReason, Pipeline, PipelineId, Window, WindowState,
    ledger::{PlanningLedger, SettledHorizon},
};
use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{get_id, get_json, get_str, get_ts, get_u32, json, ts},
};

/// The columns [`entry_from_row`] reads.
const ENTRY_COLUMNS: &str =
    "pipeline_id, stream, window_start, window_end, detail, attempts, updated_at";

pub(crate) fn entry_from_row(row: &AnyRow) -> Result<LedgerEntry, StoreError> {
    let state: WindowState = get_json(row, "detail")?;
    Ok(LedgerEntry {
        pipeline: get_id(row, "pipeline_id")?,
        stream: get_str(row, "stream")?,
        window: Window::new(get_ts(row, "window_start")?, get_ts(row, "window_end")?),
        state,
        attempts: get_u32(row, "attempts")?,
        updated_at: get_ts(row, "updated_at")?,
    })
}

/// Rows per multi-row statement: eight parameters each, far under both databases' limits.
const ROWS_PER_STATEMENT: usize = 100;

/// `rows` groups of `columns` numbered placeholders: `($1, $2), ($3, $4)`.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upsert ledger rows and append their history, on a connection inside a transaction: a
/// statement per hundred rows, not two per window.
pub(crate) async fn write_entries(
    conn: &mut AnyConnection,
    entries: &[LedgerEntry],
) -> Result<(), StoreError> {
    let details = entries
        .iter()
        .map(|e| json(&e.state))
        .collect::<Result<Vec<String>, StoreError>>()?;
    // A window written twice in one batch keeps its last state, as writing them one after
    // the other did (one statement may not upsert a row twice).
    let mut last = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert((e.pipeline, e.stream.as_str(), e.window.start), i);
    }
    let latest: Vec<usize> = (0..entries.len())
        .filter(|i| {
            let e = &entries[*i];
            last.get(&(e.pipeline, e.stream.as_str(), e.window.start)) == Some(i)
        })
        .collect();
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO ledger (pipeline_id, stream, window_start, window_end, state, detail, attempts, updated_at) \
             VALUES {} \
             ON CONFLICT (pipeline_id, stream, window_start) DO UPDATE SET \
             window_end = excluded.window_end, state = excluded.state, detail = excluded.detail, \
             attempts = excluded.attempts, updated_at = excluded.updated_at",
            placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query(&sql);
        for i in chunk {
            let e = &entries[*i];
            query = query
                .bind(e.pipeline.to_string())
                .bind(&e.stream)
                .bind(ts(e.window.start))
                .bind(ts(e.window.end))
                .bind(e.state.name())
                .bind(&details[*i])
                .bind(i64::from(e.attempts))
                .bind(ts(e.updated_at));
        }
        query.execute(&mut *conn).await?;
    }
    write_history(conn, entries, &details).await
}

/// Append a history row per entry (`details`: each entry's state, serialized).
async fn write_history(
    conn: &mut AnyConnection,
    entries: &[LedgerEntry],
    details: &[String],
) -> Result<(), StoreError> {
    for (chunk, details) in entries
        .chunks(ROWS_PER_STATEMENT)
        .zip(details.chunks(ROWS_PER_STATEMENT))
    {
        let sql = format!(
            "INSERT INTO ledger_history (pipeline_id, stream, window_start, at, state, detail) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let mut query = sqlx::query(&sql);
        for (e, detail) in chunk.iter().zip(details) {
            query = query
                .bind(e.pipeline.to_string())
                .bind(&e.stream)
                .bind(ts(e.window.start))
                .bind(ts(e.updated_at))
                .bind(e.state.name())
                .bind(detail);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A window's new entry, to be written only if the window's stored state is still `read`
/// (its `detail` as it was read): the state the change was decided on. Another instance's
/// run may have recorded the window since (lost, say), and that must stand.
#[derive(Debug, Clone, PartialEq)]
struct LedgerRewrite {
    read: String,
    entry: LedgerEntry,
}

/// The windows missing because `identity` was broken, of every pipeline that uses it,
/// rewritten as awaiting the back-fill as of `at`: read (one statement, through the state
/// index) in `conn`'s transaction, which holds the identity's row — a run that read the
/// broken health records its windows either before, and they are read here, or not at all
/// (see [`Store::record_windows_while`]); a pipeline moved onto the identity meanwhile is
/// read too — and each rewritten where it is still as read (one recorded lost meanwhile on
/// PostgreSQL stays lost).
pub(crate) async fn await_backfill(
    conn: &mut AnyConnection,
    identity: IdentityId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger WHERE state = 'missing' AND pipeline_id IN \
         (SELECT id FROM pipelines WHERE source_identity_id = $1 OR destination_identity_id = $1)"
    ))
    .bind(identity.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut rewrites = Vec::new();
    for row in &rows {
        let entry = entry_from_row(row)?;
        if let WindowState::Missing {
            reason: reason @ MissingReason::IdentityBroken { .. },
            ..
        } = &entry.state
            && reason.identity() == Some(identity)
        {
            rewrites.push(LedgerRewrite {
                read: get_str(row, "detail")?,
                entry: LedgerEntry {
                    state: WindowState::Missing {
                        reason: MissingReason::AwaitingBackfill {
                            identity,
                            since: at,
                        },
                        since: at,
                    },
                    updated_at: at,
                    ..entry
                },
            });
        }
    }
    rewrite_entries(conn, &rewrites).await
}

/// Rewrite windows whose state is still the one each rewrite was decided on (compare and
/// set on the stored state; a statement per hundred windows), with a history row for each
/// window rewritten; a window that changed meanwhile keeps its state. Only the state and
/// its time change: the window's attempts are not the rewrite's to set.
async fn rewrite_entries(
    conn: &mut AnyConnection,
    rewrites: &[LedgerRewrite],
) -> Result<(), StoreError> {
    let mut written = Vec::with_capacity(rewrites.len());
    let mut details = Vec::with_capacity(rewrites.len());
    for chunk in rewrites.chunks(ROWS_PER_STATEMENT) {
        // A VALUES list's columns are column1, column2, … on both databases.
        let sql = format!(
            "UPDATE ledger SET state = v.column4, detail = v.column5, updated_at = v.column6 \
             FROM (VALUES {}) AS v \
             WHERE ledger.pipeline_id = v.column1 AND ledger.stream = v.column2 \
             AND ledger.window_start = v.column3 AND ledger.detail = v.column7 \
             RETURNING ledger.pipeline_id, ledger.stream, ledger.window_start",
            placeholders(chunk.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        let mut new_details = Vec::with_capacity(chunk.len());
        for rewrite in chunk {
            let e = &rewrite.entry;
            let detail = json(&e.state)?;
            query = query
                .bind(e.pipeline.to_string())
                .bind(&e.stream)
                .bind(ts(e.window.start))
                .bind(e.state.name())
                .bind(detail.clone())
                .bind(ts(e.updated_at))
                .bind(&rewrite.read);
            new_details.push(detail);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let rewritten = rows
            .iter()
            .map(|r| {
                Ok((
                    get_str(r, "pipeline_id")?,
                    get_str(r, "stream")?,
                    get_str(r, "window_start")?,
                ))
            })
            .collect::<Result<std::collections::HashSet<_>, StoreError>>()?;
        for (rewrite, detail) in chunk.iter().zip(new_details) {
            let e = &rewrite.entry;
            if rewritten.contains(&(e.pipeline.to_string(), e.stream.clone(), ts(e.window.start))) {
                written.push(e.clone());
                details.push(detail);
            }
        }
    }
    if written.len() < rewrites.len() {
        tracing::debug!(
            kept = rewrites.len() - written.len(),
            "windows changed since they were read were left as they are"
        );
    }
    write_history(conn, &written, &details).await
}

impl Store {
    /// Record windows' states (insert or replace) with a history row each, in one
    /// transaction.
    pub async fn record_windows(&self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        self.record_windows_and_notify(entries, &[]).await
    }

    /// Record windows and queue the messages that report them, in one transaction (a window
    /// never becomes lost without its message).
    pub async fn record_windows_and_notify(
        &self,
        entries: &[LedgerEntry],
        notifications: &[gapless_core::Notification],
    ) -> Result<(), StoreError> {
        self.write_windows(Fence::default(), entries, notifications)
            .await
            .map(drop)
    }

    /// Record windows of a run and their messages, in one transaction that first checks the
    /// run's claim on the pipeline is still current at `now`: a run that lost its claim
    /// (it stalled past it, another instance took over) writes nothing.
    pub async fn record_windows_under(
        &self,
        claim: &crate::PipelineClaim,
        now: DateTime<Utc>,
        entries: &[LedgerEntry],
        notifications: &[gapless_core::Notification],
    ) -> Result<(), StoreError> {
        let fence = Fence {
            claim: Some((claim, now)),
            health: None,
        };
        self.write_windows(fence, entries, notifications)
            .await
            .map(drop)
    }

    /// Record windows of a run that found `identity` with the health `read` (windows it
    /// leaves missing because the identity cannot be used), under the run's claim as
    /// [`Store::record_windows_under`] does, only if the identity's health is still
    /// `read`. The check holds the identity's row until the commit, as a health change
    /// does: a recovery that commits first is seen and nothing is written (false); one that
    /// commits after reads these windows.
    pub async fn record_windows_while(
        &self,
        claim: &crate::PipelineClaim,
        now: DateTime<Utc>,
        entries: &[LedgerEntry],
        identity: IdentityId,
        read: &Health,
    ) -> Result<bool, StoreError> {
        let fence = Fence {
            claim: Some((claim, now)),
            health: Some((identity, read)),
        };
        self.write_windows(fence, entries, &[]).await
    }

    /// Write `entries` and queue `notifications` in one transaction behind `fence`; false
    /// when the identity's health was no longer the one read (nothing written).
    async fn write_windows(
        &self,
        fence: Fence<'_>,
        entries: &[LedgerEntry],
        notifications: &[gapless_core::Notification],
    ) -> Result<bool, StoreError> {
        if entries.is_empty() && notifications.is_empty() {
            return Ok(true);
        }
        let mut tx = self.begin().await?;
        // The identity's row first, then the pipeline's: the order every health change
        // takes them in.
        if let Some((identity, read)) = fence.health
            && crate::identities::health_locked(&mut tx, self.backend(), identity).await? != *read
        {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some((claim, now)) = fence.claim {
            crate::claims::check(&mut tx, claim, now).await?;
        }
        write_entries(&mut tx, entries).await?;
        for notification in notifications {
            crate::notifications::insert(&mut tx, notification).await?;
        }
        tx.commit().await?;
        self.wrote_to_outbox(notifications.len());
        Ok(true)
    }

    /// The ledger of a pipeline, by stream and window.
    pub async fn ledger(&self, pipeline: PipelineId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_entries(pipeline, "").await
    }

    /// The ledger a run of `pipeline` plans from. With a `horizon` whose every window has a
    /// loaded or lost entry (counted through the state index), the entries from it on and
    /// the open ones (missing, spooled) before it: a run reads what the lookback still
    /// holds, not the pipeline's whole history. Otherwise (a stream without a lookback
    /// limit, a window before the horizon never recorded) every entry.
    pub async fn planning_ledger(
        &self,
        pipeline: &Pipeline,
        horizon: Option<SettledHorizon>,
    ) -> Result<PlanningLedger, StoreError> {
        let every = async || {
            Ok(PlanningLedger {
                entries: self.ledger(pipeline.id).await?,
                settled_before: None,
            })
        };
        let Some(horizon) = horizon else {
            return every().await;
        };
        // The count (once) and the entries in one statement, so one snapshot: a window that
        // changes state between two reads could be counted twice and hide one never
        // recorded. Only the pipeline's own windows count: its streams, from its grid's
        // first window (a back-fill may have recorded days before its start).
        let streams: Vec<String> = (0..pipeline.streams.len())
            .map(|i| format!("${}", i + 4))
            .collect();
        let sql = format!(
            "WITH settled AS (SELECT COUNT(*) AS settled FROM ledger \
                 WHERE pipeline_id = $1 AND state IN ('loaded', 'lost') \
                 AND window_start < $2 AND window_start >= $3 AND stream IN ({})) \
             SELECT {ENTRY_COLUMNS}, settled FROM ledger, settled \
                 WHERE pipeline_id = $1 AND window_start >= $2 \
             UNION ALL \
             SELECT {ENTRY_COLUMNS}, settled FROM ledger, settled \
                 WHERE pipeline_id = $1 AND state IN ('missing', 'spooled') \
                 AND window_start < $2 AND window_start >= $3 \
             ORDER BY stream, window_start",
            streams.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(pipeline.id.to_string())
            .bind(ts(horizon.before))
            .bind(ts(horizon.from));
        for stream in &pipeline.streams {
            query = query.bind(stream.as_str());
        }
        let rows = query.fetch_all(self.pool()).await?;
        // No entry from the horizon on and none open: nothing to count with.
        let Some(first) = rows.first() else {
            return every().await;
        };
        let settled = u64::try_from(crate::codec::get_i64(first, "settled")?).unwrap_or(0);
        let entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let open_before = entries
            .iter()
            .filter(|e| e.window.start < horizon.before && pipeline.streams.contains(&e.stream))
            .count();
        let accounted = settled.saturating_add(u64::try_from(open_before).unwrap_or(u64::MAX));
        if accounted != horizon.windows {
            return every().await;
        }
        Ok(PlanningLedger {
            entries,
            settled_before: Some(horizon.before),
        })
    }

    /// The windows of a pipeline waiting in the spool (through the ledger's state index:
    /// a run whose spool is empty reads nothing else).
    pub async fn spooled_windows(
        &self,
        pipeline: PipelineId,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_entries(pipeline, "AND state = 'spooled'").await
    }

    /// A pipeline's ledger rows that also meet `condition` (SQL written here, never a
    /// value from outside), by stream and window.
    async fn ledger_entries(
        &self,
        pipeline: PipelineId,
        condition: &'static str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        select_entries(&mut conn, pipeline, condition).await
    }

    /// The history of one window: (at, state name), oldest first.
    pub async fn window_history(
        &self,
        pipeline: PipelineId,
        stream: &str,
        window_start: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, state FROM ledger_history WHERE pipeline_id = $1 AND stream = $2 AND window_start = $3 ORDER BY id",
        )
        .bind(pipeline.to_string())
        .bind(stream)
        .bind(ts(window_start))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((get_ts(r, "at")?, get_str(r, "state")?)))
            .collect()
    }

    /// Windows of a pipeline that were recorded missing at or after `since`:
    /// (stream, window start), each once.
    pub async fn windows_missing_since(
        &self,
        pipeline: PipelineId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        self.windows_in_state_since(pipeline, "missing", since)
            .await
    }

    /// Windows of `pipeline` that were in `state` (`missing`, `spooled`, …) at some point
    /// since `since`, by (stream, window start).
    pub async fn windows_in_state_since(
        &self,
        pipeline: PipelineId,
        state: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT stream, window_start FROM ledger_history \
             WHERE pipeline_id = $1 AND state = $2 AND at >= $3 ORDER BY stream, window_start",
        )
        .bind(pipeline.to_string())
        .bind(state)
        .bind(ts(since))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((get_str(r, "stream")?, get_ts(r, "window_start")?)))
            .collect()
    }
}

/// A pipeline's ledger rows that also meet `condition` (SQL written here, never a value
/// from outside), by stream and window, read through `conn`.
async fn select_entries(
    conn: &mut AnyConnection,
    pipeline: PipelineId,
    condition: &'static str,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger WHERE pipeline_id = $1 {condition} \
         ORDER BY stream, window_start"
    );
    sqlx::query(&sql)
        .bind(pipeline.to_string())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(entry_from_row)
        .collect()
}

/// What a write of windows checks first, in its transaction.
#[derive(Default)]
struct Fence<'a> {
    /// The run's claim on the pipeline, current at the instant.
    claim: Option<(&'a crate::PipelineClaim, DateTime<Utc>)>,
    /// The identity's health, still the one read.
    health: Option<(IdentityId, &'a Health)>,
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use gapless_core::{LedgerEntry, MissingReason, PipelineId, Window, WindowState};
    use sqlx::Connection;

    use super::{LedgerRewrite, rewrite_entries, select_entries, write_entries};

    #[test]
    fn placeholders_number_each_cell_of_each_row() {
        assert_eq!(super::placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::placeholders(1, 1), "($1)");
    }

    /// The rewrite is a compare and set: of two windows read missing, the one another
    /// writer recorded lost since keeps that state (and gets no history row); the other is
    /// rewritten. (On PostgreSQL a run may record a window lost between the recovery's read
    /// of its windows and its rewrite.)
    #[tokio::test]
    async fn a_rewrite_leaves_a_window_whose_state_changed_since_it_was_read() {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        crate::migrations(crate::Backend::Sqlite)
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        // Ledger rows of a pipeline this test does not create.
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut conn)
            .await
            .unwrap();
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let pipeline = PipelineId::new();
        let missing = |day: i64| {
            let start = t0 + Duration::days(day);
            LedgerEntry {
                pipeline,
                stream: "insights".into(),
                window: Window::new(start, start + Duration::days(1)),
                state: WindowState::Missing {
                    reason: MissingReason::Transient {
                        detail: "not attempted".into(),
                    },
                    since: t0,
                },
                attempts: 1,
                updated_at: t0,
            }
        };
        write_entries(&mut conn, &[missing(0), missing(1)])
            .await
            .unwrap();
        let later = t0 + Duration::days(3);
        let rewrites: Vec<LedgerRewrite> = [0, 1]
            .map(|day| LedgerRewrite {
                read: super::json(&missing(day).state).unwrap(),
                entry: LedgerEntry {
                    state: WindowState::Missing {
                        reason: MissingReason::Transient {
                            detail: "rewritten".into(),
                        },
                        since: later,
                    },
                    updated_at: later,
                    ..missing(day)
                },
            })
            .into();
        let lost = LedgerEntry {
            state: WindowState::Lost {
                at: later,
                reason: None,
            },
            updated_at: later,
            ..missing(0)
        };
        write_entries(&mut conn, std::slice::from_ref(&lost))
            .await
            .unwrap();
        rewrite_entries(&mut conn, &rewrites).await.unwrap();
        let ledger = select_entries(&mut conn, pipeline, "").await.unwrap();
        assert_eq!(ledger, vec![lost, rewrites[1].entry.clone()]);
        let history: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_history")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(history, 4, "two first writes, the loss, one rewrite");
    }
}
