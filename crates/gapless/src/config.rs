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
    /// Notification channels, recipients and schedule.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// How this instance shares work with the others on one state store.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
}

/// `[scheduler]`: how an instance claims and runs work.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long a claim on a pipeline or a message lasts unless its holder renews it
    /// (default "5m"): the longest the work of an instance that died waits for another.
    /// Keep it above the longest single request (a report request's timeout): a run
    /// renews its claim between steps, and a claim that ran out cannot commit.
    pub claim_ttl: Option<String>,
    /// Pipeline runs, refreshes and probes in flight at once in this instance, each kind
    /// on its own (default 128 on PostgreSQL, 16 on SQLite; at most 1024).
    pub concurrency: Option<u32>,
}

/// The shortest claim a setting may give: below it, a run would spend its time renewing.
const MIN_CLAIM_TTL_SECS: i64 = 5;
/// The most runs of one kind in flight in one instance.
const MAX_CONCURRENCY: u32 = 1_024;

impl SchedulerConfig {
    /// Apply the claim time and concurrency to the engine's settings.
    pub fn apply(&self, settings: &mut gapless_engine::EngineConfig) -> Result<()> {
        if let Some(ttl) = &self.claim_ttl {
            let ttl = duration("scheduler.claim_ttl", ttl)?;
            if ttl < chrono::Duration::seconds(MIN_CLAIM_TTL_SECS) {
                bail!("scheduler.claim_ttl: at least {MIN_CLAIM_TTL_SECS}s");
            }
            settings.claim_ttl = ttl;
        }
        if let Some(n) = self.concurrency {
            if n == 0 || n > MAX_CONCURRENCY {
                bail!("scheduler.concurrency: {n} is not between 1 and {MAX_CONCURRENCY}");
            }
            settings.concurrency = Some(n as usize);
        }
        Ok(())
    }
}

/// `[notify]`: where messages go, to whom, and how often they remind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Reminders after an incident opened, e.g. ["1d", "3d"].
    pub reminders: Option<Vec<String>>,
    /// Then every this long (e.g. "7d"); "off" for no more.
    pub repeat: Option<String>,
    /// From this reminder number on, the escalation recipients are added.
    pub escalate_from: Option<u32>,
    /// A pending notification older than this is an alarm (e.g. "30m").
    pub backlog_alarm: Option<String>,
    /// A failure this soon after an incident closed continues it ("failing again", same
    /// thread) instead of opening a new one (default "24h").
    pub reopen_within: Option<String>,
    pub smtp: Option<SmtpConfig>,
    pub slack: Option<SlackConfig>,
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub recipients: RecipientsConfig,
    /// Named groups: `group:NAME` in a recipient list.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsConfig {
    #[serde(default)]
    pub defaults: Vec<String>,
    #[serde(default)]
    pub escalation: Vec<String>,
    /// Replaces `defaults` for the identity with this label.
    #[serde(default)]
    pub identities: BTreeMap<String, Vec<String>>,
    /// Owners of a pipeline (by name), told about its identities' incidents.
    #[serde(default)]
    pub pipelines: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `plain`.
    pub security: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming-webhook URL is a credential: from the environment or a file.
    pub webhook_url_env: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// `whsec_…` signing secret.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
}

/// A secret from an environment variable or a file (exactly one).
fn secret(what: &str, env: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (env, file) {
        (Some(var), None) => std::env::var(var)
            .with_context(|| format!("{what}: the environment variable {var} is not set")),
        (None, Some(path)) => Ok(std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?
            .trim()
            .to_string()),
        _ => bail!("{what}: give exactly one of the _env and _file settings"),
    }
}

/// "1d", "36h", "30m", "2w": longer than zero and at most
/// [`MAX_DURATION_DAYS`](gapless_core::MAX_DURATION_DAYS) (every duration ends up in date
/// arithmetic, which must stay well inside the calendar).
pub fn duration(what: &str, text: &str) -> Result<chrono::Duration> {
    let std = humantime::parse_duration(text)
        .with_context(|| format!("{what}: {text:?} is not a duration (like 30m, 12h, 1d, 2w)"))?;
    let parsed = chrono::Duration::from_std(std)
        .ok()
        .filter(|d| *d <= chrono::Duration::days(gapless_core::MAX_DURATION_DAYS))
        .with_context(|| {
            format!(
                "{what}: {text:?} is longer than {} days, the longest allowed",
                gapless_core::MAX_DURATION_DAYS
            )
        })?;
    if parsed <= chrono::Duration::zero() {
        bail!("{what}: {text:?} must be longer than zero");
    }
    Ok(parsed)
}

impl NotifyConfig {
    /// Apply the schedule and recipients to the engine's settings.
    pub fn apply(&self, settings: &mut gapless_engine::EngineConfig) -> Result<()> {
        if let Some(list) = &self.reminders {
            settings.reminders.after = list
                .iter()
                .map(|d| duration("notify.reminders", d))
                .collect::<Result<_>>()?;
        }
        if let Some(repeat) = &self.repeat {
            settings.reminders.repeat = if repeat == "off" {
                None
            } else {
                Some(duration("notify.repeat", repeat)?)
            };
        }
        if let Some(n) = self.escalate_from {
            settings.reminders.escalate_from = n;
        }
        if let Some(alarm) = &self.backlog_alarm {
            settings.backlog_alarm = duration("notify.backlog_alarm", alarm)?;
        }
        if let Some(within) = &self.reopen_within {
            settings.reopen_within = duration("notify.reopen_within", within)?;
        }
        let r = &mut settings.recipients;
        r.defaults = self.recipients.defaults.clone();
        r.escalation = self.recipients.escalation.clone();
        r.per_identity = self.recipients.identities.clone().into_iter().collect();
        r.per_pipeline = self.recipients.pipelines.clone().into_iter().collect();
        r.groups = self.groups.clone().into_iter().collect();
        for list in r.per_identity.values().chain([&r.defaults, &r.escalation]) {
            for entry in list {
                if let Some(group) = entry.strip_prefix("group:")
                    && !self.groups.contains_key(group)
                {
                    bail!(
                        "notify: recipient {entry:?} names a group that is not defined in [notify.groups]"
                    );
                }
            }
        }
        Ok(())
    }

    /// The channels to deliver through, by the name notification rows carry.
    pub fn channels(&self, from: &str) -> Result<Vec<(String, gapless_notify::Channel)>> {
        use gapless_notify::{
            Channel, SlackChannel, SmtpChannel, SmtpSecurity, SmtpSettings, WebhookChannel,
        };
        let timeout = std::time::Duration::from_secs(20);
        let mut out = Vec::new();
        if let Some(smtp) = &self.smtp {
            let security = match smtp.security.as_deref().unwrap_or("starttls") {
                "starttls" => SmtpSecurity::StartTls,
                "tls" => SmtpSecurity::Tls,
                "plain" => SmtpSecurity::Plain,
                other => bail!("notify.smtp.security {other:?}: use starttls, tls or plain"),
            };
            let password = match (&smtp.password_env, &smtp.password_file) {
                (None, None) => None,
                (env, file) => Some(gapless_vault::Password::new(secret(
                    "notify.smtp.password",
                    env,
                    file,
                )?)),
            };
            let port = smtp.port.unwrap_or(match security {
                SmtpSecurity::Tls => 465,
                SmtpSecurity::StartTls => 587,
                SmtpSecurity::Plain => 25,
            });
            out.push((
                "email".to_string(),
                Channel::Smtp(SmtpChannel::new(
                    &SmtpSettings {
                        host: smtp.host.clone(),
                        port,
                        security,
                        username: smtp.username.clone(),
                        password,
                        timeout,
                    },
                    from,
                )?),
            ));
        }
        if let Some(slack) = &self.slack {
            let url = secret(
                "notify.slack.webhook_url",
                &slack.webhook_url_env,
                &slack.webhook_url_file,
            )?;
            out.push((
                "slack".to_string(),
                Channel::Slack(SlackChannel::new(&url, timeout)?),
            ));
        }
        if let Some(webhook) = &self.webhook {
            let key = secret(
                "notify.webhook.secret",
                &webhook.secret_env,
                &webhook.secret_file,
            )?;
            out.push((
                "webhook".to_string(),
                Channel::Webhook(WebhookChannel::new(&webhook.url, &key, timeout)?),
            ));
        }
        Ok(out)
    }
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
    /// Where the provider lives (a defined provider's own base URL when empty).
    #[serde(default)]
    pub base_url: String,
    /// The definition this provider runs (its own name when absent): one definition
    /// configured under two names, each with its own identities (e.g. `amazon_ads_eu`
    /// running `amazon_ads` in region `eu`).
    pub definition: Option<String>,
    /// The region of the definition's `[regions]` this installation reaches.
    pub region: Option<String>,
    /// The OAuth client (not needed by API-key providers).
    #[serde(default)]
    pub client_id: String,
    /// At most one of the three client secret sources (none for API-key providers).
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// The request budget of one upstream account, e.g. "200/1h", replacing the
    /// provider's own; "none" for unlimited.
    pub rate_limit: Option<String>,
    /// Values of the settings a provider definition declares: `NAME = "value"`, or
    /// `NAME_env = "VARIABLE"` / `NAME_file = "/path"` for secrets.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
}

impl ProviderConfig {
    /// The configured request budget: None to keep the provider's, Some(None) for none.
    pub fn rate_limit(&self, name: &str) -> Result<Option<Option<gapless_core::RateLimit>>> {
        match self.rate_limit.as_deref().map(str::trim) {
            None => Ok(None),
            Some("none") => Ok(Some(None)),
            Some(text) => {
                Ok(Some(Some(text.parse().with_context(|| {
                    format!("[providers.{name}] rate_limit")
                })?)))
            }
        }
    }

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
        let mut values = std::collections::BTreeMap::new();
        for (key, value) in &self.settings {
            let (setting, value) = if let Some(setting) = key.strip_suffix("_env") {
                let value = std::env::var(value).with_context(|| {
                    format!("providers.{name}.settings.{key} names {value}, which is not set")
                })?;
                (setting, value)
            } else if let Some(setting) = key.strip_suffix("_file") {
                let value = std::fs::read_to_string(value).with_context(|| {
                    format!("providers.{name}.settings.{key}: cannot read {value}")
                })?;
                (setting, value.trim().to_string())
            } else {
                (key.as_str(), value.clone())
            };
            if values.insert(setting.to_string(), value).is_some() {
                bail!(
                    "providers.{name}.settings: {setting} is given more than once (inline, _env or _file: one of them)"
                );
            }
        }
        Ok(ProviderSettings {
            base_url: self.base_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: ClientSecret::new(secret),
            timeouts: HttpTimeouts::default(),
            settings: gapless_providers::SettingValues::new(values),
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
    let config: FileConfig = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid configuration", path.display()))?;
    config
        .validate()
        .with_context(|| format!("{} is not a valid configuration", path.display()))?;
    Ok(config)
}

/// An http(s) URL, or why not.
fn http_url(key: &str, text: &str) -> Result<()> {
    let url = url::Url::parse(text).with_context(|| {
        format!("{key} {text:?} is not a URL (like https://gapless.example.com)")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{key} {text:?} is not an http(s) URL");
    }
    Ok(())
}

/// An email address, or a `group:NAME` of the configuration.
fn recipient(key: &str, entry: &str, groups: &BTreeMap<String, Vec<String>>) -> Result<()> {
    if let Some(group) = entry.strip_prefix("group:") {
        if !groups.contains_key(group) {
            bail!("{key}: {entry:?} names a group that [notify.groups] does not define");
        }
        return Ok(());
    }
    if !gapless_notify::is_email_address(entry) {
        bail!("{key}: {entry:?} is not an email address");
    }
    Ok(())
}

impl FileConfig {
    /// Everything that can be checked without the network, each problem named by its key:
    /// a bad address loaded now would make every alert fail later, unseen.
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.public_url {
            http_url("public_url", url)?;
        }
        for address in self.fallback_recipients.iter().flatten() {
            recipient("fallback_recipients", address, &BTreeMap::new())?;
        }
        if let Some(from) = &self.notify_from {
            let address = from
                .rsplit_once('<')
                .and_then(|(_, rest)| rest.strip_suffix('>'))
                .unwrap_or(from);
            if !gapless_notify::is_email_address(address.trim()) {
                bail!(
                    "notify_from {from:?} is not an address (like \"gapless <gapless@example.com>\")"
                );
            }
        }
        for (name, provider) in &self.providers {
            if !provider.base_url.trim().is_empty() {
                http_url(&format!("providers.{name}.base_url"), &provider.base_url)?;
            }
        }
        let notify = &self.notify;
        for (group, members) in &notify.groups {
            for address in members {
                recipient(&format!("notify.groups.{group}"), address, &BTreeMap::new())?;
            }
        }
        let r = &notify.recipients;
        let lists = [
            ("notify.recipients.defaults", &r.defaults),
            ("notify.recipients.escalation", &r.escalation),
        ];
        for (key, list) in lists {
            for entry in list {
                recipient(key, entry, &notify.groups)?;
            }
        }
        for (label, list) in r.identities.iter().chain(r.pipelines.iter()) {
            for entry in list {
                recipient(
                    &format!("notify.recipients ({label})"),
                    entry,
                    &notify.groups,
                )?;
            }
        }
        if let Some(webhook) = &notify.webhook {
            http_url("notify.webhook.url", &webhook.url)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls_are_checked_where_the_configuration_is_read() {
        let parse = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        assert!(parse("").is_ok());
        let err =
            parse("[notify.recipients]\ndefaults = [\"ana@example.com\\r\\nBcc: x@evil.example\"]")
                .unwrap_err();
        assert!(
            err.contains("notify.recipients.defaults") && err.contains("not an email address"),
            "{err}"
        );
        let err = parse("public_url = \"gapless.example.com\"").unwrap_err();
        assert!(err.contains("public_url"), "{err}");
        let err =
            parse("[providers.sandbox]\nbase_url = \"ftp://x\"\nclient_id = \"c\"").unwrap_err();
        assert!(
            err.contains("providers.sandbox.base_url") && err.contains("http(s)"),
            "{err}"
        );
        let err = parse("[notify.recipients]\ndefaults = [\"group:ops\"]").unwrap_err();
        assert!(err.contains("group"), "{err}");
        assert!(parse("fallback_recipients = [\"ops@example.com\"]\nnotify_from = \"gapless <gapless@example.com>\"").is_ok());
    }

    #[test]
    fn durations_from_outside_are_bounded_where_they_are_parsed() {
        assert_eq!(duration("x", "1d").unwrap(), chrono::Duration::days(1));
        let long = duration("probe", "99999999d").unwrap_err().to_string();
        assert!(long.contains("longer than 36500 days"), "{long}");
        let zero = duration("--every", "0s").unwrap_err().to_string();
        assert!(zero.contains("longer than zero"), "{zero}");
        assert!(duration("x", "soon").is_err());
    }

    #[test]
    fn scheduler_settings_are_bounded_where_they_are_read() {
        let apply = |text: &str| {
            let config: FileConfig = toml::from_str(text).unwrap();
            let mut settings = gapless_engine::EngineConfig::new(PathBuf::from("/data"));
            config.scheduler.apply(&mut settings).map(|()| settings)
        };
        let settings = apply("[scheduler]\nclaim_ttl = \"20s\"\nconcurrency = 4").unwrap();
        assert_eq!(settings.claim_ttl, chrono::Duration::seconds(20));
        assert_eq!(settings.concurrency, Some(4));
        let defaults = apply("").unwrap();
        assert_eq!(defaults.claim_ttl, chrono::Duration::minutes(5));
        let err = apply("[scheduler]\nclaim_ttl = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scheduler.claim_ttl") && err.contains("5s"),
            "{err}"
        );
        for n in ["0", "5000"] {
            let err = apply(&format!("[scheduler]\nconcurrency = {n}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("scheduler.concurrency"), "{err}");
        }
        assert!(toml::from_str::<FileConfig>("[scheduler]\nconcurrency = -1").is_err());
    }

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
    fn provider_settings_come_inline_from_a_file_or_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let config: FileConfig = toml::from_str(&format!(
            r#"
            [providers.ads.settings]
            login_customer_id = "123"
            account_key_file = "{}"
            region_env = "PATH"
            "#,
            file.display()
        ))
        .unwrap();
        let settings = config.providers["ads"].settings("ads").unwrap();
        let values = settings.settings.values();
        assert_eq!(values["login_customer_id"], "123");
        assert_eq!(values["account_key"], "from-file");
        assert_eq!(values["region"], std::env::var("PATH").unwrap());
        let twice: FileConfig = toml::from_str(
            r#"
            [providers.ads.settings]
            region = "eu"
            region_env = "PATH"
            "#,
        )
        .unwrap();
        let err = twice.providers["ads"]
            .settings("ads")
            .unwrap_err()
            .to_string();
        assert!(err.contains("region is given more than once"), "{err}");
        let unset: FileConfig = toml::from_str(
            r#"
            [providers.ads.settings]
            region_env = "GAPLESS_TEST_NOT_SET_ANYWHERE"
            "#,
        )
        .unwrap();
        let err = unset.providers["ads"]
            .settings("ads")
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.ads.settings.region_env"), "{err}");
    }

    #[test]
    fn a_provider_rate_limit_is_parsed_or_named() {
        let config: FileConfig = toml::from_str(
            r#"
            [providers.a]
            base_url = "http://127.0.0.1:1"
            rate_limit = "200/1h"
            [providers.b]
            base_url = "http://127.0.0.1:1"
            rate_limit = "none"
            [providers.c]
            base_url = "http://127.0.0.1:1"
            rate_limit = "lots"
            "#,
        )
        .unwrap();
        let a = config.providers["a"].rate_limit("a").unwrap();
        assert_eq!(a.flatten().map(|l| l.requests.get()), Some(200));
        assert_eq!(config.providers["b"].rate_limit("b").unwrap(), Some(None));
        let err = format!("{:#}", config.providers["c"].rate_limit("c").unwrap_err());
        assert!(
            err.contains("[providers.c] rate_limit") && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = toml::from_str::<FileConfig>("public_ulr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("public_ulr"), "{err}");
    }
}
