//! Classification of Meta Graph / Marketing API error answers.
//!
//! Every error arrives in one envelope,
//! `{"error":{"message","type","code","error_subcode","error_user_msg","fbtrace_id"}}`, with
//! an HTTP status Meta does not keep consistent (400, 403 and 500 all occur for the same
//! code), so the decision is keyed on `code` and `error_subcode` and the status is only a
//! fallback for answers without the envelope.
//!
//! Meta has no refresh token. An access token it rejects cannot be renewed silently, so
//! nothing here is [`FailureCause::Refreshable`]: every token problem is
//! [`FailureCause::ReauthRequired`], with the closest [`ReauthReason`].

use gapless_core::{Failure, FailureCause, ReauthReason};
use serde_json::Value;

use crate::http::Answer;

/// Classify a Graph / Marketing API answer that is not a success.
///
/// `provider_code` is `code` or `code/subcode` (e.g. `190/458`), or `http_<status>` when the
/// body has no Graph error; `provider_message` is Meta's `message`, or the body excerpt.
pub fn classify(answer: &Answer) -> Failure {
    let json = answer.json();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let subcode = error
        .and_then(|e| e.get("error_subcode"))
        .and_then(Value::as_i64);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| answer.excerpt());
    let Some(code) = code else {
        return Failure::new(by_status(answer))
            .with_code(format!("http_{}", answer.status))
            .with_message(message);
    };
    let shown = match subcode {
        Some(sub) => format!("{code}/{sub}"),
        None => code.to_string(),
    };
    Failure::new(by_code(code, subcode, answer.retry_after))
        .with_code(shown)
        .with_message(message)
}

/// The documented code table (provider reference §1.1).
fn by_code(code: i64, subcode: Option<i64>, retry_after: Option<u64>) -> FailureCause {
    match (code, subcode) {
        // Token problems. Meta documents the 458–467 subcodes for both 190 (invalid OAuth
        // token) and 102 (API session).
        (190 | 102, Some(458)) => FailureCause::reauth(ReauthReason::Revoked),
        (190 | 102, Some(460)) => FailureCause::reauth(ReauthReason::PasswordChanged),
        // Checkpoint (the person must log in on facebook.com) and unconfirmed user: the
        // account owner has to act at Meta before any reconnect can work.
        (190 | 102, Some(459 | 464)) => FailureCause::AccountBlocked,
        // 463 "session has expired": with no refresh token this is the end of the token's
        // lifetime, hence Expired.
        (190 | 102, Some(463)) => FailureCause::reauth(ReauthReason::Expired),
        // 467 (user logged out / invalid token) and 492 (invalid session; meaning not
        // confirmed) both describe a session that ended: SessionExpired is a judgment call.
        (190 | 102, Some(467 | 492)) => FailureCause::reauth(ReauthReason::SessionExpired),
        // Plain 190/102 (expired, revoked or invalid, Meta does not say which) and any other
        // subcode.
        (190 | 102, _) => FailureCause::reauth(ReauthReason::InvalidGrant),
        (10 | 200..=299, _) => FailureCause::PermissionLost,
        // "Object does not exist or no permission" (e.g. a system user taken off the ad
        // account). Meta cannot tell the two apart; losing access is the likelier reason for
        // an object that was readable before.
        (100, Some(33)) => FailureCause::PermissionLost,
        (3, _) => FailureCause::AppNotApproved,
        // A temporary policy block on the account: it lifts by itself or after the owner
        // acts, but until then no call of ours helps.
        (368, _) => FailureCause::AccountBlocked,
        // Throttling: app (4, including Insights 4/1504022 and 4/1504039), user (17), Page
        // (32), ad account (613), 341, and the business use case range 80000–80014.
        (4 | 17 | 32 | 341 | 613, _) | (80_000..=80_014, _) => FailureCause::RateLimited {
            retry_after_secs: retry_after,
        },
        // Intermittent errors, Insights timeouts (100/1504018 and 2/1504038: the request
        // should shrink or go async, but the failure itself is temporary), the failed async
        // report (-2/2490547), and every code not listed above.
        _ => FailureCause::Transient,
    }
}

/// An answer without the Graph envelope (a proxy, an outage page, an empty body).
fn by_status(answer: &Answer) -> FailureCause {
    match answer.status {
        429 => FailureCause::RateLimited {
            retry_after_secs: answer.retry_after,
        },
        // No refresh token to try: a bare 401 can only be fixed by reconnecting.
        401 => FailureCause::reauth(ReauthReason::InvalidGrant),
        403 => FailureCause::PermissionLost,
        _ => FailureCause::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_answer as answer;

    /// The documented Graph envelope with every field Meta sends.
    fn graph(code: i64, subcode: Option<i64>, message: &str) -> String {
        let mut error = serde_json::json!({
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_user_title": "title",
            "error_user_msg": "user message",
            "fbtrace_id": "AbCdEf123",
        });
        if let Some(sub) = subcode {
            error["error_subcode"] = sub.into();
        }
        serde_json::json!({ "error": error }).to_string()
    }

    struct Row {
        status: u16,
        code: i64,
        subcode: Option<i64>,
        cause: FailureCause,
        shown: &'static str,
    }

    fn row(
        status: u16,
        code: i64,
        subcode: Option<i64>,
        cause: FailureCause,
        shown: &'static str,
    ) -> Row {
        Row {
            status,
            code,
            subcode,
            cause,
            shown,
        }
    }

    #[test]
    fn documented_graph_codes_map_to_their_causes() {
        use FailureCause::{AccountBlocked, AppNotApproved, PermissionLost, Transient};
        let rows = [
            row(
                400,
                190,
                None,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "190",
            ),
            row(
                400,
                102,
                None,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "102",
            ),
            row(
                400,
                190,
                Some(458),
                FailureCause::reauth(ReauthReason::Revoked),
                "190/458",
            ),
            row(400, 190, Some(459), AccountBlocked, "190/459"),
            row(
                400,
                190,
                Some(460),
                FailureCause::reauth(ReauthReason::PasswordChanged),
                "190/460",
            ),
            row(
                400,
                190,
                Some(463),
                FailureCause::reauth(ReauthReason::Expired),
                "190/463",
            ),
            row(400, 190, Some(464), AccountBlocked, "190/464"),
            row(
                400,
                190,
                Some(467),
                FailureCause::reauth(ReauthReason::SessionExpired),
                "190/467",
            ),
            row(
                400,
                190,
                Some(492),
                FailureCause::reauth(ReauthReason::SessionExpired),
                "190/492",
            ),
            row(
                400,
                102,
                Some(458),
                FailureCause::reauth(ReauthReason::Revoked),
                "102/458",
            ),
            row(
                400,
                190,
                Some(999),
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "190/999",
            ),
            row(403, 10, None, PermissionLost, "10"),
            row(403, 200, None, PermissionLost, "200"),
            row(403, 272, None, PermissionLost, "272"),
            row(403, 299, None, PermissionLost, "299"),
            row(400, 3, None, AppNotApproved, "3"),
            row(400, 100, Some(33), PermissionLost, "100/33"),
            row(400, 368, None, AccountBlocked, "368"),
            row(500, 100, Some(1_504_018), Transient, "100/1504018"),
            row(500, 2, Some(1_504_038), Transient, "2/1504038"),
            row(500, 1, None, Transient, "1"),
            row(500, 2, None, Transient, "2"),
            row(500, 2, Some(1_504_043), Transient, "2/1504043"),
            row(400, -2, Some(2_490_547), Transient, "-2/2490547"),
            // 100 without subcode 33 is a bad parameter, not a lost permission.
            row(400, 100, None, Transient, "100"),
        ];
        for r in rows {
            let f = classify(&answer(r.status, &graph(r.code, r.subcode, "msg"), None));
            assert_eq!(f.cause, r.cause, "{}", r.shown);
            assert_eq!(f.provider_code.as_deref(), Some(r.shown));
            assert_eq!(f.provider_message.as_deref(), Some("msg"), "{}", r.shown);
        }
    }

    #[test]
    fn throttling_codes_are_rate_limited_with_the_retry_after_hint() {
        let rows = [
            (4, None, "4"),
            (4, Some(1_504_022), "4/1504022"),
            (4, Some(1_504_039), "4/1504039"),
            (17, Some(2_446_079), "17/2446079"),
            (32, None, "32"),
            (613, Some(1_487_742), "613/1487742"),
            (341, None, "341"),
            (80_000, None, "80000"),
            (80_004, None, "80004"),
            (80_014, None, "80014"),
        ];
        for (code, subcode, shown) in rows {
            // Meta sends these on 400 as often as on 429: the code decides, not the status.
            let f = classify(&answer(400, &graph(code, subcode, "slow down"), Some(45)));
            assert_eq!(f.cause, FailureCause::rate_limited(Some(45)), "{shown}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
        }
        // Just outside the business use case range is not a throttle.
        let f = classify(&answer(400, &graph(80_015, None, "m"), Some(45)));
        assert_eq!(f.cause, FailureCause::Transient);
    }

    #[test]
    fn throttling_without_a_retry_after_header_carries_no_hint() {
        let f = classify(&answer(400, &graph(17, None, "m"), None));
        assert_eq!(f.cause, FailureCause::rate_limited(None));
    }

    #[test]
    fn the_code_decides_whatever_the_message_or_status_says() {
        // Same code, different wording: same cause, and the wording is kept verbatim.
        let texts = [
            "Error validating access token: The user has not authorized application 123.",
            "Sitzung ungültig: die App wurde entfernt.",
            "Too many calls, please retry later",
        ];
        for text in texts {
            let f = classify(&answer(500, &graph(190, Some(458), text), Some(5)));
            assert_eq!(
                f.cause,
                FailureCause::reauth(ReauthReason::Revoked),
                "{text}"
            );
            assert_eq!(f.provider_message.as_deref(), Some(text));
        }
        // A message that sounds like a password change does not beat subcode 459.
        let f = classify(&answer(
            400,
            &graph(190, Some(459), "password changed"),
            None,
        ));
        assert_eq!(f.cause, FailureCause::AccountBlocked);
    }

    #[test]
    fn answers_without_the_graph_envelope_fall_back_on_the_status() {
        let rows = [
            (
                429,
                "",
                Some(12),
                FailureCause::rate_limited(Some(12)),
                "http_429",
            ),
            (
                502,
                "<html>Bad Gateway</html>",
                None,
                FailureCause::Transient,
                "http_502",
            ),
            (
                401,
                "",
                None,
                FailureCause::reauth(ReauthReason::InvalidGrant),
                "http_401",
            ),
            (
                403,
                "Forbidden",
                None,
                FailureCause::PermissionLost,
                "http_403",
            ),
            (
                404,
                "{\"data\":[]}",
                None,
                FailureCause::Transient,
                "http_404",
            ),
        ];
        for (status, body, retry_after, cause, shown) in rows {
            let f = classify(&answer(status, body, retry_after));
            assert_eq!(f.cause, cause, "{shown}");
            assert_eq!(f.provider_code.as_deref(), Some(shown));
            assert_eq!(f.provider_message.as_deref(), Some(body));
        }
    }

    #[test]
    fn no_token_problem_is_refreshable_because_meta_has_no_refresh_token() {
        for (code, subcode) in [(190, None), (102, None), (190, Some(463)), (190, Some(467))] {
            let f = classify(&answer(401, &graph(code, subcode, "m"), None));
            assert!(
                matches!(f.cause, FailureCause::ReauthRequired { .. }),
                "{code}/{subcode:?} gave {}",
                f.cause
            );
        }
    }
}
