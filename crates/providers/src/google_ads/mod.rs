//! Google Ads API, authorized through Google's OAuth 2.0 token endpoint (plus a developer
//! token and an optional `login-customer-id`).
//!
//! Only the error classifiers live here for now, one for the token endpoint and one for API
//! answers; the full connector (consent, probe via `ListAccessibleCustomers`, GAQL streams)
//! comes later.

pub mod classify;
