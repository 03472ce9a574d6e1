//! `gapless audit`: read the audit log; `gapless audit verify`: check its hash chain.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use gapless_core::{AuditEntry, IdentityId};
use gapless_engine::Engine;
use gapless_store::{AuditFilter, MAX_AUDIT_PAGE};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: every entry present, unedited, linked to the one before. Exits
    /// non-zero where it breaks.
    Verify {
        /// `SEQ:HASH` of a head printed by an earlier verify, kept elsewhere: entries
        /// removed from the end since then are found too.
        #[arg(long)]
        anchor: Option<String>,
    },
}

/// What `gapless audit` lists.
pub struct Listing {
    pub identity: Option<String>,
    pub since: Option<String>,
    pub json: bool,
}

pub async fn run(engine: &Engine, command: Option<AuditCommand>, listing: Listing) -> Result<()> {
    match command {
        Some(AuditCommand::Verify { anchor }) => verify(engine, anchor.as_deref()).await,
        None => list(engine, listing).await,
    }
}

async fn list(engine: &Engine, listing: Listing) -> Result<()> {
    let store = engine.store();
    let identity = match &listing.identity {
        None => None,
        Some(wanted) => Some(match store.find_identity(wanted).await {
            Ok(found) => found.id,
            // A deleted identity is still in the log, by its id.
            Err(_) => wanted.trim().parse::<IdentityId>().map_err(|_| {
                anyhow::anyhow!(
                    "--identity {wanted:?}: no identity has this label or id (a deleted identity is found by its id, shown in `gapless audit`)"
                )
            })?,
        }),
    };
    let since = listing
        .since
        .as_deref()
        .map(|text| since(text, engine.clock().now()))
        .transpose()?;
    let mut filter = AuditFilter {
        identity,
        since,
        after: None,
        limit: MAX_AUDIT_PAGE,
    };
    let mut all: Vec<AuditEntry> = Vec::new();
    loop {
        let page = store.audit_entries(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after = Some(last.seq);
        let full = page.len() >= MAX_AUDIT_PAGE as usize;
        if listing.json {
            all.extend(page);
        } else {
            for entry in &page {
                say!("{}", line(entry));
            }
        }
        if !full {
            break;
        }
    }
    if listing.json {
        say!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

/// One entry on one line: when, who (from where), what, about what, the facts.
fn line(entry: &AuditEntry) -> String {
    let r = &entry.record;
    let from = r
        .source
        .as_ref()
        .map(|s| format!(" from {s}"))
        .unwrap_or_default();
    let facts: Vec<String> = r
        .detail
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!(
        "{:>6}  {}  {:<22} {}{}  {}{}",
        entry.seq,
        r.at.format("%Y-%m-%d %H:%M:%S"),
        r.action.as_str(),
        r.actor,
        from,
        r.subject,
        if facts.is_empty() {
            String::new()
        } else {
            format!("  ({})", facts.join(", "))
        }
    )
}

/// `--since`: an instant (RFC 3339), a day (from its start, UTC) or a duration back from
/// now (`24h`, `7d`).
fn since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        gapless_core::check_day("--since", day).map_err(anyhow::Error::msg)?;
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let back = crate::config::duration("--since", text).context(
        "--since takes an instant (2026-12-01T08:00:00Z), a day (2026-12-01) or a duration back from now (24h, 7d)",
    )?;
    now.checked_sub_signed(back)
        .context("--since reaches before the calendar's start")
}

async fn verify(engine: &Engine, anchor: Option<&str>) -> Result<()> {
    let store = engine.store();
    let checked = store.verify_audit().await?;
    if let Some(broken) = &checked.broken {
        bail!(
            "the audit log is broken at entry {}: {} ({} entries before it hold)",
            broken.seq,
            broken.problem,
            checked.entries
        );
    }
    if let Some(anchor) = anchor {
        let (seq, hash) = anchor
            .split_once(':')
            .and_then(|(seq, hash)| Some((seq.trim().parse::<i64>().ok()?, hash.trim())))
            .context("--anchor takes SEQ:HASH, as printed by an earlier verify")?;
        match store.audit_hash(seq).await? {
            Some(found) if found == hash => {}
            Some(_) => bail!(
                "the audit log no longer matches the anchor: entry {seq} has another hash (the log was rewritten)"
            ),
            None => bail!(
                "the audit log no longer matches the anchor: entry {seq} is gone (entries were removed from the end)"
            ),
        }
    }
    match &checked.head {
        None => say!("the audit log is empty"),
        Some((seq, hash)) => {
            say!(
                "the audit log holds: {} entries, each linked to the one before",
                checked.entries
            );
            say!("head: {seq}:{hash}");
            say!(
                "(keep the head elsewhere and pass it as --anchor later to notice entries removed from the end)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_an_instant_a_day_or_a_duration_back() {
        let now: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        assert_eq!(
            since("2026-12-01T08:00:00Z", now).unwrap(),
            "2026-12-01T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            since("2026-12-01", now).unwrap(),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            since("24h", now).unwrap(),
            "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(since("yesterday", now).is_err());
        assert!(since("99999999d", now).is_err());
        assert!(since("0001-01-01", now).is_err());
    }
}
