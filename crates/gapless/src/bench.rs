//! `gapless bench …`: each benchmark run and its figures printed (or its JSON).

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;

/// Where `bench e2e` loads.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum E2eTarget {
    Postgres,
    Sqlite,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Destination only: rows per second into PostgreSQL through the destination next to
    /// `psql \copy` of the same rows, then the time to replace small windows in that table.
    /// Leaves out extraction, HTTP, parsing and the ledger (uses the test server:
    /// GAPLESS_TEST_POSTGRES).
    Load {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// End to end, the path a daily run takes: the sandbox serves ROWS_PER_WINDOW rows per
    /// day in pages of 500 over HTTP; the engine ticks until WINDOWS daily windows are
    /// parsed, loaded into the destination and recorded in the ledger (state in SQLite).
    /// Each window is then read back and compared with the sandbox's rows, and the same rows
    /// go through the database's own bulk loader (`psql \copy` or `sqlite3 .import`) for
    /// comparison, into a table of the report's columns and into one shaped as the
    /// destination's (its window columns and index), each in a database of its own.
    /// PostgreSQL is the test server (GAPLESS_TEST_POSTGRES).
    E2e {
        /// 1 to 1,000,000.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rows_per_window: u32,
        /// 1 to 3,650 daily windows.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3_650))]
        windows: u32,
        #[arg(long, value_enum, default_value_t = E2eTarget::Postgres)]
        destination: E2eTarget,
        #[arg(long)]
        json: bool,
    },
    /// Gap computation and sync planning over many pipelines' ledgers.
    Gaps {
        #[arg(long, default_value_t = 10_000)]
        pipelines: usize,
        /// Daily windows per pipeline (3 years: 1095).
        #[arg(long, default_value_t = 1095)]
        days: usize,
        #[arg(long)]
        json: bool,
    },
    /// Many identities break at once: time to each Authorization Failure mail accepted by a
    /// local SMTP server, from the start of the sweep that meets the failures and from the
    /// moment each failure was handled (first/p50/p99/max).
    Notify {
        #[arg(long, default_value_t = 1000)]
        incidents: usize,
        /// The state store on the PostgreSQL test server (GAPLESS_TEST_POSTGRES) instead
        /// of SQLite.
        #[arg(long)]
        postgres: bool,
        #[arg(long)]
        json: bool,
    },
    /// Identities living through random outages in virtual time: each connected through
    /// its own consent with one daily pipeline; a person removes the app from one
    /// connection and reauthorizes it later (about half the outages outlast the lookback),
    /// the engine ticks once a day against the sandbox over HTTP (state and warehouse in
    /// SQLite). At the end every window and incident is checked: each window the provider
    /// still served when its identity came back is loaded, each lost window was past the
    /// lookback, each outage is one incident. Fails when one of them does not hold.
    /// Leaves out request budgets: every identity reads the one sandbox account, whose
    /// budget would be shared by all of them.
    Simulate {
        /// 1 to 100,000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        identities: u32,
        /// 1 to 3,650 simulated days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3_650))]
        days: u32,
        /// How many days back the sandbox serves reports (1 to 3,650).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3_650))]
        lookback_days: u32,
        /// The outage plan is a function of this number.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Many identities, one daily pipeline each, run by several instances on one store
    /// against the sandbox answering after a delay: the time of the round in which every
    /// pipeline has a new day due (refresh, report request, parse, load, ledger), the cost
    /// of a tick with nothing due, memory per identity. Identities are written straight to
    /// the store (no consent flow) and share one sandbox account, so request budgets are
    /// off. The instances are engines in this process.
    Scale {
        /// 1 to 1,000,000.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        identities: u32,
        /// 1 to 64 engines in this process.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        instances: u32,
        /// Runs in flight per instance (1 to 1,024; by default the engine's: 128 on
        /// PostgreSQL, 16 on SQLite).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: Option<u32>,
        /// Each sandbox API call answers after this many milliseconds (at most 60,000).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        latency_ms: u64,
        /// The state store on the PostgreSQL test server (GAPLESS_TEST_POSTGRES) instead
        /// of SQLite.
        #[arg(long)]
        postgres: bool,
        #[arg(long)]
        json: bool,
    },
    /// What a tick costs when the PostgreSQL store holds many identities and little is
    /// due: `--templates` identities with one pipeline each are written straight to the
    /// store (as in `scale`), the rest are copies of them made by SQL (rounded up to a
    /// multiple of the templates), due from the fourth day on, spread over a day; then
    /// five ticks a minute apart (what is due: the templates' probes of that minute) and
    /// the round in which the templates' pipelines have a new day due (sandbox without
    /// latency). Needs GAPLESS_TEST_POSTGRES.
    Due {
        /// 1 to 10,000,000.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        identities: u32,
        /// 1 to 100,000.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        templates: u32,
        #[arg(long)]
        json: bool,
    },
    /// What a person waits for when the installation is large: N identities with one
    /// pipeline each (written straight to the store), then over HTTP on a local server,
    /// three times each: the API's first page of identities and a page from the middle,
    /// the dashboard's first page (those that need a person first), the first page of
    /// pipelines of the API and of the dashboard, `/metrics`, and every identity read page
    /// after page as `gapless identity list` does. No pipeline runs: each pipeline's ledger
    /// is `--windows` loaded daily windows written straight to the store (none by default);
    /// there are no open incidents, so that part of each page reads nothing.
    Listing {
        /// 1 to 1,000,000.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        identities: u32,
        /// Loaded daily windows in each pipeline's ledger, ending yesterday (0 to 3,660).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3660))]
        windows: u32,
        /// The state store on the PostgreSQL test server (GAPLESS_TEST_POSTGRES) instead
        /// of SQLite.
        #[arg(long)]
        postgres: bool,
        #[arg(long)]
        json: bool,
    },
    /// Identities refreshed and probed per second, next to raw HTTP requests per second on
    /// the same sandbox endpoints.
    Refresh {
        #[arg(long, default_value_t = 50)]
        identities: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long)]
        json: bool,
    },
}

/// `<data-dir>/<name>`, emptied: each benchmark run starts from nothing.
pub(crate) fn fresh_dir(data_dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = data_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(dir)
}

pub async fn run(data_dir: &Path, what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Load { rows, json } => load(rows, json).await,
        BenchCommand::Gaps {
            pipelines,
            days,
            json,
        } => gaps(pipelines, days, json).await,
        BenchCommand::Notify {
            incidents,
            postgres,
            json,
        } => notify(data_dir, incidents, postgres, json).await,
        BenchCommand::Refresh {
            identities,
            rounds,
            json,
        } => refresh(data_dir, identities, rounds, json).await,
        BenchCommand::Simulate {
            identities,
            days,
            lookback_days,
            seed,
            json,
        } => simulate(data_dir, identities, days, lookback_days, seed, json).await,
        BenchCommand::Scale {
            identities,
            instances,
            concurrency,
            latency_ms,
            postgres,
            json,
        } => {
            scale(
                data_dir,
                identities,
                instances,
                concurrency,
                latency_ms,
                postgres,
                json,
            )
            .await
        }
        BenchCommand::Due {
            identities,
            templates,
            json,
        } => due(data_dir, identities, templates, json).await,
        BenchCommand::Listing {
            identities,
            windows,
            postgres,
            json,
        } => crate::bench_listing::run(data_dir, identities, windows, postgres, json).await,
        BenchCommand::E2e {
            rows_per_window,
            windows,
            destination,
            json,
        } => e2e(data_dir, rows_per_window, windows, destination, json).await,
    }
}

/// `gapless bench load`.
async fn load(rows: usize, json: bool) -> Result<()> {
    let b = gapless_demo::bench::load(rows).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "load bench (destination only: no extraction, HTTP, parsing or ledger): {} rows into PostgreSQL",
            b.rows
        );
        say!(
            "  gapless (COPY + replace window):        {:>10.0} rows/s ({:.0} ms)",
            b.gapless_rows_per_sec,
            b.gapless_ms
        );
        say!(
            "  psql \\copy (CSV):                       {:>10.0} rows/s ({:.0} ms, into a table of the report's columns)",
            b.psql_copy_rows_per_sec,
            b.psql_copy_ms
        );
        say!(
            "  psql \\copy (CSV):                       {:>10.0} rows/s ({:.0} ms, into a table shaped as the destination's: window columns, index)",
            b.psql_copy_shaped_rows_per_sec,
            b.psql_copy_shaped_ms
        );
        say!(
            "  ratio:                                  {:>10.2}    (to the bare table; to the shaped one: {:.2})",
            b.ratio,
            b.ratio_shaped
        );
        say!(
            "  then {} windows of {} rows replaced in that table: {:.1} ms each (median), {:.1} ms at most",
            b.small_windows,
            b.small_window_rows,
            b.small_window_ms_p50,
            b.small_window_ms_max
        );
    }
    Ok(())
}

/// `gapless bench gaps`.
async fn gaps(pipelines: usize, days: usize, json: bool) -> Result<()> {
    let b = gapless_demo::bench::gaps(pipelines, days);
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "gaps bench: {} pipelines x {} daily windows = {} ledger entries",
            b.pipelines,
            b.days,
            b.ledger_entries
        );
        say!(
            "  gaps computed ({} ranges):     {:>8.0} ms",
            b.gap_ranges,
            b.gaps_ms
        );
        say!("  sync plans computed:            {:>8.0} ms", b.plan_ms);
    }
    Ok(())
}

/// A fresh database on the PostgreSQL test server when `postgres` is set (dropped with it).
pub(crate) async fn test_database(
    postgres: bool,
) -> Result<Option<gapless_store::testing::TestDatabase>> {
    Ok(if postgres {
        Some(gapless_store::testing::TestDatabase::create().await?)
    } else {
        None
    })
}

/// `gapless bench due`.
async fn due(data_dir: &Path, identities: u32, templates: u32, json: bool) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench-due")?;
    let database = gapless_store::testing::TestDatabase::create().await?;
    let b = gapless_demo::bench::due(
        &dir,
        identities as usize,
        templates as usize,
        database.location.clone(),
    )
    .await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
        return Ok(());
    }
    say!(
        "due bench: {} identities and {} pipelines in PostgreSQL ({} through the store, the rest copied by SQL)",
        b.identities,
        b.pipelines,
        b.templates
    );
    say!("  setup through the store:  {:>9.1} s", b.setup_secs);
    say!("  copies by SQL, ANALYZE:   {:>9.1} s", b.replicate_secs);
    say!(
        "  tick a minute later:      {:>9.1} ms min, {:.1} median, {:.1} max (5 ticks; due: the probes of that minute)",
        b.idle_tick_ms.first_ms,
        b.idle_tick_ms.p50_ms,
        b.idle_tick_ms.max_ms
    );
    say!(
        "  round, templates due:     {:>9.2} s ({} windows)",
        b.round_secs,
        b.windows_loaded
    );
    Ok(())
}

/// `gapless bench notify`.
async fn notify(data_dir: &Path, incidents: usize, postgres: bool, json: bool) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench-notify")?;
    let database = test_database(postgres).await?;
    let b = gapless_demo::bench::notify(
        &dir,
        incidents,
        database.as_ref().map(|d| d.location.clone()),
    )
    .await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "notify bench: {} identities break at once; local SMTP server, {} store",
            b.incidents,
            b.store
        );
        say!(
            "  failures confirmed and queued (one sweep): {:>8.0} ms",
            b.confirm_all_ms
        );
        say!("  SMTP accepted, ms       first      p50      p99      max");
        for (label, spread) in [
            ("since the sweep began", &b.since_sweep),
            ("since its failure    ", &b.since_failure),
        ] {
            say!(
                "    {label} {:>6.0} {:>8.0} {:>8.0} {:>8.0}",
                spread.first_ms,
                spread.p50_ms,
                spread.p99_ms,
                spread.max_ms
            );
        }
        say!(
            "  mails accepted:                            {:>8}",
            b.mails_accepted
        );
    }
    Ok(())
}

/// `gapless bench refresh`.
async fn refresh(data_dir: &Path, identities: usize, rounds: usize, json: bool) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench")?;
    let b = gapless_demo::bench::refresh(&dir, identities, rounds).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "refresh bench: {} identities x {} rounds, one client, sequential",
            b.identities,
            b.rounds
        );
        say!(
            "  gapless refresh (token call + seal + fenced commit): {:>8.0} identities/s",
            b.gapless_refreshes_per_sec
        );
        say!(
            "  raw token endpoint requests:                          {:>8.0} requests/s",
            b.raw_token_requests_per_sec
        );
        say!(
            "  gapless probe (who am I + record facts):              {:>8.0} identities/s",
            b.gapless_probes_per_sec
        );
        say!(
            "  raw probe endpoint requests:                          {:>8.0} requests/s",
            b.raw_probe_requests_per_sec
        );
    }
    Ok(())
}

/// `gapless bench simulate`.
async fn simulate(
    data_dir: &Path,
    identities: u32,
    days: u32,
    lookback_days: u32,
    seed: u64,
    json: bool,
) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench-simulate")?;
    let b =
        gapless_demo::bench::simulate(&dir, identities as usize, days, lookback_days, seed).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "simulate bench: {} identities x {} days, lookback {} days, seed {}",
            b.identities,
            b.days,
            b.lookback_days,
            b.seed
        );
        say!("  setup (a consent each):   {:>9.1} s", b.setup_secs);
        say!(
            "  simulated days:           {:>9.1} s  ({} ticks, {:.1} ms per identity-day)",
            b.run_secs,
            b.ticks,
            b.run_secs * 1000.0 / b.windows.max(1) as f64
        );
        say!(
            "  outages:                  {:>9} ({} still open), incidents: {}",
            b.outages,
            b.outages_open,
            b.incidents
        );
        say!(
            "  windows:                  {:>9} loaded {}, lost {} (past the lookback: {}), missing {}",
            b.windows,
            b.windows_loaded,
            b.windows_lost,
            b.windows_lost_expected,
            b.windows_missing
        );
    }
    if !b.violations.is_empty() {
        for v in b.violations.iter().take(20) {
            say!("  broken: {v}");
        }
        anyhow::bail!("{} invariant(s) broken", b.violations.len());
    }
    Ok(())
}

/// `gapless bench scale`.
async fn scale(
    data_dir: &Path,
    identities: u32,
    instances: u32,
    concurrency: Option<u32>,
    latency_ms: u64,
    postgres: bool,
    json: bool,
) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench-scale")?;
    let database = test_database(postgres).await?;
    let b = gapless_demo::bench::scale(
        &dir,
        identities as usize,
        instances as usize,
        concurrency.map(|n| n as usize),
        latency_ms,
        database.as_ref().map(|d| d.location.clone()),
    )
    .await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "scale bench: {} identities and pipelines, {} instance(s) x {} in flight, sandbox latency {} ms, {} store",
            b.identities,
            b.instances,
            b.concurrency,
            b.latency_ms,
            b.store
        );
        say!("  setup through the store:        {:>9.1} s", b.setup_secs);
        say!(
            "  round (every pipeline one day): {:>9.1} s  ({:.0} pipelines/s, {} windows)",
            b.round_secs,
            b.pipelines_per_sec,
            b.windows_loaded
        );
        say!(
            "  tick with nothing due:          {:>9.1} ms",
            b.idle_tick_ms
        );
        if let Some(rss) = b.rss_idle_bytes_per_identity {
            say!("  memory per identity, idle:      {:>9.0} bytes", rss);
        }
        if let Some(rss) = b.rss_bytes_per_identity {
            say!("  memory per identity, after:     {:>9.0} bytes", rss);
        }
    }
    Ok(())
}

/// `gapless bench e2e`.
async fn e2e(
    data_dir: &Path,
    rows_per_window: u32,
    windows: u32,
    destination: E2eTarget,
    json: bool,
) -> Result<()> {
    let dir = fresh_dir(data_dir, "bench-e2e")?;
    let b = gapless_demo::bench::e2e(
        &dir,
        rows_per_window as usize,
        windows as usize,
        match destination {
            E2eTarget::Postgres => gapless_demo::bench::E2eDestination::Postgres,
            E2eTarget::Sqlite => gapless_demo::bench::E2eDestination::Sqlite,
        },
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    if json {
        say!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        say!(
            "e2e bench: sandbox over HTTP -> parse -> {} -> ledger, {} windows x {} rows",
            b.destination,
            b.windows,
            b.rows_per_window
        );
        say!(
            "  gapless:            {:>9.0} rows/s  ({:.2} s, {:.1} ms per window, {} report requests)",
            b.rows_per_sec,
            b.secs,
            b.ms_per_window,
            b.requests
        );
        say!(
            "  sandbox HTTP alone: {:>9.0} rows/s  (the same pages fetched, not parsed)",
            b.sandbox_http_rows_per_sec
        );
        say!(
            "  {:<19} {:>9.0} rows/s  ({:.2} s, the same rows from a CSV file, into a table of the report's columns)",
            format!("{}:", b.bulk_tool),
            b.bulk_rows_per_sec,
            b.bulk_secs
        );
        say!(
            "  {:<19} {:>9.0} rows/s  ({:.2} s, into a table shaped as the destination's: window columns, index)",
            format!("{}:", b.bulk_tool),
            b.bulk_shaped_rows_per_sec,
            b.bulk_shaped_secs
        );
        say!(
            "  ratio:              {:>9.2}    (to the bare table; to the shaped one: {:.2}; {} windows read back, equal to the sandbox's rows)",
            b.ratio,
            b.ratio_shaped,
            b.verified_windows
        );
    }
    Ok(())
}
