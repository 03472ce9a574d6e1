//! Classification of Google OAuth token endpoint answers and Google Ads API error answers.
//!
//! Token endpoint: `{"error","error_description","error_subtype"}`; `invalid_grant` is
//! Google's catch-all, and only `error_subtype: invalid_rapt` (session-control length
//! reached) says more.
//!
//! Ads API: a `google.rpc.Status` in JSON, `{"error":{"code","message","status","details"}}`,
//! whose `details` carry a `GoogleAdsFailure` (`errors[].errorCode` is a one-field object
//! such as `{"authenticationError":"OAUTH_TOKEN_REVOKED"}`, with `quotaErrorDetails` and its
//! `retryDelay` beside it) and sometimes a `google.rpc.ErrorInfo` or `google.rpc.RetryInfo`.
//! The decision order is: the first Google Ads error code we know, then the `ErrorInfo`
//! reason, then the RPC `status`, then the HTTP status. Proto field names (`error_code`,
//! `retry_delay`, …) are accepted as well as the JSON camelCase ones.

use gapless_core::{Failure, FailureCause, ReauthReason};
use serde_json::Value;

use crate::{http::Answer, oauth::TokenErrorBody};

/// Classify an error answer of Google's OAuth token endpoint (code exchange or refresh).
///
/// `provider_code` is `error` or `error/error_subtype` (e.g. `invalid_grant/invalid_rapt`),
/// or `http_<status>`; `provider_message` is `error_description`, or the body excerpt.
pub fn classify_token(answer: &Answer) -> Failure {
    let body = TokenErrorBody::read(answer);
    let subtype = answer
        .json()
        .and_then(|j| str_field(&j, "error_subtype").map(str::to_string));
    let cause = match (body.error.as_str(), subtype.as_deref()) {
        ("invalid_grant", Some("invalid_rapt")) => {
            FailureCause::reauth(ReauthReason::SessionExpired)
        }
        // A Workspace admin set a requested service to Restricted. The fix is an admin of the
        // customer's organization allowing the app again, which is what PermissionLost asks
        // for; it is not our app's approval (AppNotApproved). Judgment call.
        ("admin_policy_enforced", _) => FailureCause::PermissionLost,
        // Google also answers an expired or revoked refresh token with a bare 400 "Bad
        // Request": the registered codes and the status decide as for any token endpoint.
        _ => body.cause(answer),
    };
    Failure::new(cause)
        .with_code(body.code(answer, subtype.as_deref()))
        .with_message(body.message(answer))
}

/// Classify a Google Ads API answer that is not a success.
///
/// `provider_code` is the Google Ads error name (e.g. `OAUTH_TOKEN_REVOKED`), else the
/// `ErrorInfo` reason, else the RPC status (e.g. `UNAUTHENTICATED`), else `http_<status>`.
/// `provider_message` is that error's message, else the status message, else the excerpt.
pub fn classify(answer: &Answer) -> Failure {
    let json = answer.json();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let rpc_status = error.and_then(|e| str_field(e, "status"));
    let top_message = error.and_then(|e| str_field(e, "message"));
    let details: &[Value] = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let retry_info = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.RetryInfo"))
        .find_map(|d| field(d, "retryDelay", "retry_delay").and_then(duration_secs));

    let first_unknown = match ads_errors(details, retry_info, answer, top_message) {
        AdsErrors::Known(failure) => return failure,
        AdsErrors::Unknown(first) => first,
    };

    let delay = retry_info.or(answer.retry_after);
    let reason = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.ErrorInfo"))
        .find_map(|d| str_field(d, "reason"));
    // `google.rpc.ErrorInfo` reasons. ACCESS_TOKEN_SCOPE_INSUFFICIENT: the reference files it
    // under ReauthRequired (re-consent); the core defines a missing scope as PermissionLost,
    // and the other providers' missing-scope errors map there too, so it does here as well.
    // Judgment call.
    let by_reason = match reason {
        Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT") => Some(FailureCause::PermissionLost),
        _ => None,
    };
    let by_rpc = match rpc_status {
        Some("UNAUTHENTICATED") => Some(FailureCause::Refreshable),
        Some("PERMISSION_DENIED") => Some(FailureCause::PermissionLost),
        Some("RESOURCE_EXHAUSTED") => Some(FailureCause::rate_limited(delay)),
        Some("UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED") => Some(FailureCause::Transient),
        _ => None,
    };
    let cause = by_reason
        .or(by_rpc)
        .unwrap_or_else(|| by_status(answer.status, delay));
    // The code shown: the ErrorInfo reason when it decided, else the first Google Ads error
    // name (more precise than the status even when unknown), else the RPC status.
    let code = by_reason
        .and(reason)
        .or(first_unknown.map(|(name, _)| name))
        .or(rpc_status)
        .map_or_else(|| format!("http_{}", answer.status), str::to_string);
    let message = first_unknown
        .and_then(|(_, m)| m)
        .or(top_message)
        .map_or_else(|| answer.excerpt(), str::to_string);
    Failure::new(cause).with_code(code).with_message(message)
}

/// What the Google Ads errors of an answer's `details` say.
enum AdsErrors<'a> {
    /// The first error whose code is known, as a failure.
    Known(Failure),
    /// None is known: the first one's name and message, if there is one.
    Unknown(Option<(&'a str, Option<&'a str>)>),
}

/// Read the Google Ads errors in `details`, in order, until one is known (its delay: the
/// error's own quota detail, else `retry_info`, else Retry-After).
fn ads_errors<'a>(
    details: &'a [Value],
    retry_info: Option<u64>,
    answer: &Answer,
    top_message: Option<&str>,
) -> AdsErrors<'a> {
    let mut first_unknown = None;
    let errors = details
        .iter()
        .filter_map(|d| d.get("errors").and_then(Value::as_array))
        .flatten();
    for ads_error in errors {
        let Some((category, name)) = error_code(ads_error) else {
            continue;
        };
        let message = str_field(ads_error, "message");
        let delay = ads_error
            .get("details")
            .and_then(|d| field(d, "quotaErrorDetails", "quota_error_details"))
            .and_then(|q| field(q, "retryDelay", "retry_delay"))
            .and_then(duration_secs)
            .or(retry_info)
            .or(answer.retry_after);
        match by_ads_error(&category, name, delay) {
            Some(cause) => {
                return AdsErrors::Known(
                    Failure::new(cause).with_code(name).with_message(
                        message
                            .or(top_message)
                            .map_or_else(|| answer.excerpt(), str::to_string),
                    ),
                );
            }
            None => {
                first_unknown.get_or_insert((name, message));
            }
        }
    }
    AdsErrors::Unknown(first_unknown)
}

/// The Google Ads error codes the reference documents (§0.1, §1.4), by their enum category.
fn by_ads_error(category: &str, name: &str, delay: Option<u64>) -> Option<FailureCause> {
    let cause = match (category, name) {
        ("authenticationerror", "OAUTH_TOKEN_EXPIRED") => FailureCause::Refreshable,
        ("authenticationerror", "OAUTH_TOKEN_REVOKED") => {
            FailureCause::reauth(ReauthReason::Revoked)
        }
        // "Disabled" is something done to the token, closest to a revocation. Judgment call.
        ("authenticationerror", "OAUTH_TOKEN_DISABLED") => {
            FailureCause::reauth(ReauthReason::Revoked)
        }
        ("authenticationerror", "OAUTH_TOKEN_INVALID") => {
            FailureCause::reauth(ReauthReason::InvalidGrant)
        }
        // The Google account behind the token is gone: only a reconnect with another account
        // helps. No ReauthReason names a deleted account; InvalidGrant is the closest.
        ("authenticationerror", "GOOGLE_ACCOUNT_DELETED") => {
            FailureCause::reauth(ReauthReason::InvalidGrant)
        }
        // The reference lists NOT_ADS_USER under ReauthRequired in its summary (§0.1) and
        // under PermissionLost in the Google Ads table (§1.4). The login works; it just has
        // no Ads account, so the fix is access for that login or another login, which is
        // what PermissionLost asks for. Judgment call.
        ("authenticationerror", "NOT_ADS_USER" | "CUSTOMER_NOT_FOUND") => {
            FailureCause::PermissionLost
        }
        ("authenticationerror", "TWO_STEP_VERIFICATION_NOT_ENROLLED")
        | ("authenticationerror", "ADVANCED_PROTECTION_NOT_ENROLLED") => {
            FailureCause::AccountBlocked
        }
        ("authorizationerror", "USER_PERMISSION_DENIED" | "ACTION_NOT_PERMITTED") => {
            FailureCause::PermissionLost
        }
        // §0.1 lists CUSTOMER_NOT_ENABLED under PermissionLost, the §1.4 table under
        // AccountBlocked ("account cancelled / not enabled"). A cancelled or not yet enabled
        // account waits on its owner at Google, not on a grant: AccountBlocked. Judgment call.
        ("authorizationerror", "CUSTOMER_NOT_ENABLED")
        | ("authorizationerror", "ACTION_NOT_PERMITTED_FOR_SUSPENDED_ACCOUNT") => {
            FailureCause::AccountBlocked
        }
        (
            "authorizationerror",
            "DEVELOPER_TOKEN_NOT_APPROVED"
            | "DEVELOPER_TOKEN_PROHIBITED"
            | "PROJECT_DISABLED"
            | "MISSING_TOS"
            | "ORGANIZATION_NOT_APPROVED"
            | "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION",
        ) => FailureCause::AppNotApproved,
        (
            "quotaerror",
            "RESOURCE_EXHAUSTED"
            | "RESOURCE_TEMPORARILY_EXHAUSTED"
            | "EXCESSIVE_SHORT_TERM_QUERY_RESOURCE_CONSUMPTION"
            | "EXCESSIVE_LONG_TERM_QUERY_RESOURCE_CONSUMPTION",
        ) => FailureCause::rate_limited(delay),
        ("internalerror", "INTERNAL_ERROR" | "TRANSIENT_ERROR") => FailureCause::Transient,
        _ => return None,
    };
    Some(cause)
}

fn by_status(status: u16, delay: Option<u64>) -> FailureCause {
    match status {
        401 => FailureCause::Refreshable,
        403 => FailureCause::PermissionLost,
        429 => FailureCause::rate_limited(delay),
        _ => FailureCause::Transient,
    }
}

/// The `errorCode` of one Google Ads error: its category, normalized to lower case without
/// underscores (so `authenticationError` and `authentication_error` agree), and its name.
fn error_code(ads_error: &Value) -> Option<(String, &str)> {
    let code = field(ads_error, "errorCode", "error_code")?.as_object()?;
    code.iter().find_map(|(category, name)| {
        let name = name.as_str()?;
        let category = category.replace('_', "").to_ascii_lowercase();
        Some((category, name))
    })
}

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn type_is(detail: &Value, type_name: &str) -> bool {
    str_field(detail, "@type").is_some_and(|t| t.ends_with(type_name))
}

/// A protobuf `Duration` as whole seconds, rounded up: JSON `"30s"` / `"1.5s"`, or an
/// object `{"seconds": 30, "nanos": 0}` (seconds as a number or a string).
fn duration_secs(value: &Value) -> Option<u64> {
    if let Some(text) = value.as_str() {
        let secs: f64 = text.strip_suffix('s')?.trim().parse().ok()?;
        return (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64);
    }
    let seconds = value.get("seconds")?;
    let whole = seconds
        .as_u64()
        .or_else(|| seconds.as_str().and_then(|s| s.parse().ok()))?;
    let nanos = value.get("nanos").and_then(Value::as_u64).unwrap_or(0);
    Some(whole + u64::from(nanos > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::http::test_answer as answer;

    /// A Google Ads REST error: a `google.rpc.Status` carrying one `GoogleAdsFailure`.
    fn ads_failure(status: u16, rpc: &str, category: &str, name: &str, message: &str) -> String {
        json!({
            "error": {
                "code": status,
                "message": "Request had invalid authentication credentials.",
                "status": rpc,
                "details": [{
                    "@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                    "errors": [{
                        "errorCode": { category: name },
                        "message": message,
                    }],
                    "requestId": "gF6oTgR2xKNb8vVfZ3pQ",
                }],
            }
        })
        .to_string()
    }

    #[test]
    fn token_endpoint_errors_map_to_causes() {
        let rows: [(u16, &str, FailureCause, &str); 10] = [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "invalid_grant",
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"reauth related error (invalid_rapt)","error_subtype":"invalid_rapt"}"#,
                FailureCause::reauth(ReauthReason::SessionExpired),
                "invalid_grant/invalid_rapt",
            ),
            (
                400,
                r#"{"error":"admin_policy_enforced","error_description":"restricted by admin"}"#,
                FailureCause::PermissionLost,
                "admin_policy_enforced",
            ),
            (
                401,
                r#"{"error":"invalid_client","error_description":"Unauthorized"}"#,
                FailureCause::AppNotApproved,
                "invalid_client",
            ),
            (
                400,
                r#"{"error":"unauthorized_client","error_description":"Unauthorized"}"#,
                FailureCause::AppNotApproved,
                "unauthorized_client",
            ),
            (
                400,
                r#"{"error":"invalid_scope","error_description":"bad scope"}"#,
                FailureCause::PermissionLost,
                "invalid_scope",
            ),
            (
                503,
                r#"{"error":"temporarily_unavailable","error_description":"later"}"#,
                FailureCause::Transient,
                "temporarily_unavailable",
            ),
            (
                500,
                r#"{"error":"server_error","error_description":"oops"}"#,
                FailureCause::Transient,
                "server_error",
            ),
            // The bare "Bad Request" variant of an expired or revoked refresh token.
            (
                400,
                "Bad Request",
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "http_400",
            ),
            (
                502,
                "<html>bad gateway</html>",
                FailureCause::Transient,
                "http_502",
            ),
        ];
        for (status, body, cause, shown) in rows {
            let f = classify_token(&answer(status, body, None));
            assert_eq!(f.cause, cause, "{shown}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
        }
    }

    #[test]
    fn token_endpoint_keeps_the_description_and_honours_retry_after() {
        let f = classify_token(&answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            None,
        ));
        assert_eq!(
            f.provider_message.as_deref(),
            Some("Token has been expired or revoked.")
        );
        let f = classify_token(&answer(429, "", Some(20)));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(20)));
        assert_eq!(f.provider_code.as_deref(), Some("http_429"));
    }

    #[test]
    fn token_endpoint_subtype_decides_not_the_description() {
        // Same description, only the subtype differs.
        let plain = r#"{"error":"invalid_grant","error_description":"reauth related error"}"#;
        let rapt = r#"{"error":"invalid_grant","error_description":"reauth related error","error_subtype":"invalid_rapt"}"#;
        assert_eq!(
            classify_token(&answer(400, plain, None)).cause,
            FailureCause::reauth(ReauthReason::InvalidGrant)
        );
        assert_eq!(
            classify_token(&answer(400, rapt, None)).cause,
            FailureCause::reauth(ReauthReason::SessionExpired)
        );
    }

    #[test]
    fn google_ads_error_codes_map_to_documented_causes() {
        use FailureCause::{
            AccountBlocked, AppNotApproved, PermissionLost, Refreshable, Transient,
        };
        let authn = "authenticationError";
        let authz = "authorizationError";
        let rows: Vec<(u16, &str, &str, &str, FailureCause)> = vec![
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "OAUTH_TOKEN_EXPIRED",
                Refreshable,
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "OAUTH_TOKEN_REVOKED",
                FailureCause::reauth(ReauthReason::Revoked),
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "OAUTH_TOKEN_DISABLED",
                FailureCause::reauth(ReauthReason::Revoked),
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "OAUTH_TOKEN_INVALID",
                FailureCause::reauth(ReauthReason::InvalidGrant),
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "GOOGLE_ACCOUNT_DELETED",
                FailureCause::reauth(ReauthReason::InvalidGrant),
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "NOT_ADS_USER",
                PermissionLost,
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "CUSTOMER_NOT_FOUND",
                PermissionLost,
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "TWO_STEP_VERIFICATION_NOT_ENROLLED",
                AccountBlocked,
            ),
            (
                401,
                "UNAUTHENTICATED",
                authn,
                "ADVANCED_PROTECTION_NOT_ENROLLED",
                AccountBlocked,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "USER_PERMISSION_DENIED",
                PermissionLost,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "ACTION_NOT_PERMITTED",
                PermissionLost,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "CUSTOMER_NOT_ENABLED",
                AccountBlocked,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "ACTION_NOT_PERMITTED_FOR_SUSPENDED_ACCOUNT",
                AccountBlocked,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "DEVELOPER_TOKEN_NOT_APPROVED",
                AppNotApproved,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "DEVELOPER_TOKEN_PROHIBITED",
                AppNotApproved,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "PROJECT_DISABLED",
                AppNotApproved,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "MISSING_TOS",
                AppNotApproved,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "ORGANIZATION_NOT_APPROVED",
                AppNotApproved,
            ),
            (
                403,
                "PERMISSION_DENIED",
                authz,
                "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION",
                AppNotApproved,
            ),
            (
                500,
                "INTERNAL",
                "internalError",
                "INTERNAL_ERROR",
                Transient,
            ),
            (
                503,
                "UNAVAILABLE",
                "internalError",
                "TRANSIENT_ERROR",
                Transient,
            ),
        ];
        for (status, rpc, category, name, cause) in rows {
            let body = ads_failure(status, rpc, category, name, &format!("about {name}"));
            let f = classify(&answer(status, &body, None));
            assert_eq!(f.cause, cause, "{name}");
            assert_eq!(f.provider_code.as_deref(), Some(name));
            assert_eq!(
                f.provider_message.as_deref(),
                Some(format!("about {name}").as_str())
            );
        }
    }

    #[test]
    fn quota_errors_carry_the_retry_delay_from_the_body() {
        for name in [
            "RESOURCE_EXHAUSTED",
            "RESOURCE_TEMPORARILY_EXHAUSTED",
            "EXCESSIVE_SHORT_TERM_QUERY_RESOURCE_CONSUMPTION",
            "EXCESSIVE_LONG_TERM_QUERY_RESOURCE_CONSUMPTION",
        ] {
            let body = json!({
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [{
                        "@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                        "errors": [{
                            "errorCode": { "quotaError": name },
                            "message": "Too many requests. Retry in 27 seconds.",
                            "details": {
                                "quotaErrorDetails": {
                                    "rateScope": "DEVELOPER",
                                    "rateName": "Number of operations for basic access",
                                    "retryDelay": "27s",
                                }
                            }
                        }]
                    }]
                }
            })
            .to_string();
            // The body's delay wins over the header.
            let f = classify(&answer(429, &body, Some(3)));
            assert_eq!(f.cause, FailureCause::rate_limited(Some(27)), "{name}");
            assert_eq!(f.provider_code.as_deref(), Some(name));
        }
    }

    #[test]
    fn retry_delay_is_read_in_every_documented_form() {
        // Proto field names, a fractional duration rounded up, and a Duration object.
        let snake = json!({
            "error": {
                "status": "RESOURCE_EXHAUSTED",
                "details": [{
                    "errors": [{
                        "error_code": { "quota_error": "RESOURCE_EXHAUSTED" },
                        "message": "m",
                        "details": { "quota_error_details": { "retry_delay": "1.2s" } },
                    }]
                }]
            }
        })
        .to_string();
        assert_eq!(
            classify(&answer(429, &snake, None)).cause,
            FailureCause::rate_limited(Some(2))
        );
        let object = json!({
            "error": {
                "status": "RESOURCE_EXHAUSTED",
                "details": [{
                    "errors": [{
                        "errorCode": { "quotaError": "RESOURCE_EXHAUSTED" },
                        "details": { "quotaErrorDetails": { "retryDelay": { "seconds": "40" } } },
                    }]
                }]
            }
        })
        .to_string();
        assert_eq!(
            classify(&answer(429, &object, None)).cause,
            FailureCause::rate_limited(Some(40))
        );
        // No delay in the body: the Retry-After header is kept.
        let bare = ads_failure(
            429,
            "RESOURCE_EXHAUSTED",
            "quotaError",
            "RESOURCE_EXHAUSTED",
            "m",
        );
        assert_eq!(
            classify(&answer(429, &bare, Some(9))).cause,
            FailureCause::rate_limited(Some(9))
        );
        // A google.rpc.RetryInfo beside a bare RESOURCE_EXHAUSTED status.
        let retry_info = json!({
            "error": {
                "code": 429,
                "message": "Quota exceeded.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": "15s",
                }]
            }
        })
        .to_string();
        let f = classify(&answer(429, &retry_info, Some(1)));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(15)));
        assert_eq!(f.provider_code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(f.provider_message.as_deref(), Some("Quota exceeded."));
        // A quota error without quotaErrorDetails, with a RetryInfo beside the failure: the
        // RetryInfo delay wins over the header.
        let beside = json!({
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                        "errors": [{ "errorCode": { "quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED" }, "message": "m" }],
                    },
                    { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s" },
                ]
            }
        })
        .to_string();
        let f = classify(&answer(429, &beside, Some(1)));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(12)));
        assert_eq!(
            f.provider_code.as_deref(),
            Some("RESOURCE_TEMPORARILY_EXHAUSTED")
        );
    }

    #[test]
    fn scope_insufficient_error_info_is_a_lost_permission() {
        let body = json!({
            "error": {
                "code": 403,
                "message": "Request had insufficient authentication scopes.",
                "status": "PERMISSION_DENIED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                    "domain": "googleapis.com",
                }]
            }
        })
        .to_string();
        let f = classify(&answer(403, &body, None));
        assert_eq!(f.cause, FailureCause::PermissionLost);
        assert_eq!(
            f.provider_code.as_deref(),
            Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT")
        );
        assert_eq!(
            f.provider_message.as_deref(),
            Some("Request had insufficient authentication scopes.")
        );
    }

    #[test]
    fn rpc_status_decides_when_no_ads_error_is_known() {
        let rows = [
            (401, "UNAUTHENTICATED", FailureCause::Refreshable),
            (403, "PERMISSION_DENIED", FailureCause::PermissionLost),
            (
                429,
                "RESOURCE_EXHAUSTED",
                FailureCause::rate_limited(Some(4)),
            ),
            (503, "UNAVAILABLE", FailureCause::Transient),
            (500, "INTERNAL", FailureCause::Transient),
            (504, "DEADLINE_EXCEEDED", FailureCause::Transient),
        ];
        for (status, rpc, cause) in rows {
            let body = json!({
                "error": { "code": status, "message": "Request had invalid credentials.", "status": rpc }
            })
            .to_string();
            let f = classify(&answer(status, &body, Some(4)));
            assert_eq!(f.cause, cause, "{rpc}");
            assert_eq!(f.provider_code.as_deref(), Some(rpc));
            assert_eq!(
                f.provider_message.as_deref(),
                Some("Request had invalid credentials.")
            );
        }
    }

    #[test]
    fn an_unknown_ads_error_keeps_its_name_and_falls_back_on_the_status() {
        let body = ads_failure(
            400,
            "INVALID_ARGUMENT",
            "requestError",
            "INVALID_CUSTOMER_ID",
            "Invalid customer ID '12'.",
        );
        let f = classify(&answer(400, &body, None));
        assert_eq!(f.cause, FailureCause::Transient);
        assert_eq!(f.provider_code.as_deref(), Some("INVALID_CUSTOMER_ID"));
        assert_eq!(
            f.provider_message.as_deref(),
            Some("Invalid customer ID '12'.")
        );
        // A known error later in the list still decides.
        let body = json!({
            "error": {
                "code": 403,
                "status": "PERMISSION_DENIED",
                "details": [{
                    "errors": [
                        { "errorCode": { "requestError": "UNKNOWN" }, "message": "first" },
                        { "errorCode": { "authorizationError": "USER_PERMISSION_DENIED" }, "message": "second" },
                    ]
                }]
            }
        })
        .to_string();
        let f = classify(&answer(403, &body, None));
        assert_eq!(f.cause, FailureCause::PermissionLost);
        assert_eq!(f.provider_code.as_deref(), Some("USER_PERMISSION_DENIED"));
        assert_eq!(f.provider_message.as_deref(), Some("second"));
    }

    #[test]
    fn the_ads_error_code_decides_over_status_and_message() {
        // Revoked token reported with an HTTP and RPC status that say "permission" and a
        // message that says "quota": the error code still decides.
        let body = ads_failure(
            403,
            "PERMISSION_DENIED",
            "authenticationError",
            "OAUTH_TOKEN_REVOKED",
            "Quota exceeded, please retry.",
        );
        let f = classify(&answer(403, &body, Some(10)));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::Revoked));
        assert_eq!(
            f.provider_message.as_deref(),
            Some("Quota exceeded, please retry.")
        );
        // The category matters: a quota name under another category is not a rate limit.
        let body = ads_failure(
            400,
            "INVALID_ARGUMENT",
            "requestError",
            "RESOURCE_EXHAUSTED",
            "m",
        );
        assert_eq!(
            classify(&answer(400, &body, None)).cause,
            FailureCause::Transient
        );
    }

    #[test]
    fn answers_without_a_status_body_fall_back_on_the_http_status() {
        let rows = [
            (401, FailureCause::Refreshable, "http_401"),
            (403, FailureCause::PermissionLost, "http_403"),
            (429, FailureCause::rate_limited(Some(6)), "http_429"),
            (502, FailureCause::Transient, "http_502"),
        ];
        for (status, cause, shown) in rows {
            let f = classify(&answer(status, "<html>error</html>", Some(6)));
            assert_eq!(f.cause, cause, "{shown}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
            assert_eq!(f.provider_message.as_deref(), Some("<html>error</html>"));
        }
    }
}
