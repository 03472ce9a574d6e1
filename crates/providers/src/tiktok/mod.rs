//! TikTok Business API, which reports errors as a numeric `code` inside HTTP 200 answers.
//!
//! The error table a provider definition names with `classifier = "tiktok"`; the built-in
//! `tiktok_ads` definition (in `definitions/`) is the connector, lifetimes included.

pub mod classify;
