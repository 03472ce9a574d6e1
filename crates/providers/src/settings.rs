//! What a connector is built from: where the provider lives, the OAuth client, the
//! installation's settings, and the errors of building one. Every connector module reads
//! these; the registry, which names the connectors, is read by none of them.

use gapless_vault::ClientSecret;

use crate::http::HttpTimeouts;

/// An installation's settings for a provider's requests (`[providers.NAME.settings]`), by
/// name. Some are secrets, so `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SettingValues(std::collections::BTreeMap<String, String>);

impl SettingValues {
    pub fn new(values: std::collections::BTreeMap<String, String>) -> Self {
        Self(values)
    }

    pub fn values(&self) -> &std::collections::BTreeMap<String, String> {
        &self.0
    }
}

impl std::fmt::Debug for SettingValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Where a provider lives and the OAuth client gapless uses with it.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The provider's base URL (for the sandbox: where it listens).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub timeouts: HttpTimeouts,
    /// Values for the settings a provider definition declares.
    pub settings: SettingValues,
}

/// A provider name that is not in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {name:?}; known providers: {known}")]
pub struct UnknownProvider {
    pub name: String,
    pub known: String,
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
