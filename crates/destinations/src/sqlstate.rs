//! Classification of PostgreSQL errors by SQLSTATE (the five-character code every server
//! error carries; the message text is kept for humans, never read).

use gapless_core::{Failure, FailureCause, ReauthReason};

/// Classify a PostgreSQL error from its SQLSTATE and the server's message.
///
/// `provider_code` is the SQLSTATE (e.g. `28P01`), `provider_message` the message verbatim.
pub fn classify_sqlstate(sqlstate: &str, message: &str) -> Failure {
    let cause = match sqlstate {
        // Wrong password (the server does not say whether it merely expired: `VALID UNTIL`),
        // and no pg_hba entry / role cannot log in / role missing.
        "28P01" | "28000" => FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials,
        },
        // Database missing (the reference: "PermissionLost/config") and a revoked privilege.
        "3D000" | "42501" => FailureCause::PermissionLost,
        // Too many connections; admin shutdown, crash shutdown, starting up; connection
        // failures; serialization failure and deadlock (retry the transaction); read-only
        // transaction (failover to a replica); disk full and out of memory.
        "53300" | "57P01" | "57P02" | "57P03" | "08001" | "08006" | "40001" | "40P01" | "25006"
        | "53100" | "53200" => FailureCause::Transient,
        // Any other connection exception (class 08).
        code if code.starts_with("08") => FailureCause::Transient,
        // Everything else: retried with backoff, the code kept for whoever looks.
        _ => FailureCause::Transient,
    };
    Failure::new(cause)
        .with_code(sqlstate)
        .with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_sqlstates_map_to_their_causes() {
        use FailureCause::{PermissionLost, Transient};
        let invalid_credentials = FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials,
        };
        let rows = [
            (
                "28P01",
                r#"password authentication failed for user "loader""#,
                invalid_credentials,
            ),
            (
                "28000",
                r#"no pg_hba.conf entry for host "10.0.0.5", user "loader", database "dw", no encryption"#,
                invalid_credentials,
            ),
            ("3D000", r#"database "dw" does not exist"#, PermissionLost),
            (
                "42501",
                "permission denied for schema gapless",
                PermissionLost,
            ),
            ("53300", "sorry, too many clients already", Transient),
            (
                "57P01",
                "terminating connection due to administrator command",
                Transient,
            ),
            (
                "57P02",
                "terminating connection because of crash of another server process",
                Transient,
            ),
            ("57P03", "the database system is starting up", Transient),
            (
                "08001",
                "could not connect to server: Connection refused",
                Transient,
            ),
            ("08006", "connection to server was lost", Transient),
            (
                "40001",
                "could not serialize access due to concurrent update",
                Transient,
            ),
            ("40P01", "deadlock detected", Transient),
            (
                "25006",
                "cannot execute INSERT in a read-only transaction",
                Transient,
            ),
            (
                "53100",
                "could not extend file: No space left on device",
                Transient,
            ),
            ("53200", "out of memory", Transient),
            ("08004", "server rejected the connection", Transient),
            ("08P01", "protocol violation", Transient),
            (
                "42P01",
                r#"relation "ads_insights" does not exist"#,
                Transient,
            ),
        ];
        for (sqlstate, message, cause) in rows {
            let f = classify_sqlstate(sqlstate, message);
            assert_eq!(f.cause, cause, "{sqlstate}");
            assert_eq!(f.provider_code.as_deref(), Some(sqlstate));
            assert_eq!(f.provider_message.as_deref(), Some(message));
        }
    }

    #[test]
    fn the_sqlstate_decides_not_the_message() {
        // A message that reads like a transient error does not soften a rejected password,
        // and one that reads like a password problem does not harden a deadlock.
        let f = classify_sqlstate("28P01", "server is starting up, try again");
        assert_eq!(
            f.cause,
            FailureCause::ReauthRequired {
                reason: ReauthReason::InvalidCredentials
            }
        );
        assert_eq!(
            classify_sqlstate("40P01", "password authentication failed").cause,
            FailureCause::Transient
        );
        // Localized server messages classify the same.
        assert_eq!(
            classify_sqlstate("42501", "Keine Berechtigung für Schema gapless").cause,
            FailureCause::PermissionLost
        );
    }
}
