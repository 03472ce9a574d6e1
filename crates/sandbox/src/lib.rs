//! A local emulator of an OAuth2 ad platform that fails like the real ones.
//!
//! Its shapes follow the Facebook/Meta Graph and Marketing APIs: `/oauth/authorize` (login
//! and consent page), `/oauth/token` (authorization code with PKCE S256, rotating refresh
//! tokens whose reuse revokes the grant), `/oauth/revoke`, a who-am-I probe at `/v1/me`, a
//! paginated daily report at `/v1/{account}/insights`, and `/admin/*` fault controls. Its
//! clock is injected, so a test or the demo can run it in virtual time.

mod api;
pub mod browser;
mod oauth;
pub mod report;
pub mod world;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use gapless_core::Clock;
use serde::Deserialize;
use tokio::net::TcpListener;

pub use report::ReportRow;
pub use world::{
    DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_SERVICE_USER,
    DEMO_USER, Fault, SandboxConfig, Stats, World,
};

/// Errors starting or driving the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fault rejected: {0}")]
    Fault(String),
}

/// The sandbox: shared state plus the clock it answers in.
#[derive(Debug, Clone)]
pub struct Sandbox {
    world: Arc<Mutex<World>>,
    clock: Arc<dyn Clock>,
}

impl Sandbox {
    pub fn new(world: World, clock: Arc<dyn Clock>) -> Self {
        Self {
            world: Arc::new(Mutex::new(world)),
            clock,
        }
    }

    /// The demo world (one client, users, ad accounts) with `config`.
    pub fn demo(config: SandboxConfig, clock: Arc<dyn Clock>) -> Self {
        Self::new(World::demo(config), clock)
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Inject a fault.
    pub fn apply_fault(&self, fault: Fault) -> Result<(), SandboxError> {
        let now = self.now();
        self.world()
            .apply_fault(fault, now)
            .map_err(SandboxError::Fault)
    }

    /// Issue an API key for `user`.
    pub fn issue_api_key(&self, user: &str) -> Result<String, SandboxError> {
        self.world()
            .issue_api_key(user)
            .map_err(SandboxError::Fault)
    }

    /// Every access and refresh token the sandbox issued so far (revoked ones too): for
    /// tests that check none of them was printed or logged.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.world().issued_tokens()
    }

    /// Counters of what clients did.
    pub fn stats(&self) -> Stats {
        self.world().stats.clone()
    }

    /// The true rows of `account` for `day`, as the platform reports them now.
    pub fn truth(&self, account: &str, day: NaiveDate) -> Vec<ReportRow> {
        self.truth_at(account, day, self.now())
    }

    /// The true rows of `account` for `day`, as the platform reported them at `at`
    /// (conversions are restated for a while after the day).
    pub fn truth_at(&self, account: &str, day: NaiveDate, at: DateTime<Utc>) -> Vec<ReportRow> {
        let (restatement, campaigns) = {
            let world = self.world();
            (
                Duration::seconds(world.config.restatement_secs),
                world.config.campaigns_per_account,
            )
        };
        report::rows_for_day(account, day, at, restatement, campaigns)
    }

    /// The HTTP interface.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/oauth/authorize",
                get(oauth::authorize_page).post(oauth::authorize_submit),
            )
            .route("/oauth/token", post(oauth::token))
            .route("/oauth/revoke", post(oauth::revoke))
            .route("/v1/me", get(api::me))
            .route("/v1/{account}/insights", get(api::insights))
            .route("/admin/faults", post(admin_fault))
            .route("/admin/api-keys", post(admin_api_key))
            .route("/admin/stats", get(admin_stats))
            .route("/admin/truth", get(admin_truth))
            .with_state(self.clone())
    }

    /// Serve on `listener` in the background; the handle knows the base URL.
    pub async fn spawn(self, listener: TcpListener) -> Result<SandboxHandle, SandboxError> {
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: "listener".into(),
            source,
        })?;
        let router = self.router();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "sandbox server stopped");
            }
        });
        Ok(SandboxHandle {
            addr,
            sandbox: self,
            stop: Some(stop),
            task,
        })
    }

    /// Bind `addr` (port 0 for a free port) and serve in the background.
    pub async fn bind(self, addr: &str) -> Result<SandboxHandle, SandboxError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        self.spawn(listener).await
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    sandbox: Sandbox,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Stop serving and wait for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Wait until the server stops (for `gapless sandbox`).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn json_error(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

async fn admin_fault(
    State(sandbox): State<Sandbox>,
    payload: Result<Json<Fault>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let fault = match payload {
        Ok(Json(fault)) => fault,
        Err(rejection) => {
            return json_error(
                400,
                serde_json::json!({ "error": format!("bad fault: {}", rejection.body_text()) }),
            );
        }
    };
    match sandbox.apply_fault(fault) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "ok": true }))).into_response(),
        Err(e) => json_error(400, serde_json::json!({ "error": e.to_string() })),
    }
}

#[derive(Debug, Deserialize)]
struct ApiKeyRequest {
    user: String,
}

async fn admin_api_key(
    State(sandbox): State<Sandbox>,
    payload: Result<Json<ApiKeyRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = payload else {
        return json_error(
            400,
            serde_json::json!({ "error": "expected {\"user\": …}" }),
        );
    };
    match sandbox.issue_api_key(&request.user) {
        Ok(key) => Json(serde_json::json!({ "api_key": key })).into_response(),
        Err(e) => json_error(400, serde_json::json!({ "error": e.to_string() })),
    }
}

async fn admin_stats(State(sandbox): State<Sandbox>) -> Json<Stats> {
    Json(sandbox.stats())
}

#[derive(Debug, Deserialize)]
struct TruthQuery {
    account: String,
    day: NaiveDate,
}

async fn admin_truth(
    State(sandbox): State<Sandbox>,
    Query(q): Query<TruthQuery>,
) -> Json<Vec<ReportRow>> {
    Json(sandbox.truth(&q.account, q.day))
}
