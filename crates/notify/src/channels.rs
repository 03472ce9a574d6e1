//! Delivery channels: SMTP email, the file outbox (email when no SMTP server is set), Slack
//! incoming webhooks and generic webhooks signed per the Standard Webhooks scheme.
//!
//! A delivery either succeeds, fails in a way worth retrying (connection, timeout, 4xx
//! from SMTP, 5xx or 429 from HTTP), or fails permanently (5xx from SMTP, a refused
//! address, 4xx from HTTP); the dispatcher retries the first kind with backoff and keeps
//! both visible.

use std::time::Duration;

use base64::Engine as _;
use gapless_core::Notification;
use gapless_vault::Password;
use hmac::{Hmac, KeyInit, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::Mailbox,
    transport::smtp::{authentication::Credentials, client::TlsParameters},
};
use sha2::Sha256;

use crate::{FileOutbox, NotifyError, file::build_message};

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another attempt later.
    #[error("{0} (will retry)")]
    Retry(String),
    /// Retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// No TLS (a local relay).
    Plain,
    /// Upgrade with STARTTLS (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// An SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub timeout: Duration,
}

/// Email through an SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpChannel {
    connections: SmtpConnections,
    from: Mailbox,
}

/// Who opens the connections (see [`crate::smtp`]).
#[derive(Debug, Clone)]
enum SmtpConnections {
    /// Plain or STARTTLS: sockets opened here, without delay.
    Own(std::sync::Arc<crate::smtp::SmtpClient>),
    /// TLS from the first byte: lettre's transport.
    Lettre(AsyncSmtpTransport<Tokio1Executor>),
}

impl SmtpChannel {
    pub fn new(settings: &SmtpSettings, from: &str) -> Result<Self, NotifyError> {
        let from =
            from.parse()
                .map_err(|e: lettre::address::AddressError| NotifyError::Address {
                    address: from.to_string(),
                    detail: e.to_string(),
                })?;
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_string(),
            )),
            _ => None,
        };
        let own = |starttls| {
            SmtpConnections::Own(std::sync::Arc::new(crate::smtp::SmtpClient::new(
                &settings.host,
                settings.port,
                starttls,
                credentials.clone(),
                settings.timeout,
            )))
        };
        let connections = match settings.security {
            SmtpSecurity::Plain => own(None),
            SmtpSecurity::StartTls => own(Some(
                TlsParameters::new(settings.host.clone())
                    .map_err(|e| NotifyError::Build(format!("SMTP STARTTLS setup: {e}")))?,
            )),
            SmtpSecurity::Tls => {
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                    .map_err(|e| NotifyError::Build(format!("SMTP TLS setup: {e}")))?
                    .port(settings.port)
                    .timeout(Some(settings.timeout));
                if let Some(credentials) = credentials.clone() {
                    builder = builder.credentials(credentials);
                }
                SmtpConnections::Lettre(builder.build())
            }
        };
        Ok(Self { connections, from })
    }

    async fn deliver(&self, n: &Notification) -> Result<String, DeliveryError> {
        let message =
            build_message(n, &self.from).map_err(|e| DeliveryError::Permanent(e.to_string()))?;
        let code = match &self.connections {
            SmtpConnections::Own(client) => client.send(&message).await?,
            SmtpConnections::Lettre(transport) => transport
                .send(message)
                .await
                .map_err(|error| crate::smtp::refused(&error))?
                .code()
                .to_string(),
        };
        Ok(format!("accepted by SMTP server: {code}"))
    }
}

/// A Slack incoming webhook.
#[derive(Clone)]
pub struct SlackChannel {
    url: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The webhook URL is a credential.
        f.debug_struct("SlackChannel").finish_non_exhaustive()
    }
}

/// A generic webhook, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).
#[derive(Clone)]
pub struct WebhookChannel {
    url: String,
    key: Vec<u8>,
    http: reqwest::Client,
}

impl std::fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| NotifyError::Build(e.to_string()))
}

async fn post(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<String, DeliveryError> {
    let _ = http;
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Ok(format!("{what} answered {status}"))
            } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(DeliveryError::Retry(format!("{what} answered {status}")))
            } else {
                Err(DeliveryError::Permanent(format!(
                    "{what} answered {status}"
                )))
            }
        }
        Err(error) if error.is_timeout() => Err(DeliveryError::Retry(format!("{what} timed out"))),
        Err(error) => Err(DeliveryError::Retry(format!(
            "{what}: {}",
            std::error::Error::source(&error)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "request failed".into())
        ))),
    }
}

impl SlackChannel {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, NotifyError> {
        url::Url::parse(url).map_err(|e| NotifyError::Build(format!("Slack webhook URL: {e}")))?;
        Ok(Self {
            url: url.to_string(),
            http: http_client(timeout)?,
        })
    }

    async fn deliver(&self, n: &Notification) -> Result<String, DeliveryError> {
        let body = serde_json::json!({
            "text": format!("*{}*\n{}", n.subject, n.body_text),
        });
        post(&self.http, self.http.post(&self.url).json(&body), "Slack").await
    }
}

/// Sign a webhook payload: the value of the `webhook-signature` header.
pub fn webhook_signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

impl WebhookChannel {
    /// `secret` is `whsec_<base64>` (or raw base64).
    pub fn new(url: &str, secret: &str, timeout: Duration) -> Result<Self, NotifyError> {
        url::Url::parse(url).map_err(|e| NotifyError::Build(format!("webhook URL: {e}")))?;
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| NotifyError::Build("the webhook secret is not base64 (whsec_…)".into()))?;
        if key.len() < 16 {
            return Err(NotifyError::Build(
                "the webhook secret is shorter than 16 bytes".into(),
            ));
        }
        Ok(Self {
            url: url.to_string(),
            key,
            http: http_client(timeout)?,
        })
    }

    async fn deliver(&self, n: &Notification) -> Result<String, DeliveryError> {
        let body = serde_json::json!({
            "type": format!("gapless.{}", n.kind.as_str()),
            "timestamp": n.created_at,
            "data": {
                "notification_id": n.id,
                "incident_id": n.incident,
                "subject": n.subject,
                "text": n.body_text,
                "recipients": n.recipients,
            },
        })
        .to_string();
        // The message id is stable across retries, so receivers can deduplicate.
        let id = format!("msg_{}", n.id.as_uuid().simple());
        let timestamp = chrono::Utc::now().timestamp();
        let signature = webhook_signature(&self.key, &id, timestamp, &body);
        let request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        post(&self.http, request, "webhook").await
    }
}

/// Where a notification row goes.
#[derive(Debug, Clone)]
pub enum Channel {
    File(FileOutbox),
    Smtp(SmtpChannel),
    Slack(SlackChannel),
    Webhook(WebhookChannel),
}

impl Channel {
    /// Deliver; the text returned describes the receipt.
    pub async fn deliver(&self, n: &Notification) -> Result<String, DeliveryError> {
        match self {
            Self::File(outbox) => {
                // The write ends in fsyncs: off the async workers.
                let (outbox, message) = (outbox.clone(), n.clone());
                let written = tokio::task::spawn_blocking(move || outbox.deliver(&message))
                    .await
                    .map_err(|e| DeliveryError::Retry(format!("the file write stopped: {e}")))?;
                match written {
                    Ok(path) => Ok(format!("written to {}", path.display())),
                    Err(e @ NotifyError::Address { .. }) => {
                        Err(DeliveryError::Permanent(e.to_string()))
                    }
                    Err(e) => Err(DeliveryError::Retry(e.to_string())),
                }
            }
            Self::Smtp(smtp) => smtp.deliver(n).await,
            Self::Slack(slack) => slack.deliver(n).await,
            Self::Webhook(webhook) => webhook.deliver(n).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = webhook_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_short_or_malformed_webhook_secret_is_refused() {
        assert!(
            WebhookChannel::new("http://127.0.0.1:9/", "whsec_!!!", Duration::from_secs(1))
                .is_err()
        );
        assert!(
            WebhookChannel::new(
                "http://127.0.0.1:9/",
                "whsec_c2hvcnQ=",
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
