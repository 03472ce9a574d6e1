//! Classification of Microsoft identity platform (Entra ID) answers and of API answers made
//! with its tokens.
//!
//! The token endpoint answers
//! `{"error","error_description":"AADSTS700082: …","error_codes":[700082],"trace_id",…}`.
//! The OAuth `error` is coarse (`invalid_grant` covers most of the cases below); the real
//! reason is the numeric AADSTS code. It is read from `error_codes`, else from the `AADSTSnnnn`
//! prefix of `error_description`; the wording after the number is never read (Microsoft
//! warns it changes). Only when no known code is present does the OAuth `error` decide.

use gapless_core::{Failure, FailureCause, ReauthReason};
use serde_json::Value;

use crate::{http::Answer, oauth::TokenErrorBody};

/// Classify an error answer of the identity platform's token endpoint
/// (`/oauth2/v2.0/token`).
///
/// `provider_code` is `AADSTS<n>` for the code that decided (else the first code given),
/// else the OAuth `error`, else `http_<status>`; `provider_message` is `error_description`
/// verbatim (it includes Microsoft's trace and correlation ids), or the body excerpt.
pub fn classify_token(answer: &Answer) -> Failure {
    let json = answer.json();
    let body = TokenErrorBody::read(answer);
    let codes = aadsts_codes(json.as_ref(), body.description.as_deref());
    let known = codes
        .iter()
        .find_map(|&code| by_aadsts(code, answer.retry_after).map(|cause| (code, cause)));
    let cause = match known {
        Some((_, cause)) => cause,
        None => by_error(&body, answer),
    };
    let code = match (known, codes.first()) {
        (Some((code, _)), _) | (None, Some(&code)) => format!("AADSTS{code}"),
        (None, None) => body.code(answer, None),
    };
    Failure::new(cause)
        .with_code(code)
        .with_message(body.message(answer))
}

/// Classify an answer of an API called with an identity-platform token (Microsoft Graph,
/// Microsoft Advertising REST). An identity-platform error body is classified as
/// [`classify_token`] does; otherwise the HTTP status decides and the API's own
/// `error.code` / `error.message` (Graph shape) are kept for humans.
pub fn classify(answer: &Answer) -> Failure {
    let json = answer.json();
    if json
        .as_ref()
        .and_then(|j| j.get("error"))
        .is_some_and(Value::is_string)
    {
        return classify_token(answer);
    }
    let error = json.as_ref().and_then(|j| j.get("error"));
    let text = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    let cause = match answer.status {
        401 => FailureCause::Refreshable,
        403 => FailureCause::PermissionLost,
        429 => FailureCause::rate_limited(answer.retry_after),
        _ => FailureCause::Transient,
    };
    let code = text("code").map_or_else(|| format!("http_{}", answer.status), str::to_string);
    let message = text("message").map_or_else(|| answer.excerpt(), str::to_string);
    Failure::new(cause).with_code(code).with_message(message)
}

/// The AADSTS codes of an answer: `error_codes` if present, else the number after a leading
/// `AADSTS` in the description.
fn aadsts_codes(json: Option<&Value>, description: Option<&str>) -> Vec<u64> {
    let listed: Vec<u64> = json
        .and_then(|j| j.get("error_codes"))
        .and_then(Value::as_array)
        .map(|codes| codes.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    description
        .and_then(|d| d.trim_start().strip_prefix("AADSTS"))
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .into_iter()
        .collect()
}

/// The AADSTS codes the reference documents (§1.11), with the closest cause.
fn by_aadsts(code: u64, retry_after: Option<u64>) -> Option<FailureCause> {
    use ReauthReason::{Expired, InvalidGrant, PasswordChanged, Revoked, SessionExpired};
    let cause = match code {
        // ExpiredOrRevokedGrant: in practice the refresh token's inactivity expiry; Microsoft
        // uses 50173 for an explicit revocation.
        70008 => FailureCause::reauth(Expired),
        // Refresh token inactive (90 days) / SPA refresh token's fixed lifetime.
        700082 | 700084 => FailureCause::reauth(Expired),
        // FreshTokenNeeded: an admin or the user revoked the tokens.
        50173 => FailureCause::reauth(Revoked),
        // Conditional Access sign-in frequency; an expired flow token.
        70043 | 50089 => FailureCause::reauth(SessionExpired),
        // Session invalid after a password change or expiry.
        50132 | 50133 => FailureCause::reauth(PasswordChanged),
        // MFA is now required (50076) or must be enrolled (50079). Both are resolved by an
        // interactive sign-in, where enrollment happens too, so a reconnect fixes them; the
        // closest reason is a session that no longer satisfies policy. Judgment call.
        50076 | 50079 => FailureCause::reauth(SessionExpired),
        // User disabled. The reference files it under ReauthRequired (§0.1) although an
        // admin must re-enable the account first; no ReauthReason names it. Judgment call.
        50057 => FailureCause::reauth(InvalidGrant),
        // User not in the directory (deleted, or another tenant): only a reconnect with an
        // existing account helps. Judgment call.
        50034 => FailureCause::reauth(InvalidGrant),
        // Locked (too many attempts, malicious IP), password expired (50055, 50144), and
        // sign-in blocked by Conditional Access (53003, a judgment call: the tenant's admin
        // has to change the policy, nothing on our side or a reconnect helps).
        50053 | 50055 | 50144 | 53003 => FailureCause::AccountBlocked,
        // External user not in the tenant (50020, 16000) and user not assigned to the app
        // (50105): an admin has to grant access. Judgment call.
        50020 | 16000 | 50105 => FailureCause::PermissionLost,
        // Consent missing (65001), consent declined (65004), invalid scope (70011).
        65001 | 65004 | 70011 => FailureCause::PermissionLost,
        // App disabled (70001), app not found (700016), bad client secret (70002), invalid or
        // expired client secret (7000215, 7000222), misconfigured app or resource (650056,
        // 650057).
        70001 | 700016 | 70002 | 7000215 | 7000222 | 650056 | 650057 => {
            FailureCause::AppNotApproved
        }
        // Request loop detected; tenant throttled.
        50196 | 90055 => FailureCause::rate_limited(retry_after),
        // Retryable errors, external server retryable, request budget exceeded (transient).
        50033 | 90006 | 90024 => FailureCause::Transient,
        _ => return None,
    };
    Some(cause)
}

/// The OAuth `error` when no known AADSTS code decides.
fn by_error(body: &TokenErrorBody, answer: &Answer) -> FailureCause {
    match body.error.as_str() {
        // The user must sign in interactively again (new MFA, new consent, session policy).
        "interaction_required" => FailureCause::reauth(ReauthReason::SessionExpired),
        "consent_required" => FailureCause::PermissionLost,
        _ => body.cause(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::http::test_answer as answer;

    /// The identity platform's documented error body.
    fn aad(error: &str, code: u64, text: &str) -> (String, String) {
        let description = format!(
            "AADSTS{code}: {text}\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2026-11-28 10:00:00Z"
        );
        let body = json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": "2026-11-28 10:00:00Z",
            "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
            "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
            "error_uri": "https://login.microsoftonline.com/error?code=0",
        })
        .to_string();
        (body, description)
    }

    #[test]
    fn documented_aadsts_codes_map_to_causes() {
        use FailureCause::{AccountBlocked, AppNotApproved, PermissionLost, Transient};
        let rows: Vec<(&str, u64, FailureCause)> = vec![
            (
                "invalid_grant",
                70008,
                FailureCause::reauth(ReauthReason::Expired),
            ),
            (
                "invalid_grant",
                700082,
                FailureCause::reauth(ReauthReason::Expired),
            ),
            (
                "invalid_grant",
                700084,
                FailureCause::reauth(ReauthReason::Expired),
            ),
            (
                "invalid_grant",
                50173,
                FailureCause::reauth(ReauthReason::Revoked),
            ),
            (
                "invalid_grant",
                70043,
                FailureCause::reauth(ReauthReason::SessionExpired),
            ),
            (
                "invalid_grant",
                50089,
                FailureCause::reauth(ReauthReason::SessionExpired),
            ),
            (
                "invalid_grant",
                50132,
                FailureCause::reauth(ReauthReason::PasswordChanged),
            ),
            (
                "invalid_grant",
                50133,
                FailureCause::reauth(ReauthReason::PasswordChanged),
            ),
            (
                "interaction_required",
                50076,
                FailureCause::reauth(ReauthReason::SessionExpired),
            ),
            (
                "interaction_required",
                50079,
                FailureCause::reauth(ReauthReason::SessionExpired),
            ),
            (
                "invalid_grant",
                50057,
                FailureCause::reauth(ReauthReason::InvalidGrant),
            ),
            (
                "invalid_grant",
                50034,
                FailureCause::reauth(ReauthReason::InvalidGrant),
            ),
            ("invalid_grant", 50053, AccountBlocked),
            ("invalid_grant", 50055, AccountBlocked),
            ("invalid_grant", 50144, AccountBlocked),
            ("invalid_grant", 53003, AccountBlocked),
            ("invalid_grant", 50020, PermissionLost),
            ("invalid_grant", 16000, PermissionLost),
            ("invalid_grant", 50105, PermissionLost),
            ("invalid_grant", 65001, PermissionLost),
            ("access_denied", 65004, PermissionLost),
            ("invalid_scope", 70011, PermissionLost),
            ("unauthorized_client", 70001, AppNotApproved),
            ("unauthorized_client", 700016, AppNotApproved),
            ("invalid_client", 70002, AppNotApproved),
            ("invalid_client", 7000215, AppNotApproved),
            ("invalid_client", 7000222, AppNotApproved),
            ("invalid_client", 650056, AppNotApproved),
            ("invalid_request", 650057, AppNotApproved),
            ("invalid_request", 50033, Transient),
            ("temporarily_unavailable", 90006, Transient),
            ("invalid_request", 90024, Transient),
        ];
        for (error, code, cause) in rows {
            let (body, description) = aad(error, code, "some text");
            let f = classify_token(&answer(400, &body, None));
            assert_eq!(f.cause, cause, "AADSTS{code}");
            assert_eq!(
                f.provider_code.as_deref(),
                Some(format!("AADSTS{code}").as_str())
            );
            assert_eq!(f.provider_message.as_deref(), Some(description.as_str()));
        }
    }

    #[test]
    fn throttling_codes_carry_the_retry_after_hint() {
        for code in [50196, 90055] {
            let (body, _) = aad("temporarily_unavailable", code, "slow down");
            let f = classify_token(&answer(429, &body, Some(17)));
            assert_eq!(
                f.cause,
                FailureCause::rate_limited(Some(17)),
                "AADSTS{code}"
            );
        }
    }

    #[test]
    fn the_numeric_code_decides_not_the_text_or_the_oauth_error() {
        // The same code with other wording (and another language) gives the same cause.
        for text in [
            "The refresh token has expired due to inactivity.",
            "Das Aktualisierungstoken ist aufgrund von Inaktivität abgelaufen.",
            "Service temporarily unavailable, please retry.",
        ] {
            let (body, _) = aad("invalid_grant", 700082, text);
            let f = classify_token(&answer(400, &body, None));
            assert_eq!(
                f.cause,
                FailureCause::reauth(ReauthReason::Expired),
                "{text}"
            );
        }
        // Under an `invalid_grant` error, 7000222 (expired client secret) still means the
        // app's secret, not the user's grant.
        let (body, _) = aad("invalid_grant", 7000222, "x");
        assert_eq!(
            classify_token(&answer(400, &body, None)).cause,
            FailureCause::AppNotApproved
        );
    }

    #[test]
    fn the_code_is_read_from_the_description_prefix_when_error_codes_is_missing() {
        let body = json!({
            "error": "invalid_grant",
            "error_description": "AADSTS50173: The provided grant has expired due to it being revoked.",
        })
        .to_string();
        let f = classify_token(&answer(400, &body, None));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::Revoked));
        assert_eq!(f.provider_code.as_deref(), Some("AADSTS50173"));
        // A number elsewhere in the text is not a code.
        let body = json!({
            "error": "server_error",
            "error_description": "Retry after AADSTS50173 clears.",
        })
        .to_string();
        let f = classify_token(&answer(500, &body, None));
        assert_eq!(f.cause, FailureCause::Transient);
        assert_eq!(f.provider_code.as_deref(), Some("server_error"));
    }

    #[test]
    fn the_first_known_code_decides_among_several() {
        let body = json!({
            "error": "invalid_grant",
            "error_description": "AADSTS9999999: something new",
            "error_codes": [9_999_999, 50057],
        })
        .to_string();
        let f = classify_token(&answer(400, &body, None));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::InvalidGrant));
        assert_eq!(f.provider_code.as_deref(), Some("AADSTS50057"));
        // Only unknown codes: the OAuth error decides, the code is kept.
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": "AADSTS9999999: something new",
            "error_codes": [9_999_999],
        })
        .to_string();
        let f = classify_token(&answer(503, &body, None));
        assert_eq!(f.cause, FailureCause::Transient);
        assert_eq!(f.provider_code.as_deref(), Some("AADSTS9999999"));
    }

    #[test]
    fn oauth_errors_without_a_known_code_map_to_causes() {
        let rows = [
            (
                400,
                "invalid_grant",
                FailureCause::reauth(ReauthReason::InvalidGrant),
            ),
            (
                400,
                "interaction_required",
                FailureCause::reauth(ReauthReason::SessionExpired),
            ),
            (400, "consent_required", FailureCause::PermissionLost),
            (400, "invalid_scope", FailureCause::PermissionLost),
            (401, "invalid_client", FailureCause::AppNotApproved),
            (400, "unauthorized_client", FailureCause::AppNotApproved),
            (503, "temporarily_unavailable", FailureCause::Transient),
            (500, "server_error", FailureCause::Transient),
        ];
        for (status, error, cause) in rows {
            let body = json!({ "error": error, "error_description": "no code here" }).to_string();
            let f = classify_token(&answer(status, &body, None));
            assert_eq!(f.cause, cause, "{error}");
            assert_eq!(f.provider_code.as_deref(), Some(error));
            assert_eq!(f.provider_message.as_deref(), Some("no code here"));
        }
        let f = classify_token(&answer(429, "", Some(9)));
        assert_eq!(f.cause, FailureCause::rate_limited(Some(9)));
        assert_eq!(f.provider_code.as_deref(), Some("http_429"));
        let f = classify_token(&answer(502, "Bad Gateway", None));
        assert_eq!(f.cause, FailureCause::Transient);
    }

    #[test]
    fn api_answers_fall_back_on_the_status_and_keep_the_api_code() {
        let rows = [
            (401, "InvalidAuthenticationToken", FailureCause::Refreshable),
            (
                403,
                "Authorization_RequestDenied",
                FailureCause::PermissionLost,
            ),
            (429, "TooManyRequests", FailureCause::rate_limited(Some(30))),
            (503, "serviceNotAvailable", FailureCause::Transient),
        ];
        for (status, code, cause) in rows {
            let body =
                json!({ "error": { "code": code, "message": "Graph says no." } }).to_string();
            let f = classify(&answer(status, &body, Some(30)));
            assert_eq!(f.cause, cause, "{code}");
            assert_eq!(f.provider_code.as_deref(), Some(code));
            assert_eq!(f.provider_message.as_deref(), Some("Graph says no."));
        }
        let f = classify(&answer(500, "", None));
        assert_eq!(f.cause, FailureCause::Transient);
        assert_eq!(f.provider_code.as_deref(), Some("http_500"));
    }

    #[test]
    fn api_answers_with_an_identity_platform_body_are_classified_by_aadsts_code() {
        let (body, _) = aad("invalid_grant", 50173, "revoked");
        let f = classify(&answer(401, &body, None));
        assert_eq!(f.cause, FailureCause::reauth(ReauthReason::Revoked));
        assert_eq!(f.provider_code.as_deref(), Some("AADSTS50173"));
    }
}
