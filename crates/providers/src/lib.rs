//! Providers: how gapless talks to each upstream system.
//!
//! A provider knows its auth kind and endpoints, how to probe a credential cheaply, how to
//! classify its errors into [`gapless_core::FailureCause`]s, its streams and their lookback.
//! Each provider lives in its own folder with files by role (`classify`, `probe`,
//! `streams`); [`registry`] is the explicit list of them. Adding a provider is one folder
//! and one line in the registry.

pub mod amazon;
pub mod declarative;
pub mod facebook_ads;
pub mod google_ads;
pub mod http;
pub mod microsoft;
pub mod oauth;
pub mod registry;
pub mod sandbox;
pub mod settings;
pub mod shopify;
pub mod tiktok;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use gapless_core::{Failure, RateLimit, ReportRange, Retention, Row, StreamSchema};
use gapless_vault::{Credential, RefreshToken};

pub use oauth::{AuthorizationRequest, TokenError, TokenSet};
pub use settings::{ProviderSettings, RegistryError, SettingValues, UnknownProvider};

/// How a provider authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// OAuth2 authorization code with PKCE and refresh tokens.
    OAuth2Code,
    /// OAuth2 client credentials: the application's own token, renewed without a human.
    OAuth2ClientCredentials,
    ApiKey,
    Password,
}

/// What a provider's credentials last, as data (the reference's §0.2), so expiry
/// forecasting reads it instead of scattered constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetimes {
    /// Typical access-token lifetime (the token response's `expires_in` wins).
    pub access: Option<Duration>,
    /// Refresh-token lifetime.
    pub refresh: Option<Duration>,
    /// The whole authorization ends this long after the grant (the seller must
    /// re-authorize), whatever the tokens say.
    pub authorization: Option<Duration>,
}

impl Lifetimes {
    /// When an authorization granted at `granted_at` ends, if the provider limits it.
    pub fn authorization_expires_at(&self, granted_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.authorization
            .and_then(|d| granted_at.checked_add_signed(d))
    }
}

/// A stream a source offers.
#[derive(Debug, Clone)]
pub struct StreamDescriptor {
    pub schema: StreamSchema,
    /// How far back the provider serves this stream, counted from where, with what margin
    /// (None: unlimited).
    pub retention: Option<Retention>,
    /// How many trailing windows the provider restates.
    pub settle_windows: u32,
    /// The longest range one report request may cover (None: one window per request).
    pub max_range: Option<Duration>,
    /// The date column that tells which day a row belongs to; needed to split a request
    /// covering several day windows into its windows.
    pub day_column: Option<String>,
}

impl StreamDescriptor {
    /// The range one request may cover on a grid of `window_seconds` windows: Some when
    /// several whole-day windows can be asked for at once and split back by day.
    pub fn request_span(&self, window_seconds: i64) -> Option<Duration> {
        let day_column = self.day_column.as_deref()?;
        self.schema
            .columns
            .iter()
            .position(|c| c.name == day_column)?;
        let max = self.max_range?;
        (window_seconds % 86_400 == 0 && max.num_seconds() >= 2 * window_seconds).then_some(max)
    }
}

/// What a provider is.
#[derive(Debug, Clone)]
pub struct ProviderDescriptor {
    pub name: String,
    pub display_name: String,
    pub auth: AuthKind,
    pub default_scopes: Vec<String>,
    pub streams: Vec<StreamDescriptor>,
    /// Refresh tokens are single-use: each refresh returns a new one and a spent one
    /// presented again may revoke the grant. Decides how an unknown outcome is handled.
    pub rotating_refresh_tokens: bool,
    /// What the provider's credentials last.
    pub lifetimes: Lifetimes,
    /// The request budget of one upstream account, shared by syncs, backfills and probes
    /// (None: unlimited; the provider's Retry-After still applies).
    pub rate_limit: Option<RateLimit>,
    /// How often a healthy identity is probed (None: the installation's setting).
    pub probe_interval: Option<Duration>,
}

impl ProviderDescriptor {
    pub fn stream(&self, name: &str) -> Option<&StreamDescriptor> {
        self.streams.iter().find(|s| s.schema.name == name)
    }
}

/// The consent redirect's parameters a provider answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackParams {
    /// The one holding the authorization code (`code` by RFC 6749).
    pub code: String,
    /// One naming the upstream account, where the consent names it and the probe cannot
    /// (Amazon Seller Central's `selling_partner_id`).
    pub account: Option<String>,
}

impl Default for CallbackParams {
    fn default() -> Self {
        Self {
            code: "code".into(),
            account: None,
        }
    }
}

/// What a probe learned about a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub upstream_account_id: String,
    pub upstream_account_name: String,
    pub scopes: Vec<String>,
    /// When the access token expires, if the provider says.
    pub access_expires_at: Option<DateTime<Utc>>,
    /// Resources (e.g. ad accounts) the credential can read: (id, name).
    pub resources: Vec<(String, String)>,
}

/// The rows of one extraction and the HTTP requests it took (pages), which count against
/// the upstream account's request budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub rows: Vec<Row>,
    pub requests: u32,
    /// The provider said the account's quota is nearly used up: nothing more is asked of
    /// the account until this has passed.
    pub slow_down: Option<SlowDown>,
}

/// A resource an identity can read (an ad account, a customer, a Page, a shop).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resource {
    pub id: String,
    pub name: String,
    /// The resource it is reached through (a client account's manager), when the listing
    /// found it under another.
    pub parent: Option<String>,
}

impl Resource {
    /// A resource reached directly.
    pub fn direct(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            parent: None,
        }
    }
}

/// A provider's word that an account's quota is nearly used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowDown {
    /// How long to leave the account alone.
    pub wait: std::time::Duration,
    /// What the provider said, for people (`x-ad-account-usage: 93% used`).
    pub said: String,
}

impl Extracted {
    /// Rows that took `requests` HTTP requests, with no word about the account's quota.
    pub fn new(rows: Vec<Row>, requests: u32) -> Self {
        Self {
            rows,
            requests,
            slow_down: None,
        }
    }
}

/// A source provider's operations. Every failure comes back classified.
#[async_trait]
pub trait SourceConnector: Send + Sync + std::fmt::Debug {
    fn descriptor(&self) -> &ProviderDescriptor;

    /// The consent URL to send a person to, with fresh `state` and PKCE verifier.
    fn authorization_request(
        &self,
        redirect_uri: &str,
        scopes: &[String],
    ) -> Result<AuthorizationRequest, TokenError>;

    /// Exchange an authorization code for tokens.
    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError>;

    /// Spend `refresh_token` for new tokens. Never call twice with the same token.
    async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError>;

    /// Revoke the credential at the provider (RFC 7009) so that the grant ends there too:
    /// true when it was revoked, false when the provider offers no revocation.
    async fn revoke(&self, credential: &Credential) -> Result<bool, TokenError> {
        let _ = credential;
        Ok(false)
    }

    /// A token from the client-credentials grant (for providers whose auth is
    /// [`AuthKind::OAuth2ClientCredentials`]).
    async fn client_credentials(&self, now: DateTime<Utc>) -> Result<TokenSet, TokenError> {
        let _ = now;
        Err(TokenError::Local(format!(
            "{} does not use the client-credentials grant",
            self.descriptor().name
        )))
    }

    /// Who am I: cheap, side-effect free.
    async fn probe(&self, credential: &Credential) -> Result<ProbeReport, Failure>;

    /// This provider for an identity with its own region or setting values (a shop of
    /// its own): `None` when the identity has none and this connector serves it as it is.
    /// Refused when the provider takes no such thing, names no such region or setting, or
    /// needs a value per identity that `settings` does not give.
    fn for_identity(
        &self,
        settings: &gapless_core::IdentitySettings,
    ) -> Result<Option<std::sync::Arc<dyn SourceConnector>>, RegistryError> {
        if settings.is_empty() {
            Ok(None)
        } else {
            Err(RegistryError::Settings(format!(
                "{} takes no region or setting per identity (given: {})",
                self.descriptor().name,
                settings.describe()
            )))
        }
    }

    /// The consent redirect's parameters: the code's, and the account's if it names one.
    fn callback_params(&self) -> CallbackParams {
        CallbackParams::default()
    }

    /// Whether the consent redirect's parameters (decoded, in their order) carry the
    /// provider's own signature where it signs them: `Err` with the reason when not.
    fn verify_callback(&self, _params: &[(String, String)]) -> Result<(), String> {
        Ok(())
    }

    /// The resources the credential can read, when a request of their own lists them (None
    /// when the probe's report carries them, or the provider does not list them). Asked
    /// only when needed: for an identity that pipelines read from, or by a person.
    async fn list_resources(
        &self,
        _credential: &Credential,
    ) -> Result<Option<Vec<Resource>>, Failure> {
        Ok(None)
    }

    /// Whether the provider has a cheap request about one resource ([`Self::probe_resource`]).
    fn probes_resources(&self) -> bool {
        false
    }

    /// Whether `resource` is still reachable with the credential, by a cheap request of
    /// its own (only asked of a provider that [`Self::probes_resources`]): the classified
    /// failure when it refused.
    async fn probe_resource(
        &self,
        _credential: &Credential,
        _resource: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }

    /// All rows of `stream` for `resource` in `range`, keeping an asynchronous report
    /// job's id in `jobs` while the provider prepares it: a later call for the same range
    /// polls the same job (after a restart too, when `jobs` is durable) instead of asking
    /// for another.
    async fn extract_with_jobs(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
        jobs: &dyn ReportJobs,
    ) -> Result<Extracted, Failure> {
        let _ = jobs;
        self.extract(credential, resource, stream, range).await
    }

    /// All rows of `stream` for `resource` in `range`.
    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure>;
}

/// A report job the provider is preparing: its id and when it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportJob {
    pub id: String,
    pub created_at: DateTime<Utc>,
}

/// Where a connector keeps its asynchronous report jobs in flight (by resource, stream and
/// range), the clock their waits are measured on, and how it waits between polls.
#[async_trait]
pub trait ReportJobs: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    async fn find(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
    ) -> Result<Option<ReportJob>, String>;
    async fn save(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
        job: &ReportJob,
    ) -> Result<(), String>;
    async fn forget(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
    ) -> Result<(), String>;
    /// Wait `for_` before the next poll.
    async fn pause(&self, for_: std::time::Duration);
    /// How long this caller lets one call poll at most (a probe: not at all).
    fn patience(&self) -> std::time::Duration {
        std::time::Duration::MAX
    }
}

type JobKey = (String, String, gapless_core::Window);

/// Jobs kept in memory, on the system clock: they do not outlive the process.
#[derive(Debug, Default)]
pub struct MemoryReportJobs {
    jobs: std::sync::Mutex<std::collections::HashMap<JobKey, ReportJob>>,
}

impl MemoryReportJobs {
    fn key(resource: &str, stream: &str, range: gapless_core::Window) -> JobKey {
        (resource.to_string(), stream.to_string(), range)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<JobKey, ReportJob>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ReportJobs for MemoryReportJobs {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn find(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
    ) -> Result<Option<ReportJob>, String> {
        Ok(self
            .jobs()
            .get(&Self::key(resource, stream, range))
            .cloned())
    }

    async fn save(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
        job: &ReportJob,
    ) -> Result<(), String> {
        self.jobs()
            .insert(Self::key(resource, stream, range), job.clone());
        Ok(())
    }

    async fn forget(
        &self,
        resource: &str,
        stream: &str,
        range: gapless_core::Window,
    ) -> Result<(), String> {
        self.jobs().remove(&Self::key(resource, stream, range));
        Ok(())
    }

    async fn pause(&self, for_: std::time::Duration) {
        tokio::time::sleep(for_).await;
    }
}
