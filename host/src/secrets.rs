//! Secrets the host presents to others (a `remote` store's peer token or Redis password),
//! sealed at rest: the catalog keeps them encrypted with a key that is not in the catalog.
//!
//! A plugin config value whose manifest key is a `secret` is written to the catalog as
//! `tmem-sealed:v1:HEX(nonce ‖ ChaCha20-Poly1305 ciphertext)` and opened again when the pool
//! is restored; the key is 32 random bytes in a file **beside the data dir**, not in it
//! (`DATA_DIR.key`, mode 0600, made when the first secret is sealed), or where `tmem serve
//! --secrets-key` says — e.g. a systemd credential (`LoadCredential=`): a copied data dir
//! reveals no usable secret. Values kept by an older release in clear are read as they are
//! and sealed at the next write of their pool.
//!
//! **Invariant**: without its key a sealed value is unreadable; a pool whose secrets cannot be
//! opened is not restored (the log says why, its record stays), never restored with a wrong
//! token.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use parking_lot::Mutex;

/// What marks a sealed value.
pub const SEALED_PREFIX: &str = "tmem-sealed:v1:";

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or made.
    #[error("the secrets key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A sealed value did not open with this key (another key, or damaged).
    #[error("a sealed secret does not open with the key {} (another host's key, or damaged)", path.display())]
    Open {
        /// The key file.
        path: PathBuf,
    },
    /// The system gave no random bytes.
    #[error("no randomness for sealing a secret: {0}")]
    Randomness(getrandom::Error),
}

/// The sealer of one host: its key file, read (or made) on first use.
#[derive(Debug)]
pub struct SecretSealer {
    path: PathBuf,
    key: Mutex<Option<[u8; 32]>>,
}

impl SecretSealer {
    /// A sealer whose key is (or will be) at `path`.
    pub fn new(path: PathBuf) -> SecretSealer {
        SecretSealer { path, key: Mutex::new(None) }
    }

    /// The default key file of a data dir: beside it, `DATA_DIR.key`.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "tmem-data".into());
        name.push(".key");
        data_dir.with_file_name(name)
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key(&self, create: bool) -> Result<[u8; 32], SecretError> {
        let mut key = self.key.lock();
        if let Some(key) = *key {
            return Ok(key);
        }
        let error = |reason: String| SecretError::Key { path: self.path.clone(), reason };
        let loaded = match std::fs::read(&self.path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&self.path).map_err(|e| error(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %self.path.display(), "the secrets key can be read by other users (mode {:o}); chmod 600 it", mode & 0o777);
                }
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| error(format!("{} bytes, not 32", bytes.len())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut fresh = [0u8; 32];
                getrandom::fill(&mut fresh).map_err(SecretError::Randomness)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(|e| error(format!("cannot create it: {e}")))?;
                file.write_all(&fresh).and_then(|()| file.sync_all()).map_err(|e| error(e.to_string()))?;
                tracing::info!(path = %self.path.display(), "secrets key created (mode 0600): keep it with the data dir's backups, apart from them");
                fresh
            }
            Err(e) => return Err(error(e.to_string())),
        };
        *key = Some(loaded);
        Ok(loaded)
    }

    /// `secret` sealed (a string starting with [`SEALED_PREFIX`]).
    pub fn seal(&self, secret: &str) -> Result<String, SecretError> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key(true)?));
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(SecretError::Randomness)?;
        let sealed = cipher.encrypt(Nonce::from_slice(&nonce), secret.as_bytes()).expect("a short secret encrypts");
        Ok(format!("{SEALED_PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed)))
    }

    /// `value` opened if it is sealed; as it is otherwise (a value kept in clear by an older
    /// release).
    pub fn open(&self, value: &str) -> Result<String, SecretError> {
        let Some(sealed) = value.strip_prefix(SEALED_PREFIX) else { return Ok(value.to_string()) };
        let failed = || SecretError::Open { path: self.path.clone() };
        let bytes = hex::decode(sealed).map_err(|_| failed())?;
        if bytes.len() < 12 {
            return Err(failed());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key(false)?));
        let plain = cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| failed())?;
        String::from_utf8(plain).map_err(|_| failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_seal_open_only_with_their_key_and_clear_values_pass() {
        let dir = std::env::temp_dir().join(format!("tmem-secrets-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        assert_eq!(SecretSealer::default_path(&data), dir.join("data.key"));
        let sealer = SecretSealer::new(SecretSealer::default_path(&data));
        assert!(matches!(sealer.open(&format!("{SEALED_PREFIX}00")), Err(SecretError::Open { .. })));
        let sealed = sealer.seal("tmem_peer_abc").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("tmem_peer_abc"));
        assert_ne!(sealer.seal("tmem_peer_abc").unwrap(), sealed, "a fresh nonce each time");
        assert_eq!(std::fs::metadata(dir.join("data.key")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(sealer.open(&sealed).unwrap(), "tmem_peer_abc");
        assert_eq!(sealer.open("plain").unwrap(), "plain");
        // The same key file read again opens it; another key does not.
        assert_eq!(SecretSealer::new(dir.join("data.key")).open(&sealed).unwrap(), "tmem_peer_abc");
        std::fs::write(dir.join("other.key"), [7u8; 32]).unwrap();
        assert!(matches!(SecretSealer::new(dir.join("other.key")).open(&sealed), Err(SecretError::Open { .. })));
        // Without its key file a sealed value is unreadable, and no key is made for opening.
        assert!(matches!(SecretSealer::new(dir.join("missing.key")).open(&sealed), Err(SecretError::Key { .. })));
        assert!(!dir.join("missing.key").exists());
        let mut damaged = sealed.clone();
        let last = damaged.pop().unwrap();
        damaged.push(if last == '0' { '1' } else { '0' });
        assert!(sealer.open(&damaged).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
