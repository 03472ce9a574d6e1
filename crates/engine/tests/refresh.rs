//! Refresh under crashes and concurrency, against the sandbox's rotating refresh tokens
//! (a spent token presented again revokes the whole grant, and the sandbox counts it).

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, sync::Arc};

use chrono::Duration;
use gapless_core::{Clock, FailureCause, Health, ReauthReason};
use gapless_demo::demo::DemoWorld;
use gapless_engine::{CrashPoint, EngineError, EventLog, ProbeOutcome};
use gapless_sandbox::{DEMO_PASSWORD, DEMO_USER};
use gapless_store::testing::TestDatabase;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Kill a refresh `runs` times at a random point between its durable steps (or let it
/// finish), restart, and check what the restart finds: a refresh that may have reached the
/// provider is reported as an unknown outcome (and reauthorized here), never sent blind
/// again; any other ends healthy; the stored credential works after every run.
async fn refresh_killed_at_random_points(w: &mut DemoWorld, runs: usize, store: &str) {
    let seed = std::env::var("GAPLESS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15_u64);
    let mut rng = Rng(seed);
    let mut outcomes: HashMap<Option<CrashPoint>, (usize, usize)> = HashMap::new();
    for run in 0..runs {
        // The access token (1 h) is due.
        w.clock.advance(Duration::hours(2));
        let point = match rng.next() % 5 {
            0 => None,
            1 => Some(CrashPoint::BeforeSend),
            2 => Some(CrashPoint::AfterIntent),
            3 => Some(CrashPoint::AfterAnswer),
            _ => Some(CrashPoint::AfterCommit),
        };
        let label = format!("{store} run {run} (seed {seed}, {point:?})");
        let mut doomed = w.new_engine().await.unwrap();
        if let Some(point) = point {
            doomed.set_failpoint(Arc::new(move |at| at == point));
        }
        let result = doomed.refresh_due(&mut EventLog::default()).await;
        match point {
            Some(point) => assert!(
                matches!(result, Err(EngineError::Crashed(at)) if at == point),
                "{label}: {result:?}"
            ),
            None => result.unwrap(),
        }
        // Each instance's pool is closed before the next opens: a few hundred pools dropped
        // open left maintenance tasks that could spin at the runtime's shutdown (sqlx).
        doomed.store().close().await;
        drop(doomed);
        // Restart once the dead instance's lease has run out.
        w.clock.advance(Duration::seconds(91));
        w.engine.store().close().await;
        w.engine = w.new_engine().await.unwrap();
        w.engine
            .refresh_due(&mut EventLog::default())
            .await
            .unwrap();
        let identity = w.engine.store().identity(w.identity.id).await.unwrap();
        let counts = outcomes.entry(point).or_default();
        match &identity.health {
            Health::NeedsReauth { failure, .. } => {
                assert_eq!(
                    failure.cause,
                    FailureCause::ReauthRequired {
                        reason: ReauthReason::RefreshOutcomeUnknown
                    },
                    "{label}"
                );
                counts.1 += 1;
                w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
            }
            Health::Healthy => counts.0 += 1,
            other => panic!("{label}: {other}"),
        }
        // Whatever happened, the stored credential works now.
        let outcome = w
            .engine
            .probe_identity(w.identity.id, &mut EventLog::default())
            .await
            .unwrap();
        assert!(
            matches!(outcome, ProbeOutcome::Passed(_)),
            "{label}: {outcome:?}"
        );
    }
    let stats = w.sandbox.sandbox().stats();
    assert_eq!(
        stats.refresh_reuse, 0,
        "{store}: a spent refresh token was sent again"
    );
    assert_eq!(
        stats.expired_token_calls, 0,
        "{store}: a call used an expired access token"
    );
    // (healthy, unknown) by crash point: only a crash after the intent was recorded and
    // before the answer was committed leaves the outcome unknown.
    for (point, (healthy, unknown)) in &outcomes {
        let may_have_sent = matches!(
            point,
            Some(CrashPoint::AfterIntent | CrashPoint::AfterAnswer)
        );
        assert_eq!(
            (*healthy == 0, *unknown == 0),
            (may_have_sent, !may_have_sent),
            "{store}: {point:?} ended healthy {healthy} and unknown {unknown} times"
        );
    }
    assert!(
        outcomes.len() == 5 && outcomes.values().all(|(h, u)| h + u >= runs / 10),
        "{store}: every crash point was exercised: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_killed_at_random_points_never_reuses_a_spent_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    refresh_killed_at_random_points(&mut w, 200, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_killed_at_random_points_never_reuses_a_spent_token_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await.unwrap();
    let (mut w, _) =
        DemoWorld::start_with(&dir.path().join("state"), None, database.location.clone())
            .await
            .unwrap();
    refresh_killed_at_random_points(&mut w, 100, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_refresh_each_due_token_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create().await.unwrap();
    let (w, _) = DemoWorld::start_with(&dir.path().join("state"), None, database.location.clone())
        .await
        .unwrap();
    let mut identities = vec![w.identity.id];
    for i in 0..19 {
        identities.push(w.connect(&format!("client-{i}")).await.unwrap().id);
    }
    let a = w.new_engine().await.unwrap();
    let b = w.new_engine().await.unwrap();
    for round in 1..=3 {
        w.clock.advance(Duration::hours(2));
        let before = w.sandbox.sandbox().stats().refreshes;
        let (ra, rb) = tokio::join!(
            async {
                let mut log = EventLog::default();
                a.refresh_due(&mut log).await.map(|()| log)
            },
            async {
                let mut log = EventLog::default();
                b.refresh_due(&mut log).await.map(|()| log)
            }
        );
        ra.unwrap();
        rb.unwrap();
        // An instance that found the lease taken skips; a second sweep picks up the rest.
        a.refresh_due(&mut EventLog::default()).await.unwrap();
        b.refresh_due(&mut EventLog::default()).await.unwrap();
        let after = w.sandbox.sandbox().stats().refreshes;
        assert_eq!(
            after - before,
            20,
            "round {round}: one refresh per due token"
        );
    }
    assert_eq!(a.refresh_count() + b.refresh_count(), 60);
    assert!(
        a.refresh_count() > 0 && b.refresh_count() > 0,
        "both instances worked"
    );
    assert_eq!(w.sandbox.sandbox().stats().refresh_reuse, 0);
    for id in identities {
        let identity = w.engine.store().identity(id).await.unwrap();
        assert_eq!(identity.health, Health::Healthy);
        assert!(identity.access_expires_at.unwrap() > w.clock.now());
    }
}

#[tokio::test]
async fn a_token_answer_replaced_by_an_html_page_is_an_unknown_outcome_not_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(gapless_sandbox::Fault::TokenAnswerLost { count: 1 })
        .unwrap();
    w.clock.advance(Duration::hours(2));
    w.engine
        .refresh_due(&mut EventLog::default())
        .await
        .unwrap();
    // The next sweeps must not send the (spent) token again.
    w.clock.advance(Duration::hours(2));
    w.engine
        .refresh_due(&mut EventLog::default())
        .await
        .unwrap();
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    let Health::NeedsReauth { failure, .. } = &identity.health else {
        panic!("expected needs_reauth, got {}", identity.health);
    };
    assert_eq!(
        failure.provider_code.as_deref(),
        Some("refresh_outcome_unknown")
    );
    assert!(
        failure
            .provider_message
            .as_deref()
            .unwrap()
            .contains("text/html"),
        "{failure:?}"
    );
    assert_eq!(w.sandbox.sandbox().stats().refresh_reuse, 0);
    assert_eq!(w.engine.store().incidents(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_probe_answering_200_with_an_unexpected_body_degrades_and_never_opens_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(gapless_sandbox::Fault::MalformedResponse { count: 1 })
        .unwrap();
    let outcome = w
        .engine
        .probe_identity(w.identity.id, &mut EventLog::default())
        .await
        .unwrap();
    let ProbeOutcome::Failed(detail) = outcome else {
        panic!("expected a failed probe, got {outcome:?}");
    };
    assert!(detail.contains("malformed_response"), "{detail}");
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health.name(), "degraded");
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
    // The next probe (after the backoff) heals it.
    w.clock.advance(Duration::minutes(1));
    let outcome = w
        .engine
        .probe_identity(w.identity.id, &mut EventLog::default())
        .await
        .unwrap();
    assert!(matches!(outcome, ProbeOutcome::Passed(_)), "{outcome:?}");
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
}

#[tokio::test]
async fn a_client_credentials_identity_renews_without_a_human_until_the_secret_is_rotated() {
    use gapless_sandbox::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, Fault};
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    w.engine.add_source(
        gapless_providers::registry::source(
            gapless_providers::sandbox::SERVICE_NAME,
            gapless_providers::ProviderSettings {
                base_url: w.sandbox.base_url(),
                client_id: DEMO_CLIENT_ID.into(),
                client_secret: gapless_vault::ClientSecret::new(DEMO_CLIENT_SECRET.into()),
                timeouts: Default::default(),
                settings: Default::default(),
            },
        )
        .unwrap(),
    );
    let service = w
        .engine
        .connect_service_identity(
            ("sandbox_service", &Default::default()),
            "reporting",
            vec![],
            &w.engine.caller(),
        )
        .await
        .unwrap();
    assert_eq!(
        service.upstream_account_name.as_deref(),
        Some("Reporting Service")
    );
    let before = w.engine.refresh_count();
    for _ in 0..3 {
        w.clock.advance(Duration::hours(2));
        w.engine
            .refresh_due(&mut EventLog::default())
            .await
            .unwrap();
    }
    // Three renewals for each of the two identities (the user's and the service's).
    assert_eq!(w.engine.refresh_count() - before, 6);
    // A token that renews without a human is never an "expiring" warning.
    w.engine
        .check_expiries(&mut EventLog::default())
        .await
        .unwrap();
    let warnings = w
        .engine
        .store()
        .notifications(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == gapless_core::NotificationKind::ExpiryWarning)
        .count();
    assert_eq!(
        warnings, 0,
        "no expiry warning for a client-credentials identity"
    );
    let identity = w.engine.store().identity(service.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
    assert!(identity.access_expires_at.unwrap() > w.clock.now());

    // The application's secret is rotated at the provider: an operator must act.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RotateClientSecret {
            client: DEMO_CLIENT_ID.into(),
            new_secret: "rotated".into(),
        })
        .unwrap();
    w.clock.advance(Duration::hours(2));
    w.engine
        .refresh_due(&mut EventLog::default())
        .await
        .unwrap();
    let identity = w.engine.store().identity(service.id).await.unwrap();
    let Health::NeedsReauth { failure, .. } = &identity.health else {
        panic!("expected needs_reauth, got {}", identity.health);
    };
    assert_eq!(failure.cause, FailureCause::AppNotApproved);
    // The operator restores the secret; reconnecting heals it.
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RotateClientSecret {
            client: DEMO_CLIENT_ID.into(),
            new_secret: DEMO_CLIENT_SECRET.into(),
        })
        .unwrap();
    w.engine.reauthorize_service(service.id).await.unwrap();
    let identity = w.engine.store().identity(service.id).await.unwrap();
    assert_eq!(identity.health, Health::Healthy);
}

#[tokio::test]
async fn a_stale_refresh_intent_is_sent_again_for_a_provider_whose_refresh_tokens_do_not_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let config = gapless_sandbox::SandboxConfig {
        rotate_refresh_tokens: false,
        ..gapless_sandbox::SandboxConfig::default()
    };
    let (mut w, _) = DemoWorld::start_sqlite(&dir.path().join("state"), config, None)
        .await
        .unwrap();
    for point in [CrashPoint::BeforeSend, CrashPoint::AfterAnswer] {
        w.clock.advance(Duration::hours(2));
        let mut doomed = w.new_engine().await.unwrap();
        doomed.set_failpoint(Arc::new(move |at| at == point));
        let crashed = doomed.refresh_due(&mut EventLog::default()).await;
        assert!(matches!(crashed, Err(EngineError::Crashed(at)) if at == point));
        drop(doomed);
        // The dead instance left its intent; after its lease, the next refresher sends again.
        w.clock.advance(Duration::seconds(91));
        w.engine = w.new_engine().await.unwrap();
        w.engine
            .refresh_due(&mut EventLog::default())
            .await
            .unwrap();
        let identity = w.engine.store().identity(w.identity.id).await.unwrap();
        assert_eq!(identity.health, Health::Healthy, "{point:?}");
        assert_eq!(identity.refresh_in_flight_since, None, "{point:?}");
        assert!(
            w.engine
                .store()
                .incidents(Some(w.identity.id))
                .await
                .unwrap()
                .is_empty(),
            "{point:?}: no incident"
        );
    }
    assert_eq!(w.sandbox.sandbox().stats().refresh_reuse, 0);
}
