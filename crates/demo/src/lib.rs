//! The demo and the benchmarks.
//!
//! `gapless demo` and `gapless bench …` drive the engine against the in-process sandbox
//! provider, so they live apart from the engine: the server links neither them nor the
//! sandbox, the private PostgreSQL cluster or the test SMTP server they start.

pub mod bench;
pub mod demo;

use gapless_engine::EngineError;

/// Why the demo or a benchmark stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A step of the demo's own script failed (starting the sandbox, signing in, …).
    #[error("the demo failed: {0}")]
    Step(String),
    /// The demo or benchmark was asked for something it cannot do.
    #[error("{0}")]
    Invalid(String),
}

macro_rules! through_engine {
    ($($error:ty),*) => {$(
        impl From<$error> for DemoError {
            fn from(e: $error) -> Self {
                Self::Engine(EngineError::from(e))
            }
        }
    )*};
}

through_engine!(
    gapless_store::StoreError,
    gapless_vault::VaultError,
    gapless_destinations::DestinationError,
    gapless_notify::NotifyError,
    gapless_providers::registry::RegistryError
);
