//! A small SMTP server for tests (a real SMTP conversation over TCP, not a mock transport):
//! it accepts, refuses (5xx or 4xx), or refuses one recipient, and keeps what it received.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    /// When the server accepted it (wall clock, for benchmarks).
    pub accepted_at: std::time::Instant,
}

/// How the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkMode {
    Accept,
    /// `554` after DATA: a permanent refusal.
    RejectPermanent,
    /// `451` after DATA: try again later.
    RejectTransient,
    /// `550` for this recipient.
    RejectRecipient(String),
    /// Accept each message, then close the connection (as a server does with one it
    /// deems idle).
    HangUpAfterMessage,
}

/// A running SMTP sink.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<SinkMode>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn address(arg: &str) -> String {
    arg.split_once(':')
        .map(|(_, a)| a)
        .unwrap_or(arg)
        .trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}

impl SmtpSink {
    /// Listen on 127.0.0.1:`port` (0: any free port).
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(SinkMode::Accept));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, m, c) = (received.clone(), mode.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (r, m) = (r.clone(), m.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, r, m).await;
                });
            }
        });
        Ok(Self {
            port,
            received,
            mode,
            connections,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *lock(&self.mode) = mode;
    }

    /// What was accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }
}

/// Mail over plain SMTP (no TLS, no login) from `gapless <gapless@example.com>` to a
/// server on a loopback `port`, such as an [`SmtpSink`]'s.
pub fn plain_smtp(
    port: u16,
    timeout: std::time::Duration,
) -> Result<crate::Channel, crate::NotifyError> {
    Ok(crate::Channel::Smtp(crate::SmtpChannel::new(
        &crate::SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            security: crate::SmtpSecurity::Plain,
            username: None,
            password: None,
            timeout,
        },
        "gapless <gapless@example.com>",
    )?))
}

/// A message's lines up to the lone dot, each unstuffed (RFC 5321 §4.5.2); None when the
/// client hung up before the dot.
async fn read_data(
    lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    loop {
        let mut l = String::new();
        if lines.read_line(&mut l).await? == 0 {
            return Ok(None);
        }
        if l == ".\r\n" || l == ".\n" {
            return Ok(Some(data));
        }
        let unstuffed = l
            .strip_prefix('.')
            .filter(|_| l.starts_with(".."))
            .unwrap_or(&l);
        data.extend_from_slice(unstuffed.as_bytes());
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<SinkMode>>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut recipients = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM") {
            from = address(&command);
            recipients.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            let to = address(&command);
            if *lock(&mode) == SinkMode::RejectRecipient(to.clone()) {
                b"550 5.1.1 no such mailbox\r\n"
            } else {
                recipients.push(to);
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let Some(data) = read_data(&mut lines).await? else {
                return Ok(());
            };
            let answer = lock(&mode).clone();
            match answer {
                SinkMode::RejectPermanent => b"554 5.7.1 message refused\r\n".as_slice(),
                SinkMode::RejectTransient => b"451 4.3.0 try again later\r\n".as_slice(),
                _ => {
                    lock(&received).push(Received {
                        from: from.clone(),
                        recipients: recipients.clone(),
                        data,
                        accepted_at: std::time::Instant::now(),
                    });
                    if answer == SinkMode::HangUpAfterMessage {
                        write.write_all(b"250 OK queued\r\n").await?;
                        return Ok(());
                    }
                    b"250 OK queued\r\n".as_slice()
                }
            }
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}
