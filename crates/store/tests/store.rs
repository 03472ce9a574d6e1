//! The store suite: every test runs against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `GAPLESS_TEST_POSTGRES` (default
//! `postgres://root@127.0.0.1:5432/test`); each test creates and drops its own database.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use gapless_core::{
    Delivery, DeliveryState, FailedOperation, Failure, FailureCause, Health, HealthEvent, Identity,
    IdentityId, Incident, IncidentId, IncidentState, LedgerEntry, MissingReason, Notification,
    NotificationId, NotificationKind, Pipeline, PipelineId, PipelineState, ReauthReason, Window,
    WindowSize, WindowState,
};
use gapless_store::{
    CredentialUpdate, HealthChange, IncidentChange, LeaseRequest, NewIdentity, RefreshStart, Store,
    StoreError, StoreLocation, testing::TestDatabase,
};
use gapless_vault::{KeyVersion, Sealed};

/// A change of trust made by a test.
fn audit() -> gapless_core::AuditRecord {
    gapless_core::AuditRecord::new(
        t0(),
        &gapless_core::Caller::new(gapless_core::Actor::Cli("test".into())),
        gapless_core::AuditAction::IdentityCreated,
        "test",
    )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
}

/// A store on a fresh database.
struct Backend {
    name: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&StoreLocation::Sqlite {
        data_dir: dir.path().join("data"),
    })
    .await
    .unwrap();
    let database = TestDatabase::create().await.unwrap();
    let postgres = Store::open(&database.location).await.unwrap();
    vec![
        Backend {
            name: "sqlite",
            store: sqlite,
            _dir: Some(dir),
            _database: None,
        },
        Backend {
            name: "postgres",
            store: postgres,
            _dir: None,
            _database: Some(database),
        },
    ]
}

fn identity(label: &str) -> NewIdentity {
    let id = IdentityId::new();
    NewIdentity {
        identity: Identity {
            id,
            provider: "sandbox".into(),
            label: label.into(),
            upstream_account_id: Some("u_100".into()),
            upstream_account_name: Some("Ana Example".into()),
            scopes: vec!["ads_read".into()],
            owners: vec!["ana@example.com".into()],
            granted_at: Some(t0()),
            access_expires_at: Some(t0() + Duration::hours(1)),
            refresh_expires_at: None,
            authorization_expires_at: None,
            token_obtained_at: Some(t0()),
            refresh_in_flight_since: None,
            last_probe_at: None,
            health: Health::Healthy,
            allow_any_account: false,
            settings: Default::default(),
            created_at: t0(),
            updated_at: t0(),
        },
        sealed: Sealed {
            key_version: KeyVersion(3),
            ciphertext: vec![0, 1, 2, 255, 254],
        },
        next_probe_due: None,
        access_renews: None,
    }
}

fn pipeline(name: &str, source: IdentityId) -> Pipeline {
    Pipeline {
        id: PipelineId::new(),
        name: name.into(),
        source_identity: source,
        source_resource: "act_1001".into(),
        streams: vec!["insights".into()],
        destination_kind: "sqlite".into(),
        destination_target: "warehouse.sqlite".into(),
        destination_identity: None,
        window: WindowSize::DAY,
        settle_windows: 2,
        schedule: None,
        time_zone: gapless_core::Tz::UTC,
        start: t0(),
        state: PipelineState::Active,
    }
}

fn revoked() -> Failure {
    Failure::new(FailureCause::ReauthRequired {
        reason: ReauthReason::Revoked,
    })
    .with_code("190/458")
}

fn notification(incident: Option<IncidentId>, key: &str) -> Notification {
    Notification {
        id: NotificationId::new(),
        incident,
        kind: NotificationKind::AuthorizationFailure,
        dedupe_key: key.into(),
        channel: "file".into(),
        recipients: vec!["ana@example.com".into()],
        subject: "Authorization Failure".into(),
        body_text: "text".into(),
        body_html: "<p>html</p>".into(),
        message_id: format!("<{key}@gapless>"),
        created_at: t0(),
        delivery: Delivery::pending(t0()),
    }
}

#[tokio::test]
async fn identities_round_trip_with_their_sealed_credential() {
    for b in backends().await {
        let new = identity("ana-ads");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let back = b.store.identity(new.identity.id).await.unwrap();
        assert_eq!(back, new.identity, "{}", b.name);
        assert_eq!(
            b.store.find_identity("ana-ads").await.unwrap().id,
            new.identity.id
        );
        let (sealed, generation) = b.store.sealed_credential(new.identity.id).await.unwrap();
        assert_eq!(sealed, new.sealed, "{}", b.name);
        assert_eq!(generation, 1);
        let err = b
            .store
            .insert_identity(&identity("ana-ads"), &audit())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("\"ana-ads\" already exists"),
            "{}: {err}",
            b.name
        );
        assert!(matches!(
            b.store.find_identity("nobody").await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
    }
}

#[tokio::test]
async fn credential_updates_are_fenced_by_generation() {
    for b in backends().await {
        let new = identity("fenced");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let update = |expected| CredentialUpdate {
            sealed: Sealed {
                key_version: KeyVersion(3),
                ciphertext: vec![9; 40],
            },
            expected_generation: expected,
            access_expires_at: Some(t0() + Duration::hours(2)),
            refresh_expires_at: None,
            scopes: None,
            granted_at: None,
            authorization_expires_at: None,
            lease: None,
            upstream_account: None,
            access_renews: Some(true),
        };
        assert_eq!(
            b.store
                .update_credential(id, &update(1), t0(), &audit())
                .await
                .unwrap(),
            2
        );
        // A writer holding generation 1 lost the race: refused, nothing overwritten.
        let err = b
            .store
            .update_credential(id, &update(1), t0(), &audit())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{}: {err}", b.name);
        let (sealed, generation) = b.store.sealed_credential(id).await.unwrap();
        assert_eq!((sealed.ciphertext.len(), generation), (40, 2));
        assert_eq!(
            b.store.identity(id).await.unwrap().access_expires_at,
            Some(t0() + Duration::hours(2))
        );
    }
}

#[tokio::test]
async fn a_health_change_opens_one_incident_pauses_pipelines_and_queues_mail_atomically() {
    for b in backends().await {
        let new = identity("broken");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("acme-daily", id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();

        let transition = Health::Healthy
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                t0(),
            )
            .unwrap();
        let incident = Incident {
            id: IncidentId::new(),
            identity: id,
            failure: revoked(),
            opened_at: t0(),
            closed_at: None,
            affected_pipelines: vec![p.id],
            origin: Some(FailedOperation {
                pipeline: p.id,
                resource: "act_1".into(),
                stream: "insights".into(),
            }),
            recovering_since: None,
            reopened: 0,
        };
        let change = HealthChange {
            identity: id,
            transition: transition.clone(),
            at: t0(),
            incident: IncidentChange::Open(incident.clone()),
            pipelines: vec![(p.id, PipelineState::WaitingForIdentity { identity: id })],
            notifications: vec![notification(Some(incident.id), "incident-1/failure")],
            reauth_links: vec![],
            credential: None,
            ledger: vec![],
            backfill: false,
            audit: vec![],
            fence: None,
        };
        b.store.apply_health(&change).await.unwrap();
        assert_eq!(
            b.store.identity(id).await.unwrap().health.name(),
            "needs_reauth"
        );
        assert_eq!(
            b.store.open_incident_id(id).await.unwrap(),
            Some(incident.id)
        );
        assert_eq!(
            b.store.pipeline(p.id).await.unwrap().state,
            PipelineState::WaitingForIdentity { identity: id }
        );
        assert_eq!(b.store.due_notifications(t0(), 10).await.unwrap().len(), 1);

        // The same change again was decided on a health that is no more: refused whole.
        let stale = b.store.apply_health(&change).await.unwrap_err();
        assert!(
            matches!(stale, StoreError::StaleHealth { .. }),
            "{}: {stale}",
            b.name
        );
        // A second incident for the same identity is refused and the whole change with it:
        // no second notification, no health row change.
        let mut again = change.clone();
        again.transition = transition
            .to
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                t0(),
            )
            .unwrap();
        again.incident = IncidentChange::Open(Incident {
            id: IncidentId::new(),
            ..incident.clone()
        });
        again.notifications = vec![notification(None, "incident-2/failure")];
        let err = b.store.apply_health(&again).await.unwrap_err();
        assert!(
            err.to_string().contains("already has an open incident"),
            "{}: {err}",
            b.name
        );
        assert_eq!(
            b.store.due_notifications(t0(), 10).await.unwrap().len(),
            1,
            "{}",
            b.name
        );

        // Same dedupe key twice: one message.
        b.store
            .enqueue_notification(&notification(Some(incident.id), "incident-1/failure"))
            .await
            .unwrap();
        assert_eq!(b.store.due_notifications(t0(), 10).await.unwrap().len(), 1);

        let history = b.store.health_history(id).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].1.as_str(), history[0].2.as_str()),
            ("healthy", "needs_reauth")
        );

        // Recovery: the incident recovers in the swap's transaction…
        let back = transition
            .to
            .apply(&HealthEvent::Reauthorized, t0())
            .unwrap();
        b.store
            .apply_health(&HealthChange {
                identity: id,
                transition: back.clone(),
                at: t0() + Duration::days(3),
                incident: IncidentChange::Recover,
                pipelines: vec![(p.id, PipelineState::Active)],
                notifications: vec![],
                reauth_links: vec![],
                credential: None,
                ledger: vec![],
                backfill: false,
                audit: vec![],
                fence: None,
            })
            .await
            .unwrap();
        let recovering = b.store.incident(incident.id).await.unwrap();
        assert_eq!(recovering.state(), IncidentState::Recovering, "{}", b.name);
        assert_eq!(recovering.origin, incident.origin, "{}", b.name);
        assert_eq!(b.store.recovering_incidents().await.unwrap().len(), 1);
        // …and closes with its recovery notice in one transaction, once.
        let recovery = notification(Some(incident.id), "incident-1/recovery");
        let at = t0() + Duration::days(3) + Duration::hours(1);
        assert!(
            b.store
                .finish_recovery(incident.id, at, std::slice::from_ref(&recovery))
                .await
                .unwrap()
        );
        assert!(
            !b.store
                .finish_recovery(incident.id, at, std::slice::from_ref(&recovery))
                .await
                .unwrap(),
            "{}: a finished recovery is not finished twice",
            b.name
        );
        assert_eq!(b.store.open_incident_id(id).await.unwrap(), None);
        assert!(b.store.recovering_incidents().await.unwrap().is_empty());
        let incidents = b.store.incidents(Some(id)).await.unwrap();
        assert_eq!(incidents[0].closed_at, Some(at));
        assert_eq!(b.store.due_notifications(at, 10).await.unwrap().len(), 2);

        // Failing again soon after: the same incident continues, counted.
        let failing = back
            .to
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                at,
            )
            .unwrap();
        b.store
            .apply_health(&HealthChange {
                identity: id,
                transition: failing,
                at,
                incident: IncidentChange::Reopen {
                    id: incident.id,
                    failure: revoked(),
                    origin: None,
                    affected: incident.affected_pipelines.clone(),
                },
                pipelines: vec![],
                notifications: vec![],
                reauth_links: vec![],
                credential: None,
                ledger: vec![],
                backfill: false,
                audit: vec![],
                fence: None,
            })
            .await
            .unwrap();
        let reopened = b.store.latest_incident(id).await.unwrap().unwrap();
        assert_eq!(reopened.id, incident.id);
        assert_eq!(reopened.state(), IncidentState::Open, "{}", b.name);
        assert_eq!(reopened.reopened, 1);
        assert_eq!(reopened.origin, None);
    }
}

#[tokio::test]
async fn deleting_an_identity_in_use_is_refused_and_names_the_pipelines() {
    for b in backends().await {
        let new = identity("in-use");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        b.store
            .insert_pipeline(&pipeline("zeta", id), t0())
            .await
            .unwrap();
        b.store
            .insert_pipeline(&pipeline("alpha", id), t0())
            .await
            .unwrap();
        let err = b.store.delete_identity(id, &audit()).await.unwrap_err();
        assert!(err.to_string().contains("alpha, zeta"), "{}: {err}", b.name);
        assert!(b.store.identity(id).await.is_ok());
        let free = identity("free");
        b.store.insert_identity(&free, &audit()).await.unwrap();
        b.store
            .delete_identity(free.identity.id, &audit())
            .await
            .unwrap();
        assert!(
            matches!(
                b.store.identity(free.identity.id).await,
                Err(StoreError::NotFound { .. })
            ),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_run_counts_as_a_probe_only_when_the_identity_reads_no_other_resource() {
    for b in backends().await {
        let (one, two) = (identity("one-resource"), identity("two-resources"));
        for new in [&one, &two] {
            b.store.insert_identity(new, &audit()).await.unwrap();
            b.store
                .insert_pipeline(
                    &pipeline(&format!("{}-a", new.identity.label), new.identity.id),
                    t0(),
                )
                .await
                .unwrap();
        }
        let other = Pipeline {
            source_resource: "act_1002".into(),
            ..pipeline("two-resources-b", two.identity.id)
        };
        b.store.insert_pipeline(&other, t0()).await.unwrap();
        // Found by the index while never probed.
        let due = b.store.identities_probe_due(t0()).await.unwrap().identities;
        assert_eq!(due.len(), 2, "{}", b.name);

        let at = t0() + Duration::hours(2);
        for new in [&one, &two] {
            b.store
                .record_proven(new.identity.id, "act_1001", at, at + Duration::hours(1))
                .await
                .unwrap();
        }
        let store = &b.store;
        let probed = |id| async move { store.identity(id).await.unwrap().last_probe_at };
        assert_eq!(probed(one.identity.id).await, Some(at), "{}", b.name);
        // act_1002 still waits for its probe.
        assert_eq!(probed(two.identity.id).await, None, "{}", b.name);
        // Never moved back.
        b.store
            .record_proven(one.identity.id, "act_1001", t0(), t0() + Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(probed(one.identity.id).await, Some(at), "{}", b.name);
        let due = b
            .store
            .identities_probe_due(at + Duration::minutes(30))
            .await
            .unwrap()
            .identities;
        assert_eq!(
            due.iter().map(|i| i.label.as_str()).collect::<Vec<_>>(),
            ["two-resources"],
            "{}",
            b.name
        );
        // A due time learned for a row probed since (another last probe) is not written;
        // one for the row as read is, and the identity is then not read before it.
        b.store
            .set_probe_due(two.identity.id, Some(t0()), at)
            .await
            .unwrap();
        assert_eq!(
            b.store
                .identities_probe_due(at)
                .await
                .unwrap()
                .identities
                .len(),
            1,
            "{}",
            b.name
        );
        b.store
            .set_probe_due(two.identity.id, None, at + Duration::hours(1))
            .await
            .unwrap();
        assert!(
            b.store
                .identities_probe_due(at + Duration::minutes(30))
                .await
                .unwrap()
                .identities
                .is_empty(),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn ledger_upserts_windows_and_keeps_their_history() {
    for b in backends().await {
        let new = identity("ledger");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("ledger-p", new.identity.id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();
        let window = Window::new(t0(), t0() + Duration::days(1));
        let missing = LedgerEntry {
            pipeline: p.id,
            stream: "insights".into(),
            window,
            state: WindowState::Missing {
                reason: MissingReason::IdentityBroken {
                    identity: new.identity.id,
                    cause: revoked().cause,
                    since: t0(),
                },
                since: t0(),
            },
            attempts: 1,
            updated_at: t0() + Duration::days(1),
        };
        b.store
            .record_windows(std::slice::from_ref(&missing))
            .await
            .unwrap();
        let loaded = LedgerEntry {
            state: WindowState::Loaded {
                at: t0() + Duration::days(3),
                rows: 4,
                attempt: 2,
            },
            attempts: 2,
            updated_at: t0() + Duration::days(3),
            ..missing.clone()
        };
        b.store
            .record_windows(std::slice::from_ref(&loaded))
            .await
            .unwrap();
        let ledger = b.store.ledger(p.id).await.unwrap();
        assert_eq!(ledger, vec![loaded], "{}", b.name);
        let history = b
            .store
            .window_history(p.id, "insights", t0())
            .await
            .unwrap();
        let states: Vec<_> = history.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(states, vec!["missing", "loaded"]);
    }
}

/// An identity broken since t0, a pipeline of it claimed by "run" at t0 + 1 s, and what
/// the tests of a recovery's back-fill need around them.
struct Recovering {
    id: IdentityId,
    pipeline: Pipeline,
    claim: gapless_store::PipelineClaim,
    /// The failure's transition (to the broken health).
    failing: gapless_core::Transition,
}

impl Recovering {
    async fn new(b: &Backend, label: &str) -> Self {
        let new = identity(label);
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let pipeline = pipeline(&format!("{label}-p"), id);
        b.store.insert_pipeline(&pipeline, t0()).await.unwrap();
        let failing = b
            .store
            .identity(id)
            .await
            .unwrap()
            .health
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                t0(),
            )
            .unwrap();
        b.store
            .apply_health(&HealthChange::transition_only(id, failing.clone(), t0()))
            .await
            .unwrap();
        let claim = b
            .store
            .claim_due_pipelines("run", t0() + Duration::seconds(1), Duration::days(60), 1)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.claim.pipeline == pipeline.id)
            .expect("the new pipeline is due")
            .claim;
        Self {
            id,
            pipeline,
            claim,
            failing,
        }
    }

    /// Day `day`'s window, missing because the identity is broken.
    fn broken(&self, day: i64) -> LedgerEntry {
        LedgerEntry {
            state: WindowState::Missing {
                reason: MissingReason::IdentityBroken {
                    identity: self.id,
                    cause: revoked().cause,
                    since: t0(),
                },
                since: t0(),
            },
            ..loaded(&self.pipeline, day)
        }
    }

    /// Day `day`'s window, awaiting the back-fill since `now`.
    fn awaiting(&self, day: i64, now: DateTime<Utc>) -> LedgerEntry {
        LedgerEntry {
            state: WindowState::Missing {
                reason: MissingReason::AwaitingBackfill {
                    identity: self.id,
                    since: now,
                },
                since: now,
            },
            updated_at: now,
            ..self.broken(day)
        }
    }

    /// The recovering change at `now`: healthy again, its pipeline's windows missing
    /// because it was broken now awaiting the back-fill.
    fn recovery(&self, now: DateTime<Utc>) -> HealthChange {
        let back = self
            .failing
            .to
            .apply(&HealthEvent::Reauthorized, now)
            .unwrap();
        let mut change = HealthChange::transition_only(self.id, back, now);
        change.backfill = true;
        change
    }

    /// The states day `day`'s window went through.
    async fn history(&self, b: &Backend, day: i64) -> Vec<String> {
        b.store
            .window_history(self.pipeline.id, "insights", t0() + Duration::days(day))
            .await
            .unwrap()
            .into_iter()
            .map(|(_, state)| state)
            .collect()
    }
}

/// Another instance's run records a window lost after the recovery's change was built and
/// before it commits: the recovery sets only the windows still missing because the
/// identity was broken awaiting the back-fill; the lost one stays lost.
#[tokio::test]
async fn a_window_recorded_lost_before_a_recovery_commits_stays_lost() {
    for b in backends().await {
        let r = Recovering::new(&b, "recovering").await;
        b.store
            .record_windows(&[r.broken(0), r.broken(1)])
            .await
            .unwrap();
        let now = t0() + Duration::days(40);
        let recovery = r.recovery(now);
        let lost = LedgerEntry {
            state: WindowState::Lost {
                at: now,
                reason: None,
            },
            updated_at: now,
            ..r.broken(0)
        };
        b.store
            .record_windows(std::slice::from_ref(&lost))
            .await
            .unwrap();
        b.store.apply_health(&recovery).await.unwrap();
        let ledger = b.store.ledger(r.pipeline.id).await.unwrap();
        assert_eq!(ledger, vec![lost, r.awaiting(1, now)], "{}", b.name);
        assert_eq!(r.history(&b, 0).await, ["missing", "lost"], "{}", b.name);
        assert_eq!(r.history(&b, 1).await, ["missing", "missing"], "{}", b.name);
    }
}

/// A run that read the identity broken, and records the windows it leaves missing only
/// after a recovery committed, writes nothing: the windows the recovery set awaiting the
/// back-fill keep that state (not "missing because the identity is broken" again), and no
/// stale window is added.
#[tokio::test]
async fn a_run_that_read_the_broken_health_before_a_recovery_writes_no_window_after_it() {
    for b in backends().await {
        let r = Recovering::new(&b, "stale-run").await;
        b.store
            .record_windows(std::slice::from_ref(&r.broken(0)))
            .await
            .unwrap();
        let read = b.store.identity(r.id).await.unwrap().health;
        let now = t0() + Duration::days(2);
        b.store.apply_health(&r.recovery(now)).await.unwrap();
        let written = b
            .store
            .record_windows_while(&r.claim, now, &[r.broken(0), r.broken(1)], r.id, &read)
            .await
            .unwrap();
        assert!(!written, "{}", b.name);
        let ledger = b.store.ledger(r.pipeline.id).await.unwrap();
        assert_eq!(ledger, vec![r.awaiting(0, now)], "{}", b.name);
    }
}

/// On PostgreSQL a run's write of the windows a broken identity leaves missing waits while
/// a recovery holds the identity's row, then sees the recovered health and writes nothing.
#[tokio::test]
async fn a_run_recording_missing_windows_waits_for_a_recovery_that_holds_the_identity() {
    use sqlx::{Connection, Executor};
    let Some(b) = backends().await.into_iter().find(|b| b.name == "postgres") else {
        panic!("no PostgreSQL backend");
    };
    let r = Recovering::new(&b, "held").await;
    let read = b.store.identity(r.id).await.unwrap().health;
    let Some(StoreLocation::Postgres { url }) = b._database.as_ref().map(|d| d.location.clone())
    else {
        panic!("the PostgreSQL backend has no database");
    };
    // The recovery: the identity's row held, as `apply_health` holds it.
    let mut recovery = sqlx::PgConnection::connect(&url).await.unwrap();
    recovery.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM identities WHERE id = $1 FOR NO KEY UPDATE")
        .bind(r.id.to_string())
        .execute(&mut recovery)
        .await
        .unwrap();
    let store = b.store.clone();
    let (claim, id, broken) = (r.claim.clone(), r.id, r.broken(0));
    let now = t0() + Duration::days(2);
    let write = tokio::spawn(async move {
        store
            .record_windows_while(&claim, now, &[broken], id, &read)
            .await
    });
    // Until the write waits for the row (it would have read the broken health and
    // written, were it not to wait).
    let mut waited = false;
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut recovery)
        .await
        .unwrap();
        if waiting > 0 {
            waited = true;
            break;
        }
        assert!(
            !write.is_finished(),
            "the write did not wait for the identity's row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waited, "the write never waited for the identity's row");
    sqlx::query("UPDATE identities SET health = $1 WHERE id = $2")
        .bind(serde_json::to_string(&Health::Healthy).unwrap())
        .bind(r.id.to_string())
        .execute(&mut recovery)
        .await
        .unwrap();
    recovery.execute("COMMIT").await.unwrap();
    assert!(!write.await.unwrap().unwrap());
    assert!(b.store.ledger(r.pipeline.id).await.unwrap().is_empty());
}

/// A run that read the identity broken records its missing windows before a recovery
/// commits: the recovery, which reads the windows in its own transaction, sets them
/// awaiting the back-fill too.
#[tokio::test]
async fn a_window_a_run_recorded_missing_before_a_recovery_committed_awaits_the_backfill() {
    for b in backends().await {
        let r = Recovering::new(&b, "early-run").await;
        let read = b.store.identity(r.id).await.unwrap().health;
        let now = t0() + Duration::days(2);
        // Decided before the run writes.
        let recovery = r.recovery(now);
        let written = b
            .store
            .record_windows_while(&r.claim, now, &[r.broken(0), r.broken(1)], r.id, &read)
            .await
            .unwrap();
        assert!(written, "{}", b.name);
        b.store.apply_health(&recovery).await.unwrap();
        let ledger = b.store.ledger(r.pipeline.id).await.unwrap();
        assert_eq!(
            ledger,
            vec![r.awaiting(0, now), r.awaiting(1, now)],
            "{}",
            b.name
        );
    }
}

/// A run reads the windows the lookback still holds and the open ones before it, once
/// every window before its horizon is recorded loaded or lost; else the whole ledger.
#[tokio::test]
async fn a_run_reads_the_ledger_from_its_settled_horizon_only_when_every_window_before_is_recorded()
{
    for b in backends().await {
        let new = identity("horizon");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("horizon-p", new.identity.id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();
        let day = |d: i64| t0() + Duration::days(d);
        let entry = |d: i64, state: WindowState| LedgerEntry {
            pipeline: p.id,
            stream: "insights".into(),
            window: Window::new(day(d), day(d + 1)),
            state,
            attempts: 1,
            updated_at: day(d + 1),
        };
        let loaded = WindowState::Loaded {
            at: day(1),
            rows: 1,
            attempt: 1,
        };
        let spooled = WindowState::Spooled { at: day(2) };
        // Days 0–9: 0–3 and 5–7 loaded, 4 spooled, 8 lost; day 9 not recorded yet.
        let mut entries: Vec<LedgerEntry> = (0..8)
            .map(|d| {
                entry(
                    d,
                    if d == 4 {
                        spooled.clone()
                    } else {
                        loaded.clone()
                    },
                )
            })
            .collect();
        entries.push(entry(
            8,
            WindowState::Lost {
                at: day(9),
                reason: None,
            },
        ));
        b.store.record_windows(&entries).await.unwrap();
        let horizon = |before: i64, windows: u64| {
            Some(gapless_core::ledger::SettledHorizon {
                from: day(0),
                before: day(before),
                windows,
            })
        };
        // Every window before day 6 recorded: days 6–8 and the spooled day 4.
        let read = b.store.planning_ledger(&p, horizon(6, 6)).await.unwrap();
        assert_eq!(read.settled_before, Some(day(6)), "{}", b.name);
        let days: Vec<_> = read.entries.iter().map(|e| e.window.start).collect();
        assert_eq!(days, vec![day(4), day(6), day(7), day(8)], "{}", b.name);
        // Day 9 has no entry: a horizon past it reads everything.
        let read = b.store.planning_ledger(&p, horizon(10, 10)).await.unwrap();
        assert_eq!(read.settled_before, None, "{}", b.name);
        assert_eq!(read.entries, entries, "{}", b.name);
        // No horizon: everything.
        let read = b.store.planning_ledger(&p, None).await.unwrap();
        assert_eq!(read.entries.len(), 9, "{}", b.name);
    }
}

/// A back-fill may record days before a pipeline's start, and a stream it no longer has:
/// neither stands in for a window of the pipeline that was never recorded.
#[tokio::test]
async fn entries_before_the_pipelines_start_do_not_stand_in_for_a_window_never_recorded() {
    for b in backends().await {
        let new = identity("before-start");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("before-start-p", new.identity.id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();
        let day = |d: i64| t0() + Duration::days(d);
        let loaded = |stream: &str, d: i64| LedgerEntry {
            pipeline: p.id,
            stream: stream.into(),
            window: Window::new(day(d), day(d + 1)),
            state: WindowState::Loaded {
                at: day(d + 1),
                rows: 1,
                attempt: 1,
            },
            attempts: 1,
            updated_at: day(d + 1),
        };
        // Days 0–4 of the pipeline: 2 and 3 never recorded; as many entries elsewhere.
        let entries = vec![
            loaded("insights", -2),
            loaded("insights", 0),
            loaded("insights", 1),
            loaded("insights", 4),
            loaded("other", 2),
            // From the horizon on: read in any case.
            loaded("insights", 5),
        ];
        b.store.record_windows(&entries).await.unwrap();
        let horizon = gapless_core::ledger::SettledHorizon {
            from: day(0),
            before: day(5),
            windows: 5,
        };
        let read = b.store.planning_ledger(&p, Some(horizon)).await.unwrap();
        assert_eq!(read.settled_before, None, "{}", b.name);
        assert_eq!(read.entries.len(), 6, "{}", b.name);
        // Day 2 and 3 recorded: the horizon holds, the other entries aside.
        b.store
            .record_windows(&[loaded("insights", 2), loaded("insights", 3)])
            .await
            .unwrap();
        let read = b.store.planning_ledger(&p, Some(horizon)).await.unwrap();
        assert_eq!(read.settled_before, Some(day(5)), "{}", b.name);
        let days: Vec<_> = read.entries.iter().map(|e| e.window.start).collect();
        assert_eq!(days, vec![day(5)], "{}", b.name);
    }
}

#[tokio::test]
async fn pending_messages_are_read_a_page_at_a_time_without_the_delivered_ones() {
    for b in backends().await {
        let mut pending = Vec::new();
        for i in 0..5 {
            let n = notification(None, &format!("page-{i}"));
            b.store.enqueue_notification(&n).await.unwrap();
            if i == 2 {
                b.store.mark_delivered(n.id, t0()).await.unwrap();
            } else {
                pending.push(n.id);
            }
        }
        pending.sort_by_key(|id| id.to_string());
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = b.store.pending_notifications(after, 3).await.unwrap();
            assert!(page.len() <= 3, "{}", b.name);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page.iter().map(|n| n.id));
        }
        assert_eq!(seen, pending, "{}", b.name);
    }
}

#[tokio::test]
async fn outbox_retries_then_marks_failed_and_counts() {
    for b in backends().await {
        let n = notification(None, "k1");
        b.store.enqueue_notification(&n).await.unwrap();
        b.store
            .mark_attempt_failed(
                n.id,
                "connection refused",
                Some(t0() + Duration::minutes(1)),
            )
            .await
            .unwrap();
        assert!(
            b.store
                .due_notifications(t0(), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let due = b
            .store
            .due_notifications(t0() + Duration::minutes(1), 10)
            .await
            .unwrap();
        assert_eq!(due[0].delivery.attempts, 1);
        assert_eq!(
            due[0].delivery.last_error.as_deref(),
            Some("connection refused")
        );
        b.store
            .mark_attempt_failed(n.id, "gave up", None)
            .await
            .unwrap();
        let failed = b.store.notifications(true).await.unwrap();
        assert_eq!(failed.len(), 1, "{}", b.name);
        assert_eq!(failed[0].delivery.state, DeliveryState::Failed);
        let n2 = notification(None, "k2");
        b.store.enqueue_notification(&n2).await.unwrap();
        b.store.mark_delivered(n2.id, t0()).await.unwrap();
        let stats = b.store.outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.failed), (0, 1));
        assert!(
            b.store
                .notifications(false)
                .await
                .unwrap()
                .iter()
                .any(|m| m.id == n2.id && m.delivery.state == DeliveryState::Delivered),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_clear_error() {
    let err = Store::open(&StoreLocation::Postgres {
        url: "postgres://someone:hunter2-canary@127.0.0.1:1/nothing".into(),
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        !text.contains("hunter2-canary"),
        "the password leaked: {text}"
    );
    let err =
        StoreLocation::from_setting(Some("mysql://x:secretpw@h/db"), std::path::Path::new("."))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("not understood") && !err.contains("secretpw"),
        "{err}"
    );
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_created_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    // A data directory below a regular file cannot exist.
    let data_dir = file.path().join("data");
    let err = Store::open(&StoreLocation::Sqlite {
        data_dir: data_dir.clone(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err}");
    assert!(err.to_string().contains(&data_dir.display().to_string()));
}

#[tokio::test]
async fn a_refresh_ended_without_a_credential_frees_its_lease_and_keeps_its_intent_only_when_asked()
{
    for b in backends().await {
        let new = identity("ended");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let name = format!("refresh:{id}");
        let request = |holder| LeaseRequest {
            name: &name,
            holder,
            ttl: Duration::seconds(60),
        };
        for keep in [true, false] {
            let RefreshStart::Started { lease, .. } = b
                .store
                .start_refresh(id, &request("a"), 1, true, t0())
                .await
                .unwrap()
            else {
                panic!("{}: the refresh starts", b.name)
            };
            b.store.end_refresh(id, &lease, !keep).await.unwrap();
            let in_flight = b.store.identity(id).await.unwrap().refresh_in_flight_since;
            assert_eq!(in_flight, keep.then_some(t0()), "{} keep {keep}", b.name);
            // Another holder takes the lease at once, and starts its own refresh.
            let RefreshStart::Started { lease: next, .. } = b
                .store
                .start_refresh(id, &request("b"), 1, true, t0() + Duration::seconds(1))
                .await
                .unwrap()
            else {
                panic!("{}: the next refresh starts", b.name)
            };
            // Ending again under the lease given back touches neither the next holder's
            // lease nor its intent.
            b.store.end_refresh(id, &lease, true).await.unwrap();
            assert_eq!(
                b.store.identity(id).await.unwrap().refresh_in_flight_since,
                Some(t0() + Duration::seconds(1)),
                "{}",
                b.name
            );
            let taken = b
                .store
                .acquire_lease(&name, "c", Duration::seconds(60), t0())
                .await
                .unwrap();
            assert!(taken.is_none(), "{}: b still holds it", b.name);
            b.store.end_refresh(id, &next, true).await.unwrap();
        }
    }
}

#[tokio::test]
async fn leases_have_one_holder_and_fence_stale_writers() {
    for b in backends().await {
        let new = identity("leased");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let name = format!("refresh:{id}");
        let ttl = Duration::seconds(60);
        let a = b
            .store
            .acquire_lease(&name, "a", ttl, t0())
            .await
            .unwrap()
            .unwrap();
        assert!(
            b.store
                .acquire_lease(&name, "b", ttl, t0() + Duration::seconds(30))
                .await
                .unwrap()
                .is_none(),
            "{}: a live lease has one holder",
            b.name
        );
        // a stalls past its lease; b takes over with a newer fencing token.
        let later = t0() + Duration::seconds(61);
        let lease_b = b
            .store
            .acquire_lease(&name, "b", ttl, later)
            .await
            .unwrap()
            .unwrap();
        assert!(lease_b.token > a.token);
        let update = |lease: &gapless_store::Lease| CredentialUpdate {
            sealed: Sealed {
                key_version: KeyVersion(3),
                ciphertext: vec![1; 48],
            },
            expected_generation: 1,
            access_expires_at: None,
            refresh_expires_at: None,
            scopes: None,
            granted_at: None,
            authorization_expires_at: None,
            lease: Some(lease.clone()),
            upstream_account: None,
            access_renews: None,
        };
        let refused = |lease: gapless_store::Lease| {
            let store = &b.store;
            let update = update(&lease);
            async move {
                let err = store
                    .update_credential(id, &update, later, &audit())
                    .await
                    .unwrap_err();
                err.to_string()
            }
        };
        let err = refused(a.clone()).await;
        assert!(err.contains("no longer held"), "{}: {err}", b.name);
        let request = |holder| LeaseRequest {
            name: &name,
            holder,
            ttl,
        };
        let started = b
            .store
            .start_refresh(id, &request("a"), 1, false, later)
            .await
            .unwrap();
        assert!(
            matches!(started, RefreshStart::Busy),
            "{}: no refresh starts under a lease another holds: {started:?}",
            b.name
        );
        let started = b
            .store
            .start_refresh(id, &request("b"), 2, false, later)
            .await
            .unwrap();
        assert!(
            matches!(started, RefreshStart::Changed { generation: 1, .. }),
            "{}: the credential changed since the generation read: {started:?}",
            b.name
        );
        let RefreshStart::Started { lease: lease_b, .. } = b
            .store
            .start_refresh(id, &request("b"), 1, false, later)
            .await
            .unwrap()
        else {
            panic!("{}: the refresh starts", b.name)
        };
        assert_eq!(
            b.store.identity(id).await.unwrap().refresh_in_flight_since,
            Some(later)
        );
        // The intent is not overwritten unless the caller may send again (tokens that do
        // not rotate); what was refused took nothing, so the lease just taken still holds.
        let again = later + Duration::seconds(1);
        let started = b
            .store
            .start_refresh(id, &request("b"), 1, false, again)
            .await
            .unwrap();
        assert!(
            matches!(started, RefreshStart::InFlight { since } if since == later),
            "{}: {started:?}",
            b.name
        );
        let RefreshStart::Started {
            lease: resent,
            identity,
        } = b
            .store
            .start_refresh(id, &request("b"), 1, true, again)
            .await
            .unwrap()
        else {
            panic!("{}: the refresh is sent again", b.name)
        };
        assert_eq!(identity.refresh_in_flight_since, Some(later));
        assert_eq!(resent.token, lease_b.token + 1, "{}", b.name);
        let err = refused(lease_b.clone()).await;
        assert!(err.contains("no longer held"), "{}: {err}", b.name);
        let lease_b = resent;
        b.store
            .update_credential(id, &update(&lease_b), later, &audit())
            .await
            .unwrap();
        let after = b.store.identity(id).await.unwrap();
        assert_eq!(
            after.refresh_in_flight_since, None,
            "the commit clears the intent"
        );
        assert_eq!(after.token_obtained_at, Some(later));
        // The lease ended with the write: another holder takes it at once, and a second
        // write under the ended lease is refused.
        let err = refused(lease_b.clone()).await;
        assert!(err.contains("no longer held"), "{}: {err}", b.name);
        let c = b
            .store
            .acquire_lease(&name, "c", ttl, later)
            .await
            .unwrap()
            .unwrap();
        assert!(c.token > lease_b.token, "{}", b.name);
    }
}

#[tokio::test]
async fn a_reauthorize_link_is_spent_once_and_never_after_expiry_or_revocation() {
    use gapless_store::{ApiToken, ReauthLink, TokenScope};
    for b in backends().await {
        let new = identity("ana-ads");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let link = |id: &str, hours: i64| ReauthLink {
            id: id.into(),
            identity: new.identity.id,
            incident: None,
            created_at: t0(),
            expires_at: t0() + chrono::Duration::hours(hours),
            used_at: None,
            revoked_at: None,
            failed_attempts: 0,
        };
        b.store
            .insert_reauth_link(&link("a", 24), "hash-a", &audit())
            .await
            .unwrap();
        b.store
            .insert_reauth_link(&link("b", 1), "hash-b", &audit())
            .await
            .unwrap();
        b.store
            .insert_reauth_link(&link("c", 24), "hash-c", &audit())
            .await
            .unwrap();
        let found = b
            .store
            .reauth_link_by_hash("hash-a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found, link("a", 24), "{}", b.name);
        assert!(b.store.reauth_link_by_hash("nope").await.unwrap().is_none());
        let at = t0() + chrono::Duration::hours(2);
        assert!(
            b.store.use_reauth_link("a", at, &audit()).await.unwrap(),
            "{}",
            b.name
        );
        assert!(
            !b.store.use_reauth_link("a", at, &audit()).await.unwrap(),
            "spent once"
        );
        assert!(
            !b.store.use_reauth_link("b", at, &audit()).await.unwrap(),
            "expired"
        );
        assert_eq!(
            b.store
                .revoke_reauth_links(new.identity.id, at, &audit())
                .await
                .unwrap(),
            2
        );
        assert!(
            !b.store.use_reauth_link("c", at, &audit()).await.unwrap(),
            "revoked"
        );
        assert_eq!(
            b.store.reauth_links(new.identity.id).await.unwrap().len(),
            3
        );

        let token = ApiToken {
            id: "t1".into(),
            name: "ci".into(),
            scope: TokenScope::Read,
            created_at: t0(),
            last_used_at: None,
            revoked_at: None,
        };
        b.store
            .insert_api_token(&token, "hash-t", &audit())
            .await
            .unwrap();
        let seen = b
            .store
            .authenticate_api_token("hash-t", at)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.scope, TokenScope::Read);
        assert!(
            b.store
                .authenticate_api_token("hash-x", at)
                .await
                .unwrap()
                .is_none()
        );
        assert!(b.store.revoke_api_token("ci", at, &audit()).await.unwrap());
        assert!(
            b.store
                .authenticate_api_token("hash-t", at)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            b.store.api_tokens().await.unwrap()[0].last_used_at,
            Some(at)
        );
    }
}

#[tokio::test]
async fn an_empty_or_foreign_database_is_refused_not_taken_for_a_new_installation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(gapless_store::SQLITE_FILE), b"").unwrap();
    let err = Store::open(&StoreLocation::Sqlite {
        data_dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("exists but is empty"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let file = other.path().join(gapless_store::SQLITE_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", file.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = Store::open(&StoreLocation::Sqlite {
        data_dir: other.path().to_path_buf(),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not a gapless state database") && err.contains("invoices"),
        "{err}"
    );

    let db = TestDatabase::create().await.unwrap();
    let StoreLocation::Postgres { url } = &db.location else {
        panic!("a PostgreSQL test database");
    };
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query("CREATE TABLE invoices (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = Store::open(&db.location).await.unwrap_err().to_string();
    assert!(err.contains("not a gapless state database"), "{err}");
}

fn loaded(p: &Pipeline, day: i64) -> LedgerEntry {
    let start = t0() + Duration::days(day);
    LedgerEntry {
        pipeline: p.id,
        stream: "insights".into(),
        window: Window::new(start, start + Duration::days(1)),
        state: WindowState::Loaded {
            at: start + Duration::days(1),
            rows: 3,
            attempt: 1,
        },
        attempts: 1,
        updated_at: start + Duration::days(1),
    }
}

#[tokio::test]
async fn a_pipeline_claim_that_ran_out_while_its_holder_was_paused_cannot_commit() {
    for b in backends().await {
        let new = identity("claimed");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("claimed-p", new.identity.id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();
        let ttl = Duration::seconds(60);
        let claims = b
            .store
            .claim_due_pipelines("a", t0(), ttl, 10)
            .await
            .unwrap();
        assert_eq!(claims.len(), 1, "{}: a new pipeline is due", b.name);
        let a = claims[0].claim.clone();
        assert!(
            b.store
                .claim_due_pipelines("b", t0() + Duration::seconds(30), ttl, 10)
                .await
                .unwrap()
                .is_empty(),
            "{}: a live claim has one holder",
            b.name
        );
        assert!(
            b.store
                .claim_pipeline(p.id, "b", t0() + Duration::seconds(30), ttl)
                .await
                .unwrap()
                .is_none(),
            "{}",
            b.name
        );
        b.store
            .record_windows_under(&a, t0() + Duration::seconds(10), &[loaded(&p, 0)], &[])
            .await
            .unwrap();
        // A pauses past its claim; even before anyone takes it over, it cannot write.
        let late = t0() + Duration::seconds(61);
        let refused = b
            .store
            .record_windows_under(&a, late, &[loaded(&p, 1)], &[])
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{}: {refused:?}",
            b.name
        );
        // B takes it over; A's writes, its health change and its finish are refused.
        let taken = b
            .store
            .claim_due_pipelines("b", late, ttl, 10)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "{}", b.name);
        assert!(taken[0].claim.token > a.token);
        let mut change = HealthChange::transition_only(
            new.identity.id,
            Health::Healthy
                .apply(
                    &HealthEvent::TransientFailure {
                        failure: Failure::new(FailureCause::Transient),
                    },
                    late,
                )
                .unwrap(),
            late,
        );
        change.ledger = vec![loaded(&p, 2)];
        change.fence = Some(a.clone());
        assert!(matches!(
            b.store.apply_health(&change).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            b.store
                .finish_pipeline_claim(&a, late + Duration::days(1), Some(late))
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            b.store.renew_pipeline_claim(&a, late, ttl).await,
            Err(StoreError::Conflict(_))
        ));
        let ledger = b.store.ledger(p.id).await.unwrap();
        assert_eq!(
            ledger.len(),
            1,
            "{}: only the write under a live claim",
            b.name
        );
        // The holder's writes go through; renewing extends the claim.
        let renewed = b
            .store
            .renew_pipeline_claim(&taken[0].claim, late + Duration::seconds(50), ttl)
            .await
            .unwrap();
        b.store
            .record_windows_under(
                &renewed,
                late + Duration::seconds(100),
                &[loaded(&p, 1)],
                &[],
            )
            .await
            .unwrap();
        let next = late + Duration::days(1);
        b.store
            .finish_pipeline_claim(&renewed, next, Some(late))
            .await
            .unwrap();
        let (due, claim) = b.store.pipeline_due(p.id).await.unwrap();
        assert_eq!((due, claim), (next, None), "{}", b.name);
        assert_eq!(b.store.pipeline_last_run(p.id).await.unwrap(), Some(late));
        // Not due before its time; a paused pipeline is never claimed.
        assert!(
            b.store
                .claim_due_pipelines("c", next - Duration::seconds(1), ttl, 10)
                .await
                .unwrap()
                .is_empty()
        );
        b.store
            .set_pipeline_state(
                p.id,
                &PipelineState::Paused {
                    reason: "ops".into(),
                },
                next,
            )
            .await
            .unwrap();
        assert!(
            b.store
                .claim_due_pipelines("c", next, ttl, 10)
                .await
                .unwrap()
                .is_empty(),
            "{}: paused",
            b.name
        );
    }
}

#[tokio::test]
async fn due_pipelines_and_notifications_are_claimed_once_by_concurrent_instances() {
    for b in backends().await {
        let new = identity("many");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..120 {
            let p = pipeline(&format!("p{i:03}"), new.identity.id);
            b.store.insert_pipeline(&p, t0()).await.unwrap();
            ids.push(p.id);
        }
        for i in 0..120 {
            b.store
                .enqueue_notification(&notification(None, &format!("n{i}")))
                .await
                .unwrap();
        }
        let ttl = Duration::minutes(5);
        let claimers = (0..4).map(|k| {
            let store = b.store.clone();
            tokio::spawn(async move {
                let holder = format!("instance-{k}");
                let mut pipelines = Vec::new();
                let mut notes = Vec::new();
                loop {
                    let p = store
                        .claim_due_pipelines(&holder, t0(), ttl, 7)
                        .await
                        .unwrap();
                    let n = store
                        .claim_due_notifications(&holder, t0(), ttl, 7)
                        .await
                        .unwrap();
                    if p.is_empty() && n.is_empty() {
                        break;
                    }
                    pipelines.extend(p.into_iter().map(|c| c.claim.pipeline));
                    notes.extend(n.into_iter().map(|c| (c.notification.id, c.token)));
                }
                (pipelines, notes)
            })
        });
        let mut pipelines = Vec::new();
        let mut notes = Vec::new();
        for claimer in claimers {
            let (p, n) = claimer.await.unwrap();
            pipelines.extend(p);
            notes.extend(n);
        }
        pipelines.sort_by_key(|id| id.to_string());
        ids.sort_by_key(|id| id.to_string());
        assert_eq!(
            pipelines, ids,
            "{}: every pipeline claimed exactly once",
            b.name
        );
        let mut seen: Vec<_> = notes.iter().map(|(id, _)| id.to_string()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 120, "{}", b.name);
        assert_eq!(notes.len(), 120, "{}: each notification once", b.name);
        // A delivery reported under a claim that was taken over is not recorded.
        let (id, token) = notes[0];
        let again = b
            .store
            .claim_due_notifications("late", t0() + ttl, ttl, 200)
            .await
            .unwrap();
        assert_eq!(
            again.len(),
            120,
            "{}: due again once the claims ran out",
            b.name
        );
        assert!(
            !b.store
                .mark_delivered_under(id, Some(token), t0())
                .await
                .unwrap()
        );
        let current = again.iter().find(|c| c.notification.id == id).unwrap();
        assert!(
            b.store
                .mark_delivered_under(id, Some(current.token), t0())
                .await
                .unwrap()
        );
        let delivered = b.store.notifications(false).await.unwrap();
        assert!(
            delivered
                .iter()
                .any(|m| m.id == id && m.delivery.state == DeliveryState::Delivered),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_report_job_in_flight_is_kept_by_its_request_replaced_and_forgotten() {
    for b in backends().await {
        let new = identity("ana-ads");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let id = new.identity.id;
        let range = Window::new(t0(), t0() + Duration::days(3));
        let other = Window::new(t0(), t0() + Duration::days(1));
        let job = gapless_store::StoredJob {
            job_id: "6000001".into(),
            created_at: t0(),
        };
        assert_eq!(
            b.store.report_job(id, "act_1", "s", range).await.unwrap(),
            None
        );
        b.store
            .save_report_job(id, "act_1", "s", range, &job)
            .await
            .unwrap();
        assert_eq!(
            b.store.report_job(id, "act_1", "s", range).await.unwrap(),
            Some(job.clone()),
            "{}",
            b.name
        );
        // Another range, resource or stream is another request.
        assert_eq!(
            b.store.report_job(id, "act_1", "s", other).await.unwrap(),
            None
        );
        assert_eq!(
            b.store.report_job(id, "act_2", "s", range).await.unwrap(),
            None
        );
        // An abandoned job is replaced by the new one.
        let newer = gapless_store::StoredJob {
            job_id: "6000002".into(),
            created_at: t0() + Duration::hours(2),
        };
        b.store
            .save_report_job(id, "act_1", "s", range, &newer)
            .await
            .unwrap();
        assert_eq!(
            b.store.report_job(id, "act_1", "s", range).await.unwrap(),
            Some(newer)
        );
        // Jobs of other ranges stay (another pipeline may be waiting for them) until
        // older than any job may live.
        let wider = Window::new(t0() + Duration::days(2), t0() + Duration::days(5));
        let later = gapless_store::StoredJob {
            job_id: "6000003".into(),
            created_at: t0() + Duration::days(1),
        };
        b.store
            .save_report_job(id, "act_1", "s", wider, &later)
            .await
            .unwrap();
        assert!(
            b.store
                .report_job(id, "act_1", "s", range)
                .await
                .unwrap()
                .is_some(),
            "{}",
            b.name
        );
        let much_later = gapless_store::StoredJob {
            job_id: "6000004".into(),
            created_at: t0() + Duration::days(3),
        };
        b.store
            .save_report_job(id, "act_1", "s", other, &much_later)
            .await
            .unwrap();
        assert_eq!(
            b.store.report_job(id, "act_1", "s", range).await.unwrap(),
            None,
            "{}: older than two days",
            b.name
        );
        b.store
            .forget_report_job(id, "act_1", "s", wider)
            .await
            .unwrap();
        b.store
            .forget_report_job(id, "act_1", "s", other)
            .await
            .unwrap();
        assert_eq!(
            b.store.report_job(id, "act_1", "s", range).await.unwrap(),
            None,
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn expiry_pages_hold_each_identity_once_whichever_of_its_expiries_is_due() {
    for b in backends().await {
        // Each kind of expiry inside the horizon, some twice, and one outside it.
        let expiring = |label: &str, access, refresh, authorization| NewIdentity {
            identity: Identity {
                access_expires_at: access,
                refresh_expires_at: refresh,
                authorization_expires_at: authorization,
                ..identity(label).identity
            },
            ..identity("unused")
        };
        let soon = Some(t0() + Duration::days(3));
        let later = Some(t0() + Duration::days(90));
        for new in [
            expiring("a-access", soon, None, None),
            expiring("b-refresh", later, soon, None),
            expiring("c-authorization", later, None, soon),
            expiring("d-refresh-and-authorization", later, soon, soon),
            expiring("e-every-one", soon, soon, soon),
            expiring("f-authorization", None, None, soon),
            expiring("g-outside", later, later, later),
        ] {
            b.store.insert_identity(&new, &audit()).await.unwrap();
        }
        let until = t0() + Duration::days(30);
        let mut paged = Vec::new();
        let mut after = None;
        for _ in 0..10 {
            let page = b
                .store
                .expiry_candidates(t0(), until, after.as_ref(), 2)
                .await
                .unwrap();
            assert!(page.identities.len() <= 2, "{}", b.name);
            paged.extend(page.identities.into_iter().map(|(i, _)| i.label));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(
            paged,
            [
                "a-access",
                "b-refresh",
                "c-authorization",
                "d-refresh-and-authorization",
                "e-every-one",
                "f-authorization"
            ],
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn sweeps_read_only_the_identities_that_may_be_due_and_count_the_working_ones() {
    for b in backends().await {
        let soon = identity("expires-soon");
        let later = NewIdentity {
            identity: Identity {
                access_expires_at: Some(t0() + Duration::days(50)),
                ..identity("expires-in-fifty-days").identity
            },
            next_probe_due: Some(t0() + Duration::hours(1)),
            ..identity("unused")
        };
        let unknown = NewIdentity {
            identity: Identity {
                access_expires_at: None,
                ..identity("expiry-unknown").identity
            },
            ..identity("unused")
        };
        let in_flight = NewIdentity {
            identity: Identity {
                access_expires_at: Some(t0() + Duration::days(50)),
                refresh_in_flight_since: Some(t0()),
                ..identity("refresh-in-flight").identity
            },
            ..identity("unused")
        };
        let waiting = NewIdentity {
            identity: Identity {
                health: Health::NeedsReauth {
                    failure: revoked(),
                    since: t0(),
                },
                ..identity("waits-for-a-person").identity
            },
            ..identity("unused")
        };
        let degraded = NewIdentity {
            identity: Identity {
                provider: "other".into(),
                health: Health::Degraded {
                    last: Failure::new(FailureCause::Transient),
                    since: t0(),
                    attempts: 1,
                    retry_at: t0() + Duration::minutes(1),
                },
                ..identity("degraded-elsewhere").identity
            },
            ..identity("unused")
        };
        // Known at creation to renew by itself: refreshed when due, never warned of.
        let renews = NewIdentity {
            access_renews: Some(true),
            ..identity("renews-from-creation")
        };
        for new in [
            &soon, &later, &unknown, &in_flight, &waiting, &degraded, &renews,
        ] {
            b.store.insert_identity(new, &audit()).await.unwrap();
        }
        let refresh_due = |obtained_before| {
            let store = &b.store;
            async move {
                // Pages of two: every candidate once, in label order, across pages.
                let mut all = Vec::new();
                let mut after = None;
                loop {
                    let found = store
                        .refresh_candidates(
                            t0() + Duration::hours(2),
                            obtained_before,
                            after.as_ref(),
                            2,
                        )
                        .await
                        .unwrap();
                    assert!(found.unreadable.is_empty());
                    assert!(found.identities.len() <= 2);
                    all.extend(
                        found
                            .identities
                            .iter()
                            .map(|(i, renews)| (i.label.clone(), *renews)),
                    );
                    match found.next {
                        Some(next) => after = Some(next),
                        None => break all,
                    }
                }
            }
        };
        let labels = |found: Vec<(String, Option<bool>)>| {
            found
                .into_iter()
                .map(|(label, _)| label)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(refresh_due(t0() - Duration::hours(1)).await),
            [
                "degraded-elsewhere",
                "expires-soon",
                "expiry-unknown",
                "refresh-in-flight",
                "renews-from-creation"
            ],
            "{}",
            b.name
        );
        assert!(
            refresh_due(t0() - Duration::hours(1))
                .await
                .contains(&("renews-from-creation".to_string(), Some(true))),
            "{}",
            b.name
        );
        // Once its credential is known to renew, a token of unknown expiry is read only
        // when it was obtained before the bound; once known not to (a key, a password), never.
        b.store
            .record_access_renews(unknown.identity.id, true, None)
            .await
            .unwrap();
        assert!(
            !labels(refresh_due(t0() - Duration::hours(1)).await)
                .contains(&"expiry-unknown".to_string()),
            "{}",
            b.name
        );
        assert!(
            refresh_due(t0())
                .await
                .contains(&("expiry-unknown".to_string(), Some(true))),
            "{}",
            b.name
        );
        b.store
            .record_access_renews(unknown.identity.id, false, None)
            .await
            .unwrap();
        assert!(
            !labels(refresh_due(t0() + Duration::days(365)).await)
                .contains(&"expiry-unknown".to_string()),
            "{}",
            b.name
        );
        // Probes: the one inserted with its first probe's due time is not read before it.
        let probe_due = b.store.identities_probe_due(t0()).await.unwrap().identities;
        assert_eq!(probe_due.len(), 6, "{}", b.name);
        assert!(
            probe_due.iter().all(|i| i.id != later.identity.id),
            "{}",
            b.name
        );
        let degraded_now = b.store.identities_in_state("degraded").await.unwrap();
        assert_eq!(degraded_now.len(), 1, "{}", b.name);
        assert_eq!(degraded_now[0].label, "degraded-elsewhere", "{}", b.name);
        // Working: healthy, expiring or degraded; not the one waiting for a person.
        assert_eq!(
            b.store.working_identities_of("sandbox").await.unwrap(),
            5,
            "{}",
            b.name
        );
        assert_eq!(
            b.store.working_identities_of("other").await.unwrap(),
            1,
            "{}",
            b.name
        );
        // The expiry sweep: within 30 days, an access token counts until it is known to
        // renew by itself. Read in pages of two, as the sweep reads its pages.
        let expiring = |store: &Store| {
            let store = store.clone();
            async move {
                let mut all = Vec::new();
                let mut after = None;
                loop {
                    let found = store
                        .expiry_candidates(t0(), t0() + Duration::days(30), after.as_ref(), 2)
                        .await
                        .unwrap();
                    assert!(found.identities.len() <= 2);
                    all.extend(
                        found
                            .identities
                            .into_iter()
                            .map(|(i, renews)| (i.label, renews)),
                    );
                    match found.next {
                        Some(next) => after = Some(next),
                        None => break all,
                    }
                }
            }
        };
        assert_eq!(
            expiring(&b.store).await,
            [
                ("degraded-elsewhere".to_string(), None),
                ("expires-soon".to_string(), None),
                ("waits-for-a-person".to_string(), None),
            ],
            "{}",
            b.name
        );
        // Known to renew, for the credential of generation 1; a stale generation writes
        // nothing.
        b.store
            .record_access_renews(soon.identity.id, true, Some(1))
            .await
            .unwrap();
        b.store
            .record_access_renews(degraded.identity.id, true, Some(7))
            .await
            .unwrap();
        b.store
            .record_access_renews(waiting.identity.id, false, None)
            .await
            .unwrap();
        assert_eq!(
            expiring(&b.store).await,
            [
                ("degraded-elsewhere".to_string(), None),
                ("waits-for-a-person".to_string(), Some(false)),
            ],
            "{}",
            b.name
        );
        // What /metrics reports, counted by the database.
        let mut by_state = b.store.identities_by_state().await.unwrap();
        by_state.sort();
        assert_eq!(
            by_state,
            [
                ("degraded".to_string(), 1),
                ("healthy".to_string(), 5),
                ("needs_reauth".to_string(), 1)
            ],
            "{}",
            b.name
        );
        assert_eq!(
            b.store.open_incident_count().await.unwrap(),
            0,
            "{}",
            b.name
        );
        assert!(
            b.store.windows_by_state().await.unwrap().is_empty(),
            "{}",
            b.name
        );
        assert!(b.store.open_provider_outages().await.unwrap().is_empty());
        b.store
            .open_provider_outage("other", t0(), &[])
            .await
            .unwrap();
        assert_eq!(
            b.store.open_provider_outages().await.unwrap(),
            ["other"],
            "{}",
            b.name
        );
    }
}

/// A raw connection to a backend's database, to damage a row as a bad write or a hand edit
/// would.
async fn raw_connection(b: &Backend) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match (&b._dir, &b._database) {
        (Some(dir), _) => format!(
            "sqlite://{}",
            dir.path()
                .join("data")
                .join(gapless_store::SQLITE_FILE)
                .display()
        ),
        (None, Some(database)) => match &database.location {
            StoreLocation::Postgres { url } => url.clone(),
            StoreLocation::Sqlite { .. } => unreachable!("a test database is PostgreSQL"),
        },
        (None, None) => unreachable!("every backend has a file or a database"),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn identity_listings_come_in_pages_in_label_or_attention_order_and_pass_an_unreadable_row() {
    use gapless_store::{IdentityCursor, IdentityOrder};
    for b in backends().await {
        let with_health = |label: &str, health: Health| NewIdentity {
            identity: Identity {
                health,
                ..identity(label).identity
            },
            ..identity("unused")
        };
        let broken = || Health::NeedsReauth {
            failure: revoked(),
            since: t0(),
        };
        let degraded = Health::Degraded {
            last: Failure::new(FailureCause::Transient),
            since: t0(),
            attempts: 1,
            retry_at: t0() + Duration::minutes(1),
        };
        let expiring = Health::Expiring {
            at: t0() + Duration::days(3),
        };
        let news = [
            with_health("a-fine", Health::Healthy),
            with_health("b-broken", broken()),
            with_health("c-unreadable", Health::Healthy),
            with_health("d-expiring", expiring),
            with_health("e-fine", Health::Healthy),
            with_health("f-degraded", degraded),
            with_health("g-broken", broken()),
        ];
        for new in &news {
            b.store.insert_identity(new, &audit()).await.unwrap();
        }
        let unreadable = news[2].identity.id;
        sqlx::query("UPDATE identities SET health = '{not json' WHERE id = $1")
            .bind(unreadable.to_string())
            .execute(&mut raw_connection(&b).await)
            .await
            .unwrap();
        let used = pipeline("uses-g", news[6].identity.id);
        b.store.insert_pipeline(&used, t0()).await.unwrap();

        for (order, expected) in [
            (
                IdentityOrder::Label,
                [
                    "a-fine",
                    "b-broken",
                    "d-expiring",
                    "e-fine",
                    "f-degraded",
                    "g-broken",
                ],
            ),
            (
                IdentityOrder::AttentionFirst,
                [
                    "b-broken",
                    "g-broken",
                    "d-expiring",
                    "f-degraded",
                    "a-fine",
                    "e-fine",
                ],
            ),
        ] {
            let mut after: Option<IdentityCursor> = None;
            let mut seen = Vec::new();
            let mut unreadable_rows = Vec::new();
            let mut pages = 0;
            loop {
                let page = b
                    .store
                    .identities_page(order, after.as_ref(), 2)
                    .await
                    .unwrap();
                pages += 1;
                seen.extend(page.identities.iter().map(|i| i.label.clone()));
                unreadable_rows.extend(page.unreadable.into_iter().map(|(id, _)| id));
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
            assert_eq!(seen, expected, "{} {order:?}", b.name);
            assert_eq!(
                unreadable_rows,
                [unreadable.to_string()],
                "{} {order:?}",
                b.name
            );
            assert_eq!(pages, 4, "{} {order:?}: seven rows, two a page", b.name);
        }

        let ids: Vec<IdentityId> = news.iter().map(|n| n.identity.id).collect();
        let using = b.store.pipelines_using_any(&ids).await.unwrap();
        assert_eq!(
            using.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["uses-g"],
            "{}",
            b.name
        );
        assert!(b.store.open_incidents_of(&ids).await.unwrap().is_empty());
        let labels = b
            .store
            .identity_labels(&[news[0].identity.id, IdentityId::new()])
            .await
            .unwrap();
        assert_eq!(labels.len(), 1, "{}", b.name);
        assert_eq!(labels[&news[0].identity.id], "a-fine", "{}", b.name);
        let fine = news[4].identity.id;
        let incident = open_incident(&b.store, fine, t0()).await;
        let open = b.store.open_incidents_of(&ids).await.unwrap();
        assert_eq!(open.len(), 1, "{}", b.name);
        assert_eq!(open.get(&fine), Some(&incident.id), "{}", b.name);
    }
}

/// Open an incident for the healthy identity `id` (revoked at `opened_at`).
async fn open_incident(store: &Store, id: IdentityId, opened_at: DateTime<Utc>) -> Incident {
    let incident = Incident {
        id: IncidentId::new(),
        identity: id,
        failure: revoked(),
        opened_at,
        closed_at: None,
        affected_pipelines: vec![],
        origin: None,
        recovering_since: None,
        reopened: 0,
    };
    let mut change = HealthChange::transition_only(
        id,
        Health::Healthy
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                opened_at,
            )
            .unwrap(),
        opened_at,
    );
    change.incident = IncidentChange::Open(incident.clone());
    store.apply_health(&change).await.unwrap();
    incident
}

#[tokio::test]
async fn reminders_are_read_when_due_and_queued_by_one_instance_only() {
    for b in backends().await {
        let mut opened = Vec::new();
        for (n, label) in ["remind-a", "remind-b"].into_iter().enumerate() {
            let new = identity(label);
            let id = new.identity.id;
            b.store.insert_identity(&new, &audit()).await.unwrap();
            opened.push(open_incident(&b.store, id, t0() + Duration::hours(n as i64)).await);
        }
        let due_ids = |list: Vec<gapless_store::DueReminder>| {
            list.iter()
                .map(|d| (d.incident.id, d.reminded))
                .collect::<Vec<_>>()
        };
        // A new incident is looked at from its opening on, the longest waiting first.
        assert_eq!(
            due_ids(b.store.reminders_due(t0(), 10).await.unwrap()),
            [(opened[0].id, 0)],
            "{}",
            b.name
        );
        let later = t0() + Duration::days(1);
        assert_eq!(
            due_ids(b.store.reminders_due(later, 10).await.unwrap()),
            [(opened[0].id, 0), (opened[1].id, 0)],
            "{}",
            b.name
        );
        assert_eq!(b.store.reminders_due(later, 1).await.unwrap().len(), 1);

        // Reminder 1 of the first: queued with its message and the link it carries by the
        // instance that moves the count from 0; another instance that read the same count
        // queues nothing and records no link.
        let link = |id: &str| gapless_store::NewReauthLink {
            link: gapless_store::ReauthLink {
                id: id.into(),
                identity: opened[0].identity,
                incident: Some(opened[0].id),
                created_at: later,
                expires_at: later + Duration::days(7),
                used_at: None,
                revoked_at: None,
                failed_attempts: 0,
            },
            token_hash: format!("hash-{id}"),
            audit: audit(),
        };
        let message = notification(Some(opened[0].id), "reminder-1");
        let next = t0() + Duration::days(3);
        assert!(
            b.store
                .schedule_reminder(
                    opened[0].id,
                    0,
                    1,
                    next,
                    std::slice::from_ref(&message),
                    &[link("winner")]
                )
                .await
                .unwrap()
        );
        let late = notification(Some(opened[0].id), "reminder-1-again");
        assert!(
            !b.store
                .schedule_reminder(
                    opened[0].id,
                    0,
                    1,
                    next,
                    std::slice::from_ref(&late),
                    &[link("loser")]
                )
                .await
                .unwrap(),
            "{}",
            b.name
        );
        let links: Vec<String> = b
            .store
            .reauth_links(opened[0].identity)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(links, ["winner"], "{}", b.name);
        let of_incident = b
            .store
            .notifications_of_incident(opened[0].id)
            .await
            .unwrap();
        assert_eq!(
            of_incident.iter().map(|n| n.id).collect::<Vec<_>>(),
            [message.id],
            "{}",
            b.name
        );
        // Looked at again when its next reminder is due, not before.
        assert_eq!(
            due_ids(b.store.reminders_due(later, 10).await.unwrap()),
            [(opened[1].id, 0)],
            "{}",
            b.name
        );
        assert_eq!(
            due_ids(b.store.reminders_due(next, 10).await.unwrap()),
            [(opened[1].id, 0), (opened[0].id, 1)],
            "{}",
            b.name
        );
        // A schedule that has ended ("never") is not due, however late.
        assert!(
            b.store
                .schedule_reminder(opened[0].id, 1, 2, DateTime::<Utc>::MAX_UTC, &[], &[])
                .await
                .unwrap()
        );
        assert_eq!(
            due_ids(b.store.reminders_due(next, 10).await.unwrap()),
            [(opened[1].id, 0)],
            "{}",
            b.name
        );
        assert_eq!(
            due_ids(
                b.store
                    .reminders_due(t0() + Duration::days(3650), 10)
                    .await
                    .unwrap()
            ),
            [(opened[1].id, 0)],
            "{}",
            b.name
        );
        // A closed incident is not looked at, and its count does not move.
        let mut close = HealthChange::transition_only(
            opened[1].identity,
            Health::NeedsReauth {
                failure: revoked(),
                since: opened[1].opened_at,
            }
            .apply(&HealthEvent::Reauthorized, later)
            .unwrap(),
            later,
        );
        close.incident = IncidentChange::Close;
        b.store.apply_health(&close).await.unwrap();
        assert!(
            b.store.reminders_due(next, 10).await.unwrap().is_empty(),
            "{}",
            b.name
        );
        assert!(
            !b.store
                .schedule_reminder(opened[1].id, 0, 1, next, &[], &[])
                .await
                .unwrap(),
            "{}",
            b.name
        );
        // A first start records its schedule; after a restart with another schedule every
        // open incident is looked at again, the one whose schedule had ended too, with its
        // count kept; after one with the same schedule, none.
        assert!(b.store.reschedule_reminders("first").await.unwrap());
        b.store
            .schedule_reminder(opened[0].id, 2, 2, next, &[], &[])
            .await
            .unwrap();
        assert!(!b.store.reschedule_reminders("first").await.unwrap());
        assert!(
            b.store.reminders_due(t0(), 10).await.unwrap().is_empty(),
            "{}: the same schedule looks at nothing again",
            b.name
        );
        assert!(b.store.reschedule_reminders("second").await.unwrap());
        assert_eq!(
            due_ids(b.store.reminders_due(t0(), 10).await.unwrap()),
            [(opened[0].id, 2)],
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn incidents_and_messages_are_listed_newest_first_a_page_at_a_time() {
    for b in backends().await {
        // Five incidents (two opened at the same instant: the id breaks the tie), closed
        // one after the other so that each identity can open the next.
        let new = identity("paged-incidents");
        let id = new.identity.id;
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let mut opened = Vec::new();
        for hours in [0, 5, 5, 9, 12] {
            let at = t0() + Duration::hours(hours);
            let incident = open_incident(&b.store, id, at).await;
            let mut close = HealthChange::transition_only(
                id,
                Health::NeedsReauth {
                    failure: revoked(),
                    since: at,
                }
                .apply(&HealthEvent::Reauthorized, at)
                .unwrap(),
                at,
            );
            close.incident = IncidentChange::Close;
            b.store.apply_health(&close).await.unwrap();
            opened.push(incident);
        }
        let mut expected: Vec<_> = opened
            .iter()
            .map(|i| (i.opened_at, i.id.to_string()))
            .collect();
        expected.sort();
        expected.reverse();
        let mut listed = Vec::new();
        let mut after: Option<gapless_store::TimeCursor> = None;
        loop {
            let page = b.store.incidents_page(after.as_ref(), 2).await.unwrap();
            assert!(page.rows.len() <= 2, "{}", b.name);
            listed.extend(page.rows.iter().map(|i| (i.opened_at, i.id.to_string())));
            // The cursor goes through its text form, as through the API.
            match page.next {
                Some(next) => after = Some(next.to_string().parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(listed, expected, "{}", b.name);

        // Messages: newest first, and the failed ones alone.
        let mut messages = Vec::new();
        for n in 0..5 {
            let mut m = notification(None, &format!("paged-{n}"));
            m.created_at = t0() + Duration::minutes(n);
            b.store.enqueue_notification(&m).await.unwrap();
            if n % 2 == 0 {
                b.store
                    .mark_attempt_failed(m.id, "gave up", None)
                    .await
                    .unwrap();
            }
            messages.push(m.id);
        }
        let first = b.store.notifications_page(false, None, 3).await.unwrap();
        let rest = b
            .store
            .notifications_page(false, first.next.as_ref(), 3)
            .await
            .unwrap();
        assert!(rest.next.is_none(), "{}", b.name);
        let all: Vec<_> = first.rows.iter().chain(&rest.rows).map(|m| m.id).collect();
        assert_eq!(
            all,
            messages.iter().rev().copied().collect::<Vec<_>>(),
            "{}",
            b.name
        );
        let failed = b.store.notifications_page(true, None, 10).await.unwrap();
        assert_eq!(
            failed.rows.iter().map(|m| m.id).collect::<Vec<_>>(),
            [messages[4], messages[2], messages[0]],
            "{}",
            b.name
        );
    }
}

#[test]
fn a_listing_cursor_from_outside_is_refused_with_what_is_wrong() {
    use gapless_store::TimeCursor;
    for (text, says) in [
        ("no-tilde", "not a cursor"),
        ("yesterday~abc", "not an RFC 3339 instant"),
        ("2026-01-01T00:00:00Z~", "not an id"),
        ("2026-01-01T00:00:00Z~a'b", "not an id"),
    ] {
        let error = text.parse::<TimeCursor>().unwrap_err();
        assert!(error.contains(says), "{text}: {error}");
    }
}

#[tokio::test]
async fn a_batch_of_hundreds_of_windows_is_recorded_whole_with_its_last_state_and_every_change() {
    for b in backends().await {
        let new = identity("batched");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let p = pipeline("batched-daily", new.identity.id);
        b.store.insert_pipeline(&p, t0()).await.unwrap();
        // 250 windows over three statements, the 120th written twice (missing, then
        // loaded): it keeps the later state and both changes are in its history.
        let mut entries: Vec<LedgerEntry> = (0..250).map(|day| loaded(&p, day)).collect();
        let twice = loaded(&p, 120);
        entries[120] = LedgerEntry {
            state: WindowState::Missing {
                reason: MissingReason::Transient {
                    detail: "timeout".into(),
                },
                since: twice.window.start,
            },
            ..twice.clone()
        };
        entries.push(twice.clone());
        b.store.record_windows(&entries).await.unwrap();
        let ledger = b.store.ledger(p.id).await.unwrap();
        assert_eq!(ledger.len(), 250, "{}", b.name);
        assert!(
            ledger.iter().all(|e| e.state.name() == "loaded"),
            "{}",
            b.name
        );
        let history = b
            .store
            .window_history(p.id, &twice.stream, twice.window.start)
            .await
            .unwrap();
        let states: Vec<&str> = history.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(states, ["missing", "loaded"], "{}", b.name);
        assert_eq!(
            b.store.windows_by_state().await.unwrap(),
            [("loaded".to_string(), 250)],
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn window_counts_follow_every_change_of_the_ledger() {
    for b in backends().await {
        let new = identity("counted");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let (a, c) = (
            pipeline("counted-a", new.identity.id),
            pipeline("counted-c", new.identity.id),
        );
        for p in [&a, &c] {
            b.store.insert_pipeline(p, t0()).await.unwrap();
        }
        let missing = |p: &Pipeline, day: i64| {
            let start = t0() + Duration::days(day);
            LedgerEntry {
                state: WindowState::Missing {
                    reason: MissingReason::IdentityBroken {
                        identity: new.identity.id,
                        cause: revoked().cause,
                        since: start,
                    },
                    since: start,
                },
                ..loaded(p, day)
            }
        };
        let mut entries: Vec<LedgerEntry> = (0..4).map(|day| missing(&a, day)).collect();
        entries.extend((0..2).map(|day| loaded(&c, day)));
        b.store.record_windows(&entries).await.unwrap();
        // Two of a's windows load (one of them twice: no change the second time), c's are
        // written again unchanged.
        let again = [loaded(&a, 0), loaded(&a, 1), loaded(&a, 1), loaded(&c, 0)];
        b.store.record_windows(&again).await.unwrap();
        let mut totals = b.store.windows_by_state().await.unwrap();
        totals.sort();
        assert_eq!(
            totals,
            [("loaded".to_string(), 4), ("missing".to_string(), 2)],
            "{}",
            b.name
        );
        let summaries = b
            .store
            .ledger_summaries(&[(&a, t0()), (&c, t0())])
            .await
            .unwrap();
        assert_eq!(
            summaries[&a.id].counts.get("loaded"),
            Some(&2),
            "{}",
            b.name
        );
        assert_eq!(
            summaries[&a.id].counts.get("missing"),
            Some(&2),
            "{}",
            b.name
        );
        assert_eq!(
            summaries[&c.id].counts.get("loaded"),
            Some(&2),
            "{}",
            b.name
        );
        // The counts are the ledger's, however it is read.
        let counted = |p: &Pipeline| {
            let store = &b.store;
            let id = p.id;
            async move {
                let mut by_state = std::collections::BTreeMap::new();
                for e in store.ledger(id).await.unwrap() {
                    *by_state.entry(e.state.name().to_string()).or_insert(0usize) += 1;
                }
                by_state
            }
        };
        for p in [&a, &c] {
            assert_eq!(summaries[&p.id].counts, counted(p).await, "{}", b.name);
        }
        // A deleted pipeline's windows leave the totals with it.
        b.store.delete_pipeline(a.id).await.unwrap();
        assert_eq!(
            b.store.windows_by_state().await.unwrap(),
            [("loaded".to_string(), 2)],
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn pipeline_listings_come_in_pages_with_their_ledgers_summarized_for_the_page() {
    for b in backends().await {
        let new = identity("listed");
        b.store.insert_identity(&new, &audit()).await.unwrap();
        let (a, c, bee) = (
            pipeline("a-daily", new.identity.id),
            pipeline("c-daily", new.identity.id),
            pipeline("b-daily", new.identity.id),
        );
        for p in [&a, &c, &bee] {
            b.store.insert_pipeline(p, t0()).await.unwrap();
        }
        let mut entries: Vec<LedgerEntry> = (0..5).map(|day| loaded(&a, day)).collect();
        let start = t0() + Duration::days(5);
        entries.push(LedgerEntry {
            window: Window::new(start, start + Duration::days(1)),
            state: WindowState::Missing {
                reason: MissingReason::IdentityBroken {
                    identity: new.identity.id,
                    cause: revoked().cause,
                    since: start,
                },
                since: start,
            },
            ..loaded(&a, 5)
        });
        entries.push(loaded(&c, 0));
        b.store.record_windows(&entries).await.unwrap();

        let first = b.store.pipelines_page(None, 2).await.unwrap();
        let names: Vec<_> = first.pipelines.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a-daily", "b-daily"], "{}", b.name);
        assert_eq!(first.next.as_deref(), Some("b-daily"), "{}", b.name);
        let second = b
            .store
            .pipelines_page(first.next.as_deref(), 2)
            .await
            .unwrap();
        let names: Vec<_> = second.pipelines.iter().map(|p| p.name.as_str()).collect();
        assert_eq!((names, second.next), (vec!["c-daily"], None), "{}", b.name);

        // Recent windows from day 3 for a, from day 0 for c; none for b.
        let summaries = b
            .store
            .ledger_summaries(&[(&a, t0() + Duration::days(3)), (&bee, t0()), (&c, t0())])
            .await
            .unwrap();
        let of_a = &summaries[&a.id];
        assert_eq!(of_a.counts.get("loaded"), Some(&5), "{}", b.name);
        assert_eq!(of_a.counts.get("missing"), Some(&1), "{}", b.name);
        assert_eq!(of_a.last_loaded, Some(loaded(&a, 4).window), "{}", b.name);
        assert_eq!(
            of_a.recent
                .iter()
                .map(|e| (e.window.start - t0()).num_days())
                .collect::<Vec<_>>(),
            [3, 4, 5],
            "{}",
            b.name
        );
        assert_eq!(summaries[&c.id].recent.len(), 1, "{}", b.name);
        assert_eq!(
            summaries[&c.id].counts.get("loaded"),
            Some(&1),
            "{}",
            b.name
        );
        assert!(!summaries.contains_key(&bee.id), "{}", b.name);
    }
}
