//! Shopify Admin API (REST and GraphQL), with expiring offline access tokens and rotating
//! refresh tokens from the shop's OAuth token endpoint.
//!
//! Only the error classifiers live here for now; the full connector (install flow, scope
//! probe, order streams) comes later.

pub mod classify;
