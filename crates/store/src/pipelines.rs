//! Pipelines.

use chrono::{DateTime, Utc};
use gapless_core::{IdentityId, Pipeline, PipelineId, PipelineState, WindowSize};
use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{get_i64, get_id, get_json, get_opt_str, get_str, get_ts, get_u32, json, ts},
};

pub(crate) const COLUMNS: &str = "id, name, source_identity_id, source_resource, streams, destination_kind, destination_target, destination_identity_id, window_seconds, settle_windows, schedule, time_zone, start_at, state_detail";

pub(crate) fn pipeline_from_row(row: &AnyRow) -> Result<Pipeline, StoreError> {
    let window = get_i64(row, "window_seconds")?;
    Ok(Pipeline {
        id: get_id(row, "id")?,
        name: get_str(row, "name")?,
        source_identity: get_id(row, "source_identity_id")?,
        source_resource: get_str(row, "source_resource")?,
        streams: get_json(row, "streams")?,
        destination_kind: get_str(row, "destination_kind")?,
        destination_target: get_str(row, "destination_target")?,
        destination_identity: get_opt_str(row, "destination_identity_id")?
            .map(|s| {
                s.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
                    what: "column destination_identity_id".into(),
                    detail: e.to_string(),
                })
            })
            .transpose()?,
        window: WindowSize::from_seconds(window).map_err(|e| StoreError::Corrupt {
            what: "column window_seconds".into(),
            detail: e.to_string(),
        })?,
        settle_windows: get_u32(row, "settle_windows")?,
        schedule: get_opt_str(row, "schedule")?,
        time_zone: {
            let name = get_str(row, "time_zone")?;
            gapless_core::parse_time_zone(&name).map_err(|e| StoreError::Corrupt {
                what: "column time_zone".into(),
                detail: e.to_string(),
            })?
        },
        start: get_ts(row, "start_at")?,
        state: get_json(row, "state_detail")?,
    })
}

pub(crate) async fn set_state(
    conn: &mut AnyConnection,
    id: PipelineId,
    state: &PipelineState,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Any change of state makes the pipeline due: a resumed one runs on the next tick.
    sqlx::query(
        "UPDATE pipelines SET state = $1, state_detail = $2, updated_at = $3, due_at = $3 WHERE id = $4",
    )
    .bind(state.name())
    .bind(json(state)?)
    .bind(ts(at))
    .bind(id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    pub async fn insert_pipeline(&self, p: &Pipeline, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO pipelines (id, name, source_identity_id, source_resource, streams, destination_kind, destination_target, destination_identity_id, window_seconds, settle_windows, start_at, state, state_detail, created_at, updated_at, schedule, time_zone) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16)",
        )
        .bind(p.id.to_string())
        .bind(&p.name)
        .bind(p.source_identity.to_string())
        .bind(&p.source_resource)
        .bind(json(&p.streams)?)
        .bind(&p.destination_kind)
        .bind(&p.destination_target)
        .bind(p.destination_identity.map(|i| i.to_string()))
        .bind(p.window.seconds())
        .bind(i64::from(p.settle_windows))
        .bind(ts(p.start))
        .bind(p.state.name())
        .bind(json(&p.state)?)
        .bind(ts(at))
        .bind(&p.schedule)
        .bind(p.time_zone.name())
        .execute(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Duplicate { .. } => {
                StoreError::Conflict(format!("a pipeline named {:?} already exists", p.name))
            }
            StoreError::MissingReference { .. } => StoreError::Conflict(format!(
                "pipeline {:?} refers to an identity that does not exist",
                p.name
            )),
            other => other,
        })?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn pipeline(&self, id: PipelineId) -> Result<Pipeline, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pipelines WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("pipeline {id}"),
            })?;
        pipeline_from_row(&row)
    }

    /// Find by name or id.
    pub async fn find_pipeline(&self, name_or_id: &str) -> Result<Pipeline, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pipelines WHERE name = $1 OR id = $1");
        let row = sqlx::query(&sql)
            .bind(name_or_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("pipeline {name_or_id:?}"),
            })?;
        pipeline_from_row(&row)
    }

    pub async fn list_pipelines(&self) -> Result<Vec<Pipeline>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pipelines ORDER BY name");
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(pipeline_from_row)
            .collect()
    }

    /// Pipelines that depend on `identity` as source or destination.
    pub async fn pipelines_using(&self, identity: IdentityId) -> Result<Vec<Pipeline>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM pipelines WHERE source_identity_id = $1 OR destination_identity_id = $1 ORDER BY name"
        );
        sqlx::query(&sql)
            .bind(identity.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(pipeline_from_row)
            .collect()
    }

    /// When the pipeline last ran.
    pub async fn pipeline_last_run(
        &self,
        id: PipelineId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query("SELECT last_run_at FROM pipelines WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => crate::codec::get_opt_ts(&row, "last_run_at"),
            None => Ok(None),
        }
    }

    pub async fn set_pipeline_state(
        &self,
        id: PipelineId,
        state: &PipelineState,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        set_state(&mut tx, id, state, at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Change what may change of a pipeline without invalidating its ledger: its name,
    /// source identity, schedule and settle period.
    pub async fn update_pipeline(&self, p: &Pipeline, at: DateTime<Utc>) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE pipelines SET name = $1, source_identity_id = $2, schedule = $3, settle_windows = $4, updated_at = $5, due_at = $5 WHERE id = $6",
        )
        .bind(&p.name)
        .bind(p.source_identity.to_string())
        .bind(&p.schedule)
        .bind(i64::from(p.settle_windows))
        .bind(ts(at))
        .bind(p.id.to_string())
        .execute(self.pool())
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Duplicate { .. } => {
                StoreError::Conflict(format!("a pipeline named {:?} already exists", p.name))
            }
            other => other,
        })?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("pipeline {}", p.name),
            });
        }
        Ok(())
    }

    /// Delete a pipeline and its ledger (the destination's data stays where it is).
    pub async fn delete_pipeline(&self, id: PipelineId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for table in ["ledger_history", "ledger"] {
            sqlx::query(format!("DELETE FROM {table} WHERE pipeline_id = $1").as_str())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM pipelines WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("pipeline {id}"),
            });
        }
        tx.commit().await?;
        Ok(())
    }
}
