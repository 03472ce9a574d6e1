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
