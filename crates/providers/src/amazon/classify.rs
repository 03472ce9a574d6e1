//! Classification of Login with Amazon (LWA), Amazon Ads API and Selling Partner API answers.
//!
//! Three body shapes, told apart by their fields:
//! - LWA token endpoint: `{"error","error_description"}` (OAuth).
//! - SP-API: `{"errors":[{"code","message","details"}]}`.
//! - Amazon Ads API: `{"code","details","requestId"}` (older answers put `message` where
//!   newer ones put `details`); its `code` is a word (`UNAUTHORIZED`) or the status again.
//!
//! Amazon issues refresh tokens (LWA), so an access token it no longer takes is
//! [`FailureCause::Refreshable`]: the engine refreshes once, and if the grant itself is gone
//! the refresh answers `invalid_grant`, which [`classify_token`] makes ReauthRequired.
//!
//! Not read here: the SP-API `x-amzn-RateLimit-Limit` header (a request rate, not a delay)
//! is not part of [`Answer`]; throttling carries the `Retry-After` value when there is one.

use gapless_core::{Failure, FailureCause};
use serde_json::Value;

use crate::{http::Answer, oauth::TokenErrorBody};

/// Classify an error answer of the LWA token endpoint (`/auth/o2/token`).
///
/// `provider_code` is `error` (e.g. `invalid_grant`) or `http_<status>`; `provider_message`
/// is `error_description`, or the body excerpt.
pub fn classify_token(answer: &Answer) -> Failure {
    // LWA's `invalid_grant` ("User may have revoked or didn't grant the permission") does
    // not say which: the registered codes mean what RFC 6749 says.
    let body = TokenErrorBody::read(answer);
    body.failure(answer, body.cause(answer))
}

/// Classify an Amazon Ads API or SP-API answer that is not a success. An LWA-shaped body
/// (top-level string `error`) is handed to [`classify_token`].
///
/// `provider_code` is the SP-API or Amazon Ads `code` (e.g. `Unauthorized`, `QuotaExceeded`,
/// `MD1000`, `UNAUTHORIZED`), or `http_<status>`; `provider_message` is Amazon's message
/// (SP-API: `message` followed by `details` when there are details), or the body excerpt.
pub fn classify(answer: &Answer) -> Failure {
    let Some(json) = answer.json() else {
        return Failure::new(by_status(answer))
            .with_code(format!("http_{}", answer.status))
            .with_message(answer.excerpt());
    };
    if json.get("error").and_then(Value::as_str).is_some() {
        return classify_token(answer);
    }
    if let Some(first) = json
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return sp_api(answer, first);
    }
    if let Some(code) = json.get("code").and_then(code_text) {
        return ads_api(answer, &json, &code);
    }
    Failure::new(by_status(answer))
        .with_code(format!("http_{}", answer.status))
        .with_message(answer.excerpt())
}

/// One SP-API error object.
fn sp_api(answer: &Answer, error: &Value) -> Failure {
    let text = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("");
    let code = text("code");
    let details = text("details").trim();
    let cause = match code {
        // 403 Unauthorized with `details` filled: the access token was refused. Amazon uses
        // the same code and message for an expired token ("… has expired") and for a revoked,
        // malformed or invalid one, and only the wording of `details` differs. Keyed on the
        // code, the one cause that is right for both is Refreshable: an expired token is
        // renewed; a revoked one makes the refresh fail with `invalid_grant`, or stays refused
        // after the refresh, and either way ends as ReauthRequired. (The reference files the
        // revoked case under ReauthRequired directly.) Judgment call.
        "Unauthorized" if !details.is_empty() => FailureCause::Refreshable,
        // Same 403 with empty `details`: the token is fine but the app or the seller lacks
        // the role for this API.
        "Unauthorized" => FailureCause::PermissionLost,
        "QuotaExceeded" => FailureCause::rate_limited(answer.retry_after),
        // OAuth-flow errors: a draft app authorized without `version=beta` (MD1000) and a
        // redirect URI mismatch (MD5101) are both ours to fix.
        "MD1000" | "MD5101" => FailureCause::AppNotApproved,
        _ => by_status(answer),
    };
    let message = match (text("message"), details) {
        ("", "") => answer.excerpt(),
        ("", details) => details.to_string(),
        (message, "") => message.to_string(),
        (message, details) => format!("{message} {details}"),
    };
    let code = if code.is_empty() {
        format!("http_{}", answer.status)
    } else {
        code.to_string()
    };
    Failure::new(cause).with_code(code).with_message(message)
}

/// An Amazon Ads API error (`{"code","details"}`).
fn ads_api(answer: &Answer, json: &Value, code: &str) -> Failure {
    let cause = match (code, answer.status) {
        // 401: an expired access token and a profile (Amazon-Advertising-API-Scope) the
        // token cannot use answer alike. Refresh first; if the profile is the problem the
        // engine counts the second refusal as an authorization failure.
        ("UNAUTHORIZED" | "401", _) | (_, 401) => FailureCause::Refreshable,
        // 400: the reference documents it for a missing or wrong profile header, the one
        // cause of a 400 that is not a request bug of ours. Judgment call: a malformed
        // request of ours would be reported the same way (visible, not retried in a loop).
        (_, 400) => FailureCause::PermissionLost,
        _ => by_status(answer),
    };
    let message = ["details", "message"]
        .iter()
        .find_map(|name| json.get(name).and_then(Value::as_str))
        .map_or_else(|| answer.excerpt(), str::to_string);
    Failure::new(cause).with_code(code).with_message(message)
}

fn by_status(answer: &Answer) -> FailureCause {
    match answer.status {
        401 => FailureCause::Refreshable,
        403 => FailureCause::PermissionLost,
        429 => FailureCause::rate_limited(answer.retry_after),
        _ => FailureCause::Transient,
    }
}

/// The Amazon Ads `code`: a string, or the status as a number.
fn code_text(code: &Value) -> Option<String> {
    match code {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapless_core::ReauthReason;

    use crate::http::test_answer as answer;

    use crate::http::ClassifyCase as Row;

    use crate::http::check_cases as check;

    const REVOKED_GRANT: &str = "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.";

    #[test]
    fn lwa_token_errors_map_to_causes() {
        check(
            classify_token,
            &[
                Row {
                    status: 400,
                    body: r#"{"error_description":"The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.","error":"invalid_grant"}"#,
                    retry_after: None,
                    cause: FailureCause::reauth(ReauthReason::InvalidGrant),
                    code: "invalid_grant",
                    message: REVOKED_GRANT,
                },
                Row {
                    status: 401,
                    body: r#"{"error_description":"Client authentication failed","error":"invalid_client"}"#,
                    retry_after: None,
                    cause: FailureCause::AppNotApproved,
                    code: "invalid_client",
                    message: "Client authentication failed",
                },
                Row {
                    status: 400,
                    body: r#"{"error_description":"Not authorized for requested operation","error":"unauthorized_client"}"#,
                    retry_after: None,
                    cause: FailureCause::AppNotApproved,
                    code: "unauthorized_client",
                    message: "Not authorized for requested operation",
                },
                Row {
                    status: 400,
                    body: r#"{"error_description":"An unknown scope was requested","error":"invalid_scope"}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "invalid_scope",
                    message: "An unknown scope was requested",
                },
                Row {
                    status: 500,
                    body: r#"{"error_description":"Internal Server Error","error":"server_error"}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "server_error",
                    message: "Internal Server Error",
                },
                Row {
                    status: 429,
                    body: "",
                    retry_after: Some(30),
                    cause: FailureCause::rate_limited(Some(30)),
                    code: "http_429",
                    message: "",
                },
                Row {
                    status: 503,
                    body: "Service Unavailable",
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_503",
                    message: "Service Unavailable",
                },
            ],
        );
    }

    #[test]
    fn sp_api_errors_map_to_causes() {
        check(
            classify,
            &[
                Row {
                    status: 403,
                    body: r#"{"errors":[{"message":"Access to requested resource is denied.","code":"Unauthorized","details":"The access token you provided is revoked, malformed or invalid."}]}"#,
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "Unauthorized",
                    message: "Access to requested resource is denied. The access token you provided is revoked, malformed or invalid.",
                },
                Row {
                    status: 403,
                    body: r#"{"errors":[{"message":"Access to requested resource is denied.","code":"Unauthorized","details":""}]}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "Unauthorized",
                    message: "Access to requested resource is denied.",
                },
                Row {
                    status: 403,
                    body: r#"{"errors":[{"message":"Access to requested resource is denied.","code":"Unauthorized"}]}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "Unauthorized",
                    message: "Access to requested resource is denied.",
                },
                Row {
                    status: 429,
                    body: r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource.","details":""}]}"#,
                    retry_after: Some(60),
                    cause: FailureCause::rate_limited(Some(60)),
                    code: "QuotaExceeded",
                    message: "You exceeded your quota for the requested resource.",
                },
                Row {
                    status: 400,
                    body: r#"{"errors":[{"code":"MD1000","message":"The application is in draft state."}]}"#,
                    retry_after: None,
                    cause: FailureCause::AppNotApproved,
                    code: "MD1000",
                    message: "The application is in draft state.",
                },
                Row {
                    status: 400,
                    body: r#"{"errors":[{"code":"MD5101","message":"The redirect URI does not match."}]}"#,
                    retry_after: None,
                    cause: FailureCause::AppNotApproved,
                    code: "MD5101",
                    message: "The redirect URI does not match.",
                },
                Row {
                    status: 500,
                    body: r#"{"errors":[{"code":"InternalFailure","message":"We encountered an internal error. Please try again.","details":""}]}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "InternalFailure",
                    message: "We encountered an internal error. Please try again.",
                },
                Row {
                    status: 503,
                    body: r#"{"errors":[{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":""}]}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "ServiceUnavailable",
                    message: "Service is temporarily unavailable.",
                },
                // An undocumented code with a 429 is still throttling, by the status.
                Row {
                    status: 429,
                    body: r#"{"errors":[{"code":"TooManyRequests","message":"slow"}]}"#,
                    retry_after: Some(2),
                    cause: FailureCause::rate_limited(Some(2)),
                    code: "TooManyRequests",
                    message: "slow",
                },
            ],
        );
    }

    #[test]
    fn sp_api_unauthorized_is_decided_by_whether_details_are_given_not_their_wording() {
        for details in [
            "The access token you provided is revoked, malformed or invalid.",
            "The access token you provided has expired.",
            "Das Zugriffstoken ist ungültig.",
        ] {
            let body = serde_json::json!({
                "errors": [{
                    "message": "Access to requested resource is denied.",
                    "code": "Unauthorized",
                    "details": details,
                }]
            })
            .to_string();
            let f = classify(&answer(403, &body, None));
            assert_eq!(f.cause, FailureCause::Refreshable, "{details}");
        }
        // Whitespace-only details are no details.
        let body = r#"{"errors":[{"message":"Access to requested resource is denied.","code":"Unauthorized","details":"  "}]}"#;
        assert_eq!(
            classify(&answer(403, body, None)).cause,
            FailureCause::PermissionLost
        );
    }

    #[test]
    fn amazon_ads_errors_map_to_causes() {
        check(
            classify,
            &[
                Row {
                    status: 401,
                    body: r#"{"code":"UNAUTHORIZED","details":"Not authorized to access scope 3312345678901234","requestId":"K144VZX9J0CCDG4229C5"}"#,
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "UNAUTHORIZED",
                    message: "Not authorized to access scope 3312345678901234",
                },
                Row {
                    status: 401,
                    body: r#"{"code":"401","details":"Authentication failed","requestId":"K144VZX9J0CCDG4229C5"}"#,
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "401",
                    message: "Authentication failed",
                },
                Row {
                    status: 400,
                    body: r#"{"code":"400","details":"Invalid scope","requestId":"R1"}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "400",
                    message: "Invalid scope",
                },
                Row {
                    status: 403,
                    body: r#"{"code":"403","details":"Not authorized to access scope 1234"}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "403",
                    message: "Not authorized to access scope 1234",
                },
                Row {
                    status: 429,
                    body: r#"{"code":"429","details":"Too Many Requests"}"#,
                    retry_after: Some(5),
                    cause: FailureCause::rate_limited(Some(5)),
                    code: "429",
                    message: "Too Many Requests",
                },
                Row {
                    status: 429,
                    body: r#"{"code":429,"message":"Too Many Requests"}"#,
                    retry_after: None,
                    cause: FailureCause::rate_limited(None),
                    code: "429",
                    message: "Too Many Requests",
                },
                Row {
                    status: 500,
                    body: r#"{"code":"INTERNAL_ERROR","details":"Internal error"}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "INTERNAL_ERROR",
                    message: "Internal error",
                },
            ],
        );
    }

    #[test]
    fn lwa_shaped_api_answers_go_through_the_token_classifier() {
        let body = r#"{"error_description":"The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.","error":"invalid_grant"}"#;
        let f = classify(&answer(400, body, None));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::InvalidGrant));
        assert_eq!(f.provider_code.as_deref(), Some("invalid_grant"));
        assert_eq!(f.provider_message.as_deref(), Some(REVOKED_GRANT));
    }

    #[test]
    fn the_code_decides_whatever_the_message_says() {
        // An invalid_grant whose description reads like a throttle is still a dead grant.
        let f = classify_token(&answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Rate exceeded, try later"}"#,
            Some(5),
        ));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::InvalidGrant));
        // QuotaExceeded on a 403 is throttling, not a lost permission.
        let f = classify(&answer(
            403,
            r#"{"errors":[{"code":"QuotaExceeded","message":"Access denied","details":""}]}"#,
            Some(7),
        ));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(7)));
    }

    #[test]
    fn bodies_without_a_known_shape_fall_back_on_the_status() {
        check(
            classify,
            &[
                Row {
                    status: 401,
                    body: "",
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "http_401",
                    message: "",
                },
                Row {
                    status: 403,
                    body: "<html>Forbidden</html>",
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "http_403",
                    message: "<html>Forbidden</html>",
                },
                Row {
                    status: 429,
                    body: "{}",
                    retry_after: Some(11),
                    cause: FailureCause::rate_limited(Some(11)),
                    code: "http_429",
                    message: "{}",
                },
                Row {
                    status: 504,
                    body: "Gateway Timeout",
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_504",
                    message: "Gateway Timeout",
                },
            ],
        );
    }
}
