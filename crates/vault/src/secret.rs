//! One newtype per kind of secret: redacted `Debug`, no `Display`, no `Serialize`; the value
//! is reached only through an explicit `expose_secret()`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(SecretString);

        impl $name {
            pub fn new(value: String) -> Self {
                Self(SecretString::from(value))
            }

            /// The secret value. Call only where it is sent to its provider.
            pub fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }

            pub fn is_empty(&self) -> bool {
                self.0.expose_secret().is_empty()
            }
        }

        impl Clone for $name {
            fn clone(&self) -> Self {
                Self::new(self.expose_secret().to_owned())
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.expose_secret() == other.expose_secret()
            }
        }

        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([REDACTED])"))
            }
        }
    };
}

secret_type!(
    /// An OAuth access token.
    AccessToken
);
secret_type!(
    /// An OAuth refresh token. Distinct from [`AccessToken`] so they cannot be swapped.
    RefreshToken
);
secret_type!(
    /// An OAuth client secret.
    ClientSecret
);
secret_type!(
    /// A password (account or database).
    Password
);
secret_type!(
    /// An API key.
    ApiKey
);
secret_type!(
    /// A bearer secret handed to a person once: a reauthorize link's token or an API
    /// token. Only its hash ([`BearerToken::hash`]) is stored.
    BearerToken
);

impl BearerToken {
    /// 256 random bits, base64url without padding (43 characters).
    pub fn generate() -> Result<Self, crate::VaultError> {
        use base64::Engine as _;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|_| crate::VaultError::Random)?;
        Ok(Self::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        ))
    }

    /// The SHA-256 of the token, hex: what is stored and looked up. A token of 256 random
    /// bits needs no slow hash.
    pub fn hash(&self) -> String {
        hash_bearer(self.expose_secret())
    }
}

/// The stored form of a presented bearer token (see [`BearerToken::hash`]).
pub fn hash_bearer(presented: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(presented.as_bytes()))
}

#[cfg(test)]
mod bearer_tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_long_random_and_stored_only_as_hashes() {
        let a = BearerToken::generate().unwrap();
        let b = BearerToken::generate().unwrap();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a, b);
        assert_eq!(a.hash(), hash_bearer(a.expose_secret()));
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose_secret()));
    }
}
