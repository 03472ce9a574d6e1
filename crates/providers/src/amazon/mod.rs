//! Amazon: Login with Amazon (the shared OAuth token endpoint), the Amazon Ads API and the
//! Selling Partner API.
//!
//! The error table a provider definition names with `classifier = "amazon"`; the built-in
//! `amazon_ads` and `amazon_sp` definitions (in `definitions/`) are the connectors, lifetimes
//! included.

pub mod classify;
