//! Notifications: the messages (rendered from live state and config) and the channels that
//! deliver them. The outbox rows live in the store; this crate renders and delivers.

pub mod channels;
pub mod file;
pub mod messages;
mod smtp;
#[doc(hidden)]
#[cfg(feature = "testing")]
pub mod testing;

pub use channels::{
    Channel, DeliveryError, SlackChannel, SmtpChannel, SmtpSecurity, SmtpSettings, WebhookChannel,
};
pub use file::FileOutbox;
pub use messages::{
    CredentialKind, ExpiryNotice, FailureNotice, LostNotice, OutageNotice, RecoveryNotice,
    Rendered, SpoolSummary,
};

/// Errors of rendering or delivery. Delivery errors are retried by the dispatcher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("rendering the {what} message failed: {detail}")]
    Render { what: &'static str, detail: String },
    #[error("invalid address {address:?}: {detail}")]
    Address { address: String, detail: String },
    #[error("building the email failed: {0}")]
    Build(String),
    #[error("writing to the file outbox {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Is `address` a valid email address (`name@domain`)?
pub fn is_email_address(address: &str) -> bool {
    address.parse::<lettre::Address>().is_ok()
}
