//! The outbox: notifications written in the same transaction as the change that causes
//! them, then delivered with retries by a dispatcher.

use chrono::{DateTime, Utc};
use gapless_core::{Delivery, DeliveryState, Notification, NotificationId, NotificationKind};
use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{
        get_id, get_json, get_opt_str, get_opt_ts, get_str, get_ts, get_u32, json, ts, ts_opt,
    },
};

pub(crate) const COLUMNS: &str = "id, incident_id, kind, dedupe_key, channel, recipients, subject, body_text, body_html, message_id, state, attempts, last_error, created_at, next_attempt_at, delivered_at";

fn corrupt(what: &str, detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

/// A `(k, n)` row of a count by some value.
fn count_row(row: &AnyRow) -> Result<(String, u64), StoreError> {
    Ok((
        get_str(row, "k")?,
        u64::try_from(crate::codec::get_i64(row, "n")?).unwrap_or(0),
    ))
}

pub(crate) fn notification_from_row(row: &AnyRow) -> Result<Notification, StoreError> {
    let kind = get_str(row, "kind")?;
    let state = get_str(row, "state")?;
    Ok(Notification {
        id: get_id(row, "id")?,
        incident: get_opt_str(row, "incident_id")?
            .map(|s| s.parse().map_err(|_| corrupt("column incident_id", &s)))
            .transpose()?,
        kind: NotificationKind::parse(&kind).ok_or_else(|| corrupt("column kind", &kind))?,
        dedupe_key: get_str(row, "dedupe_key")?,
        channel: get_str(row, "channel")?,
        recipients: get_json(row, "recipients")?,
        subject: get_str(row, "subject")?,
        body_text: get_str(row, "body_text")?,
        body_html: get_str(row, "body_html")?,
        message_id: get_str(row, "message_id")?,
        created_at: get_ts(row, "created_at")?,
        delivery: Delivery {
            state: DeliveryState::parse(&state).ok_or_else(|| corrupt("column state", &state))?,
            attempts: get_u32(row, "attempts")?,
            last_error: get_opt_str(row, "last_error")?,
            next_attempt_at: get_ts(row, "next_attempt_at")?,
            delivered_at: get_opt_ts(row, "delivered_at")?,
        },
    })
}

/// Insert unless a notification with the same dedupe key exists.
pub(crate) async fn insert(conn: &mut AnyConnection, n: &Notification) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO notifications ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (dedupe_key) DO NOTHING"
    );
    sqlx::query(&sql)
        .bind(n.id.to_string())
        .bind(n.incident.map(|i| i.to_string()))
        .bind(n.kind.as_str())
        .bind(&n.dedupe_key)
        .bind(&n.channel)
        .bind(json(&n.recipients)?)
        .bind(&n.subject)
        .bind(&n.body_text)
        .bind(&n.body_html)
        .bind(&n.message_id)
        .bind(n.delivery.state.as_str())
        .bind(i64::from(n.delivery.attempts))
        .bind(&n.delivery.last_error)
        .bind(ts(n.created_at))
        .bind(ts(n.delivery.next_attempt_at))
        .bind(ts_opt(n.delivery.delivered_at))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Counts for the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub failed: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

impl Store {
    /// Put a notification in the outbox on its own (not tied to a state change).
    pub async fn enqueue_notification(&self, n: &Notification) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert(&mut tx, n).await?;
        tx.commit().await?;
        self.wrote_to_outbox(1);
        Ok(())
    }

    /// Pending notifications due at `now`, oldest first.
    pub async fn due_notifications(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY created_at, id LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(ts(now))
            .bind(limit)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    /// All notifications, newest first, optionally only failed ones.
    pub async fn notifications(&self, only_failed: bool) -> Result<Vec<Notification>, StoreError> {
        let filter = if only_failed {
            "WHERE state = 'failed'"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications {filter} ORDER BY created_at DESC, id DESC"
        );
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    /// Messages waiting for delivery, by id after `after`, at most `limit` (1 to 1,000):
    /// the ones whose sealed bodies a key rotation re-seals, read a page at a time (the
    /// pending rows by the index on state, never the whole history).
    pub async fn pending_notifications(
        &self,
        after: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE state = 'pending' AND id > $1 ORDER BY id LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(after.map(|id| id.to_string()).unwrap_or_default())
            .bind(i64::from(limit.clamp(1, 1_000)))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    /// A page of messages, newest first (by the index on when they were written), after
    /// `after`; only the failed ones when `only_failed`; at most `limit` (1 to 1,000).
    pub async fn notifications_page(
        &self,
        only_failed: bool,
        after: Option<&crate::TimeCursor>,
        limit: u32,
    ) -> Result<crate::TimePage<Notification>, StoreError> {
        crate::listing::time_page(
            self,
            crate::listing::TimeQuery {
                table: "notifications",
                columns: COLUMNS,
                at_column: "created_at",
                filter: if only_failed {
                    "state = 'failed'"
                } else {
                    "1 = 1"
                },
            },
            after,
            limit,
            notification_from_row,
            |n| crate::TimeCursor {
                at: n.created_at,
                id: n.id.to_string(),
            },
        )
        .await
    }

    /// The messages of incident `id`, oldest first (by the index on incident).
    pub async fn notifications_of_incident(
        &self,
        id: gapless_core::IncidentId,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE incident_id = $1 ORDER BY created_at, id"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    pub async fn mark_delivered(
        &self,
        id: NotificationId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.mark_delivered_under(id, None, at).await.map(|_| ())
    }

    /// Record a delivery made under the claim `token` (None: not claimed). False when the
    /// claim had been taken over meanwhile: the row is left to the instance that holds it.
    pub async fn mark_delivered_under(
        &self,
        id: NotificationId,
        token: Option<i64>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .mark_delivered_all(&[(id, token)], at)
            .await?
            .is_empty())
    }

    /// Record deliveries, each made under its claim token (None: not claimed), in one
    /// statement: a dispatcher records what its channel accepted meanwhile with one round
    /// trip. Returns the ones not recorded, whose claim had been taken over meanwhile.
    pub async fn mark_delivered_all(
        &self,
        delivered: &[(NotificationId, Option<i64>)],
        at: DateTime<Utc>,
    ) -> Result<Vec<NotificationId>, StoreError> {
        let mut recorded = std::collections::HashSet::new();
        // At most this many per statement: each adds two parameters and one level to the
        // expression, and SQLite refuses a tree deeper than 1,000.
        for chunk in delivered.chunks(500) {
            let fences: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(id = ${} AND claim_token = COALESCE(${}, claim_token))",
                        2 * i + 2,
                        2 * i + 3
                    )
                })
                .collect();
            let sql = format!(
                "UPDATE notifications SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, last_error = NULL, claim_holder = NULL \
                 WHERE {} RETURNING id",
                fences.join(" OR ")
            );
            let mut query = sqlx::query(&sql).bind(ts(at));
            for (id, token) in chunk {
                query = query.bind(id.to_string()).bind(*token);
            }
            for row in query.fetch_all(self.outbox_pool()).await? {
                recorded.insert(get_id::<NotificationId>(&row, "id")?);
            }
        }
        Ok(delivered
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !recorded.contains(id))
            .collect())
    }

    /// Record a failed attempt: retried at `retry_at`, or failed for good when None.
    pub async fn mark_attempt_failed(
        &self,
        id: NotificationId,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.mark_attempt_failed_under(id, None, error, retry_at)
            .await
            .map(|_| ())
    }

    /// Record a failed attempt made under the claim `token` (None: not claimed); false when
    /// the claim had been taken over meanwhile.
    pub async fn mark_attempt_failed_under(
        &self,
        id: NotificationId,
        token: Option<i64>,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let (state, next) = match retry_at {
            Some(at) => ("pending", Some(ts(at))),
            None => ("failed", None),
        };
        let done = sqlx::query(
            "UPDATE notifications SET state = $1, attempts = attempts + 1, last_error = $2, next_attempt_at = COALESCE($3, next_attempt_at), claim_holder = NULL \
             WHERE id = $4 AND claim_token = COALESCE($5, claim_token)",
        )
        .bind(state)
        .bind(error)
        .bind(next)
        .bind(id.to_string())
        .bind(token)
        .execute(self.outbox_pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many rows of `table` there are by the value of `column` (a table and column of
    /// this store, never outside input): the counts `/metrics` reports, computed by the
    /// database instead of by reading every row.
    async fn count_by(
        &self,
        table: &'static str,
        column: &'static str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let sql = format!("SELECT {column} AS k, COUNT(*) AS n FROM {table} GROUP BY {column}");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(count_row).collect()
    }

    /// Identities by health state (`healthy`, `degraded`, …).
    pub async fn identities_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.count_by("identities", "health_state").await
    }

    /// Ledger windows by state (`loaded`, `missing`, `spooled`, `lost`): the sum of the
    /// pipelines' counts the database keeps with the ledger (migration 21), so a scrape
    /// reads a few rows per pipeline, not every window.
    pub async fn windows_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state AS k, CAST(SUM(n) AS BIGINT) AS n FROM window_counts GROUP BY state HAVING SUM(n) > 0",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(count_row).collect()
    }

    /// Does the state database answer? One round trip that reads no table (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 AS one")
            .fetch_one(self.pool())
            .await?;
        Ok(())
    }

    /// How many incidents are not closed.
    pub async fn open_incident_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM incidents WHERE closed_at IS NULL")
            .fetch_one(self.pool())
            .await?;
        Ok(u64::try_from(crate::codec::get_i64(&row, "n")?).unwrap_or(0))
    }

    /// What waits and what failed in the outbox, each read by the index on state: the
    /// delivered messages (every message ever sent) are not counted.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (pending, oldest_pending) = self.pending_outbox().await?;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE state = 'failed'")
            .fetch_one(self.pool())
            .await?;
        Ok(OutboxStats {
            pending,
            failed: u64::try_from(crate::codec::get_i64(&row, "n")?).unwrap_or(0),
            oldest_pending,
        })
    }

    /// How many messages wait to be delivered, and since when the oldest. Reads the
    /// pending rows only (by the index on state), not the whole outbox.
    pub async fn pending_outbox(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM notifications WHERE state = 'pending'",
        )
        .fetch_one(self.outbox_pool())
        .await?;
        Ok((
            u64::try_from(crate::codec::get_i64(&row, "n")?).unwrap_or(0),
            get_opt_ts(&row, "oldest")?,
        ))
    }

    /// Is there a notification whose dedupe key starts with `prefix`?
    pub async fn notification_exists_with_prefix(&self, prefix: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 AS hit FROM notifications WHERE dedupe_key LIKE $1 LIMIT 1")
                .bind(format!("{}%", prefix.replace('%', "").replace('_', "\\_")))
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some())
    }

    /// Record that `provider` is in an outage since `since` and queue its notice, in one
    /// transaction; false (nothing queued) when one is already open.
    pub async fn open_provider_outage(
        &self,
        provider: &str,
        since: DateTime<Utc>,
        notices: &[Notification],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let result = sqlx::query(
            "INSERT INTO provider_outages (provider, since) VALUES ($1, $2) ON CONFLICT (provider) DO NOTHING",
        )
        .bind(provider)
        .bind(ts(since))
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for notice in notices {
            insert(&mut tx, notice).await?;
        }
        tx.commit().await?;
        self.wrote_to_outbox(notices.len());
        Ok(true)
    }

    /// The outage of `provider` is over.
    /// The providers with an outage open.
    pub async fn open_provider_outages(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT provider FROM provider_outages ORDER BY provider")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| crate::codec::get_str(row, "provider"))
            .collect()
    }

    pub async fn close_provider_outage(&self, provider: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM provider_outages WHERE provider = $1")
            .bind(provider)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Replace a pending message's bodies (re-sealed with another key); nothing when it was
    /// delivered or failed meanwhile.
    pub async fn reseal_notification(
        &self,
        id: gapless_core::NotificationId,
        body_text: &str,
        body_html: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notifications SET body_text = $1, body_html = $2 WHERE id = $3 AND state = 'pending'",
        )
        .bind(body_text)
        .bind(body_html)
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Put several notifications in the outbox in one transaction.
    pub async fn enqueue_notifications(
        &self,
        list: &[Notification],
        links: &[crate::NewReauthLink],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for n in list {
            insert(&mut tx, n).await?;
        }
        let audited = crate::access::record_links(&mut tx, links).await?;
        tx.commit().await?;
        self.wrote_to_outbox(list.len());
        if audited {
            self.seal_after_write().await;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use chrono::TimeZone;
    use gapless_core::{Delivery, Notification, NotificationId, NotificationKind};

    use crate::{Store, testing::TestDatabase};

    /// Every connection of the main pool held (a sweep of many runs in flight): the
    /// dispatcher still claims a message and records its delivery at once, on its own.
    #[tokio::test]
    async fn the_outbox_is_claimed_and_recorded_while_every_main_connection_is_busy() {
        let database = TestDatabase::create().await.unwrap();
        let store = Store::open(&database.location).await.unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
        let message = Notification {
            id: NotificationId::new(),
            incident: None,
            kind: NotificationKind::AuthorizationFailure,
            dedupe_key: "busy-pool".into(),
            channel: "email".into(),
            recipients: vec!["ana@example.com".into()],
            subject: "Authorization Failure".into(),
            body_text: "text".into(),
            body_html: "<p>html</p>".into(),
            message_id: "<busy-pool@gapless>".into(),
            created_at: now,
            delivery: Delivery::pending(now),
        };
        store.enqueue_notification(&message).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..store.pool().options().get_max_connections() {
            held.push(store.pool().acquire().await.unwrap());
        }
        // The main pool has nothing left to give.
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(200),
                store.pool().acquire()
            )
            .await
            .is_err()
        );
        let work = async {
            let claimed = store
                .claim_due_notifications("a", now, chrono::Duration::minutes(5), 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            let token = Some(claimed[0].token);
            let left = store
                .mark_delivered_all(&[(message.id, token)], now)
                .await
                .unwrap();
            assert!(left.is_empty(), "recorded under its claim");
            store.pending_outbox().await.unwrap()
        };
        let (pending, _) = tokio::time::timeout(std::time::Duration::from_secs(5), work)
            .await
            .expect("the dispatcher waited for the main pool");
        assert_eq!(pending, 0);
        drop(held);
    }
}
