//! Microsoft identity platform (Entra ID) and the APIs behind it, such as Microsoft
//! Advertising.
//!
//! The error table a provider definition names with `classifier = "microsoft"`; no built-in
//! definition uses it yet, a definition of an installation may.

pub mod classify;
