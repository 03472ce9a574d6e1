//! Random outages in virtual time: identities whose connections are removed and
//! reauthorized by a seeded plan, the engine ticking once a day. Whatever the plan, every
//! window the provider still served when its identity came back is loaded, only windows
//! past the lookback are lost, and each outage is one incident.

#![allow(clippy::unwrap_used)]

#[tokio::test]
async fn random_outages_lose_only_what_the_lookback_no_longer_serves_and_each_is_one_incident() {
    for seed in [7, 11] {
        let dir = tempfile::tempdir().unwrap();
        let b = gapless_demo::bench::simulate(dir.path(), 4, 90, 12, seed)
            .await
            .unwrap();
        assert!(b.violations.is_empty(), "seed {seed}: {:#?}", b.violations);
        assert_eq!(
            b.windows_loaded + b.windows_lost + b.windows_missing,
            b.windows,
            "seed {seed}: {b:?}"
        );
        assert_eq!(
            b.windows_lost, b.windows_lost_expected,
            "seed {seed}: {b:?}"
        );
        // The plan has outages, some longer than the lookback.
        assert!(b.outages >= 2 && b.windows_lost > 0, "seed {seed}: {b:?}");
    }
}
