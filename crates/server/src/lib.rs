//! `gapless serve`: the HTTP side of gapless, beside the scheduler in the same process.
//!
//! - `/reauth/{token}`: the page a reauthorize link opens, for a person who needs no gapless
//!   account; OAuth identities go through the provider's consent (state + PKCE) and come
//!   back to `/oauth/callback`; key and password identities get a form. Nothing is replaced
//!   before the new credential passed the probe, belongs to the same upstream account and
//!   has the required scopes.
//! - The operators' dashboard (server-rendered, no JavaScript): identities, pipelines with
//!   a gap heatmap, incidents. Sign-in with an API token; every form carries a CSRF token.
//! - The REST API under `/api` (bearer tokens, read or write), described by OpenAPI 3.1 at
//!   `/api/openapi.json`; errors are problem+json.
//! - `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! No response ever carries a secret: credentials are only ever decrypted inside the engine.

// Handlers answer early with a finished response as their error value; it is built once,
// on the way out, so its size does not matter.
#![allow(clippy::result_large_err)]

mod api;
mod dashboard;
mod listener;
mod metrics;
mod reauth;
pub mod scheduler;
pub mod security;
mod views;

use std::{collections::HashMap, future::Future, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Duration, Utc};
use gapless_core::IdentityId;
use gapless_engine::{Engine, PendingAuthorization};
use tokio::sync::Mutex;

pub use api::api_paths;
pub use listener::Limits;
pub use security::Signer;

/// Where a request came from and what it asked: the facts an audit record keeps about an
/// HTTP caller (the client address, the method and the path, never the query).
pub(crate) struct RequestFacts {
    address: Option<String>,
    method: String,
    path: String,
}

impl RequestFacts {
    /// `actor`, calling from this request's address.
    fn caller(&self, actor: gapless_core::Actor) -> gapless_core::Caller {
        let caller = gapless_core::Caller::new(actor);
        match &self.address {
            Some(address) => caller.from_address(address.clone()),
            None => caller,
        }
    }

    /// "POST /api/…", for the audit record of a write.
    fn request(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestFacts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            address: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|axum::extract::ConnectInfo(peer)| peer.ip().to_string()),
            method: parts.method.to_string(),
            // The whole path, also inside a nested router.
            path: parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map_or(parts.uri.path(), |original| original.0.path())
                .to_string(),
        })
    }
}

/// A consent in progress, found again by its `state` when the provider redirects back.
struct Flow {
    link_id: String,
    identity: IdentityId,
    /// The person confirmed, on the link's page, that another account may replace this one.
    accept_other_account: bool,
    pending: PendingAuthorization,
    started: DateTime<Utc>,
}

/// A back-fill started by a reauthorization, shown on its progress page.
struct Progress {
    identity: IdentityId,
    started: DateTime<Utc>,
    /// The incident the reauthorization recovers, if one was open.
    incident: Option<gapless_core::IncidentId>,
    /// None while the back-fill runs; then done, or why it stopped.
    outcome: Option<Result<(), String>>,
}

/// How long a progress page stays available.
const PROGRESS_LIFETIME: Duration = Duration::days(1);

/// How long a person has to finish the consent at the provider.
const FLOW_LIFETIME: Duration = Duration::minutes(15);
/// How long an operator stays signed in.
const SESSION_LIFETIME: Duration = Duration::hours(8);

/// What the handlers share.
pub struct AppState {
    engine: Arc<Engine>,
    signer: Signer,
    secure_cookies: bool,
    flows: Mutex<HashMap<String, Flow>>,
    /// By a random token in the progress page's URL.
    progress: Arc<Mutex<HashMap<String, Progress>>>,
    /// The supervised scheduler of this process, when it runs one.
    scheduler: Option<Arc<scheduler::SchedulerHealth>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Cookies are `Secure` when the public URL is https. The signing key is derived from
    /// the vault's master key by the caller.
    pub fn new(engine: Arc<Engine>, signing_key: [u8; 32]) -> Arc<Self> {
        Self::build(engine, signing_key, None)
    }

    /// The same, reporting on the scheduler that runs beside it (`/readyz`, `/metrics`).
    pub fn with_scheduler(
        engine: Arc<Engine>,
        signing_key: [u8; 32],
        scheduler: Arc<scheduler::SchedulerHealth>,
    ) -> Arc<Self> {
        Self::build(engine, signing_key, Some(scheduler))
    }

    fn build(
        engine: Arc<Engine>,
        signing_key: [u8; 32],
        scheduler: Option<Arc<scheduler::SchedulerHealth>>,
    ) -> Arc<Self> {
        let secure_cookies = engine.config().public_url.starts_with("https://");
        Arc::new(Self {
            engine,
            signer: Signer::new(signing_key),
            secure_cookies,
            flows: Mutex::new(HashMap::new()),
            progress: Arc::new(Mutex::new(HashMap::new())),
            scheduler,
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.clock().now()
    }
}

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    router_within(state, &Limits::default())
}

/// Every route, the public ones (reauthorize links, the OAuth callback) within the
/// per-address budget of `limits`.
fn router_within(state: Arc<AppState>, limits: &Limits) -> Router {
    let budget = Arc::new(listener::PublicBudget::new(limits));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(
            reauth::routes().route_layer(axum::middleware::from_fn_with_state(
                budget,
                listener::public_budget,
            )),
        )
        .merge(reauth::progress_routes())
        .merge(dashboard::routes())
        .nest("/api", api::routes())
        .layer(axum::middleware::from_fn(security::security_headers))
        .with_state(state)
}

/// Serve on `listener` within the default [`Limits`] until `shutdown` resolves, then
/// finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_within(listener, state, Limits::default(), shutdown).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve(listener, router_within(state, &limits), limits, shutdown).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the state database answers and the scheduler ticks.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(scheduler) = &state.scheduler
        && let Err(why) = scheduler.ready()
    {
        tracing::warn!(%why, "not ready");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    match state.engine.store().ping().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the state database does not answer\n",
            )
                .into_response()
        }
    }
}
