//! Classification of the sandbox's answers. Keyed on codes, never on message text.

use gapless_core::{Failure, FailureCause, ReauthReason};

use crate::{http::Answer, oauth::TokenErrorBody};

/// A Graph API error answer (`{"error":{"code","error_subcode","message"}}`).
pub fn classify_api(answer: &Answer) -> Failure {
    let json = answer.json();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(|c| c.as_i64());
    let subcode = error
        .and_then(|e| e.get("error_subcode"))
        .and_then(|c| c.as_i64());
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| answer.excerpt());
    let Some(code) = code else {
        let cause = match answer.status {
            429 => FailureCause::RateLimited {
                retry_after_secs: answer.retry_after,
            },
            401 => FailureCause::Refreshable,
            403 => FailureCause::PermissionLost,
            _ => FailureCause::Transient,
        };
        return Failure::new(cause)
            .with_code(format!("http_{}", answer.status))
            .with_message(message);
    };
    let cause = match (code, subcode) {
        (190, Some(458)) => FailureCause::reauth(ReauthReason::Revoked),
        (190, Some(460)) => FailureCause::reauth(ReauthReason::PasswordChanged),
        (190, Some(459 | 464)) => FailureCause::AccountBlocked,
        (190, Some(467 | 492)) => FailureCause::reauth(ReauthReason::SessionExpired),
        // An expired session or an unexplained invalid token: one refresh tells more.
        (190, Some(463) | None) | (102, _) => FailureCause::Refreshable,
        (190, Some(_)) => FailureCause::reauth(ReauthReason::InvalidGrant),
        (10 | 200..=299, _) => FailureCause::PermissionLost,
        (100, Some(33)) => FailureCause::PermissionLost,
        (3, _) => FailureCause::AppNotApproved,
        (368, _) => FailureCause::AccountBlocked,
        (4 | 17 | 32 | 613 | 341, _) | (80_000..=80_014, _) => FailureCause::RateLimited {
            retry_after_secs: answer.retry_after,
        },
        _ => FailureCause::Transient,
    };
    let code = match subcode {
        Some(sub) => format!("{code}/{sub}"),
        None => code.to_string(),
    };
    Failure::new(cause).with_code(code).with_message(message)
}

/// A token endpoint error answer (`{"error","error_description","error_subcode"}`).
pub fn classify_token(answer: &Answer) -> Failure {
    let body = TokenErrorBody::read(answer);
    let subcode = answer
        .json()
        .and_then(|j| j.get("error_subcode").and_then(|s| s.as_i64()));
    let cause = match (body.error.as_str(), subcode) {
        ("invalid_grant", Some(458)) => FailureCause::reauth(ReauthReason::Revoked),
        ("invalid_grant", Some(460)) => FailureCause::reauth(ReauthReason::PasswordChanged),
        ("invalid_grant", Some(459)) => FailureCause::AccountBlocked,
        ("invalid_grant", Some(463)) => FailureCause::reauth(ReauthReason::Expired),
        _ => body.cause(answer),
    };
    let subcode = subcode.map(|s| s.to_string());
    Failure::new(cause)
        .with_code(body.code(answer, subcode.as_deref()))
        .with_message(body.message(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_answer as answer;

    fn graph(code: i64, subcode: Option<i64>) -> String {
        let mut error = serde_json::json!({"message": "m", "type": "OAuthException", "code": code});
        if let Some(s) = subcode {
            error["error_subcode"] = s.into();
        }
        serde_json::json!({ "error": error }).to_string()
    }

    #[test]
    fn graph_api_errors_map_to_documented_causes() {
        let cases: Vec<(u16, i64, Option<i64>, FailureCause, &str)> = vec![
            (
                400,
                190,
                Some(458),
                FailureCause::reauth(ReauthReason::Revoked),
                "190/458",
            ),
            (
                400,
                190,
                Some(460),
                FailureCause::reauth(ReauthReason::PasswordChanged),
                "190/460",
            ),
            (400, 190, Some(459), FailureCause::AccountBlocked, "190/459"),
            (400, 190, Some(464), FailureCause::AccountBlocked, "190/464"),
            (
                400,
                190,
                Some(467),
                FailureCause::reauth(ReauthReason::SessionExpired),
                "190/467",
            ),
            (400, 190, Some(463), FailureCause::Refreshable, "190/463"),
            (400, 190, None, FailureCause::Refreshable, "190"),
            (400, 102, None, FailureCause::Refreshable, "102"),
            (403, 10, None, FailureCause::PermissionLost, "10"),
            (403, 200, None, FailureCause::PermissionLost, "200"),
            (403, 272, None, FailureCause::PermissionLost, "272"),
            (400, 100, Some(33), FailureCause::PermissionLost, "100/33"),
            (400, 3, None, FailureCause::AppNotApproved, "3"),
            (400, 368, None, FailureCause::AccountBlocked, "368"),
            (500, 1, None, FailureCause::Transient, "1"),
            (500, 2, None, FailureCause::Transient, "2"),
            (
                500,
                2,
                Some(1_504_043),
                FailureCause::Transient,
                "2/1504043",
            ),
        ];
        for (status, code, sub, cause, shown) in cases {
            let f = classify_api(&answer(status, &graph(code, sub), None));
            assert_eq!(f.cause, cause, "{shown}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
            assert_eq!(f.provider_message.as_deref(), Some("m"));
        }
    }

    #[test]
    fn throttling_codes_carry_the_retry_after_hint() {
        for code in [4, 17, 32, 613, 341, 80_004] {
            let f = classify_api(&answer(429, &graph(code, None), Some(30)));
            assert_eq!(
                f.cause,
                FailureCause::RateLimited {
                    retry_after_secs: Some(30)
                },
                "{code}"
            );
        }
        // Same code on HTTP 400 (as the real Graph API sends it) is still a rate limit.
        let f = classify_api(&answer(400, &graph(17, Some(2_446_079)), None));
        assert!(matches!(f.cause, FailureCause::RateLimited { .. }));
    }

    #[test]
    fn answers_without_a_graph_body_fall_back_on_the_status() {
        assert_eq!(
            classify_api(&answer(502, "<html>bad gateway</html>", None)).cause,
            FailureCause::Transient
        );
        assert_eq!(
            classify_api(&answer(429, "", Some(7))).cause,
            FailureCause::RateLimited {
                retry_after_secs: Some(7)
            }
        );
        assert_eq!(
            classify_api(&answer(401, "", None)).cause,
            FailureCause::Refreshable
        );
    }

    #[test]
    fn token_endpoint_errors_map_to_causes() {
        let t = |body: &str, status: u16| classify_token(&answer(status, body, None)).cause;
        assert_eq!(
            t(r#"{"error":"invalid_grant","error_subcode":458}"#, 400),
            FailureCause::reauth(ReauthReason::Revoked)
        );
        assert_eq!(
            t(r#"{"error":"invalid_grant","error_subcode":460}"#, 400),
            FailureCause::reauth(ReauthReason::PasswordChanged)
        );
        assert_eq!(
            t(r#"{"error":"invalid_grant","error_subcode":459}"#, 400),
            FailureCause::AccountBlocked
        );
        assert_eq!(
            t(r#"{"error":"invalid_grant"}"#, 400),
            FailureCause::reauth(ReauthReason::InvalidGrant)
        );
        assert_eq!(
            t(r#"{"error":"invalid_client"}"#, 401),
            FailureCause::AppNotApproved
        );
        assert_eq!(
            t(r#"{"error":"temporarily_unavailable"}"#, 503),
            FailureCause::Transient
        );
        let f = classify_token(&answer(
            400,
            r#"{"error":"invalid_grant","error_subcode":460,"error_description":"pw"}"#,
            None,
        ));
        assert_eq!(f.provider_code.as_deref(), Some("invalid_grant/460"));
        assert_eq!(f.provider_message.as_deref(), Some("pw"));
    }
}
