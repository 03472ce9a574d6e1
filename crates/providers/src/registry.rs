//! The explicit list of providers. Adding one: a folder beside `sandbox/` and a line here.

use std::sync::Arc;

use crate::SourceConnector;
pub use crate::settings::{ProviderSettings, RegistryError, UnknownProvider};

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
