//! The REST API: JSON, bearer tokens (read or write), problem+json errors, and its OpenAPI
//! 3.1 description generated from the handlers. No response carries a secret: message
//! bodies (which hold reauthorize links) and credentials are never returned.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequestParts, Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use chrono::{DateTime, NaiveDate, Utc};
use gapless_core::{Actor, AuditAction, AuditRecord, Caller};
use gapless_engine::EngineError;
use gapless_store::{IdentityCursor, IdentityOrder, StoreError, TokenScope};
use gapless_vault::hash_bearer;
use serde::{Deserialize, Serialize};
use utoipa::{
    IntoParams, Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    AppState, RequestFacts,
    security::{Problem, bearer},
    views::{identity_rows, one_identity_row, pipeline_rows},
};

/// The API's routes (paths under `/api`) and their handlers. The router is built from this
/// one list, and a test holds the OpenAPI document to it both ways.
fn table() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/openapi.json", get(openapi)),
        ("/identities", get(list_identities)),
        ("/identities/{id}", get(get_identity)),
        ("/identities/{id}/resources", get(identity_resources)),
        (
            "/identities/{id}/reauth-links",
            post(create_link).delete(revoke_links),
        ),
        ("/pipelines", get(list_pipelines)),
        ("/pipelines/{id}/gaps", get(pipeline_gaps)),
        ("/pipelines/{id}/backfills", post(create_backfill)),
        ("/incidents", get(list_incidents)),
        ("/incidents/{id}", get(get_incident)),
        ("/notifications", get(list_notifications)),
        ("/audit", get(list_audit)),
    ]
}

/// Every path the API routes, under `/api` (the OpenAPI document itself included).
pub fn api_paths() -> Vec<String> {
    table()
        .into_iter()
        .map(|(path, _)| format!("/api{path}"))
        .collect()
}

pub fn routes() -> Router<Arc<AppState>> {
    table()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no such API route; see /api/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method; see /api/openapi.json",
            )
        })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gapless",
        description = "Identities, pipelines, gaps, incidents, notifications and backfills of a gapless installation."
    ),
    paths(
        list_identities,
        get_identity,
        identity_resources,
        create_link,
        revoke_links,
        list_pipelines,
        pipeline_gaps,
        create_backfill,
        list_incidents,
        get_incident,
        list_notifications,
        list_audit
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document (no token needed).
async fn openapi() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The caller's token, checked for `needed`. A write is recorded in the audit log (the
/// token, the client address, the request) before it is made.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    needed: TokenScope,
    facts: &RequestFacts,
) -> Result<Caller, Response> {
    let Some(presented) = bearer(headers) else {
        let mut r = Problem::new(
            StatusCode::UNAUTHORIZED,
            "an API token is required: Authorization: Bearer <token> (create one with `gapless token create`)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Err(r);
    };
    let token = state
        .engine
        .store()
        .authenticate_api_token(&hash_bearer(&presented), state.now())
        .await
        .map_err(|e| failure(e.into()))?;
    match token {
        None => {
            let mut r = Problem::new(
                StatusCode::UNAUTHORIZED,
                "the API token is not valid or was revoked",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            Err(r)
        }
        Some(t) if needed == TokenScope::Write && t.scope != TokenScope::Write => {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!("the token {:?} may only read; this route writes", t.name),
            )
            .into_response())
        }
        Some(token) => {
            let caller = facts.caller(Actor::ApiToken(token.name.clone()));
            if needed == TokenScope::Write {
                let record =
                    AuditRecord::new(state.now(), &caller, AuditAction::ApiWrite, token.name)
                        .with("request", facts.request());
                state
                    .engine
                    .store()
                    .audit(&record)
                    .await
                    .map_err(|e| failure(e.into()))?;
            }
            Ok(caller)
        }
    }
}

/// A path parameter. A malformed one (not UTF-8, say) is answered with problem+json like
/// every other API error.
struct ApiPath(String);

/// A query string. One that cannot be read (a limit that is not a number, say) is answered
/// with problem+json (400) like every other API error.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(Problem::new(StatusCode::BAD_REQUEST, rejection.body_text()).into_response())
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(Problem::new(rejection.status(), rejection.body_text()).into_response())
            }
        }
    }
}

/// An engine error as problem+json: not found → 404, invalid input → 422, else 500.
fn failure(error: EngineError) -> Response {
    match error {
        EngineError::Store(StoreError::NotFound { what }) => {
            Problem::new(StatusCode::NOT_FOUND, format!("there is no {what}")).into_response()
        }
        EngineError::Invalid(detail) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail).into_response()
        }
        EngineError::Busy(detail) => Problem::new(StatusCode::CONFLICT, detail).into_response(),
        EngineError::NoConnector(provider) => Problem::new(
            StatusCode::CONFLICT,
            format!("no connector is configured for provider {provider:?}"),
        )
        .into_response(),
        other => {
            tracing::error!(error = %other, "API request failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be completed; see the server log",
            )
            .into_response()
        }
    }
}

/// The identity `id` names, which must exist.
async fn writable_identity(state: &AppState, id: &str) -> Result<gapless_core::Identity, Response> {
    let id = parse_id("identity", id)?;
    state
        .engine
        .store()
        .identity(id)
        .await
        .map_err(|e| failure(e.into()))
}

/// A request whose bearer token may read: every route but the document needs one.
struct Reader;

/// A request whose bearer token may write, and who it names.
struct Writer(Caller);

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        token_of(parts, state, TokenScope::Read).await.map(|_| Self)
    }
}

impl FromRequestParts<Arc<AppState>> for Writer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        token_of(parts, state, TokenScope::Write).await.map(Self)
    }
}

/// The caller a request's token names, when the token may do what `needed` says.
async fn token_of(
    parts: &mut axum::http::request::Parts,
    state: &AppState,
    needed: TokenScope,
) -> Result<Caller, Response> {
    let facts = match RequestFacts::from_request_parts(parts, state).await {
        Ok(facts) => facts,
        Err(never) => match never {},
    };
    authorize(state, &parts.headers, needed, &facts).await
}

fn parse_id<T: std::str::FromStr>(what: &str, id: &str) -> Result<T, Response> {
    id.parse().map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, format!("there is no {what} {id:?}")).into_response()
    })
}

/// An identity (never its credential).
#[derive(Debug, Serialize, ToSchema)]
struct IdentityView {
    id: String,
    label: String,
    provider: String,
    upstream_account: String,
    /// `healthy`, `expiring`, `degraded`, `needs_reauth` or `paused`.
    state: String,
    /// The cause in plain words with what to do, or the expiry date.
    detail: String,
    pipelines: Vec<String>,
    open_incident: Option<String>,
}

impl From<crate::views::IdentityRow> for IdentityView {
    fn from(r: crate::views::IdentityRow) -> Self {
        Self {
            id: r.id,
            label: r.label,
            provider: r.provider,
            upstream_account: r.account,
            state: r.state.into(),
            detail: r.detail,
            pipelines: r.dependents,
            open_incident: r.open_incident,
        }
    }
}

/// Which page of a listing (identities by label, pipelines by name, incidents and messages
/// newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListingQuery {
    /// Only rows after this one (the `next_after` of the page before).
    after: Option<String>,
    /// At most this many rows (1 to 1000, default 100).
    limit: Option<u32>,
}

impl ListingQuery {
    /// The page size asked, refused with problem+json outside 1 to 1000.
    fn limit(&self) -> Result<u32, Response> {
        page_limit(self.limit, 100, gapless_store::MAX_IDENTITY_PAGE)
    }

    /// The page of a newest-first listing asked: its cursor and size, refused with
    /// problem+json when the cursor is not one this listing gave or the size is outside.
    fn newest_first(&self) -> Result<(Option<gapless_store::TimeCursor>, u32), Response> {
        let limit = self.limit()?;
        let after = match &self.after {
            None => None,
            Some(text) => Some(text.parse().map_err(|why: String| {
                Problem::new(StatusCode::BAD_REQUEST, format!("after: {why}")).into_response()
            })?),
        };
        Ok((after, limit))
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct IdentitiesPage {
    identities: Vec<IdentityView>,
    /// Pass as `after` for the next page; absent on the last one.
    next_after: Option<String>,
}

#[utoipa::path(get, path = "/api/identities", tag = "identities", params(ListingQuery),
    responses((status = 200, body = IdentitiesPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn list_identities(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiQuery(query): ApiQuery<ListingQuery>,
) -> Response {
    let limit = match query.limit() {
        Ok(limit) => limit,
        Err(refused) => return refused,
    };
    let after = query.after.map(|label| IdentityCursor { group: 0, label });
    match identity_rows(&state.engine, IdentityOrder::Label, after.as_ref(), limit).await {
        Ok(page) => Json(IdentitiesPage {
            identities: page.rows.into_iter().map(IdentityView::from).collect(),
            next_after: page.next.map(|cursor| cursor.label),
        })
        .into_response(),
        Err(e) => failure(e),
    }
}

/// A page size from a query: `default` when absent, refused outside 1 to `max`.
fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, Response> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("limit: {n} is outside 1 to {max}"),
        )
        .into_response()),
    }
}

#[utoipa::path(get, path = "/api/identities/{id}", tag = "identities",
    params(("id" = String, Path, description = "identity id")),
    responses((status = 200, body = IdentityView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn get_identity(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiPath(id): ApiPath,
) -> Response {
    let Ok(identity) = id.parse() else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            format!("there is no identity {id:?}"),
        )
        .into_response();
    };
    match one_identity_row(&state.engine, identity).await {
        Ok(row) => Json(IdentityView::from(row)).into_response(),
        Err(e) => failure(e),
    }
}

/// One resource an identity can read.
#[derive(Debug, Serialize, ToSchema)]
struct ResourceView {
    id: String,
    name: String,
    /// The resource it is reached through (a client account's manager), if any.
    parent: Option<String>,
}

/// What an identity can read, as its provider lists it now.
#[derive(Debug, Serialize, ToSchema)]
struct ResourcesView {
    /// False when the provider could not be asked now (then `reason` says why).
    listed: bool,
    reason: Option<String>,
    resources: Vec<ResourceView>,
}

#[utoipa::path(get, path = "/api/identities/{id}/resources", tag = "identities",
    params(("id" = String, Path, description = "identity id")),
    responses((status = 200, body = ResourcesView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn identity_resources(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiPath(id): ApiPath,
) -> Response {
    let id = match parse_id("identity", &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.engine.resources_of(id).await {
        Ok(Ok(resources)) => Json(ResourcesView {
            listed: true,
            reason: None,
            resources: resources
                .into_iter()
                .map(|r| ResourceView {
                    id: r.id,
                    name: r.name,
                    parent: r.parent,
                })
                .collect(),
        })
        .into_response(),
        Ok(Err(reason)) => Json(ResourcesView {
            listed: false,
            reason: Some(reason),
            resources: vec![],
        })
        .into_response(),
        Err(e) => failure(e),
    }
}

/// A new reauthorize link: shown once, only its hash is kept.
#[derive(Debug, Serialize, ToSchema)]
struct LinkView {
    url: String,
    expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/identities/{id}/reauth-links", tag = "identities",
    params(("id" = String, Path, description = "identity id")),
    responses((status = 201, body = LinkView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn create_link(
    State(state): State<Arc<AppState>>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath,
) -> Response {
    let identity = match writable_identity(&state, &id).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let result = state
        .engine
        .reauth_link_for(identity.id, &caller)
        .await
        .map(|link| LinkView {
            url: link.url,
            expires_at: link.expires_at,
        });
    match result {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct Revoked {
    revoked: u64,
}

#[utoipa::path(delete, path = "/api/identities/{id}/reauth-links", tag = "identities",
    params(("id" = String, Path, description = "identity id")),
    responses((status = 200, body = Revoked), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn revoke_links(
    State(state): State<Arc<AppState>>,
    Writer(caller): Writer,
    ApiPath(id): ApiPath,
) -> Response {
    let identity = match writable_identity(&state, &id).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let result: Result<u64, EngineError> = async {
        Ok(state
            .engine
            .store()
            .revoke_reauth_links(
                identity.id,
                state.now(),
                &AuditRecord::new(
                    state.now(),
                    &caller,
                    AuditAction::LinkRevoked,
                    identity.label.clone(),
                )
                .identity(identity.id),
            )
            .await?)
    }
    .await;
    match result {
        Ok(revoked) => Json(Revoked { revoked }).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct PipelineView {
    id: String,
    name: String,
    /// `active`, `waiting_for_identity` or `paused`.
    state: String,
    source_resource: String,
    destination: String,
    last_loaded_window: String,
    /// Ledger windows by state (`loaded`, `missing`, `spooled`, `lost`).
    windows: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug, Serialize, ToSchema)]
struct PipelinesPage {
    pipelines: Vec<PipelineView>,
    /// Pass as `after` for the next page; absent on the last one.
    next_after: Option<String>,
}

#[utoipa::path(get, path = "/api/pipelines", tag = "pipelines", params(ListingQuery),
    responses((status = 200, body = PipelinesPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn list_pipelines(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiQuery(query): ApiQuery<ListingQuery>,
) -> Response {
    let limit = match query.limit() {
        Ok(limit) => limit,
        Err(refused) => return refused,
    };
    let result: Result<PipelinesPage, EngineError> = async {
        let page = state
            .engine
            .store()
            .pipelines_page(query.after.as_deref(), limit)
            .await?;
        let rows = pipeline_rows(&state.engine, &page.pipelines).await?;
        Ok(PipelinesPage {
            pipelines: rows
                .into_iter()
                .map(|row| PipelineView {
                    id: row.id,
                    name: row.name,
                    state: row.state.into(),
                    source_resource: row.source,
                    destination: row.destination,
                    last_loaded_window: row.last_loaded,
                    windows: row.counts,
                })
                .collect(),
            next_after: page.next,
        })
    }
    .await;
    match result {
        Ok(page) => Json(page).into_response(),
        Err(e) => failure(e),
    }
}

/// A range of windows that are not loaded.
#[derive(Debug, Serialize, ToSchema)]
struct GapView {
    stream: String,
    from: DateTime<Utc>,
    /// Exclusive.
    to: DateTime<Utc>,
    windows: u32,
    /// `missing`, `spooled` or `lost`.
    state: String,
    reason: Option<String>,
    /// The last instant the oldest window of the range can still be fetched.
    recoverable_until: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/api/pipelines/{id}/gaps", tag = "pipelines",
    params(("id" = String, Path, description = "pipeline id or name")),
    responses((status = 200, body = Vec<GapView>), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json", description = "the pipeline's provider has no connector here"), (status = 422, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn pipeline_gaps(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiPath(id): ApiPath,
) -> Response {
    let result: Result<Vec<GapView>, EngineError> = async {
        let pipeline = state.engine.store().find_pipeline(&id).await?;
        let mut views = Vec::new();
        for g in state.engine.gaps(&pipeline).await? {
            let reason = match &g.reason {
                Some(r) => Some(state.engine.reason_words(r).await),
                None => None,
            };
            views.push(GapView {
                stream: g.stream,
                from: g.from,
                to: g.to,
                windows: g.windows,
                state: g.state,
                reason,
                recoverable_until: g.recoverable_until,
            });
        }
        Ok(views)
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(e),
    }
}

/// Pull a range of days again (inclusive dates, in the pipeline's time zone).
#[derive(Debug, Deserialize, ToSchema)]
struct BackfillRequest {
    from: NaiveDate,
    to: NaiveDate,
    /// Only plan: show the windows and the estimated requests.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct BackfillView {
    pipeline: String,
    windows: usize,
    estimated_requests: u64,
    unrecoverable_windows: usize,
    /// False for a dry run; true when the backfill was started in the background.
    started: bool,
}

#[utoipa::path(post, path = "/api/pipelines/{id}/backfills", tag = "pipelines",
    params(("id" = String, Path, description = "pipeline id or name")),
    request_body = BackfillRequest,
    responses((status = 202, body = BackfillView), (status = 200, body = BackfillView, description = "dry run"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 415, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn create_backfill(
    State(state): State<Arc<AppState>>,
    _writer: Writer,
    ApiPath(id): ApiPath,
    body: Result<Json<BackfillRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(r)) => r,
        Err(rejection) => {
            return Problem::new(rejection.status(), rejection.body_text()).into_response();
        }
    };
    if request.to < request.from {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("to {} is before from {}", request.to, request.from),
        )
        .into_response();
    }
    let pipeline = match state.engine.store().find_pipeline(&id).await {
        Ok(p) => p,
        Err(e) => return failure(e.into()),
    };
    for (what, day) in [("from", request.from), ("to", request.to)] {
        if let Err(why) = gapless_core::check_day(what, day) {
            return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, &why).into_response();
        }
    }
    let grid = pipeline.grid();
    let Some(end) = request.to.succ_opt() else {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "to is the last representable day",
        )
        .into_response();
    };
    let plan = match state
        .engine
        .plan_backfill(&pipeline, grid.day_start(request.from), grid.day_start(end))
        .await
    {
        Ok(plan) => plan,
        Err(e) => return failure(e),
    };
    let view = BackfillView {
        pipeline: pipeline.name.clone(),
        windows: plan.windows.len(),
        estimated_requests: plan.estimated_requests,
        unrecoverable_windows: plan.unrecoverable.len(),
        started: !request.dry_run,
    };
    if request.dry_run {
        return Json(view).into_response();
    }
    if state.engine.backfill_running(pipeline.id) {
        return Problem::new(
            StatusCode::CONFLICT,
            format!(
                "a back-fill of {} is running; wait for it to finish",
                pipeline.name
            ),
        )
        .into_response();
    }
    let engine = state.engine.clone();
    tokio::spawn(async move {
        let mut log = gapless_engine::EventLog::default();
        match engine.backfill(&pipeline, &plan, &mut log, |_, _| {}).await {
            Ok(outcome) => {
                tracing::info!(pipeline = %pipeline.name, loaded = outcome.loaded, "backfill done")
            }
            Err(error) => tracing::error!(pipeline = %pipeline.name, %error, "backfill failed"),
        }
    });
    (StatusCode::ACCEPTED, Json(view)).into_response()
}

#[derive(Debug, Serialize, ToSchema)]
struct IncidentView {
    id: String,
    identity: String,
    cause: String,
    plain_words: String,
    provider_code: Option<String>,
    opened_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

fn incident_view(i: gapless_core::Incident) -> IncidentView {
    IncidentView {
        id: i.id.to_string(),
        identity: i.identity.to_string(),
        cause: i.failure.cause.to_string(),
        plain_words: i.failure.cause.plain_words().to_string(),
        provider_code: i.failure.provider_code,
        opened_at: i.opened_at,
        closed_at: i.closed_at,
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct IncidentsPage {
    incidents: Vec<IncidentView>,
    /// Pass as `after` for the next page; absent on the last one.
    next_after: Option<String>,
}

#[utoipa::path(get, path = "/api/incidents", tag = "incidents", params(ListingQuery),
    responses((status = 200, body = IncidentsPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn list_incidents(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiQuery(query): ApiQuery<ListingQuery>,
) -> Response {
    let (after, limit) = match query.newest_first() {
        Ok(asked) => asked,
        Err(refused) => return refused,
    };
    newest_first_answer(
        state
            .engine
            .store()
            .incidents_page(after.as_ref(), limit)
            .await,
        incident_view,
        |incidents, next_after| IncidentsPage {
            incidents,
            next_after,
        },
    )
}

/// Answer a page of a newest-first listing: its rows as `view` shows them, wrapped with
/// the cursor of the next page by `wrap`.
fn newest_first_answer<T, V, P: Serialize>(
    page: Result<gapless_store::TimePage<T>, StoreError>,
    view: impl FnMut(T) -> V,
    wrap: impl FnOnce(Vec<V>, Option<String>) -> P,
) -> Response {
    match page {
        Ok(page) => Json(wrap(
            page.rows.into_iter().map(view).collect(),
            page.next.map(|cursor| cursor.to_string()),
        ))
        .into_response(),
        Err(e) => failure(e.into()),
    }
}

#[utoipa::path(get, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "incident id")),
    responses((status = 200, body = IncidentView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn get_incident(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiPath(id): ApiPath,
) -> Response {
    let id = match parse_id("incident", &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.engine.store().incident(id).await {
        Ok(i) => Json(incident_view(i)).into_response(),
        Err(e) => failure(e.into()),
    }
}

/// A message (its body is not returned: it may carry a reauthorize link).
#[derive(Debug, Serialize, ToSchema)]
struct NotificationView {
    id: String,
    incident: Option<String>,
    kind: String,
    channel: String,
    recipients: Vec<String>,
    subject: String,
    /// `pending`, `delivered` or `failed`.
    state: String,
    attempts: u32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
struct NotificationsPage {
    notifications: Vec<NotificationView>,
    /// Pass as `after` for the next page; absent on the last one.
    next_after: Option<String>,
}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(ListingQuery),
    responses((status = 200, body = NotificationsPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn list_notifications(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiQuery(query): ApiQuery<ListingQuery>,
) -> Response {
    let (after, limit) = match query.newest_first() {
        Ok(asked) => asked,
        Err(refused) => return refused,
    };
    newest_first_answer(
        state
            .engine
            .store()
            .notifications_page(false, after.as_ref(), limit)
            .await,
        |n| NotificationView {
            id: n.id.to_string(),
            incident: n.incident.map(|i| i.to_string()),
            kind: n.kind.as_str().to_string(),
            channel: n.channel,
            recipients: n.recipients,
            subject: n.subject,
            state: n.delivery.state.as_str().to_string(),
            attempts: n.delivery.attempts,
            last_error: n.delivery.last_error,
            created_at: n.created_at,
            delivered_at: n.delivery.delivered_at,
        },
        |notifications, next_after| NotificationsPage {
            notifications,
            next_after,
        },
    )
}

/// Which audit entries to read, oldest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries about this identity (its id; deleted identities included).
    identity: Option<String>,
    /// Only entries at or after this instant (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only entries after this sequence number (the `next_after` of the page before).
    after: Option<i64>,
    /// At most this many entries (1 to 10000, default 1000).
    limit: Option<u32>,
}

/// One change of trust. Never a secret: credentials by generation, links by id, tokens by
/// name.
#[derive(Debug, Serialize, ToSchema)]
struct AuditView {
    seq: i64,
    at: DateTime<Utc>,
    /// `cli`, `api_token`, `dashboard`, `link` or `scheduler`.
    actor_kind: String,
    /// The CLI user, the token's name, the link's id or the instance.
    actor: String,
    /// The client address, for HTTP.
    source: Option<String>,
    action: String,
    identity: Option<String>,
    subject: String,
    #[schema(value_type = Object)]
    detail: serde_json::Map<String, serde_json::Value>,
    /// The hash of the entry before; `hash` covers this entry and `prev_hash`.
    prev_hash: String,
    hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct AuditPage {
    entries: Vec<AuditView>,
    /// Pass as `after` for the next page; absent on the last one.
    next_after: Option<i64>,
}

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn list_audit(
    State(state): State<Arc<AppState>>,
    _reader: Reader,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Response {
    let identity = match query.identity.as_deref().map(str::parse).transpose() {
        Ok(id) => id,
        Err(_) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "identity: not an identity id (the audit log is filtered by id)",
            )
            .into_response();
        }
    };
    let limit = match page_limit(query.limit, 1_000, gapless_store::MAX_AUDIT_PAGE) {
        Ok(limit) => limit,
        Err(refused) => return refused,
    };
    let filter = gapless_store::AuditFilter {
        identity,
        since: query.since,
        after: query.after,
        limit,
    };
    match state.engine.store().audit_entries(&filter).await {
        Ok(entries) => {
            let next_after = (entries.len() >= limit as usize)
                .then(|| entries.last().map(|e| e.seq))
                .flatten();
            Json(AuditPage {
                entries: entries
                    .into_iter()
                    .map(|e| AuditView {
                        seq: e.seq,
                        at: e.record.at,
                        actor_kind: e.record.actor.kind().to_string(),
                        actor: e.record.actor.name().to_string(),
                        source: e.record.source,
                        action: e.record.action.as_str().to_string(),
                        identity: e.record.identity.map(|i| i.to_string()),
                        subject: e.record.subject,
                        detail: e.record.detail,
                        prev_hash: e.prev_hash,
                        hash: e.hash,
                    })
                    .collect(),
                next_after,
            })
            .into_response()
        }
        Err(e) => failure(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_3_1() {
        let json = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
