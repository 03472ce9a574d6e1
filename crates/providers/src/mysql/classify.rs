//! Classification of MySQL and MariaDB errors by error number (server errors and the
//! client library's 2xxx connection errors; the message text is kept for humans, never
//! read).

use gapless_core::{Failure, FailureCause, ReauthReason};

/// Classify a MySQL / MariaDB error from its error number and message.
///
/// `provider_code` is the number as text (e.g. `1045`), `provider_message` the message
/// verbatim.
pub fn classify_errno(errno: u16, message: &str) -> Failure {
    let cause = match errno {
        // ER_ACCESS_DENIED_ERROR: wrong password or unknown user@host (MySQL gives the same
        // answer for both).
        1045 => FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials,
        },
        // Account locked (MySQL 3118, MariaDB 4151) and password expired (1862 at login,
        // 1820 on a statement): the account's owner or a DBA has to act on the server before
        // any credential works. The reference maps an expired password to AccountBlocked.
        3118 | 4151 | 1862 | 1820 => FailureCause::AccountBlocked,
        // Missing privilege on the database (1044), a table (1142), or a global one (1227).
        1044 | 1142 | 1227 => FailureCause::PermissionLost,
        // Too many connections (1040), max_user_connections (1203), lock wait timeout
        // (1205), deadlock (1213); client: no socket (2002), cannot connect (2003), server
        // gone away (2006), connection lost during a query (2013).
        1040 | 1203 | 1205 | 1213 | 2002 | 2003 | 2006 | 2013 => FailureCause::Transient,
        // Everything else: retried with backoff, the number kept for whoever looks.
        _ => FailureCause::Transient,
    };
    Failure::new(cause)
        .with_code(errno.to_string())
        .with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_error_numbers_map_to_their_causes() {
        use FailureCause::{AccountBlocked, PermissionLost, Transient};
        let invalid_credentials = FailureCause::ReauthRequired {
            reason: ReauthReason::InvalidCredentials,
        };
        let rows = [
            (
                1045,
                "Access denied for user 'loader'@'10.0.0.5' (using password: YES)",
                invalid_credentials,
            ),
            (
                3118,
                "Access denied for user 'loader'@'%'. Account is locked.",
                AccountBlocked,
            ),
            (
                4151,
                "Access denied, this account is locked",
                AccountBlocked,
            ),
            (
                1862,
                "Your password has expired. To log in you must change it using a client that supports expired passwords.",
                AccountBlocked,
            ),
            (
                1820,
                "You must reset your password using ALTER USER statement before executing this statement.",
                AccountBlocked,
            ),
            (
                1044,
                "Access denied for user 'loader'@'%' to database 'dw'",
                PermissionLost,
            ),
            (
                1142,
                "INSERT command denied to user 'loader'@'%' for table 'ads'",
                PermissionLost,
            ),
            (
                1227,
                "Access denied; you need (at least one of) the SUPER privilege(s) for this operation",
                PermissionLost,
            ),
            (1040, "Too many connections", Transient),
            (
                1203,
                "User loader already has more than 'max_user_connections' active connections",
                Transient,
            ),
            (
                1205,
                "Lock wait timeout exceeded; try restarting transaction",
                Transient,
            ),
            (
                1213,
                "Deadlock found when trying to get lock; try restarting transaction",
                Transient,
            ),
            (
                2002,
                "Can't connect to local MySQL server through socket '/tmp/mysql.sock'",
                Transient,
            ),
            (
                2003,
                "Can't connect to MySQL server on 'db' (111)",
                Transient,
            ),
            (2006, "MySQL server has gone away", Transient),
            (
                2013,
                "Lost connection to MySQL server during query",
                Transient,
            ),
            (1146, "Table 'dw.ads' doesn't exist", Transient),
        ];
        for (errno, message, cause) in rows {
            let f = classify_errno(errno, message);
            assert_eq!(f.cause, cause, "{errno}");
            assert_eq!(f.provider_code.as_deref(), Some(errno.to_string().as_str()));
            assert_eq!(f.provider_message.as_deref(), Some(message));
        }
    }

    #[test]
    fn the_error_number_decides_not_the_message() {
        // "Access denied" opens the messages of 1045, 1044 and 4151 alike; only the number
        // tells a bad password from a missing grant from a locked account.
        let text = "Access denied for user 'loader'@'%'";
        assert_eq!(
            classify_errno(1045, text).cause,
            FailureCause::ReauthRequired {
                reason: ReauthReason::InvalidCredentials
            }
        );
        assert_eq!(
            classify_errno(1044, text).cause,
            FailureCause::PermissionLost
        );
        assert_eq!(
            classify_errno(4151, text).cause,
            FailureCause::AccountBlocked
        );
        assert_eq!(classify_errno(1213, text).cause, FailureCause::Transient);
    }
}
