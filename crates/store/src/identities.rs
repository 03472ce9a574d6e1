//! Identities, their sealed credentials, health transitions — and the one transaction that
//! applies a health change with everything it causes.

use chrono::{DateTime, Utc};
use gapless_core::{
    AuditRecord, FailedOperation, Failure, Health, Identity, IdentityId, Incident, IncidentId,
    LedgerEntry, Notification, PipelineId, PipelineState, health::Transition,
};
use gapless_vault::{KeyVersion, Sealed};
use sqlx::{AnyConnection, Row, any::AnyRow};

use crate::{
    Store, StoreError,
    codec::{
        get_bytes, get_i64, get_id, get_json, get_opt_str, get_opt_ts, get_str, get_ts, get_u32,
        json, ts, ts_opt,
    },
};

/// The lease a refresh takes: its name, this instance, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub name: &'a str,
    pub holder: &'a str,
    pub ttl: chrono::Duration,
}

/// What [`Store::start_refresh`] found.
#[derive(Debug)]
pub enum RefreshStart {
    /// The lease is held and the intent recorded: the refresh token may be sent. The
    /// identity as it was before the intent (an earlier attempt's intent shows in
    /// `refresh_in_flight_since` when one was overwritten).
    Started {
        lease: crate::Lease,
        identity: Identity,
    },
    /// Another holder has the lease.
    Busy,
    /// The credential changed since the generation the caller read: the current one.
    Changed {
        identity: Identity,
        sealed: Sealed,
        generation: i64,
    },
    /// A refresh started at `since` never recorded its answer (and `resend` was false).
    InFlight { since: DateTime<Utc> },
}

/// A new identity and its sealed credential (sealed for `identity.id`).
#[derive(Debug, Clone)]
pub struct NewIdentity {
    pub identity: Identity,
    pub sealed: Sealed,
    /// When its first probe is due (None: now, or as the next probe sweep finds out from
    /// its last probe time).
    pub next_probe_due: Option<DateTime<Utc>>,
    /// Whether the credential renews its access token without a person (None: not known,
    /// the expiry sweep finds out).
    pub access_renews: Option<bool>,
}

/// A credential replacement, fenced: it applies only if the stored generation is still
/// `expected_generation`, so a writer that lost its lease cannot overwrite a newer token.
#[derive(Debug, Clone)]
pub struct CredentialUpdate {
    pub sealed: Sealed,
    pub expected_generation: i64,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// Replaces the known scopes when given.
    pub scopes: Option<Vec<String>>,
    /// Set on reauthorization: the new grant's time.
    pub granted_at: Option<DateTime<Utc>>,
    /// Set on reauthorization when the provider limits authorizations (kept otherwise).
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// The refresh lease the writer holds: the write applies only while that lease's
    /// fencing token is still the current one, and the lease ends with the write.
    pub lease: Option<crate::Lease>,
    /// Set when the identity switched to another upstream account: (id, name).
    pub upstream_account: Option<(String, String)>,
    /// Whether the new credential renews its access token without a person (a refresh
    /// token, the client-credentials grant); None: not known, the expiry sweep finds out.
    pub access_renews: Option<bool>,
}

/// A health transition and everything it causes, applied in one transaction.
#[derive(Debug, Clone)]
pub struct HealthChange {
    pub identity: IdentityId,
    pub transition: Transition,
    pub at: DateTime<Utc>,
    /// What happens to the identity's incident.
    pub incident: IncidentChange,
    /// Set these pipelines' state.
    pub pipelines: Vec<(PipelineId, PipelineState)>,
    /// Record these changes of trust (e.g. the swap of a reauthorization).
    pub audit: Vec<AuditRecord>,
    /// Put these in the outbox.
    pub notifications: Vec<Notification>,
    /// Record these reauthorize links (the ones the messages carry).
    pub reauth_links: Vec<crate::NewReauthLink>,
    /// Swap the credential (reauthorization).
    pub credential: Option<CredentialUpdate>,
    /// Record these windows (e.g. the ones the failure left missing).
    pub ledger: Vec<LedgerEntry>,
    /// The windows of the identity's pipelines missing because it was broken now await the
    /// back-fill (a recovery): read and rewritten in this transaction, after the identity's
    /// row (see `ledger::await_backfill`).
    pub backfill: bool,
    /// The claim of the run that makes this change: checked first, so a run that lost its
    /// claim changes nothing.
    pub fence: Option<crate::PipelineClaim>,
}

/// What a health change does to the identity's incident.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IncidentChange {
    #[default]
    None,
    /// Open this new incident.
    Open(Incident),
    /// Continue this (recovering or recently closed) incident: failing again.
    Reopen {
        id: IncidentId,
        failure: Failure,
        origin: Option<FailedOperation>,
        /// The pipelines it affects now.
        affected: Vec<gapless_core::PipelineId>,
    },
    /// The open incident affects more pipelines now.
    Widen {
        id: IncidentId,
        affected: Vec<gapless_core::PipelineId>,
    },
    /// The failure is over: the open incident recovers while its windows are back-filled.
    Recover,
    /// Close the open or recovering incident without a recovery report (an operator paused
    /// the identity).
    Close,
}

impl HealthChange {
    /// A transition with no other consequence.
    pub fn transition_only(
        identity: IdentityId,
        transition: Transition,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            identity,
            transition,
            at,
            incident: IncidentChange::None,
            pipelines: vec![],
            notifications: vec![],
            reauth_links: vec![],
            credential: None,
            ledger: vec![],
            backfill: false,
            audit: vec![],
            fence: None,
        }
    }
}

/// Identities that could be read, and the rows that could not.
#[derive(Debug, Default)]
pub struct Checked {
    pub identities: Vec<Identity>,
    /// Each row that could not be read: its id, and why.
    pub unreadable: Vec<(String, StoreError)>,
}

/// A page of what a sweep reads (the refresh and the expiry sweeps): each identity with
/// whether its credential is known to renew its access token by itself (`None`: not known
/// yet), and the rows that cannot be read.
#[derive(Debug, Default)]
pub struct CandidatePage {
    pub identities: Vec<(Identity, Option<bool>)>,
    pub unreadable: Vec<(String, StoreError)>,
    /// Where the next page starts (the last row's label and id); None on the last page.
    pub next: Option<(String, String)>,
}

/// Decode identity rows; a row that cannot be decoded is logged and named, not fatal.
pub(crate) fn checked(rows: Vec<AnyRow>) -> Checked {
    let mut checked = Checked::default();
    for row in rows {
        match identity_from_row(&row) {
            Ok(identity) => checked.identities.push(identity),
            Err(error) => {
                let id = get_str(&row, "id").unwrap_or_default();
                tracing::error!(identity = %id, %error, "an identity row cannot be read");
                checked.unreadable.push((id, error));
            }
        }
    }
    checked
}

pub(crate) const COLUMNS: &str = "id, provider, label, upstream_account_id, upstream_account_name, scopes, owners, granted_at, access_expires_at, refresh_expires_at, authorization_expires_at, health, created_at, updated_at, token_obtained_at, refresh_in_flight_since, last_probe_at, allow_any_account, settings";

fn identity_from_row(row: &AnyRow) -> Result<Identity, StoreError> {
    Ok(Identity {
        id: get_id(row, "id")?,
        provider: get_str(row, "provider")?,
        label: get_str(row, "label")?,
        upstream_account_id: get_opt_str(row, "upstream_account_id")?,
        upstream_account_name: get_opt_str(row, "upstream_account_name")?,
        scopes: get_json(row, "scopes")?,
        owners: get_json(row, "owners")?,
        granted_at: get_opt_ts(row, "granted_at")?,
        access_expires_at: get_opt_ts(row, "access_expires_at")?,
        refresh_expires_at: get_opt_ts(row, "refresh_expires_at")?,
        authorization_expires_at: get_opt_ts(row, "authorization_expires_at")?,
        health: get_json(row, "health")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        token_obtained_at: get_opt_ts(row, "token_obtained_at")?,
        refresh_in_flight_since: get_opt_ts(row, "refresh_in_flight_since")?,
        last_probe_at: get_opt_ts(row, "last_probe_at")?,
        allow_any_account: get_i64(row, "allow_any_account")? != 0,
        settings: get_opt_str(row, "settings")?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    what: "column settings".into(),
                    detail: e.to_string(),
                })
            })
            .transpose()?
            .unwrap_or_default(),
    })
}

impl Store {
    pub async fn insert_identity(
        &self,
        new: &NewIdentity,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let i = &new.identity;
        let sql = format!(
            "INSERT INTO identities ({COLUMNS}, health_state, credential_key_version, credential, credential_generation, probe_due_at, access_renews) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, 1, $23, $24)"
        );
        let mut tx = self.begin().await?;
        sqlx::query(&sql)
            .bind(i.id.to_string())
            .bind(&i.provider)
            .bind(&i.label)
            .bind(&i.upstream_account_id)
            .bind(&i.upstream_account_name)
            .bind(json(&i.scopes)?)
            .bind(json(&i.owners)?)
            .bind(ts_opt(i.granted_at))
            .bind(ts_opt(i.access_expires_at))
            .bind(ts_opt(i.refresh_expires_at))
            .bind(ts_opt(i.authorization_expires_at))
            .bind(json(&i.health)?)
            .bind(ts(i.created_at))
            .bind(ts(i.updated_at))
            .bind(ts_opt(i.token_obtained_at))
            .bind(ts_opt(i.refresh_in_flight_since))
            .bind(ts_opt(i.last_probe_at))
            .bind(i64::from(i.allow_any_account))
            .bind(if i.settings.is_empty() {
                None
            } else {
                Some(json(&i.settings)?)
            })
            .bind(i.health.name())
            .bind(i64::from(new.sealed.key_version.0))
            .bind(new.sealed.ciphertext.clone())
            .bind(ts_opt(new.next_probe_due))
            .bind(new.access_renews.map(i64::from))
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Duplicate { .. } => StoreError::Conflict(format!(
                    "an identity labelled {:?} already exists",
                    i.label
                )),
                other => other,
            })?;
        crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    pub async fn identity(&self, id: IdentityId) -> Result<Identity, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM identities WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("identity {id}"),
            })?;
        identity_from_row(&row)
    }

    /// Find by label or id.
    pub async fn find_identity(&self, label_or_id: &str) -> Result<Identity, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM identities WHERE label = $1 OR id = $1");
        let row = sqlx::query(&sql)
            .bind(label_or_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("identity {label_or_id:?}"),
            })?;
        identity_from_row(&row)
    }

    /// Every identity that can be read. A row that cannot (a corrupt health document, say)
    /// is left out and logged, so one bad row does not stop the work on all the others;
    /// [`Store::list_identities_checked`] names them.
    pub async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        Ok(self.list_identities_checked().await?.identities)
    }

    /// Every identity that can be read, and the rows that cannot: (id, why).
    pub async fn list_identities_checked(&self) -> Result<Checked, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM identities ORDER BY label");
        Ok(checked(sqlx::query(&sql).fetch_all(self.pool()).await?))
    }

    /// The identities whose access token may be due for renewal, among those not waiting
    /// for a person, each with whether its credential is known to renew by itself: its
    /// known expiry at or before `expiring_before`; or no known expiry where the credential
    /// may renew (not known yet, or known to and obtained at or before `obtained_before`);
    /// or a refresh in flight. Found by index: a tick reads these, not every identity, and
    /// not the keys, passwords and unrenewable tokens once they are known as such. The rows
    /// that cannot be read are named as by [`Store::list_identities_checked`].
    ///
    /// One page of at most `limit` (1 to 10,000) rows in label order, from after `after`
    /// (a page's `next`): a sweep holds one page at a time, however many are due at once.
    pub async fn refresh_candidates(
        &self,
        expiring_before: DateTime<Utc>,
        obtained_before: DateTime<Utc>,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> Result<CandidatePage, StoreError> {
        self.candidate_page(
            "health_state NOT IN ('needs_reauth', 'paused') \
             AND (access_expires_at <= $1 \
                  OR refresh_in_flight_since IS NOT NULL \
                  OR (access_expires_at IS NULL AND access_renews IS NULL) \
                  OR (access_expires_at IS NULL AND access_renews = 1 \
                      AND COALESCE(token_obtained_at, granted_at, created_at) <= $2))",
            (expiring_before, obtained_before),
            after,
            limit,
        )
        .await
    }

    /// The identities with an expiry after `after` and at or before `until` that a person
    /// may have to renew: an authorization's, a refresh token's, or an access token's
    /// when the credential does not renew it by itself (or that is not known yet), each
    /// with what is known of that (found by index: the expiry sweep reads these). Paged as
    /// [`Store::refresh_candidates`] is, from after `from` (a page's `next`).
    pub async fn expiry_candidates(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        from: Option<&(String, String)>,
        limit: u32,
    ) -> Result<CandidatePage, StoreError> {
        self.candidate_page(
            "((authorization_expires_at > $1 AND authorization_expires_at <= $2) \
              OR (refresh_expires_at > $1 AND refresh_expires_at <= $2) \
              OR (access_expires_at > $1 AND access_expires_at <= $2 \
                  AND (access_renews IS NULL OR access_renews = 0)))",
            (after, until),
            from,
            limit,
        )
        .await
    }

    /// One page of the identities matching `condition` (this store's SQL over the instants
    /// `$1` and `$2`), each with what is known of its renewal: at most `limit` (1 to
    /// 10,000) rows in (label, id) order from after `after`; `next` is set when the page is
    /// full. Label is unique, so no row is skipped or read twice across pages (unless it is
    /// renamed during the sweep: the next sweep reads it).
    async fn candidate_page(
        &self,
        condition: &'static str,
        (first, second): (DateTime<Utc>, DateTime<Utc>),
        after: Option<&(String, String)>,
        limit: u32,
    ) -> Result<CandidatePage, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS}, access_renews FROM identities WHERE {condition} \
             AND ($3 IS NULL OR label > $3 OR (label = $3 AND id > $4)) \
             ORDER BY label, id LIMIT $5"
        );
        let limit = limit.clamp(1, 10_000);
        let rows = sqlx::query(&sql)
            .bind(ts(first))
            .bind(ts(second))
            .bind(after.map(|(label, _)| label.clone()))
            .bind(after.map(|(_, id)| id.clone()))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        let mut found = CandidatePage::default();
        if rows.len() == limit as usize
            && let Some(last) = rows.last()
        {
            found.next = Some((get_str(last, "label")?, get_str(last, "id")?));
        }
        for row in &rows {
            match identity_from_row(row).and_then(|identity| {
                let renews: Option<i64> = row.try_get("access_renews")?;
                Ok((identity, renews.map(|r| r != 0)))
            }) {
                Ok(candidate) => found.identities.push(candidate),
                Err(error) => {
                    let id = get_str(row, "id").unwrap_or_default();
                    tracing::error!(identity = %id, %error, "an identity row cannot be read");
                    found.unreadable.push((id, error));
                }
            }
        }
        Ok(found)
    }

    /// The identities matching `condition` (this store's SQL, with the instant `at` as
    /// `$1`, and its order), read as the sweeps read them.
    async fn identities_at(
        &self,
        condition: &'static str,
        at: DateTime<Utc>,
    ) -> Result<Checked, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM identities WHERE {condition}");
        let rows = sqlx::query(&sql)
            .bind(ts(at))
            .fetch_all(self.pool())
            .await?;
        Ok(checked(rows))
    }

    /// Record whether the identity's credential renews its access token by itself, as
    /// learned from the credential of `generation` (None: true of any credential the
    /// identity's provider gives); a credential written since keeps its own answer.
    pub async fn record_access_renews(
        &self,
        id: IdentityId,
        renews: bool,
        generation: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET access_renews = $1 \
             WHERE id = $2 AND ($3 IS NULL OR credential_generation = $3)",
        )
        .bind(i64::from(renews))
        .bind(id.to_string())
        .bind(generation)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The identities in health state `state` (`healthy`, `degraded`, …), by index.
    pub async fn identities_in_state(&self, state: &str) -> Result<Vec<Identity>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM identities WHERE health_state = $1 ORDER BY label");
        let rows = sqlx::query(&sql).bind(state).fetch_all(self.pool()).await?;
        Ok(checked(rows).identities)
    }

    /// How many identities of `provider` are usable or degraded (not waiting for a person,
    /// not paused).
    pub async fn working_identities_of(&self, provider: &str) -> Result<usize, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM identities \
             WHERE health_state IN ('healthy', 'expiring', 'degraded') AND provider = $1",
        )
        .bind(provider)
        .fetch_one(self.pool())
        .await?;
        Ok(usize::try_from(get_i64(&row, "n")?).unwrap_or(0))
    }

    /// The identity, its sealed credential and the credential's generation, read together
    /// (one row, one snapshot).
    pub async fn identity_with_credential(
        &self,
        id: IdentityId,
    ) -> Result<(Identity, Sealed, i64), StoreError> {
        with_credential(&mut *self.pool().acquire().await?, id).await
    }

    /// The sealed credential and its generation (the fencing token for updates).
    pub async fn sealed_credential(&self, id: IdentityId) -> Result<(Sealed, i64), StoreError> {
        let row = sqlx::query(
            "SELECT credential_key_version, credential, credential_generation FROM identities WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("identity {id}"),
        })?;
        sealed_from_row(&row)
    }

    /// Replace the credential if nobody else did since `expected_generation`; returns the
    /// new generation.
    pub async fn update_credential(
        &self,
        id: IdentityId,
        update: &CredentialUpdate,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let generation = write_credential(&mut tx, id, update, at).await?;
        let record = audit.clone().with("generation", generation);
        crate::audit::append(&mut tx, &[record]).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(generation)
    }

    /// Before a refresh request is sent, in one transaction: take the identity's refresh
    /// lease, read the identity again (another instance may have refreshed since
    /// `expected_generation` was read, or died after sending), and record that a refresh
    /// may be in flight. Nothing is taken or written unless it starts. `resend`: an intent
    /// an earlier attempt left may be overwritten (the provider's refresh tokens do not
    /// rotate, so sending again is safe).
    pub async fn start_refresh(
        &self,
        id: IdentityId,
        lease: &LeaseRequest<'_>,
        expected_generation: i64,
        resend: bool,
        at: DateTime<Utc>,
    ) -> Result<RefreshStart, StoreError> {
        let mut tx = self.begin().await?;
        let Some(held) =
            crate::leases::take(&mut tx, lease.name, lease.holder, lease.ttl, at).await?
        else {
            tx.rollback().await?;
            return Ok(RefreshStart::Busy);
        };
        let (identity, sealed, generation) = with_credential(&mut tx, id).await?;
        if generation != expected_generation {
            tx.rollback().await?;
            return Ok(RefreshStart::Changed {
                identity,
                sealed,
                generation,
            });
        }
        if let (Some(since), false) = (identity.refresh_in_flight_since, resend) {
            tx.rollback().await?;
            return Ok(RefreshStart::InFlight { since });
        }
        sqlx::query("UPDATE identities SET refresh_in_flight_since = $1 WHERE id = $2")
            .bind(ts(at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RefreshStart::Started {
            lease: held,
            identity,
        })
    }

    /// A refresh ended without a new credential: the lease given back and, with
    /// `clear_intent` (the provider answered, or nothing was sent), the intent cleared; one
    /// transaction. Only while the lease is still ours: after it ran out, the intent may be
    /// the next holder's, and is left alone.
    pub async fn end_refresh(
        &self,
        id: IdentityId,
        lease: &crate::Lease,
        clear_intent: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if crate::leases::give_back(&mut tx, lease).await? && clear_intent {
            sqlx::query("UPDATE identities SET refresh_in_flight_since = NULL WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Was the expiry at `expires_at` already warned about at `horizon`?
    pub async fn expiry_warned(
        &self,
        id: IdentityId,
        expires_at: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS hit FROM expiry_warnings WHERE identity_id = $1 AND expires_at = $2 AND horizon_secs = $3",
        )
        .bind(id.to_string())
        .bind(ts(expires_at))
        .bind(horizon.num_seconds())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Record that a probe ran at `at`; the next one is due at `next_due`.
    pub async fn mark_probed(
        &self,
        id: IdentityId,
        at: DateTime<Utc>,
        next_due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET last_probe_at = $1, probe_due_at = $2 WHERE id = $3")
            .bind(ts(at))
            .bind(ts(next_due))
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Claim the due probe of an identity: true for the one instance that moves its last
    /// probe from `seen` (what it read) to `at` (and its next one to `next_due`); false
    /// when another instance got there first.
    pub async fn claim_probe(
        &self,
        id: IdentityId,
        seen: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
        next_due: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let query = match seen {
            Some(seen) => sqlx::query(
                "UPDATE identities SET last_probe_at = $1, probe_due_at = $2 WHERE id = $3 AND last_probe_at = $4",
            )
            .bind(ts(at))
            .bind(ts(next_due))
            .bind(id.to_string())
            .bind(ts(seen)),
            None => sqlx::query(
                "UPDATE identities SET last_probe_at = $1, probe_due_at = $2 WHERE id = $3 AND last_probe_at IS NULL",
            )
            .bind(ts(at))
            .bind(ts(next_due))
            .bind(id.to_string()),
        };
        Ok(query.execute(self.pool()).await?.rows_affected() == 1)
    }

    /// Record when the next probe of an identity last probed at `seen` is due (learned by
    /// the sweep for a row that did not say); nothing when it was probed since.
    pub async fn set_probe_due(
        &self,
        id: IdentityId,
        seen: Option<DateTime<Utc>>,
        next_due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = match seen {
            Some(seen) => sqlx::query(
                "UPDATE identities SET probe_due_at = $1 WHERE id = $2 AND last_probe_at = $3",
            )
            .bind(ts(next_due))
            .bind(id.to_string())
            .bind(ts(seen)),
            None => sqlx::query(
                "UPDATE identities SET probe_due_at = $1 WHERE id = $2 AND last_probe_at IS NULL",
            )
            .bind(ts(next_due))
            .bind(id.to_string()),
        };
        query.execute(self.pool()).await?;
        Ok(())
    }

    /// Identities whose next probe is due at or before `now`, or not known yet, the
    /// longest-waiting first (found by index: a tick reads what is due, not every identity).
    pub async fn identities_probe_due(&self, now: DateTime<Utc>) -> Result<Checked, StoreError> {
        self.identities_at(
            "probe_due_at IS NULL OR probe_due_at <= $1 ORDER BY probe_due_at",
            now,
        )
        .await
    }

    /// A run that got through with the identity on `resource` proved at `at` what a probe
    /// would, when no pipeline of the identity reads another resource (a probe checks each
    /// one): its next probe is due at `next_due` (never moved back).
    pub async fn record_proven(
        &self,
        id: IdentityId,
        resource: &str,
        at: DateTime<Utc>,
        next_due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET last_probe_at = $1, probe_due_at = $4 WHERE id = $2 AND (last_probe_at IS NULL OR last_probe_at < $1) \
             AND NOT EXISTS (SELECT 1 FROM pipelines WHERE source_identity_id = $2 AND source_resource <> $3)",
        )
        .bind(ts(at))
        .bind(id.to_string())
        .bind(resource)
        .bind(ts(next_due))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Replace the owners of an identity.
    pub async fn set_owners(
        &self,
        id: IdentityId,
        owners: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET owners = $1, updated_at = $2 WHERE id = $3")
            .bind(json(&owners)?)
            .bind(ts(at))
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether the identity may be reconnected with another upstream account.
    pub async fn set_allow_any_account(
        &self,
        id: IdentityId,
        allow: bool,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET allow_any_account = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(allow))
            .bind(ts(at))
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Rename an identity.
    pub async fn rename_identity(
        &self,
        id: IdentityId,
        label: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE identities SET label = $1, updated_at = $2 WHERE id = $3")
            .bind(label)
            .bind(ts(at))
            .bind(id.to_string())
            .execute(self.pool())
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Duplicate { .. } => {
                    StoreError::Conflict(format!("an identity labelled {label:?} already exists"))
                }
                other => other,
            })?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("identity {id}"),
            });
        }
        Ok(())
    }

    /// Record what a probe learned.
    pub async fn update_probe_facts(
        &self,
        id: IdentityId,
        upstream_account_id: &str,
        upstream_account_name: &str,
        scopes: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE identities SET upstream_account_id = $1, upstream_account_name = $2, scopes = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(upstream_account_id)
        .bind(upstream_account_name)
        .bind(json(&scopes)?)
        .bind(ts(at))
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Apply a health transition and its consequences in one transaction.
    pub async fn apply_health(&self, change: &HealthChange) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        write_change(&mut tx, self.backend(), change).await?;
        tx.commit().await?;
        self.wrote_to_outbox(change.notifications.len());
        self.seal_after_write().await;
        Ok(())
    }

    /// An expiry warning: the `expiring` state, the warning's messages and the record that
    /// this expiry was warned about at this horizon, in one transaction. False (nothing
    /// written) when the warning was recorded already, by this instance or another.
    pub async fn warn_expiry(
        &self,
        change: &HealthChange,
        expires_at: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO expiry_warnings (identity_id, expires_at, horizon_secs, warned_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (identity_id, expires_at, horizon_secs) DO NOTHING",
        )
        .bind(change.identity.to_string())
        .bind(ts(expires_at))
        .bind(horizon.num_seconds())
        .bind(ts(change.at))
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        write_change(&mut tx, self.backend(), change).await?;
        tx.commit().await?;
        self.wrote_to_outbox(change.notifications.len());
        self.seal_after_write().await;
        Ok(true)
    }

    /// The identity's transitions, oldest first: (at, from, to, reason).
    pub async fn health_history(
        &self,
        id: IdentityId,
    ) -> Result<Vec<(DateTime<Utc>, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, from_state, to_state, reason FROM health_transitions WHERE identity_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get_ts(r, "at")?,
                    get_str(r, "from_state")?,
                    get_str(r, "to_state")?,
                    get_str(r, "reason")?,
                ))
            })
            .collect()
    }

    /// Delete an identity; refused (naming them) while pipelines use it.
    pub async fn delete_identity(
        &self,
        id: IdentityId,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let identity = {
            let sql = format!("SELECT {COLUMNS} FROM identities WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("identity {id}"),
                })?;
            identity_from_row(&row)?
        };
        let users = sqlx::query(
            "SELECT name FROM pipelines WHERE source_identity_id = $1 OR destination_identity_id = $1 ORDER BY name",
        )
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let names: Result<Vec<String>, StoreError> =
                users.iter().map(|r| get_str(r, "name")).collect();
            return Err(StoreError::IdentityInUse {
                label: identity.label,
                pipelines: names?.join(", "),
            });
        }
        sqlx::query("DELETE FROM identities WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    /// How many credentials each master key version seals: (version, count).
    pub async fn credentials_per_key_version(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        sqlx::query(
            "SELECT credential_key_version AS version, COUNT(*) AS n FROM identities GROUP BY credential_key_version ORDER BY credential_key_version",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                get_u32(r, "version")?,
                u64::try_from(get_i64(r, "n")?).unwrap_or(0),
            ))
        })
        .collect()
    }

    /// Up to `limit` credentials sealed with a key version other than `current`:
    /// (identity, sealed, generation).
    pub async fn credentials_not_sealed_with(
        &self,
        current: u32,
        limit: i64,
    ) -> Result<Vec<(IdentityId, Sealed, i64)>, StoreError> {
        sqlx::query(
            "SELECT id, credential_key_version, credential, credential_generation FROM identities WHERE credential_key_version <> $1 ORDER BY id LIMIT $2",
        )
        .bind(i64::from(current))
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            let (sealed, generation) = sealed_from_row(r)?;
            Ok((get_id(r, "id")?, sealed, generation))
        })
        .collect()
    }

    /// Replace a credential's ciphertext by the same credential sealed with another key —
    /// only if it is still generation `generation`. The generation does not change: a
    /// refresh that read the old ciphertext commits as it would have (its fencing holds).
    /// False when the credential changed meanwhile (it was sealed anew with the current key).
    pub async fn reseal_credential(
        &self,
        id: IdentityId,
        generation: i64,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE identities SET credential = $1, credential_key_version = $2 WHERE id = $3 AND credential_generation = $4",
        )
        .bind(sealed.ciphertext.clone())
        .bind(i64::from(sealed.key_version.0))
        .bind(id.to_string())
        .bind(generation)
        .execute(self.pool())
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// The fingerprints recorded per master key version.
    pub async fn key_fingerprints(&self) -> Result<Vec<(u32, String)>, StoreError> {
        sqlx::query("SELECT version, fingerprint FROM key_checks ORDER BY version")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| Ok((get_u32(r, "version")?, get_str(r, "fingerprint")?)))
            .collect()
    }

    /// Record the fingerprint of a key version (the first one recorded stays).
    pub async fn record_key_fingerprint(
        &self,
        version: u32,
        fingerprint: &str,
        at: DateTime<Utc>,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO key_checks (version, fingerprint, created_at) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
        )
        .bind(i64::from(version))
        .bind(fingerprint)
        .bind(ts(at))
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() > 0 {
            crate::audit::append(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    /// One credential sealed with key `version`, if any: (identity id, sealed).
    pub async fn credential_sealed_with(
        &self,
        version: u32,
    ) -> Result<Option<(String, Sealed)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, credential_key_version, credential, credential_generation FROM identities WHERE credential_key_version = $1 LIMIT 1",
        )
        .bind(i64::from(version))
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((get_str(&r, "id")?, sealed_from_row(&r)?.0)))
            .transpose()
    }

    /// The open incident of an identity, if any.
    pub async fn open_incident_id(&self, id: IdentityId) -> Result<Option<IncidentId>, StoreError> {
        let row =
            sqlx::query("SELECT id FROM incidents WHERE identity_id = $1 AND closed_at IS NULL")
                .bind(id.to_string())
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| get_id(&r, "id")).transpose()
    }
}

/// Write one health change (see [`Store::apply_health`]) in `tx`.
async fn write_change(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: crate::Backend,
    change: &HealthChange,
) -> Result<(), StoreError> {
    set_health(tx, backend, change).await?;
    let mut audit = change.audit.clone();
    if let Some(update) = &change.credential {
        let generation = write_credential(tx, change.identity, update, change.at).await?;
        for record in &mut audit {
            if record.action == gapless_core::AuditAction::CredentialSwapped {
                record.detail.insert("generation".into(), generation.into());
            }
        }
    }
    write_incident_change(tx, change.identity, change.at, &change.incident).await?;
    for (pipeline, state) in &change.pipelines {
        crate::pipelines::set_state(tx, *pipeline, state, change.at).await?;
    }
    crate::ledger::write_entries(tx, &change.ledger).await?;
    if change.backfill {
        crate::ledger::await_backfill(tx, change.identity, change.at).await?;
    }
    for notification in &change.notifications {
        crate::notifications::insert(tx, notification).await?;
    }
    crate::access::insert_links(tx, &change.reauth_links).await?;
    audit.extend(change.reauth_links.iter().map(|l| l.audit.clone()));
    // Last: the log's lock is held from here to the commit only.
    crate::audit::append(tx, &audit).await?;
    Ok(())
}

/// The identity's health, its row locked against other changes until the transaction ends
/// on PostgreSQL (`FOR NO KEY UPDATE`: rows that refer to the identity may still be
/// inserted; a SQLite write transaction holds the whole database already).
pub(crate) async fn health_locked(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: crate::Backend,
    identity: IdentityId,
) -> Result<Health, StoreError> {
    let lock = match backend {
        crate::Backend::Postgres => " FOR NO KEY UPDATE",
        crate::Backend::Sqlite => "",
    };
    let row = sqlx::query(format!("SELECT health FROM identities WHERE id = $1{lock}").as_str())
        .bind(identity.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("identity {identity}"),
        })?;
    get_json(&row, "health")
}

/// The identity's new health, if its health is still the one the change was decided on
/// (and the change's claim still holds), with the transition recorded.
async fn set_health(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: crate::Backend,
    change: &HealthChange,
) -> Result<(), StoreError> {
    // Compare and set: the change was decided on `transition.from`; if the identity's
    // health is another now (a concurrent failure, probe or reauthorization committed
    // first), nothing is written. On PostgreSQL the row stays locked until the commit.
    let current = health_locked(tx, backend, change.identity).await?;
    if current != change.transition.from {
        return Err(StoreError::StaleHealth {
            identity: change.identity.to_string(),
        });
    }
    // After the identity's row: every health change locks the identity first, then
    // pipelines, so two failing runs of one identity never wait for each other in a circle.
    if let Some(claim) = &change.fence {
        crate::claims::check(tx, claim, change.at).await?;
    }
    let to: &Health = &change.transition.to;
    let updated = sqlx::query(
        "UPDATE identities SET health_state = $1, health = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(to.name())
    .bind(json(to)?)
    .bind(ts(change.at))
    .bind(change.identity.to_string())
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            what: format!("identity {}", change.identity),
        });
    }
    if change.transition.is_change() {
        sqlx::query(
                "INSERT INTO health_transitions (identity_id, at, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(change.identity.to_string())
            .bind(ts(change.at))
            .bind(change.transition.from.name())
            .bind(to.name())
            .bind(&change.transition.reason)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// What happens to the identity's incident.
async fn write_incident_change(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    identity: IdentityId,
    at: DateTime<Utc>,
    incident: &IncidentChange,
) -> Result<(), StoreError> {
    match incident {
        IncidentChange::None => {}
        IncidentChange::Open(incident) => crate::incidents::insert(tx, incident).await?,
        IncidentChange::Reopen {
            id,
            failure,
            origin,
            affected,
        } => {
            crate::incidents::reopen(tx, *id, failure, origin.as_ref(), affected).await?;
        }
        IncidentChange::Widen { id, affected } => {
            crate::incidents::widen(tx, *id, affected).await?;
        }
        IncidentChange::Recover => {
            crate::incidents::start_recovery(tx, identity, at).await?;
        }
        IncidentChange::Close => {
            crate::incidents::close(tx, identity, at).await?;
        }
    }
    Ok(())
}

/// The identity, its sealed credential and the credential's generation, from one row.
async fn with_credential(
    conn: &mut AnyConnection,
    id: IdentityId,
) -> Result<(Identity, Sealed, i64), StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, credential_key_version, credential, credential_generation FROM identities WHERE id = $1"
    );
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("identity {id}"),
        })?;
    let identity = identity_from_row(&row)?;
    let (sealed, generation) = sealed_from_row(&row)?;
    Ok((identity, sealed, generation))
}

fn sealed_from_row(row: &AnyRow) -> Result<(Sealed, i64), StoreError> {
    let version = get_i64(row, "credential_key_version")?;
    let version = u32::try_from(version).map_err(|_| StoreError::Corrupt {
        what: "credential key version".into(),
        detail: version.to_string(),
    })?;
    Ok((
        Sealed {
            key_version: KeyVersion(version),
            ciphertext: get_bytes(row, "credential")?,
        },
        get_i64(row, "credential_generation")?,
    ))
}

async fn write_credential(
    conn: &mut AnyConnection,
    id: IdentityId,
    update: &CredentialUpdate,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    if let Some(lease) = &update.lease {
        crate::leases::check_and_end(&mut *conn, lease).await?;
    }
    let scopes = update.scopes.as_ref().map(json).transpose()?;
    let result = sqlx::query(
        "UPDATE identities SET credential_key_version = $1, credential = $2, \
         credential_generation = credential_generation + 1, access_expires_at = $3, \
         refresh_expires_at = $4, scopes = COALESCE($5, scopes), granted_at = COALESCE($6, granted_at), \
         updated_at = $7, token_obtained_at = $7, refresh_in_flight_since = NULL, \
         authorization_expires_at = COALESCE($10, authorization_expires_at), \
         upstream_account_id = COALESCE($11, upstream_account_id), \
         upstream_account_name = COALESCE($12, upstream_account_name), access_renews = $13 \
         WHERE id = $8 AND credential_generation = $9",
    )
    .bind(i64::from(update.sealed.key_version.0))
    .bind(update.sealed.ciphertext.clone())
    .bind(ts_opt(update.access_expires_at))
    .bind(ts_opt(update.refresh_expires_at))
    .bind(scopes)
    .bind(ts_opt(update.granted_at))
    .bind(ts(at))
    .bind(id.to_string())
    .bind(update.expected_generation)
    .bind(ts_opt(update.authorization_expires_at))
    .bind(update.upstream_account.as_ref().map(|(id, _)| id.clone()))
    .bind(update.upstream_account.as_ref().map(|(_, name)| name.clone()))
    .bind(update.access_renews.map(i64::from))
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "the credential of identity {id} changed since generation {} was read; not overwritten",
            update.expected_generation
        )));
    }
    Ok(update.expected_generation + 1)
}
