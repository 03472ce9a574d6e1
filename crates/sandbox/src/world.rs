//! The sandbox's state: users, ad accounts, OAuth clients, grants, tokens and faults, with
//! the rules that decide every answer. HTTP handlers in `oauth`, `api` and `admin` only
//! translate between this and the wire.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Lifetimes and limits of the emulated platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Access token lifetime in seconds.
    pub access_token_ttl_secs: i64,
    /// Refresh token lifetime in seconds (None: until revoked).
    pub refresh_token_ttl_secs: Option<i64>,
    /// Refresh tokens are single use: each refresh returns a new one.
    pub rotate_refresh_tokens: bool,
    /// The refresh-token lifetime counts from the first consent and does not slide on
    /// refresh (as LinkedIn's 365 days do); otherwise each new refresh token gets it anew.
    #[serde(default)]
    pub refresh_lifetime_from_grant: bool,
    /// How far back the report endpoint serves data, in days.
    pub lookback_days: i64,
    /// Refuse a range as soon as the start of its first day is older than the lookback (as
    /// some providers do) instead of serving a day until the lookback has passed since its
    /// end.
    #[serde(default)]
    pub lookback_from_start: bool,
    /// How long after a day ends its conversions keep being restated, in seconds.
    pub restatement_secs: i64,
    /// Rows per page when the request does not say.
    pub default_page_size: usize,
    /// Campaigns of every ad account, i.e. report rows per account and day (None: 2 to 4,
    /// fixed per account); at most [`crate::report::MAX_CAMPAIGNS`].
    #[serde(default)]
    pub campaigns_per_account: Option<u32>,
}

impl SandboxConfig {
    /// The retention a connector must declare to match this sandbox's report endpoint.
    pub fn retention(&self) -> Option<gapless_core::Retention> {
        let lookback = chrono::Duration::try_days(self.lookback_days)?;
        let from = if self.lookback_from_start {
            gapless_core::CountedFrom::Start
        } else {
            gapless_core::CountedFrom::End
        };
        gapless_core::Retention::new(
            lookback,
            from,
            gapless_core::Retention::default_margin(lookback),
        )
        .ok()
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3_600,
            refresh_token_ttl_secs: Some(90 * 86_400),
            rotate_refresh_tokens: true,
            refresh_lifetime_from_grant: false,
            lookback_days: 37 * 30,
            lookback_from_start: false,
            restatement_secs: 2 * 86_400,
            default_page_size: 2,
            campaigns_per_account: None,
        }
    }
}

/// A fault an operator or a test injects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// The user removes the app: every grant of the user is revoked (190/458).
    RevokeApp { user: String },
    /// The user removes the app from one connection: the grant `refresh_token` belongs to
    /// is revoked, the user's other grants stay (190/458).
    RevokeGrantOf { refresh_token: String },
    /// The user changes their password: every grant of the user dies (190/460).
    ChangePassword { user: String, new_password: String },
    /// The account is checkpointed until the user logs in at the provider (190/459).
    LockAccount { user: String },
    /// The user logs in at the provider and clears the checkpoint.
    UnlockAccount { user: String },
    /// The user loses access to an ad account (code 200).
    RemoveFromAdAccount { user: String, account: String },
    /// The user gets access to an ad account again.
    AddToAdAccount { user: String, account: String },
    /// A scope is withdrawn from the user's grants (code 10).
    DropScope { user: String, scope: String },
    /// The user keeps the ad account (it is still listed by `/me`) but loses the
    /// permission to read its reports: report requests answer 403 with code 10.
    DenyReports { user: String, account: String },
    /// The report permission of `DenyReports` comes back.
    AllowReports { user: String, account: String },
    /// The user's access tokens expire now (190/463 until refreshed).
    ExpireTokensNow { user: String },
    /// The next `count` API calls are throttled: HTTP 429, `Retry-After`, and the Graph
    /// code `code` (4 app, 17 user, 613 ad account).
    RateLimit {
        count: u32,
        retry_after_secs: u64,
        code: u32,
    },
    /// The next `count` API calls fail with HTTP 500 and code 2.
    ServerError { count: u32 },
    /// The next `count` token requests fail with HTTP 503 before being processed.
    TokenServerError { count: u32 },
    /// The next `count` token requests are processed (a refresh token is spent and rotated)
    /// but the answer is replaced by an HTML error page, as a misbehaving proxy would.
    TokenAnswerLost { count: u32 },
    /// The next `count` API calls answer after `delay_ms` milliseconds.
    Slow { count: u32, delay_ms: u64 },
    /// The next `count` API calls answer 200 with a body that is not the documented shape.
    MalformedResponse { count: u32 },
    /// The client's secret is rotated at the platform: the old one is refused
    /// (`invalid_client`).
    RotateClientSecret { client: String, new_secret: String },
    /// Every API key of the user stops working (code 190, HTTP 401).
    RevokeApiKeys { user: String },
    /// Forget every pending counted fault.
    Clear,
}

/// A Graph-shaped error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub http_status: u16,
    pub code: u32,
    pub subcode: Option<u32>,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl GraphError {
    fn new(http_status: u16, code: u32, subcode: Option<u32>, message: &str) -> Self {
        Self {
            http_status,
            code,
            subcode,
            message: message.to_string(),
            retry_after_secs: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "message": self.message,
            "type": if self.code == 190 || self.code == 102 { "OAuthException" } else { "GraphMethodException" },
            "code": self.code,
            "fbtrace_id": "sandbox",
        });
        if let (Some(sub), Some(obj)) = (self.subcode, error.as_object_mut()) {
            obj.insert("error_subcode".into(), sub.into());
        }
        serde_json::json!({ "error": error })
    }
}

/// An RFC 6749 token endpoint error, with the platform's subcode where it knows the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub http_status: u16,
    pub error: &'static str,
    pub description: String,
    pub subcode: Option<u32>,
}

impl TokenError {
    fn grant(description: &str, subcode: Option<u32>) -> Self {
        Self {
            http_status: 400,
            error: "invalid_grant",
            description: description.to_string(),
            subcode,
        }
    }

    fn request(description: &str) -> Self {
        Self {
            http_status: 400,
            error: "invalid_request",
            description: description.to_string(),
            subcode: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        if let (Some(sub), Some(obj)) = (self.subcode, body.as_object_mut()) {
            obj.insert("error_subcode".into(), sub.into());
        }
        body
    }
}

/// A successful token response.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in: Option<i64>,
    pub scope: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantEnd {
    Revoked,
    PasswordChanged,
    RefreshReused,
    RevokedByClient,
}

impl GrantEnd {
    fn subcode(self) -> u32 {
        match self {
            Self::Revoked | Self::RevokedByClient => 458,
            Self::PasswordChanged => 460,
            Self::RefreshReused => 467,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Revoked => "The user has not authorized application.",
            Self::PasswordChanged => {
                "The session has been invalidated because the user changed their password."
            }
            Self::RefreshReused => {
                "A refresh token was used twice; the grant was revoked as a precaution."
            }
            Self::RevokedByClient => "The grant was revoked by the application.",
        }
    }
}

#[derive(Debug)]
struct User {
    id: String,
    name: String,
    password: String,
    locked: bool,
}

#[derive(Debug)]
struct Client {
    secret: String,
    /// The user a client-credentials token acts as (a service account), if any.
    service_user: Option<String>,
}

#[derive(Debug)]
struct Grant {
    created_at: DateTime<Utc>,
    user: String,
    client_id: String,
    scopes: BTreeSet<String>,
    ended: Option<GrantEnd>,
}

#[derive(Debug)]
struct AccessRecord {
    grant: u64,
    expires_at: DateTime<Utc>,
}

#[derive(Debug)]
struct RefreshRecord {
    grant: u64,
    expires_at: Option<DateTime<Utc>>,
    spent: bool,
}

#[derive(Debug)]
struct AuthCode {
    grant: u64,
    redirect_uri: String,
    challenge: String,
    expires_at: DateTime<Utc>,
    used: bool,
}

/// Counters a test can read to check the client's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub token_requests: u64,
    pub refreshes: u64,
    /// Spent refresh tokens presented again (each revoked its grant).
    pub refresh_reuse: u64,
    pub api_requests: u64,
    /// API calls made with an access token past its expiry.
    pub expired_token_calls: u64,
    pub probe_requests: u64,
    pub report_requests: u64,
    /// Report ranges served from their first page, by `grant/account/since/until` (the
    /// grant of the access token, `key` for an API key): a client that asks for one range
    /// twice shows a count above one.
    pub report_ranges: BTreeMap<String, u64>,
    /// Report requests refused because their range began past the report's retention.
    pub refused_past_retention: u64,
    /// Tokens revoked by the client (RFC 7009).
    pub client_revocations: u64,
}

#[derive(Debug, Default)]
struct Counted {
    rate_limit: Option<(u32, u64, u32)>,
    server_error: u32,
    token_server_error: u32,
    token_answer_lost: u32,
    slow: Option<(u32, u64)>,
    malformed: u32,
}

/// A submitted consent form.
#[derive(Debug, Clone, Copy)]
pub struct ConsentRequest<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub scopes: &'a str,
    pub redirect_uri: &'a str,
    /// The PKCE S256 code challenge.
    pub challenge: &'a str,
}

/// What the API must do before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiGate {
    Proceed { delay_ms: u64 },
    Fail(GraphError),
    Malformed,
}

/// Who a valid access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub user_id: String,
    pub user_name: String,
    pub scopes: BTreeSet<String>,
    pub expires_at: DateTime<Utc>,
    /// The consent the access token belongs to (None for an API key).
    pub grant: Option<u64>,
}

/// The emulated platform.
#[derive(Debug)]
pub struct World {
    pub config: SandboxConfig,
    users: BTreeMap<String, User>,
    clients: BTreeMap<String, Client>,
    accounts: BTreeMap<String, (String, BTreeSet<String>)>,
    grants: HashMap<u64, Grant>,
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    /// Access tokens a client revoked (no longer in `access`), for [`World::issued_tokens`].
    revoked_access: Vec<String>,
    codes: HashMap<String, AuthCode>,
    /// API keys: key → (user, revoked).
    api_keys: HashMap<String, (String, bool)>,
    /// (user, ad account) pairs whose reports are refused while the account stays listed.
    reports_denied: BTreeSet<(String, String)>,
    counted: Counted,
    next_grant: u64,
    pub stats: Stats,
}

/// The demo world's OAuth client.
pub const DEMO_CLIENT_ID: &str = "gapless-demo";
/// The demo world's client secret (the sandbox is a local emulator; this is not a secret).
pub const DEMO_CLIENT_SECRET: &str = "sandbox-client-secret";
/// The demo world's user.
pub const DEMO_USER: &str = "ana@example.com";
/// The demo world's user's password.
pub const DEMO_PASSWORD: &str = "correct horse battery staple";
/// The service account the demo client's client-credentials tokens act as.
pub const DEMO_SERVICE_USER: &str = "reporting-service@example.com";
/// The demo world's ad account.
pub const DEMO_AD_ACCOUNT: &str = "act_1001";
/// The scopes the platform knows.
pub const SCOPES: &[&str] = &["ads_read", "ads_management", "business_management"];

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    // Without the OS random number generator the emulator cannot issue unguessable tokens.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl World {
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            config,
            users: BTreeMap::new(),
            clients: BTreeMap::new(),
            accounts: BTreeMap::new(),
            grants: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_access: Vec::new(),
            codes: HashMap::new(),
            api_keys: HashMap::new(),
            reports_denied: BTreeSet::new(),
            counted: Counted::default(),
            next_grant: 1,
            stats: Stats::default(),
        }
    }

    /// A world with one client, one user and two ad accounts.
    pub fn demo(config: SandboxConfig) -> Self {
        let mut world = Self::new(config);
        world.add_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
        world.add_user(DEMO_USER, "Ana Example", DEMO_PASSWORD);
        world.add_user("ben@example.com", "Ben Example", "hunter2 hunter2");
        world.add_user(
            DEMO_SERVICE_USER,
            "Reporting Service",
            "not used: a service account",
        );
        if let Some(client) = world.clients.get_mut(DEMO_CLIENT_ID) {
            client.service_user = Some(DEMO_SERVICE_USER.to_string());
        }
        world.add_ad_account(
            DEMO_AD_ACCOUNT,
            "Acme Shoes EU",
            &[DEMO_USER, DEMO_SERVICE_USER],
        );
        world.add_ad_account("act_1002", "Acme Shoes US", &[DEMO_USER, "ben@example.com"]);
        world
    }

    pub fn add_client(&mut self, id: &str, secret: &str) {
        self.clients.insert(
            id.to_string(),
            Client {
                secret: secret.to_string(),
                service_user: None,
            },
        );
    }

    pub fn add_user(&mut self, username: &str, name: &str, password: &str) {
        let id = format!("u_{}", 100 + self.users.len());
        self.users.insert(
            username.to_string(),
            User {
                id,
                name: name.to_string(),
                password: password.to_string(),
                locked: false,
            },
        );
    }

    pub fn add_ad_account(&mut self, id: &str, name: &str, users: &[&str]) {
        self.accounts.insert(
            id.to_string(),
            (
                name.to_string(),
                users.iter().map(|u| u.to_string()).collect(),
            ),
        );
    }

    fn user_mut(&mut self, user: &str) -> Result<&mut User, String> {
        self.users
            .get_mut(user)
            .ok_or_else(|| format!("unknown user {user:?}"))
    }

    fn end_grants_of(&mut self, user: &str, end: GrantEnd) {
        for grant in self.grants.values_mut() {
            if grant.user == user && grant.ended.is_none() {
                grant.ended = Some(end);
            }
        }
    }

    /// Apply a fault. Unknown users or accounts are an error naming them.
    // Long by design: one arm per fault, each a few lines of the world changed.
    pub fn apply_fault(&mut self, fault: Fault, now: DateTime<Utc>) -> Result<(), String> {
        match fault {
            Fault::RevokeApp { user } => {
                self.user_mut(&user)?;
                self.end_grants_of(&user, GrantEnd::Revoked);
            }
            Fault::RevokeGrantOf { refresh_token } => {
                let grant = self
                    .refresh
                    .get(&refresh_token)
                    .map(|r| r.grant)
                    .ok_or_else(|| "no grant has this refresh token".to_string())?;
                if let Some(g) = self.grants.get_mut(&grant) {
                    g.ended = Some(GrantEnd::Revoked);
                }
            }
            Fault::ChangePassword { user, new_password } => {
                if new_password.is_empty() {
                    return Err("new_password must not be empty".into());
                }
                self.user_mut(&user)?.password = new_password;
                self.end_grants_of(&user, GrantEnd::PasswordChanged);
            }
            Fault::LockAccount { user } => self.user_mut(&user)?.locked = true,
            Fault::UnlockAccount { user } => self.user_mut(&user)?.locked = false,
            Fault::RemoveFromAdAccount { user, account } => {
                self.user_mut(&user)?;
                let (_, users) = self
                    .accounts
                    .get_mut(&account)
                    .ok_or_else(|| format!("unknown ad account {account:?}"))?;
                users.remove(&user);
            }
            Fault::DenyReports { user, account } => {
                self.user_mut(&user)?;
                self.reports_denied.insert((user, account));
            }
            Fault::AllowReports { user, account } => {
                self.reports_denied.remove(&(user, account));
            }
            Fault::AddToAdAccount { user, account } => {
                self.user_mut(&user)?;
                let (_, users) = self
                    .accounts
                    .get_mut(&account)
                    .ok_or_else(|| format!("unknown ad account {account:?}"))?;
                users.insert(user);
            }
            Fault::DropScope { user, scope } => {
                self.user_mut(&user)?;
                for grant in self.grants.values_mut().filter(|g| g.user == user) {
                    grant.scopes.remove(&scope);
                }
            }
            Fault::ExpireTokensNow { user } => {
                self.user_mut(&user)?;
                let grants: BTreeSet<u64> = self
                    .grants
                    .iter()
                    .filter(|(_, g)| g.user == user)
                    .map(|(id, _)| *id)
                    .collect();
                for record in self.access.values_mut() {
                    if grants.contains(&record.grant) {
                        record.expires_at = record.expires_at.min(now);
                    }
                }
            }
            Fault::RateLimit {
                count,
                retry_after_secs,
                code,
            } => {
                if ![4, 17, 32, 613].contains(&code) {
                    return Err(format!(
                        "rate limit code {code} is not one of the platform's (4, 17, 32, 613)"
                    ));
                }
                self.counted.rate_limit = Some((count, retry_after_secs, code));
            }
            Fault::ServerError { count } => self.counted.server_error = count,
            Fault::TokenServerError { count } => self.counted.token_server_error = count,
            Fault::TokenAnswerLost { count } => self.counted.token_answer_lost = count,
            Fault::Slow { count, delay_ms } => self.counted.slow = Some((count, delay_ms)),
            Fault::MalformedResponse { count } => self.counted.malformed = count,
            Fault::RotateClientSecret { client, new_secret } => {
                let found = self
                    .clients
                    .get_mut(&client)
                    .ok_or_else(|| format!("unknown client {client:?}"))?;
                found.secret = new_secret;
            }
            Fault::RevokeApiKeys { user } => {
                self.user_mut(&user)?;
                for (owner, revoked) in self.api_keys.values_mut() {
                    if *owner == user {
                        *revoked = true;
                    }
                }
            }
            Fault::Clear => self.counted = Counted::default(),
        }
        Ok(())
    }

    /// Check a login at the consent page and create an authorization code.
    pub fn authorize(
        &mut self,
        request: &ConsentRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<String, String> {
        let ConsentRequest {
            client_id,
            username,
            password,
            scopes,
            redirect_uri,
            challenge,
        } = *request;
        if !self.clients.contains_key(client_id) {
            return Err(format!("unknown client_id {client_id:?}"));
        }
        if challenge.is_empty() {
            return Err("code_challenge (PKCE S256) is required".into());
        }
        let user = self
            .users
            .get(username)
            .filter(|u| u.password == password)
            .ok_or("wrong username or password")?;
        if user.locked {
            return Err(
                "this account is locked for security reasons: log in at the platform to unlock it"
                    .into(),
            );
        }
        let scopes: BTreeSet<String> = scopes
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(format!("unknown scope {bad:?}"));
        }
        let grant = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(
            grant,
            Grant {
                created_at: now,
                user: username.to_string(),
                client_id: client_id.to_string(),
                scopes,
                ended: None,
            },
        );
        let code = random_token("code_");
        self.codes.insert(
            code.clone(),
            AuthCode {
                grant,
                redirect_uri: redirect_uri.to_string(),
                challenge: challenge.to_string(),
                expires_at: now + Duration::minutes(10),
                used: false,
            },
        );
        Ok(code)
    }

    fn check_client(&self, client_id: &str, client_secret: &str) -> Result<(), TokenError> {
        match self.clients.get(client_id) {
            Some(c) if c.secret == client_secret => Ok(()),
            _ => Err(TokenError {
                http_status: 401,
                error: "invalid_client",
                description: "client authentication failed".into(),
                subcode: None,
            }),
        }
    }

    /// Counted token-endpoint fault, if one is pending.
    pub fn token_gate(&mut self) -> Option<TokenError> {
        self.stats.token_requests += 1;
        if self.counted.token_server_error > 0 {
            self.counted.token_server_error -= 1;
            return Some(TokenError {
                http_status: 503,
                error: "temporarily_unavailable",
                description: "the token service is temporarily unavailable".into(),
                subcode: None,
            });
        }
        None
    }

    fn issue(&mut self, grant: u64, now: DateTime<Utc>, with_refresh: bool) -> TokenResponse {
        let access_token = random_token("EAA");
        let ttl = self.config.access_token_ttl_secs;
        self.access.insert(
            access_token.clone(),
            AccessRecord {
                grant,
                expires_at: now + Duration::seconds(ttl),
            },
        );
        let from = if self.config.refresh_lifetime_from_grant {
            self.grants.get(&grant).map_or(now, |g| g.created_at)
        } else {
            now
        };
        let refresh_expires_at = self
            .config
            .refresh_token_ttl_secs
            .map(|s| from + Duration::seconds(s));
        let refresh_token = with_refresh.then(|| {
            let token = random_token("rt_");
            self.refresh.insert(
                token.clone(),
                RefreshRecord {
                    grant,
                    expires_at: refresh_expires_at,
                    spent: false,
                },
            );
            token
        });
        let scope = self
            .grants
            .get(&grant)
            .map(|g| g.scopes.iter().cloned().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        TokenResponse {
            access_token,
            token_type: "bearer",
            expires_in: ttl,
            refresh_token,
            refresh_token_expires_in: refresh_expires_at
                .map(|at| (at - now).num_seconds().max(1))
                .filter(|_| with_refresh),
            scope,
        }
    }

    fn grant_problem(&self, grant: u64) -> Option<TokenError> {
        let Some(g) = self.grants.get(&grant) else {
            return Some(TokenError::grant("unknown grant", None));
        };
        if let Some(end) = g.ended {
            return Some(TokenError::grant(end.message(), Some(end.subcode())));
        }
        if self.users.get(&g.user).is_some_and(|u| u.locked) {
            return Some(TokenError::grant(
                "The user's account is checkpointed: they must log in at the platform.",
                Some(459),
            ));
        }
        None
    }

    /// `grant_type=authorization_code`.
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        client_secret: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, TokenError> {
        self.check_client(client_id, client_secret)?;
        let record = self
            .codes
            .get_mut(code)
            .ok_or_else(|| TokenError::grant("unknown authorization code", None))?;
        if record.used {
            let grant = record.grant;
            if let Some(g) = self.grants.get_mut(&grant) {
                g.ended = Some(GrantEnd::RevokedByClient);
            }
            return Err(TokenError::grant(
                "authorization code already used; the grant was revoked",
                None,
            ));
        }
        record.used = true;
        if record.expires_at <= now {
            return Err(TokenError::grant("authorization code expired", None));
        }
        if record.redirect_uri != redirect_uri {
            return Err(TokenError::grant(
                "redirect_uri does not match the authorization request",
                None,
            ));
        }
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if verifier.is_empty() || computed != record.challenge {
            return Err(TokenError::grant("PKCE verification failed", None));
        }
        let grant = record.grant;
        if self.grants.get(&grant).map(|g| g.client_id.as_str()) != Some(client_id) {
            return Err(TokenError::grant("code was issued to another client", None));
        }
        if let Some(problem) = self.grant_problem(grant) {
            return Err(problem);
        }
        Ok(self.issue(grant, now, true))
    }

    /// `grant_type=client_credentials`: a token for the client's service account, no
    /// refresh token.
    pub fn client_credentials(
        &mut self,
        client_id: &str,
        client_secret: &str,
        scopes: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, TokenError> {
        self.check_client(client_id, client_secret)?;
        let Some(user) = self
            .clients
            .get(client_id)
            .and_then(|c| c.service_user.clone())
        else {
            return Err(TokenError {
                http_status: 400,
                error: "unauthorized_client",
                description: "this client may not use the client_credentials grant".into(),
                subcode: None,
            });
        };
        let mut granted: BTreeSet<String> = scopes
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if granted.is_empty() {
            granted = SCOPES.iter().map(|s| s.to_string()).collect();
        }
        if let Some(bad) = granted.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(TokenError {
                http_status: 400,
                error: "invalid_scope",
                description: format!("unknown scope {bad:?}"),
                subcode: None,
            });
        }
        let grant = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(
            grant,
            Grant {
                created_at: now,
                user,
                client_id: client_id.to_string(),
                scopes: granted,
                ended: None,
            },
        );
        Ok(self.issue(grant, now, false))
    }

    /// `grant_type=refresh_token`. A spent token presented again revokes the whole grant.
    pub fn refresh(
        &mut self,
        client_id: &str,
        client_secret: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, TokenError> {
        self.check_client(client_id, client_secret)?;
        if token.is_empty() {
            return Err(TokenError::request("refresh_token is required"));
        }
        self.stats.refreshes += 1;
        let record = self
            .refresh
            .get_mut(token)
            .ok_or_else(|| TokenError::grant("unknown refresh token", None))?;
        let grant = record.grant;
        if record.spent {
            self.stats.refresh_reuse += 1;
            if let Some(g) = self.grants.get_mut(&grant) {
                g.ended = Some(GrantEnd::RefreshReused);
            }
            return Err(TokenError::grant(
                GrantEnd::RefreshReused.message(),
                Some(GrantEnd::RefreshReused.subcode()),
            ));
        }
        if record.expires_at.is_some_and(|e| e <= now) {
            return Err(TokenError::grant("refresh token expired", Some(463)));
        }
        let grant = record.grant;
        if self.grants.get(&grant).map(|g| g.client_id.as_str()) != Some(client_id) {
            return Err(TokenError::grant(
                "token was issued to another client",
                None,
            ));
        }
        if let Some(problem) = self.grant_problem(grant) {
            return Err(problem);
        }
        let rotate = self.config.rotate_refresh_tokens;
        if rotate && let Some(record) = self.refresh.get_mut(token) {
            record.spent = true;
        }
        let mut response = self.issue(grant, now, rotate);
        if !rotate {
            response.refresh_token = None;
        }
        Ok(response)
    }

    /// RFC 7009 revocation: revoking a refresh token ends its grant; revoking an access
    /// token ends that token. Unknown tokens are accepted silently, as the RFC says.
    pub fn revoke(&mut self, token: &str) {
        self.stats.client_revocations += 1;
        if let Some(record) = self.refresh.get(token)
            && let Some(g) = self.grants.get_mut(&record.grant)
        {
            g.ended = Some(GrantEnd::RevokedByClient);
        }
        if self.access.remove(token).is_some() {
            self.revoked_access.push(token.to_string());
        }
    }

    /// Every access and refresh token issued so far, revoked, spent and expired ones too:
    /// what must never appear in a client's output or logs.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.access
            .keys()
            .chain(self.refresh.keys())
            .chain(&self.revoked_access)
            .cloned()
            .collect()
    }

    /// Should this processed token answer be replaced by an HTML page? (counted down)
    pub fn lose_token_answer(&mut self) -> bool {
        if self.counted.token_answer_lost > 0 {
            self.counted.token_answer_lost -= 1;
            return true;
        }
        false
    }

    /// Faults that apply to every API call, counted down.
    pub fn api_gate(&mut self) -> ApiGate {
        self.stats.api_requests += 1;
        if let Some((count, retry_after, code)) = self.counted.rate_limit {
            self.counted.rate_limit = (count > 1).then(|| (count - 1, retry_after, code));
            if count > 0 {
                let message = match code {
                    4 => "Application request limit reached",
                    17 => "User request limit reached",
                    32 => "Page request limit reached",
                    _ => "There have been too many calls to this ad-account.",
                };
                let subcode = match code {
                    17 => Some(2_446_079),
                    613 => Some(1_487_742),
                    _ => None,
                };
                let mut error = GraphError::new(429, code, subcode, message);
                error.retry_after_secs = Some(retry_after);
                return ApiGate::Fail(error);
            }
        }
        if self.counted.server_error > 0 {
            self.counted.server_error -= 1;
            return ApiGate::Fail(GraphError::new(
                500,
                2,
                None,
                "An unexpected error has occurred. Please retry your request later.",
            ));
        }
        if self.counted.malformed > 0 {
            self.counted.malformed -= 1;
            return ApiGate::Malformed;
        }
        let mut delay_ms = 0;
        if let Some((count, delay)) = self.counted.slow {
            self.counted.slow = (count > 1).then(|| (count - 1, delay));
            if count > 0 {
                delay_ms = delay;
            }
        }
        ApiGate::Proceed { delay_ms }
    }

    /// Issue an API key for `user` (reading reports with every scope).
    pub fn issue_api_key(&mut self, user: &str) -> Result<String, String> {
        self.user_mut(user)?;
        let key = random_token("sk_");
        self.api_keys.insert(key.clone(), (user.to_string(), false));
        Ok(key)
    }

    /// Authenticate an API call made with an API key.
    pub fn key_caller(&mut self, key: &str, now: DateTime<Utc>) -> Result<Caller, GraphError> {
        let invalid = || GraphError::new(401, 190, None, "Invalid API key");
        let (user, revoked) = self.api_keys.get(key).cloned().ok_or_else(invalid)?;
        if revoked {
            return Err(invalid());
        }
        let record = self.users.get(&user).ok_or_else(invalid)?;
        if record.locked {
            return Err(GraphError::new(
                403,
                190,
                Some(459),
                "You cannot access the app till you log in to the platform and follow the instructions given.",
            ));
        }
        Ok(Caller {
            user: user.clone(),
            user_id: record.id.clone(),
            user_name: record.name.clone(),
            scopes: SCOPES.iter().map(|s| s.to_string()).collect(),
            expires_at: now + Duration::days(36_500),
            grant: None,
        })
    }

    /// Authenticate an API call.
    pub fn caller(&mut self, token: &str, now: DateTime<Utc>) -> Result<Caller, GraphError> {
        let invalid = || {
            GraphError::new(
                400,
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            )
        };
        let record = self.access.get(token).ok_or_else(invalid)?;
        let grant = self.grants.get(&record.grant).ok_or_else(invalid)?;
        let user = self.users.get(&grant.user).ok_or_else(invalid)?;
        if let Some(end) = grant.ended {
            return Err(GraphError::new(
                400,
                190,
                Some(end.subcode()),
                &format!("Error validating access token: {}", end.message()),
            ));
        }
        if user.locked {
            return Err(GraphError::new(
                400,
                190,
                Some(459),
                "Error validating access token: You cannot access the app till you log in to the platform and follow the instructions given.",
            ));
        }
        if record.expires_at <= now {
            self.stats.expired_token_calls += 1;
            return Err(GraphError::new(
                400,
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            ));
        }
        Ok(Caller {
            user: grant.user.clone(),
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            scopes: grant.scopes.clone(),
            expires_at: record.expires_at,
            grant: Some(record.grant),
        })
    }

    /// The ad accounts a user can read.
    pub fn accounts_of(&self, user: &str) -> Vec<(String, String)> {
        self.accounts
            .iter()
            .filter(|(_, (_, users))| users.contains(user))
            .map(|(id, (name, _))| (id.clone(), name.clone()))
            .collect()
    }

    /// Check that `caller` may read `account`'s reports.
    pub fn authorize_report(&self, caller: &Caller, account: &str) -> Result<(), GraphError> {
        if !caller.scopes.contains("ads_read") {
            return Err(GraphError::new(
                403,
                10,
                None,
                "(#10) Application does not have permission for this action: ads_read is not granted",
            ));
        }
        match self.accounts.get(account) {
            None => Err(GraphError::new(
                400,
                100,
                Some(33),
                "Unsupported get request. Object does not exist, cannot be loaded due to missing permissions, or does not support this operation",
            )),
            Some((_, users)) if !users.contains(&caller.user) => Err(GraphError::new(
                403,
                200,
                None,
                "(#200) User does not have permission on this ad account",
            )),
            Some(_)
                if self
                    .reports_denied
                    .contains(&(caller.user.clone(), account.to_string())) =>
            {
                Err(GraphError::new(
                    403,
                    10,
                    None,
                    "(#10) insufficient_scope: the user may not read reports of this ad account",
                ))
            }
            Some(_) => Ok(()),
        }
    }
}
