//! Regression tests for what broke against real servers: incidents that flapped with a
//! permission the who-am-I probe cannot see, windows lost at the retention edge, and a
//! recovery mail lost to a crash. All in virtual time against the sandbox.

#![allow(clippy::unwrap_used)]

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use chrono::Duration;
use gapless_core::{
    Clock, CountedFrom, IncidentState, Notification, NotificationKind, Retention, WindowState,
};
use gapless_demo::{DemoError, demo::DemoWorld};
use gapless_engine::{CrashPoint, EngineError};
use gapless_sandbox::{DEMO_AD_ACCOUNT, DEMO_PASSWORD, DEMO_USER, Fault, SandboxConfig};

async fn world(
    config: SandboxConfig,
    declared: Option<Retention>,
) -> (tempfile::TempDir, DemoWorld) {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = DemoWorld::start_sqlite(&dir.path().join("state"), config, declared)
        .await
        .unwrap();
    (dir, w)
}

/// The messages of `kind`, their bodies opened (they are sealed at rest).
async fn messages(w: &DemoWorld, kind: NotificationKind) -> Vec<Notification> {
    w.engine
        .store()
        .notifications(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == kind)
        .map(|n| w.engine.open_message(&n).unwrap())
        .collect()
}

async fn incidents_of(w: &DemoWorld) -> Vec<gapless_core::Incident> {
    w.engine
        .store()
        .incidents(Some(w.identity.id))
        .await
        .unwrap()
}

/// Ticks every `step` for `span` from the clock's now.
async fn tick_for(w: &DemoWorld, span: Duration, step: Duration) {
    let end = w.clock.now() + span;
    while w.clock.now() < end {
        w.clock.set(w.clock.now() + step);
        w.engine.tick().await.unwrap();
    }
}

fn deny() -> Fault {
    Fault::DenyReports {
        user: DEMO_USER.into(),
        account: DEMO_AD_ACCOUNT.into(),
    }
}

fn allow() -> Fault {
    Fault::AllowReports {
        user: DEMO_USER.into(),
        account: DEMO_AD_ACCOUNT.into(),
    }
}

#[tokio::test]
async fn a_lost_permission_the_probe_cannot_see_is_one_incident_and_one_mail_until_it_is_back() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    // Reports answer 403 while /me (the probe) still works and lists the ad account.
    w.sandbox.sandbox().apply_fault(deny()).unwrap();
    w.daily_run(2).await.unwrap();
    // Three hours of ticks every five minutes: three probes pass, the report still fails.
    tick_for(&w, Duration::hours(3), Duration::minutes(5)).await;
    let incidents = incidents_of(&w).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].state(), IncidentState::Open);
    assert_eq!(incidents[0].reopened, 0);
    let origin = incidents[0].origin.clone().unwrap();
    assert_eq!(origin.resource, DEMO_AD_ACCOUNT);
    assert_eq!(origin.stream, "insights");
    assert_eq!(
        messages(&w, NotificationKind::AuthorizationFailure)
            .await
            .len(),
        1
    );
    assert!(messages(&w, NotificationKind::Recovery).await.is_empty());
    let failure = &messages(&w, NotificationKind::AuthorizationFailure).await[0];
    assert!(
        failure.subject.contains("lost a permission"),
        "{}",
        failure.subject
    );
    assert!(
        failure
            .body_text
            .contains("resource act_1001, stream insights"),
        "{}",
        failure.body_text
    );

    // The permission comes back: the next probe checks the report request itself, the
    // incident recovers, the missed windows are back-filled, one recovery mail.
    w.sandbox.sandbox().apply_fault(allow()).unwrap();
    tick_for(&w, Duration::hours(2), Duration::minutes(5)).await;
    let incident = w.engine.store().incident(incidents[0].id).await.unwrap();
    assert_eq!(incident.state(), IncidentState::Closed);
    assert_eq!(messages(&w, NotificationKind::Recovery).await.len(), 1);
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}

#[tokio::test]
async fn an_identity_failing_again_soon_after_recovering_continues_its_incident_with_one_mail() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    w.sandbox.sandbox().apply_fault(deny()).unwrap();
    w.daily_run(2).await.unwrap();
    w.sandbox.sandbox().apply_fault(allow()).unwrap();
    tick_for(&w, Duration::hours(2), Duration::minutes(10)).await;
    assert_eq!(messages(&w, NotificationKind::Recovery).await.len(), 1);

    // Flapping: it fails again at the next run (when the next day closes, within a day of
    // the recovery), and again after the next recovery.
    for round in 1..=2_u32 {
        w.sandbox.sandbox().apply_fault(deny()).unwrap();
        tick_until_next_day(&w).await;
        let incidents = incidents_of(&w).await;
        assert_eq!(incidents.len(), 1, "round {round}: one incident, continued");
        assert_eq!(incidents[0].state(), IncidentState::Open);
        assert_eq!(incidents[0].reopened, round);
        let failures = messages(&w, NotificationKind::AuthorizationFailure).await;
        assert_eq!(failures.len(), 1 + round as usize, "round {round}");
        let again = failures
            .iter()
            .find(|n| n.dedupe_key.contains(&format!("failing_again:{round}")))
            .unwrap();
        assert!(
            again.subject.starts_with("Failing again"),
            "{}",
            again.subject
        );
        assert_eq!(again.incident, Some(incidents[0].id), "the same thread");
        w.sandbox.sandbox().apply_fault(allow()).unwrap();
        tick_for(&w, Duration::hours(2), Duration::minutes(10)).await;
        assert_eq!(
            messages(&w, NotificationKind::Recovery).await.len(),
            1 + round as usize,
            "round {round}: each recovery is reported"
        );
    }
    // A failure long after the close is a new incident.
    w.clock.set(w.clock.now() + Duration::days(3));
    w.sandbox.sandbox().apply_fault(deny()).unwrap();
    tick_for(&w, Duration::hours(1), Duration::minutes(10)).await;
    assert_eq!(
        w.engine
            .store()
            .incidents(Some(w.identity.id))
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_provider_refusing_by_start_loses_exactly_the_windows_past_retention_and_names_them_once()
{
    let config = SandboxConfig {
        lookback_days: 3,
        lookback_from_start: true,
        ..SandboxConfig::default()
    };
    let (_dir, w) = world(config, None).await;
    w.daily_run(1).await.unwrap();
    w.daily_run(2).await.unwrap();
    // An outage of five windows (days 3 to 7).
    w.revoke_and_run(3..=7).await.unwrap();
    // Reauthorized at day 8's run: with 3 days counted from a window's start, days 3 to 6
    // are past retention, day 7 is still served.
    w.clock
        .set(w.day(8) + Duration::days(1) + Duration::hours(1));
    w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
    w.engine.tick().await.unwrap();

    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let state_of = |day: u32| {
        ledger
            .iter()
            .find(|e| e.window.start == w.day(day))
            .map(|e| e.state.name())
            .unwrap()
    };
    for day in [1, 2, 7, 8] {
        assert_eq!(state_of(day), "loaded", "day {day}");
    }
    for day in 3..=6 {
        assert_eq!(state_of(day), "lost", "day {day}");
    }
    // What was back-filled equals the provider's truth (days 1 and 2 were restated after
    // their last pull and are past retention now: no settle re-pull could reach them).
    for check in w.check_against_truth().await.unwrap() {
        if check.window == "2026-01-07" || check.window == "2026-01-08" {
            assert!(check.matches_truth, "{check:?}");
        }
    }
    // The provider was never asked for a window it refuses.
    assert_eq!(w.sandbox.sandbox().stats().refused_past_retention, 0);
    // One message names the lost windows: the recovery notice (no separate "lost" mail
    // while the incident is open).
    let recovery = messages(&w, NotificationKind::Recovery).await;
    assert_eq!(recovery.len(), 1);
    for day in ["2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"] {
        assert!(
            recovery[0].body_text.contains(day),
            "{}",
            recovery[0].body_text
        );
    }
    assert!(
        recovery[0]
            .subject
            .contains("1 window(s) back-filled, 4 lost"),
        "{}",
        recovery[0].subject
    );
    assert!(messages(&w, NotificationKind::WindowsLost).await.is_empty());
}

#[tokio::test]
async fn a_window_refused_as_past_retention_is_lost_alone_and_the_run_goes_on() {
    // The connector says "3 days from a window's end"; the provider refuses by start.
    let config = SandboxConfig {
        lookback_days: 3,
        lookback_from_start: true,
        ..SandboxConfig::default()
    };
    let declared = Retention::new(Duration::days(3), CountedFrom::End, Duration::zero()).unwrap();
    let (_dir, w) = world(config, Some(declared)).await;
    w.daily_run(1).await.unwrap();
    // The scheduler was down for five days, the identity healthy all along.
    w.daily_run(6).await.unwrap();
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let state_of = |day: u32| {
        ledger
            .iter()
            .find(|e| e.window.start == w.day(day))
            .map(|e| e.state.clone())
            .unwrap()
    };
    // Days 2 and 3 passed even the declared retention; day 4 was refused by the provider
    // (by its start) and is lost with the provider's words; days 5 and 6 loaded.
    for day in [2, 3, 4] {
        assert_eq!(state_of(day).name(), "lost", "day {day}");
    }
    match state_of(4) {
        WindowState::Lost {
            reason: Some(reason),
            ..
        } => assert!(
            reason.describe().contains("cannot be beyond 3 days"),
            "{reason:?}"
        ),
        other => panic!("day 4: {other:?}"),
    }
    for day in [1, 5, 6] {
        assert_eq!(state_of(day).name(), "loaded", "day {day}");
    }
    assert_eq!(w.sandbox.sandbox().stats().refused_past_retention, 2);
    // One message names every window lost in the run, with the provider's words.
    let lost = messages(&w, NotificationKind::WindowsLost).await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    for day in ["2026-01-02", "2026-01-03", "2026-01-04"] {
        assert!(lost[0].body_text.contains(day), "{}", lost[0].body_text);
    }
    assert!(
        lost[0].body_text.contains("cannot be beyond 3 days"),
        "{}",
        lost[0].body_text
    );
    // The identity stayed healthy: no incident, nothing degraded.
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health.name(), "healthy");
    assert!(
        w.engine
            .store()
            .incidents(Some(w.identity.id))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Ticks every ten minutes until half an hour after the next day's window closed (when an
/// idle pipeline next runs).
async fn tick_until_next_day(w: &DemoWorld) {
    let now = w.clock.now();
    let next_day = now
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 30, 0)
        .unwrap();
    tick_for(w, next_day.and_utc() - now, Duration::minutes(10)).await;
}

/// Crash at the `n`-th time `point` is reached (counting from 1), once.
fn crash_at(point: CrashPoint, n: u32) -> gapless_engine::Failpoint {
    let seen = Arc::new(AtomicU32::new(0));
    Arc::new(move |at| at == point && seen.fetch_add(1, Ordering::SeqCst) + 1 == n)
}

#[tokio::test]
async fn a_crash_between_the_swap_and_the_recovery_notice_still_sends_exactly_one_recovery_mail() {
    let points = [
        (CrashPoint::AfterRecoveryBegan, 1),
        (CrashPoint::AfterWindowLoaded, 1),
        (CrashPoint::AfterWindowLoaded, 2),
        (CrashPoint::AfterWindowLoaded, 3),
        (CrashPoint::BeforeRecoveryNotice, 1),
    ];
    for (point, n) in points {
        let label = format!("{point:?} #{n}");
        let (_dir, mut w) = world(SandboxConfig::default(), None).await;
        w.daily_run(1).await.unwrap();
        w.revoke_and_run(2..=4).await.unwrap();
        w.clock.set(w.day(5) + Duration::hours(2));
        w.engine.set_failpoint(crash_at(point, n));
        let crashed = w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await;
        assert!(
            matches!(crashed, Err(DemoError::Engine(EngineError::Crashed(p))) if p == point),
            "{label}: {crashed:?}"
        );
        // Until the restart, the missing windows no longer blame the identity.
        let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
        for entry in &ledger {
            if let WindowState::Missing { reason, .. } = &entry.state {
                assert!(
                    !matches!(reason, gapless_core::MissingReason::IdentityBroken { .. }),
                    "{label}: {reason:?}"
                );
            }
        }
        // Restart: a new engine on the same state finishes the recovery on its first tick
        // once the crashed instance's claims ran out.
        let restarted = w.new_engine().await.unwrap();
        w.clock
            .set(w.clock.now() + restarted.config().claim_ttl + Duration::seconds(1));
        restarted.tick().await.unwrap();
        restarted.tick().await.unwrap();
        let recovery = messages(&w, NotificationKind::Recovery).await;
        assert_eq!(recovery.len(), 1, "{label}");
        assert!(
            recovery[0]
                .subject
                .contains("3 window(s) back-filled, 0 lost"),
            "{label}: {}",
            recovery[0].subject
        );
        let incidents = incidents_of(&w).await;
        assert_eq!(incidents.len(), 1, "{label}");
        assert_eq!(incidents[0].state(), IncidentState::Closed, "{label}");
        for check in w.check_against_truth().await.unwrap() {
            assert_eq!(check.state, "loaded", "{label}: {check:?}");
            assert!(check.matches_truth, "{label}: {check:?}");
        }
    }
}

/// Write `identity`'s health as text that is not JSON, straight into the SQLite state
/// database in `state` (as a bad migration or a hand edit would); the open pool.
async fn make_health_unreadable(
    state: &std::path::Path,
    identity: gapless_core::IdentityId,
) -> sqlx::SqlitePool {
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        state.join(gapless_store::SQLITE_FILE).display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE identities SET health = '{not json' WHERE id = $1")
        .bind(identity.to_string())
        .execute(&db)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn an_unreadable_identity_row_is_reported_and_every_other_duty_of_the_tick_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_sqlite(&state, SandboxConfig::default(), None)
        .await
        .unwrap();
    let other = w.connect("other").await.unwrap();
    // Someone (a bad migration, a hand edit) leaves one identity's health unreadable.
    let db = make_health_unreadable(&state, other.id).await;
    db.close().await;
    // The pipeline of the readable identity breaks and its mail goes out on this tick.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let log = w.daily_run(1).await.unwrap();
    assert!(
        log.events.iter().any(|e| matches!(e,
            gapless_engine::Event::IdentityCheckFailed { identity, .. } if *identity == other.id.to_string())),
        "the unreadable row is reported: {log:?}"
    );
    assert!(
        log.events
            .iter()
            .any(|e| matches!(e, gapless_engine::Event::IncidentOpened { .. })),
        "{log:?}"
    );
    let failures = messages(&w, NotificationKind::AuthorizationFailure).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].delivery.state,
        gapless_core::DeliveryState::Delivered,
        "the outbox was delivered on the same tick"
    );
}

#[tokio::test]
async fn an_incident_whose_reminder_cannot_be_prepared_is_reported_and_the_others_are_reminded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_sqlite(&state, SandboxConfig::default(), None)
        .await
        .unwrap();
    let other = w.connect("other").await.unwrap();
    w.add_pipeline("other-daily", other.id).await.unwrap();
    w.daily_run(1).await.unwrap();
    // Both identities lose their grant: two incidents.
    let log = w.revoke_and_run(2..=2).await.unwrap();
    let opened = log
        .events
        .iter()
        .filter(|e| matches!(e, gapless_engine::Event::IncidentOpened { .. }))
        .count();
    assert_eq!(opened, 2, "{log:?}");
    // Then the other identity's row becomes unreadable, and its incident is the first the
    // reminder sweep looks at.
    let db = make_health_unreadable(&state, other.id).await;
    sqlx::query(
        "UPDATE incidents SET next_reminder_at = '2000-01-01T00:00:00.000000Z' WHERE identity_id = $1",
    )
    .bind(other.id.to_string())
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    // A day later the first reminder is due for both.
    let log = w.daily_run(3).await.unwrap();
    assert!(
        log.events.iter().any(|e| matches!(e,
            gapless_engine::Event::IdentityCheckFailed { identity, .. } if *identity == other.id.to_string())),
        "the incident that cannot be reminded is reported: {log:?}"
    );
    assert!(
        log.events.iter().any(|e| matches!(e,
            gapless_engine::Event::ReminderQueued { identity, number: 1, .. } if *identity == w.identity.label)),
        "the other incident is reminded: {log:?}"
    );
}

#[tokio::test]
async fn no_probe_goes_to_an_account_before_its_retry_after_has_passed() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    // The provider throttles the next call and asks for two hours.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RateLimit {
            count: 1,
            retry_after_secs: 7_200,
            code: 17,
        })
        .unwrap();
    w.daily_run(2).await.unwrap();
    let throttled_at = w.clock.now();
    let before = w.sandbox.sandbox().stats();
    // The hourly probe falls due meanwhile; nothing may be sent.
    tick_for(&w, Duration::minutes(110), Duration::minutes(10)).await;
    let during = w.sandbox.sandbox().stats();
    assert_eq!(during.probe_requests, before.probe_requests, "no probe");
    assert_eq!(during.report_requests, before.report_requests, "no report");
    let mut log = gapless_engine::EventLog::default();
    let outcome = w
        .engine
        .probe_identity(w.identity.id, &mut log)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, gapless_engine::ProbeOutcome::Failed(why) if why.contains("waits until")),
        "{outcome:?}"
    );
    // After the hint, work resumes and the missed window is loaded.
    w.clock
        .set(throttled_at + Duration::hours(2) + Duration::minutes(1));
    w.engine.tick().await.unwrap();
    assert!(w.sandbox.sandbox().stats().report_requests > during.report_requests);
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
    }
}

#[tokio::test]
async fn gap_reasons_name_the_identity_by_its_label_and_times_to_the_second() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    // A clock with sub-second precision, as a real one has.
    w.clock.set(
        w.day(2) + Duration::days(1) + Duration::hours(1) + Duration::nanoseconds(123_456_789),
    );
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.engine.tick().await.unwrap();
    let gaps = w.engine.gaps(&w.pipeline).await.unwrap();
    let reason = gaps
        .iter()
        .find_map(|g| g.reason.clone())
        .expect("a missing window with its reason");
    let words = w.engine.reason_words(&reason).await;
    assert!(
        words.starts_with("acme-ads needs reauthorization"),
        "{words}"
    );
    assert!(!words.contains(&w.identity.id.to_string()), "{words}");
    assert!(words.contains("2026-01-03 01:00:00 UTC"), "{words}");
    assert!(!words.contains(".123"), "{words}");
}

/// The provider expires the access token early (190/463): every path that calls it
/// refreshes once and goes on; none opens an Authorization Failure.
#[tokio::test]
async fn an_access_token_expired_early_is_refreshed_on_every_path_never_an_incident() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    let expire = || {
        w.sandbox
            .sandbox()
            .apply_fault(Fault::ExpireTokensNow {
                user: DEMO_USER.into(),
            })
            .unwrap();
    };
    // The probe (and `gapless identity check`, which is the same call).
    expire();
    let outcome = w
        .engine
        .probe_identity(w.identity.id, &mut gapless_engine::EventLog::default())
        .await
        .unwrap();
    assert!(
        matches!(outcome, gapless_engine::ProbeOutcome::Passed(_)),
        "probe: {outcome:?}"
    );
    // A scheduled run.
    expire();
    w.daily_run(2).await.unwrap();
    // A back-fill.
    expire();
    let plan = w
        .engine
        .plan_backfill(&w.pipeline, w.day(1), w.day(3))
        .await
        .unwrap();
    let outcome = w
        .engine
        .backfill(
            &w.pipeline,
            &plan,
            &mut gapless_engine::EventLog::default(),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.loaded, 2, "{outcome:?}");
    // The recovery probe of a blocked identity (its stored token expired meanwhile).
    w.sandbox
        .sandbox()
        .apply_fault(Fault::LockAccount {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.daily_run(3).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::UnlockAccount {
            user: DEMO_USER.into(),
        })
        .unwrap();
    expire();
    tick_for(&w, Duration::hours(2), Duration::minutes(10)).await;
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health.name(), "healthy", "{}", identity.health);
    let incidents = incidents_of(&w).await;
    assert_eq!(incidents.len(), 1, "only the lock opened one");
    assert_eq!(incidents[0].state(), IncidentState::Closed);
    assert_eq!(w.sandbox.sandbox().stats().refresh_reuse, 0);
}

#[tokio::test]
async fn a_wrong_key_for_data_sealed_before_fingerprints_existed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_sqlite(&state, SandboxConfig::default(), None)
        .await
        .unwrap();
    // An installation from before key fingerprints: credentials sealed, nothing recorded.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        state.join(gapless_store::SQLITE_FILE).display()
    ))
    .await
    .unwrap();
    sqlx::query("DELETE FROM key_checks")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let wrong = gapless_vault::Vault::new(gapless_vault::Keyring::single(
        gapless_vault::KeyVersion(1),
        [7; 32],
    ));
    let store = gapless_store::Store::open(&gapless_store::StoreLocation::Sqlite {
        data_dir: state.clone(),
    })
    .await
    .unwrap();
    let engine = gapless_engine::Engine::new(
        store,
        wrong,
        std::sync::Arc::new(w.clock.clone()),
        gapless_engine::EngineConfig::new(state.clone()),
    )
    .unwrap();
    let refused = engine.verify_keys().await.unwrap_err();
    assert!(
        matches!(refused, EngineError::WrongKey { version: 1 }),
        "{refused}"
    );
    // The right key is recognized and its fingerprint recorded.
    w.engine.verify_keys().await.unwrap();
    assert_eq!(w.engine.store().key_fingerprints().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_credential_that_cannot_be_decrypted_is_one_incident_not_a_silent_retry() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_sqlite(&state, SandboxConfig::default(), None)
        .await
        .unwrap();
    w.daily_run(1).await.unwrap();
    // The row's ciphertext is damaged (or sealed under a key this process does not have).
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        state.join(gapless_store::SQLITE_FILE).display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE identities SET credential = $1 WHERE id = $2")
        .bind(vec![0_u8; 64])
        .bind(w.identity.id.to_string())
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    for day in 2..=4 {
        w.daily_run(day).await.unwrap();
    }
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    let gapless_core::Health::NeedsReauth { failure, .. } = &identity.health else {
        panic!("expected needs_reauth, got {}", identity.health);
    };
    assert_eq!(
        failure.cause,
        gapless_core::FailureCause::ReauthRequired {
            reason: gapless_core::ReauthReason::Undecryptable
        }
    );
    assert_eq!(incidents_of(&w).await.len(), 1);
    let failures = messages(&w, NotificationKind::AuthorizationFailure).await;
    assert_eq!(failures.len(), 1, "one message, not one per tick");
    assert!(
        failures[0].body_text.contains("master key"),
        "{}",
        failures[0].body_text
    );
}

#[tokio::test]
async fn the_same_backfill_started_twice_runs_once() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    for day in 1..=4 {
        w.daily_run(day).await.unwrap();
    }
    let plan = w
        .engine
        .plan_backfill(&w.pipeline, w.day(1), w.day(5))
        .await
        .unwrap();
    let requests = w.sandbox.sandbox().stats().report_requests;
    let (mut first_log, mut second_log) = (
        gapless_engine::EventLog::default(),
        gapless_engine::EventLog::default(),
    );
    let (first, second) = tokio::join!(
        w.engine
            .backfill(&w.pipeline, &plan, &mut first_log, |_, _| {}),
        w.engine
            .backfill(&w.pipeline, &plan, &mut second_log, |_, _| {}),
    );
    assert_eq!(first.unwrap().loaded, 4);
    let refused = second.unwrap_err();
    assert!(matches!(refused, EngineError::Busy(_)), "{refused}");
    assert!(refused.to_string().contains("is running"), "{refused}");
    assert!(
        !w.engine.backfill_running(w.pipeline.id),
        "released when done"
    );
    // One request series for the four days, not two.
    let made = w.sandbox.sandbox().stats().report_requests - requests;
    assert!(made <= plan.estimated_requests + 1, "{made}");
}

/// Removed from the ad account a pipeline reads while the who-am-I still answers: the
/// probe, not only the next run, opens one `permission_lost` incident naming the
/// resource; probes meanwhile change nothing; access restored, the probe closes it and
/// the days between are back-filled.
#[tokio::test]
async fn a_resource_removed_while_who_am_i_works_is_found_by_the_probe_and_named() {
    let (_dir, w) = world(SandboxConfig::default(), None).await;
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RemoveFromAdAccount {
            user: DEMO_USER.into(),
            account: DEMO_AD_ACCOUNT.into(),
        })
        .unwrap();
    let probe = || async {
        w.engine
            .probe_identity(w.identity.id, &mut gapless_engine::EventLog::default())
            .await
            .unwrap()
    };
    let outcome = probe().await;
    assert!(
        matches!(&outcome, gapless_engine::ProbeOutcome::Failed(why) if why.contains(DEMO_AD_ACCOUNT)),
        "{outcome:?}"
    );
    let incidents = w.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(
        incidents[0].failure.cause,
        gapless_core::FailureCause::PermissionLost
    );
    assert_eq!(
        incidents[0].origin.as_ref().map(|o| o.resource.as_str()),
        Some(DEMO_AD_ACCOUNT)
    );
    let failures = messages(&w, NotificationKind::AuthorizationFailure).await;
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].body_text.contains(DEMO_AD_ACCOUNT),
        "{}",
        failures[0].body_text
    );
    // Probed again while it lasts: the same incident, no second mail.
    let outcome = probe().await;
    assert!(
        matches!(outcome, gapless_engine::ProbeOutcome::Insufficient { .. }),
        "{outcome:?}"
    );
    w.daily_run(2).await.unwrap();
    assert_eq!(w.engine.store().incidents(None).await.unwrap().len(), 1);
    assert_eq!(
        messages(&w, NotificationKind::AuthorizationFailure)
            .await
            .len(),
        1
    );

    w.sandbox
        .sandbox()
        .apply_fault(Fault::AddToAdAccount {
            user: DEMO_USER.into(),
            account: DEMO_AD_ACCOUNT.into(),
        })
        .unwrap();
    let outcome = probe().await;
    assert!(
        matches!(outcome, gapless_engine::ProbeOutcome::Passed(_)),
        "{outcome:?}"
    );
    let incident = &w.engine.store().incidents(None).await.unwrap()[0];
    assert_ne!(incident.state(), IncidentState::Open, "{incident:?}");
    w.daily_run(3).await.unwrap();
    assert_eq!(messages(&w, NotificationKind::Recovery).await.len(), 1);
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}
