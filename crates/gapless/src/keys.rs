//! `gapless keys status | rotate | reseal | retire`: master key rotation that finishes.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gapless_engine::Engine;
use gapless_vault::{KeyVersion, MASTER_KEY_ENV};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// What each master key version still seals (credentials, messages not delivered yet).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add a new key version to the key file and re-seal everything with it, online, in
    /// batches. The old version stays in the file until `retire` removes it.
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// Re-seal with the newest key what an older one still seals (after a new version was
    /// added to GAPLESS_MASTER_KEY, or to finish an interrupted rotation).
    Reseal {
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// Remove a key version from the key file; refused while anything is sealed with it.
    Retire { version: u32 },
}

/// Re-seal and report progress.
async fn reseal(engine: &Engine, batch: usize) -> Result<()> {
    let done = engine
        .reseal(batch, |so_far| {
            say!(
                "  re-sealed {} credential(s), {} message(s) so far",
                so_far.credentials,
                so_far.messages
            );
        })
        .await?;
    say!(
        "re-sealed {} credential(s) and {} pending message(s) with key version {}",
        done.credentials,
        done.messages,
        engine.key_usage().await?.current
    );
    Ok(())
}

/// `open` opens the engine (after `rotate` changed the key file, so it seals with the new
/// version).
pub async fn run(
    data_dir: &std::path::Path,
    command: KeysCommand,
    open: impl AsyncFnOnce() -> Result<Engine>,
) -> Result<()> {
    let key_file = data_dir.join("master.key");
    let from_env = std::env::var(MASTER_KEY_ENV).is_ok_and(|v| !v.trim().is_empty());
    match command {
        KeysCommand::Status { json } => status(&open().await?, json).await,
        KeysCommand::Rotate { batch } => {
            if from_env {
                bail!(
                    "the master key comes from {MASTER_KEY_ENV}: add a new VERSION:KEY entry there (newest last), restart gapless with it, then run `gapless keys reseal`"
                );
            }
            let version = gapless_vault::add_key_version(&key_file)
                .with_context(|| format!("adding a key version to {}", key_file.display()))?;
            say!(
                "key version {} added to {}; back the file up",
                version.0,
                key_file.display()
            );
            // Opened after the file changed, so the new version is the current one.
            let engine = open().await?;
            reseal(&engine, batch).await?;
            engine.store().close().await;
            say!(
                "running `gapless run` and `gapless serve` processes seal with the new version once restarted; then `gapless keys retire` the old one"
            );
            Ok(())
        }
        KeysCommand::Reseal { batch } => {
            let engine = open().await?;
            reseal(&engine, batch).await?;
            engine.store().close().await;
            Ok(())
        }
        KeysCommand::Retire { version } => {
            if from_env {
                bail!(
                    "the master key comes from {MASTER_KEY_ENV}: remove the version's entry there"
                );
            }
            retire(&open().await?, &key_file, version).await
        }
    }
}

/// `gapless keys status`.
async fn status(engine: &Engine, json: bool) -> Result<()> {
    let usage = engine.key_usage().await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    say!("new data is sealed with key version {}", usage.current);
    let versions: std::collections::BTreeSet<u32> = usage
        .credentials
        .keys()
        .chain(usage.pending_messages.keys())
        .copied()
        .collect();
    for version in versions {
        say!(
            "  version {version}: {} credential(s), {} pending message(s)",
            usage.credentials.get(&version).copied().unwrap_or(0),
            usage.pending_messages.get(&version).copied().unwrap_or(0)
        );
    }
    Ok(())
}

/// `gapless keys retire`, the key in `key_file`: refused for the newest version and for one
/// that still seals something.
async fn retire(engine: &Engine, key_file: &std::path::Path, version: u32) -> Result<()> {
    let usage = engine.key_usage().await?;
    if version == usage.current {
        bail!(
            "key version {version} is the newest, which new data is sealed with; `gapless keys rotate` first"
        );
    }
    if usage.in_use(version) {
        bail!(
            "key version {version} still seals {} credential(s) and {} pending message(s); run `gapless keys reseal` first",
            usage.credentials.get(&version).copied().unwrap_or(0),
            usage.pending_messages.get(&version).copied().unwrap_or(0)
        );
    }
    gapless_vault::remove_key_version(key_file, KeyVersion(version))
        .with_context(|| format!("removing key version {version}"))?;
    let audit = gapless_core::AuditRecord::new(
        engine.clock().now(),
        &engine.caller(),
        gapless_core::AuditAction::KeyRetired,
        format!("key version {version}"),
    );
    engine.store().audit(&audit).await?;
    say!("key version {version} removed from {}", key_file.display());
    Ok(())
}
