//! The sandbox through its HTTP interface: the OAuth flow, the report, and the error body of
//! every fault control.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use base64::Engine;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use gapless_core::VirtualClock;
use gapless_sandbox::{
    DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_USER, Fault,
    ReportRow, Sandbox, SandboxConfig, SandboxHandle, browser,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

struct Fixture {
    handle: SandboxHandle,
    clock: VirtualClock,
    http: reqwest::Client,
}

impl Fixture {
    async fn start() -> Self {
        let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 1, 20, 12, 0, 0).unwrap());
        let sandbox = Sandbox::demo(SandboxConfig::default(), Arc::new(clock.clone()));
        let handle = sandbox.bind("127.0.0.1:0").await.unwrap();
        Self {
            handle,
            clock,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    async fn consent(&self, scope: &str) -> (String, String) {
        let verifier = "a-verifier-that-is-long-enough-to-be-a-real-pkce-verifier-0123";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        let mut authorize = url::Url::parse(&self.url("/oauth/authorize")).unwrap();
        authorize
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", DEMO_CLIENT_ID)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", scope)
            .append_pair("state", "st4te")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let back = browser::approve(authorize.as_str(), DEMO_USER, DEMO_PASSWORD)
            .await
            .unwrap();
        let pairs: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
        assert_eq!(pairs["state"], "st4te");
        (pairs["code"].clone(), verifier.to_string())
    }

    async fn tokens(&self) -> (String, String) {
        let (code, verifier) = self.consent("ads_read business_management").await;
        let body = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ])
            .await;
        assert_eq!(body.0, 200, "{}", body.1);
        (
            body.1["access_token"].as_str().unwrap().to_string(),
            body.1["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/oauth/token"))
            .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
            .form(form)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Option<String>, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        (
            status,
            retry_after,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn fault(&self, fault: Fault) {
        let response = self
            .http
            .post(self.url("/admin/faults"))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    fn insights_path(&self) -> String {
        format!("/v1/{DEMO_AD_ACCOUNT}/insights?since=2026-01-10&until=2026-01-10")
    }
}

fn graph_code(body: &Value) -> (i64, Option<i64>) {
    (
        body["error"]["code"].as_i64().unwrap(),
        body["error"]["error_subcode"].as_i64(),
    )
}

#[tokio::test]
async fn oauth_code_flow_probe_and_paginated_report_match_the_truth() {
    let f = Fixture::start().await;
    let (access, _) = f.tokens().await;
    let (status, _, me) = f.get("/v1/me", &access).await;
    assert_eq!(status, 200);
    assert_eq!(me["name"], "Ana Example");
    assert_eq!(
        me["scopes"],
        serde_json::json!(["ads_read", "business_management"])
    );

    let mut rows: Vec<ReportRow> = vec![];
    let mut next = Some(f.url(&f.insights_path()));
    let mut pages = 0;
    while let Some(url) = next {
        let page: Value = f
            .http
            .get(url)
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.extend(serde_json::from_value::<Vec<ReportRow>>(page["data"].clone()).unwrap());
        next = page["paging"]["next"].as_str().map(str::to_string);
        pages += 1;
    }
    let truth = f.handle.sandbox().truth(
        DEMO_AD_ACCOUNT,
        NaiveDate::from_ymd_opt(2026, 1, 10).unwrap(),
    );
    assert_eq!(rows, truth);
    assert!(pages >= 2, "the default page size forces pagination");
}

#[tokio::test]
async fn pkce_mismatch_and_code_reuse_are_refused() {
    let f = Fixture::start().await;
    let (code, verifier) = f.consent("ads_read").await;
    let bad = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", "wrong"),
        ])
        .await;
    assert_eq!(bad.0, 400);
    assert_eq!(bad.1["error"], "invalid_grant");
    // The code was consumed by the failed attempt: presenting it again is reuse.
    let again = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(again.1["error"], "invalid_grant");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_of_a_spent_token_revokes_the_grant() {
    let f = Fixture::start().await;
    let (_, first) = f.tokens().await;
    let (status, body) = f.refresh(&first).await;
    assert_eq!(status, 200);
    let second = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let new_access = body["access_token"].as_str().unwrap().to_string();

    let (status, body) = f.refresh(&first).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_subcode"], 467);
    // The whole grant is dead: the rotated token and its access token too.
    let (_, body) = f.refresh(&second).await;
    assert_eq!(body["error"], "invalid_grant");
    let (_, _, body) = f.get("/v1/me", &new_access).await;
    assert_eq!(graph_code(&body), (190, Some(467)));
    assert_eq!(f.handle.sandbox().stats().refresh_reuse, 1);
}

#[tokio::test]
async fn expired_access_token_answers_190_463_and_is_counted() {
    let f = Fixture::start().await;
    let (access, _) = f.tokens().await;
    f.clock.advance(Duration::hours(2));
    let (status, _, body) = f.get("/v1/me", &access).await;
    assert_eq!(status, 400);
    assert_eq!(graph_code(&body), (190, Some(463)));
    assert_eq!(f.handle.sandbox().stats().expired_token_calls, 1);
}

#[tokio::test]
async fn every_fault_control_answers_with_the_provider_shaped_error() {
    struct Case {
        fault: Fault,
        path: &'static str,
        status: u16,
        code: (i64, Option<i64>),
        token_error: Option<(&'static str, Option<i64>)>,
    }
    let user = DEMO_USER.to_string();
    let cases = vec![
        Case {
            fault: Fault::RevokeApp { user: user.clone() },
            path: "/v1/me",
            status: 400,
            code: (190, Some(458)),
            token_error: Some(("invalid_grant", Some(458))),
        },
        Case {
            fault: Fault::ChangePassword {
                user: user.clone(),
                new_password: "new password 2".into(),
            },
            path: "/v1/me",
            status: 400,
            code: (190, Some(460)),
            token_error: Some(("invalid_grant", Some(460))),
        },
        Case {
            fault: Fault::LockAccount { user: user.clone() },
            path: "/v1/me",
            status: 400,
            code: (190, Some(459)),
            token_error: Some(("invalid_grant", Some(459))),
        },
        Case {
            fault: Fault::ExpireTokensNow { user: user.clone() },
            path: "/v1/me",
            status: 400,
            code: (190, Some(463)),
            token_error: None,
        },
        Case {
            fault: Fault::RemoveFromAdAccount {
                user: user.clone(),
                account: DEMO_AD_ACCOUNT.into(),
            },
            path: "insights",
            status: 403,
            code: (200, None),
            token_error: None,
        },
        Case {
            fault: Fault::DropScope {
                user: user.clone(),
                scope: "ads_read".into(),
            },
            path: "insights",
            status: 403,
            code: (10, None),
            token_error: None,
        },
        Case {
            fault: Fault::RateLimit {
                count: 1,
                retry_after_secs: 42,
                code: 17,
            },
            path: "/v1/me",
            status: 429,
            code: (17, Some(2_446_079)),
            token_error: None,
        },
        Case {
            fault: Fault::RateLimit {
                count: 1,
                retry_after_secs: 5,
                code: 613,
            },
            path: "insights",
            status: 429,
            code: (613, Some(1_487_742)),
            token_error: None,
        },
        Case {
            fault: Fault::RateLimit {
                count: 1,
                retry_after_secs: 5,
                code: 4,
            },
            path: "insights",
            status: 429,
            code: (4, None),
            token_error: None,
        },
        Case {
            fault: Fault::ServerError { count: 1 },
            path: "/v1/me",
            status: 500,
            code: (2, None),
            token_error: None,
        },
    ];
    for case in cases {
        let f = Fixture::start().await;
        let (access, refresh) = f.tokens().await;
        let label = format!("{:?}", case.fault);
        let retry = matches!(case.fault, Fault::RateLimit { .. });
        f.fault(case.fault).await;
        let path = if case.path == "insights" {
            f.insights_path()
        } else {
            case.path.to_string()
        };
        let (status, retry_after, body) = f.get(&path, &access).await;
        assert_eq!(status, case.status, "{label}: {body}");
        assert_eq!(graph_code(&body), case.code, "{label}: {body}");
        assert!(body["error"]["message"].as_str().is_some(), "{label}");
        assert_eq!(retry_after.is_some(), retry, "{label}: Retry-After");
        if let Some((error, subcode)) = case.token_error {
            let (status, body) = f.refresh(&refresh).await;
            assert_eq!(status, 400, "{label}");
            assert_eq!(body["error"], error, "{label}");
            assert_eq!(body["error_subcode"].as_i64(), subcode, "{label}");
        }
        if retry {
            // Counted faults run out: the next call goes through.
            let (status, _, _) = f.get(&path, &access).await;
            assert_eq!(status, 200, "{label}: after the counted fault");
        }
    }
}

#[tokio::test]
async fn slow_malformed_and_token_server_faults() {
    let f = Fixture::start().await;
    let (access, refresh) = f.tokens().await;
    f.fault(Fault::Slow {
        count: 1,
        delay_ms: 300,
    })
    .await;
    let started = std::time::Instant::now();
    let (status, _, _) = f.get("/v1/me", &access).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    f.fault(Fault::MalformedResponse { count: 1 }).await;
    let (status, _, body) = f.get("/v1/me", &access).await;
    assert_eq!(status, 200);
    assert!(body.is_string(), "an HTML body, not JSON: {body}");

    f.fault(Fault::TokenServerError { count: 1 }).await;
    let (status, body) = f.refresh(&refresh).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    // Nothing was spent: the same refresh token still works afterwards.
    let (status, _) = f.refresh(&refresh).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_fault_requests_are_refused_with_a_reason() {
    let f = Fixture::start().await;
    let response = f
        .http
        .post(f.url("/admin/faults"))
        .header("content-type", "application/json")
        .body(r#"{"fault":"revoke_app","user":"nobody@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nobody@example.com")
    );
    let response = f
        .http
        .post(f.url("/admin/faults"))
        .header("content-type", "application/json")
        .body(r#"{"fault":"melt_datacenter"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn locked_account_cannot_log_in_at_the_consent_page() {
    let f = Fixture::start().await;
    f.handle
        .sandbox()
        .apply_fault(Fault::LockAccount {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let authorize = format!(
        "{}?client_id={DEMO_CLIENT_ID}&redirect_uri={REDIRECT}&scope=ads_read&state=s&code_challenge=abc&code_challenge_method=S256",
        f.url("/oauth/authorize")
    );
    let err = browser::approve(&authorize, DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
}
