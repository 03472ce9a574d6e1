//! Outages in virtual time against the sandbox, checked window by window against the
//! sandbox's truth.

#![allow(clippy::unwrap_used)]

use gapless_core::{FailureCause, Health, ReauthReason, WindowState};
use gapless_demo::demo::{self, DemoOptions, DemoWorld};
use gapless_engine::Event;
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER, Fault};

#[tokio::test]
async fn demo_scenario_recovers_every_window_and_matches_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let summary = demo::run(
        DemoOptions {
            dir: dir.path().join("demo"),
            vault: None,
            days: 30,
            revoke_day: 10,
            reauth_day: 13,
        },
        |_| {},
    )
    .await
    .unwrap();

    assert_eq!(summary.windows, 30);
    for check in &summary.checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
        assert!(check.rows_loaded > 0, "{check:?}");
    }
    assert!(summary.ok());
    assert_eq!(summary.windows_missing, 0);
    assert_eq!(summary.rows_loaded, summary.rows_truth);
    assert_eq!(summary.incidents_opened, 1);
    assert!(
        summary
            .incident_cause
            .as_deref()
            .unwrap()
            .starts_with("reauth_required/revoked")
    );
    assert_eq!(summary.windows_back_filled, 3);
    assert_eq!(summary.refresh_token_reuse_seen_by_provider, 0);
    assert_eq!(summary.expired_token_calls_seen_by_provider, 0);

    // Windows 10–12 were recorded missing with their cause before being back-filled.
    let missing: Vec<_> = summary
        .timeline
        .iter()
        .filter_map(|e| match e {
            Event::WindowMissing { window, reason, .. } => Some((window.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    let days: Vec<_> = missing.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(days, vec!["2026-01-10", "2026-01-11", "2026-01-12"]);
    assert!(missing.iter().all(|(_, r)| r.contains("revoked")));

    // Three emails: the failure, the reminder one day later, the recovery; all valid MIME.
    assert_eq!(summary.emails.len(), 3);
    let failure = std::fs::read(&summary.emails[0]).unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&failure)
        .unwrap();
    let subject = parsed.subject().unwrap();
    assert!(subject.contains("Authorization Failure"), "{subject}");
    let text = parsed.body_text(0).unwrap();
    assert!(text.contains("invalid_grant/458"), "{text}");
    assert!(text.contains("acme-daily"), "{text}");
    assert!(text.contains("Act by"), "{text}");
    assert!(
        parsed
            .body_html(0)
            .unwrap()
            .contains("Reauthorize acme-ads")
    );
    let reminder = std::fs::read(&summary.emails[1]).unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&reminder)
        .unwrap();
    assert!(
        parsed
            .subject()
            .unwrap()
            .starts_with("Reminder 1: Authorization Failure")
    );
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("2026-01-10 to 2026-01-11")
    );
    let recovery = std::fs::read(&summary.emails[2]).unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&recovery)
        .unwrap();
    assert!(
        parsed
            .subject()
            .unwrap()
            .contains("3 window(s) back-filled, 0 lost")
    );
}

async fn world() -> (tempfile::TempDir, DemoWorld) {
    let dir = tempfile::tempdir().unwrap();
    let (world, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    (dir, world)
}

async fn window_state(world: &DemoWorld, day: u32) -> WindowState {
    let ledger = world
        .engine
        .store()
        .ledger(world.pipeline.id)
        .await
        .unwrap();
    ledger
        .into_iter()
        .find(|e| e.window.start == world.day(day))
        .map(|e| e.state)
        .unwrap()
}

#[tokio::test]
async fn every_outage_cause_opens_one_incident_with_the_right_cause() {
    let cases: Vec<(Fault, FailureCause)> = vec![
        (
            Fault::ChangePassword {
                user: DEMO_USER.into(),
                new_password: "a new password".into(),
            },
            FailureCause::ReauthRequired {
                reason: ReauthReason::PasswordChanged,
            },
        ),
        (
            Fault::LockAccount {
                user: DEMO_USER.into(),
            },
            FailureCause::AccountBlocked,
        ),
        (
            Fault::RemoveFromAdAccount {
                user: DEMO_USER.into(),
                account: gapless_sandbox::DEMO_AD_ACCOUNT.into(),
            },
            FailureCause::PermissionLost,
        ),
        (
            Fault::DropScope {
                user: DEMO_USER.into(),
                scope: "ads_read".into(),
            },
            FailureCause::PermissionLost,
        ),
    ];
    for (fault, cause) in cases {
        let (_dir, w) = world().await;
        let label = format!("{fault:?}");
        w.daily_run(1).await.unwrap();
        w.sandbox.sandbox().apply_fault(fault).unwrap();
        for day in 2..=5 {
            w.daily_run(day).await.unwrap();
        }
        let incidents = w.engine.store().incidents(None).await.unwrap();
        assert_eq!(incidents.len(), 1, "{label}: one incident per outage");
        assert_eq!(incidents[0].failure.cause, cause, "{label}");
        let identity = w.engine.store().identity(w.identity.id).await.unwrap();
        assert!(
            matches!(identity.health, Health::NeedsReauth { .. }),
            "{label}"
        );
        let outbox = w.engine.store().notifications(false).await.unwrap();
        let count = |kind| outbox.iter().filter(|n| n.kind == kind).count();
        assert_eq!(
            count(gapless_core::NotificationKind::Reminder),
            2,
            "{label}: 1 and 3 days"
        );
        assert_eq!(
            count(gapless_core::NotificationKind::AuthorizationFailure),
            1,
            "{label}: one email per outage, not per run"
        );
        for day in 2..=5 {
            assert!(
                matches!(window_state(&w, day).await, WindowState::Missing { .. }),
                "{label}: day {day}"
            );
        }
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_never_open_an_incident() {
    let (_dir, w) = world().await;
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::ServerError { count: 3 })
        .unwrap();
    let log = w.daily_run(2).await.unwrap();
    assert!(
        log.events
            .iter()
            .any(|e| matches!(e, Event::IdentityDegraded { .. }))
    );
    assert!(matches!(
        window_state(&w, 2).await,
        WindowState::Missing { .. }
    ));
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RateLimit {
            count: 2,
            retry_after_secs: 30,
            code: 17,
        })
        .unwrap();
    for day in 3..=4 {
        w.daily_run(day).await.unwrap();
    }
    for day in 5..=7 {
        w.daily_run(day).await.unwrap();
    }
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
    assert!(
        w.engine
            .store()
            .notifications(false)
            .await
            .unwrap()
            .is_empty()
    );
    // Once the faults ran out, everything was caught up.
    let checks = w.check_against_truth().await.unwrap();
    assert!(checks.iter().all(|c| c.state == "loaded"), "{checks:?}");
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
}

#[tokio::test]
async fn a_malformed_provider_answer_is_transient_and_recorded() {
    let (_dir, w) = world().await;
    w.sandbox
        .sandbox()
        .apply_fault(Fault::MalformedResponse { count: 1 })
        .unwrap();
    let log = w.daily_run(1).await.unwrap();
    let degraded = log
        .events
        .iter()
        .find_map(|e| match e {
            Event::IdentityDegraded { failure, .. } => Some(failure.clone()),
            _ => None,
        })
        .unwrap();
    assert!(degraded.contains("malformed_response"), "{degraded}");
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
    w.daily_run(2).await.unwrap();
    assert!(matches!(
        window_state(&w, 1).await,
        WindowState::Loaded { .. }
    ));
}

#[tokio::test]
async fn reauthorizing_with_another_account_is_refused_and_changes_nothing() {
    let (_dir, w) = world().await;
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.daily_run(2).await.unwrap();
    let (before, generation) = w
        .engine
        .store()
        .sealed_credential(w.identity.id)
        .await
        .unwrap();
    let err = w
        .reauthorize_as("ben@example.com", "hunter2 hunter2")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to upstream account"), "{err}");
    let (after, generation_after) = w
        .engine
        .store()
        .sealed_credential(w.identity.id)
        .await
        .unwrap();
    assert_eq!((before, generation), (after, generation_after));
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert!(matches!(identity.health, Health::NeedsReauth { .. }));
    // The right account works.
    w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
}

// A credential that cannot be decrypted: `recovery.rs`,
// `a_credential_that_cannot_be_decrypted_is_one_incident_not_a_silent_retry`.

#[tokio::test]
async fn an_unknown_provider_is_a_clear_error() {
    let (_dir, w) = world().await;
    let err = w.engine.begin_authorization("facebook_ads").unwrap_err();
    assert!(err.to_string().contains("facebook_ads"), "{err}");
}
