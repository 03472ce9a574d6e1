//! Channels against real peers: an SMTP server speaking SMTP over TCP, and an HTTP webhook
//! receiver that verifies the Standard Webhooks signature.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use gapless_core::{Delivery, Notification, NotificationId, NotificationKind};
use gapless_notify::{
    Channel, DeliveryError, WebhookChannel,
    channels::webhook_signature,
    testing::{SinkMode, SmtpSink},
};
use tokio::sync::Mutex;

fn notification(recipients: &[&str]) -> Notification {
    Notification {
        id: NotificationId::new(),
        incident: None,
        kind: NotificationKind::AuthorizationFailure,
        dedupe_key: "k".into(),
        channel: "email".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        subject: "Authorization Failure: Sandbox Ads \"acme\" needs reauthorization".into(),
        body_text: "The account's password was changed.\n".into(),
        body_html: "<p>The account's password was changed.</p>".into(),
        message_id: "<incident-1.authorization_failure@gapless.local>".into(),
        created_at: Utc.with_ymd_and_hms(2026, 1, 10, 1, 0, 0).unwrap(),
        delivery: Delivery::pending(Utc.with_ymd_and_hms(2026, 1, 10, 1, 0, 0).unwrap()),
    }
}

fn smtp(port: u16) -> Channel {
    gapless_notify::testing::plain_smtp(port, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn smtp_delivers_both_parts_to_every_recipient_with_a_stable_message_id() {
    let sink = SmtpSink::start(0).await.unwrap();
    let channel = smtp(sink.port);
    let n = notification(&["ana@example.com", "ops@example.com"]);
    let receipt = channel.deliver(&n).await.unwrap();
    assert!(receipt.contains("250"), "{receipt}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "gapless@example.com");
    assert_eq!(m.recipients, vec!["ana@example.com", "ops@example.com"]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .unwrap();
    assert!(
        parsed
            .subject()
            .unwrap()
            .starts_with("Authorization Failure")
    );
    assert_eq!(
        parsed.message_id(),
        Some("incident-1.authorization_failure@gapless.local")
    );
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("password was changed")
    );
    assert!(parsed.body_html(0).unwrap().contains("<p>"));
}

#[tokio::test]
async fn smtp_refusals_and_outages_are_classified_for_the_dispatcher() {
    let sink = SmtpSink::start(0).await.unwrap();
    let channel = smtp(sink.port);
    sink.set_mode(SinkMode::RejectPermanent);
    let err = channel
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent(_)), "{err}");
    sink.set_mode(SinkMode::RejectTransient);
    let err = channel
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retry(_)), "{err}");
    sink.set_mode(SinkMode::RejectRecipient("gone@example.com".into()));
    let err = channel
        .deliver(&notification(&["gone@example.com"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent(_)), "{err}");
    assert!(sink.messages().is_empty());
    // Nobody listening: retry later.
    let port = sink.port;
    drop(sink);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = smtp(port)
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retry(_)), "{err}");
    // An address that is not one: permanent, before any connection.
    let err = smtp(port)
        .deliver(&notification(&["not an address"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent(_)), "{err}");
}

/// A request the receiver took: its webhook headers (empty for a chat message) and body.
#[derive(Clone, Debug)]
struct Hook {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Received {
    bodies: Arc<Mutex<Vec<Hook>>>,
}

async fn receiver(
    axum::extract::State(state): axum::extract::State<Received>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    state.bodies.lock().await.push(Hook {
        id: get("webhook-id"),
        timestamp: get("webhook-timestamp"),
        signature: get("webhook-signature"),
        body,
    });
    axum::http::StatusCode::NO_CONTENT
}

#[tokio::test]
async fn a_webhook_receiver_verifies_the_signature() {
    let state = Received::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receiver))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = [7u8; 32];
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let channel = Channel::Webhook(
        WebhookChannel::new(
            &format!("http://{addr}/hook"),
            &secret,
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let n = notification(&["ana@example.com"]);
    channel.deliver(&n).await.unwrap();
    channel.deliver(&n).await.unwrap();
    let got = state.bodies.lock().await.clone();
    assert_eq!(got.len(), 2);
    for Hook {
        id,
        timestamp,
        signature,
        body,
    } in &got
    {
        let ts: i64 = timestamp.parse().unwrap();
        assert_eq!(signature, &webhook_signature(&key, id, ts, body));
        assert!((Utc::now().timestamp() - ts).abs() < 60);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["type"], "gapless.authorization_failure");
    }
    // A retried delivery carries the same id, so the receiver can drop the duplicate.
    assert_eq!(got[0].id, got[1].id);
    // A tampered body does not verify.
    let Hook {
        id,
        timestamp,
        signature,
        body,
    } = &got[0];
    let tampered = body.replace("password", "passw0rd");
    assert_ne!(
        signature,
        &webhook_signature(&key, id, timestamp.parse().unwrap(), &tampered)
    );
}

#[tokio::test]
async fn a_webhook_that_times_out_is_retried_later() {
    // A receiver that accepts the connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let channel = Channel::Webhook(
        WebhookChannel::new(
            &format!("http://{addr}/hook"),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Duration::from_millis(300),
        )
        .unwrap(),
    );
    let err = channel
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Retry(ref m) if m.contains("timed out")),
        "{err}"
    );
    hold.abort();
}

async fn slack_receiver(
    axum::extract::State(state): axum::extract::State<Received>,
    body: String,
) -> (axum::http::StatusCode, &'static str) {
    let json: serde_json::Value = match serde_json::from_str(&body) {
        Ok(json) => json,
        Err(_) => return (axum::http::StatusCode::BAD_REQUEST, "invalid_payload"),
    };
    if json["text"].as_str().is_none() {
        return (axum::http::StatusCode::BAD_REQUEST, "no_text");
    }
    state.bodies.lock().await.push(Hook {
        id: String::new(),
        timestamp: String::new(),
        signature: String::new(),
        body,
    });
    (axum::http::StatusCode::OK, "ok")
}

#[tokio::test]
async fn slack_gets_the_subject_and_text_and_a_revoked_webhook_is_permanent() {
    let state = Received::default();
    let app = axum::Router::new()
        .route("/services/T/B/X", axum::routing::post(slack_receiver))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let channel = Channel::Slack(
        gapless_notify::SlackChannel::new(
            &format!("http://{addr}/services/T/B/X"),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    channel
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap();
    let got = state.bodies.lock().await.clone();
    let json: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    let text = json["text"].as_str().unwrap();
    assert!(text.starts_with("*Authorization Failure"), "{text}");
    assert!(text.contains("password was changed"), "{text}");
    // A webhook that no longer exists (Slack answers 404): retrying cannot help.
    let gone = Channel::Slack(
        gapless_notify::SlackChannel::new(
            &format!("http://{addr}/services/gone"),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let err = gone
        .deliver(&notification(&["a@example.com"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent(_)), "{err}");
}

#[tokio::test]
async fn smtp_sends_the_next_message_on_its_open_connection_and_on_a_new_one_when_the_server_hung_up()
 {
    let sink = SmtpSink::start(0).await.unwrap();
    let channel = smtp(sink.port);
    for n in 0..3 {
        let receipt = channel
            .deliver(&notification(&[&format!("user{n}@example.com")]))
            .await
            .unwrap();
        assert!(receipt.contains("250"), "{receipt}");
    }
    assert_eq!(sink.messages().len(), 3);
    assert_eq!(sink.connections(), 1, "one connection for three messages");

    // The server closes each connection after a message: the kept one is dead when the
    // next message comes, which is then sent on a new connection, not failed.
    sink.set_mode(SinkMode::HangUpAfterMessage);
    for n in 3..6 {
        channel
            .deliver(&notification(&[&format!("user{n}@example.com")]))
            .await
            .unwrap();
    }
    let recipients: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.recipients[0].clone())
        .collect();
    assert_eq!(
        recipients,
        (0..6)
            .map(|n| format!("user{n}@example.com"))
            .collect::<Vec<_>>(),
        "every message once, in order"
    );
    // The first of them went on the kept connection; each after it on a new one.
    assert_eq!(sink.connections(), 3);
}
