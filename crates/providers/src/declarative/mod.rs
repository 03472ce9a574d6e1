//! Providers described by a definition file instead of Rust: the format
//! ([`definition`]), its substitution language ([`template`]) and its checks ([`check`]).

pub mod builtin;
pub mod check;
pub mod classifier;
pub mod connector;
pub mod definition;
pub mod payload;
pub mod request;
pub mod template;
