//! Classification of Shopify Admin API answers (REST and GraphQL) and of the shop's OAuth
//! token endpoint.
//!
//! REST errors carry no code of their own: the documented signal is the HTTP status (401,
//! 402, 403, 423, 429, 5xx), and the body is `{"errors": "…"}` (a string, or an object of
//! field messages) kept for humans. GraphQL answers can be HTTP 200 with
//! `{"errors":[{"message","extensions":{"code"}}],"extensions":{"cost":{…}}}`; there the
//! `extensions.code` decides.
//!
//! 401 is [`FailureCause::Refreshable`]: with expiring offline tokens (the only kind public
//! apps may use from 2027) a 401 most often means the 60-minute access token ran out. For a
//! non-expiring token (uninstalled app) the forced refresh fails or the retry is refused
//! again, and the engine then counts it as an authorization failure.

use gapless_core::{Failure, FailureCause};
use serde_json::Value;

use crate::{http::Answer, oauth::TokenErrorBody};

/// Classify an Admin API answer that is not a success: a REST error status, or a GraphQL
/// answer (any status, typically 200) whose `errors` carry an `extensions.code`.
///
/// `provider_code` is the GraphQL code (e.g. `THROTTLED`) or `http_<status>`;
/// `provider_message` is the first GraphQL error message, the REST `errors` text, or the
/// body excerpt.
pub fn classify(answer: &Answer) -> Failure {
    let json = answer.json();
    if let Some(json) = &json
        && let Some(failure) = graphql(answer, json)
    {
        return failure;
    }
    let cause = match answer.status {
        401 => FailureCause::Refreshable,
        // Shop frozen for an unpaid bill: the merchant has to pay Shopify first.
        402 => FailureCause::AccountBlocked,
        // Generally a scope the app does not hold (e.g. merchant approval for read_orders).
        403 => FailureCause::PermissionLost,
        // Shop locked by Shopify.
        423 => FailureCause::AccountBlocked,
        429 => FailureCause::rate_limited(answer.retry_after),
        // 430 "security rejection" (documented only by third parties): Shopify refuses the
        // traffic for a while; treated as temporary. Judgment call.
        _ => FailureCause::Transient,
    };
    let message = json
        .as_ref()
        .and_then(|j| j.get("errors"))
        .map(|errors| match errors {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| answer.excerpt());
    Failure::new(cause)
        .with_code(format!("http_{}", answer.status))
        .with_message(message)
}

/// A GraphQL error answer, if the body is one with a code we can read.
fn graphql(answer: &Answer, json: &Value) -> Option<Failure> {
    let errors = json.get("errors")?.as_array()?;
    let (code, message) = errors.iter().find_map(|e| {
        let code = e.get("extensions")?.get("code")?.as_str()?;
        let message = e.get("message").and_then(Value::as_str);
        Some((code, message))
    })?;
    let cause = match code {
        "THROTTLED" => FailureCause::rate_limited(restore_wait(json).or(answer.retry_after)),
        // Shopify documents ACCESS_DENIED as "similar to 401 Unauthorized".
        "ACCESS_DENIED" => FailureCause::Refreshable,
        // The shop is not active (repeated limit abuse, fraud risk): the merchant acts.
        "SHOP_INACTIVE" => FailureCause::AccountBlocked,
        // INTERNAL_SERVER_ERROR stands in for a 500. MAX_COST_EXCEEDED (a query too costly
        // for the bucket) and unknown codes are kept Transient, with the code for humans.
        _ => match answer.status {
            402 | 423 => FailureCause::AccountBlocked,
            _ => FailureCause::Transient,
        },
    };
    Some(
        Failure::new(cause)
            .with_code(code)
            .with_message(message.map_or_else(|| answer.excerpt(), str::to_string)),
    )
}

/// Seconds until the bucket holds the requested query cost again, from
/// `extensions.cost` (`requestedQueryCost`, `throttleStatus.currentlyAvailable`,
/// `throttleStatus.restoreRate`). None when the body does not say.
fn restore_wait(json: &Value) -> Option<u64> {
    let cost = json.get("extensions")?.get("cost")?;
    let requested = cost.get("requestedQueryCost")?.as_f64()?;
    let status = cost.get("throttleStatus")?;
    let available = status.get("currentlyAvailable")?.as_f64()?;
    let rate = status.get("restoreRate")?.as_f64()?;
    let missing = requested - available;
    if !(rate > 0.0 && missing.is_finite() && missing > 0.0) {
        return None;
    }
    Some((missing / rate).ceil() as u64)
}

/// Classify an error answer of `https://{shop}.myshopify.com/admin/oauth/access_token`
/// (code exchange or refresh of an expiring offline token).
///
/// `provider_code` is `error` or `http_<status>`; `provider_message` is
/// `error_description`, else the REST `errors` text, else the body excerpt.
pub fn classify_token(answer: &Answer) -> Failure {
    let body = TokenErrorBody::read(answer);
    let cause = body.registered_cause().unwrap_or(match answer.status {
        // A frozen (unpaid) or locked shop refuses its token too.
        402 | 423 => FailureCause::AccountBlocked,
        _ => TokenErrorBody::status_cause(answer),
    });
    // Shopify puts a plain-text reason in `errors` where others say `error_description`.
    let errors = answer
        .json()
        .and_then(|j| j.get("errors").and_then(Value::as_str).map(str::to_string));
    Failure::new(cause)
        .with_code(body.code(answer, None))
        .with_message(
            body.description
                .clone()
                .or(errors)
                .unwrap_or_else(|| answer.excerpt()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapless_core::ReauthReason;

    use crate::http::test_answer as answer;

    use crate::http::ClassifyCase as Row;

    use crate::http::check_cases as check;

    #[test]
    fn rest_statuses_map_to_documented_causes() {
        check(
            classify,
            &[
                Row {
                    status: 401,
                    body: r#"{"errors":"[API] Invalid API key or access token (unrecognized login or wrong password)"}"#,
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "http_401",
                    message: "[API] Invalid API key or access token (unrecognized login or wrong password)",
                },
                Row {
                    status: 402,
                    body: r#"{"errors":"Unavailable Shop"}"#,
                    retry_after: None,
                    cause: FailureCause::AccountBlocked,
                    code: "http_402",
                    message: "Unavailable Shop",
                },
                Row {
                    status: 403,
                    body: r#"{"errors":"This action requires merchant approval for read_orders scope."}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "http_403",
                    message: "This action requires merchant approval for read_orders scope.",
                },
                Row {
                    status: 423,
                    body: r#"{"errors":"Locked"}"#,
                    retry_after: None,
                    cause: FailureCause::AccountBlocked,
                    code: "http_423",
                    message: "Locked",
                },
                Row {
                    status: 429,
                    body: r#"{"errors":"Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}"#,
                    retry_after: Some(2),
                    cause: FailureCause::rate_limited(Some(2)),
                    code: "http_429",
                    message: "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service.",
                },
                Row {
                    status: 430,
                    body: "Security Rejection",
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_430",
                    message: "Security Rejection",
                },
                Row {
                    status: 500,
                    body: r#"{"errors":"Internal Server Error"}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_500",
                    message: "Internal Server Error",
                },
                Row {
                    status: 503,
                    body: "<html>Service Unavailable</html>",
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_503",
                    message: "<html>Service Unavailable</html>",
                },
                // Field errors come as an object: kept as JSON text.
                Row {
                    status: 422,
                    body: r#"{"errors":{"title":["can't be blank"]}}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_422",
                    message: r#"{"title":["can't be blank"]}"#,
                },
            ],
        );
    }

    #[test]
    fn graphql_errors_in_a_200_answer_are_classified_by_their_code() {
        check(
            classify,
            &[
                Row {
                    status: 200,
                    body: r#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED","documentation":"https://shopify.dev/api/usage/rate-limits"}}],"extensions":{"cost":{"requestedQueryCost":752,"actualQueryCost":null,"throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":666,"restoreRate":50.0}}}}"#,
                    retry_after: None,
                    // (752 - 666) / 50 = 1.72 s, rounded up.
                    cause: FailureCause::rate_limited(Some(2)),
                    code: "THROTTLED",
                    message: "Throttled",
                },
                Row {
                    status: 200,
                    body: r#"{"errors":[{"message":"Access denied for shop field.","extensions":{"code":"ACCESS_DENIED"}}]}"#,
                    retry_after: None,
                    cause: FailureCause::Refreshable,
                    code: "ACCESS_DENIED",
                    message: "Access denied for shop field.",
                },
                Row {
                    status: 200,
                    body: r#"{"errors":[{"message":"Shop is not active","extensions":{"code":"SHOP_INACTIVE"}}]}"#,
                    retry_after: None,
                    cause: FailureCause::AccountBlocked,
                    code: "SHOP_INACTIVE",
                    message: "Shop is not active",
                },
                Row {
                    status: 200,
                    body: r#"{"errors":[{"message":"Internal error. Looks like something went wrong on our end.","extensions":{"code":"INTERNAL_SERVER_ERROR","requestId":"1b355a21"}}]}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "INTERNAL_SERVER_ERROR",
                    message: "Internal error. Looks like something went wrong on our end.",
                },
                Row {
                    status: 200,
                    body: r#"{"errors":[{"message":"Query cost is 2003, which exceeds the single query max cost limit (1000).","extensions":{"code":"MAX_COST_EXCEEDED","cost":2003,"maxCost":1000}}]}"#,
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "MAX_COST_EXCEEDED",
                    message: "Query cost is 2003, which exceeds the single query max cost limit (1000).",
                },
            ],
        );
    }

    #[test]
    fn throttled_without_cost_data_uses_retry_after() {
        let body = r#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}]}"#;
        assert_eq!(
            classify(&answer(429, body, Some(4))).cause,
            FailureCause::rate_limited(Some(4))
        );
        assert_eq!(
            classify(&answer(200, body, None)).cause,
            FailureCause::rate_limited(None)
        );
        // The bucket already holds enough: no computed wait, the header is used.
        let full = r#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}],"extensions":{"cost":{"requestedQueryCost":10,"throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":900,"restoreRate":50.0}}}}"#;
        assert_eq!(
            classify(&answer(200, full, Some(1))).cause,
            FailureCause::rate_limited(Some(1))
        );
    }

    #[test]
    fn the_graphql_code_decides_over_message_and_status() {
        // A message that sounds like a lost scope, on HTTP 403, is still throttling.
        let body = r#"{"errors":[{"message":"Access denied: missing scope","extensions":{"code":"THROTTLED"}}]}"#;
        let f = classify(&answer(403, body, Some(3)));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(3)));
        assert_eq!(f.provider_code.as_deref(), Some("THROTTLED"));
        // The same "Throttled" message without a code on a 200 is not read as a throttle.
        let f = classify(&answer(
            200,
            r#"{"errors":[{"message":"Throttled"}]}"#,
            None,
        ));
        assert_eq!(f.cause, FailureCause::Transient);
        assert_eq!(f.provider_code.as_deref(), Some("http_200"));
    }

    #[test]
    fn token_endpoint_errors_map_to_causes() {
        check(
            classify_token,
            &[
                Row {
                    status: 400,
                    body: r#"{"error":"invalid_grant","error_description":"The refresh token is invalid or has expired."}"#,
                    retry_after: None,
                    cause: FailureCause::reauth(ReauthReason::InvalidGrant),
                    code: "invalid_grant",
                    message: "The refresh token is invalid or has expired.",
                },
                Row {
                    status: 401,
                    body: r#"{"error":"invalid_client","error_description":"Client credentials are invalid"}"#,
                    retry_after: None,
                    cause: FailureCause::AppNotApproved,
                    code: "invalid_client",
                    message: "Client credentials are invalid",
                },
                Row {
                    status: 400,
                    body: r#"{"error":"invalid_scope","error_description":"Scope not granted"}"#,
                    retry_after: None,
                    cause: FailureCause::PermissionLost,
                    code: "invalid_scope",
                    message: "Scope not granted",
                },
                Row {
                    status: 429,
                    body: r#"{"errors":"Too many requests"}"#,
                    retry_after: Some(8),
                    cause: FailureCause::rate_limited(Some(8)),
                    code: "http_429",
                    message: "Too many requests",
                },
                Row {
                    status: 402,
                    body: r#"{"errors":"Unavailable Shop"}"#,
                    retry_after: None,
                    cause: FailureCause::AccountBlocked,
                    code: "http_402",
                    message: "Unavailable Shop",
                },
                Row {
                    status: 502,
                    body: "Bad Gateway",
                    retry_after: None,
                    cause: FailureCause::Transient,
                    code: "http_502",
                    message: "Bad Gateway",
                },
                Row {
                    status: 400,
                    body: "Bad Request",
                    retry_after: None,
                    cause: FailureCause::reauth(ReauthReason::InvalidGrant),
                    code: "http_400",
                    message: "Bad Request",
                },
            ],
        );
    }
}
