//! Master key rotation: what each key version still seals, and re-sealing it with the newest
//! key, online, in batches, without disturbing a refresh in flight.

use std::collections::BTreeMap;

use crate::{Engine, EngineError};

/// What each master key version seals: credentials, and the bodies of messages not
/// delivered yet (their reauthorize links).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// The version new data is sealed with.
    pub current: u32,
    /// Credentials per key version.
    pub credentials: BTreeMap<u32, u64>,
    /// Pending messages per key version.
    pub pending_messages: BTreeMap<u32, u64>,
}

impl KeyUsage {
    /// Is anything still sealed with `version`?
    pub fn in_use(&self, version: u32) -> bool {
        self.credentials.get(&version).is_some_and(|n| *n > 0)
            || self.pending_messages.get(&version).is_some_and(|n| *n > 0)
    }
}

/// What one re-seal pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resealed {
    pub credentials: u64,
    pub messages: u64,
}

/// The key version of a sealed message body (`sealed:<version>:…`).
fn body_version(body: &str) -> Option<u32> {
    body.strip_prefix(crate::notices::SEALED_BODY)?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

/// Pending messages are read this many at a time.
const MESSAGE_PAGE: u32 = 500;

impl Engine {
    /// The next page of pending messages after `after` (moved on to its last), or None
    /// when there are no more.
    async fn pending_page(
        &self,
        after: &mut Option<gapless_core::NotificationId>,
    ) -> Result<Option<Vec<gapless_core::Notification>>, EngineError> {
        let page = self
            .store
            .pending_notifications(*after, MESSAGE_PAGE)
            .await?;
        *after = page.last().map(|n| n.id);
        Ok((!page.is_empty()).then_some(page))
    }

    /// What each key version seals now.
    pub async fn key_usage(&self) -> Result<KeyUsage, EngineError> {
        let mut usage = KeyUsage {
            current: self.vault.versions().last().map_or(0, |v| v.0),
            ..KeyUsage::default()
        };
        for (version, count) in self.store.credentials_per_key_version().await? {
            usage.credentials.insert(version, count);
        }
        let mut after = None;
        while let Some(page) = self.pending_page(&mut after).await? {
            for n in page {
                if let Some(version) = body_version(&n.body_text) {
                    *usage.pending_messages.entry(version).or_insert(0) += 1;
                }
            }
        }
        Ok(usage)
    }

    /// Re-seal with the newest key everything sealed with an older one, `batch` rows at a
    /// time; `progress(done)` after each batch. Safe while the scheduler runs: a credential
    /// refreshed meanwhile is sealed with the newest key by its refresh and skipped here.
    pub async fn reseal(
        &self,
        batch: usize,
        mut progress: impl FnMut(Resealed),
    ) -> Result<Resealed, EngineError> {
        let current = self.vault.versions().last().map_or(0, |v| v.0);
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut done = Resealed::default();
        // Rows that cannot be opened (a damaged row) are left for their health state; the
        // loop moves past them instead of meeting them again.
        let mut unopenable = std::collections::HashSet::new();
        loop {
            let rows = self
                .store
                .credentials_not_sealed_with(current, batch + unopenable.len() as i64)
                .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|(id, _, _)| !unopenable.contains(id))
                .collect();
            if rows.is_empty() {
                break;
            }
            for (id, sealed, generation) in rows {
                let row = id.to_string();
                let Ok(credential) = self.vault.open_credential(&row, &sealed) else {
                    tracing::error!(identity = %id, "a credential cannot be opened; not re-sealed");
                    unopenable.insert(id);
                    continue;
                };
                let resealed = self.vault.seal_credential(&row, &credential)?;
                if self
                    .store
                    .reseal_credential(id, generation, &resealed)
                    .await?
                {
                    done.credentials += 1;
                }
            }
            progress(done);
        }
        let mut after = None;
        while let Some(page) = self.pending_page(&mut after).await? {
            for n in page {
                // The page holds pending messages only.
                if body_version(&n.body_text).is_none_or(|v| v == current) {
                    continue;
                }
                let opened = self.open_message(&n)?;
                let text = self.seal_body(n.id, "text", &opened.body_text)?;
                let html = self.seal_body(n.id, "html", &opened.body_html)?;
                self.store.reseal_notification(n.id, &text, &html).await?;
                done.messages += 1;
            }
            progress(done);
        }
        if done.credentials > 0 || done.messages > 0 {
            let audit = self
                .audit_record(
                    &self.caller(),
                    gapless_core::AuditAction::KeyResealed,
                    &format!("key version {current}"),
                )
                .with("credentials", done.credentials)
                .with("messages", done.messages);
            self.store.audit(&audit).await?;
        }
        Ok(done)
    }
}
