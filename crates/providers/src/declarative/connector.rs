//! A source connector that runs a checked definition: its authorization, probe, error
//! rules and streams. Every failure comes back classified: the definition's rules first,
//! then the defaults (401 → refresh once, 403 → permission lost, 429 → rate limited with
//! Retry-After, 5xx and transport errors → transient).

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use gapless_core::{
    Column, ColumnKind, Failure, FailureCause, RateLimit, ReauthReason, ReportRange, Row,
    StreamSchema, Value,
};
use gapless_vault::{Credential, RefreshToken};

use super::{
    definition::{
        Auth, AuthKind, ClientAuth, Compression, Definition, ErrorRule, FieldType, KeyLocation,
        Pagination, PaginationKind, Stream,
    },
    request::{RenderError, RenderedRequest, RequestTemplates},
    template::Vars,
};
use crate::{
    AuthKind as ConnectorAuth, Extracted, Lifetimes, ProbeReport, ProviderDescriptor,
    ProviderSettings, SourceConnector, StreamDescriptor,
    http::{Answer, malformed, transport_failure},
    oauth::{AuthorizationRequest, OAuthClient, OAuthOptions, TokenError, TokenSet},
    settings::RegistryError,
};

mod job;

pub use job::{
    MAX_WAIT_DEFAULT, POLL_EVERY_DEFAULT, POLL_FOR_DEFAULT, POLL_FOR_MAX, WAIT_MAX, WAIT_MIN,
};

/// The largest probe answer read.
const MAX_PROBE_BYTES: u64 = 1024 * 1024;
/// The most bytes all pages of one request may hold together.
const MAX_TOTAL_BYTES: u64 = 512 * 1024 * 1024;

/// How an answer is read: its size limit (after decompression), the request's timeout
/// (the client's when None) and the body's own compression.
#[derive(Debug, Clone, Copy)]
struct Reading {
    max_bytes: u64,
    timeout: Option<std::time::Duration>,
    compression: Compression,
}

/// The credential's place in one request: headers (an access token, a key) and Basic
/// authentication (a password). Never logged.
#[derive(Default)]
struct Placed {
    headers: Vec<(String, String)>,
    basic: Option<(String, String)>,
}

/// An answer read up to `max_bytes`: a success's own compression undone (error answers
/// come as they are), its text decoded.
async fn read_answer(
    response: reqwest::Response,
    max_bytes: u64,
    compression: Compression,
) -> Result<Answer, Failure> {
    match Answer::read_raw(response, max_bytes).await {
        Ok(Some((mut answer, bytes))) => {
            let bytes = if (200..300).contains(&answer.status) {
                super::payload::decompress(bytes, compression, max_bytes).map_err(unusable)?
            } else {
                bytes
            };
            answer.body = crate::http::text_of(bytes);
            Ok(answer)
        }
        Ok(None) => Err(Failure::new(FailureCause::Transient)
            .with_code("response_too_large")
            .with_message(format!("the answer is larger than {max_bytes} bytes"))),
        Err(e) => Err(transport_failure(&e)),
    }
}

/// A provider run from its definition.
#[derive(Debug)]
pub struct DeclarativeSource {
    /// The definition as given, in its own region: what an identity's own region and
    /// settings are applied to.
    origin: std::sync::Arc<Definition>,
    /// The installation's region (None: the definition's own).
    region: Option<String>,
    /// The installation's settings as given.
    installation: ProviderSettings,
    /// Required per-identity settings the installation gives no value of: only a connector
    /// for an identity that gives them makes requests.
    awaiting: Vec<String>,
    /// The definition in the region the requests go to.
    definition: Definition,
    descriptor: ProviderDescriptor,
    base_url: String,
    http: reqwest::Client,
    oauth: Option<OAuthClient>,
    /// Where tokens are revoked (RFC 7009), if the provider offers it.
    revoke_url: Option<String>,
    /// How long one report request may take (the client's shorter timeout stays for
    /// token and probe requests).
    report_timeout: std::time::Duration,
    /// The installation's values of the definition's settings (blank ones dropped).
    settings: crate::SettingValues,
    /// The requests' templates, parsed once: the probe's, and each stream's by name.
    probe_request: RequestTemplates,
    /// `probe.resource_request`: one resource's reachability.
    resource_probe: Option<RequestTemplates>,
    /// The resource listing's request, when the definition has one.
    resources_request: Option<RequestTemplates>,
    /// `resources.children.request`: the resources under one listed resource.
    children_request: Option<RequestTemplates>,
    stream_requests: std::collections::HashMap<String, RequestTemplates>,
}

fn duration(value: Option<&toml::Spanned<String>>) -> Option<Duration> {
    value
        .and_then(|v| humantime::parse_duration(v.get_ref()).ok())
        .and_then(|d| Duration::from_std(d).ok())
}

/// A stream's retention as its definition declares it (checked by `provider check`).
fn retention(stream: &super::definition::Stream) -> Option<gapless_core::Retention> {
    let lookback = duration(stream.lookback.as_ref())?;
    let from = match &stream.lookback_from {
        Some(text) => gapless_core::CountedFrom::parse(text.get_ref())?,
        None => gapless_core::CountedFrom::default(),
    };
    let margin = match &stream.lookback_margin {
        Some(_) => duration(stream.lookback_margin.as_ref())?,
        None => gapless_core::Retention::default_margin(lookback),
    };
    gapless_core::Retention::new(lookback, from, margin).ok()
}

/// The resources a probe's answer lists: objects (id and name at their pointers) or plain
/// strings and numbers (the value is both). An item without an id is an unusable answer,
/// never silently dropped: a pipeline's resource would look unreachable.
fn probe_resources(
    probe: &super::definition::Probe,
    json: &serde_json::Value,
) -> Result<Vec<(String, String)>, Failure> {
    let Some(pointer) = probe.resources.as_ref() else {
        return Ok(vec![]);
    };
    Ok(resource_items(
        json,
        Some(pointer.get_ref()),
        ItemPointers {
            id: probe.resource_id.as_ref(),
            name: probe.resource_name.as_ref(),
            token: None,
        },
        "the probe's answer",
    )?
    .into_iter()
    .map(|listed| (listed.id, listed.name))
    .collect())
}

/// One resource of a listing: its id, its name, and the token for it alone when the
/// listing gives one (`resources.token`).
struct Listed {
    id: String,
    name: String,
    token: Option<gapless_vault::AccessToken>,
}

/// Where, inside each listed item, its id, name and own token are.
#[derive(Clone, Copy)]
struct ItemPointers<'a> {
    id: Option<&'a toml::Spanned<String>>,
    name: Option<&'a toml::Spanned<String>>,
    token: Option<&'a toml::Spanned<String>>,
}

/// The resources listed in `json` at `pointer` (the whole answer when None): plain strings
/// or numbers, or objects with an id at `id` (default `/id`) and a name at `name`
/// (default `/name`, else the id). An absent or null list is empty.
fn resource_items(
    json: &serde_json::Value,
    pointer: Option<&str>,
    pointers: ItemPointers<'_>,
    what: &str,
) -> Result<Vec<Listed>, Failure> {
    let pointer = pointer.unwrap_or("");
    // `*` steps gather the lists of every member or item there (a streamed answer's
    // batches).
    let mut lists = Vec::new();
    pointed_all(json, pointer, &mut lists);
    let mut items: Vec<&serde_json::Value> = Vec::new();
    for list in lists {
        match list {
            serde_json::Value::Null => {}
            serde_json::Value::Array(found) => items.extend(found),
            other => {
                return Err(Failure::new(FailureCause::Transient)
                    .with_code("malformed_response")
                    .with_message(format!(
                        "{what} holds {} at {pointer:?}, not a list of resources",
                        json_kind(other),
                    )));
            }
        }
    }
    let id = pointers.id.map_or("/id", |p| p.get_ref().as_str());
    let name = pointers.name.map_or("/name", |p| p.get_ref().as_str());
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::String(_) | serde_json::Value::Number(_) => {
                let text = scalar_text(item);
                Ok(Listed {
                    id: text.clone(),
                    name: text,
                    token: None,
                })
            }
            _ => {
                let rid = item
                    .pointer(id)
                    .filter(|v| !v.is_null())
                    .map(scalar_text)
                    .ok_or_else(|| {
                        Failure::new(FailureCause::Transient)
                            .with_code("malformed_response")
                            .with_message(format!(
                                "resource {i} of {what} (at {pointer:?}) has no id at {id}"
                            ))
                    })?;
                let rname = item
                    .pointer(name)
                    .filter(|v| !v.is_null())
                    .map_or_else(|| rid.clone(), scalar_text);
                let token = pointers
                    .token
                    .and_then(|p| item.pointer(p.get_ref()))
                    .and_then(serde_json::Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| gapless_vault::AccessToken::new(t.to_string()));
                Ok(Listed {
                    id: rid,
                    name: rname,
                    token,
                })
            }
        })
        .collect()
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn column_kind(kind: FieldType) -> ColumnKind {
    match kind {
        FieldType::Text => ColumnKind::Text,
        FieldType::Integer => ColumnKind::Integer,
        FieldType::Decimal => ColumnKind::Decimal,
        FieldType::Date => ColumnKind::Date,
    }
}

/// The installation's settings that have a value, trimmed: what templates render (an
/// optional setting left blank has none).
fn given_settings(
    values: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    values
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), v.trim().to_string()))
        .collect()
}

/// The consent's extra parameters, their `{settings.NAME}` given the installation's
/// values (Seller Central's `application_id`); a parameter naming an optional setting left
/// unset (or blank) is left out.
fn consent_params(
    params: &std::collections::BTreeMap<String, String>,
    given: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, RegistryError> {
    let mut out = Vec::new();
    for (name, value) in params {
        let template = super::template::Template::parse(value)
            .map_err(|e| settings_error(format!("auth.authorize_params.{name}: {e}")))?;
        let unset = template.variables().any(|v| {
            super::template::setting_name(v).is_none_or(|setting| !given.contains_key(setting))
        });
        if unset {
            continue;
        }
        let rendered = template
            .render(
                &super::template::Vars::settings_only(given),
                super::template::Escape::Header,
            )
            .map_err(|e| settings_error(format!("auth.authorize_params.{name}: {e}")))?;
        out.push((name.clone(), rendered));
    }
    Ok(out)
}

/// A definition's URL with its `{settings.NAME}` given the installation's values.
fn with_settings(
    url: &str,
    given: &std::collections::BTreeMap<String, String>,
    key: &str,
) -> Result<String, RegistryError> {
    if !url.contains('{') {
        return Ok(url.to_string());
    }
    // A value in a URL is one label (a shop's subdomain): never a host of its own.
    let template =
        super::template::Template::parse(url).map_err(|e| settings_error(format!("{key}: {e}")))?;
    for variable in template.variables() {
        if let Some((name, value)) = super::template::setting_name(variable)
            .and_then(|name| given.get(name).map(|value| (name, value)))
            && !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(settings_error(format!(
                "{key}: the setting {name} goes into a URL and must be letters, digits, '-' and '_' only"
            )));
        }
    }
    template
        .render(
            &super::template::Vars::settings_only(given),
            super::template::Escape::Url,
        )
        .map_err(|e| settings_error(format!("{key}: {e}")))
}

/// The setting that defaults to the installation's OAuth client id.
const CLIENT_ID_SETTING: &str = "client_id";
/// The setting that defaults to the installation's OAuth client secret (a definition
/// declares it secret: `provider check` refuses it otherwise).
pub const CLIENT_SECRET_SETTING: &str = "client_secret";

fn settings_error(message: String) -> RegistryError {
    RegistryError::Settings(message)
}

/// The installation's values of the definition's settings, blank ones dropped: every
/// required one given, none the definition does not declare; and the required ones given
/// per identity that are not given here (their identities give them). A setting named
/// `client_id` is the OAuth client's id unless given otherwise (Amazon wants it again in
/// a header), one named `client_secret` the client's secret (TikTok's advertiser listing
/// asks for it): the installation writes each once.
fn installation_values(
    definition: &Definition,
    settings: &ProviderSettings,
) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), RegistryError> {
    let name = definition.provider.name.get_ref();
    let mut values = settings.settings.values().clone();
    if definition.settings.contains_key(CLIENT_ID_SETTING)
        && values
            .get(CLIENT_ID_SETTING)
            .is_none_or(|v| v.trim().is_empty())
        && !settings.client_id.trim().is_empty()
    {
        values.insert(CLIENT_ID_SETTING.into(), settings.client_id.clone());
    }
    if definition
        .settings
        .get(CLIENT_SECRET_SETTING)
        .is_some_and(|s| s.secret)
        && values
            .get(CLIENT_SECRET_SETTING)
            .is_none_or(|v| v.trim().is_empty())
        && !settings.client_secret.is_empty()
    {
        values.insert(
            CLIENT_SECRET_SETTING.into(),
            settings.client_secret.expose_secret().to_string(),
        );
    }
    let mut given = given_settings(&values);
    let mut awaiting = Vec::new();
    for (key, setting) in &definition.settings {
        if let Some(default) = &setting.default
            && !given.contains_key(key)
        {
            given.insert(key.clone(), default.clone());
        }
        if setting.required && setting.per_identity && !given.contains_key(key) {
            awaiting.push(key.clone());
        } else if setting.required && !given.contains_key(key) {
            return Err(settings_error(format!(
                "providers.{name}.settings.{key} is required: {}",
                setting.description
            )));
        }
    }
    if let Some(unknown) = values
        .keys()
        .find(|key| !definition.settings.contains_key(*key))
    {
        let declared = if definition.settings.is_empty() {
            "none".to_string()
        } else {
            definition
                .settings
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(settings_error(format!(
            "providers.{name}.settings.{unknown} is not a setting of {name} (it declares: {declared})"
        )));
    }
    Ok((given, awaiting))
}

/// Resolves a definition's URLs: settings filled in, paths under the base URL.
#[derive(Clone, Copy)]
struct Urls<'a> {
    base: &'a str,
    given: &'a std::collections::BTreeMap<String, String>,
    /// Whether settings are filled in (false while a per-identity one awaits its value).
    render: bool,
}

impl Urls<'_> {
    fn resolve(
        &self,
        url: &Option<toml::Spanned<String>>,
        key: &str,
    ) -> Result<Option<String>, RegistryError> {
        url.as_ref()
            .map(|u| {
                let u = if self.render {
                    with_settings(u.get_ref(), self.given, key)?
                } else {
                    u.get_ref().clone()
                };
                Ok(if u.starts_with('/') {
                    format!("{}{u}", self.base)
                } else {
                    u
                })
            })
            .transpose()
    }
}

/// The OAuth client of an OAuth definition (its id and secret from the installation).
fn oauth_client(
    definition: &Definition,
    settings: &ProviderSettings,
    urls: Urls<'_>,
) -> Result<Option<OAuthClient>, RegistryError> {
    let auth = &definition.auth;
    match *auth.kind.get_ref() {
        AuthKind::Oauth2 | AuthKind::Oauth2ClientCredentials => {}
        AuthKind::ApiKey | AuthKind::Basic => return Ok(None),
    }
    if settings.client_id.trim().is_empty() || settings.client_secret.is_empty() {
        return Err(settings_error(format!(
            "{} needs a client_id and a client secret for OAuth",
            definition.provider.name.get_ref()
        )));
    }
    Ok(Some(OAuthClient {
        authorize_url: urls
            .resolve(&auth.authorize_url, "auth.authorize_url")?
            .unwrap_or_default(),
        token_url: urls
            .resolve(&auth.token_url, "auth.token_url")?
            .unwrap_or_default(),
        client_id: settings.client_id.clone(),
        client_secret: settings.client_secret.clone(),
        options: OAuthOptions {
            scope_separator: auth.scope_separator.clone(),
            pkce: auth.pkce,
            client_secret_in_body: auth.client_auth == ClientAuth::Post,
            authorize_params: consent_params(&auth.authorize_params, urls.given)?,
            token_params: auth.token_params.clone().into_iter().collect(),
            standard_consent: auth.standard_consent,
            json_token_request: auth.token_request == super::definition::TokenRequestFormat::Json,
            token_field_names: auth.token_fields.clone().into_iter().collect(),
            token_answer: auth.token_answer.as_ref().map(|p| p.get_ref().clone()),
        },
    }))
}

/// How long one report request may take: `limits.report_timeout`, within its bounds.
fn report_timeout(definition: &Definition) -> std::time::Duration {
    definition
        .limits
        .report_timeout
        .as_ref()
        .and_then(|t| humantime::parse_duration(t.get_ref()).ok())
        .map_or(super::check::REPORT_TIMEOUT_DEFAULT, |t| {
            t.clamp(
                super::check::REPORT_TIMEOUT_MIN,
                super::check::REPORT_TIMEOUT_MAX,
            )
        })
}

/// A definition's request templates, parsed once.
struct ParsedRequests {
    probe_request: RequestTemplates,
    resource_probe: Option<RequestTemplates>,
    resources_request: Option<RequestTemplates>,
    children_request: Option<RequestTemplates>,
    stream_requests: std::collections::HashMap<String, RequestTemplates>,
}

impl ParsedRequests {
    fn of(definition: &Definition) -> Result<Self, RegistryError> {
        let resources_request = definition
            .resources
            .as_ref()
            .map(|r| RequestTemplates::parse(&r.request))
            .transpose()
            .map_err(|e| settings_error(format!("resources.request.{e}")))?;
        let children_request = definition
            .resources
            .as_ref()
            .and_then(|r| r.children.as_ref())
            .map(|c| RequestTemplates::parse(&c.request))
            .transpose()
            .map_err(|e| settings_error(format!("resources.children.request.{e}")))?;
        let probe_request = RequestTemplates::parse(&definition.probe.request)
            .map_err(|e| settings_error(format!("probe.request.{e}")))?;
        let resource_probe = definition
            .probe
            .resource_request
            .as_ref()
            .map(RequestTemplates::parse)
            .transpose()
            .map_err(|e| settings_error(format!("probe.resource_request.{e}")))?;
        let stream_requests = definition
            .streams
            .iter()
            .map(|s| {
                let templates = RequestTemplates::parse(&s.request).map_err(|e| {
                    settings_error(format!("stream {}: request.{e}", s.name.get_ref()))
                })?;
                Ok((s.name.get_ref().clone(), templates))
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(Self {
            probe_request,
            resource_probe,
            resources_request,
            children_request,
            stream_requests,
        })
    }
}

impl DeclarativeSource {
    /// Build from a definition that passed [`super::check::check`], with this installation's
    /// settings (a non-empty `base_url` replaces the definition's).
    pub fn new(definition: Definition, settings: ProviderSettings) -> Result<Self, RegistryError> {
        Self::build(std::sync::Arc::new(definition), None, settings, None)
    }

    /// Build from a checked definition in its region `region` (one the installation
    /// picked; None: the definition's own), with this installation's settings.
    pub fn in_region(
        definition: Definition,
        region: Option<&str>,
        settings: ProviderSettings,
    ) -> Result<Self, RegistryError> {
        Self::build(
            std::sync::Arc::new(definition),
            region.map(str::to_string),
            settings,
            None,
        )
    }

    /// The connector of `definition` (in its own region) moved to `region`, with the
    /// installation's `settings`; `http` reused when given.
    fn build(
        origin: std::sync::Arc<Definition>,
        region: Option<String>,
        settings: ProviderSettings,
        http: Option<reqwest::Client>,
    ) -> Result<Self, RegistryError> {
        let definition = match &region {
            Some(r) => (*origin)
                .clone()
                .in_region(r)
                .map_err(|e| settings_error(e.to_string()))?,
            None => (*origin).clone(),
        };
        let (given, awaiting) = installation_values(&definition, &settings)?;
        // The URLs, their settings given (a shop's own host). While a per-identity setting
        // awaits its identity, they stay templates: this connector makes no request.
        let render = awaiting.is_empty();
        let template = if settings.base_url.trim().is_empty() {
            definition.provider.base_url.get_ref().clone()
        } else {
            settings.base_url.clone()
        };
        let base_url = if render {
            with_settings(&template, &given, "base_url")?
        } else {
            template
        }
        .trim_end_matches('/')
        .to_string();
        if render {
            url::Url::parse(&base_url)
                .map_err(|e| settings_error(format!("base_url {base_url:?} is not a URL: {e}")))?;
        }
        let urls = Urls {
            base: &base_url,
            given: &given,
            render,
        };
        let revoke_url = urls.resolve(&definition.auth.revoke_url, "auth.revoke_url")?;
        let oauth = oauth_client(&definition, &settings, urls)?;
        let http = match http {
            Some(http) => http,
            None => crate::http::client(settings.timeouts)
                .map_err(|e| settings_error(format!("HTTP client: {e}")))?,
        };
        let ParsedRequests {
            probe_request,
            resource_probe,
            resources_request,
            children_request,
            stream_requests,
        } = ParsedRequests::of(&definition)?;
        Ok(Self {
            descriptor: descriptor(&definition),
            report_timeout: report_timeout(&definition),
            origin,
            region,
            installation: settings,
            awaiting,
            definition,
            base_url,
            http,
            oauth,
            revoke_url,
            settings: crate::SettingValues::new(given),
            probe_request,
            resource_probe,
            resources_request,
            children_request,
            stream_requests,
        })
    }

    /// Whether refresh tokens rotate (e.g. a sandbox configured to keep them).
    pub fn with_rotating_refresh_tokens(mut self, rotating: bool) -> Self {
        self.descriptor.rotating_refresh_tokens = rotating;
        self
    }

    /// Every stream served with `retention` (e.g. a sandbox configured with another limit).
    pub fn with_retention(mut self, retention: gapless_core::Retention) -> Self {
        for stream in &mut self.descriptor.streams {
            stream.retention = Some(retention);
        }
        self
    }

    /// Expiries the token endpoint did not state, from the definition's `lifetimes`: a new
    /// refresh token lives `lifetimes.refresh` from now (the answer's own figure wins).
    fn with_declared_lifetimes(&self, mut tokens: TokenSet, now: DateTime<Utc>) -> TokenSet {
        let lifetimes = &self.descriptor.lifetimes;
        if tokens.refresh_expires_at.is_none() && tokens.refresh_token.is_some() {
            tokens.refresh_expires_at = lifetimes.refresh.and_then(|d| now.checked_add_signed(d));
        }
        if tokens.access_expires_at.is_none() {
            tokens.access_expires_at = lifetimes.access.and_then(|d| now.checked_add_signed(d));
        }
        tokens
    }

    /// Why this connector makes no request: the per-identity settings it awaits.
    fn awaiting(&self) -> Option<String> {
        (!self.awaiting.is_empty()).then(|| {
            format!(
                "{} needs each identity's own {} (given when the identity is connected); this connector has none",
                self.descriptor.name,
                self.awaiting.join(", ")
            )
        })
    }

    /// `Ok` when this connector may make requests (no per-identity setting awaits).
    fn ready(&self) -> Result<(), Failure> {
        match self.awaiting() {
            Some(why) => Err(local(why)),
            None => Ok(()),
        }
    }

    /// This connector for an identity's own region and settings, sharing the HTTP client.
    fn for_identity_settings(
        &self,
        identity: &gapless_core::IdentitySettings,
    ) -> Result<Self, RegistryError> {
        let name = &self.descriptor.name;
        let per_identity: Vec<&String> = self
            .origin
            .settings
            .iter()
            .filter(|(_, s)| s.per_identity)
            .map(|(k, _)| k)
            .collect();
        let mut installation = self.installation.clone();
        let mut values = installation.settings.values().clone();
        for (key, value) in &identity.values {
            if !per_identity.contains(&key) {
                return Err(settings_error(format!(
                    "{key} is not a setting {name} takes per identity (it takes: {})",
                    if per_identity.is_empty() {
                        "none".to_string()
                    } else {
                        per_identity
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
            if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
                return Err(settings_error(format!(
                    "the identity's {key} must be 1 to 255 characters, none of them control characters"
                )));
            }
            values.insert(key.clone(), value.trim().to_string());
        }
        installation.settings = crate::SettingValues::new(values);
        let region = identity.region.clone().or_else(|| self.region.clone());
        if let Some(r) = &region
            && !self.origin.region_names().contains(r)
        {
            return Err(settings_error(format!(
                "{name} has no region {r:?} (it has: {})",
                match self.origin.region_names() {
                    names if names.is_empty() => "none".to_string(),
                    names => names.join(", "),
                }
            )));
        }
        let mut built = Self::build(
            self.origin.clone(),
            region,
            installation,
            Some(self.http.clone()),
        )?;
        if let Some(why) = built.awaiting() {
            return Err(settings_error(why));
        }
        built.descriptor = self.descriptor.clone();
        Ok(built)
    }

    fn oauth(&self) -> Result<&OAuthClient, TokenError> {
        if let Some(why) = self.awaiting() {
            return Err(TokenError::Local(why));
        }
        self.oauth.as_ref().ok_or_else(|| {
            TokenError::Local(format!("{} does not use OAuth", self.descriptor.name))
        })
    }

    /// An absolute URL for a rendered request URL (relative ones start at the base URL).
    fn absolute(&self, rendered: &str) -> String {
        if rendered.starts_with("http://") || rendered.starts_with("https://") {
            rendered.to_string()
        } else {
            format!("{}/{}", self.base_url, rendered.trim_start_matches('/'))
        }
    }

    /// The next page's URL, resolved against the current one, if it stays with the
    /// provider: a link to another origin (or from https down to http) would send the
    /// credential there, so it is refused.
    fn same_origin(&self, current: &str, target: &str) -> Result<String, Failure> {
        let base = url::Url::parse(current).map_err(|e| local(format!("request URL: {e}")))?;
        let next = base
            .join(target)
            .map_err(|_| malformed_message(format!("the next page {target:?} is not a URL")))?;
        let provider =
            url::Url::parse(&self.base_url).map_err(|e| local(format!("base URL: {e}")))?;
        if next.origin() != base.origin() && next.origin() != provider.origin() {
            return Err(malformed_message(format!(
                "the next page points to another host ({}); the credential is not sent there",
                next.host_str().unwrap_or("?")
            )));
        }
        Ok(next.into())
    }

    /// Send `url` with the credential (none: to another origin, such as a pre-signed
    /// storage URL); the answer read up to `max_bytes`.
    async fn send(
        &self,
        credential: Option<&Credential>,
        method: &str,
        url: &str,
        rendered: RenderedRequest,
        reading: Reading,
    ) -> Result<Answer, Failure> {
        let Reading {
            max_bytes,
            timeout,
            compression,
        } = reading;
        let RenderedRequest {
            headers,
            body,
            content_type,
            ..
        } = rendered;
        let mut url = url::Url::parse(url).map_err(|e| local(format!("request URL: {e}")))?;
        let placed = match credential {
            Some(credential) => self.place_credential(credential, &mut url)?,
            None => Placed::default(),
        };
        let mut request = if method.eq_ignore_ascii_case("POST") {
            self.http.post(url)
        } else {
            self.http.get(url)
        };
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("accept"))
        {
            request = request.header(reqwest::header::ACCEPT, "application/json");
        }
        for (name, value) in headers.iter().chain(&placed.headers) {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some((user, password)) = placed.basic {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(body) = body {
            // The definition's own media type, if its headers name one, else the format's.
            if let Some(content_type) = content_type
                && !headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            {
                request = request.header(reqwest::header::CONTENT_TYPE, content_type);
            }
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| transport_failure(&e))?;
        read_answer(response, max_bytes, compression).await
    }

    /// Where the credential goes in a request: the access token or key in its header (or
    /// the key in the query, added to `url`), or the password as Basic authentication. A
    /// credential of another kind than the definition's auth is refused.
    fn place_credential(
        &self,
        credential: &Credential,
        url: &mut url::Url,
    ) -> Result<Placed, Failure> {
        let auth = &self.definition.auth;
        let mut placed = Placed::default();
        match (credential, auth.kind.get_ref()) {
            (
                Credential::OAuth2 { access_token, .. },
                AuthKind::Oauth2 | AuthKind::Oauth2ClientCredentials,
            ) => placed.headers.push((
                auth.token_header
                    .clone()
                    .unwrap_or_else(|| "Authorization".into()),
                format!(
                    "{}{}",
                    auth.token_prefix.as_deref().unwrap_or("Bearer "),
                    access_token.expose_secret()
                ),
            )),
            (Credential::ApiKey { key }, AuthKind::ApiKey) => {
                let name = auth.name.clone().unwrap_or_default();
                let value = format!("{}{}", auth.prefix, key.expose_secret());
                match auth.location {
                    Some(KeyLocation::Query) => {
                        url.query_pairs_mut().append_pair(&name, &value);
                    }
                    _ => placed.headers.push((name, value)),
                }
            }
            (Credential::Password { username, password }, AuthKind::Basic) => {
                placed.basic = Some((username.clone(), password.expose_secret().to_string()));
            }
            (other, _) => {
                return Err(Failure::new(FailureCause::ReauthRequired {
                    reason: ReauthReason::InvalidCredentials,
                })
                .with_code("wrong_credential_kind")
                .with_message(format!(
                    "a {} credential cannot be used with {}",
                    other.kind(),
                    self.descriptor.name
                )));
            }
        }
        Ok(placed)
    }

    /// A small JSON answer (a probe, a resource listing), its failure classified.
    async fn small_json(
        &self,
        credential: &Credential,
        method: &str,
        url: &str,
        rendered: RenderedRequest,
        expected: &str,
    ) -> Result<serde_json::Value, Failure> {
        let answer = self
            .send(
                Some(credential),
                method,
                url,
                rendered,
                Reading {
                    max_bytes: MAX_PROBE_BYTES,
                    timeout: None,
                    compression: Compression::None,
                },
            )
            .await?;
        if let Some(failure) = self.classify(&answer) {
            return Err(failure);
        }
        answer.json().ok_or_else(|| malformed(&answer, expected))
    }

    /// The values of a request about the account as a whole (the probe, the resource
    /// listing): no window, page or resource, only the installation's settings.
    fn account_vars(&self) -> Vars<'_> {
        Vars::settings_only(self.settings.values())
    }

    /// Every page of the `[resources]` listing, and how many pages it took.
    async fn listed_resources(
        &self,
        credential: &Credential,
        templates: &RequestTemplates,
    ) -> Result<(Vec<Listed>, u32), Failure> {
        let Some(def) = &self.definition.resources else {
            return Ok((vec![], 0));
        };
        let vars = self.account_vars();
        let first = templates.render(&vars).map_err(rendering)?;
        let mut url = self.absolute(&first.url);
        let mut rendered = first;
        let mut seen = HashSet::new();
        let mut all = Vec::new();
        for pages in 1..=def.max_pages {
            // A page is its URL and its body (a token may go in either, or in a header).
            if !seen.insert((url.clone(), rendered.body.clone(), rendered.headers.clone())) {
                return Err(malformed_message(
                    "the resource listing pointed to a page it had already given (a page loop)"
                        .into(),
                ));
            }
            let json = self
                .small_json(
                    credential,
                    &templates.method,
                    &url,
                    rendered.clone(),
                    "a JSON list of resources",
                )
                .await?;
            all.extend(listed_on_page(def, &json)?);
            // A token or URL as text (a token written as a number, too).
            let at = |pointer: &Option<toml::Spanned<String>>| {
                pointer
                    .as_ref()
                    .and_then(|p| json.pointer(p.get_ref()))
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .filter(|s| !s.is_empty())
            };
            // A next page by its token: the listing's request again, with {cursor}.
            if let Some(token) = at(&def.cursor) {
                let vars = Vars {
                    cursor: Some(&token),
                    ..self.account_vars()
                };
                rendered = templates.render(&vars).map_err(rendering)?;
                url = self.absolute(&rendered.url);
                continue;
            }
            match at(&def.next) {
                Some(next) => {
                    url = self.same_origin(&url, &next)?;
                    // A next page is its own URL: the first page's body is not sent again.
                    rendered = RenderedRequest {
                        url: url.clone(),
                        headers: rendered.headers,
                        body: None,
                        content_type: None,
                    };
                }
                None => return Ok((all, pages)),
            }
        }
        Err(malformed_message(format!(
            "the resource listing has more than {} pages",
            def.max_pages
        )))
    }

    /// The resources under `parent` (`resources.children`). A parent that refuses in a way
    /// that needs a person (not a manager, suspended) has none; any other refusal fails the
    /// listing.
    async fn children_of(
        &self,
        credential: &Credential,
        templates: &RequestTemplates,
        parent: &str,
    ) -> Result<Vec<Listed>, Failure> {
        let Some(def) = self
            .definition
            .resources
            .as_ref()
            .and_then(|r| r.children.as_ref())
        else {
            return Ok(vec![]);
        };
        let vars = Vars {
            resource: parent,
            ..self.account_vars()
        };
        let rendered = templates.render(&vars).map_err(rendering)?;
        let url = self.absolute(&rendered.url);
        let json = match self
            .small_json(
                credential,
                &templates.method,
                &url,
                rendered,
                "a JSON list of resources",
            )
            .await
        {
            Ok(json) => json,
            Err(failure) if failure.cause.needs_human() => return Ok(vec![]),
            Err(failure) => return Err(failure),
        };
        resource_items(
            &json,
            def.items.as_ref().map(|p| p.get_ref().as_str()),
            ItemPointers {
                id: def.id.as_ref(),
                name: def.name.as_ref(),
                token: None,
            },
            &format!("the listing under {parent}"),
        )
    }

    /// The credential requests about `resource` are sent with: the identity's own, or,
    /// where the listing gives each resource its own token (`resources.token`), that
    /// token from a listing read now. A resource no longer listed, or listed without a
    /// token, is out of this identity's reach.
    async fn credential_for<'c>(
        &self,
        credential: &'c Credential,
        resource: &str,
    ) -> Result<(std::borrow::Cow<'c, Credential>, u32), Failure> {
        let (Some(templates), Some(_)) = (
            &self.resources_request,
            self.definition
                .resources
                .as_ref()
                .and_then(|r| r.token.as_ref()),
        ) else {
            return Ok((std::borrow::Cow::Borrowed(credential), 0));
        };
        let (listed, pages) = self.listed_resources(credential, templates).await?;
        let lost = |code: &str, why: String| {
            Err(Failure::new(FailureCause::PermissionLost)
                .with_code(code)
                .with_message(why))
        };
        match listed.into_iter().find(|l| l.id == resource) {
            Some(Listed {
                token: Some(token), ..
            }) => Ok((
                std::borrow::Cow::Owned(Credential::OAuth2 {
                    access_token: token,
                    refresh_token: None,
                    access_expires_at: None,
                }),
                pages,
            )),
            Some(listed) => lost(
                "resource_token_missing",
                format!(
                    "{} lists {} ({}) without a token for it: this identity may no longer act on it",
                    self.descriptor.name, listed.name, listed.id
                ),
            ),
            None => lost(
                "resource_not_listed",
                format!(
                    "{resource} is no longer among what this identity can read at {} (removed as an admin, or its access taken away)",
                    self.descriptor.name
                ),
            ),
        }
    }

    /// The failure an answer stands for, if it is one: the first matching rule, else the
    /// defaults for an error status.
    /// The failure an answer is, if it is one: the definition's rules, its vendor table,
    /// then the defaults; any secret the request carried is cut out of what it quotes.
    fn classify(&self, answer: &Answer) -> Option<Failure> {
        self.classify_answer(answer)
            .map(|f| self.without_secrets(f))
    }

    /// A failure with every secret of this installation (its OAuth client secret, its
    /// secret settings) cut out of the provider's words it quotes: a provider whose error
    /// page echoes the request (a secret TikTok wants in a query) must not put it into an
    /// incident or a mail.
    fn without_secrets(&self, mut failure: Failure) -> Failure {
        let Some(message) = failure.provider_message.as_mut() else {
            return failure;
        };
        let client = self
            .oauth
            .as_ref()
            .map(|o| o.client_secret.expose_secret().to_string());
        let settings = self
            .definition
            .settings
            .iter()
            .filter(|(_, s)| s.secret)
            .filter_map(|(name, _)| self.settings.values().get(name).cloned());
        for secret in client.into_iter().chain(settings) {
            // A secret this short would cut ordinary words; none is that short.
            if secret.len() >= 6 {
                *message = message.replace(&secret, "[secret]");
            }
        }
        failure
    }

    fn classify_answer(&self, answer: &Answer) -> Option<Failure> {
        if let Some(failure) = self.rule_match(answer) {
            return Some(failure);
        }
        if let Some(table) = self.definition.provider.classifier
            && let Some(failure) = table.api(answer)
        {
            return Some(failure);
        }
        if answer.status < 400 {
            return None;
        }
        let cause = match answer.status {
            401 => FailureCause::Refreshable,
            // Forbidden, or the resource is not there (for this credential).
            403 | 404 => FailureCause::PermissionLost,
            429 => FailureCause::RateLimited {
                retry_after_secs: answer.retry_after,
            },
            _ => FailureCause::Transient,
        };
        Some(
            Failure::new(cause)
                .with_code(format!("http_{}", answer.status))
                .with_message(answer.excerpt()),
        )
    }

    /// The failure of the first of the definition's rules that matches the answer.
    fn rule_match(&self, answer: &Answer) -> Option<Failure> {
        self.rule_match_where(answer, |_| true)
    }

    fn rule_match_where(
        &self,
        answer: &Answer,
        applies: impl Fn(&ErrorRule) -> bool,
    ) -> Option<Failure> {
        // Parsed once, and only when a rule may match what the body holds: a report page
        // (`{"data": …, "paging": …}`) is not parsed whole here for rules about `/error`.
        let json = std::cell::OnceCell::new();
        let parsed = || json.get_or_init(|| answer.json()).as_ref();
        let keys = std::cell::OnceCell::new();
        let top = || keys.get_or_init(|| super::classifier::top_level_keys(&answer.body));
        self.definition
            .errors
            .iter()
            .filter(|r| applies(r))
            .find(|rule| rule_matches(rule, answer, &parsed, &|| top().as_ref()))
            .map(|rule| rule_failure(rule, answer, &parsed))
    }

    /// A token endpoint's error answer: the rules that look into the body or a header
    /// (a rule on the status alone describes the API), then the OAuth defaults. "Refresh
    /// and retry" means nothing here: it is a grant that no longer works.
    fn classify_token(&self, answer: &Answer) -> Failure {
        self.without_secrets(self.classify_token_answer(answer))
    }

    fn classify_token_answer(&self, answer: &Answer) -> Failure {
        if let Some(mut failure) =
            self.rule_match_where(answer, |r| !r.body.is_empty() || r.header.is_some())
        {
            if failure.cause == FailureCause::Refreshable {
                failure.cause = FailureCause::ReauthRequired {
                    reason: ReauthReason::InvalidGrant,
                };
            }
            return failure;
        }
        if let Some(failure) = self
            .definition
            .provider
            .classifier
            .and_then(|table| table.token(answer))
        {
            return failure;
        }
        let body = crate::oauth::TokenErrorBody::read(answer);
        body.failure(answer, body.cause(answer))
    }
}

fn local(message: String) -> Failure {
    Failure::new(FailureCause::Transient)
        .with_code("definition")
        .with_message(message)
}

/// An answer whose records cannot be used (a payload that does not read whole, a value
/// that does not fit its field): its windows are retried later, the run goes on.
fn unusable(message: String) -> Failure {
    Failure::new(FailureCause::BadAnswer)
        .with_code("unusable_answer")
        .with_message(message)
}

fn malformed_message(message: String) -> Failure {
    Failure::new(FailureCause::Transient)
        .with_code("malformed_response")
        .with_message(message)
}

/// A JSON value equal to a TOML value (numbers and strings compare by their text, so
/// `190` matches `"190"`).
fn same(found: &serde_json::Value, expected: &toml::Value) -> bool {
    match (found, expected) {
        (found, toml::Value::Array(options)) if !found.is_array() => {
            options.iter().any(|o| same(found, o))
        }
        (serde_json::Value::Bool(a), toml::Value::Boolean(b)) => a == b,
        (serde_json::Value::Array(_) | serde_json::Value::Object(_), _) => {
            serde_json::to_value(expected).is_ok_and(|e| &e == found)
        }
        (found, toml::Value::String(s)) => scalar_text(found) == *s,
        (found, toml::Value::Integer(i)) => scalar_text(found) == i.to_string(),
        _ => false,
    }
}

fn scalar_text(value: &serde_json::Value) -> String {
    scalar_str(value).into_owned()
}

/// A value as text: a string as it is (borrowed), anything else as JSON.
fn scalar_str(value: &serde_json::Value) -> std::borrow::Cow<'_, str> {
    match value {
        serde_json::Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

/// The resources one page of the `[resources]` listing names, each id without the
/// definition's `id_prefix` (and a name that was only the id, likewise).
fn listed_on_page(
    def: &super::definition::Resources,
    json: &serde_json::Value,
) -> Result<Vec<Listed>, Failure> {
    let prefix = def.id_prefix.as_deref().unwrap_or("");
    Ok(resource_items(
        json,
        def.items.as_ref().map(|p| p.get_ref().as_str()),
        ItemPointers {
            id: def.id.as_ref(),
            name: def.name.as_ref(),
            token: def.token.as_ref(),
        },
        "the resource listing",
    )?
    .into_iter()
    .map(|listed| {
        let bare = listed
            .id
            .strip_prefix(prefix)
            .unwrap_or(&listed.id)
            .to_string();
        let name = if listed.name == listed.id {
            bare.clone()
        } else {
            listed.name
        };
        Listed {
            id: bare,
            name,
            token: listed.token,
        }
    })
    .collect())
}

/// What a definition says the provider is.
pub fn descriptor(d: &Definition) -> ProviderDescriptor {
    let auth: &Auth = &d.auth;
    ProviderDescriptor {
        name: d.provider.name.get_ref().clone(),
        display_name: d.provider.display_name.clone(),
        auth: match auth.kind.get_ref() {
            AuthKind::Oauth2 => ConnectorAuth::OAuth2Code,
            AuthKind::Oauth2ClientCredentials => ConnectorAuth::OAuth2ClientCredentials,
            AuthKind::ApiKey => ConnectorAuth::ApiKey,
            AuthKind::Basic => ConnectorAuth::Password,
        },
        default_scopes: auth.scopes.clone(),
        streams: d
            .streams
            .iter()
            .map(|s| StreamDescriptor {
                schema: StreamSchema {
                    name: s.name.get_ref().clone(),
                    columns: s
                        .fields
                        .iter()
                        .map(|f| Column {
                            name: f.name.get_ref().clone(),
                            kind: column_kind(f.kind),
                        })
                        .collect(),
                    primary_key: s.primary_key.iter().map(|k| k.get_ref().clone()).collect(),
                },
                retention: retention(s),
                settle_windows: s.settle_windows,
                max_range: duration(s.max_range.as_ref()),
                day_column: s.day_field.as_ref().map(|f| f.get_ref().clone()),
            })
            .collect(),
        rotating_refresh_tokens: auth.rotating_refresh_tokens,
        lifetimes: Lifetimes {
            access: duration(auth.lifetimes.access.as_ref()),
            refresh: duration(auth.lifetimes.refresh.as_ref()),
            authorization: duration(auth.lifetimes.authorization.as_ref()),
        },
        rate_limit: d
            .limits
            .requests
            .as_ref()
            .and_then(|r| r.get_ref().parse::<RateLimit>().ok()),
        probe_interval: duration(d.limits.probe_every.as_ref()),
    }
}

/// The values at `pointer` in `json`, where a `*` step stands for every member of an
/// object or item of an array.
fn pointed_all<'a>(
    json: &'a serde_json::Value,
    pointer: &str,
    out: &mut Vec<&'a serde_json::Value>,
) {
    if pointer.is_empty() {
        out.push(json);
        return;
    }
    let Some(path) = pointer.strip_prefix('/') else {
        return;
    };
    let (step, rest) = match path.split_once('/') {
        Some((step, rest)) => (step, format!("/{rest}")),
        None => (path, String::new()),
    };
    if step == "*" {
        match json {
            serde_json::Value::Object(members) => {
                for value in members.values() {
                    pointed_all(value, &rest, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    pointed_all(item, &rest, out);
                }
            }
            _ => {}
        }
    } else if let Some(next) = json.pointer(&format!("/{step}")) {
        pointed_all(next, &rest, out);
    }
}

/// Whether `params` carry at `name` the hex HMAC-SHA256, keyed with `secret`, of their
/// other pairs written `name=value`, sorted by name and joined with `&` (Shopify's scheme
/// for the redirects it sends an app). Compared in constant time.
fn callback_signed(params: &[(String, String)], name: &str, secret: &str) -> Result<(), String> {
    use hmac::{KeyInit, Mac};
    let mut given = None;
    let mut others: Vec<(&str, &str)> = Vec::new();
    for (key, value) in params {
        if key == name {
            if given.replace(value.as_str()).is_some() {
                return Err(format!("the redirect carries {name} twice"));
            }
        } else {
            others.push((key, value));
        }
    }
    let given = given.ok_or_else(|| format!("the redirect carries no signature ({name})"))?;
    let given = hex::decode(given).map_err(|_| format!("its signature ({name}) is not hex"))?;
    others.sort_unstable();
    let message = others
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map_err(|_| "the client secret cannot key the signature".to_string())?;
    mac.update(message.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| format!("its signature ({name}) is not the provider's (a forged or altered redirect, or another client secret)"))
}

/// A day written `%Y-%m-%d`, parsed by the items that format string stands for, built once
/// rather than for each value.
fn day_of(text: &str) -> chrono::ParseResult<NaiveDate> {
    use chrono::format::{Item, Numeric, Pad, Parsed};
    const DAY: &[Item<'static>] = &[
        Item::Numeric(Numeric::Year, Pad::Zero),
        Item::Literal("-"),
        Item::Numeric(Numeric::Month, Pad::Zero),
        Item::Literal("-"),
        Item::Numeric(Numeric::Day, Pad::Zero),
    ];
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, text, DAY.iter())?;
    parsed.to_naive_date()
}

/// A JSON pointer (RFC 6901) split into its unescaped steps once, to be followed in every
/// record of a report without parsing it again.
struct FieldPointer {
    text: String,
    /// None when the text is not a pointer (it then finds nothing, as
    /// `serde_json::Value::pointer` would).
    steps: Option<Vec<String>>,
}

impl FieldPointer {
    fn new(text: String) -> Self {
        let steps = if text.is_empty() {
            Some(Vec::new())
        } else {
            text.strip_prefix('/').map(|rest| {
                rest.split('/')
                    .map(|step| step.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
        };
        Self { text, steps }
    }

    /// The value at this pointer in `value`, as `serde_json::Value::pointer` finds it: an
    /// object's member, or an array's element by a decimal index without a sign or a
    /// leading zero.
    fn find<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.steps
            .as_ref()?
            .iter()
            .try_fold(value, |at, step| match at {
                serde_json::Value::Object(members) => members.get(step),
                serde_json::Value::Array(items) => {
                    if step.starts_with('+') || (step.starts_with('0') && step.len() > 1) {
                        return None;
                    }
                    items.get(step.parse::<usize>().ok()?)
                }
                _ => None,
            })
    }
}

/// A record's field as a value of its column's type; absent or null is NULL.
fn field_value(
    record: &serde_json::Value,
    pointer: &FieldPointer,
    kind: FieldType,
    tz: gapless_core::Tz,
) -> Result<Value, String> {
    let Some(found) = pointer.find(record).filter(|v| !v.is_null()) else {
        return Ok(Value::Null);
    };
    let text = scalar_str(found);
    let pointer = pointer.text.as_str();
    match kind {
        FieldType::Text => Ok(Value::Text(text.into_owned())),
        FieldType::Integer => text
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("{pointer} is {text:?}, not an integer")),
        FieldType::Decimal => {
            let number = text.trim();
            if is_decimal(number) {
                Ok(Value::Text(number.to_string()))
            } else {
                Err(format!("{pointer} is {text:?}, not a decimal number"))
            }
        }
        FieldType::Date if found.is_object() => date_parts(found).map(Value::Date).ok_or_else(|| {
            format!(
                "{pointer} is {text}, not a day given as {{\"year\", \"month\", \"day\"}} integers"
            )
        }),
        FieldType::Date => {
            let text = text.trim();
            // A day as such; a timestamp counts on the day it falls in, in the pipeline's
            // time zone — never the first ten characters of the provider's local time.
            day_of(text)
                .or_else(|_| {
                    DateTime::parse_from_rfc3339(text)
                        // ISO 8601's offset without its colon (Graph API's `+0000`).
                        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z"))
                        .map(|at| at.with_timezone(&tz).date_naive())
                })
                // A day written as its midnight without an offset (TikTok's
                // `2026-03-01 00:00:00`): the provider's day, as a day is.
                .or_else(|e| {
                    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
                        .ok()
                        .filter(|at| at.time() == chrono::NaiveTime::MIN)
                        .map(|at| at.date())
                        .ok_or(e)
                })
                .map(Value::Date)
                .map_err(|_| {
                    format!(
                        "{pointer} is {text:?}, neither a day (YYYY-MM-DD) nor a timestamp with its offset (RFC 3339)"
                    )
                })
        }
    }
}

/// A day given as its parts, `{"year": 2026, "month": 3, "day": 1}` (Rest.li's `Date`,
/// `google.type.Date`): each an integer, the day a real one.
fn date_parts(object: &serde_json::Value) -> Option<NaiveDate> {
    let part = |name: &str| {
        object
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let year = i32::try_from(part("year")?).ok()?;
    NaiveDate::from_ymd_opt(year, part("month")?, part("day")?)
}

/// A decimal number as text: an optional sign, digits with an optional fraction and an
/// optional exponent (no `NaN`, no infinity, no hexadecimal).
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && digits(whole)
        && digits(fraction)
        && exponent.is_none_or(|e| !e.is_empty() && e.len() <= 4 && digits(e))
}

/// The `rel="next"` target of an RFC 8288 Link header (`<url>; rel="next", …`; the URL
/// may itself hold commas).
fn link_next(answer: &Answer) -> Option<String> {
    let header = answer.headers.get(reqwest::header::LINK)?.to_str().ok()?;
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..].find('<').map_or(after.len(), |n| close + n);
        let params = &after[close + 1..params_end];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.strip_prefix("rel=")
                .map(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
                .unwrap_or(false)
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &after[params_end..];
    }
    None
}

/// Replace (or add) query parameter `name` of `url`.
fn with_param(url: &str, name: &str, value: &str) -> Result<String, Failure> {
    let mut parsed = url::Url::parse(url).map_err(|e| local(format!("request URL: {e}")))?;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    Ok(parsed.into())
}

/// A stream's answers read into rows: the columns a CSV or TSV answer must have and each
/// field's pointer into a record, made once per request.
pub(super) struct Decoder<'d> {
    def: &'d Stream,
    columns: Vec<&'d str>,
    fields: Vec<FieldRead>,
    tz: gapless_core::Tz,
}

/// How one field is read from a record.
struct FieldRead {
    pointer: FieldPointer,
    kind: FieldType,
    /// From the record around the row's item (a stream with `rows_in`).
    parent: bool,
    shift_days: i64,
}

/// One answer read as the stream's format says: its records, and the document they came
/// from.
pub(super) struct ParsedPage {
    payload: super::payload::Page,
}

impl ParsedPage {
    /// The answer as JSON, for pagination pointers (`null` when it was not a JSON document).
    pub fn document(&self) -> &serde_json::Value {
        self.payload.document().unwrap_or(&serde_json::Value::Null)
    }
}

/// One page's rows, and a fingerprint of its records (None when it had none).
pub(super) struct PageRows {
    pub rows: Vec<Row>,
    pub fingerprint: Option<u64>,
}

impl<'d> Decoder<'d> {
    pub(super) fn new(def: &'d Stream, tz: gapless_core::Tz) -> Self {
        let columns = def
            .fields
            .iter()
            .map(|f| {
                f.pointer.as_ref().map_or(f.name.get_ref().as_str(), |p| {
                    p.get_ref().trim_start_matches('/')
                })
            })
            .collect();
        let fields = def
            .fields
            .iter()
            .map(|f| FieldRead {
                pointer: FieldPointer::new(
                    f.pointer
                        .as_ref()
                        .map_or_else(|| format!("/{}", f.name.get_ref()), |p| p.get_ref().clone()),
                ),
                kind: f.kind,
                parent: f.parent,
                shift_days: f.shift_days.as_ref().map_or(0, |d| *d.get_ref()),
            })
            .collect();
        Self {
            def,
            columns,
            fields,
            tz,
        }
    }

    /// The rows of one answer, refused whole when any part of it cannot be read.
    pub(super) fn page(&self, answer: &Answer) -> Result<PageRows, Failure> {
        self.rows(&self.parse(answer)?)
    }

    /// One answer read as the stream's format says (its rows not converted yet).
    pub(super) fn parse(&self, answer: &Answer) -> Result<ParsedPage, Failure> {
        let payload = super::payload::records(
            &answer.body,
            self.def.format,
            self.def.records.as_ref().map(|r| r.get_ref().as_str()),
            &self.columns,
        )
        .map_err(|e| match e {
            super::payload::PayloadError::NotJson(_) => malformed(answer, "a JSON report page"),
            super::payload::PayloadError::Unusable(e) => unusable(format!(
                "{e} (HTTP {}, {})",
                answer.status,
                if answer.content_type.is_empty() {
                    "no content type"
                } else {
                    answer.content_type.as_str()
                }
            )),
        })?;
        Ok(ParsedPage { payload })
    }

    /// A parsed page's rows, refused whole when any of them cannot be read.
    pub(super) fn rows(&self, page: &ParsedPage) -> Result<PageRows, Failure> {
        let records = page.payload.records();
        let fingerprint = (!records.is_empty()).then(|| fingerprint(records));
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            match &self.def.rows_in {
                None => rows.push(self.row(record, record)?),
                Some(pointer) => {
                    let pointer = pointer.get_ref();
                    let items = match record.pointer(pointer) {
                        None | Some(serde_json::Value::Null) => &[][..],
                        Some(serde_json::Value::Array(items)) => items.as_slice(),
                        Some(other) => {
                            return Err(unusable(format!(
                                "a record holds {} at {pointer}, not a list of rows",
                                json_kind(other)
                            )));
                        }
                    };
                    for item in items {
                        rows.push(self.row(item, record)?);
                    }
                }
            }
        }
        Ok(PageRows { rows, fingerprint })
    }
}

impl Decoder<'_> {
    /// One row: each field read from `item`, or from `parent` (the record around it).
    fn row(&self, item: &serde_json::Value, parent: &serde_json::Value) -> Result<Row, Failure> {
        self.fields
            .iter()
            .map(|f| {
                let from = if f.parent { parent } else { item };
                field_value(from, &f.pointer, f.kind, self.tz)
                    .and_then(|value| shifted(value, f.shift_days, &f.pointer.text))
                    .map_err(unusable)
            })
            .collect()
    }
}

/// A date moved by `days` (0: as it is); other values as they are.
fn shifted(value: Value, days: i64, pointer: &str) -> Result<Value, String> {
    match value {
        Value::Date(day) if days != 0 => day
            .checked_add_signed(chrono::Duration::try_days(days).unwrap_or(chrono::Duration::MAX))
            .map(Value::Date)
            .ok_or_else(|| format!("{pointer}: {day} moved by {days} days is not a date")),
        other => Ok(other),
    }
}

/// What a stream request's pages are rendered from.
struct PageFrame<'a> {
    def: &'a Stream,
    templates: &'a RequestTemplates,
    /// The report's days, in the pipeline's time zone.
    window: (DateTime<gapless_core::Tz>, DateTime<gapless_core::Tz>),
    resource: &'a str,
    /// The asynchronous report job whose result pages these are.
    job: Option<&'a str>,
}

/// How a stream's pages are asked for: the credential, the method, how answers are read.
#[derive(Clone, Copy)]
struct Asking<'a> {
    credential: &'a Credential,
    method: &'a str,
    reading: Reading,
}

/// What one stream request has read over its pages so far, and the checks that end it:
/// too many pages, a page asked for twice, the same records twice, too many bytes.
#[derive(Default)]
struct PagesRead {
    rows: Vec<Row>,
    pages: u32,
    /// Requests sent: URL and body.
    urls: HashSet<(String, Option<String>)>,
    /// The records of each page, fingerprinted.
    prints: HashSet<u64>,
    bytes: u64,
    slow_down: Option<crate::SlowDown>,
}

impl PagesRead {
    fn count_page(&mut self, max_pages: u32) -> Result<(), Failure> {
        self.pages += 1;
        if self.pages > max_pages {
            return Err(malformed_message(format!(
                "more than {max_pages} pages for one request"
            )));
        }
        Ok(())
    }

    /// A request not sent before (the same URL and body again is a page loop).
    fn first_visit(&mut self, url: &str, rendered: &RenderedRequest) -> Result<(), Failure> {
        if self.urls.insert((url.to_string(), rendered.body.clone())) {
            Ok(())
        } else {
            Err(malformed_message(
                "the provider pointed to a page it had already given (a page loop)".into(),
            ))
        }
    }

    fn count_bytes(&mut self, answer: &Answer) -> Result<(), Failure> {
        self.bytes += answer.body.len() as u64;
        if self.bytes > MAX_TOTAL_BYTES {
            return Err(Failure::new(FailureCause::Transient)
                .with_code("response_too_large")
                .with_message(format!(
                    "one request's pages hold more than {MAX_TOTAL_BYTES} bytes"
                )));
        }
        Ok(())
    }

    /// Keep the longest wait the usage headers asked for.
    fn slow_down_for(&mut self, said: Option<crate::SlowDown>) {
        if let Some(said) = said
            && self.slow_down.as_ref().is_none_or(|s| s.wait < said.wait)
        {
            self.slow_down = Some(said);
        }
    }

    /// A page's rows, unless its records are a page already read (a provider that ignores
    /// the page parameter answers the same page again): how many there were.
    fn take_rows(&mut self, rows: Vec<Row>, fingerprint: Option<u64>) -> Result<usize, Failure> {
        if let Some(print) = fingerprint
            && !self.prints.insert(print)
        {
            return Err(malformed_message(
                "the provider answered the same page twice (a page loop)".into(),
            ));
        }
        let records = rows.len();
        self.rows.extend(rows);
        Ok(records)
    }
}

impl DeclarativeSource {
    /// Every page of a stream's request for `range` (with `job`, the result pages of an
    /// asynchronous report job), converted to rows.
    pub(super) async fn read_pages(
        &self,
        credential: &Credential,
        def: &Stream,
        resource: &str,
        range: ReportRange,
        job: Option<&str>,
    ) -> Result<Extracted, Failure> {
        let frame = self.page_frame(def, resource, range, job)?;
        let asking = Asking {
            credential,
            method: &frame.templates.method,
            reading: Reading {
                max_bytes: def.max_response_bytes,
                timeout: Some(self.report_timeout),
                compression: def.compression,
            },
        };
        let pagination = &def.pagination;
        let mut at = PagePosition::first(pagination);
        let mut read = PagesRead::default();
        let decoder = Decoder::new(def, range.time_zone);
        // A page whose answer alone says where the next one is: the next request is sent
        // before this page's rows are converted, and its answer read meanwhile.
        let ahead_of_rows = pagination.kind.next_from_answer();
        let mut sent_ahead: Option<(String, Result<Answer, Failure>)> = None;
        loop {
            let (url, answer) = match sent_ahead.take() {
                Some(sent) => sent,
                None => {
                    let (url, rendered) = self.next_request(&frame, &at, &mut read)?;
                    let answer = self.ask(asking, &url, rendered).await;
                    (url, answer)
                }
            };
            let answer = answer?;
            self.take_answer(&mut read, &answer)?;
            let page = decoder.parse(&answer)?;
            // Checked after this page's rows: an error in them comes first.
            let next = self.next_page_url(pagination, page.document(), &answer, &url);
            if !ahead_of_rows {
                let converted = decoder.rows(&page)?;
                let records = read.take_rows(converted.rows, converted.fingerprint)?;
                if !at.advance(pagination, page.document(), records, next?) {
                    break;
                }
                continue;
            }
            // These kinds do not count the page's records to find the next one.
            let request = next
                .map(|next| at.advance(pagination, page.document(), 0, next))
                .and_then(|more| {
                    more.then(|| self.next_request(&frame, &at, &mut read))
                        .transpose()
                });
            match self
                .rows_while_asking(&mut read, &decoder, &page, request, asking)
                .await?
            {
                Some(sent) => sent_ahead = Some(sent),
                None => break,
            }
        }
        Ok(Extracted {
            rows: read.rows,
            requests: read.pages,
            slow_down: read.slow_down,
        })
    }

    /// What every page of a stream's request for `range` shares: its templates, its days
    /// in the pipeline's time zone, the resource, the job.
    fn page_frame<'a>(
        &'a self,
        def: &'a Stream,
        resource: &'a str,
        range: ReportRange,
        job: Option<&'a str>,
    ) -> Result<PageFrame<'a>, Failure> {
        let stream = def.name.get_ref().as_str();
        let Some(templates) = self.stream_requests.get(stream) else {
            return Err(local(format!("stream {stream:?} has no request")));
        };
        let tz = range.time_zone;
        Ok(PageFrame {
            def,
            templates,
            window: (
                range.span.start.with_timezone(&tz),
                range.span.end.with_timezone(&tz),
            ),
            resource,
            job,
        })
    }

    /// The request of the page at `at`, counted and checked for a loop.
    fn next_request(
        &self,
        frame: &PageFrame<'_>,
        at: &PagePosition,
        read: &mut PagesRead,
    ) -> Result<(String, RenderedRequest), Failure> {
        let pagination = &frame.def.pagination;
        let page_size = pagination.page_size.map(u64::from);
        read.count_page(frame.def.max_pages)?;
        // Each page is rendered afresh, so {page}, {offset} and {cursor} move on.
        let vars = Vars {
            window: Some(frame.window),
            resource: frame.resource,
            cursor: at.cursor.as_deref(),
            page: Some(at.page),
            offset: Some(at.offset),
            limit: page_size,
            job: frame.job,
            result: None,
            settings: self.settings.values(),
        };
        let (url, rendered) =
            self.page_request(at, frame.templates, &vars, pagination, page_size)?;
        read.first_visit(&url, &rendered)?;
        Ok((url, rendered))
    }

    /// One page's request sent, its answer read.
    async fn ask(
        &self,
        asking: Asking<'_>,
        url: &str,
        rendered: RenderedRequest,
    ) -> Result<Answer, Failure> {
        let Asking {
            credential,
            method,
            reading,
        } = asking;
        self.send(Some(credential), method, url, rendered, reading)
            .await
    }

    /// A page's answer taken: refused when the provider says it failed or the request's
    /// pages grew too large; what its usage headers say is kept.
    fn take_answer(&self, read: &mut PagesRead, answer: &Answer) -> Result<(), Failure> {
        if let Some(failure) = self.classify(answer) {
            return Err(failure);
        }
        read.count_bytes(answer)?;
        read.slow_down_for(self.usage_says(answer));
        Ok(())
    }

    /// Take `page`'s rows while the next page's `request` is on its way: the next page's
    /// URL and answer, or None when `page` was the last. An error in `page`'s rows comes
    /// before one in asking for the next (and drops that request).
    async fn rows_while_asking(
        &self,
        read: &mut PagesRead,
        decoder: &Decoder<'_>,
        page: &ParsedPage,
        request: Result<Option<(String, RenderedRequest)>, Failure>,
        asking: Asking<'_>,
    ) -> Result<Option<(String, Result<Answer, Failure>)>, Failure> {
        let (next_url, rendered) = match request {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => {
                let converted = decoder.rows(page)?;
                read.take_rows(converted.rows, converted.fingerprint)?;
                return request.map(|_| None);
            }
        };
        let answer = {
            let sending = self.ask(asking, &next_url, rendered);
            let mut sending = std::pin::pin!(sending);
            // Polled once, the request is handed to its connection before this page's
            // rows are converted.
            let early = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(sending.as_mut(), cx))
            })
            .await;
            let converted = decoder.rows(page)?;
            read.take_rows(converted.rows, converted.fingerprint)?;
            match early {
                std::task::Poll::Ready(answer) => answer,
                std::task::Poll::Pending => sending.await,
            }
        };
        Ok(Some((next_url, answer)))
    }

    /// The request of the page at `at`: its URL (the one the provider gave, else the
    /// rendered one with the page's parameters) and the rendered request.
    fn page_request(
        &self,
        at: &PagePosition,
        templates: &RequestTemplates,
        vars: &Vars<'_>,
        pagination: &Pagination,
        page_size: Option<u64>,
    ) -> Result<(String, RenderedRequest), Failure> {
        let rendered = templates.render(vars).map_err(rendering)?;
        let url = match &at.next_url {
            Some(next) => next.clone(),
            None => at.with_page_params(
                self.absolute(&rendered.url),
                pagination,
                templates,
                page_size,
            )?,
        };
        Ok((url, rendered))
    }

    /// The next page's URL where the answer gives it (`next_url`, `link_header`), kept on
    /// the provider's origin; None for the other kinds of pagination.
    fn next_page_url(
        &self,
        pagination: &Pagination,
        document: &serde_json::Value,
        answer: &Answer,
        url: &str,
    ) -> Result<Option<String>, Failure> {
        match pagination.kind {
            PaginationKind::NextUrl => pagination
                .pointer
                .as_ref()
                .and_then(|p| document.pointer(p.get_ref()))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(|target| self.same_origin(url, target))
                .transpose(),
            PaginationKind::LinkHeader => link_next(answer)
                .map(|target| self.same_origin(url, &target))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// What the answer's usage headers (`[[limits.usage]]`) say, when a quota is used at
    /// or beyond `slow_down_at`: how long to leave the account alone. A header that is
    /// absent, or not the JSON it should be, says nothing.
    fn usage_says(&self, answer: &Answer) -> Option<crate::SlowDown> {
        let limits = &self.definition.limits;
        let threshold = f64::from(limits.slow_down_at.as_ref().map_or(90, |t| *t.get_ref()));
        limits
            .usage
            .iter()
            .filter_map(|usage| {
                let text = answer
                    .headers
                    .get(usage.header.get_ref().as_str())?
                    .to_str()
                    .ok()?;
                let json: serde_json::Value = serde_json::from_str(text).ok()?;
                let number = |pointer: &str| {
                    let mut found = Vec::new();
                    pointed_all(&json, pointer, &mut found);
                    found
                        .into_iter()
                        .filter_map(|v| {
                            v.as_f64()
                                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        })
                        .filter(|n: &f64| n.is_finite())
                        .reduce(f64::max)
                };
                let used = number(usage.pointer.get_ref())?;
                if used < threshold {
                    return None;
                }
                let unit = match usage.reset_in {
                    super::definition::ResetUnit::Seconds => 1.0,
                    super::definition::ResetUnit::Minutes => 60.0,
                };
                // Bounded: a day at most, whatever the header says.
                let reset = usage
                    .reset_pointer
                    .as_ref()
                    .and_then(|p| number(p.get_ref()))
                    .map(|r| r * unit)
                    .filter(|s| *s >= 1.0)
                    .map_or(300.0, |s| s.min(86_400.0));
                Some(crate::SlowDown {
                    wait: std::time::Duration::from_secs_f64(reset),
                    said: format!("{}: {used}% used", usage.header.get_ref()),
                })
            })
            .max_by_key(|s| s.wait)
    }
}

/// Whether `rule` describes `answer`: its status, every body value it names (`parsed`
/// is the body's JSON, read only when a pointer may be there: `top` gives the body's
/// top-level keys, read only once a rule with that status names a body value), its header.
fn rule_matches<'a, 'k>(
    rule: &ErrorRule,
    answer: &Answer,
    parsed: &dyn Fn() -> Option<&'a serde_json::Value>,
    top: &dyn Fn() -> Option<&'k std::collections::HashSet<String>>,
) -> bool {
    if rule.status.is_some_and(|s| s != answer.status) {
        return false;
    }
    if !rule
        .body
        .keys()
        .all(|pointer| super::classifier::may_hold(top(), pointer))
    {
        return false;
    }
    let body_matches = rule.body.iter().all(|(pointer, expected)| {
        parsed()
            .and_then(|j| j.pointer(pointer))
            .is_some_and(|found| same(found, expected))
    });
    let header_matches = match &rule.header {
        None => true,
        Some(name) => match answer
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            None => false,
            Some(value) => rule.header_equals.as_deref().is_none_or(|e| e == value),
        },
    };
    // A rule without a status describes an error answer; on a 2xx it needs a body or
    // header condition (the check makes sure a rule has some condition).
    let describes_an_error = rule.status.is_some()
        || answer.status >= 400
        || !rule.body.is_empty()
        || rule.header.is_some();
    body_matches && header_matches && describes_an_error
}

/// The failure a matching `rule` says `answer` is: its cause (with the wait the body or
/// Retry-After gives a rate limit), its code and message from the body where it points.
fn rule_failure<'a>(
    rule: &ErrorRule,
    answer: &Answer,
    parsed: &dyn Fn() -> Option<&'a serde_json::Value>,
) -> Failure {
    let mut cause =
        FailureCause::from_code(rule.cause.get_ref()).unwrap_or(FailureCause::Transient);
    if let FailureCause::RateLimited { retry_after_secs } = &mut cause {
        // The body's own hint (Google's `retryDelay: "30s"`), else Retry-After.
        *retry_after_secs = rule
            .retry_after_pointer
            .as_ref()
            .and_then(|p| parsed()?.pointer(p.get_ref()))
            .and_then(|v| {
                let text = scalar_text(v);
                crate::http::retry_after_secs(text.trim().trim_end_matches('s'), None)
            })
            .or(answer.retry_after);
    }
    let text = |p: &Option<toml::Spanned<String>>| {
        p.as_ref()
            .and_then(|p| parsed()?.pointer(p.get_ref()).map(scalar_text))
    };
    let joined = rule
        .code_pointers
        .iter()
        .filter_map(|p| {
            parsed()?
                .pointer(p)
                .filter(|v| !v.is_null())
                .map(scalar_text)
        })
        .collect::<Vec<_>>()
        .join("/");
    let code = text(&rule.code_pointer)
        .or_else(|| (!joined.is_empty()).then_some(joined))
        .unwrap_or_else(|| format!("http_{}", answer.status));
    Failure::new(cause)
        .with_code(code)
        .with_message(text(&rule.message_pointer).unwrap_or_else(|| answer.excerpt()))
}

/// Where a paginated request stands: what its next page is asked with.
struct PagePosition {
    cursor: Option<String>,
    page: u64,
    offset: u64,
    /// The next page's whole URL, when the provider gives it.
    next_url: Option<String>,
}

impl PagePosition {
    /// `url` with the page's parameters added, for the kinds of pagination whose
    /// parameters the request's templates do not place themselves.
    fn with_page_params(
        &self,
        mut url: String,
        pagination: &Pagination,
        templates: &RequestTemplates,
        page_size: Option<u64>,
    ) -> Result<String, Failure> {
        match pagination.kind {
            PaginationKind::Offset if !templates.names("offset") => {
                url = with_param(&url, &pagination.offset_param, &self.offset.to_string())?;
                url = with_param(
                    &url,
                    &pagination.limit_param,
                    &page_size.unwrap_or(100).to_string(),
                )?;
            }
            PaginationKind::Page if !templates.names("page") => {
                url = with_param(
                    &url,
                    pagination.param.as_deref().unwrap_or("page"),
                    &self.page.to_string(),
                )?;
            }
            PaginationKind::Cursor if !templates.names("cursor") => {
                if let Some(c) = &self.cursor {
                    url = with_param(&url, pagination.param.as_deref().unwrap_or("cursor"), c)?;
                }
            }
            _ => {}
        }
        Ok(url)
    }

    /// Move to the page after one that held `records` records and read as `document`
    /// (`next`: the URL it pointed to, for next-URL and Link-header pagination). False when
    /// that page was the last.
    /// The first page of a request.
    fn first(pagination: &Pagination) -> Self {
        Self {
            cursor: None,
            page: pagination.first_page,
            offset: 0,
            next_url: None,
        }
    }

    fn advance(
        &mut self,
        pagination: &Pagination,
        document: &serde_json::Value,
        records: usize,
        next: Option<String>,
    ) -> bool {
        let pointed = || {
            pagination
                .pointer
                .as_ref()
                .and_then(|p| document.pointer(p.get_ref()))
        };
        self.next_url = None;
        match pagination.kind {
            PaginationKind::None => false,
            PaginationKind::NextUrl | PaginationKind::LinkHeader => {
                self.next_url = next;
                self.next_url.is_some()
            }
            PaginationKind::Cursor => {
                // An answer that says there is no next page ends it, whatever its cursor
                // (GraphQL's pageInfo.endCursor stays set on the last page).
                let more = pagination
                    .has_more
                    .as_ref()
                    .and_then(|p| document.pointer(p.get_ref()))
                    .and_then(serde_json::Value::as_bool);
                if more == Some(false) {
                    return false;
                }
                self.cursor = pointed()
                    .filter(|v| !v.is_null())
                    .map(scalar_text)
                    .filter(|s| !s.is_empty());
                self.cursor.is_some()
            }
            // Offset and page numbers stop at an empty page: a provider that caps its page
            // size below ours still has every record read.
            PaginationKind::Offset => {
                self.offset += records as u64;
                records > 0
            }
            PaginationKind::Page => {
                // The last page: an empty one, or the count of pages the answer gives.
                let pages_in_all =
                    pointed().and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                let read = self
                    .page
                    .saturating_sub(pagination.first_page)
                    .saturating_add(1);
                if records == 0 || pages_in_all.is_some_and(|all| read >= all) {
                    return false;
                }
                self.page += 1;
                true
            }
        }
    }
}

#[async_trait]
impl SourceConnector for DeclarativeSource {
    fn descriptor(&self) -> &ProviderDescriptor {
        &self.descriptor
    }

    fn authorization_request(
        &self,
        redirect_uri: &str,
        scopes: &[String],
    ) -> Result<AuthorizationRequest, TokenError> {
        self.oauth()?.authorization_request(redirect_uri, scopes)
    }

    fn for_identity(
        &self,
        settings: &gapless_core::IdentitySettings,
    ) -> Result<Option<std::sync::Arc<dyn SourceConnector>>, RegistryError> {
        if settings.is_empty() {
            return match self.awaiting() {
                Some(why) => Err(settings_error(why)),
                None => Ok(None),
            };
        }
        Ok(Some(std::sync::Arc::new(
            self.for_identity_settings(settings)?,
        )))
    }

    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let classify = |a: &Answer| self.classify_token(a);
        let oauth = self.oauth()?;
        let mut tokens = oauth
            .exchange_code(&self.http, &classify, code, verifier, redirect_uri, now)
            .await?;
        if let Some(exchange) = &self.definition.auth.exchange {
            // The consent's token is traded at once; what the trade gives is what is kept
            // (a refresh token the trade does not renew stays the consent's).
            let traded = oauth
                .exchange_token(
                    &self.http,
                    &classify,
                    exchange.grant_type.get_ref(),
                    exchange.token_param.get_ref(),
                    &tokens.access_token,
                    now,
                )
                .await?;
            tokens = TokenSet {
                refresh_token: traded.refresh_token.or(tokens.refresh_token),
                scopes: if traded.scopes.is_empty() {
                    tokens.scopes
                } else {
                    traded.scopes
                },
                ..traded
            };
        }
        Ok(self.with_declared_lifetimes(tokens, now))
    }

    async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let classify = |a: &Answer| self.classify_token(a);
        let tokens = self
            .oauth()?
            .refresh(&self.http, &classify, refresh_token, now)
            .await?;
        Ok(self.with_declared_lifetimes(tokens, now))
    }

    async fn revoke(&self, credential: &Credential) -> Result<bool, TokenError> {
        if let Some(why) = self.awaiting() {
            return Err(TokenError::Local(why));
        }
        let (
            Some(url),
            Some(oauth),
            Credential::OAuth2 {
                access_token,
                refresh_token,
                ..
            },
        ) = (&self.revoke_url, &self.oauth, credential)
        else {
            return Ok(false);
        };
        // Revoking the refresh token ends the grant; without one, the access token.
        match refresh_token {
            Some(token) => {
                oauth
                    .revoke(&self.http, url, token.expose_secret(), "refresh_token")
                    .await?
            }
            None => {
                oauth
                    .revoke(
                        &self.http,
                        url,
                        access_token.expose_secret(),
                        "access_token",
                    )
                    .await?
            }
        }
        Ok(true)
    }

    async fn client_credentials(&self, now: DateTime<Utc>) -> Result<TokenSet, TokenError> {
        if *self.definition.auth.kind.get_ref() != AuthKind::Oauth2ClientCredentials {
            return Err(TokenError::Local(format!(
                "{} does not use the client-credentials grant",
                self.descriptor.name
            )));
        }
        let classify = |a: &Answer| self.classify_token(a);
        self.oauth()?
            .client_credentials(&self.http, &classify, &self.definition.auth.scopes, now)
            .await
    }

    async fn probe(&self, credential: &Credential) -> Result<ProbeReport, Failure> {
        self.ready()?;
        let probe = &self.definition.probe;
        let vars = self.account_vars();
        let rendered = self.probe_request.render(&vars).map_err(rendering)?;
        let url = self.absolute(&rendered.url);
        let json = self
            .small_json(
                credential,
                &self.probe_request.method,
                &url,
                rendered,
                "a JSON probe answer",
            )
            .await?;
        let text = |p: &Option<toml::Spanned<String>>| {
            p.as_ref()
                .and_then(|p| json.pointer(p.get_ref()))
                .filter(|v| !v.is_null())
                .map(scalar_text)
        };
        // Without a pointer the consent's redirect names the account: the probe says
        // nothing of it (an empty id keeps the identity's).
        let account_id = match &probe.account_id {
            None => String::new(),
            Some(pointer) => json
                .pointer(pointer.get_ref())
                .filter(|v| !v.is_null())
                .map(scalar_text)
                .ok_or_else(|| {
                    malformed_message(format!(
                        "the probe's answer has nothing at {} (the account id)",
                        pointer.get_ref()
                    ))
                })?,
        };
        let scopes = match probe
            .scopes
            .as_ref()
            .and_then(|p| json.pointer(p.get_ref()))
        {
            Some(serde_json::Value::Array(items)) => items.iter().map(scalar_text).collect(),
            Some(serde_json::Value::String(s)) => crate::oauth::split_scopes(s),
            _ => vec![],
        };
        let access_expires_at = probe
            .expires_at
            .as_ref()
            .and_then(|p| json.pointer(p.get_ref()))
            .and_then(|v| match v {
                serde_json::Value::Number(n) => {
                    n.as_i64().and_then(|s| DateTime::from_timestamp(s, 0))
                }
                serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|d| d.with_timezone(&Utc)),
                _ => None,
            });
        let resources = probe_resources(probe, &json)?;
        Ok(ProbeReport {
            upstream_account_name: text(&probe.account_name).unwrap_or_else(|| account_id.clone()),
            upstream_account_id: account_id,
            scopes,
            access_expires_at,
            resources,
        })
    }

    fn callback_params(&self) -> crate::CallbackParams {
        let auth = &self.definition.auth;
        crate::CallbackParams {
            code: auth.callback_code.clone().unwrap_or_else(|| "code".into()),
            account: auth.callback_account.clone(),
        }
    }

    fn verify_callback(&self, params: &[(String, String)]) -> Result<(), String> {
        let Some(name) = &self.definition.auth.callback_hmac else {
            return Ok(());
        };
        let secret = self
            .oauth
            .as_ref()
            .map(|o| o.client_secret.expose_secret().to_string())
            .unwrap_or_default();
        callback_signed(params, name, &secret)
    }

    fn probes_resources(&self) -> bool {
        self.resource_probe.is_some()
    }

    async fn probe_resource(&self, credential: &Credential, resource: &str) -> Result<(), Failure> {
        self.ready()?;
        let Some(templates) = &self.resource_probe else {
            return Ok(());
        };
        let vars = Vars {
            resource,
            ..self.account_vars()
        };
        let rendered = templates.render(&vars).map_err(rendering)?;
        let url = self.absolute(&rendered.url);
        let (credential, _) = self.credential_for(credential, resource).await?;
        self.small_json(
            &credential,
            &templates.method,
            &url,
            rendered,
            "a JSON answer about the resource",
        )
        .await?;
        Ok(())
    }

    async fn list_resources(
        &self,
        credential: &Credential,
    ) -> Result<Option<Vec<crate::Resource>>, Failure> {
        self.ready()?;
        match &self.resources_request {
            Some(templates) => {
                let (top, _) = self.listed_resources(credential, templates).await?;
                let mut all: Vec<crate::Resource> = top
                    .iter()
                    .map(|l| crate::Resource::direct(l.id.clone(), l.name.clone()))
                    .collect();
                if let Some(children) = &self.children_request {
                    let mut seen: HashSet<String> = all.iter().map(|r| r.id.clone()).collect();
                    for parent in &top {
                        for child in self.children_of(credential, children, &parent.id).await? {
                            if seen.insert(child.id.clone()) {
                                all.push(crate::Resource {
                                    id: child.id,
                                    name: child.name,
                                    parent: Some(parent.id.clone()),
                                });
                            }
                        }
                    }
                }
                Ok(Some(all))
            }
            None => Ok(None),
        }
    }

    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure> {
        // Jobs in flight are kept for this call only.
        let jobs = crate::MemoryReportJobs::default();
        self.extract_with_jobs(credential, resource, stream, range, &jobs)
            .await
    }

    async fn extract_with_jobs(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
        jobs: &dyn crate::ReportJobs,
    ) -> Result<Extracted, Failure> {
        self.ready()?;
        let Some(def) = self
            .definition
            .streams
            .iter()
            .find(|s| s.name.get_ref() == stream)
        else {
            return Err(Failure::new(FailureCause::PermissionLost)
                .with_code("unknown_stream")
                .with_message(format!("{} has no stream {stream:?}", self.descriptor.name)));
        };
        // The listing that gave the resource's own token counts against the budget too.
        let (credential, listing) = self.credential_for(credential, resource).await?;
        let mut extracted = match &def.job {
            Some(job) => {
                self.run_job(&credential, def, job, resource, range, jobs)
                    .await?
            }
            None => {
                self.read_pages(&credential, def, resource, range, None)
                    .await?
            }
        };
        extracted.requests = extracted.requests.saturating_add(listing);
        Ok(extracted)
    }
}

/// A request that cannot be rendered: a fault of the definition, which `provider check`
/// reports; never something a retry fixes, so it is not transient.
fn rendering(error: RenderError) -> Failure {
    Failure::new(FailureCause::BadAnswer)
        .with_code("definition_error")
        .with_message(format!(
            "the definition's request cannot be rendered: {error}"
        ))
}

/// A page's records, reduced to 64 bits: two pages with the same records have the same
/// fingerprint (the page-loop check keeps these, not the pages). The values are hashed as
/// they are, not written out as text first.
fn fingerprint(records: &[serde_json::Value]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    records.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(json: serde_json::Value, kind: FieldType, tz: &str) -> Result<Value, String> {
        field_value(
            &serde_json::json!({ "f": json }),
            &FieldPointer::new("/f".into()),
            kind,
            tz.parse().unwrap(),
        )
    }

    #[test]
    fn a_day_reads_as_its_format_string_reads_it() {
        for text in [
            "2026-03-01",
            "2026-3-1",
            "2026-02-30",
            "0001-01-01",
            "+12026-01-01",
            "2026-03-01x",
            "2026 -03-01",
            " 2026-03-01",
            "2026-03",
            "",
            "20260301",
        ] {
            assert_eq!(
                day_of(text).ok(),
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_field_pointer_finds_what_serde_json_pointer_finds() {
        let document = serde_json::json!({
            "a": {"b/c": [10, {"d~e": "deep"}], "": "empty key"},
            "list": [0, 1, 2],
            "n": null,
        });
        for pointer in [
            "",
            "/",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/d~0e",
            "/a/b~1c/2",
            "/list/2",
            "/list/02",
            "/list/+1",
            "/list/-1",
            "/list/x",
            "/n",
            "/n/x",
            "/missing",
            "a",
            "/a/",
            "/a/b~1c/1/d~0e/more",
        ] {
            assert_eq!(
                FieldPointer::new(pointer.into()).find(&document),
                document.pointer(pointer),
                "{pointer:?}"
            );
        }
    }

    #[test]
    fn a_timestamp_counts_on_its_day_in_the_pipeline_zone_not_its_first_ten_characters() {
        let day = |y, m, d| Ok(Value::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap()));
        assert_eq!(
            value("2026-03-01".into(), FieldType::Date, "UTC"),
            day(2026, 3, 1)
        );
        assert_eq!(
            value("2026-03-01T23:30:00-08:00".into(), FieldType::Date, "UTC"),
            day(2026, 3, 2)
        );
        assert_eq!(
            value(
                "2026-03-02T01:00:00Z".into(),
                FieldType::Date,
                "America/New_York"
            ),
            day(2026, 3, 1)
        );
        assert_eq!(
            value("2026-03-01 00:00:00".into(), FieldType::Date, "UTC"),
            day(2026, 3, 1)
        );
        for bad in [
            "2026-03-01T23:30:00",
            "2026-03-01 23:30:00",
            "2026-03-01 junk",
            "01/03/2026",
            "",
        ] {
            let err = value(bad.into(), FieldType::Date, "UTC").unwrap_err();
            assert!(err.contains("neither a day"), "{bad}: {err}");
        }
    }

    /// Shopify's own example of a signed redirect (its OAuth guide, "verify the request"):
    /// the secret `hush` and the parameters below give this hex digest.
    #[test]
    fn a_redirect_signed_as_shopify_signs_it_passes_and_an_altered_one_does_not() {
        let pairs = |hmac: &str, shop: &str| {
            [
                ("code", "0907a61c0c8d55e99db179b68161bc00"),
                ("hmac", hmac),
                ("shop", shop),
                ("state", "0.6784241404160823"),
                ("timestamp", "1337178173"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
        };
        let good = "700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf";
        assert_eq!(
            super::callback_signed(&pairs(good, "some-shop.myshopify.com"), "hmac", "hush"),
            Ok(())
        );
        for (params, why) in [
            (
                pairs(good, "other-shop.myshopify.com"),
                "not the provider's",
            ),
            (
                pairs(&good.replace('7', "8"), "some-shop.myshopify.com"),
                "not the provider's",
            ),
            (pairs("zz", "some-shop.myshopify.com"), "not hex"),
        ] {
            let refused = super::callback_signed(&params, "hmac", "hush").unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        assert!(
            super::callback_signed(&pairs(good, "some-shop.myshopify.com"), "hmac", "other")
                .is_err()
        );
        let unsigned: Vec<_> = pairs(good, "some-shop.myshopify.com")
            .into_iter()
            .filter(|(k, _)| k != "hmac")
            .collect();
        assert!(
            super::callback_signed(&unsigned, "hmac", "hush")
                .unwrap_err()
                .contains("no signature")
        );
    }

    #[test]
    fn a_setting_in_a_url_is_one_label_never_a_host_of_its_own() {
        let settings = |v: &str| [("shop".to_string(), v.to_string())].into();
        assert_eq!(
            with_settings(
                "https://{settings.shop}.myshopify.com/admin",
                &settings("acme-2"),
                "base_url"
            )
            .unwrap(),
            "https://acme-2.myshopify.com/admin"
        );
        for bad in ["evil.com", "a/b", "x@y", "a:1", "a b"] {
            let err = with_settings(
                "https://{settings.shop}.myshopify.com",
                &settings(bad),
                "base_url",
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("letters, digits"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_day_given_as_year_month_and_day_is_a_date_and_an_impossible_one_refused() {
        assert_eq!(
            value(
                serde_json::json!({"year": 2026, "month": 2, "day": 28}),
                FieldType::Date,
                "UTC"
            ),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2026, 2, 28).unwrap()))
        );
        for bad in [
            serde_json::json!({"year": 2026, "month": 2, "day": 30}),
            serde_json::json!({"year": 2026, "month": "2", "day": 1}),
            serde_json::json!({"year": 2026, "month": 13}),
            serde_json::json!({"year": 99999999999_u64, "month": 1, "day": 1}),
            serde_json::json!({"year": -1, "month": 1, "day": 1}),
        ] {
            let err = value(bad.clone(), FieldType::Date, "UTC").unwrap_err();
            assert!(err.contains("\"year\", \"month\", \"day\""), "{bad}: {err}");
        }
    }

    #[test]
    fn decimals_sent_as_strings_are_typed_and_nan_or_infinity_refused() {
        for good in ["12.34", "-0.5", "1e5", "3", "+2.", ".5", " 7.25 "] {
            assert!(
                value(good.into(), FieldType::Decimal, "UTC").is_ok(),
                "{good}"
            );
        }
        assert_eq!(
            value(serde_json::json!(12.5), FieldType::Decimal, "UTC"),
            Ok(Value::Text("12.5".into()))
        );
        for bad in [
            "NaN",
            "inf",
            "-infinity",
            "0x10",
            "",
            ".",
            "1e",
            "1e99999",
            "12,5",
        ] {
            assert!(
                value(bad.into(), FieldType::Decimal, "UTC").is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            value("42".into(), FieldType::Integer, "UTC"),
            Ok(Value::Integer(42))
        );
    }
}
