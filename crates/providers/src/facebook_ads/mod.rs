//! Facebook / Meta: the Graph and Marketing APIs.
//!
//! The error table a provider definition names with `classifier = "meta_graph"`; the built-
//! in `meta_ads` definition (in `definitions/`) is the connector, lifetimes included.

pub mod classify;
