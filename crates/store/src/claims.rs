//! Claims: periodic work is a row with a due time, found through an index and claimed for a
//! bounded time by one instance. A claim carries a fencing token that grows with every claim
//! of the row: a write made under a claim checks, in its own transaction, that the token is
//! still the current one and the claim has not run out, so a holder that stalled past its
//! claim cannot overwrite the work of the next one.
//!
//! On PostgreSQL the candidates are picked with `FOR UPDATE SKIP LOCKED`, so instances that
//! claim at the same moment take different rows instead of queueing on one another; the
//! outer `WHERE` is evaluated again on the locked row, so a row is never claimed twice. On
//! SQLite the claim runs in a `BEGIN IMMEDIATE` transaction, which already serializes
//! writers.

use chrono::{DateTime, Duration, Utc};
use gapless_core::{Notification, PipelineId};
use sqlx::AnyConnection;

use crate::{
    Backend, Store, StoreError,
    codec::{expiry, get_i64, ts},
};

/// A pipeline claimed by one instance until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineClaim {
    pub pipeline: PipelineId,
    pub holder: String,
    /// The fencing token.
    pub token: i64,
    pub until: DateTime<Utc>,
}

/// A due pipeline claimed by one instance, with its row as the claim read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPipeline {
    pub claim: PipelineClaim,
    pub pipeline: gapless_core::Pipeline,
}

/// A notification claimed for delivery by one instance.
#[derive(Debug, Clone)]
pub struct ClaimedNotification {
    pub notification: Notification,
    /// The fencing token of this delivery.
    pub token: i64,
}

/// The most rows one claim statement takes.
pub const MAX_CLAIM_BATCH: i64 = 1_000;

/// `FOR UPDATE SKIP LOCKED` where the dialect has it.
fn skip_locked(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    }
}

fn lost(claim: &PipelineClaim) -> StoreError {
    StoreError::Conflict(format!(
        "the claim on pipeline {} (fencing token {}) is no longer held by {}: it ran out or another instance took it",
        claim.pipeline, claim.token, claim.holder
    ))
}

/// Check, inside a write transaction, that `claim` is still current at `now`. On
/// PostgreSQL the check locks the pipeline's row until the transaction ends, so no other
/// instance can take the claim between the check and the commit.
pub(crate) async fn check(
    conn: &mut AnyConnection,
    claim: &PipelineClaim,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let held = sqlx::query(
        "UPDATE pipelines SET claim_until = claim_until \
         WHERE id = $1 AND claim_holder = $2 AND claim_token = $3 AND claim_until > $4",
    )
    .bind(claim.pipeline.to_string())
    .bind(&claim.holder)
    .bind(claim.token)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    if held.rows_affected() == 1 {
        Ok(())
    } else {
        Err(lost(claim))
    }
}

impl Store {
    /// Claim up to `limit` pipelines that are due at `now`, not paused and not claimed by a
    /// live claim, for `ttl`, the longest overdue first.
    pub async fn claim_due_pipelines(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedPipeline>, StoreError> {
        let until = expiry(now, ttl);
        // The rows come back with the claim: a run reads nothing more to start.
        let sql = format!(
            "UPDATE pipelines SET claim_holder = $1, claim_token = claim_token + 1, claim_until = $2 \
             WHERE id IN (SELECT id FROM pipelines \
                 WHERE due_at <= $3 AND state <> 'paused' AND (claim_until IS NULL OR claim_until <= $3) \
                 ORDER BY due_at, id LIMIT $4 {}) \
             AND state <> 'paused' AND (claim_until IS NULL OR claim_until <= $3) \
             RETURNING claim_token, {}",
            skip_locked(self.backend()),
            crate::pipelines::COLUMNS,
        );
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&sql)
            .bind(holder)
            .bind(ts(until))
            .bind(ts(now))
            .bind(limit.clamp(1, MAX_CLAIM_BATCH))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let pipeline = crate::pipelines::pipeline_from_row(row)?;
                Ok(ClaimedPipeline {
                    claim: PipelineClaim {
                        pipeline: pipeline.id,
                        holder: holder.to_string(),
                        token: get_i64(row, "claim_token")?,
                        until,
                    },
                    pipeline,
                })
            })
            .collect()
    }

    /// Claim one pipeline now, due or not (a run a person asked for, a recovery): None
    /// while a claim on it is live (another instance's, or another task's of this one).
    pub async fn claim_pipeline(
        &self,
        pipeline: PipelineId,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Option<PipelineClaim>, StoreError> {
        let until = expiry(now, ttl);
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE pipelines SET claim_holder = $1, claim_token = claim_token + 1, claim_until = $2 \
             WHERE id = $3 AND (claim_until IS NULL OR claim_until <= $4) \
             RETURNING claim_token",
        )
        .bind(holder)
        .bind(ts(until))
        .bind(pipeline.to_string())
        .bind(ts(now))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|row| {
            Ok(PipelineClaim {
                pipeline,
                holder: holder.to_string(),
                token: get_i64(&row, "claim_token")?,
                until,
            })
        })
        .transpose()
    }

    /// Extend a live claim to `now + ttl`; a claim that ran out or was taken is an error
    /// (its holder must stop).
    pub async fn renew_pipeline_claim(
        &self,
        claim: &PipelineClaim,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<PipelineClaim, StoreError> {
        let until = expiry(now, ttl);
        let renewed = sqlx::query(
            "UPDATE pipelines SET claim_until = $1 \
             WHERE id = $2 AND claim_holder = $3 AND claim_token = $4 AND claim_until > $5",
        )
        .bind(ts(until))
        .bind(claim.pipeline.to_string())
        .bind(&claim.holder)
        .bind(claim.token)
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        if renewed.rows_affected() == 1 {
            Ok(PipelineClaim {
                until,
                ..claim.clone()
            })
        } else {
            Err(lost(claim))
        }
    }

    /// End a claim: the pipeline is next due at `due_at`; `ran_at` records a completed run.
    /// Fenced: a claim that ran out or was taken changes nothing and is an error.
    pub async fn finish_pipeline_claim(
        &self,
        claim: &PipelineClaim,
        due_at: DateTime<Utc>,
        ran_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let finished = sqlx::query(
            "UPDATE pipelines SET claim_holder = NULL, claim_until = NULL, due_at = $1, \
             last_run_at = COALESCE($2, last_run_at) \
             WHERE id = $3 AND claim_holder = $4 AND claim_token = $5",
        )
        .bind(ts(due_at))
        .bind(ran_at.map(ts))
        .bind(claim.pipeline.to_string())
        .bind(&claim.holder)
        .bind(claim.token)
        .execute(self.pool())
        .await?;
        if finished.rows_affected() == 1 {
            Ok(())
        } else {
            Err(lost(claim))
        }
    }

    /// Give a claim back without changing when the pipeline is due (only if still ours).
    pub async fn release_pipeline_claim(&self, claim: &PipelineClaim) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pipelines SET claim_holder = NULL, claim_until = NULL \
             WHERE id = $1 AND claim_holder = $2 AND claim_token = $3",
        )
        .bind(claim.pipeline.to_string())
        .bind(&claim.holder)
        .bind(claim.token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Give back every claim of `holder` (a graceful shutdown): its pipelines are due again
    /// at once for the other instances.
    pub async fn release_claims_of(&self, holder: &str) -> Result<u64, StoreError> {
        let released = sqlx::query(
            "UPDATE pipelines SET claim_holder = NULL, claim_until = NULL WHERE claim_holder = $1",
        )
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(released.rows_affected())
    }

    /// When a pipeline is next due, and the claim on it: (due_at, holder, token, until).
    pub async fn pipeline_due(
        &self,
        pipeline: PipelineId,
    ) -> Result<(DateTime<Utc>, Option<PipelineClaim>), StoreError> {
        let row = sqlx::query(
            "SELECT due_at, claim_holder, claim_token, claim_until FROM pipelines WHERE id = $1",
        )
        .bind(pipeline.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("pipeline {pipeline}"),
        })?;
        let due = crate::codec::get_ts(&row, "due_at")?;
        let claim = match (
            crate::codec::get_opt_str(&row, "claim_holder")?,
            crate::codec::get_opt_ts(&row, "claim_until")?,
        ) {
            (Some(holder), Some(until)) => Some(PipelineClaim {
                pipeline,
                holder,
                token: get_i64(&row, "claim_token")?,
                until,
            }),
            _ => None,
        };
        Ok((due, claim))
    }

    /// Make a pipeline due at `at` (it was changed, resumed, or something it waits for
    /// happened).
    pub async fn set_pipeline_due(
        &self,
        pipeline: PipelineId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE pipelines SET due_at = $1 WHERE id = $2")
            .bind(ts(at))
            .bind(pipeline.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Claim up to `limit` notifications due at `now` for delivery: each is hidden from
    /// other instances until `now + ttl` (then due again if its holder never reported).
    pub async fn claim_due_notifications(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedNotification>, StoreError> {
        let sql = format!(
            "UPDATE notifications SET next_attempt_at = $1, claim_holder = $2, claim_token = claim_token + 1 \
             WHERE id IN (SELECT id FROM notifications \
                 WHERE state = 'pending' AND next_attempt_at <= $3 \
                 ORDER BY next_attempt_at, created_at, id LIMIT $4 {}) \
             AND state = 'pending' AND next_attempt_at <= $3 \
             RETURNING {}, claim_token",
            skip_locked(self.backend()),
            crate::notifications::COLUMNS
        );
        let mut tx = self.begin_in(self.outbox_pool()).await?;
        let rows = sqlx::query(&sql)
            .bind(ts(expiry(now, ttl)))
            .bind(holder)
            .bind(ts(now))
            .bind(limit.clamp(1, MAX_CLAIM_BATCH))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(ClaimedNotification {
                    notification: crate::notifications::notification_from_row(row)?,
                    token: get_i64(row, "claim_token")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by(|a, b| {
            (a.notification.created_at, a.notification.id.to_string())
                .cmp(&(b.notification.created_at, b.notification.id.to_string()))
        });
        Ok(claimed)
    }
}
