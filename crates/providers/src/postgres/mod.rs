//! PostgreSQL as a destination, authenticated with a password.
//!
//! Only the SQLSTATE classifier lives here for now; the full destination (connection, probe
//! of schema and table privileges, window loads) comes later.

pub mod classify;
