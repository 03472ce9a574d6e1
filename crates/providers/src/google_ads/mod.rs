//! Google Ads API and Google's OAuth 2.0 token endpoint.
//!
//! The error table a provider definition names with `classifier = "google_ads"`; the built-
//! in `google_ads` definition (in `definitions/`) is the connector, lifetimes included.

pub mod classify;
