//! The HTTP clients providers use: bounded timeouts and no redirects (a token endpoint that
//! redirects is answered as an error, never followed with credentials attached).

use std::time::Duration;

/// Timeouts for provider calls.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub connect: Duration,
    /// Whole-request timeout. For token calls it is kept well below the refresh lease.
    pub request: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Build a client that never follows redirects.
pub fn client(timeouts: HttpTimeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .user_agent(concat!("gapless/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response read in full: status, headers and body text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub content_type: String,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Result<Self, reqwest::Error> {
        let mut answer = Self::head(&response);
        answer.body = response.text().await?;
        Ok(answer)
    }

    /// Like [`Answer::read`], refusing a body over `max_bytes` without reading the rest:
    /// `Ok(None)` when the answer is too large.
    pub async fn read_limited(
        response: reqwest::Response,
        max_bytes: u64,
    ) -> Result<Option<Self>, reqwest::Error> {
        Ok(Self::read_raw(response, max_bytes)
            .await?
            .map(|(mut answer, body)| {
                answer.body = text_of(body);
                answer
            }))
    }

    /// Status and headers (with an empty body text) and the body's bytes, up to
    /// `max_bytes`; None when the body is longer.
    pub async fn read_raw(
        mut response: reqwest::Response,
        max_bytes: u64,
    ) -> Result<Option<(Self, Vec<u8>)>, reqwest::Error> {
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Ok(None);
        }
        let answer = Self::head(&response);
        // Room for the announced length (already checked against `max_bytes`), rather
        // than growing by doubling; at most 8 MiB before a byte has come (a length
        // announced is not a length sent).
        let announced = response.content_length().unwrap_or(0).min(PREALLOCATED_MAX);
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = response.chunk().await? {
            if body.len() as u64 + chunk.len() as u64 > max_bytes {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((answer, body)))
    }

    /// Status and headers, with an empty body.
    fn head(response: &reqwest::Response) -> Self {
        let headers = response.headers().clone();
        let header = |name: reqwest::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            status: response.status().as_u16(),
            retry_after: header(reqwest::header::RETRY_AFTER).and_then(|value| {
                retry_after_secs(&value, header(reqwest::header::DATE).as_deref())
            }),
            content_type: header(reqwest::header::CONTENT_TYPE).unwrap_or_default(),
            body: String::new(),
            headers,
        }
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The first characters of the body, for error messages.
    pub fn excerpt(&self) -> String {
        let mut s: String = self.body.chars().take(160).collect();
        if self.body.chars().count() > 160 {
            s.push('…');
        }
        s
    }
}

/// The longest wait a `Retry-After` may ask for; a longer one is taken as this.
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// A `Retry-After` value (RFC 9110 10.2.3) in whole seconds, rounded up: delay-seconds
/// (`120`, and the `2.0` some providers send), or an HTTP date, counted from the answer's
/// own `Date` header when it has one (so the two clocks need not agree), else from now.
/// Capped at [`MAX_RETRY_AFTER_SECS`]; a value that is neither is ignored.
pub fn retry_after_secs(value: &str, date: Option<&str>) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        let capped = secs.ceil().min(MAX_RETRY_AFTER_SECS as f64);
        // In range by the cap: the conversion cannot truncate.
        return Some(capped as u64);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = date
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d.trim()).ok())
        .map_or_else(chrono::Utc::now, |d| d.with_timezone(&chrono::Utc));
    let secs = (at.with_timezone(&chrono::Utc) - now).num_seconds().max(0);
    Some(u64::try_from(secs).unwrap_or(0).min(MAX_RETRY_AFTER_SECS))
}

/// A transport error (connect, timeout, broken body) as a transient failure, without the
/// URL (which may carry a token).
pub fn transport_failure(error: &reqwest::Error) -> gapless_core::Failure {
    let code = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let detail = std::error::Error::source(error)
        .map(|s| s.to_string())
        .unwrap_or_else(|| code.to_string());
    gapless_core::Failure::new(gapless_core::FailureCause::Transient)
        .with_code(code)
        .with_message(detail)
}

/// A 200 answer that is not the documented shape.
pub fn malformed(answer: &Answer, expected: &str) -> gapless_core::Failure {
    gapless_core::Failure::new(gapless_core::FailureCause::Transient)
        .with_code("malformed_response")
        .with_message(format!(
            "expected {expected}, got HTTP {} {}: {}",
            answer.status,
            if answer.content_type.is_empty() {
                "(no content type)"
            } else {
                answer.content_type.as_str()
            },
            answer.excerpt()
        ))
}

/// A JSON answer for classifier tests.
#[cfg(test)]
pub(crate) fn test_answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
    Answer {
        status,
        retry_after,
        content_type: "application/json".into(),
        body: body.into(),
        headers: reqwest::header::HeaderMap::new(),
    }
}

/// One row of a classifier table test.
#[cfg(test)]
pub(crate) struct ClassifyCase {
    pub status: u16,
    pub body: &'static str,
    pub retry_after: Option<u64>,
    pub cause: gapless_core::FailureCause,
    pub code: &'static str,
    pub message: &'static str,
}

/// Run a classifier over table rows: cause, provider code and message must match.
#[cfg(test)]
pub(crate) fn check_cases(classifier: fn(&Answer) -> gapless_core::Failure, rows: &[ClassifyCase]) {
    for r in rows {
        let f = classifier(&test_answer(r.status, r.body, r.retry_after));
        assert_eq!(f.cause, r.cause, "{} {}", r.status, r.body);
        assert_eq!(f.provider_code.as_deref(), Some(r.code), "{}", r.body);
        assert_eq!(f.provider_message.as_deref(), Some(r.message), "{}", r.body);
    }
}

/// The most a body's buffer is given before its bytes arrive.
const PREALLOCATED_MAX: u64 = 8 << 20;

/// A body's bytes as text: valid UTF-8 (nearly always) taken as it is, without a copy;
/// else with each invalid sequence replaced.
pub fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_decimals_and_http_dates() {
        let date = Some("Wed, 02 Dec 2026 10:00:00 GMT");
        for (value, expected) in [
            ("120", Some(120)),
            (" 2.0 ", Some(2)),
            ("0.2", Some(1)),
            ("0", Some(0)),
            ("Wed, 02 Dec 2026 10:01:30 GMT", Some(90)),
            ("Wed, 02 Dec 2026 09:00:00 GMT", Some(0)),
            ("99999999999", Some(MAX_RETRY_AFTER_SECS)),
            ("1e308", Some(MAX_RETRY_AFTER_SECS)),
            ("-5", None),
            ("NaN", None),
            ("inf", None),
            ("soon", None),
        ] {
            assert_eq!(retry_after_secs(value, date), expected, "{value}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_read_with_its_bad_bytes_replaced() {
        assert_eq!(text_of(b"caf\xc3\xa9".to_vec()), "café");
        assert_eq!(text_of(b"bad \xff byte".to_vec()), "bad \u{fffd} byte");
    }
}
