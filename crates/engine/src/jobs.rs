//! The state store as the book of asynchronous report jobs in flight, on the engine's
//! clock: a job's id is stored when the provider gives it and forgotten once its result
//! is read, so a run after a restart (on any instance) polls the same job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gapless_core::{Clock, IdentityId, Window};
use gapless_providers::{ReportJob, ReportJobs};
use gapless_store::{Store, StoredJob};

/// One identity's jobs in the state store.
pub(crate) struct StoredJobs<'a> {
    pub store: &'a Store,
    pub clock: &'a dyn Clock,
    pub identity: IdentityId,
    /// How long one call may poll (zero for a probe: one poll, then it says pending).
    pub patience: std::time::Duration,
}

#[async_trait]
impl ReportJobs for StoredJobs<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn find(
        &self,
        resource: &str,
        stream: &str,
        range: Window,
    ) -> Result<Option<ReportJob>, String> {
        self.store
            .report_job(self.identity, resource, stream, range)
            .await
            .map(|job| {
                job.map(|job| ReportJob {
                    id: job.job_id,
                    created_at: job.created_at,
                })
            })
            .map_err(|e| e.to_string())
    }

    async fn save(
        &self,
        resource: &str,
        stream: &str,
        range: Window,
        job: &ReportJob,
    ) -> Result<(), String> {
        self.store
            .save_report_job(
                self.identity,
                resource,
                stream,
                range,
                &StoredJob {
                    job_id: job.id.clone(),
                    created_at: job.created_at,
                },
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn forget(&self, resource: &str, stream: &str, range: Window) -> Result<(), String> {
        self.store
            .forget_report_job(self.identity, resource, stream, range)
            .await
            .map_err(|e| e.to_string())
    }

    async fn pause(&self, for_: std::time::Duration) {
        tokio::time::sleep(for_).await;
    }

    fn patience(&self) -> std::time::Duration {
        self.patience
    }
}
