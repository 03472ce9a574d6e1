//! The identity health state machine.
//!
//! Every change goes through [`Health::apply`], which returns a [`Transition`] carrying the
//! reason and whether an incident opens or closes, or rejects the event as illegal.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::cause::Failure;

/// What we know about an identity's usability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// A known expiry is near.
    Expiring {
        at: DateTime<Utc>,
    },
    /// Transient errors; retrying with backoff. Never an authorization incident.
    Degraded {
        since: DateTime<Utc>,
        attempts: u32,
        retry_at: DateTime<Utc>,
        last: Failure,
    },
    /// A human must act (reauthorize, restore a permission, unlock the account).
    NeedsReauth {
        failure: Failure,
        since: DateTime<Utc>,
    },
    /// Paused by an operator.
    Paused {
        reason: String,
        since: DateTime<Utc>,
    },
}

impl Health {
    /// The state's name as used in the API, the CLI and the store.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Expiring { .. } => "expiring",
            Self::Degraded { .. } => "degraded",
            Self::NeedsReauth { .. } => "needs_reauth",
            Self::Paused { .. } => "paused",
        }
    }

    /// May work be attempted with this identity at `now`?
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        match self {
            Self::Healthy | Self::Expiring { .. } => true,
            Self::Degraded { retry_at, .. } => now >= *retry_at,
            Self::NeedsReauth { .. } | Self::Paused { .. } => false,
        }
    }

    /// From when work may be attempted with this identity: None while it waits for a
    /// person (a reauthorization, a resume).
    pub fn usable_from(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Healthy | Self::Expiring { .. } => Some(DateTime::<Utc>::MIN_UTC),
            Self::Degraded { retry_at, .. } => Some(*retry_at),
            Self::NeedsReauth { .. } | Self::Paused { .. } => None,
        }
    }

    /// Apply an event at `now`: the resulting transition, or why it is illegal.
    // Long by design: the whole transition table (each event × each state) in one match,
    // so it reads as the table it is.
    pub fn apply(
        &self,
        event: &HealthEvent,
        now: DateTime<Utc>,
    ) -> Result<Transition, IllegalTransition> {
        let illegal = |why: &'static str| IllegalTransition {
            from: self.name(),
            event: event.name(),
            why,
        };
        let stay = |reason: String| Transition {
            from: self.clone(),
            to: self.clone(),
            reason,
            incident: IncidentEffect::None,
        };
        let go = |to: Health, reason: String, incident: IncidentEffect| Transition {
            from: self.clone(),
            to,
            reason,
            incident,
        };
        match event {
            HealthEvent::Succeeded => match self {
                Self::Paused { .. } => Err(illegal("nothing runs while paused")),
                Self::Healthy | Self::Expiring { .. } => Ok(stay("call succeeded".into())),
                Self::Degraded { attempts, .. } => Ok(go(
                    Self::Healthy,
                    format!("call succeeded after {attempts} transient failure(s)"),
                    IncidentEffect::None,
                )),
                Self::NeedsReauth { .. } => Ok(go(
                    Self::Healthy,
                    "call succeeded: the authorization works again".into(),
                    IncidentEffect::Close,
                )),
            },
            HealthEvent::ExpiryApproaching { at } => match self {
                Self::Healthy | Self::Expiring { .. } => Ok(go(
                    Self::Expiring { at: *at },
                    format!("authorization expires at {at}"),
                    IncidentEffect::None,
                )),
                _ => Ok(stay("expiry noted; a more urgent state stays".into())),
            },
            HealthEvent::TransientFailure { failure } => {
                if !failure.cause.is_transient() {
                    return Err(illegal("the failure is not transient"));
                }
                match self {
                    Self::Paused { .. } => Err(illegal("nothing runs while paused")),
                    Self::NeedsReauth { .. } => Ok(stay(format!(
                        "transient failure ({failure}) while waiting for reauthorization"
                    ))),
                    Self::Healthy | Self::Expiring { .. } | Self::Degraded { .. } => {
                        let (since, attempts) = match self {
                            Self::Degraded {
                                since, attempts, ..
                            } => (*since, attempts.saturating_add(1)),
                            _ => (now, 1),
                        };
                        let mut wait = backoff(attempts);
                        if let crate::FailureCause::RateLimited {
                            retry_after_secs: Some(secs),
                        } = failure.cause
                        {
                            let hint = Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
                            wait = wait.max(hint.min(Duration::hours(24)));
                        }
                        Ok(go(
                            Self::Degraded {
                                since,
                                attempts,
                                retry_at: now + wait,
                                last: failure.clone(),
                            },
                            format!("transient failure #{attempts}: {failure}"),
                            IncidentEffect::None,
                        ))
                    }
                }
            }
            HealthEvent::AuthorizationFailure { failure } => {
                if !failure.cause.needs_human() {
                    return Err(illegal("the failure does not need a human"));
                }
                match self {
                    Self::Paused { .. } => Err(illegal("nothing runs while paused")),
                    Self::NeedsReauth { .. } => Ok(stay(format!(
                        "still failing ({failure}); incident already open"
                    ))),
                    _ => Ok(go(
                        Self::NeedsReauth {
                            failure: failure.clone(),
                            since: now,
                        },
                        format!("authorization failure: {failure}"),
                        IncidentEffect::Open,
                    )),
                }
            }
            HealthEvent::Reauthorized => match self {
                Self::Paused { .. } => {
                    Ok(stay("credential replaced; identity stays paused".into()))
                }
                Self::NeedsReauth { .. } => Ok(go(
                    Self::Healthy,
                    "reauthorized with a validated credential".into(),
                    IncidentEffect::Close,
                )),
                _ => Ok(go(
                    Self::Healthy,
                    "reauthorized with a validated credential".into(),
                    IncidentEffect::None,
                )),
            },
            HealthEvent::Paused { reason } => Ok(go(
                Self::Paused {
                    reason: reason.clone(),
                    since: now,
                },
                format!("paused: {reason}"),
                if matches!(self, Self::NeedsReauth { .. }) {
                    IncidentEffect::Close
                } else {
                    IncidentEffect::None
                },
            )),
            HealthEvent::Resumed => match self {
                Self::Paused { .. } => Ok(go(
                    Self::Healthy,
                    "resumed by an operator".into(),
                    IncidentEffect::None,
                )),
                _ => Err(illegal("only a paused identity can be resumed")),
            },
        }
    }
}

/// Backoff for transient failures: 10 s, 30 s, 90 s, … capped at 30 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(10);
    let secs = 10_i64.saturating_mul(3_i64.pow(exponent));
    Duration::seconds(secs.min(30 * 60))
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedsReauth { failure, since } => {
                write!(f, "needs_reauth ({}) since {since}", failure.cause)
            }
            Self::Expiring { at } => write!(f, "expiring at {at}"),
            Self::Degraded { attempts, .. } => write!(f, "degraded ({attempts} attempt(s))"),
            Self::Paused { reason, .. } => write!(f, "paused: {reason}"),
            Self::Healthy => f.write_str("healthy"),
        }
    }
}

/// Something that happened to an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// A call or a probe with the identity succeeded.
    Succeeded,
    /// A known expiry is within the warning horizon.
    ExpiryApproaching { at: DateTime<Utc> },
    /// A transient failure (rate limit, 5xx, timeout).
    TransientFailure { failure: Failure },
    /// A failure only a human can fix.
    AuthorizationFailure { failure: Failure },
    /// A new, validated credential replaced the old one.
    Reauthorized,
    /// An operator paused the identity.
    Paused { reason: String },
    /// An operator resumed it.
    Resumed,
}

impl HealthEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::ExpiryApproaching { .. } => "expiry_approaching",
            Self::TransientFailure { .. } => "transient_failure",
            Self::AuthorizationFailure { .. } => "authorization_failure",
            Self::Reauthorized => "reauthorized",
            Self::Paused { .. } => "paused",
            Self::Resumed => "resumed",
        }
    }
}

/// What a transition does to the identity's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentEffect {
    None,
    Open,
    Close,
}

/// The outcome of applying an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub reason: String,
    pub incident: IncidentEffect,
}

impl Transition {
    /// Did the state change?
    pub fn is_change(&self) -> bool {
        self.from != self.to
    }
}

/// An event that the current state does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal health transition: {event} in state {from}: {why}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub event: &'static str,
    pub why: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureCause, ReauthReason};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
    }

    fn revoked() -> Failure {
        Failure::new(FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked,
        })
        .with_code("190/458")
    }

    fn transient() -> Failure {
        Failure::new(FailureCause::Transient).with_code("2")
    }

    #[test]
    fn authorization_failure_opens_exactly_one_incident() {
        let first = Health::Healthy
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                t0(),
            )
            .unwrap();
        assert_eq!(first.incident, IncidentEffect::Open);
        assert_eq!(first.to.name(), "needs_reauth");
        let again = first
            .to
            .apply(
                &HealthEvent::AuthorizationFailure { failure: revoked() },
                t0() + Duration::days(1),
            )
            .unwrap();
        assert_eq!(again.incident, IncidentEffect::None);
        assert!(!again.is_change());
    }

    #[test]
    fn transient_failures_degrade_with_growing_backoff_and_never_open_an_incident() {
        let mut health = Health::Healthy;
        let mut waits = vec![];
        for i in 0..12 {
            let now = t0() + Duration::minutes(i);
            let tr = health
                .apply(
                    &HealthEvent::TransientFailure {
                        failure: transient(),
                    },
                    now,
                )
                .unwrap();
            assert_eq!(tr.incident, IncidentEffect::None);
            if let Health::Degraded { retry_at, .. } = &tr.to {
                waits.push(*retry_at - now);
            } else {
                panic!("expected degraded, got {:?}", tr.to);
            }
            health = tr.to;
        }
        assert_eq!(waits[0], Duration::seconds(10));
        assert_eq!(waits[1], Duration::seconds(30));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), Duration::minutes(30));
        let back = health.apply(&HealthEvent::Succeeded, t0()).unwrap();
        assert_eq!(back.to, Health::Healthy);
    }

    #[test]
    fn rate_limit_hint_extends_the_backoff() {
        let failure = Failure::new(FailureCause::RateLimited {
            retry_after_secs: Some(120),
        });
        let tr = Health::Healthy
            .apply(&HealthEvent::TransientFailure { failure }, t0())
            .unwrap();
        let Health::Degraded { retry_at, .. } = tr.to else {
            panic!("expected degraded");
        };
        assert_eq!(retry_at, t0() + Duration::seconds(120));
    }

    #[test]
    fn needs_reauth_is_not_usable_and_reauthorization_closes_the_incident() {
        let broken = Health::NeedsReauth {
            failure: revoked(),
            since: t0(),
        };
        assert!(!broken.usable_at(t0() + Duration::days(3)));
        let tr = broken.apply(&HealthEvent::Reauthorized, t0()).unwrap();
        assert_eq!(tr.to, Health::Healthy);
        assert_eq!(tr.incident, IncidentEffect::Close);
    }

    #[test]
    fn transient_failure_while_broken_keeps_needs_reauth() {
        let broken = Health::NeedsReauth {
            failure: revoked(),
            since: t0(),
        };
        let tr = broken
            .apply(
                &HealthEvent::TransientFailure {
                    failure: transient(),
                },
                t0(),
            )
            .unwrap();
        assert_eq!(tr.to, broken);
    }

    #[test]
    fn illegal_events_are_rejected_with_a_reason() {
        let paused = Health::Paused {
            reason: "maintenance".into(),
            since: t0(),
        };
        let err = paused.apply(&HealthEvent::Succeeded, t0()).unwrap_err();
        assert_eq!(err.from, "paused");
        assert!(Health::Healthy.apply(&HealthEvent::Resumed, t0()).is_err());
        // A transient cause cannot be passed off as an authorization failure and vice versa.
        assert!(
            Health::Healthy
                .apply(
                    &HealthEvent::AuthorizationFailure {
                        failure: transient()
                    },
                    t0()
                )
                .is_err()
        );
        assert!(
            Health::Healthy
                .apply(&HealthEvent::TransientFailure { failure: revoked() }, t0())
                .is_err()
        );
        let resumed = paused.apply(&HealthEvent::Resumed, t0()).unwrap();
        assert_eq!(resumed.to, Health::Healthy);
    }

    #[test]
    fn degraded_is_usable_only_after_its_retry_time() {
        let tr = Health::Healthy
            .apply(
                &HealthEvent::TransientFailure {
                    failure: transient(),
                },
                t0(),
            )
            .unwrap();
        assert!(!tr.to.usable_at(t0()));
        assert!(tr.to.usable_at(t0() + Duration::seconds(10)));
    }
}
