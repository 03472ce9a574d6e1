//! Amazon: Login with Amazon (LWA, the shared OAuth token endpoint), the Amazon Ads API and
//! the Selling Partner API (SP-API).
//!
//! Only the error classifiers live here for now; the full connectors (profiles probe, ads
//! reporting, SP-API reports and the 365-day re-authorization reminder) come later.

pub mod classify;
