//! Shopify Admin API (REST and GraphQL) and the shop's OAuth token endpoint.
//!
//! The error table a provider definition names with `classifier = "shopify"`; the built-in
//! `shopify` definition (in `definitions/`) is the connector, lifetimes included.

pub mod classify;
