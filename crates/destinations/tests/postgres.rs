//! The PostgreSQL destination against a private cluster with password authentication:
//! replace-window loads, the privilege probe, and a password change classified by SQLSTATE.

#![allow(clippy::unwrap_used)]

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use gapless_core::{
    Column, ColumnKind, FailureCause, PipelineId, ReauthReason, Row, StreamSchema, Value, Window,
};
use gapless_destinations::{Destination, PostgresDestination, PostgresTarget};
use gapless_store::testing::PrivatePostgres;
use gapless_vault::Password;

fn schema() -> StreamSchema {
    let col = |name: &str, kind| Column {
        name: name.into(),
        kind,
    };
    StreamSchema {
        name: "insights".into(),
        columns: vec![
            col("date", ColumnKind::Date),
            col("campaign_id", ColumnKind::Text),
            col("clicks", ColumnKind::Integer),
            col("spend", ColumnKind::Decimal),
        ],
        primary_key: vec!["date".into(), "campaign_id".into()],
    }
}

fn row(campaign: &str, clicks: i64, spend: &str) -> Row {
    vec![
        Value::Date(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()),
        Value::Text(campaign.into()),
        Value::Integer(clicks),
        Value::Text(spend.into()),
    ]
}

fn window() -> Window {
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
    Window::new(start, start + Duration::days(1))
}

/// A destination writing into `schema` of `db` (the shared test server trusts local
/// connections: any password does; each call is another destination, as another task or
/// instance has).
fn on_test_server(db: &gapless_store::testing::TestDatabase, schema: &str) -> PostgresDestination {
    let target = PostgresTarget {
        url: db.url().into(),
        schema: schema.into(),
    };
    PostgresDestination::new(&target, "root", &Password::new("unused".into())).unwrap()
}

#[tokio::test]
async fn postgres_destination_replaces_windows_probes_privileges_and_classifies_a_password_change()
{
    let cluster = PrivatePostgres::start().await.unwrap();
    cluster
        .admin_sql(
            "postgres",
            "CREATE ROLE loader LOGIN PASSWORD 'first-password'",
        )
        .await
        .unwrap();
    cluster
        .admin_sql("postgres", "CREATE DATABASE dw OWNER loader")
        .await
        .unwrap();
    let target = PostgresTarget {
        url: cluster.url("loader", None, "dw"),
        schema: "reports".into(),
    };
    let dest = PostgresDestination::new(&target, "loader", &Password::new("first-password".into()))
        .unwrap();
    dest.probe().await.unwrap();
    let p = PipelineId::new();
    dest.load_window(
        p,
        &schema(),
        window(),
        &[row("a", 1, "1.10"), row("b", 2, "2.00")],
    )
    .await
    .unwrap();
    // A settle re-pull with restated numbers replaces the window: no duplicates.
    dest.load_window(p, &schema(), window(), &[row("a", 3, "12.30")])
        .await
        .unwrap();
    dest.load_window(p, &schema(), window(), &[row("a", 3, "12.30")])
        .await
        .unwrap();
    assert_eq!(
        dest.read_window(p, &schema(), window()).await.unwrap(),
        vec![row("a", 3, "12.30")]
    );

    // Lost privilege: the probe says so with the SQLSTATE.
    cluster
        .admin_sql("dw", "REVOKE CREATE ON SCHEMA reports FROM loader; ALTER SCHEMA reports OWNER TO gapless_admin;")
        .await
        .unwrap();
    let failure = dest.probe().await.unwrap_err();
    assert_eq!(failure.cause, FailureCause::PermissionLost);
    assert_eq!(failure.provider_code.as_deref(), Some("42501"));
    cluster
        .admin_sql("dw", "GRANT USAGE, CREATE ON SCHEMA reports TO loader")
        .await
        .unwrap();
    dest.probe().await.unwrap();

    // The password changes: a new connection is refused with 28P01.
    cluster
        .admin_sql("postgres", "ALTER ROLE loader PASSWORD 'second-password'")
        .await
        .unwrap();
    // The destination that holds a connection from before notices it on its next probe.
    let failure = dest.probe().await.unwrap_err();
    assert_eq!(
        failure.cause,
        FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials
        }
    );
    assert_eq!(failure.provider_code.as_deref(), Some("28P01"));
    assert!(!format!("{failure:?}").contains("first-password"));
    let renewed =
        PostgresDestination::new(&target, "loader", &Password::new("second-password".into()))
            .unwrap();
    assert_eq!(
        renewed.read_window(p, &schema(), window()).await.unwrap(),
        vec![row("a", 3, "12.30")],
        "nothing was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_window_leave_one_copy_of_its_rows() {
    let db = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    // One destination per loader, as two tasks or two instances have.
    let open = || on_test_server(&db, "race");
    let p = PipelineId::new();
    // Create the table first, so the race is about the window, not the table.
    open()
        .load_window(p, &schema(), window(), &[row("a", 1, "1.00")])
        .await
        .unwrap();
    let rows: Vec<Row> = (0..200).map(|i| row(&format!("c{i}"), i, "1.00")).collect();
    let loaders: Vec<_> = (0..4).map(|_| std::sync::Arc::new(open())).collect();
    for round in 0..10 {
        let loads: Vec<_> = loaders
            .iter()
            .map(|dest| {
                let dest = dest.clone();
                let rows = rows.clone();
                tokio::spawn(async move { dest.load_window(p, &schema(), window(), &rows).await })
            })
            .collect();
        for load in loads {
            load.await.unwrap().unwrap();
        }
        let loaded = open().read_window(p, &schema(), window()).await.unwrap();
        assert_eq!(
            loaded.len(),
            rows.len(),
            "round {round}: one copy of the window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_loaded_at_once_into_a_table_not_made_yet_both_load() {
    let db = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    let p = PipelineId::new();
    let day = |n: i64| {
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap() + Duration::days(n);
        Window::new(start, start + Duration::days(1))
    };
    // Each round a new schema: one destination loading two windows at once (as the engine
    // does for a request), and two destinations (two instances) loading one each.
    for round in 0..5 {
        let open = || on_test_server(&db, &format!("fresh_{round}"));
        let one = std::sync::Arc::new(open());
        let other = std::sync::Arc::new(open());
        assert!(
            one.parallel_loads() > 1,
            "loads windows of a request at once"
        );
        let loads: Vec<_> = [(one.clone(), 0), (one.clone(), 1), (other, 2)]
            .into_iter()
            .map(|(dest, n)| {
                tokio::spawn(async move {
                    dest.load_window(p, &schema(), day(n), &[row("a", n, "1.00")])
                        .await
                })
            })
            .collect();
        for load in loads {
            load.await.unwrap().unwrap();
        }
        for n in 0..3 {
            let loaded = one.read_window(p, &schema(), day(n)).await.unwrap();
            assert_eq!(loaded.len(), 1, "round {round}, window {n}");
        }
    }
}

#[tokio::test]
async fn a_load_after_the_server_closed_the_destinations_connections_goes_through() {
    let db = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    let dest = on_test_server(&db, "restart");
    let p = PipelineId::new();
    dest.load_window(p, &schema(), window(), &[row("a", 1, "1.00")])
        .await
        .unwrap();
    // The server ends every other session of the database (as a restart would).
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    dest.load_window(p, &schema(), window(), &[row("b", 2, "2.00")])
        .await
        .unwrap();
    let loaded = dest.read_window(p, &schema(), window()).await.unwrap();
    assert_eq!(loaded, vec![row("b", 2, "2.00")]);
}

#[tokio::test]
async fn awkward_text_round_trips_the_window_delete_has_an_index_and_a_dropped_table_comes_back() {
    use sqlx::{Connection, Row as _};
    let db = gapless_store::testing::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url();
    let target = PostgresTarget {
        url: url.into(),
        schema: "copy".into(),
    };
    let dest = PostgresDestination::new(&target, "root", &Password::new(String::new())).unwrap();
    let p = PipelineId::new();
    let awkward = vec![
        row("tab\there", 1, "1.50"),
        row("line\nbreak and \\N and back\\slash", 2, "2"),
        row(
            "carriage\rreturn, \"quotes\", 'single' and ünïcödé",
            3,
            "-0.25",
        ),
        vec![
            Value::Date(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()),
            Value::Text("nulls".into()),
            Value::Null,
            Value::Null,
        ],
    ];
    dest.load_window(p, &schema(), window(), &awkward)
        .await
        .unwrap();
    let mut expected = awkward.clone();
    expected.sort_by_key(|r| format!("{:?}", r[1]));
    assert_eq!(
        dest.read_window(p, &schema(), window()).await.unwrap(),
        expected
    );
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN DELETE FROM copy.insights WHERE _gapless_pipeline = 'x' AND _gapless_window_start = 'y'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    assert!(
        plan.iter()
            .any(|line| line.contains("insights_gapless_window")),
        "{plan:#?}"
    );
    // A large window goes in by COPY: the same text survives it.
    let large: Vec<Row> = (0..2_500)
        .map(|i| {
            let mut r = awkward[i % 4].clone();
            r[1] = Value::Text(format!(
                "{i:05} {}",
                match &r[1] {
                    Value::Text(t) => t.clone(),
                    _ => String::new(),
                }
            ));
            r
        })
        .collect();
    dest.load_window(p, &schema(), window(), &large)
        .await
        .unwrap();
    let mut expected = large.clone();
    expected.sort_by_key(|r| format!("{:?}", r[1]));
    assert_eq!(
        dest.read_window(p, &schema(), window()).await.unwrap(),
        expected
    );
    // Someone drops the table: one load fails, the next makes it again.
    sqlx::query("DROP TABLE copy.insights")
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = dest
        .load_window(p, &schema(), window(), &awkward)
        .await
        .unwrap_err();
    assert_eq!(
        (refused.cause, refused.provider_code.as_deref()),
        (gapless_core::FailureCause::Transient, Some("42P01")),
        "a table dropped under the destination is retried, not blamed on the identity: {refused:?}"
    );
    dest.load_window(p, &schema(), window(), &awkward)
        .await
        .unwrap();
    assert_eq!(
        dest.read_window(p, &schema(), window())
            .await
            .unwrap()
            .len(),
        4
    );
}

/// A warehouse whose certificate a private CA signed: loads go over verified TLS when the
/// destination's URL names that CA (`sslrootcert`); without it the probe fails with the
/// reason, and nothing is loaded.
#[tokio::test]
async fn postgres_destination_trusts_a_private_ca_named_in_its_url_and_no_other() {
    let cluster = PrivatePostgres::start_tls().await.unwrap();
    let ca = cluster.ca_certificate.clone().unwrap();
    cluster
        .admin_sql(
            "postgres",
            "CREATE ROLE loader LOGIN PASSWORD 'tls-password'",
        )
        .await
        .unwrap();
    cluster
        .admin_sql("postgres", "CREATE DATABASE dw OWNER loader")
        .await
        .unwrap();
    let password = Password::new("tls-password".into());
    let base = cluster.url("loader", None, "dw");
    let trusted = PostgresTarget {
        url: format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display()),
        schema: "reports".into(),
    };
    let dest = PostgresDestination::new(&trusted, "loader", &password).unwrap();
    dest.probe().await.unwrap();
    let p = PipelineId::new();
    dest.load_window(p, &schema(), window(), &[row("a", 1, "1.10")])
        .await
        .unwrap();
    assert_eq!(
        dest.read_window(p, &schema(), window()).await.unwrap(),
        vec![row("a", 1, "1.10")]
    );

    let untrusted = PostgresTarget {
        url: format!("{base}?sslmode=verify-full"),
        schema: "reports".into(),
    };
    let dest = PostgresDestination::new(&untrusted, "loader", &password).unwrap();
    let failure = dest.probe().await.unwrap_err();
    let said = format!("{failure:?}");
    assert!(said.contains("UnknownIssuer"), "{said}");
    assert!(!said.contains("tls-password"), "{said}");
}
