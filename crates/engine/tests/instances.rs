//! Several instances on one PostgreSQL: work is claimed, not looped. Three engines tick at
//! the same instants over the same pipelines; each window is loaded once per tick, each
//! failure is one incident and each message is delivered once. In virtual time against the
//! sandbox.

#![allow(clippy::unwrap_used)]

use chrono::Duration;
use gapless_core::DeliveryState;
use gapless_demo::demo::DemoWorld;
use gapless_engine::{Engine, EventLog};
use gapless_sandbox::{DEMO_USER, Fault};
use gapless_store::testing::TestDatabase;

/// Every engine ticks once at the clock's instant, all at the same time.
async fn tick_all(engines: &[&Engine]) -> Vec<EventLog> {
    let ticks = engines.iter().map(|e| e.tick());
    futures_util::future::join_all(ticks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_run_each_pipeline_once_per_tick_and_mail_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await.unwrap();
    let (w, _) = DemoWorld::start_with(&dir.path().join("state"), None, database.location.clone())
        .await
        .unwrap();
    // One identity per pipeline (so a run never waits for another's token refresh).
    let mut pipelines = vec![w.pipeline.clone()];
    for i in 0..11 {
        let identity = w.connect(&format!("client-{i}")).await.unwrap();
        pipelines.push(
            w.add_pipeline(&format!("client-{i}-daily"), identity.id)
                .await
                .unwrap(),
        );
    }
    // Two runs in flight each: an instance claims only what it can run now.
    let b = w
        .new_engine_with(|c| c.concurrency = Some(2))
        .await
        .unwrap();
    let c = w
        .new_engine_with(|c| c.concurrency = Some(2))
        .await
        .unwrap();
    let engines = [&w.engine, &b, &c];

    let mut loaded_events = 0;
    for day in 1..=4 {
        w.clock
            .set(w.day(day) + Duration::days(1) + Duration::hours(1));
        // Several ticks an instant apart: the second and third find nothing due.
        for _ in 0..3 {
            let logs = tick_all(&engines).await;
            for log in &logs {
                loaded_events += log
                    .events
                    .iter()
                    .filter(|e| matches!(e, gapless_engine::Event::WindowLoaded { .. }))
                    .count();
            }
            w.clock.advance(Duration::minutes(1));
        }
    }
    // The work was shared, not done three times: no window was loaded twice at one instant,
    // and every load an instance reported is one load in the ledger.
    let mut loads_recorded = 0;
    for pipeline in &pipelines {
        for window in w.pipeline.grid().complete_windows(w.start, w.day(5)) {
            let history = w
                .engine
                .store()
                .window_history(pipeline.id, "insights", window.start)
                .await
                .unwrap();
            let loads: Vec<_> = history.iter().filter(|(_, s)| s == "loaded").collect();
            let mut instants: Vec<_> = loads.iter().map(|(at, _)| *at).collect();
            instants.dedup();
            assert_eq!(
                instants.len(),
                loads.len(),
                "{}: {window:?} loaded twice at one instant: {history:?}",
                pipeline.name
            );
            assert!(
                !loads.is_empty(),
                "{}: {window:?} never loaded",
                pipeline.name
            );
            loads_recorded += loads.len();
        }
        for check in w.check_pipeline_against_truth(pipeline).await.unwrap() {
            assert!(check.matches_truth, "{}: {check:?}", pipeline.name);
        }
    }
    assert_eq!(loaded_events, loads_recorded);

    // Every grant of the user revoked: one incident per identity, each message once.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.clock.set(w.day(6) + Duration::hours(1));
    for _ in 0..3 {
        tick_all(&engines).await;
        w.clock.advance(Duration::minutes(1));
    }
    let incidents = w.engine.store().incidents(None).await.unwrap();
    assert_eq!(incidents.len(), pipelines.len());
    let notifications = w.engine.store().notifications(false).await.unwrap();
    let failures: Vec<_> = notifications
        .iter()
        .filter(|n| n.kind == gapless_core::NotificationKind::AuthorizationFailure)
        .collect();
    assert_eq!(failures.len(), pipelines.len());
    for n in &notifications {
        assert_eq!(n.delivery.state, DeliveryState::Delivered, "{}", n.subject);
        assert_eq!(n.delivery.attempts, 1, "{}: delivered once", n.subject);
    }
    let files = std::fs::read_dir(w.engine.outbox_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "eml")
        })
        .count();
    assert_eq!(
        files,
        notifications.len(),
        "one file per message, no copies"
    );
}
