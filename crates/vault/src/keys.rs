//! Master keys: parsing, the key file, and per-purpose key derivation.

use std::{collections::BTreeMap, fmt, io::Write, path::Path};

use base64::Engine;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::VaultError;

/// The environment variable that holds the master key(s).
pub const MASTER_KEY_ENV: &str = "GAPLESS_MASTER_KEY";

/// The version of a master key, stored beside every ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(pub u32);

/// The master keys by version; the highest version seals, all versions open.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyVersion, Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "versions",
                &self.keys.keys().map(|v| v.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// One master key.
    pub fn single(version: KeyVersion, master: [u8; 32]) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(version, Zeroizing::new(derive(&master)));
        Self { keys }
    }

    pub fn from_entries(entries: Vec<(KeyVersion, [u8; 32])>) -> Result<Self, VaultError> {
        if entries.is_empty() {
            return Err(VaultError::NoKey);
        }
        let mut keys = BTreeMap::new();
        for (version, master) in entries {
            if keys
                .insert(version, Zeroizing::new(derive(&master)))
                .is_some()
            {
                return Err(VaultError::MalformedKey(format!(
                    "key version {} appears twice",
                    version.0
                )));
            }
        }
        Ok(Self { keys })
    }

    /// Parse keys written as `VERSION:BASE64` entries separated by commas or newlines; a bare
    /// base64 value is version 1. Each key is 32 bytes.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut entries = Vec::new();
        for raw in text.split([',', '\n']) {
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (version, encoded) = match entry.split_once(':') {
                Some((v, k)) => {
                    let version = v.trim().parse::<u32>().map_err(|_| {
                        VaultError::MalformedKey(format!("key version {v:?} is not a whole number"))
                    })?;
                    (version, k.trim())
                }
                None => (1, entry),
            };
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| {
                        VaultError::MalformedKey(format!("key version {version} is not base64"))
                    })?,
            );
            let master: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                VaultError::MalformedKey(format!(
                    "key version {version} has {} bytes; 32 are required",
                    bytes.len()
                ))
            })?;
            entries.push((KeyVersion(version), master));
        }
        Self::from_entries(entries)
    }

    /// Keys from `GAPLESS_MASTER_KEY` if set, else from the key file at `key_file`.
    pub fn load(env_value: Option<&str>, key_file: &Path) -> Result<Self, VaultError> {
        if let Some(value) = env_value {
            return Self::parse(value);
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(key_file) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::KeyFileExposed {
                    path: key_file.display().to_string(),
                    mode,
                });
            }
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VaultError::NoKey),
            Err(source) => Err(VaultError::KeyFile {
                path: key_file.display().to_string(),
                source,
            }),
        }
    }

    pub(crate) fn current(&self) -> (KeyVersion, &[u8; 32]) {
        let (version, key) = self
            .keys
            .iter()
            .next_back()
            .map(|(v, k)| (*v, &**k))
            .unwrap_or((KeyVersion(0), &EMPTY));
        (version, key)
    }

    pub(crate) fn versions(&self) -> Vec<KeyVersion> {
        self.keys.keys().copied().collect()
    }

    pub(crate) fn get(&self, version: KeyVersion) -> Option<&[u8; 32]> {
        self.keys.get(&version).map(|k| &**k)
    }
}

static EMPTY: [u8; 32] = [0; 32];

fn derive(master: &[u8; 32]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"gapless"), master);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit.
    let _ = hk.expand(b"credential encryption v1", &mut out);
    out
}

/// Write a key file's text through a temporary file (0600), fsync'd and renamed: a crash
/// leaves the old file or the new one.
fn replace_key_file(path: &Path, contents: &str) -> Result<(), VaultError> {
    let io_error = |source| VaultError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Add a new key version (one above the newest) to the key file: it becomes the key new
/// data is sealed with; the older ones stay to open what they sealed. Returns the version.
pub fn add_key_version(path: &Path) -> Result<KeyVersion, VaultError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| VaultError::KeyFile {
                path: path.display().to_string(),
                source,
            })?,
        );
    let current = Keyring::parse(&text)?;
    let next = KeyVersion(current.current().0.0.saturating_add(1));
    let key = generate_master_key()?;
    let mut contents = Zeroizing::new(text.trim_end().to_string());
    contents.push_str(&format!("\n{}:{}\n", next.0, key.as_str()));
    Keyring::parse(&contents)?;
    replace_key_file(path, &contents)?;
    Ok(next)
}

/// Remove key version `version` from the key file (the caller checked that nothing is
/// sealed with it any more). The newest version cannot be removed.
pub fn remove_key_version(path: &Path, version: KeyVersion) -> Result<(), VaultError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| VaultError::KeyFile {
                path: path.display().to_string(),
                source,
            })?,
        );
    let keys = Keyring::parse(&text)?;
    if keys.get(version).is_none() {
        return Err(VaultError::MalformedKey(format!(
            "the key file has no version {}",
            version.0
        )));
    }
    if keys.current().0 == version {
        return Err(VaultError::MalformedKey(format!(
            "version {} is the newest key, which new data is sealed with; add a newer one first",
            version.0
        )));
    }
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let entry = line.trim();
            entry.starts_with('#')
                || entry
                    .split_once(':')
                    .and_then(|(v, _)| v.trim().parse::<u32>().ok())
                    .is_none_or(|v| v != version.0)
        })
        .collect();
    let contents = Zeroizing::new(format!("{}\n", kept.join("\n")));
    Keyring::parse(&contents)?;
    replace_key_file(path, &contents)
}

/// A fresh random master key, base64-encoded.
pub fn generate_master_key() -> Result<Zeroizing<String>, VaultError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(|_| VaultError::Random)?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(key.as_ref()),
    ))
}

/// Create a key file holding a new version-1 master key, readable by its owner only (0600).
/// An existing file is never overwritten.
pub fn create_key_file(path: &Path) -> Result<(), VaultError> {
    let key = generate_master_key()?;
    let io_error = |source| VaultError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_error)?;
    let contents = Zeroizing::new(format!(
        "# gapless master key: keep it secret and back it up; without it credentials cannot be read.\n1:{}\n",
        key.as_str()
    ));
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_version_is_added_and_an_old_one_removed_but_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        create_key_file(&path).unwrap();
        let before = Keyring::load(None, &path).unwrap();
        assert_eq!(add_key_version(&path).unwrap(), KeyVersion(2));
        let after = Keyring::load(None, &path).unwrap();
        assert_eq!(after.current().0, KeyVersion(2));
        assert_eq!(
            after.get(KeyVersion(1)),
            before.get(KeyVersion(1)),
            "version 1 kept"
        );
        assert!(
            remove_key_version(&path, KeyVersion(2)).is_err(),
            "the newest stays"
        );
        remove_key_version(&path, KeyVersion(1)).unwrap();
        let last = Keyring::load(None, &path).unwrap();
        assert_eq!(last.versions(), vec![KeyVersion(2)]);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        create_key_file(&path).unwrap();
        assert!(Keyring::load(None, &path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Keyring::load(None, &path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(error.contains("644"), "{error}");
    }

    #[test]
    fn parse_accepts_bare_and_versioned_keys() {
        let k = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(Keyring::parse(k).unwrap().current().0, KeyVersion(1));
        let two = format!("1:{k}, 2:{k}");
        assert_eq!(Keyring::parse(&two).unwrap().current().0, KeyVersion(2));
    }

    #[test]
    fn parse_names_what_is_wrong() {
        let err = Keyring::parse("not base64 !!").unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
        let err = Keyring::parse("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("5 bytes"), "{err}");
        let err = Keyring::parse("x:AAAA").unwrap_err().to_string();
        assert!(err.contains("not a whole number"), "{err}");
        assert!(matches!(
            Keyring::parse(" \n").unwrap_err(),
            VaultError::NoKey
        ));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        create_key_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let keys = Keyring::load(None, &path).unwrap();
        assert_eq!(keys.current().0, KeyVersion(1));
        assert!(create_key_file(&path).is_err());
        assert!(matches!(
            Keyring::load(None, &dir.path().join("absent")).unwrap_err(),
            VaultError::NoKey
        ));
    }
}
