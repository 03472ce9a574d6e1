//! The reauthorize link's page, the OAuth round trip, and the key/password form.

use std::{collections::HashMap, sync::Arc};

use askama::Template;
use axum::{
    Form, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use gapless_core::{Actor, AuditAction, AuditRecord, Caller, PipelineState};
use gapless_engine::{CallbackError, EngineError, ReauthOptions};
use gapless_store::ReauthLink;
use gapless_vault::{ApiKey, BearerToken, Credential, Password, hash_bearer};
use serde::Deserialize;

use crate::{
    AppState, FLOW_LIFETIME, Flow, PROGRESS_LIFETIME, Progress, RequestFacts,
    security::{cookie, set_cookie},
    views::{IdentityRow, PipelineRow, identity_row, pipeline_rows, when},
};

const FLOW_COOKIE: &str = "gapless_flow";
/// Sign-ins in progress at once.
const MAX_FLOWS: usize = 10_000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/reauth/{token}", get(page))
        .route("/reauth/{token}/start", post(start))
        .route("/reauth/{token}/secret", post(secret))
        .route("/oauth/callback", get(callback))
}

/// The back-fill's progress page: it reloads itself every second, so it is not counted
/// against the per-address budget of the other public routes.
pub fn progress_routes() -> Router<Arc<AppState>> {
    Router::new().route("/reauth/progress/{token}", get(progress))
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub title: String,
    pub tone: &'static str,
    pub paragraphs: Vec<String>,
    pub nothing_changed: bool,
}

/// A page that refuses, with the reason, and changes nothing.
pub fn refusal(status: StatusCode, title: &str, paragraphs: Vec<String>) -> Response {
    render(
        status,
        &Message {
            title: title.into(),
            tone: "error",
            paragraphs,
            nothing_changed: true,
        },
    )
}

pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "page rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

pub fn internal(error: &EngineError) -> Response {
    tracing::error!(%error, "request failed");
    render(
        StatusCode::INTERNAL_SERVER_ERROR,
        &Message {
            title: "Something went wrong".into(),
            tone: "error",
            paragraphs: vec![
                "gapless could not complete this request. The operators can find the details in its log.".into(),
            ],
            nothing_changed: false,
        },
    )
}

/// The link a token names, if it can still be used; else the page that says why not.
async fn usable_link(state: &AppState, token: &str) -> Result<ReauthLink, Response> {
    let link = match state
        .engine
        .store()
        .reauth_link_by_hash(&hash_bearer(token))
        .await
    {
        Ok(Some(link)) => link,
        Ok(None) => {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                "This link is not valid",
                vec!["No reauthorize link matches this address. Check that it was copied whole, or ask the operators for a new one.".into()],
            ));
        }
        Err(error) => return Err(internal(&error.into())),
    };
    check_link(state, &link).await?;
    Ok(link)
}

/// Refuse a link that was used, revoked, has expired, or whose incident is resolved.
async fn check_link(state: &AppState, link: &ReauthLink) -> Result<(), Response> {
    let store = state.engine.store();
    let now = state.now();
    if let Some(used) = link.used_at {
        let identity = store
            .identity(link.identity)
            .await
            .map_err(|e| internal(&e.into()))?;
        return Err(refusal(
            StatusCode::GONE,
            "This link was already used",
            vec![
                format!("It was used on {} and works only once.", when(used)),
                format!("{} is {} now.", identity.label, identity.health.name()),
            ],
        ));
    }
    if link.revoked_at.is_some() && link.failed_attempts >= MAX_SECRET_ATTEMPTS {
        return Err(refusal(
            StatusCode::GONE,
            "This link is locked",
            vec![
                format!(
                    "{} keys or passwords entered here were refused by the provider; more could lock the account there, so this link takes no more.",
                    link.failed_attempts
                ),
                "Check the key or password, then ask the operators for a new link.".into(),
            ],
        ));
    }
    if let Some(revoked) = link.revoked_at {
        return Err(refusal(
            StatusCode::GONE,
            "This link was revoked",
            vec![format!(
                "The operators revoked it on {}. Ask them for a new one.",
                when(revoked)
            )],
        ));
    }
    if link.expires_at <= now {
        return Err(refusal(
            StatusCode::GONE,
            "This link has expired",
            vec![format!(
                "It worked until {}. Ask the operators for a new one.",
                when(link.expires_at)
            )],
        ));
    }
    if let Some(incident) = link.incident {
        let incident = store
            .incident(incident)
            .await
            .map_err(|e| internal(&e.into()))?;
        if let Some(closed) = incident.closed_at {
            return Err(refusal(
                StatusCode::GONE,
                "Already resolved",
                vec![format!(
                    "The problem this link was sent for was resolved on {}. Nothing needs to be done.",
                    when(closed)
                )],
            ));
        }
    }
    Ok(())
}

/// The link of a posted form (checked, with its CSRF token) and its identity.
async fn posted_link(
    state: &AppState,
    token: &str,
    csrf: Option<&str>,
) -> Result<(ReauthLink, gapless_core::Identity), Response> {
    let link = usable_link(state, token).await?;
    if !state.signer.check_csrf(&link.id, csrf) {
        return Err(csrf_refusal());
    }
    let identity = state
        .engine
        .store()
        .identity(link.identity)
        .await
        .map_err(|e| internal(&e.into()))?;
    Ok((link, identity))
}

/// Spend the link for one attempt, so that of two concurrent attempts only one proceeds:
/// the incident it is for (read before the swap closes it) and the instant that releases
/// the link again if the attempt is refused.
async fn spend(
    state: &AppState,
    link: &ReauthLink,
    caller: &Caller,
) -> Result<
    (
        Option<gapless_core::IncidentId>,
        chrono::DateTime<chrono::Utc>,
    ),
    Response,
> {
    let incident = state
        .engine
        .store()
        .open_incident_id(link.identity)
        .await
        .map_err(|e| internal(&e.into()))?;
    let at = state.now();
    let label = match state.engine.store().identity(link.identity).await {
        Ok(identity) => identity.label,
        Err(e) => return Err(internal(&e.into())),
    };
    let audit = AuditRecord::new(at, caller, AuditAction::LinkSpent, label).identity(link.identity);
    match state
        .engine
        .store()
        .use_reauth_link(&link.id, at, &audit)
        .await
    {
        Ok(true) => Ok((incident, at)),
        Ok(false) => Err(refusal(
            StatusCode::GONE,
            "This link can no longer be used",
            vec!["It was used, revoked or expired meanwhile.".into()],
        )),
        Err(error) => Err(internal(&error.into())),
    }
}

/// Wrong keys or passwords one link takes before it locks.
const MAX_SECRET_ATTEMPTS: u32 = 5;

#[derive(Template)]
#[template(path = "reauth.html")]
struct ReauthPage {
    token: String,
    csrf: String,
    identity: IdentityRow,
    resumes: Vec<String>,
    oauth: bool,
    password: bool,
    /// A key or password can be typed in (false: nothing a person can enter renews it).
    by_hand: bool,
    username: String,
    expires: String,
    any_account: bool,
}

/// What a reauthorization of the identity resumes, in words.
async fn resumes(state: &AppState, link: &ReauthLink) -> Result<Vec<String>, EngineError> {
    let engine = &state.engine;
    let pipelines = engine.store().pipelines_using(link.identity).await?;
    let rows = pipeline_rows(engine, &pipelines).await?;
    let mut out = Vec::new();
    for (pipeline, row) in pipelines.iter().zip(rows) {
        let missing = row.counts.get("missing").copied().unwrap_or(0);
        let waiting = matches!(pipeline.state, PipelineState::WaitingForIdentity { .. });
        out.push(match (waiting, missing) {
            (_, 0) if !waiting => format!("{} keeps running", pipeline.name),
            (_, 0) => format!("{} resumes", pipeline.name),
            (_, n) => format!(
                "{} resumes and back-fills {n} missing window(s) the provider still serves",
                pipeline.name
            ),
        });
    }
    Ok(out)
}

async fn page(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    let link = match usable_link(&state, &token).await {
        Ok(link) => link,
        Err(page) => return page,
    };
    let engine = &state.engine;
    let result: Result<Response, EngineError> = async {
        let identity = engine.store().identity(link.identity).await?;
        let pipelines = engine.store().pipelines_using(identity.id).await?;
        let row = identity_row(engine, &identity, &pipelines, None);
        let renewal = renewal_of(&state, &identity.provider);
        let username = match renewal {
            // The page must still let someone type a new password when the old one's
            // name cannot be read.
            Renewal::Password => match engine.username_of(identity.id).await {
                Ok(name) => name.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(identity = %identity.label, %error, "the user name of the stored password could not be read");
                    String::new()
                }
            },
            _ => String::new(),
        };
        Ok(render(
            StatusCode::OK,
            &ReauthPage {
                csrf: state.signer.csrf(&link.id),
                token,
                identity: row,
                resumes: resumes(&state, &link).await?,
                oauth: renewal == Renewal::Consent,
                password: renewal == Renewal::Password,
                by_hand: matches!(renewal, Renewal::Password | Renewal::ApiKey),
                username,
                expires: when(link.expires_at),
                any_account: identity.allow_any_account,
            },
        ))
    }
    .await;
    result.unwrap_or_else(|e| internal(&e))
}

/// How an identity of a provider is renewed from its link's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Through the provider's consent page (OAuth authorization code).
    Consent,
    /// A user name and password typed into the form.
    Password,
    /// A key typed into the form.
    ApiKey,
    /// Nothing a person can do here: a service account, or a provider not configured.
    NotByHand,
}

fn renewal_of(state: &AppState, provider: &str) -> Renewal {
    if state.engine.is_destination(provider) {
        return Renewal::Password;
    }
    match state.engine.provider(provider).map(|d| d.auth) {
        Ok(gapless_providers::AuthKind::ApiKey) => Renewal::ApiKey,
        Ok(gapless_providers::AuthKind::Password) => Renewal::Password,
        Ok(gapless_providers::AuthKind::OAuth2Code) => Renewal::Consent,
        Ok(gapless_providers::AuthKind::OAuth2ClientCredentials) | Err(_) => Renewal::NotByHand,
    }
}

#[derive(Deserialize)]
struct StartForm {
    csrf: Option<String>,
    /// "yes" when the person confirmed switching to another upstream account.
    other_account: Option<String>,
}

fn csrf_refusal() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        "This form cannot be accepted",
        vec!["It lacks a valid security token (CSRF). Open the link again and resubmit from that page.".into()],
    )
}

/// Start the consent: remember the PKCE verifier under the `state`, bind the browser to it
/// with a cookie, and send the person to the provider.
async fn start(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Form(form): Form<StartForm>,
) -> Response {
    let (link, identity) = match posted_link(&state, &token, form.csrf.as_deref()).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    if renewal_of(&state, &identity.provider) != Renewal::Consent {
        return refusal(
            StatusCode::BAD_REQUEST,
            "This identity is renewed with a key or password",
            vec!["Enter the new one in the form on the link's page.".into()],
        );
    }
    let pending = match state.engine.begin_reauthorization(&identity) {
        Ok(p) => p,
        Err(e) => return internal(&e),
    };
    let url = pending.url.clone();
    let flow_state = pending.state().to_string();
    let now = state.now();
    {
        let mut flows = state.flows.lock().await;
        // One sign-in per link at a time (a new one replaces the old), and a bound overall.
        flows.retain(|_, f| now - f.started < FLOW_LIFETIME && f.link_id != link.id);
        if flows.len() >= MAX_FLOWS {
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins in progress",
                vec!["Try again in a few minutes.".into()],
            );
        }
        flows.insert(
            flow_state.clone(),
            Flow {
                link_id: link.id.clone(),
                identity: identity.id,
                accept_other_account: identity.allow_any_account
                    && form.other_account.as_deref() == Some("yes"),
                pending,
                started: now,
            },
        );
    }
    let cookie = set_cookie(
        FLOW_COOKIE,
        &flow_state,
        "/oauth",
        FLOW_LIFETIME.num_seconds(),
        state.secure_cookies,
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
}

/// The provider sends the person back here.
async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    facts: RequestFacts,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(returned) = params.get("state") else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in cannot be completed",
            vec!["The provider's answer carries no state.".into()],
        );
    };
    if cookie(&headers, FLOW_COOKIE).as_deref() != Some(returned.as_str()) {
        return refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in cannot be completed",
            vec!["The state returned by the provider does not match the sign-in started in this browser (a state mismatch). This can be a forged request. Open the reauthorize link again and start over.".into()],
        );
    }
    let Some(flow) = state.flows.lock().await.remove(returned) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in cannot be completed",
            vec!["No PKCE verifier is held for this sign-in: it expired, was already completed, or gapless restarted meanwhile. Open the reauthorize link again and start over.".into()],
        );
    };
    if state.now() - flow.started >= FLOW_LIFETIME {
        return refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in took too long",
            vec!["Open the reauthorize link again and start over.".into()],
        );
    }
    let link = match state.engine.store().reauth_link(&flow.link_id).await {
        Ok(link) => link,
        Err(e) => return internal(&e.into()),
    };
    if let Err(page) = check_link(&state, &link).await {
        return page;
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let callback_url =
        match url::Url::parse(&format!("{}?{query}", state.engine.config().redirect_uri())) {
            Ok(u) => u,
            Err(e) => return internal(&EngineError::Internal(e.to_string())),
        };
    let caller = facts.caller(Actor::Link(link.id.clone()));
    let (incident, spent) = match spend(&state, &link, &caller).await {
        Ok(spent) => spent,
        Err(page) => return page,
    };
    let result = state
        .engine
        .reauthorize_then(
            flow.identity,
            &flow.pending,
            &callback_url,
            ReauthOptions {
                defer_backfill: true,
                accept_other_account: flow.accept_other_account,
                caller: Some(caller.clone()),
            },
        )
        .await;
    finish(&state, false, &link, spent, incident, result, &caller).await
}

#[derive(Deserialize)]
struct SecretForm {
    csrf: Option<String>,
    /// "yes" when the person confirmed switching to another upstream account.
    other_account: Option<String>,
    username: Option<String>,
    secret: Option<String>,
}

/// A new key or password: probed first, saved only if it works.
async fn secret(
    State(state): State<Arc<AppState>>,
    facts: RequestFacts,
    Path(token): Path<String>,
    Form(form): Form<SecretForm>,
) -> Response {
    let (link, identity) = match posted_link(&state, &token, form.csrf.as_deref()).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let secret = form.secret.unwrap_or_default();
    let credential = match renewal_of(&state, &identity.provider) {
        Renewal::Consent => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "This identity is reauthorized at its provider",
                vec!["Use the button on the link's page.".into()],
            );
        }
        Renewal::NotByHand => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "This identity is not renewed by hand",
                vec!["gapless renews it with the application's own credentials; the operators can check its configuration.".into()],
            );
        }
        Renewal::Password => Credential::Password {
            username: form.username.unwrap_or_default().trim().to_string(),
            password: Password::new(secret),
        },
        Renewal::ApiKey => Credential::ApiKey {
            key: ApiKey::new(secret.trim().to_string()),
        },
    };
    let caller = facts.caller(Actor::Link(link.id.clone()));
    let (incident, spent) = match spend(&state, &link, &caller).await {
        Ok(spent) => spent,
        Err(page) => return page,
    };
    let result = state
        .engine
        .reauthorize_with_secret_then(
            identity.id,
            credential,
            ReauthOptions {
                defer_backfill: true,
                accept_other_account: identity.allow_any_account
                    && form.other_account.as_deref() == Some("yes"),
                caller: Some(caller.clone()),
            },
        )
        .await;
    finish(&state, true, &link, spent, incident, result, &caller).await
}

#[derive(Template)]
#[template(path = "reauth_done.html")]
struct Done {
    identity: IdentityRow,
    finished: bool,
    failure: Option<String>,
    recovered: u64,
    lost: u64,
    still_missing: u64,
    pipelines: Vec<PipelineRow>,
}

/// After a successful swap: spend the link, start the back-fill in the background and send
/// the person to its progress page. A refusal is explained (nothing was changed).
async fn finish(
    state: &AppState,
    entered_secret: bool,
    link: &ReauthLink,
    spent: chrono::DateTime<chrono::Utc>,
    incident: Option<gapless_core::IncidentId>,
    result: Result<gapless_engine::EventLog, EngineError>,
    caller: &Caller,
) -> Response {
    match result {
        Err(error) => refused(state, (link, spent), entered_secret, error, caller).await,
        Ok(_) => start_backfill(state, link, incident).await,
    }
}

/// A reauthorization refused: nothing was replaced, so the link (spent at `spent`) works
/// again — unless it was a key or password the provider refused too often — and the
/// person is told why.
async fn refused(
    state: &AppState,
    (link, spent): (&ReauthLink, chrono::DateTime<chrono::Utc>),
    entered_secret: bool,
    error: EngineError,
    caller: &Caller,
) -> Response {
    if let Err(e) = state
        .engine
        .store()
        .release_reauth_link(&link.id, spent)
        .await
    {
        return internal(&e.into());
    }
    // A key or password the provider refused: each is a login attempt there, and a run of
    // them can lock the account, so the link locks first.
    if let EngineError::Authorization(CallbackError::Probe(failure)) = &error
        && entered_secret
        && failure.cause.needs_human()
        && let Some(locked) = lock_after_refused_secret(state, link, failure, caller).await
    {
        return locked;
    }
    match error {
        EngineError::Authorization(error) => authorization_refusal(&error),
        EngineError::Store(gapless_store::StoreError::Conflict(_)) => refusal(
            StatusCode::CONFLICT,
            "The authorization changed meanwhile",
            vec!["Someone else replaced it while you were signing in. Open the link again to see where it stands.".into()],
        ),
        EngineError::Invalid(detail) => {
            refusal(StatusCode::BAD_REQUEST, "This cannot be done", vec![detail])
        }
        other => internal(&other),
    }
}

/// Count a key or password the provider refused against `link`: the answer when the link
/// is now locked (or the count could not be kept), None while it still takes attempts.
async fn lock_after_refused_secret(
    state: &AppState,
    link: &ReauthLink,
    failure: &gapless_core::Failure,
    caller: &Caller,
) -> Option<Response> {
    let locked = AuditRecord::new(
        state.now(),
        caller,
        AuditAction::LinkLocked,
        failure.cause.to_string(),
    )
    .identity(link.identity)
    .with("link", link.id.clone());
    match state
        .engine
        .store()
        .record_failed_link_attempt(&link.id, MAX_SECRET_ATTEMPTS, state.now(), &locked)
        .await
    {
        Ok(attempts) if attempts >= MAX_SECRET_ATTEMPTS => Some(refusal(
            StatusCode::FORBIDDEN,
            "This link is locked",
            vec![
                format!(
                    "{attempts} keys or passwords entered here were refused by the provider. Each is a login attempt there, and more could lock the account, so this link no longer accepts any."
                ),
                "Check the key or password, then ask the operators for a new link.".into(),
            ],
        )),
        Ok(_) => None,
        Err(e) => Some(internal(&e.into())),
    }
}

/// The back-fill after a reauthorization, started in the background: the person is sent
/// to its progress page, found by a fresh token.
async fn start_backfill(
    state: &AppState,
    link: &ReauthLink,
    incident: Option<gapless_core::IncidentId>,
) -> Response {
    let token = match BearerToken::generate() {
        Ok(t) => t.expose_secret().to_string(),
        Err(e) => return internal(&e.into()),
    };
    let now = state.now();
    {
        let mut all = state.progress.lock().await;
        all.retain(|_, p| now - p.started < PROGRESS_LIFETIME);
        all.insert(
            token.clone(),
            Progress {
                identity: link.identity,
                incident,
                started: now,
                outcome: None,
            },
        );
    }
    let engine = state.engine.clone();
    let progress = state.progress.clone();
    let key = token.clone();
    let identity = link.identity;
    tokio::spawn(async move {
        let mut log = gapless_engine::EventLog::default();
        let outcome = match engine
            .resume_after_recovery(identity, incident, &mut log)
            .await
        {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::error!(%error, "back-fill after reauthorization failed");
                Err("an error stopped it (the details are in gapless's log)".to_string())
            }
        };
        if let Some(p) = progress.lock().await.get_mut(&key) {
            p.outcome = Some(outcome);
        }
    });
    Redirect::to(&format!("/reauth/progress/{token}")).into_response()
}

/// The back-fill after a reauthorization, as it progresses (the page refreshes itself
/// until it is done).
async fn progress(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    let (identity, incident, outcome) = match state.progress.lock().await.get(&token) {
        Some(p) => (p.identity, p.incident, p.outcome.clone()),
        None => {
            return refusal(
                StatusCode::NOT_FOUND,
                "Nothing to show",
                vec!["This progress page does not exist or has expired.".into()],
            );
        }
    };
    let engine = &state.engine;
    let shown: Result<Response, EngineError> = async {
        let identity = engine.store().identity(identity).await?;
        let pipelines = engine.store().pipelines_using(identity.id).await?;
        let rows = pipeline_rows(engine, &pipelines).await?;
        // The figures come from the ledger, the same as the recovery notice's.
        let summary = match incident {
            Some(incident) => Some(engine.recovery_summary(incident).await?),
            None => None,
        };
        let (finished, failure) = match outcome {
            None => (false, None),
            Some(Ok(())) => (true, None),
            Some(Err(error)) => (true, Some(error)),
        };
        let (recovered, lost, still_missing) =
            summary.map_or((0, 0, 0), |s| (s.recovered, s.lost, s.still_missing));
        Ok(render(
            StatusCode::OK,
            &Done {
                identity: identity_row(engine, &identity, &pipelines, None),
                finished,
                failure,
                recovered,
                lost,
                still_missing,
                pipelines: rows,
            },
        ))
    }
    .await;
    shown.unwrap_or_else(|e| internal(&e))
}

fn authorization_refusal(error: &CallbackError) -> Response {
    let (status, title, explanation) = match error {
        CallbackError::DifferentAccount {
            may_confirm: false, ..
        } => (
            StatusCode::CONFLICT,
            "That is a different account",
            "Sign in at the provider with the account this identity belongs to, then open the link again.",
        ),
        CallbackError::DifferentAccount {
            may_confirm: true, ..
        } => (
            StatusCode::CONFLICT,
            "That is a different account",
            "This identity may switch accounts, but only when you confirm it: open the link again, tick the confirmation and sign in again.",
        ),
        CallbackError::MissingScopes(_) => (
            StatusCode::FORBIDDEN,
            "Some permissions were not granted",
            "Approve every permission gapless asks for, then open the link again.",
        ),
        CallbackError::StateMismatch => (
            StatusCode::BAD_REQUEST,
            "This sign-in cannot be completed",
            "Open the reauthorize link again and start over.",
        ),
        CallbackError::Denied(_) => (
            StatusCode::FORBIDDEN,
            "Access was not granted",
            "The provider reports that access was declined. Open the link again to retry.",
        ),
        CallbackError::Probe(_) => (
            StatusCode::BAD_REQUEST,
            "The new credential does not work",
            "It was checked with the provider and refused, so it was not saved. Check it and try again.",
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "The provider did not complete the sign-in",
            "Open the link again to retry.",
        ),
    };
    // Account names and scopes are shown; a provider's answer (which may echo anything)
    // only goes to the log.
    let what = match error {
        CallbackError::DifferentAccount { .. } | CallbackError::MissingScopes(_) => {
            error.to_string()
        }
        CallbackError::Probe(failure) => {
            format!("The provider refused it: {}.", failure.cause.plain_words())
        }
        other => {
            tracing::warn!(error = %other, "reauthorization refused");
            "The provider did not complete the sign-in.".to_string()
        }
    };
    refusal(status, title, vec![what, explanation.into()])
}
