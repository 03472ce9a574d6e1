//! Notifications: messages from an incident, written to the outbox first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{IncidentId, NotificationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    AuthorizationFailure,
    Reminder,
    ExpiryWarning,
    Recovery,
    ProviderOutage,
    /// The outbox itself is behind: sent on the fallback channel.
    OutboxBacklog,
    /// Windows passed the provider's retention while their identity was usable.
    WindowsLost,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationFailure => "authorization_failure",
            Self::Reminder => "reminder",
            Self::ExpiryWarning => "expiry_warning",
            Self::Recovery => "recovery",
            Self::ProviderOutage => "provider_outage",
            Self::OutboxBacklog => "outbox_backlog",
            Self::WindowsLost => "windows_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::AuthorizationFailure,
            Self::Reminder,
            Self::ExpiryWarning,
            Self::Recovery,
            Self::ProviderOutage,
            Self::OutboxBacklog,
            Self::WindowsLost,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Gave up after the retry budget; kept and shown.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// When an open incident reminds its recipients again, and when it escalates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderPolicy {
    /// Reminders this long after the incident opened, e.g. 1 day and 3 days…
    pub after: Vec<chrono::Duration>,
    /// …then every `repeat` after the last one (e.g. weekly); None: no more.
    pub repeat: Option<chrono::Duration>,
    /// From this reminder number on (1-based), escalation recipients are added.
    pub escalate_from: u32,
}

impl Default for ReminderPolicy {
    fn default() -> Self {
        Self {
            after: vec![chrono::Duration::days(1), chrono::Duration::days(3)],
            repeat: Some(chrono::Duration::days(7)),
            escalate_from: 2,
        }
    }
}

impl ReminderPolicy {
    /// The reminder times as text (milliseconds after the opening, then the repeat): two
    /// policies with the same text remind at the same instants. Recorded with the stored
    /// schedules, so that a restart with another schedule recomputes them.
    pub fn schedule(&self) -> String {
        let mut offsets: Vec<i64> = self.after.iter().map(|d| d.num_milliseconds()).collect();
        offsets.sort_unstable();
        let after: Vec<String> = offsets.iter().map(i64::to_string).collect();
        let repeat = self
            .repeat
            .filter(|r| r.num_seconds() > 0)
            .map_or_else(|| "none".to_string(), |r| r.num_milliseconds().to_string());
        format!("after {} ms; repeat {repeat} ms", after.join(","))
    }

    /// The number (1-based) of the latest reminder due at `now` for an incident opened at
    /// `opened_at`, if any. Only the latest is sent: after downtime nobody gets a burst.
    pub fn due(&self, opened_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<u32> {
        let elapsed = now - opened_at;
        let mut offsets: Vec<chrono::Duration> = self.after.clone();
        offsets.sort();
        let mut latest = None;
        for (i, offset) in offsets.iter().enumerate() {
            if elapsed >= *offset {
                latest = Some(i + 1);
            }
        }
        if let (Some(repeat), Some(last)) = (self.repeat, offsets.last())
            && repeat.num_seconds() > 0
            && elapsed >= *last + repeat
        {
            let extra = ((elapsed - *last).num_milliseconds() / repeat.num_milliseconds()) as usize;
            latest = Some(offsets.len() + extra);
        }
        latest.and_then(|n| u32::try_from(n).ok())
    }

    /// When reminder `number + 1` becomes due for an incident opened at `opened_at`: the
    /// first instant at which [`due`](Self::due) says more than `number`. `None` when no
    /// reminder follows (the schedule has ended, or the instant is past the calendar).
    pub fn next_after(&self, opened_at: DateTime<Utc>, number: u32) -> Option<DateTime<Utc>> {
        let mut offsets: Vec<chrono::Duration> = self.after.clone();
        offsets.sort();
        let sent = usize::try_from(number).ok()?;
        if let Some(offset) = offsets.get(sent) {
            return opened_at.checked_add_signed(*offset);
        }
        let last = offsets.last()?;
        let repeat = self.repeat.filter(|r| r.num_seconds() > 0)?;
        // Reminder `len + m` is due `last + m × repeat` after the opening.
        let m = i32::try_from(sent - offsets.len() + 1).ok()?;
        let extra = repeat.checked_mul(m)?;
        opened_at
            .checked_add_signed(*last)?
            .checked_add_signed(extra)
    }

    /// Does reminder `number` escalate?
    pub fn escalates(&self, number: u32) -> bool {
        self.escalate_from > 0 && number >= self.escalate_from
    }
}

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub incident: Option<IncidentId>,
    pub kind: NotificationKind,
    /// Makes each message arrive once: a second insert with the same key is a no-op.
    pub dedupe_key: String,
    /// `file`, `smtp`, `slack`, `webhook`.
    pub channel: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    /// Stable RFC 5322 Message-ID, so a retried delivery is not a second mail.
    pub message_id: String,
    pub created_at: DateTime<Utc>,
    /// Where its delivery stands.
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// How far a message's delivery has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// A message not tried yet, due at `now`.
    pub fn pending(now: DateTime<Utc>) -> Delivery {
        Delivery {
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: now,
            delivered_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn a_schedule_reads_the_same_whatever_the_order_of_its_reminders() {
        let policy = ReminderPolicy::default();
        let reordered = ReminderPolicy {
            after: vec![Duration::days(3), Duration::days(1)],
            escalate_from: 5,
            ..ReminderPolicy::default()
        };
        assert_eq!(policy.schedule(), reordered.schedule());
        assert_eq!(
            policy.schedule(),
            "after 86400000,259200000 ms; repeat 604800000 ms"
        );
        let no_repeat = ReminderPolicy {
            repeat: None,
            ..ReminderPolicy::default()
        };
        assert_ne!(policy.schedule(), no_repeat.schedule());
        // A repeat under a second never repeats: the same schedule as none.
        let sub_second = ReminderPolicy {
            repeat: Some(Duration::milliseconds(500)),
            ..ReminderPolicy::default()
        };
        assert_eq!(sub_second.schedule(), no_repeat.schedule());
    }

    #[test]
    fn reminders_follow_the_schedule_then_repeat_weekly() {
        let policy = ReminderPolicy::default();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let at = |h: i64| policy.due(t0, t0 + Duration::hours(h));
        assert_eq!(at(23), None);
        assert_eq!(at(24), Some(1));
        assert_eq!(at(71), Some(1));
        assert_eq!(at(72), Some(2));
        assert_eq!(at(72 + 24 * 7 - 1), Some(2));
        assert_eq!(at(72 + 24 * 7), Some(3));
        assert_eq!(at(72 + 24 * 14), Some(4));
        assert!(!policy.escalates(1));
        assert!(policy.escalates(2));
        let no_repeat = ReminderPolicy {
            repeat: None,
            ..ReminderPolicy::default()
        };
        assert_eq!(no_repeat.due(t0, t0 + Duration::days(100)), Some(2));
    }

    #[test]
    fn the_next_reminder_is_due_at_the_first_instant_the_schedule_says_more() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let unsorted = ReminderPolicy {
            after: vec![Duration::days(3), Duration::hours(1), Duration::days(1)],
            repeat: Some(Duration::days(7)),
            escalate_from: 0,
        };
        for policy in [ReminderPolicy::default(), unsorted] {
            for sent in 0..8 {
                let next = policy.next_after(t0, sent).unwrap();
                let before = policy.due(t0, next - Duration::seconds(1)).unwrap_or(0);
                assert!(before <= sent, "{sent}: {before} due before {next}");
                assert_eq!(policy.due(t0, next), Some(sent + 1), "{sent}");
            }
        }
        let no_repeat = ReminderPolicy {
            repeat: None,
            ..ReminderPolicy::default()
        };
        assert_eq!(no_repeat.next_after(t0, 2), None);
        assert_eq!(no_repeat.next_after(t0, u32::MAX), None);
        let nothing = ReminderPolicy {
            after: Vec::new(),
            ..ReminderPolicy::default()
        };
        assert_eq!(nothing.next_after(t0, 0), None);
        assert_eq!(nothing.due(t0, t0 + Duration::days(400)), None);
        // Past the calendar: no instant, no panic.
        let late = DateTime::<Utc>::MAX_UTC - Duration::days(2);
        assert_eq!(ReminderPolicy::default().next_after(late, 5), None);
        assert_eq!(ReminderPolicy::default().next_after(t0, u32::MAX), None);
    }

    #[test]
    fn a_repeat_shorter_than_a_second_sends_no_repeats_instead_of_dividing_by_zero() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let policy = ReminderPolicy {
            repeat: Some(Duration::milliseconds(500)),
            ..ReminderPolicy::default()
        };
        assert_eq!(policy.due(t0, t0 + Duration::days(30)), Some(2));
        assert_eq!(policy.next_after(t0, 2), None);
    }
}
