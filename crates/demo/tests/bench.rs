//! The benchmarks run small: each still checks what it measured (every window loaded once,
//! read back, one mail per broken identity), so a benchmark that stopped measuring the path
//! it names fails here rather than printing a figure.

#![allow(clippy::unwrap_used)]

#[tokio::test]
async fn the_scale_bench_loads_every_pipeline_once_with_two_instances_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let b = gapless_demo::bench::scale(&dir.path().join("scale"), 30, 2, Some(4), 0, None)
        .await
        .unwrap();
    assert_eq!(b.windows_loaded, 30, "{b:?}");
    assert_eq!(
        (b.identities, b.instances, b.store.as_str()),
        (30, 2, "sqlite")
    );
}

#[tokio::test]
async fn the_e2e_bench_reads_back_every_window_it_loaded_into_both_destinations() {
    use gapless_demo::bench::{E2eDestination, e2e};
    for destination in [E2eDestination::Sqlite, E2eDestination::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        // 600 rows a day, three days in one request: four pages of at most 500 rows,
        // pages across two days.
        let b = e2e(&dir.path().join("e2e"), 600, 3, destination)
            .await
            .unwrap();
        assert_eq!((b.rows, b.verified_windows), (1_800, 3), "{b:?}");
        assert_eq!(b.requests, 4, "pages of 500 rows: {b:?}");
        assert!(b.bulk_rows_per_sec > 0.0 && b.bulk_shaped_rows_per_sec > 0.0);
    }
}

#[tokio::test]
async fn the_notify_bench_delivers_one_mail_per_broken_identity_while_the_sweep_runs() {
    let dir = tempfile::tempdir().unwrap();
    let b = gapless_demo::bench::notify(&dir.path().join("notify"), 4, None)
        .await
        .unwrap();
    assert_eq!(b.mails_accepted, 4, "{b:?}");
    for spread in [b.since_sweep, b.since_failure] {
        assert!(
            spread.first_ms <= spread.p50_ms && spread.p50_ms <= spread.max_ms,
            "{b:?}"
        );
    }
    // Every mail is paired with its failure by Message-ID (else the bench fails), and none
    // is accepted before the failure that caused it was handled.
    assert!(b.since_failure.first_ms >= 0.0, "{b:?}");
}

#[tokio::test]
async fn the_due_bench_copies_rows_that_stay_out_of_the_round_of_their_templates() {
    let dir = tempfile::tempdir().unwrap();
    let database = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    let b = gapless_demo::bench::due(&dir.path().join("due"), 200, 10, database.location.clone())
        .await
        .unwrap();
    assert_eq!(
        (b.identities, b.pipelines, b.templates),
        (200, 200, 10),
        "{b:?}"
    );
    // Only the templates' pipelines were due: a copy that came due cannot open its
    // credential, and the bench fails on the incident it opens (checked by making the
    // copies due: `unwrap` then panics), or a copy's window would load as well.
    assert_eq!(b.windows_loaded, 10, "{b:?}");
}
