//! A token endpoint that is not RFC 6749's: a JSON request with the vendor's own field
//! names, and the token inside an envelope that also carries errors with HTTP 200. Shaped
//! as TikTok's Business API documents its `POST /open_api/v1.3/oauth2/access_token/`
//! (tiktok/tiktok-business-api-sdk `docs/AuthenticationApi.md`, `Oauth2AccessTokenBody.md`:
//! `{"app_id", "secret", "auth_code"}` → `{"code": 0, "message": "OK", "data":
//! {"access_token", "advertiser_ids", "scope"}}`; errors as `{"code": 4xxxx, "message",
//! "data": {}}` with HTTP 200), and its consent page, which takes `app_id`, `state` and
//! `redirect_uri` and answers with `auth_code`.
//!
//! The emulator refuses a form-encoded request, the RFC 6749 field names, a wrong secret
//! and a code it did not issue.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, sync::Arc};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};
use gapless_core::FailureCause;
use gapless_providers::{
    ProviderSettings, SettingValues, SourceConnector, TokenError,
    declarative::{check::check, connector::DeclarativeSource},
};
use gapless_vault::ClientSecret;
use serde_json::{Value, json};

const APP_ID: &str = "7300000000000000001";
const SECRET: &str = "emulated-app-secret";

const DEFINITION: &str = r#"
[provider]
name = "envelope_ads"
display_name = "Envelope Ads"
base_url = "http://api.invalid"
classifier = "tiktok"

[auth]
kind = "oauth2"
authorize_url = "https://business-api.tiktok.com/portal/auth"
token_url = "/open_api/v1.3/oauth2/access_token/"
standard_consent = false
authorize_params = { app_id = "{settings.client_id}" }
callback_code = "auth_code"
client_auth = "post"
token_request = "json"
token_fields = { client_id = "app_id", client_secret = "secret", code = "auth_code" }
token_answer = "/data"
token_header = "Access-Token"
token_prefix = ""

[settings.client_id]
description = "The app id"

[probe.request]
url = "/open_api/v1.3/user/info/"
[probe]
account_id = "/data/core_user_id"

[[streams]]
name = "daily"
request = { url = "/open_api/v1.3/report/integrated/get/?advertiser_id={resource}&start_date={window.first_day}&end_date={window.last_day}" }
records = "/data/list"
primary_key = ["date"]
day_field = "date"
fields = [{ name = "date", type = "date", pointer = "/dimensions/stat_time_day" }]
"#;

async fn token(State(issued): State<Arc<String>>, headers: HeaderMap, body: String) -> Json<Value> {
    let refuse = |code: i64, message: &str| {
        Json(json!({"code": code, "message": message, "request_id": "2026120314", "data": {}}))
    };
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Some(request) = serde_json::from_str::<HashMap<String, Value>>(&body)
        .ok()
        .filter(|_| json_type)
    else {
        return refuse(40002, "The request body must be JSON");
    };
    if request.contains_key("client_id") || request.contains_key("code") {
        return refuse(40002, "Unknown parameter");
    }
    if request.get("app_id") != Some(&json!(APP_ID))
        || request.get("secret") != Some(&json!(SECRET))
    {
        return refuse(40001, "App id or secret is invalid");
    }
    if request.get("auth_code") != Some(&json!(issued.as_str())) {
        return refuse(40110, "Auth code is invalid or expired");
    }
    Json(
        json!({"code": 0, "message": "OK", "request_id": "2026120315",
        "data": {"access_token": "act.emulated", "advertiser_ids": ["7000000000000000001"], "scope": [4, 5]}}),
    )
}

async fn emulator() -> String {
    let app = Router::new()
        .route("/open_api/v1.3/oauth2/access_token/", post(token))
        .with_state(Arc::new("auth-code-1".to_string()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn source(base: &str) -> DeclarativeSource {
    let definition = check(DEFINITION).unwrap_or_else(|p| panic!("{p:#?}"));
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url: base.into(),
            client_id: APP_ID.into(),
            client_secret: ClientSecret::new(SECRET.into()),
            timeouts: Default::default(),
            settings: SettingValues::default(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_json_token_request_with_vendor_names_reads_the_token_inside_its_envelope() {
    let source = source(&emulator().await);
    let consent = source
        .authorization_request("http://127.0.0.1:8080/oauth/callback", &[])
        .unwrap();
    let url = url::Url::parse(&consent.url).unwrap();
    let mut names: Vec<_> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    names.sort();
    assert_eq!(names, ["app_id", "redirect_uri", "state"]);
    assert_eq!(source.callback_params().code, "auth_code");

    let now = chrono::Utc::now();
    let tokens = source
        .exchange_code(
            "auth-code-1",
            &consent.verifier,
            "http://127.0.0.1:8080/oauth/callback",
            now,
        )
        .await
        .unwrap();
    assert_eq!(tokens.access_token.expose_secret(), "act.emulated");
    assert!(tokens.refresh_token.is_none());

    // An error in the envelope, with HTTP 200: refused and classified, not taken for a
    // token answer that lacks its token.
    let err = source
        .exchange_code(
            "auth-code-2",
            &consent.verifier,
            "http://127.0.0.1:8080/oauth/callback",
            now,
        )
        .await
        .unwrap_err();
    let TokenError::Refused(failure) = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("40110"),
        "{failure:?}"
    );
    assert_ne!(failure.cause, FailureCause::Refreshable);
}
