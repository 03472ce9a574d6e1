//! The reauthorize link end to end over HTTP: the link from the Authorization Failure
//! message, the consent at the sandbox, the callback, the swap, the backfill; and every
//! refusal, each leaving the stored credential as it was.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, csrf_of};
use gapless_core::{Health, WindowState};
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER, Fault, browser};
use reqwest::StatusCode;

#[tokio::test]
async fn the_emailed_link_reauthorizes_in_one_consent_and_back_fills_the_outage() {
    let h = Harness::start().await;
    h.revoke_for_days(3).await;
    let link = h.link_from_failure_message().await;
    assert!(link.starts_with(&format!("{}/reauth/", h.base)), "{link}");
    let generation = h.credential_generation().await;

    // The page says what is wrong and what the fix resumes.
    let page = h.get(&link, None).await;
    assert_eq!(page.0, StatusCode::OK);
    assert!(
        page.1.contains("Reauthorize with Sandbox Ads"),
        "{}",
        page.1
    );
    assert!(
        page.1.contains("acme-ads") && page.1.contains("Ana Example"),
        "{}",
        page.1
    );
    assert!(
        page.1.contains("back-fills 3 missing window(s)"),
        "{}",
        page.1
    );

    // A form post without the CSRF token is refused.
    let (status, body, _) = h.post_form(&format!("{link}/start"), &[], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("CSRF"), "{body}");

    let (consent, flow_cookie) = h.start_consent(&link, &page.1).await;
    let callback = browser::approve(&consent, DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap();
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{}/oauth/callback?", h.base))
    );

    // The callback without the browser's flow cookie is a state mismatch.
    let (status, body) = h.get(callback.as_str(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("state mismatch"), "{body}");
    let (status, _) = h.get(callback.as_str(), Some("gapless_flow=forged")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.credential_generation().await,
        generation,
        "nothing changed"
    );

    let (status, body, headers) = h.get_with_headers(callback.as_str(), &flow_cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let body = h.progress(&headers).await;
    assert!(body.contains("Reauthorized"), "{body}");
    assert!(body.contains(r#"id="backfill-state">complete"#), "{body}");
    assert!(
        body.contains(r#"<strong id="recovered">3</strong>"#),
        "{body}"
    );
    assert!(body.contains(r#"<strong id="lost">0</strong>"#), "{body}");
    let identity = h.w.engine.store().identity(h.w.identity.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
    let ledger = h.w.engine.store().ledger(h.w.pipeline.id).await.unwrap();
    assert!(
        ledger
            .iter()
            .all(|e| matches!(e.state, WindowState::Loaded { .. })),
        "{ledger:#?}"
    );

    // The link worked once; the same consent cannot be replayed.
    let (status, body) = h.get(&link, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(body.contains("already used"), "{body}");
    let (status, body) = h.get(callback.as_str(), Some(&flow_cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("No PKCE verifier is held"), "{body}");
}

#[tokio::test]
async fn an_expired_or_revoked_link_is_refused_and_changes_nothing() {
    let h = Harness::start().await;
    h.revoke_for_days(1).await;
    let link = h.link_from_failure_message().await;
    let generation = h.credential_generation().await;
    h.w.clock.advance(chrono::Duration::days(8));
    let (status, body) = h.get(&link, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(body.contains("expired"), "{body}");
    let (status, _, _) = h
        .post_form(&format!("{link}/start"), &[("csrf", "x")], None)
        .await;
    assert_eq!(status, StatusCode::GONE);

    let fresh = h
        .engine
        .mint_reauth_link(h.w.identity.id, None, &h.engine.caller())
        .await
        .unwrap()
        .url;
    h.engine
        .store()
        .revoke_reauth_links(
            h.w.identity.id,
            gapless_core::Clock::now(&h.w.clock),
            &gapless_core::AuditRecord::new(
                gapless_core::Clock::now(&h.w.clock),
                &h.engine.caller(),
                gapless_core::AuditAction::LinkRevoked,
                "test",
            ),
        )
        .await
        .unwrap();
    let (status, body) = h.get(&fresh, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(body.contains("revoked"), "{body}");
    let (status, body) = h.get(&format!("{}/reauth/not-a-token", h.base), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(h.credential_generation().await, generation);
}

#[tokio::test]
async fn another_upstream_account_or_a_missing_scope_is_refused_and_the_link_still_works() {
    let h = Harness::start().await;
    h.revoke_for_days(1).await;
    let link = h.link_from_failure_message().await;
    let generation = h.credential_generation().await;

    let page = h.get(&link, None).await.1;
    let (consent, cookie) = h.start_consent(&link, &page).await;
    let callback = browser::approve(&consent, "ben@example.com", "hunter2 hunter2")
        .await
        .unwrap();
    let (status, body) = h.get(callback.as_str(), Some(&cookie)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("different account") && body.contains("Ben Example"),
        "{body}"
    );
    assert_eq!(
        h.credential_generation().await,
        generation,
        "nothing changed"
    );

    // The person unticks a permission at the provider.
    let page = h.get(&link, None).await.1;
    let (consent, cookie) = h.start_consent(&link, &page).await;
    let mut narrowed = url::Url::parse(&consent).unwrap();
    let pairs: Vec<(String, String)> = narrowed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "scope" {
                v.split(' ')
                    .filter(|s| *s != "business_management")
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    narrowed.query_pairs_mut().clear().extend_pairs(pairs);
    let callback = browser::approve(narrowed.as_str(), DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap();
    let (status, body) = h.get(callback.as_str(), Some(&cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("business_management"), "{body}");
    assert_eq!(
        h.credential_generation().await,
        generation,
        "nothing changed"
    );

    // The right account, all permissions: the same link still works.
    let page = h.get(&link, None).await.1;
    let (consent, cookie) = h.start_consent(&link, &page).await;
    let callback = browser::approve(&consent, DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap();
    let (status, body, headers) = h.get_with_headers(callback.as_str(), &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert!(h.progress(&headers).await.contains("complete"));
}

#[tokio::test]
async fn a_new_api_key_is_probed_before_it_replaces_the_old_one() {
    let h = Harness::start().await;
    let key = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let identity = h.connect_key_identity("acme-key", &key).await;
    h.w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApiKeys {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let link = h.link_for(identity).await;
    let page = h.get(&link, None).await.1;
    assert!(page.contains("New API key"), "{page}");
    let csrf = csrf_of(&page);
    let generation = h.generation_of(identity).await;

    let (status, body, _) = h
        .post_form(
            &format!("{link}/secret"),
            &[("csrf", &csrf), ("secret", "not-a-key")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("does not work"), "{body}");
    // A wrong key is called wrong, not an access token to renew.
    assert!(
        body.contains("The password or API key was rejected"),
        "{body}"
    );
    assert!(!body.contains("access token"), "{body}");
    assert_eq!(
        h.generation_of(identity).await,
        generation,
        "the old key stays"
    );
    // The OAuth sign-in route is refused for a key identity, not a server error.
    let (status, body, _) = h
        .post_form(&format!("{link}/start"), &[("csrf", &csrf)], None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("renewed with a key or password"), "{body}");

    let fresh = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let (status, body, headers) = h
        .post_form(
            &format!("{link}/secret"),
            &[("csrf", &csrf), ("secret", &fresh)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert!(h.progress(&headers).await.contains("complete"));
    assert_eq!(h.generation_of(identity).await, generation + 1);
    let (status, _) = h.get(&link, None).await;
    assert_eq!(status, StatusCode::GONE, "used once");
}

#[tokio::test]
async fn an_identity_that_allows_any_account_switches_only_after_the_person_confirms() {
    let h = Harness::start().await;
    h.revoke_for_days(1).await;
    h.engine
        .store()
        .set_allow_any_account(h.w.identity.id, true, gapless_core::Clock::now(&h.w.clock))
        .await
        .unwrap();
    let link = h.link_from_failure_message().await;
    let generation = h.credential_generation().await;

    // Without the confirmation, another account is refused, with how to confirm.
    let page = h.get(&link, None).await.1;
    assert!(page.contains(r#"id="other-account""#), "{page}");
    let (consent, cookie) = h.start_consent(&link, &page).await;
    let callback = browser::approve(&consent, "ben@example.com", "hunter2 hunter2")
        .await
        .unwrap();
    let (status, body) = h.get(callback.as_str(), Some(&cookie)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("tick the confirmation"), "{body}");
    assert_eq!(
        h.credential_generation().await,
        generation,
        "nothing changed"
    );

    // With it, the identity switches to Ben's account.
    let page = h.get(&link, None).await.1;
    let (status, body, headers) = h
        .post_form(
            &format!("{link}/start"),
            &[("csrf", &csrf_of(&page)), ("other_account", "yes")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let consent = headers[reqwest::header::LOCATION].to_str().unwrap();
    let cookie = headers[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let callback = browser::approve(consent, "ben@example.com", "hunter2 hunter2")
        .await
        .unwrap();
    let (status, body, _) = h.get_with_headers(callback.as_str(), &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let identity = h.engine.store().identity(h.w.identity.id).await.unwrap();
    assert_eq!(
        identity.upstream_account_name.as_deref(),
        Some("Ben Example")
    );
    assert_eq!(identity.health, Health::Healthy);
}

#[tokio::test]
async fn a_double_submitted_form_replaces_the_key_once() {
    let h = Harness::start().await;
    let key = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let identity = h.connect_key_identity("acme-key", &key).await;
    let link = h.link_for(identity).await;
    let csrf = csrf_of(&h.get(&link, None).await.1);
    let generation = h.generation_of(identity).await;
    let fresh = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let url = format!("{link}/secret");
    let fields = [("csrf", csrf.as_str()), ("secret", fresh.as_str())];
    let (a, b) = tokio::join!(
        h.post_form(&url, &fields, None),
        h.post_form(&url, &fields, None)
    );
    let mut statuses = vec![a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::SEE_OTHER, StatusCode::GONE],
        "{} {}",
        a.1,
        b.1
    );
    assert_eq!(h.generation_of(identity).await, generation + 1, "one swap");
}

#[tokio::test]
async fn a_second_link_for_a_resolved_incident_is_refused_even_mid_consent() {
    let h = Harness::start().await;
    h.revoke_for_days(1).await;
    let first = h.link_from_failure_message().await;
    // An operator copies a second link for the same incident.
    let second = h
        .engine
        .reauth_link_for(h.w.identity.id, &h.engine.caller())
        .await
        .unwrap()
        .url;
    assert_ne!(first, second);
    // B starts a consent with the second link; meanwhile A completes with the first.
    let page_b = h.get(&second, None).await.1;
    let (consent_b, cookie_b) = h.start_consent(&second, &page_b).await;
    let page_a = h.get(&first, None).await.1;
    let (consent_a, cookie_a) = h.start_consent(&first, &page_a).await;
    let callback_a = browser::approve(&consent_a, DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap();
    let (status, _, headers) = h.get_with_headers(callback_a.as_str(), &cookie_a).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    h.progress(&headers).await;
    let generation = h.credential_generation().await;
    let callback_b = browser::approve(&consent_b, DEMO_USER, DEMO_PASSWORD)
        .await
        .unwrap();
    let (status, body) = h.get(callback_b.as_str(), Some(&cookie_b)).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body.contains("Already resolved"), "{body}");
    assert_eq!(
        h.credential_generation().await,
        generation,
        "A's credential stays"
    );
}

#[tokio::test]
async fn a_reauthorize_link_is_never_readable_in_the_state_database_and_resending_revokes_the_old_one()
 {
    let h = Harness::start().await;
    h.revoke_for_days(1).await;
    let first = h.link_from_failure_message().await;
    let token = first.rsplit('/').next().unwrap().to_string();
    assert!(token.len() > 30, "{first}");
    // Read the state database as an attacker with the file would: the link's token is in
    // no table (message bodies are sealed, links stored as hashes).
    let data_dir = h.engine.config().data_dir.clone();
    for name in ["gapless.sqlite", "gapless.sqlite-wal"] {
        let Ok(bytes) = std::fs::read(data_dir.join(name)) else {
            continue;
        };
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the link's token is readable in {name}"
        );
        assert!(
            !bytes.windows(8).any(|w| w == b"/reauth/"),
            "a reauthorize URL is readable in {name}"
        );
    }
    // Sent again: a fresh link, and the one sent before no longer works.
    h.engine
        .resend_reauth_message(h.w.identity.id, &h.engine.caller())
        .await
        .unwrap();
    let (status, body) = h.get(&first, None).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let newest = h
        .links_in_failure_messages()
        .await
        .into_iter()
        .find(|l| *l != first)
        .unwrap();
    let (status, body) = h.get(&newest, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_link_locks_after_five_wrong_keys_before_the_provider_locks_the_account() {
    let h = Harness::start().await;
    let key = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let identity = h.connect_key_identity("acme-key", &key).await;
    let link = h.link_for(identity).await;
    let page = h.get(&link, None).await.1;
    let csrf = csrf_of(&page);
    let calls = h.w.sandbox.sandbox().stats().api_requests;
    let mut last = (StatusCode::OK, String::new());
    for attempt in 1..=7 {
        let (status, body, _) = h
            .post_form(
                &format!("{link}/secret"),
                &[("csrf", &csrf), ("secret", &format!("wrong-{attempt}"))],
                None,
            )
            .await;
        last = (status, body);
    }
    let (status, body) = last;
    assert_eq!(status, StatusCode::GONE, "{body}");
    // Five reached the provider; the sixth and seventh were refused by gapless.
    assert_eq!(h.w.sandbox.sandbox().stats().api_requests - calls, 5);
    // The link says why it no longer works.
    let (status, body) = h.get(&link, None).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body.contains("This link is locked"), "{body}");
    // A right key needs a new link.
    let fresh = h.w.sandbox.sandbox().issue_api_key(DEMO_USER).unwrap();
    let (status, _, _) = h
        .post_form(
            &format!("{link}/secret"),
            &[("csrf", &csrf), ("secret", &fresh)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn a_secret_posted_to_a_service_identitys_link_is_refused_not_saved_as_an_api_key() {
    let h = Harness::start().await;
    let identity = h
        .engine
        .connect_service_identity(
            (
                gapless_providers::sandbox::SERVICE_NAME,
                &Default::default(),
            ),
            "reporting",
            vec![DEMO_USER.into()],
            &h.engine.caller(),
        )
        .await
        .unwrap()
        .id;
    let link = h.link_for(identity).await;
    // The page offers nothing to type in…
    let page = h.get(&link, None).await.1;
    assert!(page.contains("Nothing is to be entered here"), "{page}");
    assert!(!page.contains(r#"name="secret""#), "{page}");
    // …and a secret posted anyway (with the link's CSRF token) is refused.
    let links = h.engine.store().reauth_links(identity).await.unwrap();
    let csrf = gapless_server::Signer::new([7; 32]).csrf(&links[0].id);
    let generation = h.generation_of(identity).await;
    let (status, body, _) = h
        .post_form(
            &format!("{link}/secret"),
            &[("csrf", &csrf), ("secret", "typed-into-the-wrong-form")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("not renewed by hand"), "{body}");
    assert_eq!(h.generation_of(identity).await, generation, "nothing saved");
}
