//! Secrets: newtypes that never print, and the vault that encrypts credentials at rest.
//!
//! Every ciphertext is XChaCha20-Poly1305 under a key derived (HKDF-SHA256) from a master key.
//! The row id and the key version are the associated data, so a ciphertext copied onto
//! another row, or relabelled with another key version, fails to open. The key version is
//! stored beside each ciphertext so master keys can be rotated.

mod credential;
mod keys;
mod secret;

pub use credential::Credential;
pub use keys::{
    KeyVersion, Keyring, MASTER_KEY_ENV, add_key_version, create_key_file, generate_master_key,
    remove_key_version,
};
pub use secret::{
    AccessToken, ApiKey, BearerToken, ClientSecret, Password, RefreshToken, hash_bearer,
};

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

/// Errors of the vault. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error("the master key is malformed: {0}")]
    MalformedKey(String),
    #[error(
        "no master key with version {0} is configured; the credential was sealed with a key that is not in the key file or {MASTER_KEY_ENV}"
    )]
    UnknownKeyVersion(u32),
    #[error(
        "the credential of {row} cannot be decrypted: the ciphertext was altered, belongs to another row, or the master key is not the one it was sealed with"
    )]
    Undecryptable { row: String },
    #[error("the credential of {row} is truncated ({len} bytes)")]
    Truncated { row: String, len: usize },
    #[error("the decrypted credential of {row} is not a valid credential document")]
    MalformedPayload { row: String },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no master key: set {MASTER_KEY_ENV} or run `gapless init` to create a key file")]
    NoKey,
    #[error(
        "key file {path} may be read by others (mode {mode:o}); make it readable by its owner only: chmod 600 {path}"
    )]
    KeyFileExposed { path: String, mode: u32 },
    #[error("the random number generator failed")]
    Random,
}

fn hex_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sealed credential as stored: the key version and `nonce || ciphertext || tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_version: KeyVersion,
    pub ciphertext: Vec<u8>,
}

/// Encrypts and decrypts credentials bound to their row.
#[derive(Debug, Clone)]
pub struct Vault {
    keys: Keyring,
}

impl Vault {
    pub fn new(keys: Keyring) -> Self {
        Self { keys }
    }

    fn aad(row: &str, version: KeyVersion) -> Vec<u8> {
        format!("gapless/credential/v1|row={row}|key={}", version.0).into_bytes()
    }

    /// The key versions this vault holds, oldest first.
    pub fn versions(&self) -> Vec<KeyVersion> {
        self.keys.versions()
    }

    /// A fingerprint of key `version` that reveals nothing of it: stored beside the data
    /// sealed with it, so that a different key given for the same version is recognized
    /// before anything is sealed with it. None when the vault does not hold the version.
    pub fn fingerprint(&self, version: KeyVersion) -> Option<String> {
        let key = self.keys.get(version)?;
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"gapless key check"), key);
        let mut out = [0u8; 16];
        // 16 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(b"fingerprint v1", &mut out);
        Some(hex_text(&out))
    }

    /// A key for `purpose` (e.g. signing cookies), derived from the current master key, so
    /// it changes when the master key is rotated and never equals the encryption key.
    pub fn derive_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let (_, key) = self.keys.current();
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"gapless derived"), key);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(purpose.as_bytes(), out.as_mut());
        out
    }

    /// Encrypt `plaintext` for the row `row` with the current key.
    pub fn seal(&self, row: &str, plaintext: &[u8]) -> Result<Sealed, VaultError> {
        let (version, key) = self.keys.current();
        let cipher = XChaCha20Poly1305::new(key.into());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let aad = Self::aad(row, version);
        let body = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Undecryptable {
                row: row.to_string(),
            })?;
        let mut ciphertext = Vec::with_capacity(NONCE_LEN + body.len());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&body);
        Ok(Sealed {
            key_version: version,
            ciphertext,
        })
    }

    /// Decrypt what [`Vault::seal`] produced for the same row.
    pub fn open(&self, row: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let key = self
            .keys
            .get(sealed.key_version)
            .ok_or(VaultError::UnknownKeyVersion(sealed.key_version.0))?;
        if sealed.ciphertext.len() < NONCE_LEN + 16 {
            return Err(VaultError::Truncated {
                row: row.to_string(),
                len: sealed.ciphertext.len(),
            });
        }
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Truncated {
            row: row.to_string(),
            len: sealed.ciphertext.len(),
        })?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let aad = Self::aad(row, sealed.key_version);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Undecryptable {
                row: row.to_string(),
            })
    }

    /// Seal a credential for the row `row`.
    pub fn seal_credential(
        &self,
        row: &str,
        credential: &Credential,
    ) -> Result<Sealed, VaultError> {
        let document = credential.to_document();
        self.seal(row, document.as_bytes())
    }

    /// Open a credential sealed for the row `row`.
    pub fn open_credential(&self, row: &str, sealed: &Sealed) -> Result<Credential, VaultError> {
        let bytes = self.open(row, sealed)?;
        Credential::from_document(&bytes).ok_or_else(|| VaultError::MalformedPayload {
            row: row.to_string(),
        })
    }

    /// True when `sealed` uses an older key than the current one (a re-seal is due).
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_version != self.keys.current().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(seed: u8) -> Vault {
        Vault::new(Keyring::single(KeyVersion(1), [seed; 32]))
    }

    fn canary() -> Credential {
        Credential::OAuth2 {
            access_token: AccessToken::new("CANARY-access-5f1d".into()),
            refresh_token: Some(RefreshToken::new("CANARY-refresh-9a7c".into())),
            access_expires_at: None,
        }
    }

    #[test]
    fn round_trip() {
        let v = vault(7);
        let sealed = v.seal_credential("identity-1", &canary()).unwrap();
        assert_eq!(sealed.key_version, KeyVersion(1));
        let back = v.open_credential("identity-1", &sealed).unwrap();
        assert_eq!(back, canary());
        let text = String::from_utf8_lossy(&sealed.ciphertext);
        assert!(!text.contains("CANARY"), "plaintext leaked into ciphertext");
    }

    #[test]
    fn tampered_ciphertext_is_rejected() {
        let v = vault(7);
        let mut sealed = v.seal_credential("identity-1", &canary()).unwrap();
        let last = sealed.ciphertext.len() - 1;
        sealed.ciphertext[last] ^= 0x01;
        let err = v.open_credential("identity-1", &sealed).unwrap_err();
        assert!(matches!(err, VaultError::Undecryptable { .. }), "{err}");
        assert!(err.to_string().contains("identity-1"));
    }

    #[test]
    fn truncated_ciphertext_is_rejected() {
        let v = vault(7);
        let sealed = Sealed {
            key_version: KeyVersion(1),
            ciphertext: vec![1, 2, 3],
        };
        assert!(matches!(
            v.open("row", &sealed).unwrap_err(),
            VaultError::Truncated { len: 3, .. }
        ));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let sealed = vault(7).seal_credential("identity-1", &canary()).unwrap();
        let err = vault(8).open_credential("identity-1", &sealed).unwrap_err();
        assert!(matches!(err, VaultError::Undecryptable { .. }));
    }

    #[test]
    fn ciphertext_of_another_row_is_rejected() {
        let v = vault(7);
        let sealed = v.seal_credential("identity-1", &canary()).unwrap();
        let err = v.open_credential("identity-2", &sealed).unwrap_err();
        assert!(matches!(err, VaultError::Undecryptable { .. }));
    }

    #[test]
    fn relabelled_key_version_is_rejected() {
        let keys = Keyring::from_entries(vec![(KeyVersion(1), [1; 32]), (KeyVersion(2), [1; 32])])
            .unwrap();
        let v = Vault::new(keys);
        let mut sealed = v.seal_credential("row", &canary()).unwrap();
        assert_eq!(sealed.key_version, KeyVersion(2));
        // Same key bytes under another version: the AAD still differs.
        sealed.key_version = KeyVersion(1);
        assert!(v.open_credential("row", &sealed).is_err());
        sealed.key_version = KeyVersion(9);
        assert!(matches!(
            v.open_credential("row", &sealed).unwrap_err(),
            VaultError::UnknownKeyVersion(9)
        ));
    }

    #[test]
    fn old_key_versions_still_open_and_ask_for_a_reseal() {
        let old = Vault::new(Keyring::single(KeyVersion(1), [3; 32]));
        let sealed = old.seal_credential("row", &canary()).unwrap();
        let rotated = Vault::new(
            Keyring::from_entries(vec![(KeyVersion(1), [3; 32]), (KeyVersion(2), [4; 32])])
                .unwrap(),
        );
        assert_eq!(rotated.open_credential("row", &sealed).unwrap(), canary());
        assert!(rotated.needs_reseal(&sealed));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let shown = format!("{:?}", canary());
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("REDACTED"));
        let keys = Keyring::single(KeyVersion(1), [0x42; 32]);
        assert!(!format!("{keys:?}").contains("42, 42"));
    }
}
