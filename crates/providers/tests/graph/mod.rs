//! The Graph API's error envelope, shared by the emulators of Meta's endpoints
//! (https://developers.facebook.com/docs/graph-api/guides/error-handling):
//! `{"error": {"message", "type", "code", "error_subcode"?, "fbtrace_id"}}`.

use chrono::TimeZone;
use gapless_core::{ReportRange, Tz, Window};
use gapless_providers::{
    ProviderSettings, SettingValues,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
};
use gapless_vault::{AccessToken, ClientSecret, Credential};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// An error answer of the Graph API.
pub fn graph_error(status: StatusCode, code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AxYz123",
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = subcode.into();
    }
    (status, Json(json!({ "error": error }))).into_response()
}

/// The definition `text` run against an emulator at `base` (Meta's host replaced), with the
/// app `app-1` / `app-secret` and the installation's `settings`.
pub fn source(text: &str, base: &str, settings: SettingValues) -> DeclarativeSource {
    let text = text.replace("https://graph.facebook.com", base);
    let definition = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let base_url = definition.provider.base_url.get_ref().clone();
    DeclarativeSource::new(
        definition,
        ProviderSettings {
            base_url,
            client_id: "app-1".into(),
            client_secret: ClientSecret::new("app-secret".into()),
            timeouts: HttpTimeouts::default(),
            settings,
        },
    )
    .unwrap()
}

/// A user token as gapless keeps it (Meta gives no refresh token).
pub fn token(access_token: &str) -> Credential {
    Credential::OAuth2 {
        access_token: AccessToken::new(access_token.into()),
        refresh_token: None,
        access_expires_at: None,
    }
}

/// Days `from` to `to` (exclusive) of March 2026 in the Pacific zone Meta counts days in.
pub fn days(from: u32, to: u32) -> ReportRange {
    let tz: Tz = "America/Los_Angeles".parse().unwrap();
    let start = tz
        .with_ymd_and_hms(2026, 3, from, 0, 0, 0)
        .unwrap()
        .to_utc();
    let end = tz.with_ymd_and_hms(2026, 3, to, 0, 0, 0).unwrap().to_utc();
    ReportRange::new(Window::new(start, end), tz)
}
