//! The provider definition format (TOML), as read. Values that need checking beyond their
//! type keep their place in the file (`Spanned`) so that a problem names its line; the
//! checks themselves are in [`super::check`]. See `docs/providers.md` for the annotated
//! format.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One provider definition file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub provider: ProviderSection,
    pub auth: Auth,
    pub probe: Probe,
    /// A request that lists the resources an identity can read, when the probe's answer
    /// does not.
    pub resources: Option<Resources>,
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    #[serde(default)]
    pub streams: Vec<Stream>,
    #[serde(default)]
    pub limits: Limits,
    /// Settings an installation supplies under `[providers.NAME.settings]`, used in
    /// templates as `{settings.NAME}`.
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
    /// The provider's other regions (`[regions.NAME]`): the same API at other hosts. The
    /// URLs of `[provider]` and `[auth]` are the region `provider.region`; an installation
    /// picks another with `region = "NAME"` under `[providers.NAME]`.
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
}

/// Where the provider lives in one region: its base URL, and the auth URLs that differ
/// there (those left out are the definition's own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// What people read, e.g. "Europe (UK, FR, DE, …)".
    pub description: String,
    pub base_url: Spanned<String>,
    pub authorize_url: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub revoke_url: Option<Spanned<String>>,
}

/// A region an installation asked for that the definition does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} has no region {asked:?} (it has: {known})")]
pub struct UnknownRegion {
    pub provider: String,
    pub asked: String,
    pub known: String,
}

impl Definition {
    /// The regions an installation may pick: the definition's own first.
    pub fn region_names(&self) -> Vec<String> {
        self.provider
            .region
            .iter()
            .cloned()
            .chain(self.regions.keys().cloned())
            .collect()
    }

    /// This definition in `region`: its base URL and auth URLs replaced by the region's.
    /// The definition's own region (`provider.region`) changes nothing.
    pub fn in_region(mut self, region: &str) -> Result<Self, UnknownRegion> {
        if self.provider.region.as_deref() == Some(region) {
            return Ok(self);
        }
        let Some(r) = self.regions.get(region).cloned() else {
            return Err(UnknownRegion {
                provider: self.provider.name.get_ref().clone(),
                asked: region.to_string(),
                known: match self.region_names() {
                    names if names.is_empty() => "none".to_string(),
                    names => names.join(", "),
                },
            });
        };
        self.provider.base_url = r.base_url;
        for (slot, value) in [
            (&mut self.auth.authorize_url, r.authorize_url),
            (&mut self.auth.token_url, r.token_url),
            (&mut self.auth.revoke_url, r.revoke_url),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        Ok(self)
    }

    /// This definition under another provider name: one definition configured twice (a
    /// provider in two regions, two OAuth applications), each with its own identities.
    pub fn renamed(mut self, name: &str) -> Self {
        let span = self.provider.name.span();
        self.provider.name = Spanned::new(span, name.to_string());
        self
    }
}

/// A setting the provider's requests need from the installation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// What it is and where to find it, for the error when it is missing.
    pub description: String,
    /// A missing required setting is a start-up error; an optional one left unset is
    /// absent in templates (its parameter or header left out, `null` in JSON).
    #[serde(default = "yes")]
    pub required: bool,
    /// A secret: never shown (`provider show` says only whether it is set).
    #[serde(default)]
    pub secret: bool,
    /// The value when the installation gives none (values a vendor changes, such as the
    /// metrics a report asks for): such a setting is never missing.
    pub default: Option<String>,
    /// Each identity gives its own value when it is connected (a Shopify shop): one
    /// installation reaches many. The installation's value, if it gives one, is what an
    /// identity that gives none uses; a required one missing in both refuses the identity.
    /// Never a secret (it is kept with the identity, in the clear).
    #[serde(default)]
    pub per_identity: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Registry name: lowercase letters, digits and `_`.
    pub name: Spanned<String>,
    pub display_name: String,
    /// Where relative request URLs point; an installation may override it.
    pub base_url: Spanned<String>,
    /// A vendor's error table in Rust, tried after the definition's own rules and before
    /// the defaults (`meta_graph`, `google_ads`, `amazon`, `shopify`, `tiktok`,
    /// `microsoft`).
    pub classifier: Option<super::classifier::NamedClassifier>,
    /// The name of the region the URLs of `[provider]` and `[auth]` are in, when the
    /// definition has `[regions]` (e.g. "na").
    pub region: Option<String>,
}

/// How gapless authenticates. Which fields apply depends on `kind` (checked by
/// [`super::check`]): `oauth2` (authorization code; a person consents) needs
/// `authorize_url` and `token_url`; `oauth2_client_credentials` (the application's own
/// token) needs `token_url`; `api_key` needs `in` and `name`; `basic` needs nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub kind: Spanned<AuthKind>,
    pub authorize_url: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub revoke_url: Option<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "space")]
    pub scope_separator: String,
    #[serde(default = "yes")]
    pub pkce: bool,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    /// Each refresh returns a new refresh token and spends the old one.
    #[serde(default)]
    pub rotating_refresh_tokens: bool,
    #[serde(default)]
    pub lifetimes: Lifetimes,
    /// API key: a `header` or a `query` parameter.
    #[serde(rename = "in")]
    pub location: Option<KeyLocation>,
    /// After the code exchange, the token is traded at the token endpoint for another
    /// with a vendor's own grant (Meta's short-lived user token for a long-lived one).
    pub exchange: Option<TokenExchange>,
    /// The consent's standard parameters (`response_type`, `client_id`, `scope`, PKCE):
    /// false for a consent page that takes its own (Amazon Seller Central's
    /// `application_id`); then only `redirect_uri`, `state` and `authorize_params` are sent.
    #[serde(default = "yes")]
    pub standard_consent: bool,
    /// The consent redirect's parameter holding the code (default `code`).
    pub callback_code: Option<String>,
    /// A consent redirect's parameter naming the upstream account (Seller Central's
    /// `selling_partner_id`): the identity's account where the probe cannot say it.
    pub callback_account: Option<String>,
    /// A consent redirect's parameter holding the provider's signature of the redirect
    /// (Shopify's `hmac`): the hex HMAC-SHA256, keyed with the client secret, of the other
    /// parameters as `name=value` pairs sorted by name and joined with `&`. Checked before
    /// the code is exchanged; a redirect without it, or with another, is refused.
    pub callback_hmac: Option<String>,
    /// How token requests are sent: `form` (RFC 6749, the default) or `json`.
    #[serde(default)]
    pub token_request: TokenRequestFormat,
    /// Token request fields under the vendor's names, by RFC 6749 name
    /// (`{ client_id = "app_id", code = "auth_code" }`).
    #[serde(default)]
    pub token_fields: BTreeMap<String, String>,
    /// JSON pointer to the token fields in a token answer (`/data`): where a vendor wraps
    /// them in an envelope.
    pub token_answer: Option<Spanned<String>>,
    /// OAuth: the header carrying the access token (default `Authorization`) and what
    /// precedes the token in it (default `"Bearer "`).
    pub token_header: Option<String>,
    pub token_prefix: Option<String>,
    /// API key: the header or parameter name.
    pub name: Option<String>,
    /// API key: put before the key, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
}

/// How token requests are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRequestFormat {
    #[default]
    Form,
    Json,
}

/// The token request fields a definition may rename.
pub const TOKEN_FIELDS: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
];

/// A token exchange after consent: `grant_type` and the form field the token goes in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    pub grant_type: Spanned<String>,
    pub token_param: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Oauth2,
    Oauth2ClientCredentials,
    ApiKey,
    Basic,
}

fn space() -> String {
    " ".into()
}

fn yes() -> bool {
    true
}

/// How the OAuth client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP basic with the client id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    Header,
    Query,
}

/// Known lifetimes, as durations (`"1h"`, `"60d"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetimes {
    pub access: Option<Spanned<String>>,
    pub refresh: Option<Spanned<String>>,
    /// The whole authorization (e.g. 365 days).
    pub authorization: Option<Spanned<String>>,
}

/// A request: method, URL template, headers and an optional body template (JSON, or a
/// form with `body_format = "form"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "get")]
    pub method: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: Option<Spanned<String>>,
    #[serde(default)]
    pub body_format: BodyFormat,
}

/// How a request body is written. Its media type is sent unless the request's headers name
/// one (`Content-Type`), e.g. a vendor's own JSON type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// A JSON text (`application/json`); values are escaped as JSON string content.
    #[default]
    Json,
    /// `name=value&…` (`application/x-www-form-urlencoded`); values are percent-encoded.
    Form,
}

fn get() -> Spanned<String> {
    Spanned::new(0..0, "GET".into())
}

/// Who am I: the cheap request and where its answer says what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub request: Request,
    /// JSON pointers into the answer. The account id may be left out only where the
    /// consent's redirect names the account (`auth.callback_account`).
    pub account_id: Option<Spanned<String>>,
    pub account_name: Option<Spanned<String>>,
    pub scopes: Option<Spanned<String>>,
    pub expires_at: Option<Spanned<String>>,
    /// The array of resources (e.g. ad accounts) the credential can read, and inside each
    /// its id and name (default `/id` and `/name`): pipelines' resources are checked
    /// against it.
    pub resources: Option<Spanned<String>>,
    pub resource_id: Option<Spanned<String>>,
    pub resource_name: Option<Spanned<String>>,
    /// A cheap request about one resource (`{resource}` in it), sent by each probe for
    /// every resource a pipeline of the identity reads: an error answer (classified like
    /// any other) means that resource is no longer reachable, even while the who-am-I
    /// request works (an admin removed from a Page, an ad account unassigned).
    pub resource_request: Option<Request>,
}

/// The resources (ad accounts, customers, shops…) an identity can read: a request, where
/// its answer lists them, and the next page's URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub request: Request,
    /// JSON pointer to the array of resources (the whole answer when absent). An item may
    /// be a plain string or number (its own id and name).
    pub items: Option<Spanned<String>>,
    /// Inside each item: its id (default `/id`) and name (default `/name`).
    pub id: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    /// JSON pointer to the next page's URL (one page when absent).
    pub next: Option<Spanned<String>>,
    /// JSON pointer to the next page's token, which the next page's request takes as
    /// `{cursor}` (LinkedIn's `/metadata/nextPageToken` into `pageToken={cursor}`); the
    /// first page goes without it. One page when the answer has none.
    pub cursor: Option<Spanned<String>>,
    /// A prefix the listing writes before each id and requests do not take
    /// (`"customers/"` for `customers/1234567890`): removed.
    pub id_prefix: Option<String>,
    #[serde(default = "hundred")]
    pub max_pages: u32,
    /// Inside each item: an access token for that resource alone (a Facebook Page's
    /// token, given to the person's own token). When set, requests about a resource (its
    /// streams, report jobs and resource probe) are sent with it, taken from a fresh
    /// listing each time and never stored; a resource the listing no longer gives, or
    /// gives without a token, is `permission_lost` for it.
    pub token: Option<Spanned<String>>,
    /// The resources under each listed one (a manager account's clients), asked of each.
    pub children: Option<Children>,
}

/// A request about one listed resource (`{resource}`) that lists the resources under it:
/// each is listed with that resource as its parent. A resource that refuses (not a
/// manager, suspended) has none; a listing refused for another reason fails as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Children {
    pub request: Request,
    /// JSON pointer to the items (`*` steps gather them from every batch of a streamed
    /// answer: `/*/results`); id and name inside each as for the listing.
    pub items: Option<Spanned<String>>,
    pub id: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
}

fn hundred() -> u32 {
    100
}

/// A rule from an answer to a failure cause, tried in order before the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// The HTTP status (any when absent; 200 for "OK with an error body").
    pub status: Option<u16>,
    /// JSON pointers into the body and the value each must hold (all of them), e.g.
    /// `body = { "/error/code" = 190, "/error/error_subcode" = 458 }`; an array means any
    /// of its values: `{ "/error/code" = [4, 17, 613] }`.
    #[serde(default)]
    pub body: BTreeMap<String, toml::Value>,
    /// A header and the value it must hold.
    pub header: Option<String>,
    pub header_equals: Option<String>,
    /// The cause, by its code (`reauth_required/revoked`, `permission_lost`, …).
    pub cause: Spanned<String>,
    /// Where the provider's own code and message are, for the message to people.
    pub code_pointer: Option<Spanned<String>>,
    /// Several places that together make the code, joined by `/` (e.g. a code and a
    /// subcode: `["/error/code", "/error/error_subcode"]` gives `190/458`).
    #[serde(default)]
    pub code_pointers: Vec<String>,
    pub message_pointer: Option<Spanned<String>>,
    /// For `rate_limited`: where the body says how long to wait, in seconds (`30`, or a
    /// duration such as Google's `"30s"` or `"1.5s"`); `Retry-After` otherwise.
    pub retry_after_pointer: Option<Spanned<String>>,
}

/// A report stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub name: Spanned<String>,
    pub request: Request,
    #[serde(default)]
    pub pagination: Pagination,
    /// JSON pointer to the array of records (JSON formats; the whole answer when empty).
    pub records: Option<Spanned<String>>,
    /// JSON pointer, inside each record, to an array whose items are the rows (Page
    /// Insights answers one record per metric with its days in `/values`): fields read
    /// the item, or the record around it when marked `parent = true`.
    pub rows_in: Option<Spanned<String>>,
    /// How the answer is written.
    #[serde(default)]
    pub format: PayloadFormat,
    /// How the answer is compressed (besides any transfer encoding).
    #[serde(default)]
    pub compression: Compression,
    pub fields: Vec<Field>,
    pub primary_key: Vec<Spanned<String>>,
    /// The date field that says which day a record belongs to.
    pub day_field: Option<Spanned<String>>,
    /// The longest range one request may cover (`"31d"`).
    pub max_range: Option<Spanned<String>>,
    /// How far back the provider serves the stream (`"37mo"` is not a unit: `"1110d"`).
    pub lookback: Option<Spanned<String>>,
    /// Where the provider counts the lookback from: `"from_start"` (default: a window is
    /// refused once its start is older than the lookback) or `"from_end"`.
    pub lookback_from: Option<Spanned<String>>,
    /// Stop asking this long before the provider's limit (default: 1 hour, or a tenth of a
    /// shorter lookback).
    pub lookback_margin: Option<Spanned<String>>,
    /// Trailing windows the provider restates.
    #[serde(default)]
    pub settle_windows: u32,
    /// Refuse an answer larger than this many bytes.
    #[serde(default = "ten_megabytes")]
    pub max_response_bytes: u64,
    #[serde(default = "ten_thousand")]
    pub max_pages: u32,
    /// An asynchronous report: the stream's rows come from a job the provider prepares.
    pub job: Option<Job>,
}

/// An asynchronous report job: created by one request, polled until its status is done,
/// then its result read — at a URL its finished status gives (`result_url`), else by the
/// stream's own `request` with `{job}` (its pages as usual).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Creates the job (the window's variables, `{resource}` and settings).
    pub create: Request,
    /// JSON pointer to the job's id in the creation's answer.
    pub id: Spanned<String>,
    /// Asks how the job stands (`{job}`, `{resource}` and settings).
    pub poll: Request,
    /// JSON pointer to the status in the poll's answer.
    pub status: Spanned<String>,
    /// Status values: finished, failed, still being prepared. Any other is refused.
    pub done: Vec<String>,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
    /// Status values of a job that ended without a result because there is nothing to
    /// report (Amazon cancels a report without data): its windows are loaded empty.
    #[serde(default)]
    pub empty: Vec<String>,
    /// JSON pointer to a finished job's result URL. A URL on another origin than the
    /// provider's (a pre-signed storage URL) is fetched without the credential.
    pub result_url: Option<Spanned<String>>,
    /// JSON pointer to a finished job's result id (Amazon's `reportDocumentId`) in the
    /// poll's answer: `{result}` in `result_request`, whose answer then holds `result_url`.
    pub result_id: Option<Spanned<String>>,
    /// Asks where a finished job's result is (`{result}`, `{job}`, `{resource}` and
    /// settings); `result_url` points into its answer.
    pub result_request: Option<Request>,
    /// JSON pointer to a failed job's message, for the reason recorded.
    pub message: Option<Spanned<String>>,
    /// The first wait between polls (default 5s); each next one twice as long, at most
    /// a minute.
    pub poll_every: Option<Spanned<String>>,
    /// How long one run polls before it leaves the windows waiting for the next run
    /// (default 2m): the job is kept and polled again then.
    pub poll_for: Option<Spanned<String>>,
    /// How long a job may take in all (default 1h): one older is abandoned and a new one
    /// asked for at a later run.
    pub max_wait: Option<Spanned<String>>,
}

fn ten_megabytes() -> u64 {
    10 * 1024 * 1024
}

fn ten_thousand() -> u32 {
    10_000
}

/// The format of a stream's answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON document, records at `records`.
    #[default]
    Json,
    /// A JSON array of batches, each with records at `records` (a streamed search).
    JsonBatches,
    /// One JSON record per line.
    JsonLines,
    /// Comma-separated, with a header row naming the columns.
    Csv,
    /// Tab-separated, with a header row naming the columns.
    Tsv,
}

impl PayloadFormat {
    /// Whether answers are one JSON document (which pagination pointers can look into).
    pub fn is_json_document(self) -> bool {
        self == Self::Json
    }
}

/// How an answer's body is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    /// Gzip when the body starts with gzip's magic bytes, else as it is (Amazon's report
    /// documents are compressed or not as the report type has it).
    Auto,
}

/// One field of a record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// JSON pointer inside the record (default: `/<name>`).
    pub pointer: Option<Spanned<String>>,
    /// With the stream's `rows_in`: read from the record around the row's item.
    #[serde(default)]
    pub parent: bool,
    /// A date field: the day this many days after the one the value names (-31 to 31);
    /// `-1` where the provider stamps a day's value with the instant the day ended (Page
    /// Insights' `end_time`).
    pub shift_days: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    Integer,
    Decimal,
    Date,
}

/// How the next page is found. `next_url` and `cursor` need `pointer` (where the answer
/// holds the next URL or cursor); `cursor` sends it back in `param`; `offset` sends
/// `offset_param` and `limit_param` and stops at an empty page; `page` counts `param` up
/// from `first_page` and stops at an empty page or, with `pointer`, at the number of pages
/// the answer gives; `link_header` follows `Link: <…>; rel="next"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    #[serde(default)]
    pub kind: PaginationKind,
    pub pointer: Option<Spanned<String>>,
    pub param: Option<String>,
    #[serde(default = "offset")]
    pub offset_param: String,
    #[serde(default = "limit")]
    pub limit_param: String,
    pub page_size: Option<u32>,
    /// Cursor pagination: a JSON pointer to a boolean that says whether a next page exists
    /// (GraphQL's `pageInfo.hasNextPage`); false ends the pages.
    pub has_more: Option<Spanned<String>>,
    #[serde(default = "one")]
    pub first_page: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaginationKind {
    /// One page.
    #[default]
    None,
    NextUrl,
    Cursor,
    Offset,
    Page,
    LinkHeader,
}

impl PaginationKind {
    /// Whether a page's answer alone says where the next page is (its rows need not be
    /// counted first).
    pub fn next_from_answer(self) -> bool {
        matches!(self, Self::NextUrl | Self::LinkHeader | Self::Cursor)
    }
}

fn offset() -> String {
    "offset".into()
}

fn limit() -> String {
    "limit".into()
}

fn one() -> u64 {
    1
}

/// Budgets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per interval per upstream account (`"200/1h"`).
    pub requests: Option<Spanned<String>>,
    /// How often a healthy identity is probed (`"1h"`).
    pub probe_every: Option<Spanned<String>>,
    /// How long one report request may take, answer included (default 2 minutes, at most
    /// 1 hour). Token requests keep their own short timeout, well under the refresh lease.
    pub report_timeout: Option<Spanned<String>>,
    /// Headers in which the provider says how much of the account's quota its answers
    /// used (`[[limits.usage]]`): from `slow_down_at` percent, nothing more is asked of the
    /// account until the quota resets, before the provider would refuse.
    #[serde(default)]
    pub usage: Vec<UsageHeader>,
    /// The share of a quota, in percent (1 to 100, default 90), from which the account is
    /// left alone.
    pub slow_down_at: Option<Spanned<u32>>,
}

/// A header holding a JSON document in which the provider says how much of a quota is
/// used (Meta's `x-ad-account-usage: {"acc_id_util_pct": 9.67, "reset_time_duration": 0}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageHeader {
    pub header: Spanned<String>,
    /// JSON pointer to the percentage used (a number, or a string of one). A `*` step
    /// stands for every member or item there (Meta's `x-business-use-case-usage` is keyed
    /// by object id): the highest value counts.
    pub pointer: Spanned<String>,
    /// JSON pointer (with `*` steps too) to the time until the quota resets; 5 minutes when
    /// absent or 0.
    pub reset_pointer: Option<Spanned<String>>,
    /// The unit of that time: `seconds` (default) or `minutes`.
    #[serde(default)]
    pub reset_in: ResetUnit,
}

/// The unit a usage header gives its reset time in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetUnit {
    #[default]
    Seconds,
    Minutes,
}
