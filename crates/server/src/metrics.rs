//! Prometheus `/metrics`, gathered from the store and the engine's counters at each scrape.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use gapless_engine::{Engine, EngineError, stats::CallKind};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::ConstCounter, family::Family, gauge::ConstGauge},
    registry::Registry,
};

use crate::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match gather(&state.engine, state.scheduler.as_deref()).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics could not be gathered");
            (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n").into_response()
        }
    }
}

type Labels = Vec<(String, String)>;

fn gauge_family(registry: &mut Registry, name: &str, help: &str, values: BTreeMap<Labels, i64>) {
    let family = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

async fn gather(
    engine: &Engine,
    scheduler: Option<&crate::scheduler::SchedulerHealth>,
) -> Result<String, EngineError> {
    let store = engine.store();
    let mut registry = Registry::with_prefix("gapless");

    gauge_family(
        &mut registry,
        "identities",
        "Identities by health state",
        by_state(
            &["healthy", "expiring", "degraded", "needs_reauth", "paused"],
            store.identities_by_state().await?,
        ),
    );

    let open = store.open_incident_count().await?;
    registry.register(
        "incidents_open",
        "Authorization incidents not closed yet",
        ConstGauge::new(gauge(open)),
    );
    gauge_family(
        &mut registry,
        "windows",
        "Ledger windows by state",
        by_state(
            &["loaded", "missing", "spooled", "lost"],
            store.windows_by_state().await?,
        ),
    );

    let outbox = store.outbox_stats().await?;
    registry.register(
        "outbox_backlog",
        "Messages waiting for delivery",
        ConstGauge::new(gauge(outbox.pending)),
    );
    registry.register(
        "outbox_failed",
        "Messages that could not be delivered",
        ConstGauge::new(gauge(outbox.failed)),
    );

    provider_calls(&mut registry, engine);
    if let Some(scheduler) = scheduler {
        scheduler_ticks(&mut registry, scheduler);
    }
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok(text)
}

/// A count as a gauge's value (saturated, never wrapped).
fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Counts by state, every `known` state present (0 when none is in it).
fn by_state(known: &[&str], counts: Vec<(String, u64)>) -> BTreeMap<Labels, i64> {
    let mut all: BTreeMap<Labels, i64> = known
        .iter()
        .map(|s| (vec![("state".to_string(), s.to_string())], 0))
        .collect();
    for (state, n) in counts {
        all.insert(vec![("state".into(), state)], gauge(n));
    }
    all
}

/// Calls to providers by kind: how many, how many failed, their total time.
fn provider_calls(registry: &mut Registry, engine: &Engine) {
    for (kind, name) in [
        (CallKind::Refresh, "token_refresh"),
        (CallKind::Probe, "probe"),
        (CallKind::Extract, "extract"),
    ] {
        let stats = engine.stats().read(kind);
        registry.register(
            format!("{name}_calls"),
            format!("Provider calls: {name}"),
            ConstCounter::new(stats.count),
        );
        registry.register(
            format!("{name}_failures"),
            format!("Provider calls that failed: {name}"),
            ConstCounter::new(stats.failed),
        );
        registry.register(
            format!("{name}_seconds"),
            format!("Total wall time of provider calls: {name}"),
            ConstCounter::new(stats.seconds_sum),
        );
    }
}

/// The scheduler's ticks: completed, failed, panicked.
fn scheduler_ticks(registry: &mut Registry, scheduler: &crate::scheduler::SchedulerHealth) {
    let (completed, failed, panicked) = scheduler.counts();
    for (name, help, value) in [
        ("scheduler_ticks", "Scheduler ticks completed", completed),
        (
            "scheduler_tick_failures",
            "Scheduler ticks that failed (retried on the next interval)",
            failed,
        ),
        (
            "scheduler_tick_panics",
            "Scheduler ticks that panicked (retried on the next interval)",
            panicked,
        ),
    ] {
        registry.register(name, help, ConstCounter::new(value));
    }
}
