//! Reauthorize links and API tokens. Only hashes of their bearer tokens are stored; a link
//! is spent by one conditional update, so two concurrent uses cannot both succeed.

use chrono::{DateTime, Utc};
use gapless_core::{AuditRecord, IdentityId, IncidentId};
use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{
    Store, StoreError,
    codec::{get_id, get_opt_str, get_opt_ts, get_str, get_ts, ts, ts_opt},
};

/// A reauthorize link as stored (its token is known only to whoever received it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReauthLink {
    pub id: String,
    pub identity: IdentityId,
    /// The incident the link was sent for (None: an expiry warning's link).
    pub incident: Option<IncidentId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Keys or passwords entered through the link that the provider refused.
    pub failed_attempts: u32,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    Read,
    Write,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }
}

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const LINK_COLUMNS: &str =
    "id, identity_id, incident_id, created_at, expires_at, used_at, revoked_at, failed_attempts";
const TOKEN_COLUMNS: &str = "id, name, scope, created_at, last_used_at, revoked_at";

fn link_from_row(row: &AnyRow) -> Result<ReauthLink, StoreError> {
    Ok(ReauthLink {
        id: get_str(row, "id")?,
        identity: get_id(row, "identity_id")?,
        incident: get_opt_str(row, "incident_id")?
            .map(|s| {
                s.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
                    what: "column incident_id".into(),
                    detail: e.to_string(),
                })
            })
            .transpose()?,
        created_at: get_ts(row, "created_at")?,
        expires_at: get_ts(row, "expires_at")?,
        used_at: get_opt_ts(row, "used_at")?,
        revoked_at: get_opt_ts(row, "revoked_at")?,
        failed_attempts: crate::codec::get_u32(row, "failed_attempts")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<ApiToken, StoreError> {
    let scope = get_str(row, "scope")?;
    Ok(ApiToken {
        id: get_str(row, "id")?,
        name: get_str(row, "name")?,
        scope: TokenScope::parse(&scope).ok_or_else(|| StoreError::Corrupt {
            what: "column scope".into(),
            detail: format!("{scope:?} is not read or write"),
        })?,
        created_at: get_ts(row, "created_at")?,
        last_used_at: get_opt_ts(row, "last_used_at")?,
        revoked_at: get_opt_ts(row, "revoked_at")?,
    })
}

/// A reauthorize link to record in the transaction of the message that carries it, so that
/// a message not written (another instance queued it first) leaves no link behind.
#[derive(Debug, Clone)]
pub struct NewReauthLink {
    pub link: ReauthLink,
    /// The hash of its token (the token itself is only in the message).
    pub token_hash: String,
    /// The record of its minting; the caller appends it to the log with its other records.
    pub audit: AuditRecord,
}

/// Insert `links` inside the caller's transaction (their audit records are the caller's to
/// append).
pub(crate) async fn insert_links(
    conn: &mut sqlx::AnyConnection,
    links: &[NewReauthLink],
) -> Result<(), StoreError> {
    for new in links {
        let link = &new.link;
        sqlx::query(
            "INSERT INTO reauth_links (id, identity_id, incident_id, token_hash, created_at, expires_at, used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&link.id)
        .bind(link.identity.to_string())
        .bind(link.incident.map(|i| i.to_string()))
        .bind(&new.token_hash)
        .bind(ts(link.created_at))
        .bind(ts(link.expires_at))
        .bind(ts_opt(link.used_at))
        .bind(ts_opt(link.revoked_at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert `links` and append their audit records inside the caller's transaction; whether
/// there were any (the caller then seals the log after its commit).
pub(crate) async fn record_links(
    conn: &mut sqlx::AnyConnection,
    links: &[NewReauthLink],
) -> Result<bool, StoreError> {
    insert_links(&mut *conn, links).await?;
    let audit: Vec<AuditRecord> = links.iter().map(|l| l.audit.clone()).collect();
    crate::audit::append(conn, &audit).await?;
    Ok(!links.is_empty())
}

impl Store {
    /// Record a link whose token hashes to `token_hash`.
    pub async fn insert_reauth_link(
        &self,
        link: &ReauthLink,
        token_hash: &str,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let new = NewReauthLink {
            link: link.clone(),
            token_hash: token_hash.to_string(),
            audit: audit.clone(),
        };
        record_links(&mut tx, std::slice::from_ref(&new)).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    /// The link whose token hashes to `token_hash`, if any.
    pub async fn reauth_link_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ReauthLink>, StoreError> {
        let sql = format!("SELECT {LINK_COLUMNS} FROM reauth_links WHERE token_hash = $1");
        sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(link_from_row)
            .transpose()
    }

    pub async fn reauth_link(&self, id: &str) -> Result<ReauthLink, StoreError> {
        let sql = format!("SELECT {LINK_COLUMNS} FROM reauth_links WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("reauthorize link {id}"),
            })?;
        link_from_row(&row)
    }

    /// The links of an identity, newest first.
    pub async fn reauth_links(&self, identity: IdentityId) -> Result<Vec<ReauthLink>, StoreError> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM reauth_links WHERE identity_id = $1 ORDER BY created_at DESC"
        );
        sqlx::query(&sql)
            .bind(identity.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(link_from_row)
            .collect()
    }

    /// Spend a link: true for the one caller that spent it while it was unused, unrevoked
    /// and unexpired (and only then is `audit` recorded).
    pub async fn use_reauth_link(
        &self,
        id: &str,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE reauth_links SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(ts(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let spent = done.rows_affected() == 1;
        if spent {
            crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(spent)
    }

    /// Undo [`Store::use_reauth_link`] of `at` (the attempt it was spent for was refused).
    pub async fn release_reauth_link(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE reauth_links SET used_at = NULL WHERE id = $1 AND used_at = $2")
            .bind(id)
            .bind(ts(at))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// One more wrong key or password entered through link `id`; the link is revoked at
    /// the `limit`-th, recording `locked` in the audit log. Returns the attempts so far.
    pub async fn record_failed_link_attempt(
        &self,
        id: &str,
        limit: u32,
        at: DateTime<Utc>,
        locked: &AuditRecord,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE reauth_links SET failed_attempts = failed_attempts + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT failed_attempts FROM reauth_links WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let attempts = crate::codec::get_u32(&row, "failed_attempts")?;
        if attempts >= limit {
            let revoked = sqlx::query(
                "UPDATE reauth_links SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(ts(at))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if revoked.rows_affected() > 0 {
                let record = locked.clone().with("failed_attempts", attempts);
                crate::audit::append(&mut tx, &[record]).await?;
            }
        }
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(attempts)
    }

    /// An operator signed out: the session `nonce` is refused from now on (until
    /// `expires_at`, when its cookie would have expired anyway). Older ended sessions go.
    pub async fn end_session(
        &self,
        nonce: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM ended_sessions WHERE expires_at < $1")
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO ended_sessions (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(ts(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Was the session `nonce` ended by signing out?
    pub async fn session_ended(&self, nonce: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS hit FROM ended_sessions WHERE nonce = $1")
                .bind(nonce)
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }

    /// Revoke every unused link of an identity; returns how many. `audit` is recorded
    /// (with the count) when there was one at least.
    pub async fn revoke_reauth_links(
        &self,
        identity: IdentityId,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE reauth_links SET revoked_at = $1 WHERE identity_id = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(ts(at))
        .bind(identity.to_string())
        .execute(&mut *tx)
        .await?;
        let revoked = done.rows_affected();
        if revoked > 0 {
            let record = audit.clone().with("links", revoked);
            crate::audit::append(&mut tx, &[record]).await?;
        }
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(revoked)
    }

    pub async fn insert_api_token(
        &self,
        token: &ApiToken,
        token_hash: &str,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, scope, created_at, last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(token_hash)
        .bind(token.scope.as_str())
        .bind(ts(token.created_at))
        .bind(ts_opt(token.last_used_at))
        .bind(ts_opt(token.revoked_at))
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    /// The unrevoked token whose secret hashes to `token_hash`, marked used at `at`.
    pub async fn authenticate_api_token(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiToken>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        let token = token_from_row(&row)?;
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(ts(at))
            .bind(&token.id)
            .execute(self.pool())
            .await?;
        Ok(Some(token))
    }

    /// The token with this id, if it is still valid (not revoked).
    pub async fn active_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1 AND revoked_at IS NULL");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at");
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    /// Revoke a token by id or name; false when there is no such unrevoked token (and
    /// only when there was one is `audit` recorded).
    pub async fn revoke_api_token(
        &self,
        id_or_name: &str,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE (id = $2 OR name = $2) AND revoked_at IS NULL",
        )
        .bind(ts(at))
        .bind(id_or_name)
        .execute(&mut *tx)
        .await?;
        let revoked = done.rows_affected() > 0;
        if revoked {
            crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(revoked)
    }
}
