//! The credential of an identity, and its (private) document form for sealing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::{AccessToken, ApiKey, Password, RefreshToken};

/// What an identity authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    OAuth2 {
        access_token: AccessToken,
        refresh_token: Option<RefreshToken>,
        access_expires_at: Option<DateTime<Utc>>,
    },
    ApiKey {
        key: ApiKey,
    },
    Password {
        username: String,
        password: Password,
    },
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OAuth2 { .. } => "oauth2",
            Self::ApiKey { .. } => "api_key",
            Self::Password { .. } => "password",
        }
    }

    pub(crate) fn to_document(&self) -> Zeroizing<String> {
        let document = match self {
            Self::OAuth2 {
                access_token,
                refresh_token,
                access_expires_at,
            } => Document::Oauth2 {
                access_token: access_token.expose_secret().to_owned(),
                refresh_token: refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
                access_expires_at: *access_expires_at,
            },
            Self::ApiKey { key } => Document::ApiKey {
                key: key.expose_secret().to_owned(),
            },
            Self::Password { username, password } => Document::Password {
                username: username.clone(),
                password: password.expose_secret().to_owned(),
            },
        };
        // Serializing plain strings and a timestamp cannot fail.
        Zeroizing::new(serde_json::to_string(&document).unwrap_or_default())
    }

    pub(crate) fn from_document(bytes: &[u8]) -> Option<Self> {
        let document: Document = serde_json::from_slice(bytes).ok()?;
        Some(match document {
            Document::Oauth2 {
                access_token,
                refresh_token,
                access_expires_at,
            } => Self::OAuth2 {
                access_token: AccessToken::new(access_token),
                refresh_token: refresh_token.map(RefreshToken::new),
                access_expires_at,
            },
            Document::ApiKey { key } => Self::ApiKey {
                key: ApiKey::new(key),
            },
            Document::Password { username, password } => Self::Password {
                username,
                password: Password::new(password),
            },
        })
    }
}

/// The sealed form. Private: secrets are serialized only on their way into the cipher.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Document {
    Oauth2 {
        access_token: String,
        refresh_token: Option<String>,
        access_expires_at: Option<DateTime<Utc>>,
    },
    ApiKey {
        key: String,
    },
    Password {
        username: String,
        password: String,
    },
}
