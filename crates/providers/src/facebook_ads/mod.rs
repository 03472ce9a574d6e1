//! Facebook / Meta: the Graph and Marketing APIs (ad accounts, Ads Insights).
//!
//! Meta issues user, Page and system-user access tokens but no OAuth refresh token, so an
//! access token Meta no longer accepts always needs a person to reconnect. Only the error
//! classifier lives here for now; the full connector (login, probe via `debug_token`,
//! insights streams) comes later.

pub mod classify;
