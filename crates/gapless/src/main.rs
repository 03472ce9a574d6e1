//! The `gapless` command: parses arguments and wires the library crates together.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gapless_core::{Actor, SystemClock};
use gapless_demo::demo::{DemoOptions, DemoSummary};
use gapless_sandbox::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_USER, Sandbox, SandboxConfig,
};
use gapless_store::{Store, StoreLocation};
use gapless_vault::{Keyring, MASTER_KEY_ENV, Vault};

/// Print a line on stdout. A closed pipe (`gapless demo | head`) ends the process quietly
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_line(format_args!($($arg)*))
    };
}

fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("gapless: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// A JSON array printed an element per line as its pages are read (`shown` elements
/// before this one), so a long listing costs the memory of one page.
fn say_json_element(shown: usize, element: &impl serde::Serialize) -> anyhow::Result<()> {
    let opening = if shown == 0 { "[" } else { "," };
    say!("{opening} {}", serde_json::to_string(element)?);
    Ok(())
}

/// The end of an array printed by [`say_json_element`].
fn say_json_end(shown: usize) {
    say!("{}", if shown == 0 { "[]" } else { "]" });
}

mod audit;
mod bench;
mod bench_listing;
mod config;
mod identity;
mod keys;
mod loopback;
mod pipeline;
mod provider;
mod token;

/// gapless: report pipelines from ad and commerce APIs that survive broken authorizations.
#[derive(Debug, Parser)]
#[command(name = "gapless", version, about)]
struct Cli {
    /// Data directory: SQLite state, key file, file outbox, SQLite warehouses.
    #[arg(
        long,
        env = "GAPLESS_DATA_DIR",
        default_value = "./gapless-data",
        global = true
    )]
    data_dir: PathBuf,

    /// State store: a postgres:// URL, or "sqlite" (in the data directory).
    #[arg(long, env = "GAPLESS_STORE", global = true, hide_env_values = true)]
    store: Option<String>,

    /// Configuration file (default: gapless.toml in the data directory, if present).
    #[arg(long, env = "GAPLESS_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, env = "GAPLESS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text", global = true)]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory, the master key file (mode 0600) and the state store.
    Init,
    /// Survive an authorization outage end to end: 30 virtual days against the sandbox.
    Demo {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Virtual days to run.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Day on which the sandbox revokes the app.
        #[arg(long, default_value_t = 10)]
        revoke_day: u32,
        /// Day on which the identity is reauthorized.
        #[arg(long, default_value_t = 13)]
        reauth_day: u32,
        /// Also show token refreshes and settle re-pulls in the timeline.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Create and list pipelines.
    Pipeline {
        #[command(subcommand)]
        command: pipeline::PipelineCommand,
    },
    /// Missing, spooled and lost ranges per pipeline, with the date each is recoverable until.
    Gaps {
        /// One pipeline (name or id); all when omitted.
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pull a date range of a pipeline again, oldest deadline first.
    Backfill {
        pipeline: String,
        /// First day (YYYY-MM-DD, inclusive).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day (YYYY-MM-DD, inclusive).
        #[arg(long)]
        to: chrono::NaiveDate,
        /// Show the windows and the estimated requests; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Windows extracted and waiting in the spool for their destination.
    Spool {
        #[arg(long)]
        json: bool,
    },
    /// What-if: which windows an outage of an identity would recover and lose, and the last
    /// moment to reauthorize without loss.
    Simulate {
        /// The identity (label or id).
        #[arg(long)]
        identity: String,
        /// The day the outage starts (YYYY-MM-DD; default: now).
        #[arg(long)]
        start: Option<chrono::NaiveDate>,
        /// How long it lasts, in days.
        #[arg(long)]
        days: u32,
        #[arg(long)]
        json: bool,
    },
    /// Run the scheduler: refresh, sync, probe, warn, remind, deliver — every interval.
    Run {
        /// One tick, then exit.
        #[arg(long)]
        once: bool,
        /// Time between ticks.
        #[arg(long, default_value = "60s")]
        every: String,
    },
    /// Run the scheduler and the HTTP server (reauthorize links, dashboard, REST API,
    /// metrics) in one process, until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Time between scheduler ticks.
        #[arg(long, default_value = "60s")]
        every: String,
    },
    /// Providers: the built-in ones and those described by definition files.
    Provider {
        #[command(subcommand)]
        command: provider::ProviderCommand,
    },
    /// Master key rotation: status, rotate, reseal, retire.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The audit log: every change of trust (identities, credentials, reauthorize links,
    /// API tokens, provider definitions, keys), who made it and from where. `verify`
    /// checks its hash chain.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<audit::AuditCommand>,
        /// Only entries about this identity (label or id; a deleted one by its id).
        #[arg(long)]
        identity: Option<String>,
        /// Only entries from then on: an instant, a day, or a duration back (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// API tokens for the REST API and the dashboard's sign-in.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// The notification outbox.
    Notifications {
        #[command(subcommand)]
        command: NotificationsCommand,
    },
    /// Measure gapless against the sandbox.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Connect, list, check, reauthorize, rename and delete identities.
    Identity {
        #[command(subcommand)]
        command: identity::IdentityCommand,
    },
    /// Run the sandbox ad platform (an emulator that fails like the real ones).
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8900")]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
enum NotificationsCommand {
    /// Messages, newest first, with their delivery state.
    List {
        /// Only the ones that could not be delivered.
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GAPLESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// mimalloc rather than the C library's allocator: a report page is thousands of small
/// values built and dropped at once, and with the system allocator `bench e2e` spent about
/// a third of its processor time in malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Everything gapless writes (the state database, the outbox, the spool, the key file)
    // is its owner's alone: directories 0700, files 0600.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gapless: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The error chain, one cause per line; no backtrace for users.
            eprintln!("gapless: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line, dispatched: one arm per command, each opening what it needs and
/// handing over to its module (long because the commands are many, not because it does
/// much: no arm holds logic of its own).
async fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    // One TLS provider for the whole process (reqwest and sqlx both use rustls).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let at = Installation {
        data_dir: &cli.data_dir,
        store: cli.store.as_deref(),
        config: cli.config.as_deref(),
    };
    match cli.command {
        Command::Init => init(at.data_dir, at.store).await,
        Command::Demo {
            json,
            days,
            revoke_day,
            reauth_day,
            verbose,
        } => {
            let timeline = match (json, verbose) {
                (true, _) => Timeline::None,
                (false, true) => Timeline::Everything,
                (false, false) => Timeline::Essential,
            };
            demo(at.data_dir, timeline, days, revoke_day, reauth_day).await
        }
        Command::Sandbox { listen } => sandbox(&listen).await,
        Command::Bench { what } => bench::run(at.data_dir, what).await,
        Command::Serve { listen, every } => {
            let every = positive("--every", &every)?;
            let (engine, _) = at.open(None).await?;
            serve(engine, &listen, every).await
        }
        Command::Provider { command } => provider_command(&at, command).await,
        Command::Keys { command } => {
            keys::run(at.data_dir, command, async || {
                Ok(at.open(Some(cli_actor())).await?.0)
            })
            .await
        }
        Command::Audit {
            command,
            identity,
            since,
            json,
        } => {
            let listing = audit::Listing {
                identity,
                since,
                json,
            };
            at.with_engine(async |engine, _| audit::run(engine, command, listing).await)
                .await
        }
        Command::Token { command } => {
            at.with_engine(async |engine, _| token::run(engine, command).await)
                .await
        }
        Command::Run { once, every } => {
            let every = positive("--every", &every)?;
            let (engine, _) = at.open(None).await?;
            let result = run_scheduler(&engine, once, every).await;
            engine.store().close().await;
            result
        }
        Command::Notifications {
            command: NotificationsCommand::List { failed, json },
        } => {
            at.with_engine(async |engine, _| list_notifications(engine, failed, json).await)
                .await
        }
        Command::Pipeline { command } => {
            at.with_engine(async |engine, file| pipeline::run(engine, file, command).await)
                .await
        }
        Command::Gaps { pipeline, json } => {
            at.with_engine(async |engine, _| pipeline::gaps(engine, pipeline, json).await)
                .await
        }
        Command::Backfill {
            pipeline,
            from,
            to,
            dry_run,
        } => {
            at.with_engine(async |engine, _| {
                pipeline::backfill(engine, &pipeline, from, to, dry_run).await
            })
            .await
        }
        Command::Spool { json } => {
            at.with_engine(async |engine, _| pipeline::spool(engine, json).await)
                .await
        }
        Command::Simulate {
            identity,
            start,
            days,
            json,
        } => {
            at.with_engine(async |engine, _| {
                pipeline::simulate(engine, &identity, start, days, json).await
            })
            .await
        }
        Command::Identity { command } => {
            at.with_engine(async |engine, file| identity::run(engine, file, command).await)
                .await
        }
    }
}

/// Where the installation is, as the global options say.
struct Installation<'a> {
    data_dir: &'a std::path::Path,
    store: Option<&'a str>,
    config: Option<&'a std::path::Path>,
}

impl Installation<'_> {
    /// Its engine, acting as `actor` (the scheduler when None).
    async fn open(
        &self,
        actor: Option<Actor>,
    ) -> Result<(gapless_engine::Engine, config::FileConfig)> {
        open_engine(self.data_dir, self.store, self.config, actor).await
    }

    /// Run `f` with its engine, acting as the person at the command line; the store is
    /// closed after, whatever `f` returned.
    async fn with_engine(
        &self,
        f: impl AsyncFnOnce(&gapless_engine::Engine, &config::FileConfig) -> Result<()>,
    ) -> Result<()> {
        let (engine, file) = self.open(Some(cli_actor())).await?;
        let result = f(&engine, &file).await;
        engine.store().close().await;
        result
    }
}

/// A duration option that must be positive (`--every 1m`).
fn positive(option: &str, text: &str) -> Result<std::time::Duration> {
    config::duration(option, text)?
        .to_std()
        .with_context(|| format!("{option} must be positive"))
}

/// `gapless provider …`: the changing subcommands record in the store's audit log.
async fn provider_command(at: &Installation<'_>, command: provider::ProviderCommand) -> Result<()> {
    let store = match &command {
        provider::ProviderCommand::Add { .. }
        | provider::ProviderCommand::Remove { .. }
        | provider::ProviderCommand::Update { .. } => {
            let location = StoreLocation::from_setting(at.store, at.data_dir)?;
            Some(Store::open(&location).await?)
        }
        _ => None,
    };
    let result = provider::run(at.data_dir, store.as_ref(), command).await;
    if let Some(store) = store {
        store.close().await;
    }
    result
}

/// `gapless notifications list`: newest first, read and printed a page at a time, so the
/// whole history costs the memory of one page.
async fn list_notifications(
    engine: &gapless_engine::Engine,
    failed: bool,
    json: bool,
) -> Result<()> {
    const PAGE: u32 = 500;
    let mut after: Option<gapless_store::TimeCursor> = None;
    let mut shown = 0usize;
    loop {
        let page = engine
            .store()
            .notifications_page(failed, after.as_ref(), PAGE)
            .await?;
        for n in &page.rows {
            if json {
                let row = serde_json::json!({
                    "id": n.id, "kind": n.kind.as_str(), "channel": n.channel,
                    "state": n.delivery.state.as_str(), "attempts": n.delivery.attempts,
                    "recipients": n.recipients, "subject": n.subject,
                    "created_at": n.created_at, "delivered_at": n.delivery.delivered_at,
                    "last_error": n.delivery.last_error, "incident": n.incident,
                });
                say_json_element(shown, &row)?;
            } else {
                say!(
                    "{}  {:<9} {:<8} {:<22} {} attempt(s)  {}{}",
                    n.created_at.format("%Y-%m-%d %H:%M"),
                    n.delivery.state.as_str(),
                    n.channel,
                    n.kind.as_str(),
                    n.delivery.attempts,
                    n.subject,
                    n.delivery
                        .last_error
                        .as_ref()
                        .map(|e| format!("\n    last error: {e}"))
                        .unwrap_or_default()
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
        say_json_end(shown);
    } else if shown == 0 {
        say!(
            "{}",
            if failed {
                "no failed notifications"
            } else {
                "no notifications"
            }
        );
    }
    Ok(())
}

/// The data directory is its owner's alone (0700): it holds the state, the outbox (a
/// mailbox of messages with reauthorize links) and the spool.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
                || format!("making the data directory {} private (0700)", dir.display()),
            )?;
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the data directory was readable by others; it is 0700 now");
        }
    }
    Ok(())
}

/// Who a CLI command acts as in the audit log: the operating-system user (`$USER`, else
/// `$LOGNAME`, else "unknown").
fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Actor::Cli(user)
}

/// Open the engine of an installation: configuration, master key, store, providers.
async fn open_engine(
    data_dir: &std::path::Path,
    store: Option<&str>,
    config_path: Option<&std::path::Path>,
    actor: Option<Actor>,
) -> Result<(gapless_engine::Engine, config::FileConfig)> {
    if data_dir.exists() {
        private_dir(data_dir)?;
    }
    let file = config::load(config_path, data_dir)?;
    let location = StoreLocation::from_setting(store, data_dir)?;
    let vault = master_vault(data_dir)?;
    let settings = engine_settings(data_dir, &file, actor)?;
    let channels = file.notify.channels(&settings.notify_from)?;
    let ConfiguredSources {
        sources,
        rate_limits,
    } = configured_sources(data_dir, &file)?;
    let mut destinations = Vec::new();
    for (name, destination) in &file.destinations {
        destinations.push((name.clone(), destination.target(name)?));
    }
    let store = Store::open(&location).await?;
    let mut engine = gapless_engine::Engine::new(store, vault, Arc::new(SystemClock), settings)?;
    for source in sources {
        engine.add_source(source);
    }
    for (name, limit) in rate_limits {
        engine.set_rate_limit(&name, limit);
    }
    for (name, target) in destinations {
        engine.add_postgres_destination(&name, target);
    }
    for (name, channel) in channels {
        engine.set_channel(&name, channel);
    }
    // A wrong key is refused here, before anything could be sealed with it.
    engine.verify_keys().await?;
    Ok((engine, file))
}

/// The vault of the master key from the environment, else from `<data-dir>/master.key`.
fn master_vault(data_dir: &std::path::Path) -> Result<Vault> {
    Ok(match key_from_env()? {
        Some(vault) => vault,
        None => {
            let key_file = data_dir.join("master.key");
            Vault::new(
                Keyring::load(None, &key_file)
                    .with_context(|| format!("looked for the key file {}", key_file.display()))?,
            )
        }
    })
}

/// The engine's settings: the configuration file's, `GAPLESS_PUBLIC_URL` over its
/// `public_url`, acting as `actor` (the scheduler when None).
fn engine_settings(
    data_dir: &std::path::Path,
    file: &config::FileConfig,
    actor: Option<Actor>,
) -> Result<gapless_engine::EngineConfig> {
    let mut settings = gapless_engine::EngineConfig::new(data_dir.to_path_buf());
    settings.actor = actor;
    if let Some(url) = &file.public_url {
        settings.public_url = url.clone();
    }
    if let Ok(url) = std::env::var(PUBLIC_URL_ENV)
        && !url.trim().is_empty()
    {
        url::Url::parse(url.trim()).with_context(|| format!("{PUBLIC_URL_ENV} is not a URL"))?;
        settings.public_url = url.trim().trim_end_matches('/').to_string();
    }
    if let Some(from) = &file.notify_from {
        settings.notify_from = from.clone();
    }
    if let Some(recipients) = &file.fallback_recipients {
        settings.fallback_recipients = recipients.clone();
    }
    file.notify.apply(&mut settings)?;
    file.scheduler.apply(&mut settings)?;
    Ok(settings)
}

/// What `[providers.*]` configures: the connectors and their request budgets (None:
/// "off").
struct ConfiguredSources {
    sources: Vec<Arc<dyn gapless_providers::SourceConnector>>,
    rate_limits: Vec<(String, Option<gapless_core::RateLimit>)>,
}

/// The definition `[providers.NAME]` runs: the one it names with `definition = …`
/// (renamed to NAME), else the one defined under NAME, if any.
fn definition_of(
    name: &str,
    provider: &config::ProviderConfig,
    definitions: &std::collections::BTreeMap<
        String,
        gapless_providers::declarative::definition::Definition,
    >,
) -> Result<Option<gapless_providers::declarative::definition::Definition>> {
    Ok(match &provider.definition {
        Some(_) if !gapless_providers::declarative::template::is_name(name) => {
            bail!(
                "[providers.{name}]: a provider's name is lowercase letters, digits and '_', starting with a letter"
            )
        }
        Some(of) if definitions.contains_key(name) && of != name => bail!(
            "[providers.{name}] definition = {of:?}: {name} is itself a defined provider; give this one another name"
        ),
        Some(of) => Some(
            definitions
                .get(of)
                .cloned()
                .with_context(|| {
                    format!("[providers.{name}] definition = {of:?}: no provider is defined by that name")
                })?
                .renamed(name),
        ),
        None => definitions.get(name).cloned(),
    })
}

/// The source connectors of `[providers.*]` (a definition, a built-in one, or a
/// hand-written connector) and of definitions that need no settings, with the request
/// budgets the configuration gives.
fn configured_sources(
    data_dir: &std::path::Path,
    file: &config::FileConfig,
) -> Result<ConfiguredSources> {
    let mut sources: Vec<Arc<dyn gapless_providers::SourceConnector>> = Vec::new();
    let mut rate_limits = Vec::new();
    let mut definitions = provider::definitions(data_dir)?;
    let mut configured = std::collections::BTreeSet::new();
    for (name, provider) in &file.providers {
        let settings = provider.settings(name)?;
        let definition = definition_of(name, provider, &definitions)?;
        configured.insert(name.clone());
        match definition {
            Some(definition) => {
                let source =
                    gapless_providers::declarative::connector::DeclarativeSource::in_region(
                        definition,
                        provider.region.as_deref(),
                        settings,
                    )
                    .with_context(|| format!("[providers.{name}]"))?;
                sources.push(Arc::new(source))
            }
            None if provider.region.is_some() => {
                bail!(
                    "[providers.{name}] region: only a provider run from a definition has regions"
                )
            }
            None => sources.push(gapless_providers::registry::source(name, settings)?),
        }
        if let Some(limit) = provider.rate_limit(name)? {
            rate_limits.push((name.clone(), limit));
        }
    }
    // A defined provider without settings runs with its own base URL when it needs no
    // OAuth client; one that does waits for its [providers.NAME] client settings.
    definitions.retain(|name, _| !configured.contains(name));
    for (name, definition) in definitions {
        let settings = gapless_providers::ProviderSettings {
            base_url: String::new(),
            client_id: String::new(),
            client_secret: gapless_vault::ClientSecret::new(String::new()),
            timeouts: gapless_providers::http::HttpTimeouts::default(),
            settings: Default::default(),
        };
        match gapless_providers::declarative::connector::DeclarativeSource::new(
            definition, settings,
        ) {
            Ok(source) => sources.push(Arc::new(source)),
            // Built-in platforms an installation does not use are quietly left out.
            Err(error) if provider::is_built_in_definition(&name) => {
                tracing::debug!(provider = %name, %error, "built-in provider not configured in gapless.toml")
            }
            Err(error) => {
                tracing::warn!(provider = %name, %error, "defined provider not usable until configured in gapless.toml")
            }
        }
    }
    Ok(ConfiguredSources {
        sources,
        rate_limits,
    })
}

/// Overrides `public_url` of the configuration file.
const PUBLIC_URL_ENV: &str = "GAPLESS_PUBLIC_URL";

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `gapless serve`: the scheduler and the HTTP server; on a signal the server stops taking
/// connections, finishes those in flight, and the scheduler finishes its tick.
async fn serve(
    engine: gapless_engine::Engine,
    listen: &str,
    every: std::time::Duration,
) -> Result<()> {
    let engine = Arc::new(engine);
    let key = engine.derive_key("gapless server sessions v1");
    let health = Arc::new(gapless_server::scheduler::SchedulerHealth::new(every));
    let state = gapless_server::AppState::with_scheduler(engine.clone(), *key, health.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    say!(
        "gapless serve: listening on http://{address} (public URL {}); Ctrl-C to stop",
        engine.config().public_url
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Supervised: a tick that fails or panics is logged, counted and tried again.
    let scheduler = {
        let engine = engine.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            gapless_server::scheduler::supervise(&health, stop_rx, || engine.tick()).await;
        })
    };
    // New messages (a failure mail) leave as soon as they are committed.
    let dispatcher = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.deliver_as_written(stop_rx).await })
    };
    let served = gapless_server::serve(listener, state, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    let _ = dispatcher.await;
    // Whatever this instance still holds is free for the others at once.
    if let Err(error) = engine.release_all_claims().await {
        tracing::warn!(%error, "claims could not be given back; they run out by themselves");
    }
    engine.store().close().await;
    say!("gapless serve: stopped");
    served.context("serving HTTP")
}

/// Tick until Ctrl-C or SIGTERM (or once). A signal during a tick lets the tick finish
/// (a refresh in flight commits its rotated token) and then stops.
async fn run_scheduler(
    engine: &gapless_engine::Engine,
    once: bool,
    every: std::time::Duration,
) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // Listening from the start: a SIGTERM in the middle of a tick is held until it ends.
    let signals = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
    };
    // New messages (a failure mail) leave as soon as they are committed, between ticks too.
    let dispatcher = async {
        if !once {
            engine.deliver_as_written(stop_rx.clone()).await;
        }
    };
    let ticks = async {
        let mut stop_rx = stop_rx.clone();
        loop {
            let log = engine.tick().await?;
            for event in &log.events {
                tracing::info!(event = %event.line(), "tick");
                if !event.is_detail() {
                    say!("{}", event.line());
                }
            }
            if once || *stop_rx.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop_rx.changed() => return Ok(()),
            }
        }
    };
    let (result, ()) = tokio::join!(
        async {
            let result = ticks.await;
            // The dispatcher stops with the ticks, whatever ended them.
            let _ = stop_tx.send(true);
            result
        },
        dispatcher
    );
    signals.abort();
    if let Err(error) = engine.release_all_claims().await {
        tracing::warn!(%error, "claims could not be given back; they run out by themselves");
    }
    result
}

fn key_from_env() -> Result<Option<Vault>> {
    match std::env::var(MASTER_KEY_ENV) {
        Ok(value) => Ok(Some(Vault::new(
            Keyring::parse(&value).with_context(|| format!("reading {MASTER_KEY_ENV}"))?,
        ))),
        Err(_) => Ok(None),
    }
}

async fn init(data_dir: &std::path::Path, store: Option<&str>) -> Result<()> {
    // Validate the settings before touching anything.
    let location = StoreLocation::from_setting(store, data_dir)?;
    let env_key = key_from_env()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    private_dir(data_dir)?;
    let opened = Store::open(&location).await?;
    opened.close().await;
    let key_file = data_dir.join("master.key");
    if env_key.is_some() {
        say!("master key: from {MASTER_KEY_ENV}");
    } else if key_file.exists() {
        Keyring::load(None, &key_file)
            .with_context(|| format!("reading the key file {}", key_file.display()))?;
        say!("master key: {} (exists, kept)", key_file.display());
    } else {
        gapless_vault::create_key_file(&key_file)?;
        say!(
            "master key: {} (created, mode 0600; back it up)",
            key_file.display()
        );
    }
    say!("store: {} (ready)", location.describe());
    Ok(())
}

/// How much of the demo's timeline to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeline {
    None,
    Essential,
    Everything,
}

async fn demo(
    data_dir: &std::path::Path,
    timeline: Timeline,
    days: u32,
    revoke_day: u32,
    reauth_day: u32,
) -> Result<()> {
    let dir = data_dir.join("demo");
    let json = timeline == Timeline::None;
    if !json {
        say!(
            "gapless demo: {days} virtual days against the sandbox ad platform; state in {}",
            dir.display()
        );
        say!(
            "the app is revoked on day {revoke_day}, the account holder reauthorizes on day {reauth_day}\n"
        );
    }
    let summary = gapless_demo::demo::run(
        DemoOptions {
            dir,
            vault: key_from_env()?,
            days,
            revoke_day,
            reauth_day,
        },
        |event| {
            let show = match timeline {
                Timeline::None => false,
                Timeline::Essential => !event.is_detail(),
                Timeline::Everything => true,
            };
            if show {
                say!("{}", event.line());
            }
        },
    )
    .await
    .context("the demo could not run")?;
    if json {
        say!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if !summary.ok() {
        bail!("the demo ended with missing or wrong windows");
    }
    Ok(())
}

fn print_summary(s: &DemoSummary) {
    say!("\nSummary");
    say!(
        "  windows:   {} (loaded {}, missing {}, lost {})",
        s.windows,
        s.windows_loaded,
        s.windows_missing,
        s.windows_lost
    );
    say!(
        "  rows:      {} loaded, {} in the provider's truth; {}/{} windows identical to the truth",
        s.rows_loaded,
        s.rows_truth,
        s.windows_matching_truth,
        s.windows
    );
    say!(
        "  incidents: {}{}; {} window(s) back-filled after reauthorization",
        s.incidents_opened,
        s.incident_cause
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
        s.windows_back_filled
    );
    say!("  emails:    {}", s.emails.len());
    for email in &s.emails {
        say!("             {email}");
    }
    say!(
        "  provider:  {} refresh-token reuse, {} call(s) with an expired access token",
        s.refresh_token_reuse_seen_by_provider,
        s.expired_token_calls_seen_by_provider
    );
}

async fn sandbox(listen: &str) -> Result<()> {
    let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(SystemClock));
    let handle = sandbox
        .bind(listen)
        .await
        .with_context(|| format!("starting the sandbox on {listen}"))?;
    say!("sandbox ad platform listening on {}", handle.base_url());
    say!("  OAuth client:  {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET}");
    say!("  user:          {DEMO_USER} / {DEMO_PASSWORD}");
    say!("  consent page:  {}/oauth/authorize", handle.base_url());
    say!(
        "  fault control: POST {}/admin/faults (JSON)",
        handle.base_url()
    );
    say!("press Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
