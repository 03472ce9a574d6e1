//! Classification of TikTok Marketing API (Business API) answers.
//!
//! TikTok answers almost everything with HTTP 200 and puts the outcome in the body:
//! `{"code":0,"message":"OK","request_id":"…","data":{…}}`, where `code` 0 is success,
//! 4xxxx a client-side error and 5xxxx a service error. So [`classify`] reads every answer,
//! including 200s, and returns `None` for a success. An HTTP 4xx means a wrong path or
//! method (our bug, not the advertiser's); an HTTP 5xx means "wait about five minutes".
//!
//! The Marketing API has no refresh token (long-term access tokens stay valid until the
//! advertiser revokes them), so no token error here is [`FailureCause::Refreshable`].

use gapless_core::{Failure, FailureCause, ReauthReason};
use serde_json::Value;

use crate::http::Answer;

/// Classify any Marketing API answer: `None` for a success (HTTP 2xx with `code` 0),
/// otherwise the failure.
///
/// `provider_code` is TikTok's numeric `code` as text (e.g. `40105`), or `http_<status>`
/// when the status decided; `provider_message` is TikTok's `message`, or the body excerpt.
pub fn classify(answer: &Answer) -> Option<Failure> {
    let json = answer.json();
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(Value::as_i64);
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| answer.excerpt(), str::to_string);
    let success = (200..300).contains(&answer.status);
    match code {
        _ if answer.status >= 500 => Some(
            Failure::new(FailureCause::Transient)
                .with_code(format!("http_{}", answer.status))
                .with_message(message),
        ),
        Some(0) if success => None,
        Some(code) if code != 0 => Some(
            Failure::new(by_code(code, answer.retry_after))
                .with_code(code.to_string())
                .with_message(message),
        ),
        // A 2xx without a numeric code is not the documented shape.
        _ if success => Some(crate::http::malformed(
            answer,
            "a TikTok answer with a numeric code",
        )),
        // HTTP 4xx: a wrong path or method (per TikTok). Only throttling has a meaning of its
        // own; anything else is a request bug of ours, kept Transient so it never opens an
        // incident for the advertiser.
        _ => {
            let cause = match answer.status {
                429 => FailureCause::RateLimited {
                    retry_after_secs: answer.retry_after,
                },
                _ => FailureCause::Transient,
            };
            Some(
                Failure::new(cause)
                    .with_code(format!("http_{}", answer.status))
                    .with_message(message),
            )
        }
    }
}

/// The documented codes (provider reference §1.9).
fn by_code(code: i64, retry_after: Option<u64>) -> FailureCause {
    match code {
        // Access token expired. The reference: ReauthRequired for the Marketing API (no
        // refresh token there), Refreshable only for the Accounts/TCM APIs, which this
        // classifier does not serve.
        40102 => FailureCause::reauth(ReauthReason::Expired),
        // Access token empty (40104), invalid or revoked (40105; TikTok does not say which).
        40104 | 40105 => FailureCause::reauth(ReauthReason::InvalidGrant),
        // Token and advertiser do not match, or the core user is invalid.
        40106 => FailureCause::reauth(ReauthReason::InvalidGrant),
        // Refresh token expired (40103) or invalid (40107).
        40103 => FailureCause::reauth(ReauthReason::Expired),
        40107 => FailureCause::reauth(ReauthReason::InvalidGrant),
        // No permission (40001), developer lacks permission (40125), developer and advertiser
        // not the same company (40119), advertiser deleted or not matched (40300, 40301).
        // 40118 (not allow-listed) is PermissionLost in the reference's summary (§0.1) and
        // AppNotApproved in its TikTok table (§1.9); the summary's mapping is kept.
        // Judgment call.
        40001 | 40118 | 40119 | 40125 | 40300 | 40301 => FailureCause::PermissionLost,
        // App blocked or missing (40113), developer profile not approved (40124), request
        // from an IP in a banned country (41000: infrastructure, ours to fix).
        40113 | 40124 | 41000 => FailureCause::AppNotApproved,
        // App QPS (40100), advertiser QPS (40016), field-level limits (40133, 40132).
        40100 | 40016 | 40132 | 40133 => FailureCause::RateLimited {
            retry_after_secs: retry_after,
        },
        // Service errors (50000, 50002, 51305), maintenance (60001), write conflict (40202),
        // task not ready (40201). Partial success (20001) is not a clean result either: it
        // is retried rather than loaded. Every other code too, kept for humans.
        _ => FailureCause::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_answer as answer;

    /// TikTok's documented envelope.
    fn tiktok(code: i64, message: &str) -> String {
        serde_json::json!({
            "code": code,
            "message": message,
            "request_id": "2026112810000001",
            "data": {},
        })
        .to_string()
    }

    #[test]
    fn code_zero_in_a_200_answer_is_success_not_a_failure() {
        let ok = r#"{"code":0,"message":"OK","request_id":"20261128","data":{"list":[{"advertiser_id":"7"}]}}"#;
        assert_eq!(classify(&answer(200, ok, None)), None);
    }

    #[test]
    fn error_codes_in_a_200_answer_map_to_documented_causes() {
        use FailureCause::{AppNotApproved, PermissionLost, Transient};
        let rows: Vec<(i64, FailureCause)> = vec![
            (40102, FailureCause::reauth(ReauthReason::Expired)),
            (40104, FailureCause::reauth(ReauthReason::InvalidGrant)),
            (40105, FailureCause::reauth(ReauthReason::InvalidGrant)),
            (40106, FailureCause::reauth(ReauthReason::InvalidGrant)),
            (40103, FailureCause::reauth(ReauthReason::Expired)),
            (40107, FailureCause::reauth(ReauthReason::InvalidGrant)),
            (40001, PermissionLost),
            (40118, PermissionLost),
            (40119, PermissionLost),
            (40125, PermissionLost),
            (40300, PermissionLost),
            (40301, PermissionLost),
            (40113, AppNotApproved),
            (40124, AppNotApproved),
            (41000, AppNotApproved),
            (50000, Transient),
            (50002, Transient),
            (51305, Transient),
            (60001, Transient),
            (40202, Transient),
            (40201, Transient),
            (20001, Transient),
        ];
        for (code, cause) in rows {
            let text = format!("message for {code}");
            let f = classify(&answer(200, &tiktok(code, &text), None));
            let Some(f) = f else {
                panic!("{code} was taken for a success");
            };
            assert_eq!(f.cause, cause, "{code}");
            assert_eq!(f.provider_code.as_deref(), Some(code.to_string().as_str()));
            assert_eq!(f.provider_message.as_deref(), Some(text.as_str()));
        }
    }

    #[test]
    fn throttling_codes_in_a_200_answer_carry_the_retry_after_hint() {
        for code in [40100, 40016, 40133, 40132] {
            let f = classify(&answer(200, &tiktok(code, "Too many requests"), Some(60)));
            assert_eq!(
                f.map(|f| f.cause),
                Some(FailureCause::RateLimited {
                    retry_after_secs: Some(60)
                }),
                "{code}"
            );
        }
    }

    #[test]
    fn no_token_error_is_refreshable_because_there_is_no_refresh_token() {
        for code in [40102, 40103, 40104, 40105, 40106, 40107] {
            let f = classify(&answer(200, &tiktok(code, "m"), None));
            assert!(
                f.as_ref()
                    .is_some_and(|f| matches!(f.cause, FailureCause::ReauthRequired { .. })),
                "{code}: {f:?}"
            );
        }
    }

    #[test]
    fn the_code_decides_whatever_the_message_says() {
        for text in [
            "Access token is incorrect or has been revoked.",
            "Token ungültig",
            "OK",
        ] {
            let f = classify(&answer(200, &tiktok(40105, text), None));
            assert_eq!(
                f.as_ref().map(|f| f.cause),
                Some(FailureCause::reauth(ReauthReason::InvalidGrant)),
                "{text}"
            );
            assert_eq!(f.and_then(|f| f.provider_message).as_deref(), Some(text));
        }
        // A success whose message sounds like an error is still a success.
        assert_eq!(
            classify(&answer(200, &tiktok(0, "Access token expired"), None)),
            None
        );
    }

    #[test]
    fn http_5xx_is_transient_whatever_the_body() {
        for (body, message) in [
            (
                "<html>502 Bad Gateway</html>",
                "<html>502 Bad Gateway</html>",
            ),
            (r#"{"code":40105,"message":"x"}"#, "x"),
            (r#"{"code":0,"message":"OK"}"#, "OK"),
        ] {
            let f = classify(&answer(503, body, None));
            let Some(f) = f else {
                panic!("a 503 was taken for a success");
            };
            assert_eq!(f.cause, FailureCause::Transient, "{body}");
            assert_eq!(f.provider_code.as_deref(), Some("http_503"));
            assert_eq!(f.provider_message.as_deref(), Some(message));
        }
    }

    #[test]
    fn http_4xx_without_a_code_is_a_request_bug_not_an_authorization_failure() {
        let rows = [
            (404, None, FailureCause::Transient, "http_404"),
            (405, None, FailureCause::Transient, "http_405"),
            (401, None, FailureCause::Transient, "http_401"),
            (
                429,
                Some(20),
                FailureCause::RateLimited {
                    retry_after_secs: Some(20),
                },
                "http_429",
            ),
        ];
        for (status, retry_after, cause, shown) in rows {
            let f = classify(&answer(status, "Not Found", retry_after));
            let Some(f) = f else {
                panic!("HTTP {status} was taken for a success");
            };
            assert_eq!(f.cause, cause, "{status}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
            assert_eq!(f.provider_message.as_deref(), Some("Not Found"));
        }
        // Code 0 on a non-2xx answer is not a success either.
        let f = classify(&answer(404, &tiktok(0, "OK"), None));
        assert_eq!(f.map(|f| f.cause), Some(FailureCause::Transient));
    }

    #[test]
    fn a_200_without_a_numeric_code_is_a_malformed_answer() {
        for body in [
            "<html>maintenance</html>",
            r#"{"data":{}}"#,
            r#"{"code":"0"}"#,
        ] {
            let f = classify(&answer(200, body, None));
            let Some(f) = f else {
                panic!("{body} was taken for a success");
            };
            assert_eq!(f.cause, FailureCause::Transient, "{body}");
            assert_eq!(f.provider_code.as_deref(), Some("malformed_response"));
        }
    }
}
