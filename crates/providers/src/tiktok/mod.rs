//! TikTok Marketing API (Business API): long-term advertiser access tokens, no refresh token,
//! and errors reported as a numeric `code` inside HTTP 200 answers.
//!
//! Only the answer classifier lives here for now; the full connector (advertiser
//! authorization, probe, reporting streams) comes later.

pub mod classify;

/// TikTok Marketing API: a long-term access token valid until the advertiser revokes it; no
/// refresh token and no scheduled expiry.
pub fn lifetimes() -> crate::Lifetimes {
    crate::Lifetimes::default()
}
