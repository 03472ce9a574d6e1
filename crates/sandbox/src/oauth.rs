//! The OAuth endpoints: consent page, token endpoint, revocation.

use std::collections::HashMap;

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use base64::Engine;

use crate::{
    Sandbox, json_error,
    world::{ConsentRequest, TokenError},
};

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to Sandbox Ads</title></head>
<body>
<h1>Sandbox Ads</h1>
<p><strong>{{ client_id }}</strong> wants to read your ad accounts ({{ scope }}).</p>
{% if let Some(error) = error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/oauth/authorize">
  <input type="hidden" name="client_id" value="{{ client_id }}">
  <input type="hidden" name="redirect_uri" value="{{ redirect_uri }}">
  <input type="hidden" name="scope" value="{{ scope }}">
  <input type="hidden" name="state" value="{{ state }}">
  <input type="hidden" name="code_challenge" value="{{ code_challenge }}">
  <input type="hidden" name="code_challenge_method" value="{{ code_challenge_method }}">
  <label>Email <input name="username" autocomplete="username"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit" name="decision" value="allow">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>
</body></html>
"#
)]
struct ConsentPage<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
    state: &'a str,
    code_challenge: &'a str,
    code_challenge_method: &'a str,
    error: Option<&'a str>,
}

fn field<'a>(map: &'a HashMap<String, String>, name: &str) -> &'a str {
    map.get(name).map(String::as_str).unwrap_or("")
}

fn render(map: &HashMap<String, String>, error: Option<&str>) -> Response {
    let page = ConsentPage {
        client_id: field(map, "client_id"),
        redirect_uri: field(map, "redirect_uri"),
        scope: field(map, "scope"),
        state: field(map, "state"),
        code_challenge: field(map, "code_challenge"),
        code_challenge_method: field(map, "code_challenge_method"),
        error,
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn validate_request(map: &HashMap<String, String>) -> Result<url::Url, &'static str> {
    if field(map, "response_type") != "code" && map.contains_key("response_type") {
        return Err("response_type must be code");
    }
    if field(map, "code_challenge_method") != "S256" {
        return Err("code_challenge_method must be S256 (PKCE is required)");
    }
    url::Url::parse(field(map, "redirect_uri")).map_err(|_| "redirect_uri is not a valid URL")
}

pub(crate) async fn authorize_page(Query(query): Query<HashMap<String, String>>) -> Response {
    match validate_request(&query) {
        Ok(_) => render(&query, None),
        Err(e) => render(&query, Some(e)),
    }
}

pub(crate) async fn authorize_submit(
    State(sandbox): State<Sandbox>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut redirect = match validate_request(&form) {
        Ok(url) => url,
        Err(e) => return render(&form, Some(e)),
    };
    let state = field(&form, "state");
    if field(&form, "decision") == "deny" {
        redirect
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", state);
        return Redirect::to(redirect.as_str()).into_response();
    }
    let now = sandbox.now();
    let request = ConsentRequest {
        client_id: field(&form, "client_id"),
        username: field(&form, "username"),
        password: field(&form, "password"),
        scopes: field(&form, "scope"),
        redirect_uri: field(&form, "redirect_uri"),
        challenge: field(&form, "code_challenge"),
    };
    let outcome = sandbox.world().authorize(&request, now);
    match outcome {
        Ok(code) => {
            redirect
                .query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", state);
            Redirect::to(redirect.as_str()).into_response()
        }
        Err(e) => render(&form, Some(&e)),
    }
}

fn token_error(error: TokenError) -> Response {
    json_error(error.http_status, error.body())
}

fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> (String, String) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split_once(':')
                .map(|(id, secret)| (id.to_string(), secret.to_string()))
        });
    basic.unwrap_or_else(|| {
        (
            field(form, "client_id").to_string(),
            field(form, "client_secret").to_string(),
        )
    })
}

pub(crate) async fn token(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return json_error(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": "the body must be application/x-www-form-urlencoded"}),
        );
    };
    let now = sandbox.now();
    let (client_id, client_secret) = client_credentials(&headers, &form);
    let mut world = sandbox.world();
    if let Some(error) = world.token_gate() {
        return token_error(error);
    }
    let result = match field(&form, "grant_type") {
        "authorization_code" => world.exchange_code(
            &client_id,
            &client_secret,
            field(&form, "code"),
            field(&form, "redirect_uri"),
            field(&form, "code_verifier"),
            now,
        ),
        "refresh_token" => world.refresh(
            &client_id,
            &client_secret,
            field(&form, "refresh_token"),
            now,
        ),
        "client_credentials" => {
            world.client_credentials(&client_id, &client_secret, field(&form, "scope"), now)
        }
        other => Err(TokenError {
            http_status: 400,
            error: "unsupported_grant_type",
            description: format!("grant_type {other:?} is not supported"),
            subcode: None,
        }),
    };
    let lost = result.is_ok() && world.lose_token_answer();
    drop(world);
    if lost {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response();
    }
    match result {
        Ok(response) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(response),
        )
            .into_response(),
        Err(error) => token_error(error),
    }
}

pub(crate) async fn revoke(
    State(sandbox): State<Sandbox>,
    Form(form): Form<HashMap<String, String>>,
) -> StatusCode {
    sandbox.world().revoke(field(&form, "token"));
    StatusCode::OK
}
