//! Incidents.

use gapless_core::{IdentityId, Incident, IncidentId};
use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{get_id, get_json, get_opt_ts, get_ts, json, ts, ts_opt},
};

fn incident_from_row(row: &AnyRow) -> Result<Incident, StoreError> {
    Ok(Incident {
        id: get_id(row, "id")?,
        identity: get_id(row, "identity_id")?,
        failure: get_json(row, "failure")?,
        opened_at: get_ts(row, "opened_at")?,
        closed_at: get_opt_ts(row, "closed_at")?,
        affected_pipelines: get_json(row, "affected_pipelines")?,
    })
}

pub(crate) async fn insert(
    conn: &mut AnyConnection,
    incident: &Incident,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incidents (id, identity_id, failure, opened_at, closed_at, affected_pipelines) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(incident.id.to_string())
    .bind(incident.identity.to_string())
    .bind(json(&incident.failure)?)
    .bind(ts(incident.opened_at))
    .bind(ts_opt(incident.closed_at))
    .bind(json(&incident.affected_pipelines)?)
    .execute(&mut *conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "identity {} already has an open incident",
            incident.identity
        )),
        other => other,
    })?;
    Ok(())
}

const COLUMNS: &str = "id, identity_id, failure, opened_at, closed_at, affected_pipelines";

impl Store {
    pub async fn incident(&self, id: IncidentId) -> Result<Incident, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("incident {id}"),
            })?;
        incident_from_row(&row)
    }

    /// Incidents, newest first; only one identity's when given.
    pub async fn incidents(
        &self,
        identity: Option<IdentityId>,
    ) -> Result<Vec<Incident>, StoreError> {
        let rows = match identity {
            Some(id) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM incidents WHERE identity_id = $1 ORDER BY opened_at DESC"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM incidents ORDER BY opened_at DESC");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await?
            }
        };
        rows.iter().map(incident_from_row).collect()
    }
}
