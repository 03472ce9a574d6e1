//! The configuration file (`<data-dir>/gapless.toml`, or `--config`), validated before
//! anything is opened. Secrets come from the environment or files, or inline.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use gapless_providers::{ProviderSettings, http::HttpTimeouts};
use gapless_vault::ClientSecret;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The public base URL of this installation, used in links.
    pub public_url: Option<String>,
    /// The From address of notifications.
    pub notify_from: Option<String>,
    /// Who is told when an identity has no owners.
    pub fallback_recipients: Option<Vec<String>>,
    /// Provider connections by registry name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Destinations reached with an identity's password, by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
}

/// A database destination. The password is an identity's (`gapless identity add
/// --provider NAME`), never in this file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Only `postgres` for now.
    pub kind: String,
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// The schema tables are created in.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_schema() -> String {
    "gapless".into()
}

impl DestinationConfig {
    /// The target, refusing a URL that carries a password.
    pub fn target(&self, name: &str) -> Result<gapless_destinations::PostgresTarget> {
        if self.kind != "postgres" {
            bail!(
                "destinations.{name}: kind {:?} is not supported (postgres is)",
                self.kind
            );
        }
        let url = url::Url::parse(&self.url)
            .with_context(|| format!("destinations.{name}.url is not a URL"))?;
        if url.password().is_some() {
            bail!(
                "destinations.{name}.url carries a password: remove it and store it in an identity (gapless identity add --provider {name})"
            );
        }
        if url.username().is_empty() {
            bail!("destinations.{name}.url needs a user name (postgres://USER@host/db)");
        }
        Ok(gapless_destinations::PostgresTarget {
            url: self.url.clone(),
            schema: self.schema.clone(),
        })
    }

    /// The role the password belongs to.
    pub fn username(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| u.username().to_string())
            .unwrap_or_default()
    }
}

/// How gapless reaches one provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub base_url: String,
    /// The OAuth client (not needed by API-key providers).
    #[serde(default)]
    pub client_id: String,
    /// At most one of the three client secret sources (none for API-key providers).
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
}

impl ProviderConfig {
    pub fn settings(&self, name: &str) -> Result<ProviderSettings> {
        let secret = match (
            &self.client_secret,
            &self.client_secret_env,
            &self.client_secret_file,
        ) {
            (Some(inline), None, None) => inline.clone(),
            (None, Some(var), None) => std::env::var(var).with_context(|| {
                format!("providers.{name}.client_secret_env names {var}, which is not set")
            })?,
            (None, None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| {
                    format!(
                        "providers.{name}.client_secret_file: cannot read {}",
                        file.display()
                    )
                })?
                .trim()
                .to_string(),
            (None, None, None) => String::new(),
            _ => bail!(
                "providers.{name}: give only one of client_secret, client_secret_env, client_secret_file"
            ),
        };
        Ok(ProviderSettings {
            base_url: self.base_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: ClientSecret::new(secret),
            timeouts: HttpTimeouts::default(),
        })
    }
}

/// Read the configuration: `explicit` must exist; the default file may be absent.
pub fn load(explicit: Option<&Path>, data_dir: &Path) -> Result<FileConfig> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => (data_dir.join("gapless.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileConfig::default());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid configuration", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_takes_at_most_one_secret_source() {
        let config: FileConfig = toml::from_str(
            r#"
            [providers.sandbox]
            base_url = "http://127.0.0.1:8900"
            client_id = "gapless-demo"
            client_secret = "inline"
            client_secret_env = "ALSO_THIS"
            "#,
        )
        .unwrap();
        let err = config.providers["sandbox"]
            .settings("sandbox")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only one"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = toml::from_str::<FileConfig>("public_ulr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("public_ulr"), "{err}");
    }
}
