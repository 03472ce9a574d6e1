//! Message content. Every figure (dates, counts, lookback) comes from the caller's live state
//! and configuration; the templates are checked at build time.

use askama::Template;

use crate::NotifyError;

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What an Authorization Failure message says.
#[derive(Debug, Clone)]
pub struct FailureNotice {
    pub incident_id: String,
    pub provider: String,
    pub identity_label: String,
    pub upstream_account: Option<String>,
    /// What the identity needs, after its label: "needs reauthorization", "is locked at the
    /// provider", … (follows the cause).
    pub headline: String,
    pub cause_words: String,
    /// Where it failed, when one resource or stream did (e.g. "ad account act_1, stream
    /// insights").
    pub resource: Option<String>,
    pub provider_code: String,
    pub provider_message: Option<String>,
    pub what_to_do: String,
    /// When the incident opened.
    pub opened: String,
    /// When the failure this message is about began.
    pub since: String,
    pub reauthorize_url: String,
    /// The words on the link ("Reauthorize acme", "Enter the new password for …").
    pub link_words: String,
    pub pipelines: Vec<String>,
    /// Missing ranges so far, in words.
    pub gaps: Vec<String>,
    /// The last moment to act without loss, if the provider has a lookback limit.
    pub deadline: Option<String>,
    /// The data lost first if the deadline passes (e.g. "2026-01-10").
    pub first_lost_range: String,
    /// How much history the provider serves, in words ("3 days", "36 hours").
    pub history: String,
    /// Set for reminders: their number (1-based).
    pub reminder: Option<u32>,
    /// Set when the identity failed again after a recovery: how many times.
    pub again: Option<u32>,
    /// For a destination: what waits in the spool meanwhile (nothing is paused or lost).
    pub spool: Option<SpoolSummary>,
}

/// What waits in the spool while a destination cannot take data.
#[derive(Debug, Clone)]
pub struct SpoolSummary {
    pub windows: u64,
    pub used: String,
    pub limit: String,
    pub max_age: String,
    pub oldest: Option<String>,
}

/// What kind of secret an identity holds, for the words of its messages: a token is
/// renewed by reauthorizing at the provider, a key or password by entering the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Token,
    ApiKey,
    Password,
}

impl CredentialKind {
    /// What the identity needs, after its label in a subject: follows the cause, and names
    /// a password or key where a new token is not what is needed.
    pub fn headline(self, cause: gapless_core::FailureCause) -> &'static str {
        match (cause.needs_new_credential(), self) {
            (true, Self::Password) => "needs its new password",
            (true, Self::ApiKey) => "needs a new API key",
            _ => cause.headline(),
        }
    }

    /// What to do, in plain words: a key or password is entered anew (checked before it
    /// is saved), a token is renewed at the provider.
    pub fn what_to_do(self, cause: gapless_core::FailureCause) -> &'static str {
        match (cause.needs_new_credential(), self) {
            (true, Self::Password) => {
                "Enter the current password at the link below; gapless checks it before saving it and then delivers what waited."
            }
            (true, Self::ApiKey) => {
                "Create a new API key at the provider and enter it at the link below; gapless checks it before saving it."
            }
            _ => cause.what_to_do(),
        }
    }

    /// The words on a message's link.
    pub fn link_words(self, label: &str) -> String {
        match self {
            Self::Password => format!("Enter the new password for {label}"),
            Self::ApiKey => format!("Enter a new API key for {label}"),
            Self::Token => format!("Reauthorize {label}"),
        }
    }
}

/// What a "data lost" message says: windows that passed the provider's retention while
/// the identity was usable.
#[derive(Debug, Clone)]
pub struct LostNotice {
    pub provider: String,
    pub identity_label: String,
    pub pipeline: String,
    /// Each lost window in words ("insights 2026-01-04").
    pub windows: Vec<String>,
    /// Why, in words (the provider's own words when it refused).
    pub why: String,
}

/// What an expiry warning says.
#[derive(Debug, Clone)]
pub struct ExpiryNotice {
    pub provider: String,
    pub identity_label: String,
    pub upstream_account: Option<String>,
    /// What expires, in words ("refresh token", "authorization").
    pub kind: String,
    pub expires_at: String,
    pub days_left: i64,
    pub reauthorize_url: String,
    pub pipelines: Vec<String>,
}

/// What a provider outage notice says.
#[derive(Debug, Clone)]
pub struct OutageNotice {
    pub provider: String,
    pub failing: usize,
    pub total: usize,
    pub since: String,
    pub identities: Vec<String>,
}

/// What a recovery message says.
#[derive(Debug, Clone)]
pub struct RecoveryNotice {
    pub incident_id: String,
    pub provider: String,
    pub identity_label: String,
    pub upstream_account: Option<String>,
    pub outage_from: String,
    pub recovered_at: String,
    pub outage_duration: String,
    pub recovered_windows: u64,
    pub lost_windows: u64,
    pub lost_ranges: Vec<String>,
    /// Windows of the outage still missing (transient failures, retried automatically).
    pub still_missing: u64,
    pub pipelines: Vec<String>,
    /// The identity is a destination's: its windows came from the spool.
    pub destination: bool,
}

#[derive(Template)]
#[template(path = "authorization_failure.txt", escape = "none")]
struct FailureText<'a> {
    n: &'a FailureNotice,
}

#[derive(Template)]
#[template(path = "authorization_failure.html")]
struct FailureHtml<'a> {
    n: &'a FailureNotice,
}

#[derive(Template)]
#[template(path = "expiry_warning.txt", escape = "none")]
struct ExpiryText<'a> {
    n: &'a ExpiryNotice,
}

#[derive(Template)]
#[template(path = "expiry_warning.html")]
struct ExpiryHtml<'a> {
    n: &'a ExpiryNotice,
}

#[derive(Template)]
#[template(path = "provider_outage.txt", escape = "none")]
struct OutageText<'a> {
    n: &'a OutageNotice,
}

#[derive(Template)]
#[template(path = "provider_outage.html")]
struct OutageHtml<'a> {
    n: &'a OutageNotice,
}

#[derive(Template)]
#[template(path = "recovery.txt", escape = "none")]
struct RecoveryText<'a> {
    n: &'a RecoveryNotice,
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct RecoveryHtml<'a> {
    n: &'a RecoveryNotice,
}

#[derive(Template)]
#[template(path = "windows_lost.txt", escape = "none")]
struct LostText<'a> {
    n: &'a LostNotice,
}

#[derive(Template)]
#[template(path = "windows_lost.html")]
struct LostHtml<'a> {
    n: &'a LostNotice,
}

fn render(what: &'static str, t: &impl Template) -> Result<String, NotifyError> {
    t.render().map_err(|e| NotifyError::Render {
        what,
        detail: e.to_string(),
    })
}

impl FailureNotice {
    pub fn render(&self) -> Result<Rendered, NotifyError> {
        Ok(Rendered {
            subject: format!(
                "{}{}: {} \"{}\" {}{}",
                self.reminder
                    .map(|n| format!("Reminder {n}: "))
                    .unwrap_or_default(),
                if self.again.is_some() {
                    "Failing again"
                } else {
                    "Authorization Failure"
                },
                self.provider,
                self.identity_label,
                self.headline,
                match (&self.spool, &self.deadline) {
                    (Some(_), _) | (None, None) => String::new(),
                    (None, Some(d)) => format!(" (act by {d})"),
                }
            ),
            text: render("authorization failure", &FailureText { n: self })?,
            html: render("authorization failure", &FailureHtml { n: self })?,
        })
    }
}

impl ExpiryNotice {
    pub fn render(&self) -> Result<Rendered, NotifyError> {
        Ok(Rendered {
            subject: format!(
                "Authorization expiring: {} \"{}\" in {} day(s), on {}",
                self.provider, self.identity_label, self.days_left, self.expires_at
            ),
            text: render("expiry warning", &ExpiryText { n: self })?,
            html: render("expiry warning", &ExpiryHtml { n: self })?,
        })
    }
}

impl OutageNotice {
    pub fn render(&self) -> Result<Rendered, NotifyError> {
        Ok(Rendered {
            subject: format!(
                "Provider outage: {} ({} of {} identities failing; nobody needs to reconnect)",
                self.provider, self.failing, self.total
            ),
            text: render("provider outage", &OutageText { n: self })?,
            html: render("provider outage", &OutageHtml { n: self })?,
        })
    }
}

impl RecoveryNotice {
    pub fn render(&self) -> Result<Rendered, NotifyError> {
        Ok(Rendered {
            subject: format!(
                "Recovered: {} \"{}\" works again ({} window(s) {}, {} lost{})",
                self.provider,
                self.identity_label,
                self.recovered_windows,
                if self.destination {
                    "delivered"
                } else {
                    "back-filled"
                },
                self.lost_windows,
                if self.still_missing > 0 {
                    format!(", {} still missing", self.still_missing)
                } else {
                    String::new()
                }
            ),
            text: render("recovery", &RecoveryText { n: self })?,
            html: render("recovery", &RecoveryHtml { n: self })?,
        })
    }
}

impl LostNotice {
    pub fn render(&self) -> Result<Rendered, NotifyError> {
        Ok(Rendered {
            subject: format!(
                "Data lost: {} window(s) of pipeline \"{}\" are no longer served by {}",
                self.windows.len(),
                self.pipeline,
                self.provider
            ),
            text: render("data lost", &LostText { n: self })?,
            html: render("data lost", &LostHtml { n: self })?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn notice() -> FailureNotice {
        FailureNotice {
            incident_id: "inc-1".into(),
            provider: "Sandbox Ads".into(),
            identity_label: "acme <ads>".into(),
            upstream_account: Some("Ana Example (u_100)".into()),
            headline: "needs reauthorization".into(),
            cause_words: "Access was revoked.".into(),
            resource: None,
            provider_code: "190/458".into(),
            provider_message: Some("The user has not authorized application.".into()),
            what_to_do: "Approve the app again.".into(),
            opened: "2026-01-10 01:00 UTC".into(),
            since: "2026-01-10 01:00 UTC".into(),
            reauthorize_url: "http://127.0.0.1:8080/reauthorize/abc".into(),
            link_words: "Reauthorize acme <ads>".into(),
            pipelines: vec!["acme-daily".into()],
            gaps: vec!["insights 2026-01-10 (1 window)".into()],
            deadline: Some("2029-01-04".into()),
            first_lost_range: "2026-01-10".into(),
            history: "1110 days".into(),
            reminder: None,
            again: None,
            spool: None,
        }
    }

    #[test]
    fn failure_message_carries_cause_action_link_and_deadline() {
        let r = notice().render().unwrap();
        assert!(r.subject.starts_with("Authorization Failure"));
        assert!(r.subject.contains("act by 2029-01-04"));
        for needle in [
            "Access was revoked.",
            "190/458",
            "Approve the app again.",
            "http://127.0.0.1:8080/reauthorize/abc",
            "Act by 2029-01-04",
            "acme-daily",
            "1110 days",
        ] {
            assert!(r.text.contains(needle), "text lacks {needle}:\n{}", r.text);
            assert!(r.html.contains(needle), "html lacks {needle}");
        }
        // HTML escapes what came from users; text keeps it verbatim.
        assert!(r.html.contains("acme &#60;ads&#62;") || r.html.contains("acme &lt;ads&gt;"));
        assert!(r.text.contains("acme <ads>"));
    }

    #[test]
    fn recovery_message_counts_recovered_and_lost_windows() {
        let r = RecoveryNotice {
            incident_id: "inc-1".into(),
            provider: "Sandbox Ads".into(),
            identity_label: "acme".into(),
            upstream_account: None,
            outage_from: "2026-01-10".into(),
            recovered_at: "2026-01-13".into(),
            outage_duration: "3 days".into(),
            recovered_windows: 3,
            lost_windows: 0,
            lost_ranges: vec![],
            still_missing: 0,
            pipelines: vec!["acme-daily".into()],
            destination: false,
        }
        .render()
        .unwrap();
        assert!(r.subject.contains("3 window(s) back-filled, 0 lost"));
        assert!(r.text.contains("Windows back-filled: 3"));
    }
}
