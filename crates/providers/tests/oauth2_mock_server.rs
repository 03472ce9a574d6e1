//! A provider run from its definition against a real OAuth2 server that the project did
//! not write (npm oauth2-mock-server, started by this test): authorization code with PKCE,
//! the probe, a refresh, and an error that server returns, classified by the definition's
//! rule. Needs `npm ci` in e2e/ (done by .ci/run, which sets GAPLESS_REQUIRE_E2E=1 so a
//! missing package fails instead of skipping).

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use gapless_core::{FailureCause, ReauthReason};
use gapless_providers::{
    ProviderSettings, SourceConnector,
    declarative::{check::check, connector::DeclarativeSource},
    http::HttpTimeouts,
    oauth::TokenError,
};
use gapless_vault::{ClientSecret, Credential, RefreshToken};

struct MockServer {
    child: Child,
    issuer: String,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Option<MockServer> {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if !e2e.join("node_modules/oauth2-mock-server").exists() {
        assert!(
            std::env::var("GAPLESS_REQUIRE_E2E").as_deref() != Ok("1"),
            "e2e/node_modules/oauth2-mock-server is missing (run `npm ci` in e2e/)"
        );
        return None;
    }
    let mut child = Command::new("node")
        .arg(e2e.join("oauth2-mock.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Some(MockServer {
        child,
        issuer: line.trim().replace("localhost", "127.0.0.1"),
    })
}

fn definition(issuer: &str) -> String {
    format!(
        r#"
[provider]
name = "mock_oauth"
display_name = "A standard OAuth2 server"
base_url = "{issuer}"

[auth]
kind = "oauth2"
authorize_url = "{issuer}/authorize"
token_url = "{issuer}/token"
scopes = ["openid", "profile"]
pkce = true
client_auth = "post"

[probe.request]
url = "/userinfo"
[probe]
account_id = "/sub"

# This server's way of saying the user revoked the app.
[[errors]]
status = 400
body = {{ "/error" = "invalid_grant", "/error_description" = "Token has been revoked by the user" }}
cause = "reauth_required/revoked"
code_pointer = "/error"
message_pointer = "/error_description"

[[streams]]
name = "nothing"
request = {{ url = "/reports" }}
records = "/data"
primary_key = ["id"]
fields = [{{ name = "id", type = "text" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_with_pkce_refresh_and_a_classified_error_against_a_real_server() {
    let Some(server) = start() else {
        // CI installs it and sets GAPLESS_REQUIRE_E2E=1: there, a skip is a failure.
        assert_ne!(
            std::env::var("GAPLESS_REQUIRE_E2E").as_deref(),
            Ok("1"),
            "e2e/node_modules/oauth2-mock-server is missing (run `npm ci` in e2e/)"
        );
        eprintln!(
            "skipped: e2e/node_modules/oauth2-mock-server is missing (GAPLESS_REQUIRE_E2E=1 makes this fail)"
        );
        return;
    };
    let text = definition(&server.issuer);
    let d = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let source = DeclarativeSource::new(
        d,
        ProviderSettings {
            base_url: String::new(),
            client_id: "gapless".into(),
            client_secret: ClientSecret::new("not-checked-by-this-server".into()),
            timeouts: HttpTimeouts::default(),
            settings: Default::default(),
        },
    )
    .unwrap();
    let redirect = "http://127.0.0.1:9/callback";
    let scopes = source.descriptor().default_scopes.clone();
    let request = source.authorization_request(redirect, &scopes).unwrap();
    assert!(
        request.url.contains("code_challenge_method=S256"),
        "{}",
        request.url
    );

    // The server signs the user in at once and redirects with a code.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let consent = |url: String| {
        let http = http.clone();
        async move {
            let answer = http.get(&url).send().await.unwrap();
            assert!(answer.status().is_redirection(), "{}", answer.status());
            let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
            let param = |name: &str| {
                location
                    .query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .unwrap()
            };
            (param("code"), param("state"))
        }
    };
    let (code, state) = consent(request.url.clone()).await;
    assert_eq!(state, request.state);

    // A wrong verifier is refused by the server (it checks PKCE), on a consent of its own:
    // the server forgets a code's challenge once it was tried.
    let other = source.authorization_request(redirect, &scopes).unwrap();
    let (other_code, _) = consent(other.url.clone()).await;
    let wrong = "x".repeat(64);
    let refused = source
        .exchange_code(&other_code, &wrong, redirect, chrono::Utc::now())
        .await;
    // RFC 7636 §4.6 asks for invalid_grant; this server says invalid_request, naming the
    // verifier. Either way the refusal is the server's, read as a grant that failed.
    assert!(
        matches!(
            &refused,
            Err(gapless_providers::TokenError::Refused(failure))
                if failure.provider_message.as_deref().is_some_and(|m| m.contains("code_verifier"))
                    && matches!(failure.cause, gapless_core::FailureCause::ReauthRequired { .. })
        ),
        "a wrong PKCE verifier is refused by the server: {refused:?}"
    );
    let tokens = source
        .exchange_code(&code, &request.verifier, redirect, chrono::Utc::now())
        .await
        .unwrap();
    let refresh = tokens.refresh_token.clone().expect("a refresh token");

    let credential = Credential::OAuth2 {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        access_expires_at: tokens.access_expires_at,
    };
    let report = source.probe(&credential).await.unwrap();
    assert!(!report.upstream_account_id.is_empty());

    let renewed = source.refresh(&refresh, chrono::Utc::now()).await.unwrap();
    // The server hands out a new refresh token with each refresh.
    assert!(renewed.refresh_token.is_some());
    assert_ne!(renewed.refresh_token, tokens.refresh_token);

    let error = source
        .refresh(
            &RefreshToken::new("revoked-by-the-user".into()),
            chrono::Utc::now(),
        )
        .await
        .unwrap_err();
    let TokenError::Refused(failure) = error else {
        panic!("{error:?}");
    };
    assert_eq!(
        failure.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked
        },
        "the definition's rule, not the default invalid_grant: {failure:?}"
    );
    assert_eq!(
        failure.provider_message.as_deref(),
        Some("Token has been revoked by the user")
    );
}
