//! Incidents.

use chrono::{DateTime, Utc};
use gapless_core::{FailedOperation, Failure, IdentityId, Incident, IncidentId, Notification};
use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{get_id, get_json, get_opt_str, get_opt_ts, get_ts, get_u32, json, ts, ts_opt},
};

fn incident_from_row(row: &AnyRow) -> Result<Incident, StoreError> {
    Ok(Incident {
        id: get_id(row, "id")?,
        identity: get_id(row, "identity_id")?,
        failure: get_json(row, "failure")?,
        opened_at: get_ts(row, "opened_at")?,
        closed_at: get_opt_ts(row, "closed_at")?,
        affected_pipelines: get_json(row, "affected_pipelines")?,
        origin: match get_opt_str(row, "origin")? {
            Some(text) => Some(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    what: "incident origin".into(),
                    detail: e.to_string(),
                })?,
            ),
            None => None,
        },
        recovering_since: get_opt_ts(row, "recovering_since")?,
        reopened: get_u32(row, "reopened")?,
    })
}

pub(crate) async fn insert(
    conn: &mut AnyConnection,
    incident: &Incident,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incidents (id, identity_id, failure, opened_at, closed_at, affected_pipelines, origin, recovering_since, reopened, next_reminder_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $4)",
    )
    .bind(incident.id.to_string())
    .bind(incident.identity.to_string())
    .bind(json(&incident.failure)?)
    .bind(ts(incident.opened_at))
    .bind(ts_opt(incident.closed_at))
    .bind(json(&incident.affected_pipelines)?)
    .bind(incident.origin.as_ref().map(json).transpose()?)
    .bind(ts_opt(incident.recovering_since))
    .bind(i64::from(incident.reopened))
    .execute(&mut *conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Duplicate { .. } => StoreError::Conflict(format!(
            "identity {} already has an open incident",
            incident.identity
        )),
        other => other,
    })?;
    Ok(())
}

/// Continue incident `id` after a new failure: open again (not recovering, not closed), with
/// the new failure, counted.
pub(crate) async fn reopen(
    conn: &mut AnyConnection,
    id: IncidentId,
    failure: &Failure,
    origin: Option<&FailedOperation>,
    affected: &[gapless_core::PipelineId],
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE incidents SET closed_at = NULL, recovering_since = NULL, failure = $1, origin = $2, reopened = reopened + 1, \
         next_reminder_at = COALESCE(next_reminder_at, opened_at), affected_pipelines = $3 WHERE id = $4",
    )
    .bind(json(failure)?)
    .bind(origin.map(json).transpose()?)
    .bind(json(&affected)?)
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Duplicate { .. } => {
            StoreError::Conflict(format!("incident {id}'s identity has another open incident"))
        }
        other => other,
    })?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            what: format!("incident {id}"),
        });
    }
    Ok(())
}

/// The open incident `id` affects `affected` now (a lost permission first met on one
/// resource, then on another: every pipeline of the identity waits).
pub(crate) async fn widen(
    conn: &mut AnyConnection,
    id: IncidentId,
    affected: &[gapless_core::PipelineId],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE incidents SET affected_pipelines = $1 WHERE id = $2 AND closed_at IS NULL")
        .bind(json(&affected)?)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The identity's open incident starts recovering at `at`.
pub(crate) async fn start_recovery(
    conn: &mut AnyConnection,
    identity: IdentityId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE incidents SET recovering_since = $1 WHERE identity_id = $2 AND closed_at IS NULL AND recovering_since IS NULL",
    )
    .bind(ts(at))
    .bind(identity.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Close the identity's incident (open or recovering) at `at`.
pub(crate) async fn close(
    conn: &mut AnyConnection,
    identity: IdentityId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE incidents SET closed_at = $1, recovering_since = NULL WHERE identity_id = $2 AND closed_at IS NULL",
    )
    .bind(ts(at))
    .bind(identity.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "id, identity_id, failure, opened_at, closed_at, affected_pipelines, origin, recovering_since, reopened";

/// An open incident the reminder sweep should look at now.
#[derive(Debug, Clone)]
pub struct DueReminder {
    pub incident: Incident,
    /// The number of the last reminder queued for it (0: none yet).
    pub reminded: u32,
}

impl Store {
    /// Close a recovering incident and queue its recovery notice, in one transaction. False
    /// (and nothing written) when it is not recovering any more: closed by someone else, or
    /// failing again.
    pub async fn finish_recovery(
        &self,
        id: IncidentId,
        at: DateTime<Utc>,
        notifications: &[Notification],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE incidents SET closed_at = $1, recovering_since = NULL WHERE id = $2 AND closed_at IS NULL AND recovering_since IS NOT NULL",
        )
        .bind(ts(at))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for notification in notifications {
            crate::notifications::insert(&mut tx, notification).await?;
        }
        tx.commit().await?;
        self.wrote_to_outbox(notifications.len());
        Ok(true)
    }

    /// Incidents whose recovery has begun and not been reported yet, oldest first.
    pub async fn recovering_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM incidents WHERE recovering_since IS NOT NULL AND closed_at IS NULL ORDER BY recovering_since"
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(incident_from_row).collect()
    }

    /// The identity's newest incident (open, recovering or closed).
    pub async fn latest_incident(
        &self,
        identity: IdentityId,
    ) -> Result<Option<Incident>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM incidents WHERE identity_id = $1 ORDER BY opened_at DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(identity.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(incident_from_row).transpose()
    }

    pub async fn incident(&self, id: IncidentId) -> Result<Incident, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM incidents WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("incident {id}"),
            })?;
        incident_from_row(&row)
    }

    /// Incidents, newest first; only one identity's when given.
    /// The open incidents (not recovering) whose reminder sweep is due at `now`, the
    /// longest waiting first, at most `limit`: found by the index on when each is due, so a
    /// sweep reads what is due, not every incident.
    pub async fn reminders_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueReminder>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS}, reminded FROM incidents \
             WHERE closed_at IS NULL AND recovering_since IS NULL \
             AND (next_reminder_at IS NULL OR next_reminder_at <= $1) \
             ORDER BY COALESCE(next_reminder_at, opened_at) LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(ts(now))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok(DueReminder {
                    incident: incident_from_row(row)?,
                    reminded: get_u32(row, "reminded")?,
                })
            })
            .collect()
    }

    /// Every open incident is looked at by the next reminder sweep (its next reminder
    /// recomputed) when the reminder `schedule` (a description of it, compared as text)
    /// is not the one the stored schedules were computed with: after the schedule was
    /// changed, also for incidents whose schedule had ended. Whether it was changed. Queues
    /// nothing by itself; what was queued already is not queued again.
    pub async fn reschedule_reminders(&self, schedule: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "INSERT INTO applied_settings (name, value) VALUES ('reminder_schedule', $1) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value \
             WHERE applied_settings.value <> excluded.value \
             RETURNING name",
        )
        .bind(schedule)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if changed {
            sqlx::query(
                "UPDATE incidents SET next_reminder_at = opened_at \
                 WHERE closed_at IS NULL AND recovering_since IS NULL",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Record that incident `id`'s reminders up to `reminded` are queued, with these
    /// `messages` and the reauthorize `links` they carry, and that the sweep looks at it
    /// again at `next`, in one transaction —
    /// only while it is still open and its count is still `was`: false (nothing written)
    /// when another instance got there first or the incident is no longer open.
    pub async fn schedule_reminder(
        &self,
        id: IncidentId,
        was: u32,
        reminded: u32,
        next: DateTime<Utc>,
        messages: &[Notification],
        links: &[crate::NewReauthLink],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE incidents SET reminded = $1, next_reminder_at = $2 \
             WHERE id = $3 AND reminded = $4 AND closed_at IS NULL AND recovering_since IS NULL",
        )
        .bind(i64::from(reminded))
        .bind(ts(next))
        .bind(id.to_string())
        .bind(i64::from(was))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Ok(false);
        }
        for message in messages {
            crate::notifications::insert(&mut tx, message).await?;
        }
        let audited = crate::access::record_links(&mut tx, links).await?;
        tx.commit().await?;
        self.wrote_to_outbox(messages.len());
        if audited {
            self.seal_after_write().await;
        }
        Ok(true)
    }

    /// A page of incidents, newest first (by the index on when they opened), after
    /// `after`; at most `limit` (1 to 1,000).
    pub async fn incidents_page(
        &self,
        after: Option<&crate::TimeCursor>,
        limit: u32,
    ) -> Result<crate::TimePage<Incident>, StoreError> {
        crate::listing::time_page(
            self,
            crate::listing::TimeQuery {
                table: "incidents",
                columns: COLUMNS,
                at_column: "opened_at",
                filter: "1 = 1",
            },
            after,
            limit,
            incident_from_row,
            |i| crate::TimeCursor {
                at: i.opened_at,
                id: i.id.to_string(),
            },
        )
        .await
    }

    pub async fn incidents(
        &self,
        identity: Option<IdentityId>,
    ) -> Result<Vec<Incident>, StoreError> {
        let rows = match identity {
            Some(id) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM incidents WHERE identity_id = $1 ORDER BY opened_at DESC"
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM incidents ORDER BY opened_at DESC");
                sqlx::query(&sql).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(incident_from_row).collect()
    }
}
