//! TikTok Marketing API (Business API): long-term advertiser access tokens, no refresh token,
//! and errors reported as a numeric `code` inside HTTP 200 answers.
//!
//! Only the answer classifier lives here for now; the full connector (advertiser
//! authorization, probe, reporting streams) comes later.

pub mod classify;
