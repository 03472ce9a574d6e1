//! The pure decision core of gapless.
//!
//! Domain types (identity, pipeline, window, ledger state, health, failure cause, incident),
//! the identity health state machine, the ledger/gap computation and the scheduler's
//! decisions. Nothing in this crate performs IO or reads the wall clock: every function that
//! decides takes `now` as an argument, obtained by the caller from a [`Clock`].

pub mod audit;
pub mod cause;
pub mod clock;
pub mod health;
pub mod identity;
pub mod ids;
pub mod incident;
pub mod ledger;
pub mod lifecycle;
pub mod notification;
pub mod pipeline;
pub mod rate;
pub mod retention;
pub mod stream;
pub mod window;

/// The longest duration gapless accepts from outside (a hundred years): a configured
/// interval, a schedule's interval, a rate limit's, a lookback, a definition's durations.
/// Every date computed from one stays inside the calendar.
pub const MAX_DURATION_DAYS: i64 = 36_500;

pub use audit::{Actor, AuditAction, AuditEntry, AuditRecord, Caller};
pub use cause::{Failure, FailureCause, ReauthReason};
pub use chrono_tz::Tz;
pub use clock::{Clock, SystemClock, VirtualClock};
pub use health::{Health, HealthEvent, IllegalTransition, Transition};
pub use identity::{Identity, IdentitySettings};
pub use ids::{IdentityId, IncidentId, NotificationId, PipelineId};
pub use incident::{FailedOperation, Incident, IncidentState};
pub use ledger::{GapRange, LedgerEntry, MissingReason, WindowState};
pub use notification::{Delivery, DeliveryState, Notification, NotificationKind, ReminderPolicy};
pub use pipeline::{Pipeline, PipelineState, Schedule};
pub use rate::{InvalidRateLimit, RateLimit};
pub use retention::{CountedFrom, InvalidRetention, Retention};
pub use stream::{Column, ColumnKind, Row, StreamSchema, Value};
pub use window::{
    ReportRange, UnknownTimeZone, Window, WindowGrid, WindowSize, check_day, duration_text,
    parse_time_zone,
};
