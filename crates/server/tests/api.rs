//! The REST API, the dashboard's sign-in and forms, health, metrics, and a canary secret
//! that never leaves the vault.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, csrf_of};
use gapless_core::{Actor, AuditAction, AuditRecord, Caller};
use gapless_store::{ApiToken, TokenScope};
use gapless_vault::BearerToken;
use reqwest::{StatusCode, header};

async fn token(h: &Harness, name: &str, scope: TokenScope) -> String {
    let secret = BearerToken::generate().unwrap();
    h.engine
        .store()
        .insert_api_token(
            &ApiToken {
                id: name.into(),
                name: name.into(),
                scope,
                created_at: gapless_core::Clock::now(&h.w.clock),
                last_used_at: None,
                revoked_at: None,
            },
            &secret.hash(),
            &AuditRecord::new(
                gapless_core::Clock::now(&h.w.clock),
                &Caller::new(Actor::Cli("test".into())),
                AuditAction::TokenCreated,
                name,
            ),
        )
        .await
        .unwrap();
    secret.expose_secret().to_string()
}

#[tokio::test]
async fn api_routes_need_a_token_and_write_routes_a_write_token() {
    let h = Harness::start().await;
    let read = token(&h, "reader", TokenScope::Read).await;
    let write = token(&h, "writer", TokenScope::Write).await;
    let url = format!("{}/api/identities", h.base);

    let answer = h.http.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert!(answer.headers().contains_key(header::WWW_AUTHENTICATE));
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(problem["status"], 401);

    let answer = h.http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    // A path that is not UTF-8 is a problem+json answer like every other.
    let answer = h
        .http
        .get(format!("{url}/%FF%FE"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let identities: serde_json::Value = h
        .http
        .get(&url)
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(identities["identities"][0]["label"], "acme-ads");
    assert_eq!(identities["identities"][0]["state"], "healthy");
    assert_eq!(identities["next_after"], serde_json::Value::Null);

    let links = format!("{}/api/identities/{}/reauth-links", h.base, h.w.identity.id);
    let answer = h.http.post(&links).bearer_auth(&read).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("may only read"));
    let answer = h
        .http
        .post(&links)
        .bearer_auth(&write)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let link: serde_json::Value = answer.json().await.unwrap();
    assert!(
        link["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/reauth/", h.base))
    );
    let revoked: serde_json::Value = h
        .http
        .delete(&links)
        .bearer_auth(&write)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["revoked"], 1);

    // Bad input: an unknown id, a malformed body, a reversed range.
    let answer = h
        .http
        .get(format!("{}/api/incidents/not-an-id", h.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let backfills = format!("{}/api/pipelines/acme-daily/backfills", h.base);
    let answer = h
        .http
        .post(&backfills)
        .bearer_auth(&write)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{\"from\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let answer = h
        .http
        .post(&backfills)
        .bearer_auth(&write)
        .json(&serde_json::json!({"from": "2026-01-05", "to": "2026-01-02"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    h.daily_run(3).await;
    let plan: serde_json::Value = h
        .http
        .post(&backfills)
        .bearer_auth(&write)
        .json(&serde_json::json!({"from": "2026-01-01", "to": "2026-01-03", "dry_run": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["windows"], 3, "{plan}");
    assert_eq!(plan["started"], false);

    let answer = h
        .http
        .post(&backfills)
        .bearer_auth(&write)
        .json(&serde_json::json!({"from": "0001-01-01", "to": "2026-01-03", "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("outside the days gapless works with")
    );
    let answer = h.http.put(&url).bearer_auth(&read).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let answer = h
        .http
        .get(format!("{}/api/nothing-here", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let doc: serde_json::Value = h
        .http
        .get(format!("{}/api/openapi.json", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[tokio::test]
async fn the_dashboard_needs_a_sign_in_and_every_form_a_csrf_token() {
    let h = Harness::start().await;
    let write = token(&h, "operator", TokenScope::Write).await;
    h.revoke_for_days(2).await;

    let (status, _) = h.get(&format!("{}/identities", h.base), None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "to the sign-in");

    let answer = h
        .http
        .get(format!("{}/login", h.base))
        .send()
        .await
        .unwrap();
    let login_cookie = answer.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(answer.headers()[name], value, "{name}");
    }
    assert!(
        answer.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let page = answer.text().await.unwrap();
    let csrf = csrf_of(&page);
    let (status, body, _) = h
        .post_form(
            &format!("{}/login", h.base),
            &[("token", &write)],
            Some(&login_cookie),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token: {body}");
    let (status, _, _) = h
        .post_form(
            &format!("{}/login", h.base),
            &[("token", "wrong"), ("csrf", &csrf)],
            Some(&login_cookie),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, headers) = h
        .post_form(
            &format!("{}/login", h.base),
            &[("token", &write), ("csrf", &csrf)],
            Some(&login_cookie),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let session = set.split(';').next().unwrap().to_string();

    let (status, page) = h
        .get(&format!("{}/identities", h.base), Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"<tr class="red" id="identity-acme-ads">"#),
        "{page}"
    );
    assert!(page.contains("needs_reauth"), "{page}");
    // What the identity can read: its provider refuses the revoked grant, and says so.
    let (status, resources) = h
        .get(
            &format!("{}/identities/{}/resources", h.base, h.w.identity.id),
            Some(&session),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        resources.contains("The provider could not list them now"),
        "{resources}"
    );

    let mint = format!("{}/identities/{}/link", h.base, h.w.identity.id);
    let (status, _, _) = h.post_form(&mint, &[], Some(&session)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    let (status, page, _) = h
        .post_form(&mint, &[("csrf", &csrf_of(&page))], Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&format!("{}/reauth/", h.base)), "{page}");

    let send = format!("{}/identities/{}/send", h.base, h.w.identity.id);
    let before = h.engine.store().notifications(false).await.unwrap().len();
    let (status, page, _) = h
        .post_form(&send, &[("csrf", &csrf_of(&page))], Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("sent again"), "{page}");
    let messages = h.engine.store().notifications(false).await.unwrap();
    assert_eq!(messages.len(), before + 1);
    let links: std::collections::HashSet<_> =
        h.links_in_failure_messages().await.into_iter().collect();
    assert_eq!(
        links.len(),
        2,
        "the message sent again carries a fresh link"
    );

    let (status, page) = h
        .get(&format!("{}/pipelines", h.base), Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"<span class="missing""#), "{page}");
    let incident = h
        .engine
        .store()
        .open_incident_id(h.w.identity.id)
        .await
        .unwrap()
        .unwrap();
    let (status, page) = h
        .get(&format!("{}/incidents/{incident}", h.base), Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Authorization Failure"), "{page}");

    // Signing out ends the session on the server: the old cookie no longer signs in.
    let (status, page) = h
        .get(&format!("{}/identities", h.base), Some(&session))
        .await;
    assert_eq!(status, StatusCode::OK);
    let logout = format!("{}/logout", h.base);
    let (status, _, _) = h
        .post_form(&logout, &[("csrf", &csrf_of(&page))], Some(&session))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = h
        .get(&format!("{}/identities", h.base), Some(&session))
        .await;
    assert_ne!(status, StatusCode::OK, "a signed-out session still worked");
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let h = Harness::start().await;
    h.revoke_for_days(2).await;
    assert_eq!(
        h.get(&format!("{}/healthz", h.base), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.get(&format!("{}/readyz", h.base), None).await.0,
        StatusCode::OK
    );
    let (status, text) = h.get(&format!("{}/metrics", h.base), None).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "gapless_identities{state=\"needs_reauth\"} 1",
        "gapless_incidents_open 1",
        "gapless_windows{state=\"missing\"} 2",
        "gapless_windows{state=\"loaded\"} 1",
        "gapless_outbox_backlog",
        "gapless_token_refresh_calls_total",
        "gapless_extract_seconds_total",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn a_canary_secret_appears_in_no_response_page_or_metric() {
    let h = Harness::start().await;
    let canary =
        h.w.sandbox
            .sandbox()
            .issue_api_key(gapless_sandbox::DEMO_USER)
            .unwrap();
    let identity = h.connect_key_identity("canary-key", &canary).await;
    let read = token(&h, "reader", TokenScope::Read).await;
    let write = token(&h, "operator", TokenScope::Write).await;
    h.daily_run(1).await;
    let mut seen = String::new();
    for path in [
        "/api/identities".to_string(),
        format!("/api/identities/{identity}"),
        "/api/pipelines".into(),
        "/api/pipelines/acme-daily/gaps".into(),
        "/api/incidents".into(),
        "/api/notifications".into(),
        "/api/openapi.json".into(),
        "/metrics".into(),
        "/healthz".into(),
    ] {
        let answer = h
            .http
            .get(format!("{}{path}", h.base))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        seen.push_str(&answer.text().await.unwrap());
    }
    let link = h
        .engine
        .mint_reauth_link(identity, None, &h.engine.caller())
        .await
        .unwrap()
        .url;
    seen.push_str(&h.get(&link, None).await.1);
    let answer = h
        .http
        .get(format!("{}/login", h.base))
        .send()
        .await
        .unwrap();
    let cookie = answer.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = csrf_of(&answer.text().await.unwrap());
    let (_, _, headers) = h
        .post_form(
            &format!("{}/login", h.base),
            &[("token", &write), ("csrf", &csrf)],
            Some(&cookie),
        )
        .await;
    let session = headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for page in ["/identities", "/pipelines", "/incidents"] {
        let (status, body) = h.get(&format!("{}{page}", h.base), Some(&session)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.push_str(&body);
    }
    assert!(seen.contains("canary-key"), "the identity is listed");
    assert!(!seen.contains(&canary), "the canary secret leaked");
}

#[tokio::test]
async fn the_audit_log_names_who_changed_trust_and_from_where_and_holds_no_secret() {
    let h = Harness::start().await;
    let old_key =
        h.w.sandbox
            .sandbox()
            .issue_api_key(gapless_sandbox::DEMO_USER)
            .unwrap();
    let identity = h.connect_key_identity("acme-key", &old_key).await;
    let write = token(&h, "ops", TokenScope::Write).await;
    let read = token(&h, "viewer", TokenScope::Read).await;

    // An operator mints a link through the API; its holder enters a new key.
    let answer = h
        .http
        .post(format!("{}/api/identities/{identity}/reauth-links", h.base))
        .bearer_auth(&write)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let link = answer.json::<serde_json::Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let csrf = csrf_of(&h.get(&link, None).await.1);
    let new_key =
        h.w.sandbox
            .sandbox()
            .issue_api_key(gapless_sandbox::DEMO_USER)
            .unwrap();
    let (status, body, _) = h
        .post_form(
            &format!("{link}/secret"),
            &[("csrf", &csrf), ("secret", &new_key)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");

    let answer = h
        .http
        .get(format!("{}/api/audit?identity={identity}", h.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let text = answer.text().await.unwrap();
    for secret in [&old_key, &new_key, &write, &read] {
        assert!(!text.contains(secret.as_str()), "a secret in the audit log");
    }
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries = page["entries"].as_array().unwrap();
    let seen: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor_kind"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let tuple = |a: &str, k: &str, s: &str| (a.to_string(), k.to_string(), s.to_string());
    assert_eq!(
        seen,
        vec![
            tuple("identity_created", "scheduler", "-"),
            tuple("link_minted", "api_token", "127.0.0.1"),
            tuple("link_spent", "link", "127.0.0.1"),
            tuple("credential_swapped", "link", "127.0.0.1"),
        ],
        "{text}"
    );
    assert_eq!(entries[1]["actor"], "ops");
    let link_id = entries[1]["detail"]["link"].as_str().unwrap();
    assert_eq!(entries[3]["actor"], link_id, "the swap names the link used");
    assert_eq!(entries[3]["detail"]["generation"], 2);

    // The write itself is recorded with its token and request; reading is not.
    let all: serde_json::Value = h
        .http
        .get(format!("{}/api/audit", h.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let writes: Vec<&serde_json::Value> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "api_write")
        .collect();
    assert_eq!(writes.len(), 1, "{all}");
    assert_eq!(writes[0]["actor"], "ops");
    assert_eq!(
        writes[0]["detail"]["request"],
        format!("POST /api/identities/{identity}/reauth-links")
    );
    let checked = h.engine.store().verify_audit().await.unwrap();
    assert_eq!(checked.broken, None);

    // Paging and bad parameters.
    let answer = h
        .http
        .get(format!("{}/api/audit?limit=1", h.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    let first: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    assert_eq!(first["next_after"], 1);
    for bad in ["limit=0", "limit=x", "identity=nobody", "since=yesterday"] {
        let answer = h
            .http
            .get(format!("{}/api/audit?{bad}", h.base))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/problem+json",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_api_lists_what_an_identity_can_read() {
    let h = Harness::start().await;
    let read = token(&h, "viewer", TokenScope::Read).await;
    let answer = h
        .http
        .get(format!(
            "{}/api/identities/{}/resources",
            h.base, h.w.identity.id
        ))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let view: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(view["listed"], true, "{view}");
    assert!(
        view["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == gapless_sandbox::DEMO_AD_ACCOUNT),
        "{view}"
    );
    // The provider down: said so, not an error.
    h.w.sandbox
        .sandbox()
        .apply_fault(gapless_sandbox::Fault::ServerError { count: 10 })
        .unwrap();
    let view: serde_json::Value = h
        .http
        .get(format!(
            "{}/api/identities/{}/resources",
            h.base, h.w.identity.id
        ))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["listed"], false, "{view}");
    assert!(view["reason"].as_str().is_some(), "{view}");
}

#[tokio::test]
async fn the_openapi_document_names_every_route_and_method_the_api_answers_and_no_other() {
    let h = Harness::start().await;
    let read = token(&h, "reader", TokenScope::Read).await;
    let doc: serde_json::Value = h
        .http
        .get(format!("{}/api/openapi.json", h.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented = doc["paths"].as_object().unwrap();
    let routed = gapless_server::api_paths();
    for path in documented.keys() {
        assert!(routed.contains(path), "{path} is documented, not routed");
    }
    for path in routed.iter().filter(|p| *p != "/api/openapi.json") {
        let operations = documented
            .get(path)
            .unwrap_or_else(|| panic!("{path} is routed, not documented"));
        // Every method: the router answers it (anything but 405) exactly when the
        // document lists it. No token: an answered route says 401, never 404 or 405.
        let url = format!("{}{}", h.base, path.replace("{id}", "x"));
        for method in ["get", "post", "put", "patch", "delete"] {
            let answer = h
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            assert_ne!(answer.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(
                answer.status() != StatusCode::METHOD_NOT_ALLOWED,
                operations.get(method).is_some(),
                "{method} {path}: {}",
                answer.status()
            );
        }
    }
}

#[tokio::test]
async fn identities_are_listed_in_pages_that_follow_one_another_and_a_bad_limit_is_refused() {
    let h = Harness::start().await;
    let read = token(&h, "reader", TokenScope::Read).await;
    let key =
        h.w.sandbox
            .sandbox()
            .issue_api_key(gapless_sandbox::DEMO_USER)
            .unwrap();
    for label in ["b-key", "c-key", "d-key", "e-key"] {
        h.connect_key_identity(label, &key).await;
    }
    let mut labels = Vec::new();
    let mut url = format!("{}/api/identities?limit=2", h.base);
    let mut pages = 0;
    loop {
        let answer = h.http.get(&url).bearer_auth(&read).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let page: serde_json::Value = answer.json().await.unwrap();
        pages += 1;
        for identity in page["identities"].as_array().unwrap() {
            labels.push(identity["label"].as_str().unwrap().to_string());
            // Each row names the pipelines that use it, read for the page.
            if identity["label"] == "acme-ads" {
                assert_eq!(identity["pipelines"][0], "acme-daily");
            }
        }
        match page["next_after"].as_str() {
            Some(after) => {
                url = format!("{}/api/identities?limit=2&after={after}", h.base);
            }
            None => break,
        }
    }
    assert_eq!(labels, ["acme-ads", "b-key", "c-key", "d-key", "e-key"]);
    assert_eq!(pages, 3);

    for limit in ["0", "1001", "many"] {
        let answer = h
            .http
            .get(format!("{}/api/identities?limit={limit}", h.base))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "limit={limit}");
        let problem: serde_json::Value = answer.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("limit"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn pipelines_are_listed_in_pages_with_their_window_counts() {
    let h = Harness::start().await;
    let read = token(&h, "reader", TokenScope::Read).await;
    h.daily_run(1).await;
    for name in ["b-daily", "c-daily"] {
        h.w.add_pipeline(name, h.w.identity.id).await.unwrap();
    }
    let page = |query: String| {
        let (http, base, read) = (h.http.clone(), h.base.clone(), read.clone());
        async move {
            let answer = http
                .get(format!("{base}/api/pipelines?{query}"))
                .bearer_auth(&read)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            answer.json::<serde_json::Value>().await.unwrap()
        }
    };
    let first = page("limit=2".into()).await;
    let names: Vec<_> = first["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["acme-daily", "b-daily"]);
    assert_eq!(first["pipelines"][0]["windows"]["loaded"], 1);
    assert_eq!(first["next_after"], "b-daily");
    let second = page("limit=2&after=b-daily".into()).await;
    assert_eq!(second["pipelines"][0]["name"], "c-daily");
    assert_eq!(second["next_after"], serde_json::Value::Null);
}

#[tokio::test]
async fn incidents_and_messages_are_listed_newest_first_in_pages_and_a_bad_cursor_is_refused() {
    let h = Harness::start().await;
    let read = token(&h, "reader", TokenScope::Read).await;
    h.daily_run(1).await;
    // Two outages far apart: two incidents, each with its failure and recovery messages.
    for (revoked, back) in [(2, 3), (12, 13)] {
        h.w.revoke_and_run(revoked..=revoked).await.unwrap();
        h.w.reauthorize_as(gapless_sandbox::DEMO_USER, gapless_sandbox::DEMO_PASSWORD)
            .await
            .unwrap();
        h.daily_run(back).await;
    }
    let follow = |path: &'static str, key: &'static str| {
        let (http, base, read) = (h.http.clone(), h.base.clone(), read.clone());
        async move {
            let mut rows = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut query = vec![("limit", "1".to_string())];
                if let Some(after) = &after {
                    query.push(("after", after.clone()));
                }
                let answer = http
                    .get(format!("{base}{path}"))
                    .query(&query)
                    .bearer_auth(&read)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), StatusCode::OK, "{path}");
                let page: serde_json::Value = answer.json().await.unwrap();
                let found = page[key].as_array().unwrap();
                assert!(found.len() <= 1, "{path}: {page}");
                rows.extend(found.iter().cloned());
                match page["next_after"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => return rows,
                }
            }
        }
    };
    let incidents = follow("/api/incidents", "incidents").await;
    let opened: Vec<_> = incidents
        .iter()
        .map(|i| i["opened_at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(opened.len(), 2, "{incidents:?}");
    assert!(opened[0] > opened[1], "newest first: {opened:?}");
    let messages = follow("/api/notifications", "notifications").await;
    let stored = h.engine.store().notifications(false).await.unwrap();
    assert_eq!(
        messages
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        stored.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(),
        "every message once, newest first"
    );
    assert!(messages.len() >= 4, "{messages:?}");

    for (path, after) in [
        ("/api/incidents", "not-a-cursor"),
        ("/api/notifications", "yesterday~abc"),
    ] {
        let answer = h
            .http
            .get(format!("{}{path}", h.base))
            .query(&[("after", after)])
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        let problem: serde_json::Value = answer.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("after"),
            "{problem}"
        );
    }
}
