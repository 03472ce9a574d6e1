//! The audit log: an append-only table of every change of trust, each entry chained to the
//! one before by a SHA-256 hash, so that a removed or edited entry is found by
//! [`Store::verify_audit`].
//!
//! An entry is written in the transaction of the change it records (see the `audit`
//! arguments of the store's write methods), so a change is never committed without its
//! entry: into `audit_pending`, with no lock, so that changes of unrelated identities never
//! wait for each other. Right after the commit the pending entries are chained ("sealed")
//! in batches: moved to `audit_log` in the order they are found, `seq` the previous entry's
//! plus one, under a transaction-scoped advisory lock on PostgreSQL (the write lock of
//! `BEGIN IMMEDIATE` on SQLite). One task of a process seals at a time and takes every
//! entry pending then; the scheduler's tick and every reader of the log seal first, so an
//! entry left pending by a process that died is chained by the next one. Until it is
//! sealed (milliseconds), an entry is protected by the database's permissions only.

use chrono::{DateTime, Utc};
use gapless_core::{Actor, AuditAction, AuditEntry, AuditRecord, IdentityId};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{AnyConnection, any::AnyRow};

use crate::{
    Backend, Store, StoreError,
    codec::{get_i64, get_id, get_opt_str, get_str, get_ts, ts},
};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The largest page [`Store::audit_entries`] returns.
pub const MAX_AUDIT_PAGE: u32 = 10_000;

const COLUMNS: &str =
    "seq, at, actor_kind, actor, source, action, identity_id, subject, detail, prev_hash, hash";

/// Which entries to read, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub identity: Option<IdentityId>,
    /// Entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries after this sequence number (for paging).
    pub after: Option<i64>,
    /// At most this many (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: u32,
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub entries: u64,
    /// The last entry's sequence number and hash: kept elsewhere, it lets a later check
    /// notice entries removed from the end.
    pub head: Option<(i64, String)>,
    /// The first place the chain does not hold, if any.
    pub broken: Option<AuditBreak>,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    pub seq: i64,
    pub problem: String,
}

/// The stored text of an entry, as hashed.
struct Stored {
    seq: i64,
    at: String,
    actor_kind: String,
    actor: String,
    source: Option<String>,
    action: String,
    identity_id: Option<String>,
    subject: String,
    detail: String,
    prev_hash: String,
}

impl Stored {
    fn of(seq: i64, record: &AuditRecord, prev_hash: &str) -> Result<Self, StoreError> {
        Ok(Self {
            seq,
            at: ts(record.at),
            actor_kind: record.actor.kind().to_string(),
            actor: record.actor.name().to_string(),
            source: record.source.clone(),
            action: record.action.as_str().to_string(),
            identity_id: record.identity.map(|id| id.to_string()),
            subject: record.subject.clone(),
            detail: crate::codec::json(&record.detail)?,
            prev_hash: prev_hash.to_string(),
        })
    }

    /// An entry's fields as read from a row (of either table), at its place in the chain.
    fn pending(row: &AnyRow, seq: i64, prev_hash: &str) -> Result<Self, StoreError> {
        Ok(Self {
            seq,
            at: get_str(row, "at")?,
            actor_kind: get_str(row, "actor_kind")?,
            actor: get_str(row, "actor")?,
            source: get_opt_str(row, "source")?,
            action: get_str(row, "action")?,
            identity_id: get_opt_str(row, "identity_id")?,
            subject: get_str(row, "subject")?,
            detail: get_str(row, "detail")?,
            prev_hash: prev_hash.to_string(),
        })
    }

    /// A chained entry and its stored hash.
    fn from_row(row: &AnyRow) -> Result<(Self, String), StoreError> {
        Ok((
            Self::pending(row, get_i64(row, "seq")?, &get_str(row, "prev_hash")?)?,
            get_str(row, "hash")?,
        ))
    }

    /// SHA-256 over every field, each length-prefixed (an absent field differs from an
    /// empty one), hex.
    fn hash(&self) -> String {
        fn field(hasher: &mut Sha256, value: Option<&str>) {
            match value {
                None => hasher.update([0u8]),
                Some(text) => {
                    hasher.update([1u8]);
                    hasher.update((text.len() as u64).to_be_bytes());
                    hasher.update(text.as_bytes());
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"gapless audit v1");
        hasher.update(self.seq.to_be_bytes());
        for value in [
            Some(self.at.as_str()),
            Some(self.actor_kind.as_str()),
            Some(self.actor.as_str()),
            self.source.as_deref(),
            Some(self.action.as_str()),
            self.identity_id.as_deref(),
            Some(self.subject.as_str()),
            Some(self.detail.as_str()),
            Some(self.prev_hash.as_str()),
        ] {
            field(&mut hasher, value);
        }
        hex::encode(hasher.finalize())
    }
}

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let (stored, hash) = Stored::from_row(row)?;
    let actor = Actor::from_parts(&stored.actor_kind, &stored.actor).ok_or_else(|| {
        StoreError::Corrupt {
            what: "column actor_kind".into(),
            detail: format!("{:?} is not a kind of actor", stored.actor_kind),
        }
    })?;
    let action = AuditAction::parse(&stored.action).ok_or_else(|| StoreError::Corrupt {
        what: "column action".into(),
        detail: format!("{:?} is not an audit action", stored.action),
    })?;
    let identity = match stored.identity_id {
        Some(_) => Some(get_id(row, "identity_id")?),
        None => None,
    };
    let detail = serde_json::from_str(&stored.detail).map_err(|e| StoreError::Corrupt {
        what: "column detail".into(),
        detail: e.to_string(),
    })?;
    Ok(AuditEntry {
        seq: stored.seq,
        record: AuditRecord {
            at: get_ts(row, "at")?,
            actor,
            source: stored.source,
            action,
            identity,
            subject: stored.subject,
            detail,
        },
        prev_hash: stored.prev_hash,
        hash,
    })
}

/// Write `records` as pending entries inside the caller's transaction; the commit is
/// followed by [`Store::seal_after_write`].
pub(crate) async fn append(
    conn: &mut AnyConnection,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    for record in records {
        let stored = Stored::of(0, record, "")?;
        sqlx::query(
            "INSERT INTO audit_pending (at, actor_kind, actor, source, action, identity_id, subject, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&stored.at)
        .bind(&stored.actor_kind)
        .bind(&stored.actor)
        .bind(&stored.source)
        .bind(&stored.action)
        .bind(&stored.identity_id)
        .bind(&stored.subject)
        .bind(&stored.detail)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert chained entries (one statement).
async fn insert_chained(
    conn: &mut AnyConnection,
    chained: &[(Stored, String)],
) -> Result<(), StoreError> {
    if chained.is_empty() {
        return Ok(());
    }
    let values = (0..chained.len())
        .map(|i| {
            let first = i * 11 + 1;
            let row = (first..first + 11)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO audit_log ({COLUMNS}) VALUES {values}");
    let mut query = sqlx::query(&sql);
    for (stored, hash) in chained {
        query = query
            .bind(stored.seq)
            .bind(stored.at.clone())
            .bind(stored.actor_kind.clone())
            .bind(stored.actor.clone())
            .bind(stored.source.clone())
            .bind(stored.action.clone())
            .bind(stored.identity_id.clone())
            .bind(stored.subject.clone())
            .bind(stored.detail.clone())
            .bind(stored.prev_hash.clone())
            .bind(hash.clone());
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Who seals in this process: one task at a time; a write while it runs makes it go round
/// once more, so no entry waits for the next write.
#[derive(Debug, Default)]
pub(crate) struct Sealer {
    running: tokio::sync::Mutex<()>,
    /// Entries may be pending (set after a write's commit, taken by the sealer).
    written: AtomicBool,
}

/// Entries chained per transaction of the sealer.
const SEAL_BATCH: usize = 500;

/// The columns of a pending entry, as stored.
const PENDING_COLUMNS: &str =
    "id, at, actor_kind, actor, source, action, identity_id, subject, detail";

impl Store {
    /// Append one record in a transaction of its own, for changes that are not in the
    /// database (provider definition files, the key file).
    pub async fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        append(&mut tx, std::slice::from_ref(record)).await?;
        tx.commit().await?;
        self.seal_after_write().await;
        Ok(())
    }

    /// After the commit of a change that wrote audit entries: seal them now, unless a task
    /// of this process is sealing (it goes round once more and takes them). A failure is
    /// logged and left to the next seal: the change and its entry are committed.
    pub(crate) async fn seal_after_write(&self) {
        // Set after the commit: a sealer that ran before it could not see the entries.
        self.sealer.written.store(true, Ordering::SeqCst);
        loop {
            let Ok(running) = self.sealer.running.try_lock() else {
                return;
            };
            while self.sealer.written.swap(false, Ordering::SeqCst) {
                if let Err(error) = self.seal_pending(true).await {
                    tracing::warn!(%error, "chaining audit entries failed; the next write or tick tries again");
                }
            }
            drop(running);
            // A write between the last round and the release found the lock taken.
            if !self.sealer.written.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Chain every pending audit entry (the scheduler's tick and the log's readers call
    /// this; writes seal their own). How many were chained.
    pub async fn seal_audit(&self) -> Result<u64, StoreError> {
        let _running = self.sealer.running.lock().await;
        self.sealer.written.store(false, Ordering::SeqCst);
        self.seal_pending(false).await
    }

    /// Move pending entries to the chain in batches until none is left. `known_pending`:
    /// a write just left some (else one indexed read first finds whether any is, with no
    /// transaction and no lock, which is what a tick with nothing pending costs).
    async fn seal_pending(&self, known_pending: bool) -> Result<u64, StoreError> {
        if !known_pending
            && sqlx::query("SELECT id FROM audit_pending ORDER BY id LIMIT 1")
                .fetch_optional(self.pool())
                .await?
                .is_none()
        {
            return Ok(0);
        }
        let mut sealed = 0u64;
        loop {
            let chained = self.seal_batch().await?;
            sealed += chained as u64;
            if chained < SEAL_BATCH {
                return Ok(sealed);
            }
        }
    }

    /// Chain up to [`SEAL_BATCH`] pending entries in one transaction; how many.
    async fn seal_batch(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('gapless audit log', 0))")
                .execute(&mut *tx)
                .await?;
        }
        // Read after the lock: what another sealer took is gone by now.
        let rows = sqlx::query(&format!(
            "SELECT {PENDING_COLUMNS} FROM audit_pending ORDER BY id LIMIT {SEAL_BATCH}"
        ))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (mut seq, mut prev) = match last {
            Some(row) => (get_i64(&row, "seq")?, get_str(&row, "hash")?),
            None => (0, GENESIS_HASH.to_string()),
        };
        let mut chained = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            seq = seq.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                what: "audit log".into(),
                detail: "sequence numbers exhausted".into(),
            })?;
            let stored = Stored::pending(row, seq, &prev)?;
            let hash = stored.hash();
            prev = hash.clone();
            ids.push(get_i64(row, "id")?);
            chained.push((stored, hash));
        }
        insert_chained(&mut tx, &chained).await?;
        // By id, not by range: an entry committed meanwhile with a lower id stays
        // pending for the next batch.
        let list = (1..=ids.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("DELETE FROM audit_pending WHERE id IN ({list})");
        let mut delete = sqlx::query(&sql);
        for id in &ids {
            delete = delete.bind(*id);
        }
        delete.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(chained.len())
    }

    /// Entries matching `filter`, oldest first (pending entries are chained first).
    pub async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.seal_audit().await?;
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1");
        let mut next = 2;
        if filter.identity.is_some() {
            sql.push_str(&format!(" AND identity_id = ${next}"));
            next += 1;
        }
        if filter.since.is_some() {
            sql.push_str(&format!(" AND at >= ${next}"));
        }
        sql.push_str(&format!(
            " ORDER BY seq LIMIT {}",
            filter.limit.clamp(1, MAX_AUDIT_PAGE)
        ));
        let mut query = sqlx::query(&sql).bind(filter.after.unwrap_or(0));
        if let Some(identity) = filter.identity {
            query = query.bind(identity.to_string());
        }
        if let Some(since) = filter.since {
            query = query.bind(ts(since));
        }
        query
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(entry_from_row)
            .collect()
    }

    /// Check the whole chain: sequence numbers without gaps from 1, each entry's
    /// `prev_hash` the hash of the one before, each hash recomputed. Reads in pages.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        self.seal_audit().await?;
        const PAGE: i64 = 1_000;
        let mut entries = 0u64;
        let mut last: Option<(i64, String)> = None;
        loop {
            let after = last.as_ref().map_or(0, |(seq, _)| *seq);
            let sql =
                format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT {PAGE}");
            let rows = sqlx::query(&sql).bind(after).fetch_all(self.pool()).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let (stored, hash) = Stored::from_row(row)?;
                let (expected_seq, expected_prev) = match &last {
                    Some((seq, hash)) => (seq.saturating_add(1), hash.as_str()),
                    None => (1, GENESIS_HASH),
                };
                let problem = if stored.seq != expected_seq {
                    Some(format!(
                        "entries {expected_seq} to {} are missing",
                        stored.seq.saturating_sub(1)
                    ))
                } else if stored.prev_hash != expected_prev {
                    Some("its link to the entry before does not match".to_string())
                } else if stored.hash() != hash {
                    Some("its content does not match its hash (edited)".to_string())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Ok(AuditVerification {
                        entries,
                        head: last,
                        broken: Some(AuditBreak {
                            seq: stored.seq,
                            problem,
                        }),
                    });
                }
                entries += 1;
                last = Some((stored.seq, hash));
            }
        }
        Ok(AuditVerification {
            entries,
            head: last,
            broken: None,
        })
    }

    /// The hash of entry `seq`, if it exists.
    pub async fn audit_hash(&self, seq: i64) -> Result<Option<String>, StoreError> {
        self.seal_audit().await?;
        let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| get_str(&r, "hash")).transpose()
    }
}
