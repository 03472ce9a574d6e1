//! OAuth2 authorization code + PKCE (S256) and refresh, over our own HTTP client so that each
//! provider's classifier sees the raw status, headers and body, and so that "sent but no
//! answer" is told apart from "not sent".

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use gapless_core::{Failure, FailureCause, ReauthReason};
use gapless_vault::{AccessToken, ClientSecret, RefreshToken};
use sha2::{Digest, Sha256};

use crate::http::Answer;

/// The longest access-token lifetime accepted from a token response (10 years). Anything
/// longer is treated as a malformed answer, not as "never expires".
const MAX_LIFETIME_SECS: i64 = 10 * 365 * 86_400;

/// Tokens from a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

/// Why a token call did not produce tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The provider answered with an error (classified).
    #[error("the token endpoint refused: {0}")]
    Refused(Failure),
    /// The provider answered something unusable (HTML from a proxy, missing fields, a
    /// redirect, an absurd lifetime).
    #[error("the token endpoint answered something unusable: {0}")]
    Unusable(String),
    /// The request never reached the provider; nothing was spent.
    #[error("the token endpoint could not be reached: {0}")]
    NotSent(String),
    /// The request was sent but no answer came back: a refresh token may have been spent.
    #[error("the token request was sent but no answer arrived: {0}")]
    UnknownOutcome(String),
    /// Building the request failed locally.
    #[error("{0}")]
    Local(String),
}

impl TokenError {
    /// The failure to record for this error.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Refused(f) => f.clone(),
            Self::Unusable(m) => Failure::new(FailureCause::Transient)
                .with_code("unusable_token_response")
                .with_message(m.clone()),
            Self::NotSent(m) => Failure::new(FailureCause::Transient)
                .with_code("unreachable")
                .with_message(m.clone()),
            Self::UnknownOutcome(m) => Failure::new(FailureCause::Transient)
                .with_code("unknown_outcome")
                .with_message(m.clone()),
            Self::Local(m) => Failure::new(FailureCause::Transient).with_message(m.clone()),
        }
    }
}

/// The largest token endpoint answer read.
const MAX_TOKEN_ANSWER_BYTES: u64 = 256 * 1024;

/// A client's OAuth2 configuration.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub authorize_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub options: OAuthOptions,
}

/// How a provider's OAuth2 differs from the common case.
#[derive(Debug, Clone)]
pub struct OAuthOptions {
    /// Joins the scopes in the consent URL (`" "` by RFC 6749; some use `","`).
    pub scope_separator: String,
    /// Send a PKCE S256 challenge (and the verifier at the exchange).
    pub pkce: bool,
    /// The client id and secret in the form body instead of HTTP basic.
    pub client_secret_in_body: bool,
    pub authorize_params: Vec<(String, String)>,
    pub token_params: Vec<(String, String)>,
    /// The consent URL carries RFC 6749's parameters (`response_type`, `client_id`,
    /// `scope`; PKCE's challenge). False for a consent page of its own kind (Amazon Seller
    /// Central's): only `redirect_uri`, `state` and `authorize_params`, and no PKCE.
    pub standard_consent: bool,
    /// Token requests as a JSON object instead of a form (TikTok's).
    pub json_token_request: bool,
    /// Token request fields under the vendor's names: (RFC 6749 name, vendor name), e.g.
    /// `("client_id", "app_id")`.
    pub token_field_names: Vec<(String, String)>,
    /// JSON pointer to the object holding the token fields in a token answer (`/data` in
    /// TikTok's envelope); see [`parse_token_answer_at`] for an answer without one.
    pub token_answer: Option<String>,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        Self {
            scope_separator: " ".into(),
            pkce: true,
            client_secret_in_body: false,
            authorize_params: vec![],
            token_params: vec![],
            standard_consent: true,
            json_token_request: false,
            token_field_names: vec![],
            token_answer: None,
        }
    }
}

impl OAuthOptions {
    /// Whether PKCE is used: only with a standard consent, which carries the challenge.
    fn uses_pkce(&self) -> bool {
        self.pkce && self.standard_consent
    }
}

/// A prepared consent request: send the person to `url`, keep `state` and `verifier`.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub url: String,
    pub state: String,
    /// The PKCE verifier (a secret until the code exchange).
    pub verifier: String,
}

fn random_urlsafe(bytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|_| TokenError::Local("the random number generator failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// The S256 challenge of a PKCE verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// How a provider turns a token endpoint error answer into a failure.
pub type TokenClassifier<'a> = &'a (dyn Fn(&Answer) -> Failure + Send + Sync);

impl OAuthClient {
    /// A consent URL with a fresh 256-bit `state` and PKCE verifier.
    pub fn authorization_request(
        &self,
        redirect_uri: &str,
        scopes: &[String],
    ) -> Result<AuthorizationRequest, TokenError> {
        let state = random_urlsafe(32)?;
        let verifier = random_urlsafe(48)?;
        let mut url = url::Url::parse(&self.authorize_url)
            .map_err(|e| TokenError::Local(format!("authorize URL is invalid: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if self.options.standard_consent {
                query
                    .append_pair("response_type", "code")
                    .append_pair("client_id", &self.client_id)
                    .append_pair("scope", &scopes.join(&self.options.scope_separator));
            }
            query
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("state", &state);
            if self.options.uses_pkce() {
                query
                    .append_pair("code_challenge", &pkce_challenge(&verifier))
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in &self.options.authorize_params {
                query.append_pair(name, value);
            }
        }
        Ok(AuthorizationRequest {
            url: url.into(),
            state,
            verifier,
        })
    }

    /// Exchange an authorization code.
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        classify: TokenClassifier<'_>,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if self.options.uses_pkce() {
            form.push(("code_verifier", verifier));
        }
        self.token_call(http, classify, &form, now).await
    }

    /// The client-credentials grant.
    pub async fn client_credentials(
        &self,
        http: &reqwest::Client,
        classify: TokenClassifier<'_>,
        scopes: &[String],
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let scope = scopes.join(&self.options.scope_separator);
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        self.token_call(http, classify, &form, now).await
    }

    /// Spend a refresh token.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        classify: TokenClassifier<'_>,
        refresh_token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        self.token_call(http, classify, &form, now).await
    }

    /// Trade a token for another at the token endpoint with a vendor's own grant (Meta's
    /// `fb_exchange_token`: a short-lived user token for a long-lived one): `grant_type`,
    /// the token in the form field `param`, the client authenticated as for every call.
    pub async fn exchange_token(
        &self,
        http: &reqwest::Client,
        classify: TokenClassifier<'_>,
        grant_type: &str,
        param: &str,
        token: &AccessToken,
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let form = [("grant_type", grant_type), (param, token.expose_secret())];
        self.token_call(http, classify, &form, now).await
    }

    async fn token_call(
        &self,
        http: &reqwest::Client,
        classify: TokenClassifier<'_>,
        form: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> Result<TokenSet, TokenError> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        for (name, value) in &self.options.token_params {
            fields.push((name, value));
        }
        let request = http
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json");
        let (request, client_fields) = self.authenticated(request);
        let client_fields: Vec<(&str, &str)> = client_fields
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        fields.extend(client_fields);
        let renamed = |name: &str| -> String {
            self.options
                .token_field_names
                .iter()
                .find(|(from, _)| from == name)
                .map_or_else(|| name.to_string(), |(_, to)| to.clone())
        };
        let fields: Vec<(String, &str)> = fields
            .into_iter()
            .map(|(name, value)| (renamed(name), value))
            .collect();
        let sent = if self.options.json_token_request {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(name, value)| (name, serde_json::Value::String(value.to_string())))
                .collect();
            request.json(&object).send().await
        } else {
            request.form(&fields).send().await
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_builder() => {
                return Err(TokenError::NotSent(describe(&e)));
            }
            Err(e) => return Err(TokenError::UnknownOutcome(describe(&e))),
        };
        let answer = Answer::read_limited(response, MAX_TOKEN_ANSWER_BYTES)
            .await
            .map_err(|e| TokenError::UnknownOutcome(describe(&e)))?
            .ok_or_else(|| {
                TokenError::Unusable(format!(
                    "the answer is larger than {MAX_TOKEN_ANSWER_BYTES} bytes"
                ))
            })?;
        parse_token_answer_at(&answer, classify, now, self.options.token_answer.as_deref())
    }
}

impl OAuthClient {
    /// The client's authentication on `request`: HTTP Basic with the id and secret each
    /// form-urlencoded first (RFC 6749 §2.3.1), or the two as form fields to add.
    fn authenticated(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (reqwest::RequestBuilder, Vec<(&'static str, String)>) {
        if self.options.client_secret_in_body {
            return (
                request,
                vec![
                    ("client_id", self.client_id.clone()),
                    (
                        "client_secret",
                        self.client_secret.expose_secret().to_string(),
                    ),
                ],
            );
        }
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        (
            request.basic_auth(
                encode(&self.client_id),
                Some(encode(self.client_secret.expose_secret())),
            ),
            vec![],
        )
    }

    /// Revoke `token` at `revoke_url` (RFC 7009): the provider forgets the grant. Ok when it
    /// answered 200.
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        revoke_url: &str,
        token: &str,
        hint: &str,
    ) -> Result<(), TokenError> {
        let request = http
            .post(revoke_url)
            .header(reqwest::header::ACCEPT, "application/json");
        let (request, client_fields) = self.authenticated(request);
        let mut fields: Vec<(&str, &str)> = vec![("token", token), ("token_type_hint", hint)];
        fields.extend(client_fields.iter().map(|(k, v)| (*k, v.as_str())));
        let response = request
            .form(&fields)
            .send()
            .await
            .map_err(|e| TokenError::NotSent(describe(&e)))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        Err(TokenError::Refused(
            Failure::new(if status >= 500 {
                FailureCause::Transient
            } else {
                FailureCause::ReauthRequired {
                    reason: gapless_core::ReauthReason::InvalidGrant,
                }
            })
            .with_code(format!("http_{status}"))
            .with_message("the revocation endpoint refused"),
        ))
    }
}

/// A reqwest error without the URL (which can carry a token in its query).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

/// Interpret a token endpoint's answer.
pub fn parse_token_answer(
    answer: &Answer,
    classify: TokenClassifier<'_>,
    now: DateTime<Utc>,
) -> Result<TokenSet, TokenError> {
    parse_token_answer_at(answer, classify, now, None)
}

/// Like [`parse_token_answer`], with the token fields in the object at `within` (a
/// vendor's envelope). An answer without a token there is refused when the vendor's rules
/// name an error in it (TikTok answers errors with HTTP 200 and an empty `data`), else it
/// is unusable, its body not quoted.
pub fn parse_token_answer_at(
    answer: &Answer,
    classify: TokenClassifier<'_>,
    now: DateTime<Utc>,
    within: Option<&str>,
) -> Result<TokenSet, TokenError> {
    let json = successful_json(answer, classify)?;
    let json = match within {
        None => json,
        Some(pointer) => enveloped(answer, classify, &json, pointer)?,
    };
    token_set(&json, now)
}

/// The JSON of a token endpoint's successful answer; an error answer refused as
/// `classify` reads it, a redirect or a body that is not JSON unusable.
fn successful_json(
    answer: &Answer,
    classify: TokenClassifier<'_>,
) -> Result<serde_json::Value, TokenError> {
    if (300..400).contains(&answer.status) {
        return Err(TokenError::Unusable(format!(
            "HTTP {} redirect; token requests are never followed to another address",
            answer.status
        )));
    }
    let json = answer.json();
    let has_error_field = json.as_ref().is_some_and(|j| j.get("error").is_some());
    if answer.status >= 400 || has_error_field {
        if json.is_none() && answer.status >= 500 {
            return Err(TokenError::Refused(
                Failure::new(FailureCause::Transient)
                    .with_code(format!("http_{}", answer.status))
                    .with_message(answer.excerpt()),
            ));
        }
        return Err(TokenError::Refused(classify(answer)));
    }
    // A successful answer's body is never quoted: it may hold tokens in another shape.
    json.ok_or_else(|| {
        TokenError::Unusable(format!(
            "HTTP {} with a body that is not JSON ({}, {} bytes)",
            answer.status,
            if answer.content_type.is_empty() {
                "no content type"
            } else {
                answer.content_type.as_str()
            },
            answer.body.len()
        ))
    })
}

/// The token object at `pointer` of a vendor's envelope. An error in the envelope is
/// refused as the vendor's table reads it; an answer that says nothing usable is unusable
/// (an unknown outcome for a refresh: its refresh token may be spent). Its body is never
/// quoted: it may hold tokens in another shape.
fn enveloped(
    answer: &Answer,
    classify: TokenClassifier<'_>,
    json: &serde_json::Value,
    pointer: &str,
) -> Result<serde_json::Value, TokenError> {
    if let Some(inner) = json.pointer(pointer)
        && inner.get("access_token").is_some_and(|t| t.is_string())
    {
        return Ok(inner.clone());
    }
    let failure = classify(answer);
    let named = failure
        .provider_code
        .as_deref()
        .is_some_and(|c| !c.starts_with("http_") && c != "malformed_response");
    if failure.cause == FailureCause::Transient && !named {
        return Err(TokenError::Unusable(format!(
            "HTTP {} without a token at {pointer}",
            answer.status
        )));
    }
    Err(TokenError::Refused(failure))
}

/// The tokens of a token object (RFC 6749 §5.1): the access token, the refresh token, their
/// lifetimes (seconds, bounded) counted from `now`, and the scope.
fn token_set(json: &serde_json::Value, now: DateTime<Utc>) -> Result<TokenSet, TokenError> {
    let access_token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| TokenError::Unusable("the answer lacks access_token".into()))?;
    let lifetime = |field: &str| -> Result<Option<DateTime<Utc>>, TokenError> {
        match json.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => {
                let secs = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        TokenError::Unusable(format!("{field} is not a number of seconds"))
                    })?;
                if secs <= 0 || secs > MAX_LIFETIME_SECS {
                    return Err(TokenError::Unusable(format!(
                        "{field} of {secs} seconds is not a plausible lifetime"
                    )));
                }
                Ok(Some(
                    now.checked_add_signed(Duration::seconds(secs))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                ))
            }
        }
    };
    let access_expires_at = lifetime("expires_in")?;
    let refresh_expires_at = lifetime("refresh_token_expires_in")?;
    let refresh_token = json
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .map(|v| RefreshToken::new(v.to_string()));
    let scopes = json
        .get("scope")
        .and_then(|v| v.as_str())
        .map(split_scopes)
        .unwrap_or_default();
    Ok(TokenSet {
        access_token: AccessToken::new(access_token.to_string()),
        refresh_token,
        access_expires_at,
        refresh_expires_at,
        scopes,
    })
}

/// A token endpoint's error answer as RFC 6749 §5.2 shapes it: `error`, and
/// `error_description` for humans. Vendors' classifiers read their own extra fields
/// beside it and fall back to [`TokenErrorBody::cause`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenErrorBody {
    /// The `error` code; empty when the answer had none.
    pub error: String,
    pub description: Option<String>,
}

impl TokenErrorBody {
    pub fn read(answer: &Answer) -> Self {
        let json = answer.json();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        Self {
            error: field("error").unwrap_or_default(),
            description: field("error_description"),
        }
    }

    /// The cause of a registered error code that says what to do (RFC 6749 §5.2's
    /// `invalid_grant`, `invalid_client`, `unauthorized_client`, `invalid_scope`, and the
    /// three of §4.1.2.1 that token endpoints answer too); None for any other, including
    /// `invalid_request` and `unsupported_grant_type`, which the status decides.
    pub fn registered_cause(&self) -> Option<FailureCause> {
        Some(match self.error.as_str() {
            "invalid_grant" => FailureCause::reauth(ReauthReason::InvalidGrant),
            "invalid_client" | "unauthorized_client" => FailureCause::AppNotApproved,
            "invalid_scope" | "access_denied" => FailureCause::PermissionLost,
            "temporarily_unavailable" | "server_error" => FailureCause::Transient,
            _ => return None,
        })
    }

    /// The cause of a token endpoint's status when no registered code says more: 429
    /// throttled, 5xx transient, any other refusal a grant that no longer works (a person is
    /// told, it is not retried for ever).
    pub fn status_cause(answer: &Answer) -> FailureCause {
        match answer.status {
            429 => FailureCause::rate_limited(answer.retry_after),
            500..=599 => FailureCause::Transient,
            _ => FailureCause::reauth(ReauthReason::InvalidGrant),
        }
    }

    /// [`TokenErrorBody::registered_cause`], else [`TokenErrorBody::status_cause`]; a
    /// transient code answered with 429 is throttling, and keeps its Retry-After.
    pub fn cause(&self, answer: &Answer) -> FailureCause {
        match self.registered_cause() {
            Some(FailureCause::Transient) if answer.status == 429 => {
                FailureCause::rate_limited(answer.retry_after)
            }
            Some(cause) => cause,
            None => Self::status_cause(answer),
        }
    }

    /// The code to record: the `error` (with a vendor's `detail` after a slash when
    /// given), or the HTTP status when the answer had no `error`.
    pub fn code(&self, answer: &Answer, detail: Option<&str>) -> String {
        match (self.error.as_str(), detail) {
            ("", _) => format!("http_{}", answer.status),
            (error, Some(detail)) => format!("{error}/{detail}"),
            (error, None) => error.to_string(),
        }
    }

    /// The failure with `cause`: the code as [`TokenErrorBody::code`] without detail, the
    /// description (or an excerpt of the answer) as its message.
    pub fn failure(&self, answer: &Answer, cause: FailureCause) -> Failure {
        Failure::new(cause)
            .with_code(self.code(answer, None))
            .with_message(self.message(answer))
    }

    /// The description, or an excerpt of the answer when there is none.
    pub fn message(&self, answer: &Answer) -> String {
        self.description.clone().unwrap_or_else(|| answer.excerpt())
    }
}

/// Scopes as a provider writes them in one text: separated by spaces (RFC 6749) or by
/// commas (Meta, …).
pub fn split_scopes(text: &str) -> Vec<String> {
    text.split([' ', ','])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn answer(status: u16, body: &str) -> Answer {
        crate::http::test_answer(status, body, None)
    }

    #[test]
    fn a_token_error_is_read_by_its_registered_code_else_by_its_status() {
        let cases = [
            (
                400,
                r#"{"error":"invalid_grant"}"#,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "invalid_grant",
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                FailureCause::AppNotApproved,
                "invalid_client",
            ),
            (
                400,
                r#"{"error":"access_denied"}"#,
                FailureCause::PermissionLost,
                "access_denied",
            ),
            (
                503,
                r#"{"error":"temporarily_unavailable"}"#,
                FailureCause::Transient,
                "temporarily_unavailable",
            ),
            // No registered code: the status decides, and a refusal is never "retry for ever".
            (
                400,
                r#"{"error":"vendor_specific"}"#,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "vendor_specific",
            ),
            (
                400,
                "<html>Bad Request</html>",
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "http_400",
            ),
            (
                429,
                "slow down",
                FailureCause::rate_limited(None),
                "http_429",
            ),
            (
                429,
                r#"{"error":"temporarily_unavailable"}"#,
                FailureCause::rate_limited(None),
                "temporarily_unavailable",
            ),
            (502, "bad gateway", FailureCause::Transient, "http_502"),
        ];
        for (status, body, cause, code) in cases {
            let answer = answer(status, body);
            let read = TokenErrorBody::read(&answer);
            let failure = read.failure(&answer, read.cause(&answer));
            assert_eq!(
                (failure.cause, failure.provider_code.as_deref()),
                (cause, Some(code)),
                "{status} {body}"
            );
        }
        let answer = answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        );
        let read = TokenErrorBody::read(&answer);
        assert_eq!(read.code(&answer, Some("467")), "invalid_grant/467");
        assert_eq!(read.message(&answer), "Token has been expired or revoked.");
    }

    fn classify(_: &Answer) -> Failure {
        Failure::new(FailureCause::ReauthRequired {
            reason: gapless_core::ReauthReason::InvalidGrant,
        })
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_good_answer_gives_tokens_with_expiry() {
        let t = parse_token_answer(
            &answer(
                200,
                r#"{"access_token":"a","refresh_token":"r","expires_in":3600,"scope":"x y"}"#,
            ),
            &classify,
            now(),
        )
        .unwrap();
        assert_eq!(t.access_expires_at, Some(now() + Duration::hours(1)));
        assert_eq!(t.scopes, vec!["x", "y"]);
        assert!(t.refresh_token.is_some());
    }

    #[test]
    fn an_html_page_from_a_proxy_is_unusable_not_a_panic() {
        let mut a = answer(200, "<html><body>Bad gateway</body></html>");
        a.content_type = "text/html".into();
        let err = parse_token_answer(&a, &classify, now()).unwrap_err();
        assert!(
            matches!(err, TokenError::Unusable(ref m) if m.contains("text/html")),
            "{err}"
        );
        let err =
            parse_token_answer(&answer(502, "<html>gateway</html>"), &classify, now()).unwrap_err();
        assert_eq!(err.failure().cause, FailureCause::Transient);
    }

    #[test]
    fn missing_or_absurd_fields_are_unusable() {
        for body in [
            r#"{"token_type":"bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":99999999999}"#,
            r#"{"access_token":"a","expires_in":"soon"}"#,
        ] {
            let err = parse_token_answer(&answer(200, body), &classify, now()).unwrap_err();
            assert!(matches!(err, TokenError::Unusable(_)), "{body}: {err}");
        }
        // No expires_in is a real case: unknown expiry, not an error.
        let t =
            parse_token_answer(&answer(200, r#"{"access_token":"a"}"#), &classify, now()).unwrap();
        assert_eq!(t.access_expires_at, None);
    }

    #[test]
    fn redirects_and_error_bodies_are_refused() {
        let err = parse_token_answer(&answer(302, ""), &classify, now()).unwrap_err();
        assert!(matches!(err, TokenError::Unusable(ref m) if m.contains("redirect")));
        // HTTP 200 carrying an error body is an error.
        let err = parse_token_answer(
            &answer(200, r#"{"error":"invalid_grant"}"#),
            &classify,
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, TokenError::Refused(_)));
    }

    #[test]
    fn pkce_challenge_is_unpadded_base64url_of_sha256() {
        // Reference value computed independently with Python's hashlib and base64.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ92K9qpgrJX_aUcpkXYxTR7iEiVaM"),
            "oBYSTG2MBWmz15d0M8kU1U4XdGVNykqCRf8Ouv_UxXU"
        );
    }
}
