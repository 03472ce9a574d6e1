//! The file outbox: each message as an RFC 5322 `.eml` file (text + HTML) in a directory.
//! The default channel when no SMTP server is configured.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use gapless_core::Notification;
use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

use crate::NotifyError;

#[derive(Debug, Clone)]
pub struct FileOutbox {
    dir: PathBuf,
    from: Mailbox,
}

fn mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    address
        .parse()
        .map_err(|e: lettre::address::AddressError| NotifyError::Address {
            address: address.to_string(),
            detail: e.to_string(),
        })
}

/// Build the MIME message of a notification.
pub fn build_message(n: &Notification, from: &Mailbox) -> Result<Message, NotifyError> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(n.subject.clone())
        .message_id(Some(n.message_id.clone()))
        .date(SystemTime::from(n.created_at));
    for recipient in &n.recipients {
        builder = builder.to(mailbox(recipient)?);
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            n.body_text.clone(),
            n.body_html.clone(),
        ))
        .map_err(|e| NotifyError::Build(e.to_string()))
}

impl FileOutbox {
    pub fn new(dir: impl Into<PathBuf>, from: &str) -> Result<Self, NotifyError> {
        Ok(Self {
            dir: dir.into(),
            from: mailbox(from)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a notification is written to. Stable per notification, so a retried
    /// delivery overwrites nothing and adds nothing.
    pub fn path_for(&self, n: &Notification) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{}.eml",
            n.created_at.format("%Y%m%dT%H%M%SZ"),
            n.kind.as_str(),
            n.id
        ))
    }

    /// Write the message (temporary file, fsync, rename). Already written: nothing to do.
    pub fn deliver(&self, n: &Notification) -> Result<PathBuf, NotifyError> {
        let path = self.path_for(n);
        if path.exists() {
            return Ok(path);
        }
        let io = |source| NotifyError::Io {
            path: self.dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let message = build_message(n, &self.from)?;
        let tmp = self.dir.join(format!(".{}.tmp", n.id));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&message.formatted()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use gapless_core::{Delivery, NotificationId, NotificationKind};

    fn notification() -> Notification {
        let rendered = crate::messages::tests::notice().render().unwrap();
        Notification {
            id: NotificationId::new(),
            incident: None,
            kind: NotificationKind::AuthorizationFailure,
            dedupe_key: "k".into(),
            channel: "file".into(),
            recipients: vec!["ana@example.com".into(), "ops@example.com".into()],
            subject: rendered.subject,
            body_text: rendered.text,
            body_html: rendered.html,
            message_id: "<incident-1.failure@gapless.local>".into(),
            created_at: Utc.with_ymd_and_hms(2026, 1, 10, 1, 0, 0).unwrap(),
            delivery: Delivery::pending(Utc.with_ymd_and_hms(2026, 1, 10, 1, 0, 0).unwrap()),
        }
    }

    #[test]
    fn eml_parses_as_mime_with_text_and_html_parts() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            FileOutbox::new(dir.path().join("outbox"), "gapless <gapless@localhost>").unwrap();
        let n = notification();
        let path = outbox.deliver(&n).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        assert!(parsed.subject().unwrap().contains("Authorization Failure"));
        assert_eq!(
            parsed.message_id(),
            Some("incident-1.failure@gapless.local")
        );
        assert_eq!(parsed.to().unwrap().iter().count(), 2);
        assert!(parsed.body_text(0).unwrap().contains("190/458"));
        assert!(parsed.body_html(0).unwrap().contains("<h1"));
        // A retried delivery is the same file, not a second message.
        assert_eq!(outbox.deliver(&n).unwrap(), path);
        assert_eq!(
            std::fs::read_dir(dir.path().join("outbox"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn a_bad_recipient_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::new(dir.path(), "gapless@localhost").unwrap();
        let mut n = notification();
        n.recipients = vec!["not an address".into()];
        let err = outbox.deliver(&n).unwrap_err().to_string();
        assert!(err.contains("not an address"), "{err}");
    }
}
