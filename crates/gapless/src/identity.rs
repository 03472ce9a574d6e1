//! `gapless identity …`: connect, list, show, check, reauthorize, rename and delete
//! identities. Output never carries a secret.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use gapless_core::{Health, Identity, Pipeline};
use gapless_engine::{Engine, Event, EventLog, ProbeOutcome};
use gapless_providers::AuthKind;
use gapless_store::{IdentityCursor, IdentityOrder};
use gapless_vault::{ApiKey, Credential, Password};

use crate::config::FileConfig;
use serde::Serialize;

use crate::loopback::Loopback;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Connect a new identity through the provider's consent page (loopback redirect).
    Add {
        /// The provider's registry name, e.g. `sandbox`.
        #[arg(long)]
        provider: String,
        /// A unique label, e.g. `acme-ads`.
        #[arg(long)]
        label: String,
        /// Email of a person who owns the upstream login (repeatable).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Loopback port for the redirect (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// How long to wait for the consent, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// The provider's region for this identity (e.g. `eu` for Amazon), when it is not
        /// the one configured for the provider; kept for the identity's whole life.
        #[arg(long)]
        region: Option<String>,
        /// A setting the provider takes per identity, as NAME=VALUE (e.g. `shop=acme` for
        /// Shopify; repeatable); kept for the identity's whole life.
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List identities with state, cause, upstream account, expiry and dependents.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one identity with its health history and incidents.
    Show {
        identity: String,
        #[arg(long)]
        json: bool,
    },
    /// The resources (ad accounts, customers, shops…) an identity can read, as its
    /// provider lists them now; a pipeline's `--resource` is one of them.
    Resources {
        identity: String,
        #[arg(long)]
        json: bool,
    },
    /// Probe an identity now (refreshing its token if due).
    Check {
        identity: String,
        #[arg(long)]
        json: bool,
    },
    /// Reauthorize an identity through the consent page; the new credential replaces the
    /// old one only after it passed the probe and belongs to the same upstream account.
    Reauth {
        identity: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Set who owns the upstream login (told first about its incidents).
    Owners {
        identity: String,
        /// An email address (repeatable); none clears the list.
        #[arg(long = "owner")]
        owners: Vec<String>,
    },
    /// Give an identity a new label.
    Rename { identity: String, label: String },
    /// Whether a reauthorization may switch the identity to another upstream account
    /// (`any`, after the person reconnecting confirms) or must come from the same one
    /// (`same`, the default).
    Account {
        identity: String,
        #[arg(value_parser = ["same", "any"])]
        policy: String,
    },
    /// Delete an identity (refused while pipelines use it).
    Delete { identity: String },
}

/// What the CLI and its JSON show about an identity.
#[derive(Debug, Serialize)]
struct IdentityView {
    id: String,
    label: String,
    provider: String,
    state: String,
    cause: Option<String>,
    provider_code: Option<String>,
    since: Option<DateTime<Utc>>,
    upstream_account_id: Option<String>,
    upstream_account_name: Option<String>,
    scopes: Vec<String>,
    owners: Vec<String>,
    access_expires_at: Option<DateTime<Utc>>,
    refresh_expires_at: Option<DateTime<Utc>>,
    authorization_expires_at: Option<DateTime<Utc>>,
    last_probe_at: Option<DateTime<Utc>>,
    /// A reauthorization may switch the upstream account (after confirmation).
    allow_any_account: bool,
    /// Its own region and per-identity settings at the provider.
    #[serde(skip_serializing_if = "gapless_core::IdentitySettings::is_empty")]
    settings: gapless_core::IdentitySettings,
    pipelines: Vec<String>,
}

/// `--setting NAME=VALUE`.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("{text:?} is not NAME=VALUE (e.g. shop=acme)")),
    }
}

/// `pipelines`: those of the identity (others are ignored).
fn view(identity: &Identity, pipelines: &[Pipeline]) -> IdentityView {
    let (cause, provider_code, since) = match &identity.health {
        Health::NeedsReauth { failure, since } => (
            Some(failure.cause.code()),
            failure.provider_code.clone(),
            Some(*since),
        ),
        Health::Degraded { last, since, .. } => (
            Some(last.cause.code()),
            last.provider_code.clone(),
            Some(*since),
        ),
        Health::Paused { reason, since } => (Some(reason.clone()), None, Some(*since)),
        Health::Expiring { at } => (None, None, Some(*at)),
        Health::Healthy => (None, None, None),
    };
    IdentityView {
        id: identity.id.to_string(),
        label: identity.label.clone(),
        provider: identity.provider.clone(),
        state: identity.health.name().to_string(),
        cause,
        provider_code,
        since,
        upstream_account_id: identity.upstream_account_id.clone(),
        upstream_account_name: identity.upstream_account_name.clone(),
        scopes: identity.scopes.clone(),
        owners: identity.owners.clone(),
        access_expires_at: identity.access_expires_at,
        refresh_expires_at: identity.refresh_expires_at,
        authorization_expires_at: identity.authorization_expires_at,
        last_probe_at: identity.last_probe_at,
        allow_any_account: identity.allow_any_account,
        settings: identity.settings.clone(),
        pipelines: pipelines
            .iter()
            .filter(|p| p.uses(identity.id))
            .map(|p| format!("{} ({})", p.name, p.state.name()))
            .collect(),
    }
}

fn day(at: Option<DateTime<Utc>>) -> String {
    at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// Read a key or password: hidden at a terminal, one line from standard input otherwise.
/// An empty answer is an error and nothing is saved.
fn read_secret(prompt: &str) -> Result<String> {
    use std::io::IsTerminal;
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).context("reading the key at the prompt")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the key from standard input")?;
        line
    };
    let secret = secret.trim_end_matches(['\r', '\n']).to_string();
    if secret.trim().is_empty() {
        bail!("the key or password is empty; nothing was saved");
    }
    Ok(secret)
}

fn print_events(log: &EventLog) {
    for event in &log.events {
        say!("{}", event.line());
    }
}

/// Run one identity command.
pub async fn run(engine: &Engine, file: &FileConfig, command: IdentityCommand) -> Result<()> {
    match command {
        IdentityCommand::Add {
            provider,
            label,
            owners,
            port,
            timeout,
            region,
            settings,
        } => {
            let place = gapless_core::IdentitySettings {
                region,
                values: settings.into_iter().collect(),
            };
            add(
                engine,
                file,
                (provider, place),
                label,
                owners,
                (port, timeout),
            )
            .await?
        }
        IdentityCommand::List { json } => list(engine, json).await?,
        IdentityCommand::Show { identity, json } => show(engine, identity, json).await?,
        IdentityCommand::Resources { identity, json } => resources(engine, identity, json).await?,
        IdentityCommand::Check { identity, json } => check(engine, identity, json).await?,
        IdentityCommand::Reauth {
            identity,
            port,
            timeout,
        } => reauth(engine, file, identity, port, timeout).await?,
        IdentityCommand::Owners { identity, owners } => {
            set_owners(engine, identity, owners).await?
        }
        IdentityCommand::Rename { identity, label } => rename(engine, identity, label).await?,
        IdentityCommand::Account { identity, policy } => account(engine, identity, policy).await?,
        IdentityCommand::Delete { identity } => delete(engine, identity).await?,
    }
    Ok(())
}

/// `gapless identity add`.
async fn add(
    engine: &Engine,
    file: &FileConfig,
    (provider, place): (String, gapless_core::IdentitySettings),
    label: String,
    owners: Vec<String>,
    (port, timeout): (u16, u64),
) -> Result<()> {
    if let Some(bad) = owners.iter().find(|o| !gapless_notify::is_email_address(o)) {
        bail!("--owner {bad:?} is not an email address");
    }
    if let Some(destination) = file.destinations.get(&provider) {
        let username = destination.username();
        let password = read_secret(&format!("Password of {username} for {provider}: "))?;
        let identity = engine
            .connect_identity_with_secret(
                (&provider, &place),
                &label,
                owners,
                Credential::Password {
                    username,
                    password: Password::new(password),
                },
                &engine.caller(),
            )
            .await?;
        say!(
            "identity {} connected: {} (the password passed the probe)",
            identity.label,
            identity.describe()
        );
        return Ok(());
    }
    if engine.provider(&provider)?.auth == AuthKind::OAuth2ClientCredentials {
        let identity = engine
            .connect_service_identity((&provider, &place), &label, owners, &engine.caller())
            .await?;
        say!(
            "identity {} connected: service account {}",
            identity.label,
            identity.describe()
        );
        return Ok(());
    }
    if engine.provider(&provider)?.auth != AuthKind::OAuth2Code {
        let credential = Credential::ApiKey {
            key: ApiKey::new(read_secret(&format!("API key for {provider}: "))?),
        };
        let identity = engine
            .connect_identity_with_secret(
                (&provider, &place),
                &label,
                owners,
                credential,
                &engine.caller(),
            )
            .await?;
        say!(
            "identity {} connected: upstream account {} (the key passed the probe)",
            identity.label,
            identity.describe()
        );
        return Ok(());
    }
    connect_by_consent(engine, (&provider, &place), label, owners, (port, timeout)).await
}

/// An OAuth consent in the person's browser, its redirect received on a loopback `port`
/// within `timeout` seconds.
async fn connect_by_consent(
    engine: &Engine,
    (provider, place): (&str, &gapless_core::IdentitySettings),
    label: String,
    owners: Vec<String>,
    (port, timeout): (u16, u64),
) -> Result<()> {
    let loopback = Loopback::bind(port).await?;
    let pending = engine.begin_authorization_to(provider, place, &loopback.redirect_uri)?;
    say!("Open this address in a browser and approve access:");
    say!("  {}", pending.url);
    say!("Waiting for the redirect to {} …", loopback.redirect_uri);
    let callback = loopback.receive(Duration::from_secs(timeout)).await?;
    let (identity, _) = engine
        .connect_identity(&pending, &callback, &label, owners, &engine.caller())
        .await?;
    say!(
        "identity {} connected: upstream account {}, scopes {}",
        identity.label,
        identity.describe(),
        identity.scopes.join(" ")
    );
    Ok(())
}

/// `gapless identity list`: read and printed a page at a time, so a hundred thousand
/// identities cost the memory of one page.
async fn list(engine: &Engine, json: bool) -> Result<()> {
    const PAGE: u32 = 500;
    let store = engine.store();
    let mut after: Option<IdentityCursor> = None;
    let mut shown = 0usize;
    loop {
        let page = store
            .identities_page(IdentityOrder::Label, after.as_ref(), PAGE)
            .await?;
        let ids: Vec<_> = page.identities.iter().map(|i| i.id).collect();
        let pipelines = store.pipelines_using_any(&ids).await?;
        for identity in &page.identities {
            let v = view(identity, &pipelines);
            if json {
                crate::say_json_element(shown, &v)?;
            } else {
                if shown == 0 {
                    say!(
                        "{:<20} {:<10} {:<13} {:<34} {:<28} {:<17} PIPELINES",
                        "LABEL",
                        "PROVIDER",
                        "STATE",
                        "CAUSE",
                        "UPSTREAM ACCOUNT",
                        "ACCESS EXPIRES"
                    );
                }
                say!(
                    "{:<20} {:<10} {:<13} {:<34} {:<28} {:<17} {}",
                    v.label,
                    v.provider,
                    v.state,
                    v.cause.unwrap_or_else(|| "-".into()),
                    v.upstream_account_name.unwrap_or_else(|| "-".into()),
                    day(v.access_expires_at),
                    if v.pipelines.is_empty() {
                        "-".into()
                    } else {
                        v.pipelines.join(", ")
                    }
                );
            }
            shown += 1;
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    if json {
        crate::say_json_end(shown);
    } else if shown == 0 {
        say!("no identities; connect one with `gapless identity add`");
    }
    Ok(())
}

/// `gapless identity show`.
async fn show(engine: &Engine, identity: String, json: bool) -> Result<()> {
    let store = engine.store();
    let identity = store.find_identity(&identity).await?;
    let v = view(&identity, &store.pipelines_using(identity.id).await?);
    let history = store.health_history(identity.id).await?;
    let incidents = store.incidents(Some(identity.id)).await?;
    if json {
        let history: Vec<_> = history
            .iter()
            .map(|(at, from, to, reason)| {
                serde_json::json!({"at": at, "from": from, "to": to, "reason": reason})
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "identity": v,
                "health_history": history,
                "incidents": incidents,
            }))?
        );
    } else {
        say!("{} ({})", v.label, v.id);
        say!("  provider:          {}", v.provider);
        if !v.settings.is_empty() {
            say!("  at the provider:   {}", v.settings.describe());
        }
        say!("  state:             {}", identity.health);
        if let Some(code) = &v.provider_code {
            say!("  provider code:     {code}");
        }
        say!(
            "  upstream account:  {} ({})",
            v.upstream_account_name.as_deref().unwrap_or("-"),
            v.upstream_account_id.as_deref().unwrap_or("-")
        );
        say!("  scopes:            {}", v.scopes.join(" "));
        say!("  owners:            {}", v.owners.join(", "));
        say!("  access expires:    {}", day(v.access_expires_at));
        say!("  refresh expires:   {}", day(v.refresh_expires_at));
        say!("  authorization:     {}", day(v.authorization_expires_at));
        say!("  last probe:        {}", day(v.last_probe_at));
        say!("  pipelines:         {}", v.pipelines.join(", "));
        say!("  history:");
        for (at, from, to, reason) in history {
            say!("    {}  {from} -> {to}: {reason}", day(Some(at)));
        }
        say!("  incidents: {}", incidents.len());
        for i in incidents {
            say!(
                "    {}  {}  {}",
                day(Some(i.opened_at)),
                i.failure.cause,
                i.closed_at
                    .map_or("open".into(), |c| format!("closed {}", day(Some(c))))
            );
        }
    }
    Ok(())
}

/// `gapless identity resources`.
async fn resources(engine: &Engine, identity: String, json: bool) -> Result<()> {
    let store = engine.store();
    let identity = store.find_identity(&identity).await?;
    let resources = match engine.resources_of(identity.id).await? {
        Ok(resources) => resources,
        Err(reason) => bail!(
            "the resources of {} cannot be listed now: {reason}",
            identity.label
        ),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&resources)?);
    } else if resources.is_empty() {
        say!(
            "{} does not list its resources (its provider's definition has no [resources] and its probe names none)",
            identity.label
        );
    } else {
        for r in &resources {
            match &r.parent {
                Some(parent) => say!("{:<32} {} (through {parent})", r.id, r.name),
                None => say!("{:<32} {}", r.id, r.name),
            }
        }
    }
    Ok(())
}

/// `gapless identity check`.
async fn check(engine: &Engine, identity: String, json: bool) -> Result<()> {
    let store = engine.store();
    let identity = store.find_identity(&identity).await?;
    let mut log = EventLog::default();
    let outcome = engine.probe_identity(identity.id, &mut log).await?;
    // What the check found is told at once.
    engine.dispatch_outbox(&mut log).await?;
    let after = store.identity(identity.id).await?;
    let (ok, result) = match &outcome {
        ProbeOutcome::Passed(report) => (
            true,
            format!(
                "ok: upstream account {} ({}), scopes {}",
                report.upstream_account_name,
                report.upstream_account_id,
                report.scopes.join(" ")
            ),
        ),
        ProbeOutcome::Insufficient { missing, .. } => {
            (false, format!("works but lacks {}", missing.join(", ")))
        }
        ProbeOutcome::Failed(detail) => (false, format!("failed: {detail}")),
        ProbeOutcome::Busy => (false, "another instance is refreshing it; try again".into()),
    };
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "result": result,
                "identity": view(&after, &engine.store().pipelines_using(after.id).await?),
            }))?
        );
    } else {
        say!("{}: {result}", after.label);
        say!("state: {}", after.health);
        print_events(&log);
    }
    if !ok {
        bail!("the check of {} did not pass", after.label);
    }
    Ok(())
}

/// `gapless identity reauth`.
async fn reauth(
    engine: &Engine,
    file: &FileConfig,
    identity: String,
    port: u16,
    timeout: u64,
) -> Result<()> {
    let store = engine.store();
    let identity = store.find_identity(&identity).await?;
    if let Some(destination) = file.destinations.get(&identity.provider) {
        let username = destination.username();
        let password = read_secret(&format!(
            "New password of {username} for {}: ",
            identity.provider
        ))?;
        let log = engine
            .reauthorize_with_secret(
                identity.id,
                Credential::Password {
                    username,
                    password: Password::new(password),
                },
            )
            .await?;
        print_events(&log);
        say!("{} is healthy again", identity.label);
        return Ok(());
    }
    if engine.provider(&identity.provider)?.auth == AuthKind::OAuth2ClientCredentials {
        let log = engine.reauthorize_service(identity.id).await?;
        print_events(&log);
        say!("{} is healthy again", identity.label);
        return Ok(());
    }
    if engine.provider(&identity.provider)?.auth != AuthKind::OAuth2Code {
        let credential = Credential::ApiKey {
            key: ApiKey::new(read_secret(&format!(
                "New API key for {}: ",
                identity.label
            ))?),
        };
        let log = engine
            .reauthorize_with_secret(identity.id, credential)
            .await?;
        print_events(&log);
        say!("{} is healthy again", identity.label);
        return Ok(());
    }
    let loopback = Loopback::bind(port).await?;
    let pending = engine.begin_authorization_to(
        &identity.provider,
        &identity.settings,
        &loopback.redirect_uri,
    )?;
    say!(
        "Open this address in a browser and sign in as the owner of {}:",
        identity.describe()
    );
    say!("  {}", pending.url);
    say!("Waiting for the redirect to {} …", loopback.redirect_uri);
    let callback = loopback.receive(Duration::from_secs(timeout)).await?;
    let log = engine.reauthorize(identity.id, &pending, &callback).await?;
    print_events(&log);
    let recovered = log
        .events
        .iter()
        .any(|e| matches!(e, Event::IdentityReauthorized { .. }));
    if recovered {
        say!("{} is healthy again", identity.label);
    }
    Ok(())
}

/// `gapless identity owners`.
async fn set_owners(engine: &Engine, identity: String, owners: Vec<String>) -> Result<()> {
    let store = engine.store();
    for owner in &owners {
        if !gapless_notify::is_email_address(owner) {
            bail!("{owner:?} is not an email address");
        }
    }
    let found = store.find_identity(&identity).await?;
    store
        .set_owners(found.id, &owners, engine.clock().now())
        .await?;
    say!(
        "owners of {}: {}",
        found.label,
        if owners.is_empty() {
            "none".into()
        } else {
            owners.join(", ")
        }
    );
    Ok(())
}

/// `gapless identity rename`.
async fn rename(engine: &Engine, identity: String, label: String) -> Result<()> {
    let store = engine.store();
    let label = label.trim();
    if label.is_empty() {
        bail!("the new label must not be empty");
    }
    let found = store.find_identity(&identity).await?;
    store
        .rename_identity(found.id, label, engine.clock().now())
        .await
        .with_context(|| format!("renaming {}", found.label))?;
    say!("{} is now {label}", found.label);
    Ok(())
}

/// `gapless identity account`.
async fn account(engine: &Engine, identity: String, policy: String) -> Result<()> {
    let store = engine.store();
    let found = store.find_identity(&identity).await?;
    let any = policy == "any";
    store
        .set_allow_any_account(found.id, any, engine.clock().now())
        .await?;
    if any {
        say!(
            "{} may be reconnected with another upstream account, when the person reconnecting confirms it",
            found.label
        );
    } else {
        say!(
            "{} must be reconnected with the same upstream account",
            found.label
        );
    }
    Ok(())
}

/// `gapless identity delete`.
async fn delete(engine: &Engine, identity: String) -> Result<()> {
    let store = engine.store();
    let found = store.find_identity(&identity).await?;
    let revocation = engine.delete_identity(found.id, &engine.caller()).await?;
    say!(
        "identity {} deleted; {}",
        found.label,
        match revocation {
            gapless_engine::Revocation::Revoked =>
                "its authorization was revoked at the provider".to_string(),
            gapless_engine::Revocation::NotOffered =>
                "the provider offers no revocation: remove the app's access there if it should end"
                    .to_string(),
            gapless_engine::Revocation::Failed(why) => format!(
                "revoking it at the provider failed ({why}): the authorization may still be valid there; remove the app's access at the provider"
            ),
        }
    );
    Ok(())
}
