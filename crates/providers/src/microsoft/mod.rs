//! Microsoft identity platform (Entra ID) and the APIs behind it, such as Microsoft
//! Advertising and Microsoft Graph.
//!
//! Only the error classifiers live here for now; they read the identity platform's `AADSTS`
//! codes. The full connector (consent, probe, reporting streams) comes later.

pub mod classify;

/// Microsoft identity platform: refresh tokens last 90 days of inactivity (each refresh
/// returns a new one), 24 hours fixed for single-page apps.
pub fn lifetimes() -> crate::Lifetimes {
    crate::Lifetimes {
        access: Some(chrono::Duration::hours(1)),
        refresh_idle: Some(chrono::Duration::days(90)),
        ..Default::default()
    }
}
