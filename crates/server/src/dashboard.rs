//! The operators' dashboard: server-rendered pages behind a sign-in with an API token.

use std::sync::Arc;

use askama::Template;
use axum::{
    Form, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use gapless_core::{Actor, AuditAction, AuditRecord, Caller, IncidentId};
use gapless_engine::EngineError;
use gapless_store::{IdentityCursor, IdentityOrder, TokenScope};
use gapless_vault::{BearerToken, hash_bearer};
use serde::Deserialize;

use crate::{
    AppState, RequestFacts, SESSION_LIFETIME,
    reauth::{internal, refusal, render},
    security::{Session, cookie, set_cookie},
    views::{IdentityRow, PipelineRow, identity_rows, pipeline_rows, when},
};

const SESSION_COOKIE: &str = "gapless_session";
const LOGIN_COOKIE: &str = "gapless_login";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/identities") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/identities", get(identities))
        .route("/identities/{id}/resources", get(resources))
        .route("/identities/{id}/link", post(mint_link))
        .route("/identities/{id}/revoke-links", post(revoke_links))
        .route("/identities/{id}/send", post(send_link))
        .route("/pipelines", get(pipelines))
        .route("/incidents", get(incidents))
        .route("/incidents/{id}", get(incident))
}

/// The signed-in operator, if the session cookie is genuine, unexpired, and its token is
/// not revoked.
async fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let session = state.signer.open_session(&value, state.now())?;
    let store = state.engine.store();
    if store.session_ended(&session.nonce).await.ok()? {
        return None;
    }
    store
        .active_api_token(&session.token_id)
        .await
        .ok()?
        .map(|_| session)
}

/// An engine error as a page: what does not exist is a 404, bad input a 400.
fn failure_page(error: EngineError) -> Response {
    match error {
        EngineError::Store(gapless_store::StoreError::NotFound { what }) => refusal(
            StatusCode::NOT_FOUND,
            "Not found",
            vec![format!("There is no {what}.")],
        ),
        EngineError::Invalid(detail) => {
            refusal(StatusCode::BAD_REQUEST, "This cannot be done", vec![detail])
        }
        other => internal(&other),
    }
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    csrf: String,
    error: String,
}

/// The sign-in form; its CSRF token is a random value also set as a cookie (double submit).
async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    login_form(&state, StatusCode::OK, String::new())
}

fn login_form(state: &AppState, status: StatusCode, error: String) -> Response {
    let nonce = match BearerToken::generate() {
        Ok(t) => t.hash(),
        Err(e) => return internal(&e.into()),
    };
    let cookie = set_cookie(LOGIN_COOKIE, &nonce, "/login", 3600, state.secure_cookies);
    let mut response = render(
        status,
        &Login {
            csrf: state.signer.csrf(&format!("login|{nonce}")),
            error,
        },
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    token: Option<String>,
}

async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if nonce.is_empty()
        || !state
            .signer
            .check_csrf(&format!("login|{nonce}"), form.csrf.as_deref())
    {
        return refusal(
            StatusCode::FORBIDDEN,
            "This form cannot be accepted",
            vec![
                "It lacks a valid security token (CSRF). Reload the sign-in page and try again."
                    .into(),
            ],
        );
    }
    let presented = form.token.unwrap_or_default();
    let token = match state
        .engine
        .store()
        .authenticate_api_token(&hash_bearer(presented.trim()), state.now())
        .await
    {
        Ok(Some(t)) => t,
        Ok(None) => {
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                "That token is not valid (or was revoked).".into(),
            );
        }
        Err(e) => return internal(&e.into()),
    };
    let nonce = match BearerToken::generate() {
        Ok(t) => t.hash(),
        Err(e) => return internal(&e.into()),
    };
    let session = Session {
        token_id: token.id,
        scope: token.scope,
        expires_at: state.now() + SESSION_LIFETIME,
        nonce,
    };
    let cookie = set_cookie(
        SESSION_COOKIE,
        &state.signer.session(&session),
        "/",
        SESSION_LIFETIME.num_seconds(),
        state.secure_cookies,
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/identities")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// A write action's checks: signed in, CSRF token, write scope.
async fn authorize_write(
    state: &AppState,
    headers: &HeaderMap,
    form: &CsrfForm,
    facts: &RequestFacts,
) -> Result<(Session, Caller), Response> {
    let Some(session) = session(state, headers).await else {
        return Err(to_login());
    };
    if !state
        .signer
        .check_csrf(&session.nonce, form.csrf.as_deref())
    {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "This form cannot be accepted",
            vec!["It lacks a valid security token (CSRF). Reload the page and try again.".into()],
        ));
    }
    if session.scope != TokenScope::Write {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "Read-only sign-in",
            vec!["The token you signed in with may only read.".into()],
        ));
    }
    let token = match state
        .engine
        .store()
        .active_api_token(&session.token_id)
        .await
    {
        Ok(Some(token)) => token,
        Ok(None) => return Err(to_login()),
        Err(e) => return Err(internal(&e.into())),
    };
    let caller = facts.caller(Actor::Dashboard(token.name));
    Ok((session, caller))
}

/// A write action on the identity `id` names: the session's checks, then the id.
async fn write_on(
    state: &AppState,
    headers: &HeaderMap,
    form: &CsrfForm,
    id: &str,
    facts: &RequestFacts,
) -> Result<(Session, Caller, gapless_core::IdentityId), Response> {
    let (session, caller) = authorize_write(state, headers, form, facts).await?;
    Ok((session, caller, parse_id(id)?))
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(session) = session(&state, &headers).await {
        if !state
            .signer
            .check_csrf(&session.nonce, form.csrf.as_deref())
        {
            return refusal(
                StatusCode::FORBIDDEN,
                "This form cannot be accepted",
                vec!["It lacks a valid security token (CSRF).".into()],
            );
        }
        // Ended on the server: the cookie, if kept or copied, no longer signs anyone in.
        if let Err(e) = state
            .engine
            .store()
            .end_session(&session.nonce, session.expires_at, state.now())
            .await
        {
            return internal(&e.into());
        }
    }
    let cookie = set_cookie(SESSION_COOKIE, "", "/", 0, state.secure_cookies);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[derive(Template)]
#[template(path = "identities.html")]
struct Identities {
    csrf: String,
    can_write: bool,
    identities: Vec<IdentityRow>,
    notice: String,
    link: String,
    /// The next page's address, or empty on the last.
    next: String,
}

/// Identities shown on one page of the dashboard.
const IDENTITIES_PER_PAGE: u32 = 200;

/// Where a page of the identities starts (the "next page" link's query).
#[derive(Debug, Default, Deserialize)]
struct IdentitiesQuery {
    after: Option<String>,
    group: Option<u8>,
}

async fn identities_page(
    state: &AppState,
    session: &Session,
    query: IdentitiesQuery,
    notice: String,
    link: String,
) -> Response {
    let after = query.after.map(|label| IdentityCursor {
        group: query.group.unwrap_or(0),
        label,
    });
    // Those that need a human first.
    let order = IdentityOrder::AttentionFirst;
    match identity_rows(&state.engine, order, after.as_ref(), IDENTITIES_PER_PAGE).await {
        Ok(page) => render(
            StatusCode::OK,
            &Identities {
                csrf: state.signer.csrf(&session.nonce),
                can_write: session.scope == TokenScope::Write,
                identities: page.rows,
                notice,
                link,
                next: page.next.map_or_else(String::new, |cursor| {
                    next_page(
                        "/identities",
                        &[
                            ("group", &cursor.group.to_string()),
                            ("after", &cursor.label),
                        ],
                    )
                }),
            },
        ),
        Err(e) => internal(&e),
    }
}

async fn identities(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<IdentitiesQuery>, QueryRejection>,
) -> Response {
    // A link that cannot be read starts from the first page.
    let query = query.map(|Query(q)| q).unwrap_or_default();
    match session(&state, &headers).await {
        Some(session) => {
            identities_page(&state, &session, query, String::new(), String::new()).await
        }
        None => to_login(),
    }
}

fn parse_id<T: std::str::FromStr>(id: &str) -> Result<T, Response> {
    id.parse().map_err(|_| {
        refusal(
            StatusCode::NOT_FOUND,
            "Not found",
            vec![format!("{id:?} is not an id here.")],
        )
    })
}

/// Mint a new reauthorize link to hand over ("copy link").
async fn mint_link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    facts: RequestFacts,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session, caller, id) = match write_on(&state, &headers, &form, &id, &facts).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let result: Result<(String, String), EngineError> = async {
        let label = state.engine.store().identity(id).await?.label;
        Ok((label, state.engine.reauth_link_for(id, &caller).await?.url))
    }
    .await;
    match result {
        Ok((label, url)) => {
            identities_page(
                &state,
                &session,
                IdentitiesQuery::default(),
                format!(
                    "A new reauthorize link for {label} (it works once, for {} days):",
                    state.engine.config().reauth_link_lifetime.num_days()
                ),
                url,
            )
            .await
        }
        Err(e) => failure_page(e),
    }
}

/// Send the failure message again, with a fresh link, to the identity's recipients.
async fn send_link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    facts: RequestFacts,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session, caller, id) = match write_on(&state, &headers, &form, &id, &facts).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    match state.engine.resend_reauth_message(id, &caller).await {
        Ok(n) => identities_page(
            &state,
            &session,
            IdentitiesQuery::default(),
            format!(
                "The failure message was sent again with a new reauthorize link ({n} message(s))."
            ),
            String::new(),
        )
        .await,
        Err(EngineError::Invalid(detail)) => {
            refusal(StatusCode::CONFLICT, "Nothing to send", vec![detail])
        }
        Err(e) => failure_page(e),
    }
}

async fn revoke_links(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    facts: RequestFacts,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session, caller, id) = match write_on(&state, &headers, &form, &id, &facts).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let audit = match state.engine.store().identity(id).await {
        Ok(identity) => AuditRecord::new(
            state.now(),
            &caller,
            AuditAction::LinkRevoked,
            identity.label,
        )
        .identity(id),
        Err(e) => return failure_page(e.into()),
    };
    match state
        .engine
        .store()
        .revoke_reauth_links(id, state.now(), &audit)
        .await
    {
        Ok(n) => {
            identities_page(
                &state,
                &session,
                IdentitiesQuery::default(),
                format!("{n} link(s) revoked."),
                String::new(),
            )
            .await
        }
        Err(e) => internal(&e.into()),
    }
}

#[derive(Template)]
#[template(path = "pipelines.html")]
struct Pipelines {
    csrf: String,
    pipelines: Vec<PipelineRow>,
    /// The next page's address, or empty on the last.
    next: String,
}

/// Pipelines shown on one page of the dashboard.
const PIPELINES_PER_PAGE: u32 = 100;

/// Where a page of a listing (pipelines, incidents) starts: after this row.
#[derive(Debug, Default, Deserialize)]
struct AfterQuery {
    after: Option<String>,
}

async fn pipelines(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<AfterQuery>, QueryRejection>,
) -> Response {
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    // A link that cannot be read starts from the first page.
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let result: Result<(Vec<PipelineRow>, Option<String>), EngineError> = async {
        let page = state
            .engine
            .store()
            .pipelines_page(query.after.as_deref(), PIPELINES_PER_PAGE)
            .await?;
        Ok((
            pipeline_rows(&state.engine, &page.pipelines).await?,
            page.next,
        ))
    }
    .await;
    match result {
        Ok((pipelines, next)) => render(
            StatusCode::OK,
            &Pipelines {
                csrf: state.signer.csrf(&session.nonce),
                pipelines,
                next: next.map_or_else(String::new, |after| {
                    next_page("/pipelines", &[("after", &after)])
                }),
            },
        ),
        Err(e) => internal(&e),
    }
}

/// The address of a listing's next page.
fn next_page(path: &str, query: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    format!("{path}?{query}")
}

struct IncidentRow {
    id: String,
    identity: String,
    cause: String,
    code: String,
    opened: String,
    closed: String,
}

/// The rows of these incidents, each with its identity's label.
async fn incident_rows(
    state: &AppState,
    incidents: Vec<gapless_core::Incident>,
) -> Result<Vec<IncidentRow>, EngineError> {
    let store = state.engine.store();
    // The labels of these incidents' identities only (one not found shows its id).
    let ids: Vec<_> = incidents.iter().map(|i| i.identity).collect();
    let labels = store.identity_labels(&ids).await?;
    Ok(incidents
        .into_iter()
        .map(|i| IncidentRow {
            id: i.id.to_string(),
            identity: labels
                .get(&i.identity)
                .cloned()
                .unwrap_or_else(|| i.identity.to_string()),
            cause: i.failure.cause.plain_words().to_string(),
            code: format!(
                "{}{}",
                i.failure.cause,
                i.failure
                    .provider_code
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            opened: when(i.opened_at),
            closed: i.closed_at.map(when).unwrap_or_default(),
        })
        .collect())
}

#[derive(Template)]
#[template(path = "incidents.html")]
struct Incidents {
    csrf: String,
    incidents: Vec<IncidentRow>,
    /// The next page's address; empty on the last page.
    next: String,
}

/// Incidents on one page of the dashboard, newest first.
const INCIDENTS_PER_PAGE: u32 = 100;

async fn incidents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<AfterQuery>, QueryRejection>,
) -> Response {
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    // A link that cannot be read starts from the first page.
    let after = query
        .ok()
        .and_then(|Query(q)| q.after)
        .and_then(|text| text.parse::<gapless_store::TimeCursor>().ok());
    let result: Result<(Vec<IncidentRow>, Option<String>), EngineError> = async {
        let page = state
            .engine
            .store()
            .incidents_page(after.as_ref(), INCIDENTS_PER_PAGE)
            .await?;
        Ok((
            incident_rows(&state, page.rows).await?,
            page.next.map(|cursor| cursor.to_string()),
        ))
    }
    .await;
    match result {
        Ok((incidents, next)) => render(
            StatusCode::OK,
            &Incidents {
                csrf: state.signer.csrf(&session.nonce),
                incidents,
                next: next.map_or_else(String::new, |after| {
                    next_page("/incidents", &[("after", &after)])
                }),
            },
        ),
        Err(e) => internal(&e),
    }
}

#[derive(Template)]
#[template(path = "resources.html")]
struct ResourcesPage {
    csrf: String,
    label: String,
    reason: Option<String>,
    /// (id, name, what it is reached through, the pipelines that read it).
    resources: Vec<(String, String, String, String)>,
}

/// What an identity can read, as its provider lists it now, and which pipelines read what.
async fn resources(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let result: Result<ResourcesPage, EngineError> = async {
        let identity = state.engine.store().identity(id).await?;
        let pipelines = state.engine.store().pipelines_using(id).await?;
        let (reason, listed) = match state.engine.resources_of(id).await? {
            Ok(listed) => (None, listed),
            Err(reason) => (Some(reason), vec![]),
        };
        Ok(ResourcesPage {
            csrf: state.signer.csrf(&session.nonce),
            label: identity.label,
            reason,
            resources: listed
                .into_iter()
                .map(|r| {
                    let readers: Vec<&str> = pipelines
                        .iter()
                        .filter(|p| p.source_identity == id && p.source_resource == r.id)
                        .map(|p| p.name.as_str())
                        .collect();
                    (
                        r.id,
                        r.name,
                        r.parent.unwrap_or_default(),
                        readers.join(", "),
                    )
                })
                .collect(),
        })
    }
    .await;
    match result {
        Ok(page) => render(StatusCode::OK, &page),
        Err(e) => failure_page(e),
    }
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    csrf: String,
    incident: IncidentRow,
    timeline: Vec<(String, String)>,
}

async fn incident(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = session(&state, &headers).await else {
        return to_login();
    };
    let id: IncidentId = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let result: Result<IncidentPage, EngineError> = async {
        let store = state.engine.store();
        let incident = store.incident(id).await?;
        let row = incident_rows(&state, vec![incident.clone()])
            .await?
            .pop()
            .ok_or_else(|| EngineError::Internal("the incident vanished".into()))?;
        let mut timeline = vec![(when(incident.opened_at), format!("opened: {}", row.code))];
        for n in store.notifications_of_incident(id).await? {
            timeline.push((
                when(n.created_at),
                format!(
                    "{} via {} to {}: {}{}",
                    n.subject,
                    n.channel,
                    n.recipients.join(", "),
                    n.delivery.state.as_str(),
                    n.delivery
                        .delivered_at
                        .map(|d| format!(" {}", when(d)))
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(closed) = incident.closed_at {
            timeline.push((when(closed), "closed: the identity works again".into()));
        }
        timeline.sort();
        Ok(IncidentPage {
            csrf: state.signer.csrf(&session.nonce),
            incident: row,
            timeline,
        })
    }
    .await;
    match result {
        Ok(page) => render(StatusCode::OK, &page),
        Err(e) => failure_page(e),
    }
}
