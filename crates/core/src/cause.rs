//! Failure causes: what a provider's error means for the pipeline, independent of provider.
//!
//! Behaviour is keyed on the [`FailureCause`]; the provider's own code and message travel
//! beside it in [`Failure`] for humans, never for decisions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a reauthorization is required. Providers often lump these together (OAuth
/// `invalid_grant` is a catch-all); `InvalidGrant` is used when nothing more precise is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReauthReason {
    /// The authorization reached its lifetime.
    Expired,
    /// The user or an admin removed the app's access.
    Revoked,
    /// The user changed their password, which invalidated the authorization.
    PasswordChanged,
    /// The session behind the token ended (logout, session policy).
    SessionExpired,
    /// The provider rejected the grant without saying why.
    InvalidGrant,
    /// A password or API key was rejected.
    InvalidCredentials,
    /// A refresh was sent but its answer was lost: the refresh token may have been spent,
    /// so it is not sent again (a rotating provider would revoke the whole grant).
    RefreshOutcomeUnknown,
    /// The stored credential cannot be decrypted with the configured master key.
    Undecryptable,
}

impl ReauthReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::PasswordChanged => "password_changed",
            Self::SessionExpired => "session_expired",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidCredentials => "invalid_credentials",
            Self::RefreshOutcomeUnknown => "refresh_outcome_unknown",
            Self::Undecryptable => "undecryptable",
        }
    }
}

/// The class of a failure (see the provider reference §0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureCause {
    /// The access token expired; refresh silently and retry once.
    Refreshable,
    /// Permanent until a human reauthorizes.
    ReauthRequired { reason: ReauthReason },
    /// The user lost a permission or scope on the resource.
    PermissionLost,
    /// The upstream account is blocked until its owner acts at the provider.
    AccountBlocked,
    /// The application itself is not approved; an operator must act.
    AppNotApproved,
    /// Throttled; back off (the provider's hint in seconds when it gave one).
    RateLimited { retry_after_secs: Option<u64> },
    /// A temporary error; retry with backoff.
    Transient,
    /// The provider refuses the requested range as outside its retention: the window is
    /// lost (window-specific, the run goes on).
    OutsideRetention,
    /// The provider's answer for a request could not be used (malformed, rows outside the
    /// range): those windows are retried later (window-specific, the run goes on).
    BadAnswer,
    /// The provider is still preparing the report (an asynchronous report job): those
    /// windows wait for the same job at the next run (window-specific, the run goes on).
    ReportPending,
}

impl FailureCause {
    /// The credential no longer works and a person must reauthorize, for `reason`.
    pub const fn reauth(reason: ReauthReason) -> Self {
        Self::ReauthRequired { reason }
    }

    /// The provider throttled; it asked to wait `retry_after_secs` when it said.
    pub const fn rate_limited(retry_after_secs: Option<u64>) -> Self {
        Self::RateLimited { retry_after_secs }
    }

    /// True when the failure needs a human: these open an authorization incident and are
    /// never retried in a loop.
    pub fn needs_human(self) -> bool {
        matches!(
            self,
            Self::ReauthRequired { .. }
                | Self::PermissionLost
                | Self::AccountBlocked
                | Self::AppNotApproved
        )
    }

    /// True for failures that are retried with backoff and never open an incident.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient)
    }

    /// True for failures that concern the windows of one request only: they are recorded
    /// for those windows and the run goes on with the others (invariant 11).
    pub fn is_window_level(self) -> bool {
        matches!(
            self,
            Self::OutsideRetention | Self::BadAnswer | Self::ReportPending
        )
    }

    /// True when only a new credential fixes it (reauthorize); false for causes that a
    /// person fixes elsewhere (restore a permission, unlock the account, approve the app).
    pub fn needs_new_credential(self) -> bool {
        matches!(self, Self::ReauthRequired { .. })
    }

    /// What the identity needs, for subjects: "needs reauthorization", "is locked", ….
    pub fn headline(self) -> &'static str {
        match self {
            Self::ReauthRequired { .. } => "needs reauthorization",
            Self::PermissionLost => "lost a permission",
            Self::AccountBlocked => "is locked at the provider",
            Self::AppNotApproved => "is blocked: the app is not approved",
            Self::Refreshable => "is renewing its access token",
            Self::RateLimited { .. } => "is throttled",
            Self::Transient => "has temporary errors",
            Self::OutsideRetention => "was refused a range past the provider's retention",
            Self::BadAnswer => "got an unusable answer",
            Self::ReportPending => "waits for a report the provider is preparing",
        }
    }

    /// A stable short name, e.g. `reauth_required/revoked`.
    pub fn code(self) -> String {
        match self {
            Self::Refreshable => "refreshable".into(),
            Self::ReauthRequired { reason } => format!("reauth_required/{}", reason.as_str()),
            Self::PermissionLost => "permission_lost".into(),
            Self::AccountBlocked => "account_blocked".into(),
            Self::AppNotApproved => "app_not_approved".into(),
            Self::RateLimited { .. } => "rate_limited".into(),
            Self::Transient => "transient".into(),
            Self::OutsideRetention => "outside_retention".into(),
            Self::BadAnswer => "bad_answer".into(),
            Self::ReportPending => "report_pending".into(),
        }
    }

    /// The cause named by its [`FailureCause::code`] (`rate_limited` without a hint).
    pub fn from_code(code: &str) -> Option<Self> {
        let reasons = [
            ReauthReason::Expired,
            ReauthReason::Revoked,
            ReauthReason::PasswordChanged,
            ReauthReason::SessionExpired,
            ReauthReason::InvalidGrant,
            ReauthReason::InvalidCredentials,
            ReauthReason::RefreshOutcomeUnknown,
            ReauthReason::Undecryptable,
        ];
        Some(match code {
            "refreshable" => Self::Refreshable,
            "permission_lost" => Self::PermissionLost,
            "account_blocked" => Self::AccountBlocked,
            "app_not_approved" => Self::AppNotApproved,
            "rate_limited" => Self::RateLimited {
                retry_after_secs: None,
            },
            "transient" => Self::Transient,
            "outside_retention" => Self::OutsideRetention,
            "bad_answer" => Self::BadAnswer,
            "report_pending" => Self::ReportPending,
            other => {
                let reason = other.strip_prefix("reauth_required/")?;
                Self::ReauthRequired {
                    reason: reasons.into_iter().find(|r| r.as_str() == reason)?,
                }
            }
        })
    }

    /// The cause in plain words, for people who are not engineers.
    pub fn plain_words(self) -> &'static str {
        match self {
            Self::Refreshable => "The access token expired and is being renewed automatically.",
            Self::ReauthRequired { reason } => match reason {
                ReauthReason::Expired => "The authorization reached the end of its lifetime.",
                ReauthReason::Revoked => {
                    "Access was revoked: the app was removed from the account or its permission was withdrawn."
                }
                ReauthReason::PasswordChanged => {
                    "The account's password was changed, which ended the authorization."
                }
                ReauthReason::SessionExpired => {
                    "The login session behind the authorization ended (logout or a session policy)."
                }
                ReauthReason::InvalidGrant => {
                    "The provider no longer accepts the authorization and did not say why."
                }
                ReauthReason::InvalidCredentials => "The password or API key was rejected.",
                ReauthReason::RefreshOutcomeUnknown => {
                    "A token renewal was sent but its answer was lost. The old renewal token may already be used up, and sending it again could make the provider revoke the authorization, so gapless stopped."
                }
                ReauthReason::Undecryptable => {
                    "The stored credential cannot be decrypted with the master key gapless was given (a wrong or missing key version, or a damaged row)."
                }
            },
            Self::PermissionLost => {
                "The connected user no longer has permission on the account (for example removed as admin) or a required scope is missing."
            }
            Self::AccountBlocked => {
                "The account is locked or blocked at the provider until its owner acts there."
            }
            Self::AppNotApproved => "The provider has not approved the app for this access.",
            Self::RateLimited { .. } => "The provider is throttling requests.",
            Self::Transient => "The provider had a temporary error.",
            Self::OutsideRetention => {
                "The provider no longer serves this period: it is past the provider's retention."
            }
            Self::BadAnswer => "The provider's answer could not be used.",
            Self::ReportPending => "The provider is still preparing the report.",
        }
    }

    /// What to do about it, in plain words.
    pub fn what_to_do(self) -> &'static str {
        match self {
            Self::Refreshable
            | Self::RateLimited { .. }
            | Self::Transient
            | Self::BadAnswer
            | Self::ReportPending => "Nothing: gapless retries by itself.",
            Self::OutsideRetention => {
                "Nothing can bring this period back from the provider; other windows go on."
            }
            Self::ReauthRequired { reason } => match reason {
                ReauthReason::PasswordChanged => {
                    "Reconnect with the new password using the reauthorize link."
                }
                ReauthReason::Revoked => {
                    "Approve the app again by reconnecting through the reauthorize link."
                }
                ReauthReason::InvalidCredentials => {
                    "Enter the current password or API key through the reauthorize link."
                }
                ReauthReason::Undecryptable => {
                    "An operator must give gapless the master key this credential was sealed with; or reconnect through the reauthorize link, which replaces it."
                }
                _ => "Reconnect the account using the reauthorize link.",
            },
            Self::PermissionLost => {
                "Ask an admin of the account to restore your access, or reconnect with another admin account."
            }
            Self::AccountBlocked => {
                "Log in at the provider and unlock the account first, then reconnect using the reauthorize link."
            }
            Self::AppNotApproved => {
                "An operator of this gapless installation must get the app approved by the provider."
            }
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}

/// A classified failure: the cause plus the provider's own code and message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub cause: FailureCause,
    /// The provider's code, e.g. `190/458` or `invalid_grant`.
    pub provider_code: Option<String>,
    /// The provider's message, kept verbatim for humans.
    pub provider_message: Option<String>,
}

impl Failure {
    pub fn new(cause: FailureCause) -> Self {
        Self {
            cause,
            provider_code: None,
            provider_message: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.provider_code = Some(code.into());
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.provider_message = Some(message.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        if let Some(code) = &self.provider_code {
            write!(f, " (provider code {code})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_code_reads_back() {
        for cause in [
            FailureCause::Refreshable,
            FailureCause::PermissionLost,
            FailureCause::AccountBlocked,
            FailureCause::AppNotApproved,
            FailureCause::Transient,
            FailureCause::RateLimited {
                retry_after_secs: None,
            },
            FailureCause::ReauthRequired {
                reason: ReauthReason::PasswordChanged,
            },
            FailureCause::OutsideRetention,
            FailureCause::BadAnswer,
            FailureCause::ReportPending,
        ] {
            assert_eq!(FailureCause::from_code(&cause.code()), Some(cause));
        }
        assert_eq!(FailureCause::from_code("reauth_required/bored"), None);
        assert_eq!(FailureCause::from_code("broken"), None);
    }

    #[test]
    fn transient_and_human_classes_are_disjoint() {
        let all = [
            FailureCause::Refreshable,
            FailureCause::ReauthRequired {
                reason: ReauthReason::Revoked,
            },
            FailureCause::PermissionLost,
            FailureCause::AccountBlocked,
            FailureCause::AppNotApproved,
            FailureCause::RateLimited {
                retry_after_secs: Some(3),
            },
            FailureCause::Transient,
            FailureCause::OutsideRetention,
            FailureCause::BadAnswer,
            FailureCause::ReportPending,
        ];
        for cause in all {
            let classes = [
                cause.needs_human(),
                cause.is_transient(),
                cause.is_window_level(),
            ];
            assert!(
                classes.iter().filter(|c| **c).count() <= 1,
                "{cause} is in more than one class"
            );
        }
        assert!(!FailureCause::Refreshable.needs_human());
        assert!(!FailureCause::Refreshable.is_transient());
    }

    #[test]
    fn cause_serializes_with_its_class_and_reason() {
        let cause = FailureCause::ReauthRequired {
            reason: ReauthReason::PasswordChanged,
        };
        let json = serde_json::to_string(&cause).unwrap();
        assert_eq!(
            json,
            r#"{"class":"reauth_required","reason":"password_changed"}"#
        );
        assert_eq!(serde_json::from_str::<FailureCause>(&json).unwrap(), cause);
        assert_eq!(cause.code(), "reauth_required/password_changed");
    }
}
