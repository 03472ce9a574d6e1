//! `gapless pipeline …`, `gapless gaps`, `gapless backfill`.

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::Subcommand;
use gapless_core::{Pipeline, PipelineId, PipelineState, WindowSize};
use gapless_engine::{Engine, EventLog};

use crate::config::FileConfig;

// Parsed once per process; the size of a variant does not matter.
/// What `pipeline add` is given.
#[derive(Debug, clap::Args)]
pub struct AddPipeline {
    #[arg(long)]
    pub name: String,
    /// The source identity (label or id).
    #[arg(long)]
    pub source: String,
    /// The upstream resource, e.g. an ad account id.
    #[arg(long)]
    pub resource: String,
    /// A stream of the provider (repeatable; default: all of them).
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// `sqlite:FILE` (in the data directory unless absolute), or the name of a
    /// configured `[destinations.NAME]`.
    #[arg(long, default_value = "sqlite:warehouse.sqlite")]
    pub destination: String,
    /// The identity holding the destination's password (for configured destinations).
    #[arg(long)]
    pub destination_identity: Option<String>,
    /// Window length: 1d (default), 1h, or any duration that divides a day.
    #[arg(long, default_value = "1d")]
    pub window: String,
    /// Trailing windows re-pulled until settled (default: the provider's; at most 10,000).
    #[arg(long, value_parser = settle_windows())]
    pub settle: Option<u32>,
    /// The first day to sync (YYYY-MM-DD, in the pipeline's time zone), or the first
    /// instant (2026-12-01T07:05:00Z) for windows shorter than a day.
    #[arg(long)]
    pub start: String,
    /// When to run: a cron expression in the pipeline's time zone, e.g. "0 3 * * *", or
    /// an interval, e.g. "every 6h" (default: every tick of `gapless run`).
    #[arg(long)]
    pub schedule: Option<String>,
    /// The IANA time zone whose days the windows follow, e.g. America/New_York; use the
    /// zone the provider reports the account's days in.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Create a pipeline: source identity + resource + streams → destination.
    Add(AddPipeline),
    /// List pipelines.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop running a pipeline until it is resumed (its windows are not recorded meanwhile;
    /// the next run catches up with what the provider still serves).
    Pause {
        pipeline: String,
        /// Why, for the listing and the dashboard.
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Run a paused pipeline again.
    Resume { pipeline: String },
    /// Change a pipeline's name, source identity, schedule or settle period (what can
    /// change without invalidating its ledger).
    Edit {
        pipeline: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Another identity of the same provider (label or id).
        #[arg(long)]
        source: Option<String>,
        /// A cron expression or "every 6h".
        #[arg(long, conflicts_with = "every_tick")]
        schedule: Option<String>,
        /// Run on every tick (no schedule).
        #[arg(long)]
        every_tick: bool,
        /// Trailing windows re-pulled until settled (at most 10,000).
        #[arg(long, value_parser = settle_windows())]
        settle: Option<u32>,
    },
    /// Delete a pipeline and its ledger; the data already loaded stays in the destination.
    Delete {
        pipeline: String,
        /// Confirm: the ledger (which windows were loaded, missing, lost) goes with it.
        #[arg(long)]
        yes: bool,
    },
}

/// `--start`: a day in the pipeline's time zone, or an instant.
fn parse_start(
    text: &str,
    grid: gapless_core::WindowGrid,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let at = if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        grid.day_start(day)
    } else {
        match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => at.with_timezone(&chrono::Utc),
            Err(_) => bail!(
                "--start {text:?} is neither a day (2026-12-01) nor an instant with its offset (2026-12-01T07:05:00Z)"
            ),
        }
    };
    // Bounded: every complete window from the start on is planned.
    let earliest = NaiveDate::from_ymd_opt(2000, 1, 1)
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .unwrap_or(at);
    if at < earliest {
        bail!("--start {text:?} is before 2000-01-01; no reporting API serves data that old");
    }
    if at > chrono::Utc::now() + chrono::Duration::days(366) {
        bail!("--start {text:?} is more than a year ahead");
    }
    Ok(at)
}

pub async fn run(engine: &Engine, file: &FileConfig, command: PipelineCommand) -> Result<()> {
    match command {
        PipelineCommand::Add(args) => add(engine, file, args).await?,
        PipelineCommand::List { json } => list(engine, json).await?,
        PipelineCommand::Pause { pipeline, reason } => pause(engine, pipeline, reason).await?,
        PipelineCommand::Resume { pipeline } => resume(engine, pipeline).await?,
        PipelineCommand::Edit {
            pipeline,
            name,
            source,
            schedule,
            every_tick,
            settle,
        } => edit(engine, pipeline, name, source, schedule, every_tick, settle).await?,
        PipelineCommand::Delete { pipeline, yes } => delete(engine, pipeline, yes).await?,
    }
    Ok(())
}

/// `gapless gaps [PIPELINE] [--json]`.
pub async fn gaps(engine: &Engine, pipeline: Option<String>, json: bool) -> Result<()> {
    let pipelines = match pipeline {
        Some(name) => vec![engine.store().find_pipeline(&name).await?],
        None => engine.store().list_pipelines().await?,
    };
    let mut all = Vec::new();
    for p in &pipelines {
        for gap in engine.gaps(p).await? {
            all.push((p.name.clone(), p.grid(), gap));
        }
    }
    if json {
        let mut rows = Vec::new();
        for (name, _, g) in &all {
            let reason = match &g.reason {
                Some(r) => Some(engine.reason_words(r).await),
                None => None,
            };
            rows.push(serde_json::json!({"pipeline": name, "gap": g, "reason": reason}));
        }
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        say!("no gaps: every complete window is loaded");
        return Ok(());
    }
    for (name, grid, g) in all {
        let range = grid.range_label(g.from, g.to);
        let reason = match &g.reason {
            Some(r) => engine.reason_words(r).await,
            None => String::new(),
        };
        say!(
            "{name}/{}  {range}  {} window(s)  {:<8} {}{}",
            g.stream,
            g.windows,
            g.state,
            reason,
            g.recoverable_until
                .map(|u| format!("; recoverable until {}", u.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_else(|| if g.state == "lost" {
                    "; unrecoverable".into()
                } else {
                    String::new()
                })
        );
    }
    Ok(())
}

/// `gapless backfill PIPELINE --from D --to D [--dry-run]`.
pub async fn backfill(
    engine: &Engine,
    pipeline: &str,
    from: NaiveDate,
    to: NaiveDate,
    dry_run: bool,
) -> Result<()> {
    let p = engine.store().find_pipeline(pipeline).await?;
    gapless_core::check_day("--from", from).map_err(anyhow::Error::msg)?;
    gapless_core::check_day("--to", to).map_err(anyhow::Error::msg)?;
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let end = to
        .succ_opt()
        .context("--to is the last representable day")?;
    let grid = p.grid();
    let plan = engine
        .plan_backfill(&p, grid.day_start(from), grid.day_start(end))
        .await?;
    say!(
        "{}: {} window(s) to pull, about {} request(s){}",
        p.name,
        plan.windows.len(),
        plan.estimated_requests,
        if plan.unrecoverable.is_empty() {
            String::new()
        } else {
            format!(
                "; {} window(s) past the provider's lookback cannot be recovered",
                plan.unrecoverable.len()
            )
        }
    );
    if dry_run {
        for w in &plan.windows {
            say!(
                "  {} {}{}",
                w.stream,
                grid.label(w.window),
                w.deadline
                    .map(|d| format!("  (recoverable until {})", d.format("%Y-%m-%d")))
                    .unwrap_or_default()
            );
        }
        for (stream, w) in &plan.unrecoverable {
            say!("  {stream} {}  unrecoverable", grid.label(*w));
        }
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(plan.windows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} windows  {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut log = EventLog::default();
    let outcome = engine
        .backfill(&p, &plan, &mut log, |done, _| bar.set_position(done as u64))
        .await?;
    bar.finish_and_clear();
    engine.dispatch_outbox(&mut log).await?;
    say!("{} window(s) loaded", outcome.loaded);
    if let Some(reason) = outcome.stopped_because {
        bail!(
            "stopped with {} window(s) not loaded: {reason}",
            outcome.not_loaded
        );
    }
    Ok(())
}

/// `gapless simulate --identity X [--start D] --days N`.
pub async fn simulate(
    engine: &Engine,
    identity: &str,
    start: Option<NaiveDate>,
    days: u32,
    json: bool,
) -> Result<()> {
    let found = engine.store().find_identity(identity).await?;
    if let Some(day) = start {
        gapless_core::check_day("--start", day).map_err(anyhow::Error::msg)?;
    }
    let start = start
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .unwrap_or_else(|| engine.clock().now());
    let results = engine
        .simulate_outage(found.id, start, chrono::Duration::days(i64::from(days)))
        .await?;
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(p, s, f)| serde_json::json!({"pipeline": p, "stream": s, "forecast": f}))
            .collect();
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if results.is_empty() {
        say!("no pipeline depends on {}", found.label);
        return Ok(());
    }
    say!(
        "if {} is broken from {} for {days} day(s):",
        found.label,
        start.format("%Y-%m-%d %H:%M UTC")
    );
    for (pipeline, stream, f) in results {
        let range = |ws: &[gapless_core::Window]| match (ws.first(), ws.last()) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "none".into(),
        };
        say!(
            "  {pipeline}/{stream}: {} window(s) recovered ({}), {} lost ({}){}",
            f.recovered.len(),
            range(&f.recovered),
            f.lost.len(),
            range(&f.lost),
            f.reauthorize_by
                .map(|d| format!(
                    "; reauthorize by {} to lose nothing",
                    d.format("%Y-%m-%d %H:%M UTC")
                ))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `gapless spool`: what waits for a destination, its size, and what is stale.
pub async fn spool(engine: &Engine, json: bool) -> Result<()> {
    let spool = engine.spool();
    let entries = spool.list(None)?;
    let (files, bytes, oldest) = spool.usage()?;
    let now = engine.clock().now();
    let names: std::collections::HashMap<PipelineId, String> = engine
        .store()
        .list_pipelines()
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    if json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                let extracted_at = spool.inspect(e).ok().map(|w| w.extracted_at);
                serde_json::json!({
                    "pipeline": names.get(&e.pipeline).cloned().unwrap_or_else(|| e.pipeline.to_string()),
                    "stream": e.stream,
                    "window_start": e.window_start,
                    "bytes": e.bytes,
                    "extracted_at": extracted_at,
                    "corrupt": extracted_at.is_none(),
                    "stale": extracted_at.is_some_and(|at| now - at > spool.max_age),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "windows": files, "bytes": bytes, "max_bytes": spool.max_bytes,
                "oldest_window": oldest, "entries": rows,
            }))?
        );
        return Ok(());
    }
    say!(
        "spool: {files} window(s), {bytes} of {} bytes{}",
        spool.max_bytes,
        oldest
            .map(|o| format!(", oldest window {}", o.format("%Y-%m-%d")))
            .unwrap_or_default()
    );
    for e in entries {
        let note = match spool.inspect(&e) {
            Err(error) => format!("  CORRUPT: {error}"),
            Ok(w) if now - w.extracted_at > spool.max_age => format!(
                "  extracted {}, past the age limit: kept because the provider no longer serves it",
                w.extracted_at.format("%Y-%m-%d %H:%M")
            ),
            Ok(w) => format!("  extracted {}", w.extracted_at.format("%Y-%m-%d %H:%M")),
        };
        say!(
            "  {}/{} {}  {} bytes{note}",
            names
                .get(&e.pipeline)
                .cloned()
                .unwrap_or_else(|| e.pipeline.to_string()),
            e.stream,
            e.window_start.format("%Y-%m-%d %H:%M"),
            e.bytes,
        );
    }
    Ok(())
}

/// `--window`: at least a minute, dividing a day; short windows cost requests, said once.
/// `--settle`: a number of windows, bounded where it is parsed.
fn settle_windows() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(..=i64::from(gapless_core::pipeline::MAX_SETTLE_WINDOWS))
}

fn window_size(text: &str) -> Result<WindowSize> {
    let seconds = crate::config::duration("--window", text)?.num_seconds();
    if seconds < 60 {
        bail!(
            "--window {text}: windows shorter than a minute are not supported (each window is at least one request to the provider)"
        );
    }
    let window = WindowSize::from_seconds(seconds)?;
    if seconds < 3_600 {
        say!(
            "note: {}-second windows are {} requests a day per stream to the provider",
            seconds,
            86_400 / seconds
        );
    }
    Ok(window)
}

/// The resource must be one the identity can read, when its provider lists them or, for
/// one a listing does not show (a client account reached through a manager), when the
/// provider's resource probe says so.
async fn check_resource(
    engine: &Engine,
    identity: &gapless_core::Identity,
    resource: &str,
) -> Result<()> {
    match engine.resources_of(identity.id).await? {
        Ok(listed) if !listed.is_empty() && !listed.iter().any(|r| r.id == resource) => {
            match engine.reaches(identity.id, resource).await? {
                Ok(true) => {}
                Ok(false) => bail!(
                    "--resource {resource:?} is not one {} can read; it can read: {}",
                    identity.label,
                    listed
                        .iter()
                        .map(|r| if r.id == r.name {
                            r.id.clone()
                        } else {
                            format!("{} ({})", r.id, r.name)
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(reason) => bail!(
                    "--resource {resource:?} is not one {} can read: {reason}",
                    identity.label
                ),
            }
        }
        Ok(_) => {}
        Err(reason) => say!(
            "note: the resources of {} cannot be listed now ({reason}); --resource {resource} is not checked",
            identity.label
        ),
    }
    Ok(())
}

/// `--destination` (and `--destination-identity`): (kind, target, the identity holding its
/// password).
async fn destination_of(
    engine: &Engine,
    file: &FileConfig,
    destination: &str,
    destination_identity: Option<String>,
) -> Result<(String, String, Option<gapless_core::IdentityId>)> {
    Ok(match destination.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() => ("sqlite".to_string(), path.to_string(), None),
        Some(_) => bail!("--destination sqlite: needs a file name"),
        None => {
            if !file.destinations.contains_key(destination) {
                bail!(
                    "--destination {destination:?} is neither sqlite:FILE nor a configured [destinations.{destination}]"
                );
            }
            let Some(label) = destination_identity else {
                bail!(
                    "--destination {destination} needs --destination-identity (the identity holding its password)"
                );
            };
            let id = engine.store().find_identity(&label).await?;
            if id.provider != destination {
                bail!(
                    "identity {} belongs to {}, not {destination}",
                    id.label,
                    id.provider
                );
            }
            ("postgres".to_string(), destination.to_string(), Some(id.id))
        }
    })
}

/// The streams a new pipeline reads: those asked for, each one the provider offers, or
/// all of the provider's when none was asked for.
fn streams_asked(
    descriptor: &gapless_providers::ProviderDescriptor,
    asked: Vec<String>,
) -> Result<Vec<String>> {
    let offered = || descriptor.streams.iter().map(|s| s.schema.name.clone());
    if asked.is_empty() {
        return Ok(offered().collect());
    }
    if let Some(unknown) = asked.iter().find(|s| descriptor.stream(s).is_none()) {
        bail!(
            "{} has no stream {unknown:?}; it has: {}",
            descriptor.name,
            offered().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(asked)
}

/// `gapless pipeline add`.
async fn add(engine: &Engine, file: &FileConfig, args: AddPipeline) -> Result<()> {
    let AddPipeline {
        name,
        source,
        resource,
        streams,
        destination,
        destination_identity,
        window,
        settle,
        start,
        schedule,
        time_zone,
    } = args;
    let store = engine.store();
    let time_zone = gapless_core::parse_time_zone(&time_zone).context("--time-zone")?;
    let window = window_size(&window)?;
    let start = parse_start(&start, gapless_core::WindowGrid::new(window, time_zone))?;
    if let Some(expression) = &schedule {
        gapless_core::pipeline::parse_schedule(expression)?;
    }
    if name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let identity = store
        .find_identity(&source)
        .await
        .with_context(|| format!("--source {source:?}"))?;
    let descriptor = engine
        .provider(&identity.provider)
        .with_context(|| format!("identity {} is not a source", identity.label))?
        .clone();
    let streams = streams_asked(&descriptor, streams)?;
    check_resource(engine, &identity, &resource).await?;
    let (kind, target, destination_identity) =
        destination_of(engine, file, &destination, destination_identity).await?;
    // By default the longest settle period of the streams read.
    let settle = settle.unwrap_or_else(|| {
        streams
            .iter()
            .filter_map(|s| descriptor.stream(s).map(|d| d.settle_windows))
            .max()
            .unwrap_or(0)
    });
    let pipeline = Pipeline {
        id: PipelineId::new(),
        name: name.trim().to_string(),
        source_identity: identity.id,
        source_resource: resource,
        streams,
        destination_kind: kind,
        destination_target: target,
        destination_identity,
        window,
        settle_windows: settle,
        schedule: schedule.clone(),
        time_zone,
        start,
        state: PipelineState::Active,
    };
    store
        .insert_pipeline(&pipeline, engine.clock().now())
        .await?;
    say!(
        "pipeline {} created: {} {} → {} {} (windows of {}s, settle {})",
        pipeline.name,
        identity.label,
        pipeline.source_resource,
        pipeline.destination_kind,
        pipeline.destination_target,
        window.seconds(),
        settle
    );
    Ok(())
}

/// `gapless pipeline list`.
async fn list(engine: &Engine, json: bool) -> Result<()> {
    let store = engine.store();
    let pipelines = store.list_pipelines().await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&pipelines)?);
    } else if pipelines.is_empty() {
        say!("no pipelines; create one with `gapless pipeline add`");
    } else {
        for p in pipelines {
            say!(
                "{:<24} {:<22} {} → {} {}  ({}, {})",
                p.name,
                p.state.name(),
                p.source_resource,
                p.destination_kind,
                p.destination_target,
                p.time_zone.name(),
                p.schedule.as_deref().unwrap_or("every tick")
            );
        }
    }
    Ok(())
}

/// `gapless pipeline pause`.
async fn pause(engine: &Engine, pipeline: String, reason: String) -> Result<()> {
    let store = engine.store();
    let p = store.find_pipeline(&pipeline).await?;
    store
        .set_pipeline_state(
            p.id,
            &PipelineState::Paused { reason },
            engine.clock().now(),
        )
        .await?;
    say!("pipeline {} paused", p.name);
    Ok(())
}

/// `gapless pipeline resume`.
async fn resume(engine: &Engine, pipeline: String) -> Result<()> {
    let store = engine.store();
    let p = store.find_pipeline(&pipeline).await?;
    if !matches!(p.state, PipelineState::Paused { .. }) {
        bail!(
            "pipeline {} is not paused (it is {})",
            p.name,
            p.state.name()
        );
    }
    // It waits for a broken identity instead, if one is.
    let mut state = PipelineState::Active;
    for id in std::iter::once(p.source_identity).chain(p.destination_identity) {
        if matches!(
            store.identity(id).await?.health,
            gapless_core::Health::NeedsReauth { .. }
        ) {
            state = PipelineState::WaitingForIdentity { identity: id };
        }
    }
    store
        .set_pipeline_state(p.id, &state, engine.clock().now())
        .await?;
    say!("pipeline {} resumed ({})", p.name, state.name());
    Ok(())
}

/// `gapless pipeline edit`.
async fn edit(
    engine: &Engine,
    pipeline: String,
    name: Option<String>,
    source: Option<String>,
    schedule: Option<String>,
    every_tick: bool,
    settle: Option<u32>,
) -> Result<()> {
    let store = engine.store();
    let mut p = store.find_pipeline(&pipeline).await?;
    if let Some(name) = name {
        if name.trim().is_empty() {
            bail!("--name must not be empty");
        }
        p.name = name.trim().to_string();
    }
    if let Some(source) = source {
        let old = store.identity(p.source_identity).await?;
        let new = store
            .find_identity(&source)
            .await
            .with_context(|| format!("--source {source:?}"))?;
        if new.provider != old.provider {
            bail!(
                "--source {} is a {} identity; pipeline {} reads {}",
                new.label,
                new.provider,
                p.name,
                old.provider
            );
        }
        p.source_identity = new.id;
    }
    if let Some(expression) = schedule {
        gapless_core::pipeline::parse_schedule(&expression)?;
        p.schedule = Some(expression);
    }
    if every_tick {
        p.schedule = None;
    }
    if let Some(settle) = settle {
        p.settle_windows = settle;
    }
    store.update_pipeline(&p, engine.clock().now()).await?;
    say!(
        "pipeline {} updated: source {}, {}, settle {}",
        p.name,
        store.identity(p.source_identity).await?.label,
        p.schedule.as_deref().unwrap_or("every tick"),
        p.settle_windows
    );
    Ok(())
}

/// `gapless pipeline delete`.
async fn delete(engine: &Engine, pipeline: String, yes: bool) -> Result<()> {
    let store = engine.store();
    let p = store.find_pipeline(&pipeline).await?;
    if !yes {
        bail!(
            "deleting pipeline {} drops its ledger (which windows were loaded, missing or lost); add --yes to confirm",
            p.name
        );
    }
    store.delete_pipeline(p.id).await?;
    say!(
        "pipeline {} deleted; its data stays in {} {}",
        p.name,
        p.destination_kind,
        p.destination_target
    );
    Ok(())
}
