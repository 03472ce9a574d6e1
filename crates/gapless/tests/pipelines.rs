//! `gapless pipeline`, `gaps`, `backfill` and `run` against the sandbox on the wall clock.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::{Duration, Utc};
use common::{gapless, installation_with_acme, run};

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_is_created_synced_gap_free_and_back_filled_from_the_cli() {
    common::clear_of_boundary(chrono::Duration::days(1)).await;
    let (handle, _dir, data) = installation_with_acme("").await;

    let start = (Utc::now() - Duration::days(5)).date_naive();
    let (ok, out, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "acme-daily",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--start",
        &start.to_string(),
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("pipeline acme-daily created"), "{out}");
    // What the identity can read is listed, and a pipeline only reads one of those.
    let (ok, out, err) = run(gapless(&data).args(["identity", "resources", "acme", "--json"]));
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(listed.iter().any(|r| r["id"] == "act_1001"), "{out}");
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "elsewhere",
        "--source",
        "acme",
        "--resource",
        "act_9999",
        "--start",
        &start.to_string(),
    ]));
    assert!(!ok);
    assert!(
        err.contains("--resource \"act_9999\" is not one acme can read")
            && err.contains("act_1001"),
        "{err}"
    );
    // Bad input is named.
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "x",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--stream",
        "clicks_by_hour",
        "--start",
        &start.to_string(),
    ]));
    assert!(!ok);
    assert!(
        err.contains("no stream \"clicks_by_hour\"") && err.contains("insights"),
        "{err}"
    );

    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "nightly",
        "--source",
        "acme",
        "--resource",
        "act_1002",
        "--start",
        &start.to_string(),
        "--schedule",
        "at three every night",
    ]));
    assert!(!ok);
    assert!(err.contains("neither a cron expression"), "{err}");
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "nightly",
        "--source",
        "acme",
        "--resource",
        "act_1002",
        "--start",
        &start.to_string(),
        "--schedule",
        "0 3 1 1 *",
    ]));
    assert!(ok, "{err}");
    let tokyo = |zone: &str| {
        run(gapless(&data).args([
            "pipeline",
            "add",
            "--name",
            "tokyo-hourly-check",
            "--source",
            "acme",
            "--resource",
            "act_1002",
            "--start",
            &start.to_string(),
            "--schedule",
            "every 6h",
            "--time-zone",
            zone,
        ]))
    };
    let (ok, _, err) = tokyo("Mars/Olympus");
    assert!(!ok);
    assert!(err.contains("unknown time zone \"Mars/Olympus\""), "{err}");
    let (ok, _, err) = tokyo("Asia/Tokyo");
    assert!(ok, "{err}");
    let (ok, out, _) = run(gapless(&data).args(["pipeline", "list", "--json"]));
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|p| p["schedule"] == "0 3 1 1 *")
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|p| p["time_zone"] == "Asia/Tokyo" && p["schedule"] == "every 6h"),
        "{out}"
    );
    let (ok, out, _) = run(gapless(&data).args(["gaps", "acme-daily", "--json"]));
    assert!(ok);
    let gaps: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        gaps[0]["gap"]["windows"], 5,
        "five days not synced yet: {out}"
    );

    let (ok, out, err) = run(gapless(&data).args(["run", "--once"]));
    assert!(ok, "{err}");
    assert_eq!(out.matches("acme-daily/insights").count(), 5, "{out}");
    // The scheduled pipeline never ran, so it was due too; a second tick runs only the
    // unscheduled one (the next 1 January, 03:00, has not come).
    assert_eq!(out.matches("nightly/insights").count(), 5, "{out}");
    let (ok, out, _) = run(gapless(&data).args(["run", "--once", "--every", "1s"]));
    assert!(ok);
    assert!(!out.contains("nightly"), "{out}");
    let (ok, out, _) = run(gapless(&data).args(["gaps"]));
    assert!(ok);
    assert!(out.contains("no gaps"), "{out}");

    let day = start + Duration::days(1);
    let (ok, out, err) = run(gapless(&data).args([
        "backfill",
        "acme-daily",
        "--from",
        &day.to_string(),
        "--to",
        &day.to_string(),
        "--dry-run",
    ]));
    assert!(ok, "{err}");
    assert!(
        out.contains("1 window(s) to pull, about 1 request(s)"),
        "{out}"
    );
    let (ok, out, err) = run(gapless(&data).args([
        "backfill",
        "acme-daily",
        "--from",
        &start.to_string(),
        "--to",
        &day.to_string(),
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("2 window(s) loaded"), "{out}");

    // Reversed, unknown, and beyond the provider's lookback.
    let (ok, _, err) = run(gapless(&data).args([
        "backfill",
        "acme-daily",
        "--from",
        &day.to_string(),
        "--to",
        &start.to_string(),
    ]));
    assert!(!ok);
    assert!(err.contains("before --from"), "{err}");
    let (ok, _, err) = run(gapless(&data).args([
        "backfill",
        "nope",
        "--from",
        &start.to_string(),
        "--to",
        &day.to_string(),
    ]));
    assert!(!ok);
    assert!(err.contains("pipeline \"nope\" not found"), "{err}");
    let old = start - Duration::days(2000);
    let (ok, out, err) = run(gapless(&data).args([
        "backfill",
        "acme-daily",
        "--from",
        &old.to_string(),
        "--to",
        &(old + Duration::days(2)).to_string(),
        "--dry-run",
    ]));
    assert!(!ok, "{out}");
    assert!(err.contains("past the provider's lookback"), "{err}");
    let future = Utc::now().date_naive() + Duration::days(10);
    let (ok, _, err) = run(gapless(&data).args([
        "backfill",
        "acme-daily",
        "--from",
        &future.to_string(),
        "--to",
        &future.to_string(),
    ]));
    assert!(!ok);
    assert!(err.contains("no complete window"), "{err}");
    let (ok, out, _) = run(gapless(&data).args(["spool"]));
    assert!(ok);
    assert!(out.starts_with("spool: 0 window(s)"), "{out}");
    // What would a 70-day outage starting now do?
    let (ok, out, err) =
        run(gapless(&data).args(["simulate", "--identity", "acme", "--days", "70"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("acme-daily/insights: 70 window(s) recovered"),
        "{out}"
    );
    assert!(out.contains("0 lost"), "{out}");
    assert!(out.contains("reauthorize by"), "{out}");
    let (ok, out, _) =
        run(gapless(&data).args(["simulate", "--identity", "acme", "--days", "1200", "--json"]));
    assert!(ok);
    let forecast: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !forecast[0]["forecast"]["lost"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a longer outage than the lookback loses windows"
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_can_start_at_an_instant_and_be_paused_resumed_edited_and_deleted() {
    common::clear_of_boundary(chrono::Duration::hours(1)).await;
    let (_handle, _dir, data) = installation_with_acme("").await;
    let start = (Utc::now() - Duration::hours(5)).format("%Y-%m-%dT%H:00:00Z");
    let (ok, out, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "hourly",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--window",
        "1h",
        "--start",
        &start.to_string(),
    ]));
    assert!(ok, "pipeline add --start with an instant: {err}");
    assert!(out.contains("pipeline hourly created"), "{out}");
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "x",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--start",
        "yesterday-ish",
    ]));
    assert!(!ok);
    assert!(err.contains("neither a day"), "{err}");
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "add",
        "--name",
        "x",
        "--source",
        "acme",
        "--resource",
        "act_1001",
        "--window",
        "1s",
        "--start",
        "2026-12-01",
    ]));
    assert!(!ok);
    assert!(err.contains("shorter than a minute"), "{err}");

    let (ok, _, err) = run(gapless(&data).args(["pipeline", "pause", "hourly"]));
    assert!(ok, "{err}");
    let (_, out, _) = run(gapless(&data).args(["pipeline", "list"]));
    assert!(out.contains("paused"), "{out}");
    // A paused pipeline is not run.
    let (ok, out, err) = run(gapless(&data).args(["run", "--once"]));
    assert!(ok, "{err}");
    assert!(!out.contains("hourly/insights"), "{out}");
    let (ok, _, err) = run(gapless(&data).args(["pipeline", "resume", "hourly"]));
    assert!(ok, "{err}");
    let (ok, _, err) = run(gapless(&data).args(["pipeline", "resume", "hourly"]));
    assert!(!ok && err.contains("is not paused"), "{err}");

    let (ok, out, err) = run(gapless(&data).args([
        "pipeline",
        "edit",
        "hourly",
        "--name",
        "acme-hourly",
        "--schedule",
        "every 2h",
        "--settle",
        "3",
    ]));
    assert!(ok, "{err}");
    assert!(
        out.contains("every 2h") && out.contains("settle 3"),
        "{out}"
    );
    let (ok, _, err) =
        run(gapless(&data).args(["pipeline", "edit", "acme-hourly", "--schedule", "sometimes"]));
    assert!(!ok && err.contains("neither a cron expression"), "{err}");
    // Sizes past what a pipeline can mean are refused where they are read.
    let (ok, _, err) = run(gapless(&data).args([
        "pipeline",
        "edit",
        "acme-hourly",
        "--schedule",
        "every 1000000y",
    ]));
    assert!(!ok && err.contains("at most 36500 days"), "{err}");
    let (ok, _, err) =
        run(gapless(&data).args(["pipeline", "edit", "acme-hourly", "--settle", "4000000000"]));
    assert!(!ok && err.contains("--settle"), "{err}");

    let (ok, _, err) = run(gapless(&data).args(["pipeline", "delete", "acme-hourly"]));
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, out, err) = run(gapless(&data).args(["pipeline", "delete", "acme-hourly", "--yes"]));
    assert!(ok, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (_, out, _) = run(gapless(&data).args(["pipeline", "list"]));
    assert!(out.contains("no pipelines"), "{out}");
    // The identity it used can be deleted now.
    let (ok, _, err) = run(gapless(&data).args(["identity", "delete", "acme"]));
    assert!(ok, "{err}");
}
