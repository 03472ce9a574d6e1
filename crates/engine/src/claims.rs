//! Pipeline runs under claims: a run holds the claim on its pipeline in the state store
//! (see `gapless_store::PipelineClaim`), so several instances on one PostgreSQL never run the
//! same pipeline at once, and every ledger write of the run is fenced by the claim's token.
//! Inside this instance the claims held are kept in a map, looked up by the run's writes.

use std::sync::PoisonError;

use chrono::DateTime;
use gapless_core::{LedgerEntry, Notification, PipelineId};
use gapless_store::PipelineClaim;

use crate::{Engine, EngineError};

impl Engine {
    /// Remember a claim this instance took, for the run's fenced writes.
    pub(crate) fn hold(&self, claim: PipelineClaim) {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(claim.pipeline, claim);
    }

    /// The claim this instance holds on `pipeline`, if any.
    pub(crate) fn held(&self, pipeline: PipelineId) -> Option<PipelineClaim> {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pipeline)
            .cloned()
    }

    fn forget(&self, pipeline: PipelineId) -> Option<PipelineClaim> {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pipeline)
    }

    /// Claim `pipeline` for a run now, due or not: false while another task or instance
    /// holds it.
    pub(crate) async fn claim_now(&self, pipeline: PipelineId) -> Result<bool, EngineError> {
        // Claimed by this instance for a run that has not started yet (the scheduler's
        // batch): that run is the run.
        if self.held(pipeline).is_some() {
            return Ok(false);
        }
        let claim = self
            .store
            .claim_pipeline(
                pipeline,
                &self.instance,
                self.clock.now(),
                self.config.claim_ttl,
            )
            .await?;
        Ok(match claim {
            Some(claim) => {
                self.hold(claim);
                true
            }
            None => false,
        })
    }

    /// Extend the claim on `pipeline` when half of it is used up; an error when the claim
    /// was lost (the run must stop: another instance may be running the pipeline).
    pub(crate) async fn keep_claim(&self, pipeline: PipelineId) -> Result<(), EngineError> {
        let Some(claim) = self.held(pipeline) else {
            return Ok(());
        };
        let now = self.clock.now();
        if claim.until - now > self.config.claim_ttl / 2 {
            return Ok(());
        }
        let renewed = self
            .store
            .renew_pipeline_claim(&claim, now, self.config.claim_ttl)
            .await?;
        self.hold(renewed);
        Ok(())
    }

    /// End this instance's claim on `pipeline`: next due at `due_at`; `ran_at` records a
    /// completed run.
    pub(crate) async fn finish_claim(
        &self,
        pipeline: PipelineId,
        due_at: DateTime<chrono::Utc>,
        ran_at: Option<DateTime<chrono::Utc>>,
    ) -> Result<(), EngineError> {
        if let Some(claim) = self.forget(pipeline) {
            self.store
                .finish_pipeline_claim(&claim, due_at, ran_at)
                .await?;
        }
        Ok(())
    }

    /// Give this instance's claim on `pipeline` back, leaving when it is due as it was.
    pub(crate) async fn release_claim(&self, pipeline: PipelineId) -> Result<(), EngineError> {
        if let Some(claim) = self.forget(pipeline) {
            self.store.release_pipeline_claim(&claim).await?;
        }
        Ok(())
    }

    /// Give back every claim this instance holds (a graceful shutdown): the pipelines are
    /// at once free for the other instances.
    pub async fn release_all_claims(&self) -> Result<u64, EngineError> {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(self.store.release_claims_of(&self.instance).await?)
    }

    /// Record windows of a run of `pipeline` (and their messages), fenced by this
    /// instance's claim on it.
    pub(crate) async fn record_run(
        &self,
        pipeline: PipelineId,
        entries: &[LedgerEntry],
        notifications: &[Notification],
    ) -> Result<(), EngineError> {
        let claim = self.claim_of(pipeline)?;
        self.store
            .record_windows_under(&claim, self.clock.now(), entries, notifications)
            .await?;
        Ok(())
    }

    /// The claim this instance holds on `pipeline`, which every write of a run's windows
    /// needs.
    fn claim_of(&self, pipeline: PipelineId) -> Result<PipelineClaim, EngineError> {
        self.held(pipeline).ok_or_else(|| {
            EngineError::Internal(format!(
                "windows of pipeline {pipeline} were to be written without a claim on it"
            ))
        })
    }

    /// Record windows a run of `pipeline` leaves missing because its identity's health
    /// (`read`) forbids using it, under the run's claim, unless that health changed since
    /// (a recovery committed first): then nothing is written (false), and the next run sees
    /// the new health.
    pub(crate) async fn record_run_while(
        &self,
        pipeline: PipelineId,
        entries: &[LedgerEntry],
        identity: &gapless_core::Identity,
    ) -> Result<bool, EngineError> {
        let claim = self.claim_of(pipeline)?;
        let written = self
            .store
            .record_windows_while(
                &claim,
                self.clock.now(),
                entries,
                identity.id,
                &identity.health,
            )
            .await?;
        if !written {
            tracing::debug!(identity = %identity.label, %pipeline, "the identity's health changed since the run read it; its windows were left as they are");
        }
        Ok(written)
    }
}
