//! Shopify Admin API (REST and GraphQL), with expiring offline access tokens and rotating
//! refresh tokens from the shop's OAuth token endpoint.
//!
//! Only the error classifiers live here for now; the full connector (install flow, scope
//! probe, order streams) comes later.

pub mod classify;

/// Shopify expiring offline tokens: access 60 minutes, the refresh token replaced on every
/// use (its absolute lifetime is not documented).
pub fn lifetimes() -> crate::Lifetimes {
    crate::Lifetimes {
        access: Some(chrono::Duration::minutes(60)),
        ..Default::default()
    }
}
