//! Signing (sessions, CSRF tokens), bearer tokens, security headers and problem+json.

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use gapless_store::TokenScope;
use hmac::{KeyInit, Mac};
use signing_key::Key;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The signing key: never printed, wiped from memory when dropped.
mod signing_key {
    use zeroize::Zeroize as _;

    #[derive(Clone)]
    pub struct Key(pub(crate) [u8; 32]);

    impl std::fmt::Debug for Key {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Key(<redacted>)")
        }
    }

    impl Drop for Key {
        fn drop(&mut self) {
            self.0.zeroize();
        }
    }
}

/// Signs and checks what the server hands out: session cookies and CSRF tokens.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
}

impl Signer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key: Key(key) }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key.0)
            .expect("HMAC-SHA256 takes keys of any length")
    }

    pub fn sign(&self, data: &str) -> String {
        let mut mac = self.mac();
        mac.update(data.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a signature made by [`Signer::sign`].
    pub fn verify(&self, data: &str, signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(data.as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }

    /// The CSRF token of forms shown in `context` (a session, a reauthorize link).
    pub fn csrf(&self, context: &str) -> String {
        self.sign(&format!("csrf|{context}"))
    }

    pub fn check_csrf(&self, context: &str, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| self.verify(&format!("csrf|{context}"), p))
    }

    /// A session cookie value for an operator signed in with API token `token_id`.
    pub fn session(&self, session: &Session) -> String {
        let data = format!(
            "{}.{}.{}.{}",
            session.token_id,
            session.scope.as_str(),
            session.expires_at.timestamp(),
            session.nonce
        );
        format!("{data}.{}", self.sign(&format!("session|{data}")))
    }

    /// The session a cookie value carries, if it is genuine and not expired at `now`.
    pub fn open_session(&self, value: &str, now: DateTime<Utc>) -> Option<Session> {
        let (data, signature) = value.rsplit_once('.')?;
        if !self.verify(&format!("session|{data}"), signature) {
            return None;
        }
        let mut parts = data.split('.');
        let token_id = parts.next()?.to_string();
        let scope = TokenScope::parse(parts.next()?)?;
        let expires_at = DateTime::from_timestamp(parts.next()?.parse().ok()?, 0)?;
        let nonce = parts.next()?.to_string();
        (expires_at > now).then_some(Session {
            token_id,
            scope,
            expires_at,
            nonce,
        })
    }
}

/// A signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token_id: String,
    pub scope: TokenScope,
    pub expires_at: DateTime<Utc>,
    /// Random per sign-in: the CSRF context of the session's forms.
    pub nonce: String,
}

/// The value of cookie `name` in a request's headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A `Set-Cookie` header value: HttpOnly, SameSite=Lax, Secure when served over https.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    let mut c = cookie::Cookie::new(name.to_string(), value.to_string());
    c.set_http_only(true);
    c.set_same_site(cookie::SameSite::Lax);
    c.set_path(path.to_string());
    c.set_max_age(cookie::time::Duration::seconds(max_age_secs));
    c.set_secure(secure);
    c.to_string()
}

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Security headers on every response; pages are never cached and never framed, and no
/// Referer leaves them (a reauthorize link's token is in its URL).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// An API error as RFC 9457 problem+json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem (`about:blank` when the status says it).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn sessions_and_csrf_tokens_are_bound_to_the_key_and_expire() {
        let signer = Signer::new([7; 32]);
        let other = Signer::new([8; 32]);
        let now = Utc::now();
        let session = Session {
            token_id: "t1".into(),
            scope: TokenScope::Write,
            expires_at: DateTime::from_timestamp(now.timestamp() + 60, 0).unwrap(),
            nonce: "n1".into(),
        };
        let value = signer.session(&session);
        assert_eq!(signer.open_session(&value, now), Some(session.clone()));
        assert_eq!(other.open_session(&value, now), None, "another key");
        assert_eq!(
            signer.open_session(&value, now + Duration::minutes(2)),
            None
        );
        let forged = value.replacen(".write.", ".read.", 1);
        assert_eq!(signer.open_session(&forged, now), None);
        let csrf = signer.csrf("n1");
        assert!(signer.check_csrf("n1", Some(&csrf)));
        assert!(!signer.check_csrf("n2", Some(&csrf)));
        assert!(!signer.check_csrf("n1", None));
        assert!(!signer.check_csrf("n1", Some("zz")));
    }
}
