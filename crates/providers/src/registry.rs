//! The explicit list of providers. Adding one: a folder beside `sandbox/` and a line here.

use std::sync::Arc;

use gapless_vault::ClientSecret;

use crate::{SourceConnector, http::HttpTimeouts};

/// Where a provider lives and the OAuth client gapless uses with it.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The provider's base URL (for the sandbox: where it listens).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub timeouts: HttpTimeouts,
    /// Values for the settings a provider definition declares.
    pub settings: crate::SettingValues,
}

/// A provider name that is not in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {name:?}; known providers: {known}")]
pub struct UnknownProvider {
    pub name: String,
    pub known: String,
}

/// Names of the source providers gapless knows.
pub const SOURCES: &[&str] = &[
    crate::sandbox::NAME,
    crate::sandbox::KEY_NAME,
    crate::sandbox::SERVICE_NAME,
];

/// Build the source connector named `name`.
pub fn source(
    name: &str,
    settings: ProviderSettings,
) -> Result<Arc<dyn SourceConnector>, RegistryError> {
    match name {
        crate::sandbox::NAME => Ok(Arc::new(crate::sandbox::defined(settings)?)),
        crate::sandbox::KEY_NAME => Ok(Arc::new(crate::sandbox::SandboxSource::with_api_key(
            settings,
        )?)),
        crate::sandbox::SERVICE_NAME => Ok(Arc::new(
            crate::sandbox::SandboxSource::with_client_credentials(settings)?,
        )),
        other => Err(RegistryError::Unknown(UnknownProvider {
            name: other.to_string(),
            known: SOURCES.join(", "),
        })),
    }
}

/// Errors building a connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error(transparent)]
    Unknown(#[from] UnknownProvider),
    #[error("provider settings are invalid: {0}")]
    Settings(String),
}
