//! `gapless token create | list | revoke`: API tokens, shown once, stored hashed.

use anyhow::{Result, bail};
use clap::Subcommand;
use gapless_core::{AuditAction, AuditRecord};
use gapless_engine::Engine;
use gapless_store::{ApiToken, TokenScope};
use gapless_vault::BearerToken;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is kept.
    Create {
        name: String,
        /// `read` (GET routes, the dashboard's pages) or `write` (also changes).
        #[arg(long, default_value = "read")]
        scope: String,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id.
    Revoke { name: String },
}

pub async fn run(engine: &Engine, command: TokenCommand) -> Result<()> {
    let store = engine.store();
    let now = engine.clock().now();
    match command {
        TokenCommand::Create { name, scope } => {
            let Some(scope) = TokenScope::parse(scope.trim()) else {
                bail!("--scope {scope:?} is neither read nor write");
            };
            let name = name.trim().to_string();
            if name.is_empty() {
                bail!("the token needs a name");
            }
            if store
                .api_tokens()
                .await?
                .iter()
                .any(|t| t.name == name && t.revoked_at.is_none())
            {
                bail!("a token named {name:?} exists; revoke it first or pick another name");
            }
            let secret = BearerToken::generate()?;
            store
                .insert_api_token(
                    &ApiToken {
                        id: uuid_like(&secret),
                        name: name.clone(),
                        scope,
                        created_at: now,
                        last_used_at: None,
                        revoked_at: None,
                    },
                    &secret.hash(),
                    &AuditRecord::new(now, &engine.caller(), AuditAction::TokenCreated, &name)
                        .with("scope", scope.as_str()),
                )
                .await?;
            eprintln!(
                "token {name} ({}) created; it is shown once:",
                scope.as_str()
            );
            say!("{}", secret.expose_secret());
        }
        TokenCommand::List { json } => {
            let tokens = store.api_tokens().await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                say!("no tokens; create one with `gapless token create NAME --scope write`");
            } else {
                for t in tokens {
                    say!(
                        "{:<20} {:<5} created {}{}{}",
                        t.name,
                        t.scope.as_str(),
                        t.created_at.format("%Y-%m-%d %H:%M"),
                        t.last_used_at
                            .map(|u| format!(", last used {}", u.format("%Y-%m-%d %H:%M")))
                            .unwrap_or_default(),
                        t.revoked_at
                            .map(|r| format!(", REVOKED {}", r.format("%Y-%m-%d %H:%M")))
                            .unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::Revoke { name } => {
            let audit = AuditRecord::new(now, &engine.caller(), AuditAction::TokenRevoked, &name);
            if !store.revoke_api_token(&name, now, &audit).await? {
                bail!("no active token is named {name:?}");
            }
            say!("token {name} revoked");
        }
    }
    Ok(())
}

/// A token's public id: the first 16 hex digits of its hash (not enough to find the
/// secret, enough to name it).
fn uuid_like(secret: &BearerToken) -> String {
    secret.hash()[..16].to_string()
}
