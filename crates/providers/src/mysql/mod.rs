//! MySQL and MariaDB as a destination, authenticated with a password.
//!
//! Only the server/client error-number classifier lives here for now; the full destination
//! (connection, grant probe, window loads) comes later.

pub mod classify;
