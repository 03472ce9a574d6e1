//! Google Ads API, authorized through Google's OAuth 2.0 token endpoint (plus a developer
//! token and an optional `login-customer-id`).
//!
//! Only the error classifiers live here for now, one for the token endpoint and one for API
//! answers; the full connector (consent, probe via `ListAccessibleCustomers`, GAQL streams)
//! comes later.

pub mod classify;

/// Google OAuth: access tokens about an hour; refresh tokens die after 6 months unused, and
/// after 7 days when the consent screen is External + "Testing".
pub fn lifetimes() -> crate::Lifetimes {
    crate::Lifetimes {
        access: Some(chrono::Duration::hours(1)),
        refresh_idle: Some(chrono::Duration::days(182)),
        ..Default::default()
    }
}

/// The same for an app whose consent screen is still in "Testing".
pub fn lifetimes_testing_app() -> crate::Lifetimes {
    crate::Lifetimes {
        refresh: Some(chrono::Duration::days(7)),
        refresh_fixed_from_grant: true,
        ..lifetimes()
    }
}
