//! Notifications end to end against a real SMTP conversation (the test SMTP server), in
//! virtual time.

#![allow(clippy::unwrap_used)]

use std::time::Duration as StdDuration;

use chrono::Duration;
use gapless_core::{
    Clock, DeliveryState, FailureCause, NotificationKind, Pipeline, PipelineId, PipelineState,
    ReminderPolicy,
};
use gapless_demo::demo::DemoWorld;
use gapless_engine::{Event, EventLog};
use gapless_notify::{
    Channel,
    testing::{Received, SinkMode, SmtpSink},
};
use gapless_sandbox::{DEMO_AD_ACCOUNT, DEMO_PASSWORD, DEMO_USER, Fault};

fn smtp(port: u16) -> Channel {
    gapless_notify::testing::plain_smtp(port, StdDuration::from_secs(5)).unwrap()
}

async fn world_with_smtp(sink_port: u16) -> (tempfile::TempDir, DemoWorld) {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    w.engine.set_channel("email", smtp(sink_port));
    (dir, w)
}

fn subjects(messages: &[Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            mail_parser::MessageParser::default()
                .parse(&m.data)
                .unwrap()
                .subject()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn text(m: &Received) -> String {
    mail_parser::MessageParser::default()
        .parse(&m.data)
        .unwrap()
        .body_text(0)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn fifty_pipelines_on_one_broken_identity_send_one_authorization_failure_mail() {
    let sink = SmtpSink::start(0).await.unwrap();
    let (_dir, mut w) = world_with_smtp(sink.port).await;
    w.engine = {
        let mut engine = w
            .new_engine_with(|config| {
                config
                    .recipients
                    .per_pipeline
                    .insert("client-07".into(), vec!["client7-owner@example.com".into()]);
            })
            .await
            .unwrap();
        engine.set_channel("email", smtp(sink.port));
        engine
    };
    for i in 1..50 {
        let p = Pipeline {
            id: PipelineId::new(),
            name: format!("client-{i:02}"),
            ..w.pipeline.clone()
        };
        w.engine
            .store()
            .insert_pipeline(&p, w.clock.now())
            .await
            .unwrap();
    }
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.daily_run(2).await.unwrap();
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{:?}", subjects(&messages));
    assert!(subjects(&messages)[0].starts_with("Authorization Failure"));
    assert_eq!(
        messages[0].recipients,
        vec![DEMO_USER, "client7-owner@example.com"],
        "the identity's owner and the owner of one affected pipeline"
    );
    let body = text(&messages[0]);
    assert!(body.contains("Affected pipelines (50)"), "{body}");
    assert!(body.contains("client-49"));
    for p in w.engine.store().list_pipelines().await.unwrap() {
        assert!(
            matches!(p.state, PipelineState::WaitingForIdentity { .. }),
            "{}",
            p.name
        );
    }
}

#[tokio::test]
async fn smtp_down_for_the_first_hour_then_every_message_arrives_exactly_once() {
    // Reserve a port, then leave it closed: the SMTP server is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, w) = world_with_smtp(port).await;
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let mut log = w.daily_run(2).await.unwrap();
    let opened = w.clock.now();
    // The first hour: every attempt fails, nothing is lost, the backlog raises an alarm.
    while w.clock.now() < opened + Duration::minutes(59) {
        w.clock.advance(Duration::minutes(5));
        w.engine.dispatch_outbox(&mut log).await.unwrap();
    }
    let pending: Vec<_> = w
        .engine
        .store()
        .notifications(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.channel == "email")
        .collect();
    assert_eq!(pending.len(), 1);
    assert!(
        pending
            .iter()
            .all(|n| n.delivery.state == DeliveryState::Pending)
    );
    assert!(pending.iter().all(|n| n.delivery.attempts >= 3));
    assert!(
        log.events
            .iter()
            .any(|e| matches!(e, Event::OutboxBacklog { .. })),
        "the backlog is itself an alarm"
    );
    let alarms: Vec<_> = std::fs::read_dir(w.engine.outbox_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("outbox_backlog"))
        .collect();
    // The first hour of backlog past the 30-minute threshold spans two clock hours: at most
    // one alarm per hour on the fallback channel.
    assert!(
        (1..=2).contains(&alarms.len()),
        "{} alarms on the fallback channel",
        alarms.len()
    );
    // The server comes back.
    let sink = SmtpSink::start(port).await.unwrap();
    for _ in 0..30 {
        w.clock.advance(Duration::minutes(5));
        w.engine.dispatch_outbox(&mut log).await.unwrap();
    }
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{:?}", subjects(&messages));
    let all = w.engine.store().notifications(false).await.unwrap();
    assert!(
        all.iter()
            .filter(|n| n.channel == "email")
            .all(|n| n.delivery.state == DeliveryState::Delivered)
    );
}

#[tokio::test]
async fn a_three_day_outage_sends_the_configured_reminders_then_one_recovery_and_nothing_more() {
    let sink = SmtpSink::start(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = DemoWorld::start(&dir.path().join("state"), None)
        .await
        .unwrap();
    w.engine = {
        let mut engine = w
            .new_engine_with(|config| {
                config.reminders = ReminderPolicy {
                    after: vec![Duration::days(1), Duration::days(2)],
                    repeat: None,
                    escalate_from: 2,
                };
                config.recipients.escalation = vec!["head-of-data@example.com".into()];
            })
            .await
            .unwrap();
        engine.set_channel("email", smtp(sink.port));
        engine
    };
    w.daily_run(1).await.unwrap();
    w.revoke_and_run(2..=4).await.unwrap();
    w.clock.advance(Duration::hours(8));
    w.reauthorize_as(DEMO_USER, DEMO_PASSWORD).await.unwrap();
    for day in 5..=12 {
        w.daily_run(day).await.unwrap();
    }
    let messages = sink.messages();
    let subjects = subjects(&messages);
    assert_eq!(subjects.len(), 4, "{subjects:#?}");
    assert!(subjects[0].starts_with("Authorization Failure"));
    assert!(subjects[1].starts_with("Reminder 1: Authorization Failure"));
    assert!(subjects[2].starts_with("Reminder 2: Authorization Failure"));
    assert!(subjects[3].starts_with("Recovered"));
    assert!(
        subjects[3].contains("3 window(s) back-filled, 0 lost"),
        "{}",
        subjects[3]
    );
    assert_eq!(messages[1].recipients, vec![DEMO_USER]);
    assert_eq!(
        messages[2].recipients,
        vec![DEMO_USER, "head-of-data@example.com"],
        "the second reminder escalates"
    );
    // The reminders carry the growing gap.
    assert!(
        text(&messages[1]).contains("2026-01-02 to 2026-01-03"),
        "{}",
        text(&messages[1])
    );
    assert!(
        text(&messages[2]).contains("2026-01-02 to 2026-01-04"),
        "{}",
        text(&messages[2])
    );
}

#[tokio::test]
async fn each_cause_is_explained_in_its_own_words_with_what_to_do() {
    let cases = [
        (
            Fault::RevokeApp {
                user: DEMO_USER.into(),
            },
            FailureCause::ReauthRequired {
                reason: gapless_core::ReauthReason::Revoked,
            },
        ),
        (
            Fault::ChangePassword {
                user: DEMO_USER.into(),
                new_password: "another password".into(),
            },
            FailureCause::ReauthRequired {
                reason: gapless_core::ReauthReason::PasswordChanged,
            },
        ),
        (
            Fault::LockAccount {
                user: DEMO_USER.into(),
            },
            FailureCause::AccountBlocked,
        ),
        (
            Fault::RemoveFromAdAccount {
                user: DEMO_USER.into(),
                account: DEMO_AD_ACCOUNT.into(),
            },
            FailureCause::PermissionLost,
        ),
    ];
    for (fault, cause) in cases {
        let sink = SmtpSink::start(0).await.unwrap();
        let (_dir, w) = world_with_smtp(sink.port).await;
        let label = format!("{fault:?}");
        w.daily_run(1).await.unwrap();
        w.sandbox.sandbox().apply_fault(fault).unwrap();
        w.daily_run(2).await.unwrap();
        let messages = sink.messages();
        assert_eq!(messages.len(), 1, "{label}");
        let body = text(&messages[0]);
        assert!(body.contains(cause.plain_words()), "{label}: {body}");
        assert!(body.contains(cause.what_to_do()), "{label}: {body}");
        assert!(body.contains("Act by"), "{label}");
        // The subject follows the cause: a lock is not "needs reauthorization".
        let parsed = mail_parser::MessageParser::default()
            .parse(&messages[0].data)
            .unwrap();
        let subject = parsed.subject().unwrap_or_default().to_string();
        assert!(subject.contains(cause.headline()), "{label}: {subject}");
        assert_eq!(
            subject.contains("needs reauthorization"),
            cause.needs_new_credential(),
            "{label}: {subject}"
        );
        let html = mail_parser::MessageParser::default()
            .parse(&messages[0].data)
            .unwrap()
            .body_html(0)
            .unwrap()
            .to_string();
        assert!(html.contains("Reauthorize acme-ads"), "{label}");
    }
}

#[tokio::test]
async fn a_provider_outage_is_one_notice_not_one_mail_per_identity() {
    let sink = SmtpSink::start(0).await.unwrap();
    let (_dir, w) = world_with_smtp(sink.port).await;
    for i in 0..3 {
        w.connect(&format!("client-{i}")).await.unwrap();
    }
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::ServerError { count: 10_000 })
        .unwrap();
    for _ in 0..6 {
        w.clock.advance(Duration::minutes(40));
        w.engine.tick().await.unwrap();
    }
    let messages = sink.messages();
    let subjects = subjects(&messages);
    assert_eq!(subjects.len(), 1, "{subjects:#?}");
    assert!(
        subjects[0].starts_with("Provider outage: Sandbox Ads"),
        "{}",
        subjects[0]
    );
    assert!(text(&messages[0]).contains("nobody needs to reconnect"));
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn undeliverable_messages_are_kept_and_listed_as_failed() {
    let sink = SmtpSink::start(0).await.unwrap();
    let (_dir, w) = world_with_smtp(sink.port).await;
    sink.set_mode(SinkMode::RejectPermanent);
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    let log = w.daily_run(2).await.unwrap();
    assert!(
        log.events
            .iter()
            .any(|e| matches!(e, Event::NotificationFailed { .. }))
    );
    let failed = w.engine.store().notifications(true).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].kind, NotificationKind::AuthorizationFailure);
    assert!(
        failed[0]
            .delivery
            .last_error
            .as_deref()
            .unwrap()
            .contains("refused"),
        "{:?}",
        failed[0].delivery.last_error
    );
    // Not retried in a loop: a permanent refusal is final.
    w.clock.advance(Duration::hours(2));
    w.engine
        .dispatch_outbox(&mut EventLog::default())
        .await
        .unwrap();
    assert_eq!(
        w.engine.store().notifications(true).await.unwrap()[0]
            .delivery
            .attempts,
        1
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_failure_mail_leaves_when_its_failure_commits_not_at_the_end_of_the_tick() {
    let sink = SmtpSink::start(0).await.unwrap();
    let (_dir, w) = world_with_smtp(sink.port).await;
    w.daily_run(1).await.unwrap();
    w.sandbox
        .sandbox()
        .apply_fault(Fault::RevokeApp {
            user: DEMO_USER.into(),
        })
        .unwrap();
    w.clock.set(w.day(3) + Duration::hours(1));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run_then_wait = async {
        // One run, outside any tick: nothing here dispatches the outbox.
        let mut log = EventLog::default();
        w.engine.run_pipeline(&w.pipeline, &mut log).await.unwrap();
        for _ in 0..500 {
            if !sink.messages().is_empty() {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
    };
    tokio::join!(w.engine.deliver_as_written(stopped), run_then_wait);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{:?}", subjects(&messages));
    assert!(subjects(&messages)[0].starts_with("Authorization Failure"));
    let outbox = w.engine.store().notifications(false).await.unwrap();
    assert!(
        outbox
            .iter()
            .filter(|n| n.channel == "email")
            .all(|n| n.delivery.state == DeliveryState::Delivered),
        "the message is recorded as delivered"
    );
}
