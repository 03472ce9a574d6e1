//! Checking a definition without the network: every problem with its line, column, key
//! and a hint. A definition with any problem is refused whole, never half-loaded.

use std::{collections::BTreeSet, fmt, ops::Range};

use gapless_core::{FailureCause, RateLimit};

/// The longest duration a definition may give (100 years).
const MAX_DURATION_DAYS: u64 = gapless_core::MAX_DURATION_DAYS.unsigned_abs();
use toml::Spanned;

use super::request::RequestTemplates;
use super::{
    definition::{
        Auth, AuthKind, Definition, FieldType, KeyLocation, PaginationKind, PayloadFormat, Request,
    },
    template::{Escape, Template},
};

/// One thing wrong with a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Where in the definition, e.g. `streams[0].request.url`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Parse and check a definition's text: the definition, or every problem found.
pub fn check(text: &str) -> Result<Definition, Vec<Problem>> {
    let definition: Definition = match toml::from_str(text) {
        Ok(d) => d,
        Err(error) => {
            let (line, column) = error
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            return Err(vec![Problem {
                line,
                column,
                key: String::new(),
                message: error.message().trim().to_string(),
                hint: Some("see docs/providers.md for the format".into()),
            }]);
        }
    };
    let mut checker = Checker {
        text,
        problems: Vec::new(),
        templates: Vec::new(),
        settings: definition.settings.clone(),
    };
    checker.definition(&definition);
    if checker.problems.is_empty() {
        Ok(definition)
    } else {
        checker.problems.sort_by_key(|p| (p.line, p.column));
        Err(checker.problems)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    // An offset computed inside a string with escapes may land mid-character.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    /// The templates of the request checked last, for checks that need the stream.
    templates: Vec<(String, Range<usize>, Template)>,
    /// The settings the definition declares.
    settings: std::collections::BTreeMap<String, super::definition::Setting>,
}

/// Values to render templates with while checking.
fn sample_vars(settings: &std::collections::BTreeMap<String, String>) -> super::template::Vars<'_> {
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0)
        .unwrap_or_default()
        .with_timezone(&gapless_core::Tz::UTC);
    super::template::Vars {
        window: Some((start, start + chrono::Duration::days(1))),
        resource: "resource",
        cursor: Some("cursor"),
        page: Some(1),
        offset: Some(0),
        limit: Some(100),
        job: Some("job"),
        result: Some("result"),
        settings,
    }
}

/// Template variables a probe may not name: it runs outside any window, page or resource.
/// The bounds of `limits.report_timeout`.
pub const REPORT_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_secs(1);
pub const REPORT_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// A report request's timeout when the definition names none.
pub const REPORT_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(120);

/// What a request runs outside of, and so which variables it cannot use.
#[derive(Debug, Clone, Copy)]
enum Outside {
    /// A stream's request: every variable has a value, `{job}` only in a job's stream.
    Nothing { job: bool },
    /// A report job's creation: no page and no job yet.
    Pages,
    /// A report job's poll: no page.
    Page,
    /// The probe of one resource: no window or page.
    Window,
    /// The probe: no window, page or resource.
    Resource,
    /// The resource listing: no window or resource; of the page variables only
    /// `{cursor}`, when the listing has a `cursor` pointer.
    Listing { cursor: bool },
    /// A finished job's result request: no page; `{result}` only here.
    JobResult,
}

const PAGE_VARIABLES: &[&str] = &["cursor", "page", "offset", "limit"];
const WINDOW_VARIABLES: &[&str] = &[
    "window.start",
    "window.end",
    "window.first_day",
    "window.last_day",
];

impl Outside {
    fn forbids(self, variable: &str) -> bool {
        let page = PAGE_VARIABLES.contains(&variable);
        let window = WINDOW_VARIABLES.contains(&variable);
        let job = variable == "job";
        let result = variable == "result";
        match self {
            Self::Nothing { job: allowed } => (job && !allowed) || result,
            Self::Pages => page || job || result,
            Self::Page => page || result,
            Self::Window => page || window || job || result,
            Self::Resource => page || window || job || result || variable == "resource",
            Self::Listing { cursor } => {
                (page && !(cursor && variable == "cursor"))
                    || window
                    || job
                    || result
                    || variable == "resource"
            }
            Self::JobResult => page,
        }
    }

    fn message(self, variable: &str) -> String {
        if variable == "result" && !matches!(self, Self::JobResult) {
            return "{result} is a finished report job's result id: only its result_request takes it".into();
        }
        match self {
            Self::JobResult => format!(
                "a report job's result request runs outside any page and cannot use {{{variable}}}"
            ),
            Self::Nothing { .. } => format!(
                "{{{variable}}} is the id of an asynchronous report job; this stream has no [streams.job]"
            ),
            Self::Pages => format!(
                "a report job's creation runs before any page or job id and cannot use {{{variable}}}"
            ),
            Self::Page => {
                format!("a report job's poll runs outside any page and cannot use {{{variable}}}")
            }
            Self::Window => format!(
                "a resource probe runs outside any window or page and cannot use {{{variable}}}"
            ),
            Self::Resource => format!(
                "a probe runs outside any window, page or resource and cannot use {{{variable}}}"
            ),
            Self::Listing { .. } if variable == "cursor" => {
                "{cursor} in the resource listing needs resources.cursor, the pointer to the next page's token".into()
            }
            Self::Listing { .. } => format!(
                "the resource listing runs outside any window or resource and cannot use {{{variable}}}"
            ),
        }
    }
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, key: &str, message: String, hint: Option<&str>) {
        let (line, column) = line_column(self.text, span.start);
        self.problems.push(Problem {
            line,
            column,
            key: key.to_string(),
            message,
            hint: hint.map(str::to_string),
        });
    }

    /// An absolute http(s) URL, or (`relative`) a path under the base URL.
    fn url(&mut self, value: &Spanned<String>, key: &str) {
        // A URL may name settings (a shop's own host): rendered with sample values.
        let rendered = match self.settings_in_url(value, key) {
            Some(rendered) => rendered,
            None => return,
        };
        if key != "provider.base_url" && rendered.starts_with('/') {
            return;
        }
        match url::Url::parse(&rendered) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => self.problem(
                value.span(),
                key,
                format!(
                    "{:?} is not an http(s) URL (scheme {})",
                    value.get_ref(),
                    u.scheme()
                ),
                None,
            ),
            Err(e) => self.problem(
                value.span(),
                key,
                format!("{:?} is not a URL: {e}", value.get_ref()),
                Some("an absolute URL such as https://api.example.com, or for auth URLs a path under base_url such as /oauth/token"),
            ),
        }
    }

    /// `auth.authorize_params`: literal text and `{settings.NAME}` of declared settings that
    /// are not secret (a consent URL is shown to people and kept in browser histories);
    /// none of the parameters gapless sends itself.
    fn consent_params(&mut self, auth: &Auth) {
        let own: &[&str] = if auth.standard_consent {
            &[
                "state",
                "redirect_uri",
                "response_type",
                "client_id",
                "scope",
                "code_challenge",
                "code_challenge_method",
            ]
        } else {
            &["state", "redirect_uri"]
        };
        for (name, value) in &auth.authorize_params {
            let key = format!("auth.authorize_params.{name}");
            if own.contains(&name.as_str()) {
                self.problem(
                    auth.kind.span(),
                    &key,
                    format!("{name} is sent by gapless itself"),
                    None,
                );
            }
            // Settings only, none secret: the consent URL is shown to people.
            self.settings_only(value, auth.kind.span(), &key);
        }
    }

    /// `[regions.NAME]`: names like provider names, absolute URLs, and the region of the
    /// definition's own URLs named.
    fn regions(&mut self, d: &Definition) {
        let is_name = super::template::is_name;
        if let Some(own) = &d.provider.region
            && !is_name(own)
        {
            self.problem(
                d.provider.name.span(),
                "provider.region",
                format!("{own:?} is not a region name"),
                Some("lowercase letters, digits and '_', starting with a letter, e.g. \"na\""),
            );
        }
        for (name, region) in &d.regions {
            let key = format!("regions.{name}");
            if !is_name(name) {
                self.problem(
                    region.base_url.span(),
                    &key,
                    format!("{name:?} is not a region name"),
                    Some("lowercase letters, digits and '_', starting with a letter, e.g. \"eu\""),
                );
            }
            match &d.provider.region {
                None => self.problem(
                    region.base_url.span(),
                    &key,
                    "a definition with [regions] must name the region of its own URLs".into(),
                    Some("provider.region = \"na\" in [provider]"),
                ),
                Some(own) if own == name => self.problem(
                    region.base_url.span(),
                    &key,
                    format!("{name:?} is already the region of [provider] and [auth]"),
                    None,
                ),
                Some(_) => {}
            }
            if region.description.trim().is_empty() {
                self.problem(
                    region.base_url.span(),
                    &format!("{key}.description"),
                    "a region needs a description: it is what people choosing one read".into(),
                    None,
                );
            }
            if region.base_url.get_ref().starts_with('/') {
                self.problem(
                    region.base_url.span(),
                    &format!("{key}.base_url"),
                    "a region's base URL must be absolute".into(),
                    Some("e.g. https://api-eu.example.com"),
                );
            } else {
                self.url(&region.base_url, &format!("{key}.base_url"));
            }
            for (value, field) in [
                (&region.authorize_url, "authorize_url"),
                (&region.token_url, "token_url"),
                (&region.revoke_url, "revoke_url"),
            ] {
                if let Some(value) = value {
                    self.url(value, &format!("{key}.{field}"));
                }
            }
        }
    }

    /// `value` with its `{settings.NAME}` rendered with sample values; None (and a problem)
    /// when it names anything else, or a secret setting (URLs are logged and shown).
    fn settings_in_url(&mut self, value: &Spanned<String>, key: &str) -> Option<String> {
        self.settings_only(value.get_ref(), value.span(), key)
    }

    /// `text` rendered with sample values of its `{settings.NAME}`; None (and a problem)
    /// when it is not a template, or names anything but a declared setting that may be
    /// shown (consent parameters and URLs are shown to people and logged).
    fn settings_only(&mut self, text: &str, span: Range<usize>, key: &str) -> Option<String> {
        if !text.contains('{') {
            return Some(text.to_string());
        }
        let template = match super::template::Template::parse(text) {
            Ok(t) => t,
            Err(e) => {
                self.problem(
                    span,
                    key,
                    format!("{text:?}: {}", e.message),
                    Some("literal text, or {settings.NAME} ({{ and }} for braces)"),
                );
                return None;
            }
        };
        let bad = template.variables().find(|v| {
            super::template::setting_name(v)
                .and_then(|name| self.settings.get(name))
                .is_none_or(|setting| setting.secret)
        });
        if let Some(bad) = bad {
            self.problem(
                span,
                key,
                format!("{{{bad}}} is not a declared setting that may be shown; this takes settings only"),
                Some("declare it under [settings.NAME], not secret"),
            );
            return None;
        }
        let samples: std::collections::BTreeMap<String, String> = self
            .settings
            .keys()
            .map(|name| (name.clone(), "setting".to_string()))
            .collect();
        template
            .render(
                &super::template::Vars::settings_only(&samples),
                super::template::Escape::Url,
            )
            .ok()
    }

    /// A duration: parsed, and bounded (every duration of a definition is arithmetic on
    /// dates later, so it must stay well inside the calendar).
    fn duration(&mut self, value: &Option<Spanned<String>>, key: &str) {
        let Some(value) = value else { return };
        match humantime::parse_duration(value.get_ref()) {
            Err(e) => self.problem(
                value.span(),
                key,
                format!("{:?} is not a duration: {e}", value.get_ref()),
                Some("e.g. \"1h\", \"90d\", \"365d\""),
            ),
            Ok(d) if d > std::time::Duration::from_secs(MAX_DURATION_DAYS * 86_400) => self
                .problem(
                    value.span(),
                    key,
                    format!(
                        "{:?} is longer than {MAX_DURATION_DAYS} days, the longest duration a definition may give",
                        value.get_ref()
                    ),
                    Some("leave the key out for \"no limit\""),
                ),
            Ok(_) => {}
        }
    }

    /// `lookback_from` is a known value and lookback and margin make a retention.
    fn retention(&mut self, stream: &super::definition::Stream, key: &str) {
        if let Some(from) = &stream.lookback_from
            && gapless_core::CountedFrom::parse(from.get_ref()).is_none()
        {
            self.problem(
                from.span(),
                &format!("{key}.lookback_from"),
                format!("{:?} is not where a lookback is counted from", from.get_ref()),
                Some("\"from_start\" (the provider refuses a window once its start is older than the lookback) or \"from_end\""),
            );
        }
        let parse = |v: &Option<Spanned<String>>| {
            v.as_ref()
                .and_then(|v| humantime::parse_duration(v.get_ref()).ok())
                .and_then(|d| chrono::Duration::from_std(d).ok())
        };
        let Some(lookback) = parse(&stream.lookback) else {
            if let Some(key_value) = stream
                .lookback_from
                .as_ref()
                .map(|v| v.span())
                .or(stream.lookback_margin.as_ref().map(|v| v.span()))
            {
                self.problem(
                    key_value,
                    &format!("{key}.lookback"),
                    "lookback_from and lookback_margin need a lookback".into(),
                    None,
                );
            }
            return;
        };
        let margin = parse(&stream.lookback_margin)
            .unwrap_or_else(|| gapless_core::Retention::default_margin(lookback));
        if let Err(e) =
            gapless_core::Retention::new(lookback, gapless_core::CountedFrom::Start, margin)
            && let Some(at) = stream.lookback_margin.as_ref().or(stream.lookback.as_ref())
        {
            self.problem(at.span(), &format!("{key}.lookback"), e.to_string(), None);
        }
    }

    fn pointer(&mut self, value: &Spanned<String>, key: &str) {
        let p = value.get_ref();
        if !(p.is_empty() || p.starts_with('/')) {
            self.problem(
                value.span(),
                key,
                format!("{p:?} is not a JSON pointer"),
                Some("a JSON pointer starts with '/', e.g. \"/data\" or \"/paging/next\""),
            );
        }
    }

    fn template(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        outside: Outside,
    ) -> Option<Template> {
        match Template::parse(value.get_ref()) {
            Ok(t) => {
                let undeclared = t.variables().find_map(|v| {
                    super::template::setting_name(v)
                        .filter(|name| !self.settings.contains_key(*name))
                });
                if let Some(name) = undeclared {
                    self.problem(
                        value.span(),
                        key,
                        format!(
                            "{{settings.{name}}} names a setting the definition does not declare"
                        ),
                        Some("declare it: [settings.NAME] with a description"),
                    );
                }
                if let Some(bad) = t.variables().find(|v| outside.forbids(v)) {
                    self.problem(value.span(), key, outside.message(bad), None);
                }
                Some(t)
            }
            Err(e) => {
                let span = value.span();
                // Point into the string (past its opening quote) where the template breaks.
                let at = span.start + 1 + e.offset;
                self.problem(
                    at..at,
                    key,
                    e.message,
                    Some("see the template table in docs/providers.md"),
                );
                None
            }
        }
    }

    fn request(&mut self, request: &Request, key: &str, outside: Outside) {
        let method = request.method.get_ref().to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "POST") {
            self.problem(
                request.method.span(),
                &format!("{key}.method"),
                format!("method {:?} is not GET or POST", request.method.get_ref()),
                None,
            );
        }
        let mut templates = Vec::new();
        if let Some(url) = self.template(&request.url, &format!("{key}.url"), outside) {
            // Rendered with sample values, the URL must be a URL or a path.
            let all = self.sample_settings(false);
            let rendered = url
                .render(&sample_vars(&all), Escape::Url)
                .unwrap_or_default();
            let joined =
                url::Url::parse("http://base.example/").and_then(|base| base.join(&rendered));
            if joined.is_err() || !(rendered.starts_with('/') || rendered.starts_with("http")) {
                self.problem(
                    request.url.span(),
                    &format!("{key}.url"),
                    format!("{:?} is neither a URL nor a path", request.url.get_ref()),
                    Some("a path under base_url such as /v1/reports, or an absolute URL"),
                );
            }
            templates.push((format!("{key}.url"), request.url.span(), url));
        }
        for (name, value) in &request.headers {
            let header_key = format!("{key}.headers.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.problem(
                    value.span(),
                    &header_key,
                    format!("{name:?} is not a header name"),
                    None,
                );
            }
            if value.get_ref().contains(['\r', '\n']) {
                self.problem(
                    value.span(),
                    &header_key,
                    "a header value may not hold a line break".into(),
                    None,
                );
            }
            if let Some(t) = self.template(value, &header_key, outside) {
                templates.push((header_key, value.span(), t));
            }
        }
        if let Some(body) = &request.body
            && method == "GET"
        {
            self.problem(
                body.span(),
                &format!("{key}.body"),
                "a GET request carries no body".into(),
                Some("method = \"POST\""),
            );
        }
        if let Some(body) = &request.body
            && let Some(t) = self.template(body, &format!("{key}.body"), outside)
        {
            templates.push((format!("{key}.body"), body.span(), t));
        }
        self.templates = templates;
    }

    /// Stream templates may name pagination variables only when the pagination provides
    /// them: `{cursor}` with cursor pagination, `{page}` with page numbers, `{offset}` with
    /// offsets, `{limit}` with a page_size.
    fn pagination_variables(&mut self, pagination: &super::definition::Pagination) {
        let provided = |name: &str| match name {
            "cursor" => pagination.kind == PaginationKind::Cursor,
            "page" => pagination.kind == PaginationKind::Page,
            "offset" => pagination.kind == PaginationKind::Offset,
            "limit" => pagination.page_size.is_some(),
            _ => true,
        };
        for (key, span, template) in std::mem::take(&mut self.templates) {
            if let Some(missing) = template.variables().find(|v| !provided(v)) {
                self.problem(
                    span,
                    &key,
                    format!("{{{missing}}} has no value with this stream's pagination"),
                    Some("{cursor} needs kind = \"cursor\", {page} kind = \"page\", {offset} kind = \"offset\", {limit} a page_size"),
                );
            }
        }
    }

    // Long by design: independent checks of one table of the format, one after another;
    // none reads another's result, so each can be read (and changed) alone.
    fn auth(&mut self, auth: &Auth) {
        let kind = *auth.kind.get_ref();
        let span = auth.kind.span();
        let require = |checker: &mut Self, present: bool, field: &str, what: &str| {
            if !present {
                checker.problem(
                    span.clone(),
                    &format!("auth.{field}"),
                    format!("auth kind {what} needs {field}"),
                    None,
                );
            }
        };
        let name = match kind {
            AuthKind::Oauth2 => "oauth2",
            AuthKind::Oauth2ClientCredentials => "oauth2_client_credentials",
            AuthKind::ApiKey => "api_key",
            AuthKind::Basic => "basic",
        };
        let consent_only = [
            (!auth.standard_consent, "standard_consent"),
            (auth.callback_code.is_some(), "callback_code"),
            (auth.callback_account.is_some(), "callback_account"),
            (auth.callback_hmac.is_some(), "callback_hmac"),
        ];
        for (set, field) in consent_only {
            if set && kind != AuthKind::Oauth2 {
                self.problem(
                    span.clone(),
                    &format!("auth.{field}"),
                    format!("{field} is about a person's consent; auth kind {name} has none"),
                    None,
                );
            }
        }
        for (value, field) in [
            (&auth.callback_code, "callback_code"),
            (&auth.callback_account, "callback_account"),
            (&auth.callback_hmac, "callback_hmac"),
            (&auth.token_header, "token_header"),
        ] {
            if let Some(value) = value
                && (value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            {
                self.problem(
                    span.clone(),
                    &format!("auth.{field}"),
                    format!("{value:?} is not a parameter or header name"),
                    Some("letters, digits, '_' and '-'"),
                );
            }
        }
        if let Some(prefix) = &auth.token_prefix
            && prefix.chars().any(|c| c.is_control())
        {
            self.problem(
                span.clone(),
                "auth.token_prefix",
                format!("{prefix:?} cannot be part of a header value"),
                None,
            );
        }
        let mut sent_as = std::collections::HashSet::new();
        for field in super::definition::TOKEN_FIELDS {
            let name = auth.token_fields.get(*field).map_or(*field, String::as_str);
            if !sent_as.insert(name) {
                self.problem(
                    span.clone(),
                    &format!("auth.token_fields.{field}"),
                    format!("two token request fields would be sent as {name:?}"),
                    None,
                );
            }
        }
        for (from, to) in &auth.token_fields {
            if !super::definition::TOKEN_FIELDS.contains(&from.as_str()) || to.trim().is_empty() {
                self.problem(
                    span.clone(),
                    &format!("auth.token_fields.{from}"),
                    format!("{from:?} = {to:?} does not rename a token request field"),
                    Some("keys among grant_type, code, redirect_uri, code_verifier, refresh_token, client_id, client_secret, scope; a non-empty name"),
                );
            }
        }
        if let Some(pointer) = &auth.token_answer {
            self.pointer(pointer, "auth.token_answer");
        }
        if (auth.token_header.is_some() || auth.token_prefix.is_some())
            && !matches!(kind, AuthKind::Oauth2 | AuthKind::Oauth2ClientCredentials)
        {
            self.problem(
                span.clone(),
                "auth.token_header",
                format!("token_header and token_prefix place an OAuth access token; auth kind {name} has none (an API key has name and prefix)"),
                None,
            );
        }
        if let Some(exchange) = &auth.exchange
            && kind != AuthKind::Oauth2
        {
            self.problem(
                exchange.grant_type.span(),
                "auth.exchange",
                format!("a token exchange follows a person's consent; auth kind {name} has none"),
                None,
            );
        }
        match kind {
            AuthKind::Oauth2 => {
                require(self, auth.authorize_url.is_some(), "authorize_url", name);
                require(self, auth.token_url.is_some(), "token_url", name);
            }
            AuthKind::Oauth2ClientCredentials => {
                require(self, auth.token_url.is_some(), "token_url", name);
            }
            AuthKind::ApiKey => {
                require(self, auth.location.is_some(), "in", name);
                if auth.location == Some(KeyLocation::Header)
                    && let Some(header) = &auth.name
                    && reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
                {
                    self.problem(
                        span.clone(),
                        "auth.name",
                        format!("{header:?} is not a header name"),
                        None,
                    );
                }
                if auth.prefix.contains(['\r', '\n']) {
                    self.problem(
                        span.clone(),
                        "auth.prefix",
                        "the prefix may not hold a line break".into(),
                        None,
                    );
                }
                require(
                    self,
                    auth.name.as_deref().is_some_and(|n| !n.trim().is_empty()),
                    "name",
                    name,
                );
            }
            AuthKind::Basic => {}
        }
        let oauth = matches!(kind, AuthKind::Oauth2 | AuthKind::Oauth2ClientCredentials);
        for (present, field) in [
            (
                auth.authorize_url.is_some() && kind != AuthKind::Oauth2,
                "authorize_url",
            ),
            (
                auth.revoke_url.is_some() && kind != AuthKind::Oauth2,
                "revoke_url",
            ),
            (auth.token_url.is_some() && !oauth, "token_url"),
            (auth.location.is_some() && kind != AuthKind::ApiKey, "in"),
            (auth.name.is_some() && kind != AuthKind::ApiKey, "name"),
        ] {
            if present {
                self.problem(
                    span.clone(),
                    &format!("auth.{field}"),
                    format!("{field} does not apply to auth kind {name}"),
                    None,
                );
            }
        }
        for (value, key) in [
            (&auth.authorize_url, "auth.authorize_url"),
            (&auth.token_url, "auth.token_url"),
            (&auth.revoke_url, "auth.revoke_url"),
        ] {
            if let Some(v) = value {
                self.url(v, key);
            }
        }
        self.duration(&auth.lifetimes.access, "auth.lifetimes.access");
        self.duration(&auth.lifetimes.refresh, "auth.lifetimes.refresh");
        self.duration(
            &auth.lifetimes.authorization,
            "auth.lifetimes.authorization",
        );
    }

    /// A value for each declared setting (only the required ones when `required_only`,
    /// the others then being unset as an installation may leave them).
    fn sample_settings(&self, required_only: bool) -> std::collections::BTreeMap<String, String> {
        self.settings
            .iter()
            .filter(|(_, s)| s.required || s.default.is_some() || !required_only)
            .map(|(name, _)| (name.clone(), "setting".to_string()))
            .collect()
    }

    /// A report job: its requests, pointers, status values and waits.
    // Long by design: independent checks of one table of the format, one after another;
    // none reads another's result, so each can be read (and changed) alone.
    fn job(&mut self, job: &super::definition::Job, key: &str) {
        self.request(&job.create, &format!("{key}.create"), Outside::Pages);
        self.request(&job.poll, &format!("{key}.poll"), Outside::Page);
        let settings = self.sample_settings(true);
        let create = super::template::Vars {
            cursor: None,
            page: None,
            offset: None,
            limit: None,
            job: None,
            result: None,
            ..sample_vars(&settings)
        };
        let poll = super::template::Vars {
            job: Some("job"),
            result: None,
            ..create.clone()
        };
        self.renders(
            &job.create,
            &format!("{key}.create"),
            [("the job's creation", create.clone())],
        );
        self.renders(
            &job.poll,
            &format!("{key}.poll"),
            [("the job's poll", poll)],
        );
        match (&job.result_id, &job.result_request) {
            (Some(_), Some(request)) => {
                let key = format!("{key}.result_request");
                self.request(request, &key, Outside::JobResult);
                let located = super::template::Vars {
                    job: Some("job"),
                    result: Some("result"),
                    ..create.clone()
                };
                self.renders(request, &key, [("the result request", located)]);
                if !RequestTemplates::parse(request).is_ok_and(|t| t.names("result")) {
                    self.problem(
                        request.url.span(),
                        &key,
                        "a result request must name the result it asks about".into(),
                        Some("use {result} in its url"),
                    );
                }
                if job.result_url.is_none() {
                    self.problem(
                        request.url.span(),
                        &key,
                        "a result request must say where its answer gives the result's URL".into(),
                        Some("result_url = \"/url\""),
                    );
                }
            }
            (None, None) => {}
            (Some(id), None) => self.problem(
                id.span(),
                &format!("{key}.result_id"),
                "a result id is asked about by a result_request, which is missing".into(),
                None,
            ),
            (None, Some(request)) => self.problem(
                request.url.span(),
                &format!("{key}.result_request"),
                "a result request needs result_id: where the finished poll gives {result}".into(),
                None,
            ),
        }
        let names_job = RequestTemplates::parse(&job.poll).is_ok_and(|t| t.names("job"));
        if !names_job {
            self.problem(
                job.poll.url.span(),
                &format!("{key}.poll"),
                "a job's poll must name the job it asks about".into(),
                Some("use {job} in its url, a header or its body"),
            );
        }
        for (value, name) in [
            (Some(&job.id), "id"),
            (Some(&job.status), "status"),
            (job.result_url.as_ref(), "result_url"),
            (job.result_id.as_ref(), "result_id"),
            (job.message.as_ref(), "message"),
        ] {
            if let Some(v) = value {
                self.pointer(v, &format!("{key}.{name}"));
            }
        }
        if job.done.is_empty() || job.pending.is_empty() {
            self.problem(
                job.status.span(),
                &format!("{key}.done"),
                "a job needs its done and pending status values".into(),
                Some("e.g. done = [\"Job Completed\"], pending = [\"Job Running\"]"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for value in job
            .done
            .iter()
            .chain(&job.failed)
            .chain(&job.pending)
            .chain(&job.empty)
        {
            if !seen.insert(value) {
                self.problem(
                    job.status.span(),
                    &format!("{key}.status"),
                    format!(
                        "status value {value:?} is in more than one of done, failed, pending and empty"
                    ),
                    None,
                );
            }
        }
        fn bounds(v: &Option<Spanned<String>>) -> Option<(&Spanned<String>, std::time::Duration)> {
            v.as_ref()
                .and_then(|v| humantime::parse_duration(v.get_ref()).ok().map(|d| (v, d)))
        }
        let mut waits = Vec::new();
        for (value, name) in [
            (&job.poll_every, "poll_every"),
            (&job.poll_for, "poll_for"),
            (&job.max_wait, "max_wait"),
        ] {
            self.duration(value, &format!("{key}.{name}"));
            if let Some((v, d)) = bounds(value) {
                if !(super::connector::WAIT_MIN..=super::connector::WAIT_MAX).contains(&d) {
                    self.problem(
                        v.span(),
                        &format!("{key}.{name}"),
                        format!("{:?} is not between 10ms and 24h", v.get_ref()),
                        None,
                    );
                }
                if name == "poll_for" && d > super::connector::POLL_FOR_MAX {
                    self.problem(
                        v.span(),
                        &format!("{key}.{name}"),
                        format!(
                            "{:?} is longer than one run may poll (2m: a run holds its pipeline's claim only so long between requests)",
                            v.get_ref()
                        ),
                        Some("a job that takes longer is polled again by the next run; raise max_wait instead"),
                    );
                }
                waits.push((name, v, d));
            }
        }
        let of = |name: &str, default| {
            waits
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or(default, |(_, _, d)| *d)
        };
        if of("poll_for", super::connector::POLL_FOR_DEFAULT)
            > of("max_wait", super::connector::MAX_WAIT_DEFAULT)
        {
            self.problem(
                job.status.span(),
                &format!("{key}.poll_for"),
                "poll_for is longer than max_wait: the job would be abandoned while one run still polls it".into(),
                None,
            );
        }
    }

    /// Render a stream's first page as a run does (no cursor yet, optional settings unset)
    /// and a later one: what fails here would fail every run.
    fn pages_render(&mut self, stream: &super::definition::Stream, key: &str) {
        let pagination = &stream.pagination;
        let (required, all) = (self.sample_settings(true), self.sample_settings(false));
        let limit = pagination.page_size.map(u64::from);
        let job = stream.job.as_ref().map(|_| "job");
        let first = super::template::Vars {
            cursor: None,
            page: Some(pagination.first_page),
            offset: Some(0),
            limit,
            job,
            result: None,
            ..sample_vars(&required)
        };
        let later = super::template::Vars {
            page: Some(pagination.first_page.saturating_add(1)),
            offset: limit,
            limit,
            job,
            result: None,
            ..sample_vars(&all)
        };
        self.renders(
            &stream.request,
            key,
            [("the first page", first), ("a later page", later)],
        );
    }

    /// Render a request as a run would, once for each of `pages`.
    fn renders<const N: usize>(
        &mut self,
        request: &Request,
        key: &str,
        pages: [(&str, super::template::Vars<'_>); N],
    ) {
        let Ok(templates) = RequestTemplates::parse(request) else {
            return; // reported by the template checks
        };
        for (page, vars) in pages {
            if let Err(e) = templates.render(&vars) {
                let span = match e.part.as_str() {
                    "url" => request.url.span(),
                    "body" => request.body.as_ref().map_or(0..0, |b| b.span()),
                    part => part
                        .strip_prefix("headers.")
                        .and_then(|name| request.headers.get(name))
                        .map_or(0..0, |v| v.span()),
                };
                self.problem(
                    span,
                    &format!("{key}.{}", e.part),
                    format!("{page} cannot be rendered: {}", e.message),
                    Some("put {cursor} or an optional {settings.NAME} alone as a query parameter's or header's value (url = \"/rows?after={cursor}\") or as a whole JSON value (\"after\": \"{cursor}\")"),
                );
                return;
            }
        }
    }

    fn definition(&mut self, d: &Definition) {
        let name = &d.provider.name;
        if !super::template::is_name(name.get_ref()) {
            self.problem(
                name.span(),
                "provider.name",
                format!("{:?} is not a provider name", name.get_ref()),
                Some("lowercase letters, digits and '_', starting with a letter"),
            );
        }
        self.url(&d.provider.base_url, "provider.base_url");
        self.auth(&d.auth);
        self.consent_params(&d.auth);
        self.regions(d);
        self.settings(d);
        self.probe(d);
        self.error_rules(d);
        self.streams(d);
        self.limits(d);
    }

    /// `[settings]`: names an installation can fill, each described.
    fn settings(&mut self, d: &Definition) {
        for (name, setting) in &d.settings {
            if !super::template::is_name(name) {
                self.problem(
                    d.provider.name.span(),
                    &format!("settings.{name}"),
                    format!("{name:?} is not a setting name"),
                    Some("lowercase letters, digits and '_', starting with a letter"),
                );
            }
            if setting.description.trim().is_empty() {
                self.problem(
                    d.provider.name.span(),
                    &format!("settings.{name}.description"),
                    "a setting needs a description: it is what an installation that lacks it is told".into(),
                    None,
                );
            }
            if name == super::connector::CLIENT_SECRET_SETTING && !setting.secret {
                self.problem(
                    d.provider.name.span(),
                    &format!("settings.{name}.secret"),
                    "the setting client_secret is the OAuth client's secret unless given: it must be declared secret".into(),
                    Some("secret = true"),
                );
            }
            if setting.per_identity && setting.secret {
                self.problem(
                    d.provider.name.span(),
                    &format!("settings.{name}.per_identity"),
                    "a setting given per identity is kept with the identity in the clear: it cannot be secret".into(),
                    Some("per_identity = true or secret = true, not both"),
                );
            }
        }
    }

    /// `[probe]`: the request that proves a credential, says whose it is, and asks about one
    /// resource; then `[resources]`.
    fn probe(&mut self, d: &Definition) {
        self.request(&d.probe.request, "probe.request", Outside::Resource);
        let required = self.sample_settings(true);
        let probe = super::template::Vars::settings_only(&required);
        self.renders(
            &d.probe.request,
            "probe.request",
            [("the probe", probe.clone())],
        );
        if let Some(request) = &d.probe.resource_request {
            self.request(request, "probe.resource_request", Outside::Window);
            let uses_resource = RequestTemplates::parse(request).is_ok_and(|t| t.names("resource"));
            if !uses_resource {
                self.problem(
                    request.url.span(),
                    "probe.resource_request",
                    "a resource probe must name the resource it asks about".into(),
                    Some("use {resource} in its url, a header or its body"),
                );
            }
            let one = super::template::Vars {
                resource: "resource",
                ..probe.clone()
            };
            self.renders(
                request,
                "probe.resource_request",
                [("the resource probe", one)],
            );
        }
        if let Some(resources) = &d.resources {
            self.resources(d, resources, &probe);
        }
        match &d.probe.account_id {
            Some(account_id) if d.auth.callback_account.is_some() => self.problem(
                account_id.span(),
                "probe.account_id",
                "the consent's redirect names the account (auth.callback_account); a probe naming it too would replace it".into(),
                Some("keep one of probe.account_id and auth.callback_account"),
            ),
            Some(account_id) => self.pointer(account_id, "probe.account_id"),
            None if d.auth.callback_account.is_some() => {}
            None => self.problem(
                d.probe.request.url.span(),
                "probe.account_id",
                "the probe must say whose account a credential is".into(),
                Some("account_id = \"/id\" in [probe], or auth.callback_account when only the consent's redirect names the account"),
            ),
        }
        for (value, key) in [
            (&d.probe.account_name, "probe.account_name"),
            (&d.probe.scopes, "probe.scopes"),
            (&d.probe.expires_at, "probe.expires_at"),
            (&d.probe.resources, "probe.resources"),
            (&d.probe.resource_id, "probe.resource_id"),
            (&d.probe.resource_name, "probe.resource_name"),
        ] {
            if let Some(v) = value {
                self.pointer(v, key);
            }
        }
    }

    /// `[resources]`: the listing of what a credential reads, its pages and its items.
    // Long by design: independent checks of one table of the format, one after another.
    fn resources(
        &mut self,
        d: &Definition,
        resources: &super::definition::Resources,
        probe: &super::template::Vars<'_>,
    ) {
        self.request(
            &resources.request,
            "resources.request",
            Outside::Listing {
                cursor: resources.cursor.is_some(),
            },
        );
        let later = super::template::Vars {
            cursor: Some("next-page-token"),
            ..probe.clone()
        };
        self.renders(
            &resources.request,
            "resources.request",
            [
                ("the resource listing", probe.clone()),
                ("the resource listing's next page", later),
            ],
        );
        if let (Some(_), Some(cursor)) = (&resources.next, &resources.cursor) {
            self.problem(
                cursor.span(),
                "resources.cursor",
                "a listing pages by the next page's URL (next) or by a token (cursor), not both"
                    .into(),
                None,
            );
        }
        if let Some(cursor) = &resources.cursor
            && !RequestTemplates::parse(&resources.request).is_ok_and(|t| t.names("cursor"))
        {
            self.problem(
                cursor.span(),
                "resources.cursor",
                "the listing reads the next page's token but its request never sends it".into(),
                Some("put {cursor} in its request: url = \"/accounts?pageToken={cursor}\""),
            );
        }
        for (value, key) in [
            (&resources.items, "resources.items"),
            (&resources.id, "resources.id"),
            (&resources.name, "resources.name"),
            (&resources.next, "resources.next"),
            (&resources.cursor, "resources.cursor"),
            (&resources.token, "resources.token"),
        ] {
            if let Some(v) = value {
                self.pointer(v, key);
            }
        }
        if let Some(children) = &resources.children {
            self.children(children, probe);
        }
        if let Some(token) = &resources.token
            && *d.auth.kind.get_ref() != AuthKind::Oauth2
        {
            self.problem(
                token.span(),
                "resources.token",
                "a resource's own token stands in for an OAuth access token; this definition's auth is not oauth2".into(),
                Some("leave resources.token out"),
            );
        }
        if resources.max_pages == 0 {
            self.problem(
                resources.request.url.span(),
                "resources.max_pages",
                "max_pages must be at least 1".into(),
                None,
            );
        }
        if let Some(listed) = &d.probe.resources {
            self.problem(
                listed.span(),
                "probe.resources",
                "resources are listed by [resources]; the probe's list would never be read".into(),
                Some("keep one of probe.resources and [resources]"),
            );
        }
    }

    /// `[resources.children]`: the listing under each listed resource.
    fn children(
        &mut self,
        children: &super::definition::Children,
        probe: &super::template::Vars<'_>,
    ) {
        self.request(
            &children.request,
            "resources.children.request",
            Outside::Window,
        );
        if !RequestTemplates::parse(&children.request).is_ok_and(|t| t.names("resource")) {
            self.problem(
                children.request.url.span(),
                "resources.children.request",
                "the listing under a resource must name the resource it asks about".into(),
                Some("use {resource} in its url, a header or its body"),
            );
        }
        let under = super::template::Vars {
            resource: "resource",
            ..probe.clone()
        };
        self.renders(
            &children.request,
            "resources.children.request",
            [("the listing under a resource", under)],
        );
        for (value, key) in [
            (&children.items, "resources.children.items"),
            (&children.id, "resources.children.id"),
            (&children.name, "resources.children.name"),
        ] {
            if let Some(v) = value {
                self.pointer(v, key);
            }
        }
    }

    /// `[[errors]]`: each rule names a known cause and matches on codes, not text.
    fn error_rules(&mut self, d: &Definition) {
        for (i, rule) in d.errors.iter().enumerate() {
            let key = format!("errors[{i}]");
            if FailureCause::from_code(rule.cause.get_ref()).is_none() {
                self.problem(
                    rule.cause.span(),
                    &format!("{key}.cause"),
                    format!("{:?} is not a failure cause", rule.cause.get_ref()),
                    Some("one of refreshable, reauth_required/{expired, revoked, password_changed, session_expired, invalid_grant, invalid_credentials}, permission_lost, account_blocked, app_not_approved, rate_limited, transient"),
                );
            }
            if rule.status.is_none() && rule.body.is_empty() && rule.header.is_none() {
                self.problem(
                    rule.cause.span(),
                    &key,
                    "the rule matches every answer".into(),
                    Some("give a status, a pointer with equals, or a header"),
                );
            }
            for (pointer, value) in &rule.body {
                if !pointer.starts_with('/') {
                    self.problem(
                        rule.cause.span(),
                        &format!("{key}.body"),
                        format!("{pointer:?} is not a JSON pointer"),
                        Some("quote it and start it with '/', e.g. \"/error/code\" = 190"),
                    );
                }
                if matches!(value, toml::Value::Datetime(_) | toml::Value::Float(_)) {
                    self.problem(rule.cause.span(), &format!("{key}.body"), format!("{pointer}: compare with a string, an integer, a boolean, an array or a table"), None);
                }
            }
            if rule.header_equals.is_some() && rule.header.is_none() {
                self.problem(
                    rule.cause.span(),
                    &format!("{key}.header"),
                    "header_equals needs header".into(),
                    None,
                );
            }
            if rule.code_pointer.is_some() && !rule.code_pointers.is_empty() {
                self.problem(
                    rule.cause.span(),
                    &format!("{key}.code_pointers"),
                    "give code_pointer or code_pointers, not both".into(),
                    None,
                );
            }
            for pointer in &rule.code_pointers {
                if !pointer.starts_with('/') {
                    self.problem(
                        rule.cause.span(),
                        &format!("{key}.code_pointers"),
                        format!("{pointer:?} is not a JSON pointer"),
                        None,
                    );
                }
            }
            if let Some(p) = &rule.retry_after_pointer
                && !rule.cause.get_ref().starts_with("rate_limited")
            {
                self.problem(
                    p.span(),
                    &format!("{key}.retry_after_pointer"),
                    "retry_after_pointer only applies to cause = \"rate_limited\"".into(),
                    None,
                );
            }
            for (value, k) in [
                (&rule.code_pointer, "code_pointer"),
                (&rule.message_pointer, "message_pointer"),
                (&rule.retry_after_pointer, "retry_after_pointer"),
            ] {
                if let Some(v) = value {
                    self.pointer(v, &format!("{key}.{k}"));
                }
            }
        }
    }

    /// `[[streams]]`: at least one, each named once, its request, pagination and fields.
    fn streams(&mut self, d: &Definition) {
        if d.streams.is_empty() {
            let span = d.provider.name.span();
            self.problem(
                span,
                "streams",
                "the provider offers no stream".into(),
                Some("add a [[streams]] table"),
            );
        }
        let mut names = BTreeSet::new();
        for (i, stream) in d.streams.iter().enumerate() {
            let key = format!("streams[{i}]");
            if !names.insert(stream.name.get_ref().clone()) {
                self.problem(
                    stream.name.span(),
                    &format!("{key}.name"),
                    format!("stream {:?} is defined twice", stream.name.get_ref()),
                    None,
                );
            }
            self.stream(&key, stream);
        }
    }

    /// One `[[streams]]` table: its request, job, pagination and fields.
    fn stream(&mut self, key: &str, stream: &super::definition::Stream) {
        self.request(
            &stream.request,
            &format!("{key}.request"),
            Outside::Nothing {
                job: stream.job.is_some(),
            },
        );
        if let Some(job) = &stream.job {
            self.job(job, &format!("{key}.job"));
        }
        self.pagination_variables(&stream.pagination);
        self.pages_render(stream, &format!("{key}.request"));
        if stream.max_pages == 0 || stream.max_response_bytes == 0 {
            self.problem(
                stream.name.span(),
                key,
                "max_pages and max_response_bytes must be at least 1".into(),
                None,
            );
        }
        self.stream_format(key, stream);
        let fields = self.stream_fields(key, stream);
        self.stream_keys(key, stream, &fields);
        self.duration(&stream.max_range, &format!("{key}.max_range"));
        self.duration(&stream.lookback, &format!("{key}.lookback"));
        self.duration(&stream.lookback_margin, &format!("{key}.lookback_margin"));
        self.retention(stream, key);
        self.stream_pagination(key, stream);
    }

    /// Where a stream's records and rows are, for the format of its answers.
    fn stream_format(&mut self, key: &str, stream: &super::definition::Stream) {
        if let Some(records) = &stream.records {
            self.pointer(records, &format!("{key}.records"));
            if matches!(
                stream.format,
                PayloadFormat::JsonLines | PayloadFormat::Csv | PayloadFormat::Tsv
            ) {
                self.problem(
                    records.span(),
                    &format!("{key}.records"),
                    "records points into JSON documents; in lines or CSV every line or row is a record".into(),
                    Some("leave records out"),
                );
            }
        }
        if !stream.format.is_json_document()
            && matches!(
                stream.pagination.kind,
                PaginationKind::NextUrl | PaginationKind::Cursor
            )
        {
            self.problem(
                stream.name.span(),
                &format!("{key}.pagination.kind"),
                "next_url and cursor pagination read a pointer in a JSON document; this stream's answers are not one".into(),
                Some("format = \"json\", or link_header, offset or page pagination"),
            );
        }
        if let Some(rows_in) = &stream.rows_in {
            self.pointer(rows_in, &format!("{key}.rows_in"));
            if !stream.format.is_json_document() {
                self.problem(
                    rows_in.span(),
                    &format!("{key}.rows_in"),
                    "rows_in points into the records of a JSON document; this stream's answers are not one".into(),
                    Some("format = \"json\", or leave rows_in out"),
                );
            }
        }
    }

    /// A stream's fields, each named once, with what it reads checked; their names.
    fn stream_fields(&mut self, key: &str, stream: &super::definition::Stream) -> BTreeSet<String> {
        let mut fields = BTreeSet::new();
        for (j, field) in stream.fields.iter().enumerate() {
            if !fields.insert(field.name.get_ref().clone()) {
                self.problem(
                    field.name.span(),
                    &format!("{key}.fields[{j}].name"),
                    format!("field {:?} is defined twice", field.name.get_ref()),
                    None,
                );
            }
            if let Some(p) = &field.pointer {
                self.pointer(p, &format!("{key}.fields[{j}].pointer"));
            }
            if field.parent && stream.rows_in.is_none() {
                self.problem(
                    field.name.span(),
                    &format!("{key}.fields[{j}].parent"),
                    "parent reads the record around a row's item; this stream has no rows_in".into(),
                    Some("rows_in = \"/values\" (where each record holds its rows), or leave parent out"),
                );
            }
            if let Some(shift) = &field.shift_days {
                if field.kind != FieldType::Date {
                    self.problem(
                        shift.span(),
                        &format!("{key}.fields[{j}].shift_days"),
                        format!(
                            "shift_days moves a day; field {:?} is not of type date",
                            field.name.get_ref()
                        ),
                        None,
                    );
                } else if !(-31..=31).contains(shift.get_ref()) {
                    self.problem(
                        shift.span(),
                        &format!("{key}.fields[{j}].shift_days"),
                        format!("{} days is out of range", shift.get_ref()),
                        Some("-31 to 31"),
                    );
                }
            }
        }
        if stream.fields.is_empty() {
            self.problem(
                stream.name.span(),
                &format!("{key}.fields"),
                "a stream needs at least one field".into(),
                None,
            );
        }
        fields
    }

    /// The primary key, the day field and the range of several windows, against `fields`.
    fn stream_keys(
        &mut self,
        key: &str,
        stream: &super::definition::Stream,
        fields: &BTreeSet<String>,
    ) {
        for (j, pk) in stream.primary_key.iter().enumerate() {
            if !fields.contains(pk.get_ref()) {
                self.problem(
                    pk.span(),
                    &format!("{key}.primary_key[{j}]"),
                    format!("{:?} is not one of the stream's fields", pk.get_ref()),
                    None,
                );
            }
        }
        if let Some(day) = &stream.day_field {
            match stream
                .fields
                .iter()
                .find(|f| f.name.get_ref() == day.get_ref())
            {
                Some(f) if f.kind == FieldType::Date => {}
                Some(_) => self.problem(
                    day.span(),
                    &format!("{key}.day_field"),
                    format!("field {:?} is not of type date", day.get_ref()),
                    None,
                ),
                None => self.problem(
                    day.span(),
                    &format!("{key}.day_field"),
                    format!("{:?} is not one of the stream's fields", day.get_ref()),
                    None,
                ),
            }
        }
        if let Some(range) = &stream.max_range
            && stream.day_field.is_none()
        {
            self.problem(
                range.span(),
                &format!("{key}.max_range"),
                "a range of several windows needs day_field to split the records back into windows"
                    .into(),
                Some("name the date field of each record in day_field"),
            );
        }
    }

    /// What the stream's pagination reads and needs.
    fn stream_pagination(&mut self, key: &str, stream: &super::definition::Stream) {
        let pagination = &stream.pagination;
        let pkey = format!("{key}.pagination");
        match pagination.kind {
            PaginationKind::NextUrl | PaginationKind::Cursor => match &pagination.pointer {
                Some(p) => self.pointer(p, &format!("{pkey}.pointer")),
                None => self.problem(
                    stream.name.span(),
                    &format!("{pkey}.pointer"),
                    "this pagination needs pointer: where the answer holds the next page".into(),
                    None,
                ),
            },
            PaginationKind::Page => {
                if let Some(p) = &pagination.pointer {
                    self.pointer(p, &format!("{pkey}.pointer"));
                }
            }
            PaginationKind::Offset if pagination.page_size.is_none_or(|n| n == 0) => {
                self.problem(
                    stream.name.span(),
                    &format!("{pkey}.page_size"),
                    "offset pagination needs a page_size of at least 1".into(),
                    None,
                );
            }
            _ => {}
        }
        if let Some(more) = &pagination.has_more {
            if pagination.kind == PaginationKind::Cursor {
                self.pointer(more, &format!("{pkey}.has_more"));
            } else {
                self.problem(
                    more.span(),
                    &format!("{pkey}.has_more"),
                    "has_more is read by cursor pagination only".into(),
                    None,
                );
            }
        }
        let names_cursor = RequestTemplates::parse(&stream.request)
            .is_ok_and(|templates| templates.names("cursor"));
        if pagination.kind == PaginationKind::Cursor && pagination.param.is_none() && !names_cursor
        {
            self.problem(
                stream.name.span(),
                &format!("{pkey}.param"),
                "cursor pagination needs param (the query parameter that carries the cursor), or {cursor} in the request"
                    .into(),
                None,
            );
        }
    }

    /// `[limits]`: the request budget, the probe interval and the report timeout, bounded.
    fn limits(&mut self, d: &Definition) {
        for (i, usage) in d.limits.usage.iter().enumerate() {
            let key = format!("limits.usage[{i}]");
            if reqwest::header::HeaderName::from_bytes(usage.header.get_ref().as_bytes()).is_err() {
                self.problem(
                    usage.header.span(),
                    &format!("{key}.header"),
                    format!("{:?} is not an HTTP header name", usage.header.get_ref()),
                    None,
                );
            }
            self.pointer(&usage.pointer, &format!("{key}.pointer"));
            if let Some(reset) = &usage.reset_pointer {
                self.pointer(reset, &format!("{key}.reset_pointer"));
            }
        }
        if let Some(at) = &d.limits.slow_down_at
            && !(1..=100).contains(at.get_ref())
        {
            self.problem(
                at.span(),
                "limits.slow_down_at",
                format!("{} is not a percentage from 1 to 100", at.get_ref()),
                None,
            );
        }
        if let Some(requests) = &d.limits.requests
            && let Err(e) = requests.get_ref().parse::<RateLimit>()
        {
            self.problem(requests.span(), "limits.requests", e.to_string(), None);
        }
        self.duration(&d.limits.probe_every, "limits.probe_every");
        if let Some(value) = &d.limits.report_timeout {
            match humantime::parse_duration(value.get_ref()) {
                Ok(t) if (REPORT_TIMEOUT_MIN..=REPORT_TIMEOUT_MAX).contains(&t) => {}
                Ok(_) => self.problem(
                    value.span(),
                    "limits.report_timeout",
                    format!("{:?} is outside 1 second to 1 hour", value.get_ref()),
                    None,
                ),
                Err(e) => self.problem(
                    value.span(),
                    "limits.report_timeout",
                    format!("{:?} is not a duration: {e}", value.get_ref()),
                    Some("e.g. \"5m\""),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
[provider]
name = "acme_ads"
display_name = "Acme Ads"
base_url = "https://api.acme.example"

[auth]
kind = "oauth2"
authorize_url = "https://acme.example/oauth/authorize"
token_url = "https://acme.example/oauth/token"
scopes = ["ads_read"]
rotating_refresh_tokens = true
lifetimes = { access = "1h", refresh = "90d" }

[probe.request]
url = "/v1/me"
[probe]
account_id = "/id"
account_name = "/name"

[[errors]]
status = 401
body = { "/error/code" = 190 }
cause = "reauth_required/revoked"

[[streams]]
name = "insights"
request = { url = "/v1/{resource}/insights?since={window.first_day}&until={window.last_day}" }
pagination = { kind = "next_url", pointer = "/paging/next" }
records = "/data"
primary_key = ["date", "campaign_id"]
day_field = "date"
max_range = "31d"
lookback = "1110d"
fields = [
  { name = "date", type = "date", pointer = "/date_start" },
  { name = "campaign_id", type = "text" },
  { name = "spend", type = "decimal" },
]

[limits]
requests = "200/1h"
"#;

    #[test]
    fn a_complete_definition_passes() {
        let d = check(GOOD).unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(d.provider.name.get_ref(), "acme_ads");
        assert_eq!(d.streams.len(), 1);
    }

    #[test]
    fn a_cursor_that_the_first_page_cannot_render_is_refused_by_check() {
        let cursor_paged = |request: &str| {
            GOOD.replace(
                r#"request = { url = "/v1/{resource}/insights?since={window.first_day}&until={window.last_day}" }
pagination = { kind = "next_url", pointer = "/paging/next" }"#,
                &format!("{request}\npagination = {{ kind = \"cursor\", pointer = \"/next\" }}"),
            )
        };
        // In a path or inside a longer JSON string: no first page could be sent.
        for request in [
            r#"request = { url = "/v1/{resource}/pages/{cursor}" }"#,
            r#"request = { method = "POST", url = "/v1/q", body = '{{"q": "after {cursor}"}}' }"#,
        ] {
            let text = cursor_paged(request);
            assert_ne!(text, GOOD, "the replacement applies");
            let found = problems(&text);
            assert!(
                found
                    .iter()
                    .any(|p| p.contains("the first page cannot be rendered")),
                "{request}: {found:#?}"
            );
        }
        // As a parameter's value or a whole JSON value: left out, or null, on the first page.
        for request in [
            r#"request = { url = "/v1/{resource}/rows?after={cursor}" }"#,
            r#"request = { method = "POST", url = "/v1/q", body = '{{"after": "{cursor}"}}' }"#,
        ] {
            let text = cursor_paged(request);
            assert!(check(&text).is_ok(), "{request}: {:#?}", check(&text).err());
        }
        let found = problems(&GOOD.replace(
            r#"request = { url = "/v1/"#,
            r#"request = { body = '{{}}', url = "/v1/"#,
        ));
        assert!(
            found
                .iter()
                .any(|p| p.contains("a GET request carries no body")),
            "{found:#?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        check(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_problem_is_named_with_its_line_and_key() {
        let bad = GOOD
            .replace("https://acme.example/oauth/token", "not a url")
            .replace("{window.last_day}", "{window.lastday}")
            .replace("reauth_required/revoked", "reauth_required/bored")
            .replace(r#"day_field = "date""#, r#"day_field = "spend""#)
            .replace(r#""200/1h""#, r#""lots""#);
        let found = problems(&bad);
        let expect = [
            ("10:13:", "auth.token_url", "not a URL"),
            ("24:9:", "errors[0].cause", "not a failure cause"),
            // The column points at the placeholder inside the string.
            (
                "28:75:",
                "streams[0].request.url",
                "unknown variable \"window.lastday\"",
            ),
            ("32:13:", "streams[0].day_field", "not of type date"),
            ("42:12:", "limits.requests", "lots"),
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for ((line, key, words), got) in expect.iter().zip(&found) {
            assert!(
                got.starts_with(line) && got.contains(key) && got.contains(words),
                "{got}"
            );
        }
    }

    #[test]
    fn a_definition_in_another_region_takes_that_regions_urls() {
        let regional = GOOD.replace(
            "base_url = \"https://api.acme.example\"",
            "base_url = \"https://api.acme.example\"\nregion = \"us\"",
        ) + r#"
[regions.eu]
description = "Europe"
base_url = "https://api-eu.acme.example"
token_url = "https://eu.acme.example/oauth/token"
"#;
        let d = check(&regional).unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(d.region_names(), vec!["us", "eu"]);
        let us = d.clone().in_region("us").unwrap();
        assert_eq!(us.provider.base_url.get_ref(), "https://api.acme.example");
        let eu = d.clone().in_region("eu").unwrap();
        assert_eq!(
            eu.provider.base_url.get_ref(),
            "https://api-eu.acme.example"
        );
        assert_eq!(
            eu.auth.token_url.as_ref().map(|u| u.get_ref().as_str()),
            Some("https://eu.acme.example/oauth/token")
        );
        // Not given for the region: the definition's own.
        assert_eq!(
            eu.auth.authorize_url.as_ref().map(|u| u.get_ref().as_str()),
            Some("https://acme.example/oauth/authorize")
        );
        let unknown = d.clone().in_region("fe").unwrap_err().to_string();
        assert_eq!(unknown, "acme_ads has no region \"fe\" (it has: us, eu)");
        assert_eq!(
            d.renamed("acme_ads_eu").provider.name.get_ref(),
            "acme_ads_eu"
        );

        // Regions without the name of the definition's own; a relative base URL.
        let found = problems(
            &(GOOD.to_string() + "\n[regions.eu]\ndescription = \"\"\nbase_url = \"/eu\"\n"),
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("regions.eu") && p.contains("provider.region")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("regions.eu.base_url") && p.contains("absolute")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("regions.eu.description")),
            "{found:?}"
        );
    }

    #[test]
    fn consent_and_token_placement_options_are_checked() {
        // A consent of its own kind that names the account: the probe need not.
        let own = GOOD
            .replace(
                "rotating_refresh_tokens = true",
                "rotating_refresh_tokens = true\nstandard_consent = false\ncallback_code = \"spapi_oauth_code\"\ncallback_account = \"selling_partner_id\"\ntoken_header = \"x-amz-access-token\"\ntoken_prefix = \"\"\nauthorize_params = { application_id = \"{settings.app}\" }",
            )
            .replace("account_id = \"/id\"\n", "")
            + "\n[settings.app]\ndescription = \"the application\"\n";
        check(&own).unwrap_or_else(|p| panic!("{p:#?}"));
        // Without callback_account the probe must name the account.
        let found = problems(&GOOD.replace("account_id = \"/id\"\n", ""));
        assert!(
            found.iter().any(|p| p.contains("probe.account_id")),
            "{found:?}"
        );
        // A consent parameter naming anything but a declared setting.
        let found = problems(&GOOD.replace(
            "rotating_refresh_tokens = true",
            "rotating_refresh_tokens = true\nauthorize_params = { a = \"{window.first_day}\", b = \"{settings.nope}\" }",
        ));
        assert_eq!(
            found
                .iter()
                .filter(|p| p.contains("auth.authorize_params."))
                .count(),
            2,
            "{found:?}"
        );
        // A header name with a space.
        let found = problems(&GOOD.replace(
            "rotating_refresh_tokens = true",
            "rotating_refresh_tokens = true\ntoken_header = \"x amz\"",
        ));
        assert!(
            found.iter().any(|p| p.contains("auth.token_header")),
            "{found:?}"
        );
    }

    #[test]
    fn urls_may_name_settings_that_may_be_shown() {
        let hosted = |setting: &str| {
            GOOD.replace(
                "base_url = \"https://api.acme.example\"",
                "base_url = \"https://{settings.shop}.acme.example/v1\"",
            )
            .replace(
                "token_url = \"https://acme.example/oauth/token\"",
                "token_url = \"https://{settings.shop}.acme.example/oauth/token\"",
            ) + setting
        };
        check(&hosted("\n[settings.shop]\ndescription = \"the shop\"\n"))
            .unwrap_or_else(|p| panic!("{p:#?}"));
        // Each identity's own shop: kept with the identity, so never a secret.
        check(&hosted(
            "\n[settings.shop]\ndescription = \"the shop\"\nper_identity = true\n",
        ))
        .unwrap_or_else(|p| panic!("{p:#?}"));
        let found = problems(&hosted(
            "\n[settings.shop]\ndescription = \"the shop\"\nper_identity = true\nsecret = true\n",
        ));
        assert!(
            found
                .iter()
                .any(|p| p.contains("settings.shop.per_identity") && p.contains("cannot be secret")),
            "{found:?}"
        );
        let found = problems(&hosted(
            "\n[settings.shop]\ndescription = \"the shop\"\nsecret = true\n",
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|p| p.contains("may be shown")),
            "{found:?}"
        );
        let found = problems(&hosted(""));
        assert!(
            found.iter().any(|p| p.contains("provider.base_url")),
            "{found:?}"
        );
        // A path under the base URL is held to the same rule.
        let found = problems(
            &(GOOD.replace(
                "token_url = \"https://acme.example/oauth/token\"",
                "token_url = \"/{settings.key}/token\"",
            ) + "\n[settings.key]\ndescription = \"k\"\nsecret = true\n"),
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("auth.token_url") && p.contains("may be shown")),
            "{found:?}"
        );
    }

    #[test]
    fn a_result_request_needs_its_id_and_names_it() {
        let with_job = |job: &str| {
            GOOD.replace(
                "[limits]",
                &format!(
                    "[streams.job]\ncreate = {{ method = \"POST\", url = \"/v1/{{resource}}/reports\" }}\nid = \"/id\"\npoll = {{ url = \"/v1/reports/{{job}}\" }}\nstatus = \"/status\"\ndone = [\"DONE\"]\nfailed = [\"FAILED\"]\npending = [\"RUNNING\"]\n{job}\n\n[limits]"
                ),
            )
        };
        check(&with_job(
            "result_id = \"/document\"\nresult_request = { url = \"/v1/documents/{result}\" }\nresult_url = \"/url\"",
        ))
        .unwrap_or_else(|p| panic!("{p:#?}"));
        let found = problems(&with_job(
            "result_id = \"/document\"\nresult_request = { url = \"/v1/documents/{job}\" }",
        ));
        assert!(
            found.iter().any(|p| p.contains("must name the result")),
            "{found:?}"
        );
        assert!(found.iter().any(|p| p.contains("result_url")), "{found:?}");
        let found = problems(&with_job("result_id = \"/document\""));
        assert!(
            found
                .iter()
                .any(|p| p.contains("result_request, which is missing")),
            "{found:?}"
        );
        // {result} anywhere else.
        let found =
            problems(&with_job("").replace("/v1/reports/{job}", "/v1/reports/{job}/{result}"));
        assert!(
            found.iter().any(|p| p.contains("only its result_request")),
            "{found:?}"
        );
    }

    #[test]
    fn a_syntax_error_or_unknown_key_is_located() {
        let found = problems(&GOOD.replace("display_name", "displayname"));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("4:") && found[0].contains("displayname"),
            "{found:?}"
        );
        let found = problems("[provider\nname = 1");
        assert!(found[0].starts_with("1:"), "{found:?}");
        let found = problems(&GOOD.replace("kind = \"oauth2\"", "kind = \"oauth3\""));
        assert!(found[0].contains("oauth3"), "{found:?}");
    }

    #[test]
    fn a_template_error_after_escapes_and_wide_characters_is_located_without_panicking() {
        let text = GOOD.replace(
            r#"url = "/v1/me""#,
            // Parsed, the placeholder starts at byte 9; in the file, byte 9 of the string
            // falls inside the first dash.
            r#"url = "/\u00e9——{nope}""#,
        );
        let found = problems(&text);
        assert!(found[0].contains("unknown variable \"nope\""), "{found:?}");
        assert!(found[0].starts_with("16:"), "{found:?}");
    }

    #[test]
    fn every_truncation_of_a_definition_is_refused_or_accepted_without_panicking() {
        let boundaries = (0..=GOOD.len()).filter(|&i| GOOD.is_char_boundary(i));
        for i in boundaries {
            let _ = check(&GOOD[..i]);
        }
        let template = "/v1/{resource}/x?a={window.start:%Y-%m-%d}&b={{lit}}";
        for i in (0..=template.len()).filter(|&i| template.is_char_boundary(i)) {
            let _ = Template::parse(&template[..i]);
        }
    }

    /// GOOD with its stream read through an asynchronous report job.
    fn with_job(job: &str) -> String {
        GOOD.replace(
            r#"request = { url = "/v1/{resource}/insights?since={window.first_day}&until={window.last_day}" }"#,
            r#"request = { url = "/v1/{job}/rows" }"#,
        )
        .replace("[limits]", &format!("[streams.job]\n{job}\n[limits]"))
    }

    const JOB: &str = r#"create = { method = "POST", url = "/v1/{resource}/reports?since={window.first_day}" }
id = "/id"
poll = { url = "/v1/reports/{job}" }
status = "/status"
done = ["DONE"]
failed = ["FAILED"]
pending = ["PENDING"]"#;

    #[test]
    fn a_report_job_is_checked_like_the_rest() {
        let ok = check(&with_job(JOB)).unwrap_or_else(|p| panic!("{p:#?}"));
        assert!(ok.streams[0].job.is_some());
        let cases = [
            (
                GOOD.replace("until={window.last_day}", "until={window.last_day}&j={job}"),
                "this stream has no [streams.job]",
            ),
            (
                with_job(&JOB.replace("/v1/reports/{job}", "/v1/reports")),
                "a job's poll must name the job it asks about",
            ),
            (
                with_job(&JOB.replace("/v1/{resource}/reports?", "/v1/{job}/reports?")),
                "a report job's creation runs before any page or job id and cannot use {job}",
            ),
            (
                with_job(&JOB.replace(r#"pending = ["PENDING"]"#, r#"pending = ["DONE"]"#)),
                "status value \"DONE\" is in more than one of done, failed, pending and empty",
            ),
            (
                with_job(&format!("{JOB}\npoll_for = \"2h\"")),
                "poll_for is longer than max_wait",
            ),
            (
                with_job(&format!("{JOB}\nmax_wait = \"3d\"")),
                "is not between 10ms and 24h",
            ),
        ];
        for (text, words) in cases {
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.contains(words)),
                "{words}: {found:#?}"
            );
        }
    }

    #[test]
    fn a_resource_probe_that_names_its_resource_passes() {
        let text = GOOD.replace(
            "account_name = \"/name\"\n",
            "account_name = \"/name\"\n[probe.resource_request]\nurl = \"/v1/{resource}?fields=id\"\n",
        );
        let checked = check(&text).unwrap_or_else(|p| panic!("{p:#?}"));
        assert!(checked.probe.resource_request.is_some());
    }

    #[test]
    fn what_would_fail_at_run_time_is_refused_when_checked() {
        let cases = [
            (
                GOOD.replace("&until={window.last_day}", "&after={cursor}"),
                "{cursor} has no value with this stream's pagination",
            ),
            (
                GOOD.replace(
                    r#"request = { url = "/v1/"#,
                    r#"max_pages = 0
request = { url = "/v1/"#,
                ),
                "max_pages and max_response_bytes must be at least 1",
            ),
            (
                GOOD.replace(
                    r#"request = { url = "/v1/"#,
                    r#"request = { headers = { "Bad Header" = "x" }, url = "/v1/"#,
                ),
                "is not a header name",
            ),
            (
                GOOD.replace(r#"{ url = "/v1/{resource}"#, r#"{ url = "v1/{resource}"#),
                "neither a URL nor a path",
            ),
            (
                GOOD.replace(r#"url = "/v1/me""#, r#"url = "/v1/{resource}/me""#),
                "cannot use {resource}",
            ),
            (
                GOOD.replace(
                    "account_name = \"/name\"\n",
                    "account_name = \"/name\"\n[probe.resource_request]\nurl = \"/v1/accounts\"\n",
                ),
                "a resource probe must name the resource it asks about",
            ),
            (
                GOOD.replace(
                    "account_name = \"/name\"\n",
                    "account_name = \"/name\"\n[probe.resource_request]\nurl = \"/v1/{resource}?day={window.first_day}\"\n",
                ),
                "a resource probe runs outside any window or page and cannot use {window.first_day}",
            ),
        ];
        for (text, words) in cases {
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.contains(words)),
                "{words}: {found:#?}"
            );
        }
    }

    #[test]
    fn a_probe_cannot_name_window_variables() {
        let found =
            problems(&GOOD.replace(r#"url = "/v1/me""#, r#"url = "/v1/me?d={window.start}""#));
        assert!(
            found[0].contains("probe.request.url") && found[0].contains("outside any window"),
            "{found:?}"
        );
    }

    #[test]
    fn a_listing_paged_by_a_token_sends_it_as_cursor_and_pages_one_way_only() {
        let listing = |request: &str, paging: &str| {
            GOOD.replace(
                "[[streams]]",
                &format!("[resources]\nrequest = {{ url = \"{request}\" }}\nitems = \"/elements\"\n{paging}\n\n[[streams]]"),
            )
        };
        let good = listing(
            "/v1/accounts?pageSize=100&pageToken={cursor}",
            "cursor = \"/metadata/nextPageToken\"",
        );
        assert!(check(&good).is_ok(), "{:#?}", check(&good).err());
        for (text, expected) in [
            (
                listing("/v1/accounts?pageToken={cursor}", ""),
                "{cursor} in the resource listing needs resources.cursor",
            ),
            (
                listing("/v1/accounts", "cursor = \"/metadata/nextPageToken\""),
                "its request never sends it",
            ),
            (
                listing(
                    "/v1/accounts?pageToken={cursor}",
                    "cursor = \"/metadata/nextPageToken\"\nnext = \"/paging/next\"",
                ),
                "not both",
            ),
            (
                listing("/v1/accounts/{cursor}", "cursor = \"/next\""),
                "the resource listing cannot be rendered",
            ),
            (listing("/v1/accounts?page={page}", ""), "cannot use {page}"),
        ] {
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{expected}: {found:?}"
            );
        }
    }

    #[test]
    fn nested_rows_shifted_days_resource_tokens_children_defaults_and_usage_headers_are_checked() {
        let nested = GOOD.replace(
            "records = \"/data\"\n",
            "records = \"/data\"\nrows_in = \"/values\"\n",
        );
        let with_fields = |fields: &str| {
            nested.replace(
                r#"  { name = "date", type = "date", pointer = "/date_start" },
  { name = "campaign_id", type = "text" },"#,
                fields,
            )
        };
        let good = with_fields(
            r#"  { name = "date", type = "date", pointer = "/end_time", shift_days = -1 },
  { name = "campaign_id", type = "text", pointer = "/name", parent = true },"#,
        );
        assert!(check(&good).is_ok(), "{:#?}", check(&good).err());
        let listed = GOOD.replace(
            "[[streams]]",
            "[resources]\nrequest = { url = \"/v1/me/pages\" }\nitems = \"/data\"\ntoken = \"/access_token\"\n\n[settings.metrics]\ndescription = \"metrics\"\ndefault = \"a,b\"\n\n[[streams]]",
        );
        assert!(check(&listed).is_ok(), "{:#?}", check(&listed).err());
        let with_children = listed.replace(
            "token = \"/access_token\"",
            "[resources.children]\nrequest = { url = \"/v1/{resource}/clients\" }\nitems = \"/*/results\"",
        );
        assert!(
            check(&with_children).is_ok(),
            "{:#?}",
            check(&with_children).err()
        );
        let cases = [
            (
                GOOD.replace(
                    r#"{ name = "campaign_id", type = "text" }"#,
                    r#"{ name = "campaign_id", type = "text", parent = true }"#,
                ),
                "this stream has no rows_in",
            ),
            (
                with_fields(
                    r#"  { name = "date", type = "date", pointer = "/end_time", shift_days = 40 },
  { name = "campaign_id", type = "text" },"#,
                ),
                "40 days is out of range",
            ),
            (
                with_fields(
                    r#"  { name = "date", type = "date", pointer = "/end_time" },
  { name = "campaign_id", type = "text", shift_days = 1 },"#,
                ),
                "is not of type date",
            ),
            (
                nested.replace("rows_in = \"/values\"", "rows_in = \"values\""),
                "rows_in",
            ),
            (
                nested
                    .replace("records = \"/data\"\n", "format = \"csv\"\n")
                    .replace(
                        r#"pagination = { kind = "next_url", pointer = "/paging/next" }"#,
                        "",
                    ),
                "this stream's answers are not one",
            ),
            (
                listed
                    .replace(
                        "kind = \"oauth2\"",
                        "kind = \"api_key\"\nin = \"header\"\nname = \"X-Key\"",
                    )
                    .replace(
                        "authorize_url = \"https://acme.example/oauth/authorize\"\n",
                        "",
                    )
                    .replace("token_url = \"https://acme.example/oauth/token\"\n", "")
                    .replace("rotating_refresh_tokens = true\n", "")
                    .replace("lifetimes = { access = \"1h\", refresh = \"90d\" }\n", "")
                    .replace("scopes = [\"ads_read\"]\n", ""),
                "this definition's auth is not oauth2",
            ),
            (
                listed.replace(
                    "token = \"/access_token\"",
                    "[resources.children]\nrequest = { url = \"/v1/me/pages/all\" }",
                ),
                "the listing under a resource must name the resource it asks about",
            ),
            (
                GOOD.replace(
                    "requests = \"200/1h\"",
                    "requests = \"200/1h\"\nslow_down_at = 101\n[[limits.usage]]\nheader = \"x usage\"\npointer = \"/*/pct\"",
                ),
                "101 is not a percentage from 1 to 100",
            ),
            (
                GOOD.replace(
                    "requests = \"200/1h\"",
                    "requests = \"200/1h\"\n[[limits.usage]]\nheader = \"x usage\"\npointer = \"/*/pct\"",
                ),
                "\"x usage\" is not an HTTP header name",
            ),
            (
                GOOD.replace(
                    "requests = \"200/1h\"",
                    "requests = \"200/1h\"\n[[limits.usage]]\nheader = \"x-usage\"\npointer = \"pct\"",
                ),
                "limits.usage[0].pointer",
            ),
        ];
        for (text, words) in cases {
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.contains(words)),
                "{words}: {found:#?}"
            );
        }
    }
}
