//! SMTP connections that gapless opens itself, so that they send without delay.
//!
//! lettre writes a message's body and its closing `CRLF.CRLF` as two writes; on a socket
//! with Nagle's algorithm on (lettre's own sockets), the second waits until the server
//! acknowledges the first, and a server waiting for the end of the data delays that
//! acknowledgement (40 ms on Linux): every message took at least that long. Here the TCP
//! socket is opened with `TCP_NODELAY` and handed to lettre's connection, which does the
//! protocol (EHLO, STARTTLS with lettre's TLS and the platform's trust store, AUTH, the
//! transaction). Connections are kept for the next message (at most [`MAX_IDLE`], each for
//! [`IDLE_FOR`]).
//!
//! TLS from the first byte (port 465) stays on lettre's own transport: it needs TLS before
//! the greeting, which lettre only does on sockets it opens itself.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lettre::{
    Message,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        extension::ClientId,
    },
};

use crate::channels::DeliveryError;

/// Connections kept open between messages.
pub(crate) const MAX_IDLE: usize = 16;
/// How long a kept connection is used again (servers close idle ones after a while).
pub(crate) const IDLE_FOR: Duration = Duration::from_secs(30);

/// A server reached over connections opened here.
pub(crate) struct SmtpClient {
    host: String,
    port: u16,
    /// Upgrade with STARTTLS (built once: it holds the platform's trust store).
    starttls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl std::fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("starttls", &self.starttls.is_some())
            .finish_non_exhaustive()
    }
}

impl SmtpClient {
    pub(crate) fn new(
        host: &str,
        port: u16,
        starttls: Option<TlsParameters>,
        credentials: Option<Credentials>,
        timeout: Duration,
    ) -> Self {
        Self {
            host: host.to_string(),
            port,
            starttls,
            credentials,
            timeout,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Send `message`; the server's reply code when it accepted it.
    pub(crate) async fn send(&self, message: &Message) -> Result<String, DeliveryError> {
        let envelope = message.envelope();
        let body = message.formatted();
        // A kept connection the server has closed meanwhile fails before any reply: the
        // message is sent once more on a new one.
        if let Some(mut kept) = self.kept() {
            match self.within(smtp(kept.send(envelope, &body))).await {
                Ok(response) => {
                    self.keep(kept);
                    return Ok(response.code().to_string());
                }
                // A reply with a code is the server's answer to this message.
                Err(SendFailure::Smtp(error)) if error.status().is_some() => {
                    return Err(refused(&error));
                }
                // No answer in time: it may have been taken; the dispatcher tries again
                // later rather than at once on another connection.
                Err(failure @ SendFailure::TimedOut(_)) => return Err(failed(failure)),
                // Closed or broken: dropped (not QUIT, which could wait on it again).
                Err(_) => drop(kept),
            }
        }
        let mut fresh = self.within(self.connect()).await.map_err(failed)?;
        match self.within(smtp(fresh.send(envelope, &body))).await {
            Ok(response) => {
                self.keep(fresh);
                Ok(response.code().to_string())
            }
            Err(failure) => Err(failed(failure)),
        }
    }

    /// A new connection: TCP without delay, greeting and EHLO, STARTTLS, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendFailure> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(SendFailure::Io)?;
        tcp.set_nodelay(true).map_err(SendFailure::Io)?;
        let mut connection = smtp(AsyncSmtpConnection::connect_with_transport(
            Box::new(tcp),
            &self.hello,
        ))
        .await?;
        if let Some(tls) = &self.starttls {
            smtp(connection.starttls(tls.clone(), &self.hello)).await?;
        }
        if let Some(credentials) = &self.credentials {
            smtp(connection.auth(&[Mechanism::Plain, Mechanism::Login], credentials)).await?;
        }
        Ok(connection)
    }

    /// `work`, given up after the configured timeout.
    async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, SendFailure>>,
    ) -> Result<T, SendFailure> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(SendFailure::TimedOut(self.timeout)))
    }

    /// A kept connection that has not idled too long (older ones are dropped).
    fn kept(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((connection, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && !connection.has_broken() {
                return Some(connection);
            }
        }
        None
    }

    fn keep(&self, connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((connection, Instant::now()));
        }
    }
}

/// Why a send did not complete.
enum SendFailure {
    /// Connecting failed.
    Io(std::io::Error),
    /// The protocol failed, or the server refused.
    Smtp(lettre::transport::smtp::Error),
    TimedOut(Duration),
}

/// A step of lettre's, its error as a [`SendFailure`].
async fn smtp<T>(
    step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, SendFailure> {
    step.await.map_err(SendFailure::Smtp)
}

/// A failure of lettre's: permanent when the server refused for good (5xx), else worth
/// another attempt.
pub(crate) fn refused(error: &lettre::transport::smtp::Error) -> DeliveryError {
    if error.is_permanent() {
        DeliveryError::Permanent(format!("the SMTP server refused the message: {error}"))
    } else {
        DeliveryError::Retry(format!("SMTP: {error}"))
    }
}

fn failed(failure: SendFailure) -> DeliveryError {
    match failure {
        SendFailure::Io(error) => DeliveryError::Retry(format!("SMTP: connecting failed: {error}")),
        SendFailure::Smtp(error) => refused(&error),
        SendFailure::TimedOut(after) => {
            DeliveryError::Retry(format!("SMTP: no answer within {} s", after.as_secs()))
        }
    }
}
