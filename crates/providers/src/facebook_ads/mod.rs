//! Facebook / Meta: the Graph and Marketing APIs (ad accounts, Ads Insights).
//!
//! Meta issues user, Page and system-user access tokens but no OAuth refresh token, so an
//! access token Meta no longer accepts always needs a person to reconnect. Only the error
//! classifier lives here for now; the full connector (login, probe via `debug_token`,
//! insights streams) comes later.

pub mod classify;

/// Meta user tokens: no refresh token; a long-lived token lasts about 60 days
/// (`expires_at` from `debug_token` wins) and data access 90 days (`data_access_expires_at`).
pub fn lifetimes() -> crate::Lifetimes {
    crate::Lifetimes {
        long_lived_access: Some(chrono::Duration::days(60)),
        authorization: Some(chrono::Duration::days(90)),
        ..Default::default()
    }
}
