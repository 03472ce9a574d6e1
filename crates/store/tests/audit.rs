//! The audit log on SQLite and PostgreSQL: append-only, chained, and a broken chain found
//! where it breaks.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use gapless_core::{Actor, AuditAction, AuditRecord, Caller, IdentityId};
use gapless_store::{AuditFilter, Store, StoreLocation, testing::TestDatabase};
use sqlx::{Connection, Executor};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()
}

/// A store on a fresh database, and a URL to reach that database behind its back.
struct Backend {
    name: &'static str,
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

async fn backends() -> Vec<Backend> {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sqlite = Store::open(&StoreLocation::Sqlite {
        data_dir: data_dir.clone(),
    })
    .await
    .unwrap();
    let database = TestDatabase::create().await.unwrap();
    let postgres = Store::open(&database.location).await.unwrap();
    let StoreLocation::Postgres { url } = &database.location else {
        unreachable!()
    };
    vec![
        Backend {
            name: "sqlite",
            store: sqlite,
            url: format!("sqlite://{}", data_dir.join("gapless.sqlite").display()),
            _dir: Some(dir),
            _database: None,
        },
        Backend {
            name: "postgres",
            store: postgres,
            url: url.clone(),
            _dir: None,
            _database: Some(database),
        },
    ]
}

fn record(n: i64, identity: IdentityId) -> AuditRecord {
    AuditRecord::new(
        t0() + Duration::minutes(n),
        &Caller::new(Actor::ApiToken("ci".into())).from_address("192.0.2.7"),
        AuditAction::LinkMinted,
        "acme-ads",
    )
    .identity(identity)
    .with("link", format!("link-{n}"))
}

/// Run `sql` on the database directly, with the append-only triggers out of the way (as
/// someone with the database's owner rights could).
async fn tamper(b: &Backend, sql: &'static str) {
    let mut conn = sqlx::AnyConnection::connect(&b.url).await.unwrap();
    if b.name == "sqlite" {
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            .await
            .unwrap();
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
            .await
            .unwrap();
    } else {
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
            .await
            .unwrap();
    }
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_audit_log_is_read_by_identity_and_time_and_its_chain_holds() {
    for b in backends().await {
        let (ana, ben) = (IdentityId::new(), IdentityId::new());
        for n in 0..6 {
            b.store
                .audit(&record(n, if n % 2 == 0 { ana } else { ben }))
                .await
                .unwrap();
        }
        let all = b
            .store
            .audit_entries(&AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6],
            "{}",
            b.name
        );
        assert_eq!(all[0].prev_hash, gapless_store::GENESIS_HASH);
        for pair in all.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "{}", b.name);
        }
        assert_eq!(
            all[0].record,
            record(0, ana),
            "{}: read back as written",
            b.name
        );
        let anas = b
            .store
            .audit_entries(&AuditFilter {
                identity: Some(ana),
                since: Some(t0() + Duration::minutes(1)),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            anas.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 5],
            "{}",
            b.name
        );
        let page = b
            .store
            .audit_entries(&AuditFilter {
                after: Some(4),
                limit: 1,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
        let checked = b.store.verify_audit().await.unwrap();
        assert_eq!(checked.entries, 6, "{}", b.name);
        assert_eq!(checked.broken, None, "{}", b.name);
        assert_eq!(checked.head, Some((6, all[5].hash.clone())), "{}", b.name);
    }
}

#[tokio::test]
async fn the_audit_log_refuses_updates_and_deletes() {
    for b in backends().await {
        b.store.audit(&record(0, IdentityId::new())).await.unwrap();
        let mut conn = sqlx::AnyConnection::connect(&b.url).await.unwrap();
        for sql in [
            "UPDATE audit_log SET subject = 'someone else'",
            "DELETE FROM audit_log",
        ] {
            let refused = conn.execute(sql).await.unwrap_err().to_string();
            assert!(
                refused.contains("append-only"),
                "{}: {sql}: {refused}",
                b.name
            );
        }
        assert_eq!(b.store.verify_audit().await.unwrap().entries, 1);
    }
}

#[tokio::test]
async fn an_edited_entry_is_found_by_verify() {
    for b in backends().await {
        for n in 0..4 {
            b.store.audit(&record(n, IdentityId::new())).await.unwrap();
        }
        tamper(&b, "UPDATE audit_log SET actor = 'nobody' WHERE seq = 3").await;
        let broken = b.store.verify_audit().await.unwrap().broken.unwrap();
        assert_eq!(broken.seq, 3, "{}", b.name);
        assert!(
            broken.problem.contains("edited"),
            "{}: {}",
            b.name,
            broken.problem
        );
    }
}

#[tokio::test]
async fn a_removed_entry_is_found_by_verify() {
    for b in backends().await {
        for n in 0..4 {
            b.store.audit(&record(n, IdentityId::new())).await.unwrap();
        }
        tamper(&b, "DELETE FROM audit_log WHERE seq = 2").await;
        let checked = b.store.verify_audit().await.unwrap();
        let broken = checked.broken.unwrap();
        assert_eq!((broken.seq, checked.entries), (3, 1), "{}", b.name);
        assert!(
            broken.problem.contains("missing"),
            "{}: {}",
            b.name,
            broken.problem
        );
    }
}

#[tokio::test]
async fn a_removed_first_entry_and_a_rewritten_chain_are_found_by_verify() {
    for b in backends().await {
        for n in 0..3 {
            b.store.audit(&record(n, IdentityId::new())).await.unwrap();
        }
        tamper(&b, "DELETE FROM audit_log WHERE seq = 1").await;
        let broken = b.store.verify_audit().await.unwrap().broken.unwrap();
        assert_eq!(broken.seq, 2, "{}", b.name);
        // Renumbering the rest to hide the gap breaks their links instead.
        tamper(&b, "UPDATE audit_log SET seq = seq - 1").await;
        let broken = b.store.verify_audit().await.unwrap().broken.unwrap();
        assert_eq!(broken.seq, 1, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_two_instances_at_once_make_one_unbroken_chain() {
    for b in backends().await {
        if b.name != "postgres" {
            continue;
        }
        let other = Store::open(&StoreLocation::Postgres { url: b.url.clone() })
            .await
            .unwrap();
        let identity = IdentityId::new();
        let mut tasks = Vec::new();
        for (instance, store) in [(0, b.store.clone()), (1, other.clone())] {
            for n in 0..100 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    store.audit(&record(instance * 100 + n, identity)).await
                }));
            }
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Once every write has returned, its entry is chained (by its own task or by the
        // one sealing then): nothing is left for a reader to chain.
        let mut conn = sqlx::AnyConnection::connect(&b.url).await.unwrap();
        let pending: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM audit_pending")
                .fetch_one(&mut conn)
                .await
                .unwrap(),
            "n",
        );
        conn.close().await.unwrap();
        assert_eq!(pending, 0);
        let checked = b.store.verify_audit().await.unwrap();
        assert_eq!(checked.broken, None);
        assert_eq!(checked.entries, 200);
        // Each entry once: the sealers of the two instances never took one twice.
        let entries = b
            .store
            .audit_entries(&AuditFilter {
                limit: 1_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut links: Vec<_> = entries
            .iter()
            .map(|e| e.record.detail["link"].as_str().unwrap().to_string())
            .collect();
        links.sort();
        links.dedup();
        assert_eq!(links.len(), 200);
    }
}

#[tokio::test]
async fn an_entry_left_pending_by_a_process_that_died_is_chained_by_the_next_reader() {
    for b in backends().await {
        let identity = IdentityId::new();
        b.store.audit(&record(1, identity)).await.unwrap();
        // A process committed its change and entry, then died before chaining it.
        let mut conn = sqlx::AnyConnection::connect(&b.url).await.unwrap();
        conn.execute(
            "INSERT INTO audit_pending (at, actor_kind, actor, source, action, identity_id, subject, detail) \
             VALUES ('2026-12-01T09:00:00.000000Z', 'cli', 'ana', NULL, 'key_added', NULL, 'acme-ads', '{}')",
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
        let entries = b
            .store
            .audit_entries(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(entries.len(), 2, "{}", b.name);
        assert_eq!(entries[1].seq, 2, "{}", b.name);
        assert_eq!(entries[1].record.subject, "acme-ads", "{}", b.name);
        assert_eq!(entries[1].prev_hash, entries[0].hash, "{}", b.name);
        let checked = b.store.verify_audit().await.unwrap();
        assert_eq!((checked.entries, checked.broken), (2, None), "{}", b.name);
        // Nothing is left to chain, and chaining again adds nothing.
        assert_eq!(b.store.seal_audit().await.unwrap(), 0, "{}", b.name);
    }
}
