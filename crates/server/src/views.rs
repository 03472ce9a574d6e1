//! What pages and the API show, built from the store: never a secret.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use gapless_core::{Health, Identity, IdentityId, Pipeline, Window};
use gapless_engine::{Engine, EngineError};
use gapless_store::{IdentityCursor, IdentityOrder, LedgerSummary};

pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// An identity as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub id: String,
    pub label: String,
    pub provider: String,
    pub account: String,
    pub state: &'static str,
    /// `red` (needs a human), `amber` (expiring, degraded), `green`, `grey` (paused).
    pub tone: &'static str,
    /// The cause in plain words and since when, or the expiry, or empty.
    pub detail: String,
    pub dependents: Vec<String>,
    pub open_incident: Option<String>,
}

/// One page of identities as the dashboard and the API list them.
#[derive(Debug, Clone)]
pub struct IdentityRows {
    pub rows: Vec<IdentityRow>,
    /// Where the next page starts; None on the last.
    pub next: Option<IdentityCursor>,
}

/// Up to `limit` identities in `order` after `after`, each with its pipelines and open
/// incident (one query each for the whole page).
pub async fn identity_rows(
    engine: &Engine,
    order: IdentityOrder,
    after: Option<&IdentityCursor>,
    limit: u32,
) -> Result<IdentityRows, EngineError> {
    let store = engine.store();
    let page = store.identities_page(order, after, limit).await?;
    let ids: Vec<IdentityId> = page.identities.iter().map(|i| i.id).collect();
    let pipelines = store.pipelines_using_any(&ids).await?;
    let incidents = store.open_incidents_of(&ids).await?;
    Ok(IdentityRows {
        rows: page
            .identities
            .iter()
            .map(|identity| {
                let open = incidents.get(&identity.id).map(ToString::to_string);
                identity_row(engine, identity, &pipelines, open)
            })
            .collect(),
        next: page.next,
    })
}

/// One identity as the listings show it.
pub async fn one_identity_row(engine: &Engine, id: IdentityId) -> Result<IdentityRow, EngineError> {
    let store = engine.store();
    let identity = store.identity(id).await?;
    let pipelines = store.pipelines_using(id).await?;
    let open = store.open_incident_id(id).await?.map(|i| i.to_string());
    Ok(identity_row(engine, &identity, &pipelines, open))
}

pub fn identity_row(
    engine: &Engine,
    identity: &Identity,
    pipelines: &[Pipeline],
    open_incident: Option<String>,
) -> IdentityRow {
    let (tone, detail) = match &identity.health {
        Health::NeedsReauth { failure, since } => (
            "red",
            format!(
                "{} — since {}. {}",
                failure.cause.plain_words(),
                when(*since),
                failure.cause.what_to_do()
            ),
        ),
        Health::Expiring { at } => ("amber", format!("expires {}", when(*at))),
        Health::Degraded {
            attempts, retry_at, ..
        } => (
            "amber",
            format!(
                "temporary errors ({attempts}); next try {}",
                when(*retry_at)
            ),
        ),
        Health::Paused { reason, .. } => ("grey", format!("paused: {reason}")),
        Health::Healthy => ("green", String::new()),
    };
    IdentityRow {
        id: identity.id.to_string(),
        label: identity.label.clone(),
        // Where at the provider, when the identity has its own region or shop.
        provider: if identity.settings.is_empty() {
            engine.display_name(&identity.provider)
        } else {
            format!(
                "{} ({})",
                engine.display_name(&identity.provider),
                identity.settings.describe()
            )
        },
        account: match (
            &identity.upstream_account_name,
            &identity.upstream_account_id,
        ) {
            (Some(name), Some(id)) => format!("{name} ({id})"),
            (None, Some(id)) => id.clone(),
            (Some(name), None) => name.clone(),
            (None, None) => String::new(),
        },
        state: identity.health.name(),
        tone,
        detail,
        dependents: pipelines
            .iter()
            .filter(|p| p.uses(identity.id))
            .map(|p| p.name.clone())
            .collect(),
        open_incident,
    }
}

/// One cell of a gap heatmap.
#[derive(Debug, Clone)]
pub struct Cell {
    pub label: String,
    /// `loaded`, `missing`, `spooled`, `lost`, or `pending` (not attempted yet).
    pub state: &'static str,
}

/// A pipeline with its recent windows.
#[derive(Debug, Clone)]
pub struct PipelineRow {
    pub id: String,
    pub name: String,
    pub state: &'static str,
    pub source: String,
    pub destination: String,
    pub last_loaded: String,
    /// Per stream, the most recent windows, oldest first.
    pub heatmap: Vec<(String, Vec<Cell>)>,
    pub counts: BTreeMap<String, usize>,
}

/// How many recent windows a heatmap shows.
pub const HEATMAP_WINDOWS: usize = 30;

/// The rows of `pipelines`, their ledgers summarized for all of them at once (window
/// counts, last loaded, the recent windows of the heatmap).
pub async fn pipeline_rows(
    engine: &Engine,
    pipelines: &[Pipeline],
) -> Result<Vec<PipelineRow>, EngineError> {
    let now = engine.clock().now();
    let recent: Vec<Vec<Window>> = pipelines
        .iter()
        .map(|p| {
            let windows = p.grid().complete_windows(p.start, now);
            windows[windows.len().saturating_sub(HEATMAP_WINDOWS)..].to_vec()
        })
        .collect();
    let asked: Vec<(&Pipeline, DateTime<Utc>)> = pipelines
        .iter()
        .zip(&recent)
        .map(|(p, windows)| (p, windows.first().map_or(now, |w| w.start)))
        .collect();
    let mut summaries = engine.store().ledger_summaries(&asked).await?;
    Ok(pipelines
        .iter()
        .zip(&recent)
        .map(|(p, windows)| pipeline_row(p, windows, summaries.remove(&p.id).unwrap_or_default()))
        .collect())
}

fn pipeline_row(pipeline: &Pipeline, recent: &[Window], summary: LedgerSummary) -> PipelineRow {
    let grid = pipeline.grid();
    let states: std::collections::HashMap<(&str, DateTime<Utc>), &'static str> = summary
        .recent
        .iter()
        .map(|e| ((e.stream.as_str(), e.window.start), e.state.name()))
        .collect();
    let heatmap = pipeline
        .streams
        .iter()
        .map(|stream| {
            let cells = recent
                .iter()
                .map(|w| Cell {
                    label: grid.label(*w),
                    state: states
                        .get(&(stream.as_str(), w.start))
                        .copied()
                        .unwrap_or("pending"),
                })
                .collect();
            (stream.clone(), cells)
        })
        .collect();
    PipelineRow {
        id: pipeline.id.to_string(),
        name: pipeline.name.clone(),
        state: pipeline.state.name(),
        source: pipeline.source_resource.clone(),
        destination: format!(
            "{} {}",
            pipeline.destination_kind, pipeline.destination_target
        ),
        last_loaded: summary
            .last_loaded
            .map_or_else(|| "none yet".into(), |w| grid.label(w)),
        heatmap,
        counts: summary.counts,
    }
}
