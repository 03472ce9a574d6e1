//! Asynchronous report jobs in flight, by the request they answer: kept from the job's
//! creation until its result is read (or it is abandoned), so that a run after a restart —
//! on this instance or another — polls the same job instead of asking for a new one.

use chrono::{DateTime, Utc};
use gapless_core::{IdentityId, Window};

use crate::{
    Store, StoreError,
    codec::{get_str, get_ts, ts},
};

/// A job the provider is preparing for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    pub job_id: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// The job in flight for this request, if one is.
    pub async fn report_job(
        &self,
        identity: IdentityId,
        resource: &str,
        stream: &str,
        range: Window,
    ) -> Result<Option<StoredJob>, StoreError> {
        let row = sqlx::query(
            "SELECT job_id, created_at FROM report_jobs \
             WHERE identity_id = $1 AND resource = $2 AND stream = $3 AND range_start = $4 AND range_end = $5",
        )
        .bind(identity.to_string())
        .bind(resource)
        .bind(stream)
        .bind(ts(range.start))
        .bind(ts(range.end))
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(StoredJob {
                job_id: get_str(&row, "job_id")?,
                created_at: get_ts(&row, "created_at")?,
            })
        })
        .transpose()
    }

    /// Remember the job created for this request (replacing an abandoned one), in one
    /// transaction with forgetting the identity's jobs older than any job may live (two
    /// days; a job's `max_wait` is at most one), which no run asks for any more.
    pub async fn save_report_job(
        &self,
        identity: IdentityId,
        resource: &str,
        stream: &str,
        range: Window,
        job: &StoredJob,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM report_jobs WHERE identity_id = $1 AND created_at < $2")
            .bind(identity.to_string())
            .bind(ts(job.created_at - chrono::Duration::days(2)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO report_jobs (identity_id, resource, stream, range_start, range_end, job_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (identity_id, resource, stream, range_start, range_end) \
             DO UPDATE SET job_id = excluded.job_id, created_at = excluded.created_at",
        )
        .bind(identity.to_string())
        .bind(resource)
        .bind(stream)
        .bind(ts(range.start))
        .bind(ts(range.end))
        .bind(&job.job_id)
        .bind(ts(job.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forget the job of this request: its result was read, it failed, or it was abandoned.
    pub async fn forget_report_job(
        &self,
        identity: IdentityId,
        resource: &str,
        stream: &str,
        range: Window,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM report_jobs \
             WHERE identity_id = $1 AND resource = $2 AND stream = $3 AND range_start = $4 AND range_end = $5",
        )
        .bind(identity.to_string())
        .bind(resource)
        .bind(stream)
        .bind(ts(range.start))
        .bind(ts(range.end))
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
