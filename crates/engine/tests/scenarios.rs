//! Ledger scenarios in virtual time, checked window by window against the sandbox's truth.

#![allow(clippy::unwrap_used)]

use chrono::Duration;
use gapless_core::WindowState;
use gapless_demo::demo::DemoWorld;
use gapless_engine::{Event, LoadPurpose};
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER, Fault, SandboxConfig};

async fn world(config: SandboxConfig) -> (tempfile::TempDir, DemoWorld) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_sqlite(&state, config, None).await.unwrap();
    (dir, w)
}

#[tokio::test]
async fn a_seventy_day_outage_on_a_sixty_day_lookback_loses_exactly_the_ten_oldest_windows() {
    let (_dir, w) = world(SandboxConfig {
        lookback_days: 60,
        ..SandboxConfig::default()
    })
    .await;
    w.daily_run(1).await.unwrap();
    w.clock.set(w.day(2) + Duration::hours(12));
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    for day in 2..=71 {
        w.daily_run(day).await.unwrap();
    }
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let missing = ledger
        .iter()
        .filter(|e| matches!(e.state, WindowState::Missing { .. }))
        .count();
    let lost_before = ledger
        .iter()
        .filter(|e| matches!(e.state, WindowState::Lost { .. }))
        .count();
    // Every day of the outage one more window passed the lookback while waiting.
    assert_eq!(missing + lost_before, 70, "windows 2..=71 are not loaded");
    w.clock.advance(Duration::hours(1));
    let log = w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
    let closed = log
        .events
        .iter()
        .find_map(|e| match e {
            Event::IncidentClosed {
                recovered_windows,
                lost_windows,
                ..
            } => Some((*recovered_windows, *lost_windows)),
            _ => None,
        })
        .unwrap();
    assert_eq!(closed, (60, 10), "60 windows recovered, the 10 oldest lost");
    for day in 72..=74 {
        w.daily_run(day).await.unwrap();
    }
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let lost: Vec<_> = ledger
        .iter()
        .filter(|e| matches!(e.state, WindowState::Lost { .. }))
        .map(|e| e.window.start)
        .collect();
    let expected: Vec<_> = (2..=11).map(|d| w.day(d)).collect();
    assert_eq!(lost, expected, "exactly the ten oldest windows are lost");
    for check in w.check_against_truth().await.unwrap() {
        if check.state == "lost" {
            assert_eq!(check.rows_loaded, 0, "{check:?}");
        } else if check.window == "2026-01-01" {
            // Loaded an hour after its day, before the outage; its restated numbers fell out
            // of the lookback during the outage, so it keeps the first pull's figures.
            assert_eq!(check.state, "loaded");
            assert_eq!(check.rows_loaded, check.rows_truth, "{check:?}");
        } else {
            assert_eq!(check.state, "loaded", "{check:?}");
            assert!(check.matches_truth, "{check:?}");
        }
    }
    assert_eq!(w.sandbox.sandbox().stats().refresh_reuse, 0);
}

#[tokio::test]
async fn gapless_down_for_two_days_catches_up_on_start() {
    let (_dir, w) = world(SandboxConfig::default()).await;
    for day in 1..=5 {
        w.daily_run(day).await.unwrap();
    }
    // Days 6 and 7: gapless is down; nothing runs.
    let log = w.daily_run(8).await.unwrap();
    let caught_up: Vec<_> = log
        .events
        .iter()
        .filter_map(|e| match e {
            Event::WindowLoaded {
                window, purpose, ..
            } if *purpose == LoadPurpose::New => Some(window.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(caught_up, vec!["2026-01-06", "2026-01-07", "2026-01-08"]);
    for day in 9..=10 {
        w.daily_run(day).await.unwrap();
    }
    let checks = w.check_against_truth().await.unwrap();
    assert_eq!(checks.len(), 10);
    for check in checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}

/// Daily runs for days 1 to 8; the app is revoked on day 2 and reauthorized on day 4.
async fn revoked_on_day_two_and_reauthorized_on_day_four(w: &DemoWorld) {
    w.daily_run(1).await.unwrap();
    w.clock.set(w.day(2) + Duration::hours(12));
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    for day in 2..=4 {
        w.daily_run(day).await.unwrap();
    }
    w.clock.advance(Duration::hours(8));
    w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
    for day in 5..=8 {
        w.daily_run(day).await.unwrap();
    }
}

#[tokio::test]
async fn a_three_day_revocation_ends_with_nothing_missing_and_no_duplicate_rows() {
    let (_dir, w) = world(SandboxConfig::default()).await;
    revoked_on_day_two_and_reauthorized_on_day_four(&w).await;
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        // Identical rows: nothing missing, nothing loaded twice.
        assert!(check.matches_truth, "{check:?}");
        assert_eq!(check.rows_loaded, check.rows_truth, "{check:?}");
    }
}

#[tokio::test]
async fn a_destination_password_changed_for_two_days_loses_no_row_and_drains_the_spool() {
    use gapless_core::{Row, Value, WindowSize};
    use gapless_destinations::PostgresTarget;
    use gapless_store::testing::PrivatePostgres;
    use gapless_vault::{Credential, Password};

    let cluster = PrivatePostgres::start().await.unwrap();
    cluster
        .admin_sql("postgres", "CREATE ROLE loader LOGIN PASSWORD 'pw-one'")
        .await
        .unwrap();
    cluster
        .admin_sql("postgres", "CREATE DATABASE dw OWNER loader")
        .await
        .unwrap();
    let (_dir, mut w) = world(SandboxConfig::default()).await;
    let (loader, pipeline) = w
        .pipeline_into_postgres(
            "acme-to-postgres",
            "dw-loader",
            PostgresTarget {
                url: cluster.url("loader", None, "dw"),
                schema: "reports".into(),
            },
            Credential::Password {
                username: "loader".into(),
                password: Password::new("pw-one".into()),
            },
        )
        .await
        .unwrap();
    for day in 1..=3 {
        w.daily_run(day).await.unwrap();
    }
    // A password has no expiry and does not renew: learned once, the refresh sweep does not
    // read it again, however late.
    let end = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    let candidates = w
        .engine
        .store()
        .refresh_candidates(end, end, None, 10_000)
        .await
        .unwrap();
    assert!(
        !candidates.identities.iter().any(|(i, _)| i.id == loader.id),
        "the refresh sweep still reads the destination's password"
    );
    assert!(
        candidates
            .identities
            .iter()
            .any(|(i, _)| i.id == w.identity.id),
        "the source's token is read when due"
    );
    // The warehouse password is changed; nobody tells gapless for two days.
    cluster
        .admin_sql("postgres", "ALTER ROLE loader PASSWORD 'pw-two'")
        .await
        .unwrap();
    let mut spooled = 0;
    for day in 4..=5 {
        let log = w.daily_run(day).await.unwrap();
        spooled += log
            .events
            .iter()
            .filter(|e| matches!(e, Event::WindowSpooled { .. }))
            .count();
    }
    assert!(
        spooled >= 2,
        "windows 4 and 5 were spooled ({spooled} spool writes)"
    );
    let incidents = w.engine.store().incidents(Some(loader.id)).await.unwrap();
    assert_eq!(
        incidents.len(),
        1,
        "one incident, for the destination's identity"
    );
    assert_eq!(incidents[0].failure.provider_code.as_deref(), Some("28P01"));
    assert!(!w.engine.spool().list(Some(pipeline.id)).unwrap().is_empty());
    // The DBA reconnects with the new password; the spool drains in order.
    w.clock.advance(Duration::hours(8));
    let log = w
        .engine
        .reauthorize_with_secret(
            loader.id,
            Credential::Password {
                username: "loader".into(),
                password: Password::new("pw-two".into()),
            },
        )
        .await
        .unwrap();
    let drained: Vec<_> = log
        .events
        .iter()
        .filter_map(|e| match e {
            Event::WindowLoaded {
                window, purpose, ..
            } if *purpose == LoadPurpose::Spool => Some(window.clone()),
            _ => None,
        })
        .collect();
    assert!(drained.contains(&"2026-01-04".to_string()), "{drained:?}");
    assert!(drained.contains(&"2026-01-05".to_string()), "{drained:?}");
    assert!(w.engine.spool().list(Some(pipeline.id)).unwrap().is_empty());
    // The messages speak of a destination: windows wait in the spool, nothing is paused
    // or lost; the recovery counts what was delivered from the spool.
    let messages: Vec<_> = w
        .engine
        .store()
        .notifications(false)
        .await
        .unwrap()
        .iter()
        .map(|n| w.engine.open_message(n).unwrap())
        .collect();
    let failure = messages
        .iter()
        .find(|n| {
            n.kind == gapless_core::NotificationKind::AuthorizationFailure
                && n.incident == Some(incidents[0].id)
        })
        .unwrap();
    assert!(
        failure.subject.contains("needs its new password"),
        "{}",
        failure.subject
    );
    assert!(
        failure.body_text.contains("wait in the spool"),
        "{}",
        failure.body_text
    );
    assert!(
        failure
            .body_text
            .contains("Enter the new password for dw-loader"),
        "{}",
        failure.body_text
    );
    for wrong in ["lost for good", "are paused", "0 days"] {
        assert!(
            !failure.body_text.contains(wrong),
            "{wrong}: {}",
            failure.body_text
        );
    }
    let recovery = messages
        .iter()
        .find(|n| {
            n.kind == gapless_core::NotificationKind::Recovery
                && n.incident == Some(incidents[0].id)
        })
        .unwrap();
    assert!(
        recovery.subject.contains("window(s) delivered, 0 lost")
            && !recovery.subject.contains("(0 window(s)"),
        "{}",
        recovery.subject
    );
    for day in 6..=8 {
        w.daily_run(day).await.unwrap();
    }
    // Every window in PostgreSQL equals the provider's truth: nothing lost, nothing twice.
    let destination = w.engine.destination_for(&pipeline).await.unwrap().unwrap();
    let schema = gapless_providers::sandbox::descriptor()
        .stream("insights")
        .unwrap()
        .schema
        .clone();
    for window in WindowSize::DAY.complete_windows(w.start, gapless_core::Clock::now(&w.clock)) {
        let date = window.start.date_naive();
        let truth: Vec<Row> = w
            .sandbox
            .sandbox()
            .truth(gapless_sandbox::DEMO_AD_ACCOUNT, date)
            .iter()
            .map(|r| {
                vec![
                    Value::Date(date),
                    Value::Text(r.campaign_id.clone()),
                    Value::Text(r.campaign_name.clone()),
                    Value::Integer(r.impressions.parse().unwrap()),
                    Value::Integer(r.clicks.parse().unwrap()),
                    Value::Text(r.spend.clone()),
                    Value::Integer(r.conversions.parse().unwrap()),
                ]
            })
            .collect();
        let stored = destination
            .read_window(pipeline.id, &schema, window)
            .await
            .unwrap();
        assert_eq!(stored, truth, "window {window}");
    }
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    assert!(
        ledger
            .iter()
            .all(|e| matches!(e.state, WindowState::Loaded { .. })),
        "{ledger:#?}"
    );
}

#[tokio::test]
async fn a_backfill_against_a_rate_limited_provider_honours_retry_after_without_a_storm() {
    let (_dir, w) = world(SandboxConfig::default()).await;
    for day in 1..=10 {
        w.daily_run(day).await.unwrap();
    }
    let plan = w
        .engine
        .plan_backfill(&w.pipeline, w.day(1), w.day(11))
        .await
        .unwrap();
    assert_eq!(plan.windows.len(), 10);
    // The provider serves a month per request: the ten days are one request series.
    assert!(
        (1..10).contains(&plan.estimated_requests),
        "{}",
        plan.estimated_requests
    );
    // The provider throttles with Retry-After: 10 minutes.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RateLimit {
            count: 1,
            retry_after_secs: 600,
            code: 613,
        })
        .unwrap();
    let before = w.sandbox.sandbox().stats().api_requests;
    let mut log = gapless_engine::EventLog::default();
    let outcome = w
        .engine
        .backfill(&w.pipeline, &plan, &mut log, |_, _| {})
        .await
        .unwrap();
    assert_eq!(outcome.loaded, 0);
    assert!(outcome.stopped_because.unwrap().contains("rate_limited"));
    assert_eq!(
        w.sandbox.sandbox().stats().api_requests - before,
        1,
        "one throttled call, then the backfill stops"
    );
    // Five minutes later the regular sync respects the same budget: no call at all.
    w.clock.advance(Duration::minutes(5));
    w.engine.tick().await.unwrap();
    assert_eq!(w.sandbox.sandbox().stats().api_requests - before, 1);
    // After the hint, the backfill goes through, in as many requests as estimated.
    w.clock.advance(Duration::minutes(6));
    let before = w.sandbox.sandbox().stats().api_requests;
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
    assert_eq!(outcome.loaded, 10, "{outcome:?}");
    let made = w.sandbox.sandbox().stats().api_requests - before;
    assert!(
        made <= plan.estimated_requests + 1,
        "{made} requests for an estimate of {}",
        plan.estimated_requests
    );
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupt_spool_file_is_set_aside_and_its_window_extracted_again() {
    let (dir, w) = world(SandboxConfig::default()).await;
    let (pipeline, blocked) = pipeline_to_a_blocked_warehouse(&dir, &w).await;
    for day in 1..=3 {
        w.daily_run(day).await.unwrap();
    }
    let spooled = w.engine.spool().list(Some(pipeline.id)).unwrap();
    assert_eq!(spooled.len(), 3, "{spooled:?}");
    // One spool file is truncated on disk.
    let victim = &spooled[1];
    let bytes = std::fs::read(&victim.path).unwrap();
    std::fs::write(&victim.path, &bytes[..bytes.len() / 2]).unwrap();
    // The destination comes back.
    std::fs::remove_file(&blocked).unwrap();
    let log = w.daily_run(4).await.unwrap();
    assert!(
        log.events.iter().any(|e| matches!(
            e,
            Event::WindowMissing { reason, .. } if reason.contains("checksum")
        )),
        "the corrupt file is reported"
    );
    w.daily_run(5).await.unwrap();
    w.daily_run(6).await.unwrap();
    assert!(w.engine.spool().list(Some(pipeline.id)).unwrap().is_empty());
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    assert_eq!(ledger.len(), 6);
    assert!(
        ledger
            .iter()
            .all(|e| matches!(e.state, WindowState::Loaded { .. })),
        "{ledger:#?}"
    );
    // The truncated window was extracted again: the destination holds the truth once.
    for check in w.check_pipeline_against_truth(&pipeline).await.unwrap() {
        assert!(check.matches_truth, "{check:?}");
    }
}

#[tokio::test]
async fn a_spool_file_that_vanished_or_was_forged_is_not_trusted_and_its_window_extracted_again() {
    use sha2::Digest;
    let (dir, w) = world(SandboxConfig::default()).await;
    let (pipeline, blocked) = pipeline_to_a_blocked_warehouse(&dir, &w).await;
    for day in 1..=3 {
        w.daily_run(day).await.unwrap();
    }
    let spooled = w.engine.spool().list(Some(pipeline.id)).unwrap();
    assert_eq!(spooled.len(), 3, "{spooled:?}");
    // Day 1's file disappears.
    std::fs::remove_file(&spooled[0].path).unwrap();
    // Day 2's file is replaced by one claiming three days of 1999, with a correct plain
    // SHA-256 (anyone can compute one).
    let forged = serde_json::json!({
        "pipeline": pipeline.id,
        "stream": "insights",
        "window": {"start": "1999-01-01T00:00:00Z", "end": "1999-01-04T00:00:00Z"},
        "extracted_at": "2026-01-03T01:00:00Z",
        "rows": [[{"date": "1999-01-02"}, "c1", "forged", 1, 1, "9.99", 1]],
    });
    let payload = serde_json::to_vec(&forged).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&payload));
    let mut file = format!("sha256:{digest}\n").into_bytes();
    file.extend_from_slice(&payload);
    std::fs::write(&spooled[1].path, file).unwrap();
    // The destination comes back.
    std::fs::remove_file(&blocked).unwrap();
    let log = w.daily_run(4).await.unwrap();
    let reasons: Vec<String> = log
        .events
        .iter()
        .filter_map(|e| match e {
            Event::WindowMissing { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("spooled copy is gone")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not written by this installation")),
        "{reasons:?}"
    );
    w.daily_run(5).await.unwrap();
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    assert!(
        ledger
            .iter()
            .all(|e| matches!(e.state, WindowState::Loaded { .. })
                && e.window.end - e.window.start == Duration::days(1)),
        "{ledger:#?}"
    );
    // Both windows were extracted again: the warehouse holds the truth, nothing of 1999.
    for check in w.check_pipeline_against_truth(&pipeline).await.unwrap() {
        assert!(check.matches_truth, "{check:?}");
    }
}

/// A pipeline whose SQLite warehouse cannot be opened until the returned file is removed.
async fn pipeline_to_a_blocked_warehouse(
    dir: &tempfile::TempDir,
    w: &DemoWorld,
) -> (gapless_core::Pipeline, std::path::PathBuf) {
    use gapless_core::{Pipeline, PipelineId};
    // The warehouse directory cannot be created yet (a file is in the way).
    let blocked = dir.path().join("state").join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let pipeline = Pipeline {
        id: PipelineId::new(),
        name: "to-blocked".into(),
        destination_target: "blocked/warehouse.sqlite".into(),
        ..w.pipeline.clone()
    };
    w.engine
        .store()
        .insert_pipeline(&pipeline, gapless_core::Clock::now(&w.clock))
        .await
        .unwrap();
    (pipeline, blocked)
}

#[tokio::test]
async fn spooled_windows_past_the_age_limit_are_dropped_and_extracted_fresh_later() {
    let (dir, w) = world(SandboxConfig::default()).await;
    let (pipeline, blocked) = pipeline_to_a_blocked_warehouse(&dir, &w).await;
    for day in 1..=10 {
        w.daily_run(day).await.unwrap();
    }
    // The spool keeps a week (the default): days 1 and 2 were extracted more than seven
    // days ago and are dropped; they are not extracted again while the warehouse is down.
    let spooled: Vec<_> = w
        .engine
        .spool()
        .list(Some(pipeline.id))
        .unwrap()
        .iter()
        .map(|e| e.window_start)
        .collect();
    assert_eq!(spooled, (3..=10).map(|d| w.day(d)).collect::<Vec<_>>());
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    let expired: Vec<_> = ledger
        .iter()
        .filter(|e| {
            matches!(
                &e.state,
                WindowState::Missing {
                    reason: gapless_core::MissingReason::SpoolExpired { .. },
                    ..
                }
            )
        })
        .map(|e| e.window.start)
        .collect();
    assert_eq!(expired, (1..=2).map(|d| w.day(d)).collect::<Vec<_>>());
    let (ok, out) = {
        let gaps = w.engine.gaps(&pipeline).await.unwrap();
        (gaps.len(), format!("{gaps:?}"))
    };
    assert!(ok >= 1 && out.contains("spool"), "{out}");
    // The warehouse comes back: the spool is delivered and the dropped days pulled fresh.
    std::fs::remove_file(&blocked).unwrap();
    w.daily_run(11).await.unwrap();
    assert!(w.engine.spool().list(Some(pipeline.id)).unwrap().is_empty());
    // Spooled numbers are as of their extraction: the next run re-pulls the unsettled ones.
    w.daily_run(12).await.unwrap();
    let checks = w.check_pipeline_against_truth(&pipeline).await.unwrap();
    assert_eq!(checks.len(), 12);
    for check in checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}

#[tokio::test]
async fn day_windows_in_a_pipeline_time_zone_match_the_provider_days_through_an_outage() {
    use gapless_core::{Pipeline, PipelineId, WindowGrid};
    let (_dir, w) = world(SandboxConfig::default()).await;
    // An account that reports its days in Tokyo time: a day starts at 15:00 UTC the day
    // before, so a window's UTC date is not its report day.
    let zone: gapless_core::Tz = "Asia/Tokyo".parse().unwrap();
    let grid = WindowGrid::new(w.pipeline.window, zone);
    let pipeline = Pipeline {
        id: PipelineId::new(),
        name: "acme-tokyo".into(),
        destination_target: "warehouse-tokyo.sqlite".into(),
        time_zone: zone,
        start: grid.day_start(w.start.date_naive()),
        ..w.pipeline.clone()
    };
    w.engine
        .store()
        .insert_pipeline(&pipeline, gapless_core::Clock::now(&w.clock))
        .await
        .unwrap();
    revoked_on_day_two_and_reauthorized_on_day_four(&w).await;
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    assert!(
        ledger
            .iter()
            .all(|e| e.window.start.time() == chrono::NaiveTime::from_hms_opt(15, 0, 0).unwrap()),
        "every window starts at midnight in Tokyo: {ledger:#?}"
    );
    let checks = w.check_pipeline_against_truth(&pipeline).await.unwrap();
    // The last run is at 10:00 on day 9 in Tokyo: days 1 to 8 are complete.
    assert_eq!(checks.len(), 8, "{checks:#?}");
    for check in checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
        assert!(check.rows_truth > 0, "{check:?}");
    }
}

#[tokio::test]
async fn catching_up_eighty_days_stays_inside_the_account_request_budget() {
    // 20 campaigns: a month of rows (620) is two pages of at most 500.
    let (_dir, mut w) = world(SandboxConfig {
        campaigns_per_account: Some(20),
        ..SandboxConfig::default()
    })
    .await;
    // Two requests per hour for the account, shared by syncs and probes.
    w.engine.set_rate_limit(
        gapless_providers::sandbox::NAME,
        Some("2/1h".parse().unwrap()),
    );
    let api = |w: &DemoWorld| w.sandbox.sandbox().stats().api_requests;
    let before = api(&w);
    // gapless was down since day 1: 79 complete days wait, a month per report, and a
    // month of rows is two pages.
    let log = w.daily_run(79).await.unwrap();
    let start = gapless_core::Clock::now(&w.clock);
    assert_eq!(
        api(&w) - before,
        2,
        "one report of two pages: {:#?}",
        log.events
    );
    let deferred = log
        .events
        .iter()
        .find_map(|e| match e {
            Event::RequestsDeferred { windows, until, .. } => Some((*windows, *until)),
            _ => None,
        })
        .expect("the rest waits for the budget");
    assert_eq!(deferred, (79 - 31, start + Duration::minutes(30)));
    // Tick every five minutes: nothing is asked of the provider before the budget allows
    // it (no probe, no sync), and the rest goes without waiting for the next daily run.
    let mut calls = vec![];
    for step in 1..=30 {
        w.clock.set(start + Duration::minutes(5 * step));
        w.engine.tick().await.unwrap();
        calls.push((5 * step, api(&w) - before));
    }
    let at = |minutes: i64| calls.iter().find(|(m, _)| *m == minutes).unwrap().1;
    assert_eq!(at(25), 2, "{calls:?}");
    assert_eq!(
        at(30),
        4,
        "the second report, paid for the first one's extra page"
    );
    assert_eq!(at(85), 4, "{calls:?}");
    assert_eq!(at(90), 5, "the last report, one page");
    // The last report proved the identity: no probe an hour after the first run, but
    // one an hour (less the jitter) after the last.
    assert_eq!(at(120), 5, "no probe yet: {calls:?}");
    assert_eq!(at(150), 5 + 1, "then the regular probe: {calls:?}");
    let checks = w.check_against_truth().await.unwrap();
    assert_eq!(checks.len(), 79);
    for check in checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_the_warehouse_refuses_beside_one_it_commits_is_spooled_and_the_committed_one_recorded()
 {
    use gapless_destinations::PostgresTarget;
    use gapless_vault::{Credential, Password};

    let db = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    let (_dir, mut w) = world(SandboxConfig::default()).await;
    // The shared test server trusts local connections: any password does.
    let (_, pipeline) = w
        .pipeline_into_postgres(
            "acme-to-postgres",
            "dw",
            PostgresTarget {
                url: db.url().into(),
                schema: "reports".into(),
            },
            Credential::Password {
                username: "root".into(),
                password: Password::new("trusted-local-server".into()),
            },
        )
        .await
        .unwrap();
    w.daily_run(1).await.unwrap();
    // The warehouse refuses the rows of the third day's window (a trigger of its own).
    let third = w.day(3).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let sql = format!(
        "CREATE FUNCTION reports.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW._gapless_window_start = '{third}' THEN RAISE EXCEPTION 'refused by the warehouse'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON reports.insights FOR EACH ROW EXECUTE FUNCTION reports.refuse()"
    );
    db.execute(&sql).await.unwrap();
    // Windows 2 to 5 in one request, two loading at once: 2 commits and 4 starts beside
    // 3, which is refused; 4 ends as it began, 5 is not started.
    w.daily_run(5).await.unwrap();
    let state_of = |ledger: &[gapless_core::LedgerEntry], day: u32| {
        ledger
            .iter()
            .find(|e| e.window.start == w.day(day))
            .map(|e| match e.state {
                WindowState::Loaded { .. } => "loaded",
                WindowState::Spooled { .. } => "spooled",
                _ => "other",
            })
    };
    let ledger = w.engine.store().ledger(pipeline.id).await.unwrap();
    assert_eq!(
        (2..=5).map(|d| state_of(&ledger, d)).collect::<Vec<_>>(),
        [
            Some("loaded"),
            Some("spooled"),
            Some("loaded"),
            Some("spooled")
        ],
        "{ledger:#?}"
    );
    // The warehouse takes it again: the spool drains and every window is the provider's.
    db.execute("DROP TRIGGER refuse ON reports.insights")
        .await
        .unwrap();
    w.daily_run(6).await.unwrap();
    let checks = w.check_pipeline_against_truth(&pipeline).await.unwrap();
    assert_eq!(checks.len(), 6, "{checks:#?}");
    for check in checks {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}
