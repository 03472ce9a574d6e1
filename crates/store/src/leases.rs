//! Leases: one holder at a time per name (e.g. `refresh:<identity>`), with a fencing token
//! that grows on every acquisition. A write made under a lease checks that its token is
//! still the current one, so a holder that stalled past its lease cannot overwrite the work
//! of the next one. Identical on SQLite and PostgreSQL (`INSERT … ON CONFLICT DO UPDATE …
//! WHERE … RETURNING`).

use chrono::{DateTime, Duration, Utc};
use sqlx::AnyConnection;

use crate::{
    Store, StoreError,
    codec::{expiry, get_i64, ts},
};

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// The fencing token.
    pub token: i64,
    pub expires_at: DateTime<Utc>,
}

/// The refusal of a write fenced by a lease its holder no longer holds.
fn not_held(lease: &Lease) -> StoreError {
    StoreError::Conflict(format!(
        "lease {} (fencing token {}) is no longer held by {}",
        lease.name, lease.token, lease.holder
    ))
}

/// Check that `lease` is still held and give it back in one statement, inside the
/// caller's transaction: the write it fenced is its last use.
pub(crate) async fn check_and_end(
    conn: &mut AnyConnection,
    lease: &Lease,
) -> Result<(), StoreError> {
    if give_back(conn, lease).await? {
        Ok(())
    } else {
        Err(not_held(lease))
    }
}

/// Take the lease `name` for `ttl` inside the caller's transaction if it is free, expired,
/// or already ours.
pub(crate) async fn take(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Lease>, StoreError> {
    let expires_at = expiry(now, ttl);
    let row = sqlx::query(
        "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = leases.token + 1, expires_at = excluded.expires_at \
         WHERE leases.expires_at <= $4 OR leases.holder = excluded.holder \
         RETURNING token",
    )
    .bind(name)
    .bind(holder)
    .bind(ts(expires_at))
    .bind(ts(now))
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token: get_i64(&row, "token")?,
            expires_at,
        })
    })
    .transpose()
}

/// Give a lease back inside the caller's transaction if it is still ours: whether it was (a
/// lease already given back, its write done, fences nothing more).
pub(crate) async fn give_back(conn: &mut AnyConnection, lease: &Lease) -> Result<bool, StoreError> {
    let given = sqlx::query(
        "UPDATE leases SET expires_at = $1 WHERE name = $2 AND holder = $3 AND token = $4 AND expires_at <> $1",
    )
    .bind(ts(DateTime::<Utc>::MIN_UTC))
    .bind(&lease.name)
    .bind(&lease.holder)
    .bind(lease.token)
    .execute(&mut *conn)
    .await?;
    Ok(given.rows_affected() == 1)
}

impl Store {
    /// Take the lease `name` for `ttl` if it is free, expired, or already ours.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Lease>, StoreError> {
        // One statement: atomic without a transaction around it.
        take(&mut *self.pool().acquire().await?, name, holder, ttl, now).await
    }

    /// Give a lease back (only if it is still ours).
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        give_back(&mut *self.pool().acquire().await?, lease).await?;
        Ok(())
    }
}
