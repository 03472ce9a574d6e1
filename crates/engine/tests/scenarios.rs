//! Ledger scenarios in virtual time, checked window by window against the sandbox's truth.

#![allow(clippy::unwrap_used)]

use chrono::Duration;
use gapless_core::WindowState;
use gapless_engine::{Event, demo::DemoWorld};
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER, Fault, SandboxConfig};
use gapless_store::StoreLocation;

async fn world(config: SandboxConfig) -> (tempfile::TempDir, DemoWorld) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (w, _) = DemoWorld::start_configured(
        &state,
        None,
        StoreLocation::Sqlite {
            data_dir: state.clone(),
        },
        config,
    )
    .await
    .unwrap();
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
            } if purpose == "new" => Some(window.clone()),
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

#[tokio::test]
async fn a_three_day_revocation_ends_with_nothing_missing_and_no_duplicate_rows() {
    let (_dir, w) = world(SandboxConfig::default()).await;
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
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        // Identical rows: nothing missing, nothing loaded twice.
        assert!(check.matches_truth, "{check:?}");
        assert_eq!(check.rows_loaded, check.rows_truth, "{check:?}");
    }
}
