//! Microsoft identity platform (Entra ID) and the APIs behind it, such as Microsoft
//! Advertising and Microsoft Graph.
//!
//! Only the error classifiers live here for now; they read the identity platform's `AADSTS`
//! codes. The full connector (consent, probe, reporting streams) comes later.

pub mod classify;
