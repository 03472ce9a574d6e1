//! The sandbox ad platform (a local emulator with Graph-shaped answers).

mod classify;
mod probe;
mod streams;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gapless_core::{Failure, FailureCause, ReauthReason, ReportRange};
use gapless_vault::{Credential, RefreshToken};

pub use classify::{classify_api, classify_token};

use crate::{
    AuthKind, ProbeReport, ProviderDescriptor, SourceConnector,
    oauth::{AuthorizationRequest, OAuthClient, TokenError, TokenSet},
    settings::{ProviderSettings, RegistryError},
};

/// The registry name (OAuth2 with PKCE).
pub const NAME: &str = "sandbox";
/// The registry name of the same platform reached with an API key.
pub const KEY_NAME: &str = "sandbox_key";
/// The registry name of the same platform reached with the client-credentials grant.
pub const SERVICE_NAME: &str = "sandbox_service";

/// The sandbox source connector.
#[derive(Debug)]
pub struct SandboxSource {
    base_url: String,
    oauth: OAuthClient,
    http: reqwest::Client,
    descriptor: ProviderDescriptor,
}

impl SandboxSource {
    /// The API-key flavour: no OAuth, a key in the `X-Api-Key` header.
    pub fn with_api_key(settings: ProviderSettings) -> Result<Self, RegistryError> {
        let mut source = Self::build(settings)?;
        source.descriptor = key_descriptor();
        Ok(source)
    }

    /// The client-credentials flavour: the application's own service account.
    pub fn with_client_credentials(settings: ProviderSettings) -> Result<Self, RegistryError> {
        let mut source = Self::new(settings)?;
        source.descriptor = ProviderDescriptor {
            name: SERVICE_NAME.into(),
            display_name: "Sandbox Ads (service account)".into(),
            auth: AuthKind::OAuth2ClientCredentials,
            default_scopes: vec!["ads_read".into()],
            rotating_refresh_tokens: false,
            ..descriptor()
        };
        Ok(source)
    }

    pub fn new(settings: ProviderSettings) -> Result<Self, RegistryError> {
        if settings.client_id.trim().is_empty() || settings.client_secret.is_empty() {
            return Err(RegistryError::Settings(format!(
                "{NAME} needs a client_id and a client secret for OAuth"
            )));
        }
        Self::build(settings)
    }

    fn build(settings: ProviderSettings) -> Result<Self, RegistryError> {
        let base_url = settings.base_url.trim_end_matches('/').to_string();
        url::Url::parse(&base_url).map_err(|e| {
            RegistryError::Settings(format!("base_url {base_url:?} is not a URL: {e}"))
        })?;
        let http = crate::http::client(settings.timeouts)
            .map_err(|e| RegistryError::Settings(format!("HTTP client: {e}")))?;
        Ok(Self {
            oauth: OAuthClient {
                authorize_url: format!("{base_url}/oauth/authorize"),
                token_url: format!("{base_url}/oauth/token"),
                client_id: settings.client_id,
                client_secret: settings.client_secret,
                options: crate::oauth::OAuthOptions::default(),
            },
            base_url,
            http,
            descriptor: descriptor(),
        })
    }

    /// Every stream served with `retention` (e.g. a sandbox configured with another limit).
    pub fn with_retention(mut self, retention: gapless_core::Retention) -> Self {
        for stream in &mut self.descriptor.streams {
            stream.retention = Some(retention);
        }
        self
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The sandbox's definition file (`examples/providers/sandbox.toml`): the `sandbox`
/// provider is this definition, run by the declarative connector.
pub const DEFINITION: &str = include_str!("../../../../examples/providers/sandbox.toml");

/// The `sandbox` provider, run from its definition.
pub fn defined(
    settings: ProviderSettings,
) -> Result<crate::declarative::connector::DeclarativeSource, RegistryError> {
    crate::declarative::connector::DeclarativeSource::new(definition(), settings)
}

/// The API-key flavour's descriptor.
pub fn key_descriptor() -> ProviderDescriptor {
    ProviderDescriptor {
        name: KEY_NAME.into(),
        display_name: "Sandbox Ads (API key)".into(),
        auth: AuthKind::ApiKey,
        default_scopes: vec![],
        rotating_refresh_tokens: false,
        ..descriptor()
    }
}

/// The sandbox's descriptor: its definition file's.
pub fn descriptor() -> ProviderDescriptor {
    crate::declarative::connector::descriptor(&definition())
}

/// The checked definition (the embedded file is checked by a test).
fn definition() -> crate::declarative::definition::Definition {
    crate::declarative::check::check(DEFINITION)
        .expect("the built-in sandbox definition passes its check")
}

/// Attach the credential to a request: a bearer token, or an API key header.
pub(crate) fn authenticate(
    request: reqwest::RequestBuilder,
    credential: &Credential,
) -> Result<reqwest::RequestBuilder, Failure> {
    match credential {
        Credential::OAuth2 { access_token, .. } => {
            Ok(request.bearer_auth(access_token.expose_secret()))
        }
        Credential::ApiKey { key } => Ok(request.header("X-Api-Key", key.expose_secret())),
        other => Err(Failure::new(FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials,
        })
        .with_code("wrong_credential_kind")
        .with_message(format!(
            "the sandbox takes an OAuth2 token or an API key, not {}",
            other.kind()
        ))),
    }
}

fn not_oauth(descriptor: &ProviderDescriptor) -> Result<(), TokenError> {
    if descriptor.auth == AuthKind::OAuth2Code {
        Ok(())
    } else {
        Err(TokenError::Local(format!(
            "{} is not connected through an OAuth consent",
            descriptor.name
        )))
    }
}

#[async_trait]
impl SourceConnector for SandboxSource {
    fn descriptor(&self) -> &ProviderDescriptor {
        &self.descriptor
    }

    fn authorization_request(
        &self,
        redirect_uri: &str,
        scopes: &[String],
    ) -> Result<AuthorizationRequest, TokenError> {
        not_oauth(&self.descriptor)?;
        self.oauth.authorization_request(redirect_uri, scopes)
    }

    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        not_oauth(&self.descriptor)?;
        self.oauth
            .exchange_code(
                &self.http,
                &classify_token,
                code,
                verifier,
                redirect_uri,
                now,
            )
            .await
    }

    async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        not_oauth(&self.descriptor)?;
        self.oauth
            .refresh(&self.http, &classify_token, refresh_token, now)
            .await
    }

    async fn client_credentials(&self, now: DateTime<Utc>) -> Result<TokenSet, TokenError> {
        if self.descriptor.auth != AuthKind::OAuth2ClientCredentials {
            return Err(TokenError::Local(format!(
                "{} does not use the client-credentials grant",
                self.descriptor.name
            )));
        }
        self.oauth
            .client_credentials(
                &self.http,
                &classify_token,
                &self.descriptor.default_scopes,
                now,
            )
            .await
    }

    async fn probe(&self, credential: &Credential) -> Result<ProbeReport, Failure> {
        probe::probe(self, credential).await
    }

    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<crate::Extracted, Failure> {
        streams::extract(self, credential, resource, stream, range).await
    }
}

impl SandboxSource {
    /// GET `url` with the credential; a 200 JSON object, or the classified failure.
    pub(crate) async fn get_json(
        &self,
        credential: &Credential,
        url: &str,
    ) -> Result<serde_json::Value, Failure> {
        let response = authenticate(self.http().get(url), credential)?
            .send()
            .await
            .map_err(|e| crate::http::transport_failure(&e))?;
        let answer = crate::http::Answer::read(response)
            .await
            .map_err(|e| crate::http::transport_failure(&e))?;
        if answer.status != 200 {
            return Err(classify_api(&answer));
        }
        match answer.json() {
            Some(json) if json.get("error").is_some() => Err(classify_api(&answer)),
            Some(json) if json.is_object() => Ok(json),
            _ => Err(crate::http::malformed(&answer, "a JSON object")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_definition_passes_its_check() {
        let d = crate::declarative::check::check(super::DEFINITION).unwrap();
        assert_eq!(d.provider.name.get_ref(), super::NAME);
        assert_eq!(super::descriptor().streams[0].schema.columns.len(), 7);
    }
}
