//! Expiry forecasting end to end: a refresh-token lifetime fixed at the grant (as
//! LinkedIn's 365 days) is warned about once per horizon, then expires into one incident.

#![allow(clippy::unwrap_used)]

use gapless_core::{FailureCause, Health, ReauthReason};
use gapless_demo::demo::DemoWorld;
use gapless_engine::Event;
use gapless_sandbox::SandboxConfig;

#[tokio::test]
async fn a_fixed_refresh_lifetime_is_warned_at_30_7_and_1_days_then_opens_one_incident() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = SandboxConfig {
        refresh_token_ttl_secs: Some(45 * 86_400),
        refresh_lifetime_from_grant: true,
        ..SandboxConfig::default()
    };
    let (w, _) = DemoWorld::start_sqlite(&state, config, None).await.unwrap();
    let expires = w
        .engine
        .store()
        .identity(w.identity.id)
        .await
        .unwrap()
        .refresh_expires_at
        .unwrap();
    let mut warnings = vec![];
    let mut expiring_seen = false;
    for day in 1..=50 {
        let log = w.daily_run(day).await.unwrap();
        for event in log.events {
            if let Event::ExpiryWarning {
                horizon_days,
                expires_at,
                kind,
                ..
            } = event
            {
                assert_eq!(expires_at, expires, "the expiry does not slide on refresh");
                assert_eq!(kind, "refresh_token");
                warnings.push((day, horizon_days));
            }
        }
        let identity = w.engine.store().identity(w.identity.id).await.unwrap();
        expiring_seen |= matches!(identity.health, Health::Expiring { .. });
    }
    let horizons: Vec<i64> = warnings.iter().map(|(_, h)| *h).collect();
    assert_eq!(
        horizons,
        vec![30, 7, 1],
        "one warning per horizon: {warnings:?}"
    );
    assert!(expiring_seen);
    let identity = w.engine.store().identity(w.identity.id).await.unwrap();
    let Health::NeedsReauth { failure, .. } = &identity.health else {
        panic!(
            "expected needs_reauth after the expiry, got {}",
            identity.health
        );
    };
    assert_eq!(
        failure.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::Expired
        }
    );
    assert_eq!(w.engine.store().incidents(None).await.unwrap().len(), 1);
}
