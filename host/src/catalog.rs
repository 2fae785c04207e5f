//! The catalog: what a host must come back with after a restart — its uploaded plugin
//! modules and its pools' configs — kept in a sled database at `DATA_DIR/catalog`.
//!
//! Only the control plane writes here, and rarely, so every change is flushed to disk before
//! the API answers: an acknowledged upload or pool change survives a crash. Page contents are
//! not kept here (they belong to the pools' stores).
//!
//! Trees:
//! - `modules`: registration sequence number (u64, big-endian, so iteration is in
//!   registration order) → `[name length: u8][name][module bytes]`.
//! - `pools`: pool name → the pool's [`PoolRecord`] as JSON: its config (versions pinned by
//!   sha256) and, for a persistent pool, its database directory and every chain generation
//!   whose pages are on disk.
//! - `frontends`: attachment id → the block device's [`FrontendRecord`] as JSON (its pool and
//!   its attach request, a TCP port resolved), so a restarted host serves it again.
//! - `credentials`: token id → the scoped token's
//!   [`CredentialRecord`](crate::credentials::CredentialRecord) as JSON: its pool, scope and
//!   SHA-256, never the token.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tmem_api::rest::{AttachRequest, BackendRequest, PoolConfig};

use crate::credentials::CredentialRecord;
use crate::secrets::SecretSealer;

/// What the catalog keeps of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRecord {
    /// The config, current chain pinned by sha256.
    pub config: PoolConfig,
    /// Persistent pools: the database's directory name under `DATA_DIR/pools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Persistent pools: every chain generation that may have pages in the database, oldest
    /// first (the last is the current chain), so a restart reads each page through the chain
    /// that stored it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generations: Vec<GenerationRecord>,
}

/// A chain generation of a persistent pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRecord {
    /// Its id (recorded with each of its pages).
    pub id: u32,
    /// Its links, pinned by sha256.
    pub backends: Vec<BackendRequest>,
}

/// A block device attached through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendRecord {
    /// The attachment's id.
    pub id: String,
    /// The pool it stores into.
    pub pool: String,
    /// What was asked for (a TCP port 0 replaced by the port bound).
    pub request: AttachRequest,
}

/// Why the catalog could not be read or written: always the host's own disk or data, never
/// the client's mistake. The text names paths and sled's own words: it is for the host's log.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog's database cannot be opened or created.
    #[error("catalog: cannot open {}: {source}", dir.display())]
    Open {
        /// Its directory.
        dir: std::path::PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A read, write or flush failed.
    #[error("catalog: {0}")]
    Db(#[from] sled::Error),
    /// A module record is too short for its name.
    #[error("catalog: a module record is truncated")]
    TruncatedModule,
    /// A module record's name is not UTF-8.
    #[error("catalog: a module name is not UTF-8")]
    ModuleName,
    /// A pool record does not parse.
    #[error("catalog: a stored pool config is unreadable: {0}")]
    PoolRecord(#[source] serde_json::Error),
    /// A block device record does not parse.
    #[error("catalog: a stored block device is unreadable: {0}")]
    FrontendRecord(#[source] serde_json::Error),
    /// A secret of a pool record could not be sealed (its key file): nothing was written.
    #[error("catalog: {0}")]
    Secret(#[from] crate::secrets::SecretError),
    /// A scoped token's record does not parse.
    #[error("catalog: a stored token record is unreadable: {0}")]
    CredentialRecord(#[source] serde_json::Error),
}

/// A module as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModule {
    /// The name it is registered under.
    pub name: String,
    /// The module bytes.
    pub bytes: Vec<u8>,
}

/// The catalog of one data dir.
pub struct Catalog {
    db: sled::Db,
    /// What sled writes besides its log (the modules are blobs), synced before each flush.
    files: crate::persist::SledFiles,
    /// Seals the secrets of pool records (the key lives outside the catalog).
    sealer: SecretSealer,
    modules: sled::Tree,
    pools: sled::Tree,
    frontends: sled::Tree,
    credentials: sled::Tree,
    /// Test-only fault injection: while set, every write fails as a failing disk's would.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn encode_module(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + name.len() + bytes.len());
    value.push(u8::try_from(name.len()).expect("plugin names are at most 64 bytes"));
    value.extend_from_slice(name.as_bytes());
    value.extend_from_slice(bytes);
    value
}

fn decode_module(value: &[u8]) -> Result<StoredModule, CatalogError> {
    let (&len, rest) = value.split_first().ok_or(CatalogError::TruncatedModule)?;
    let name = rest.get(..len as usize).ok_or(CatalogError::TruncatedModule)?;
    let name = std::str::from_utf8(name).map_err(|_| CatalogError::ModuleName)?;
    Ok(StoredModule { name: name.into(), bytes: rest[len as usize..].to_vec() })
}

impl Catalog {
    /// Opens (or creates) the catalog in `dir`; the secrets of its pool records are sealed by
    /// `sealer` (see [`crate::secrets`]).
    pub fn open(dir: &Path, sealer: SecretSealer) -> Result<Self, CatalogError> {
        let db = crate::persist::open_sled(&sled::Config::new().path(dir).mode(sled::Mode::LowSpace))
            .map_err(|source| CatalogError::Open { dir: dir.to_path_buf(), source })?;
        // The modules are blobs to sled: synced before every flush of its log (see SledFiles).
        let files = crate::persist::SledFiles::open(dir)
            .map_err(|e| CatalogError::Open { dir: dir.to_path_buf(), source: sled::Error::Io(e) })?;
        let modules = db.open_tree("modules")?;
        let pools = db.open_tree("pools")?;
        let frontends = db.open_tree("frontends")?;
        let credentials = db.open_tree("credentials")?;
        Ok(Catalog {
            db,
            files,
            sealer,
            modules,
            pools,
            frontends,
            credentials,
            #[cfg(test)]
            fail_writes: Default::default(),
        })
    }

    /// What seals the secrets of pool records: whoever writes a record seals them
    /// (`host.rs`, which knows which config keys are secrets), whoever reads one opens them.
    pub fn sealer(&self) -> &SecretSealer {
        &self.sealer
    }

    fn flush(&self) -> Result<(), CatalogError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(CatalogError::Db(crate::persist::io_failure("injected catalog write failure")));
        }
        self.files.flush(&self.db, true)?;
        Ok(())
    }

    /// Test-only fault injection: while `fail` is set, every write fails (at its flush, so the
    /// change is not acknowledged).
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every stored module, in registration order.
    pub fn modules(&self) -> Result<Vec<StoredModule>, CatalogError> {
        self.modules.iter().values().map(|v| decode_module(&v?)).collect()
    }

    /// Keeps a module under `name` unless the same bytes already are.
    pub fn add_module(&self, name: &str, bytes: &[u8]) -> Result<(), CatalogError> {
        let value = encode_module(name, bytes);
        if self.modules.iter().values().any(|v| v.is_ok_and(|v| *v == *value)) {
            return Ok(());
        }
        let seq = self.db.generate_id()?;
        self.modules.insert(seq.to_be_bytes(), value)?;
        self.flush()
    }

    /// Forgets the modules registered under `name` for which `doomed` says so.
    pub fn remove_modules(&self, name: &str, mut doomed: impl FnMut(&[u8]) -> bool) -> Result<(), CatalogError> {
        for entry in self.modules.iter() {
            let (key, value) = entry?;
            let module = decode_module(&value)?;
            if module.name == name && doomed(&module.bytes) {
                self.modules.remove(key)?;
            }
        }
        self.flush()
    }

    /// Every stored pool.
    pub fn pools(&self) -> Result<Vec<PoolRecord>, CatalogError> {
        self.pools.iter().values().map(|v| serde_json::from_slice(&v?).map_err(CatalogError::PoolRecord)).collect()
    }

    /// Keeps (or replaces) a pool's record.
    pub fn put_pool(&self, record: &PoolRecord) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(record).expect("a pool record serializes");
        self.pools.insert(record.config.name.as_bytes(), json)?;
        self.flush()
    }

    /// Forgets a pool.
    pub fn remove_pool(&self, name: &str) -> Result<(), CatalogError> {
        self.pools.remove(name.as_bytes())?;
        self.flush()
    }

    /// Every kept block device.
    pub fn frontends(&self) -> Result<Vec<FrontendRecord>, CatalogError> {
        self.frontends
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(CatalogError::FrontendRecord))
            .collect()
    }

    /// Keeps (or replaces) a block device's record.
    pub fn put_frontend(&self, record: &FrontendRecord) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(record).expect("a frontend record serializes");
        self.frontends.insert(record.id.as_bytes(), json)?;
        self.flush()
    }

    /// Forgets a block device.
    pub fn remove_frontend(&self, id: &str) -> Result<(), CatalogError> {
        self.frontends.remove(id.as_bytes())?;
        self.flush()
    }

    /// Every kept scoped token (hashes only).
    pub fn credentials(&self) -> Result<Vec<CredentialRecord>, CatalogError> {
        self.credentials
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(CatalogError::CredentialRecord))
            .collect()
    }

    /// Keeps a scoped token's record.
    pub fn put_credential(&self, record: &CredentialRecord) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(record).expect("a credential record serializes");
        self.credentials.insert(record.id.as_bytes(), json)?;
        self.flush()
    }

    /// Forgets a scoped token.
    pub fn remove_credential(&self, id: &str) -> Result<(), CatalogError> {
        self.credentials.remove(id.as_bytes())?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_pools_survive_reopening_in_order() {
        let dir = std::env::temp_dir().join(format!("tmem-catalog-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let catalog = Catalog::open(&dir, SecretSealer::new(dir.with_extension("key"))).unwrap();
            catalog.add_module("b", b"second?").unwrap();
            catalog.add_module("a", b"first").unwrap();
            catalog.add_module("b", b"second?").unwrap();
            catalog.add_module("b", b"third").unwrap();
            let record = |name: &str| PoolRecord {
                config: PoolConfig::new(name, vec![BackendRequest::new("ram")]),
                database: Some(format!("{name}-1")),
                generations: vec![GenerationRecord { id: 1, backends: vec![BackendRequest::new("ram")] }],
            };
            catalog.put_pool(&record("p")).unwrap();
            catalog.put_pool(&record("q")).unwrap();
            catalog.remove_pool("q").unwrap();
            catalog.remove_modules("b", |bytes| bytes == b"second?").unwrap();
        }
        let catalog = Catalog::open(&dir, SecretSealer::new(dir.with_extension("key"))).unwrap();
        let names: Vec<(String, Vec<u8>)> = catalog.modules().unwrap().into_iter().map(|m| (m.name, m.bytes)).collect();
        assert_eq!(names, vec![("a".into(), b"first".to_vec()), ("b".into(), b"third".to_vec())]);
        let pools = catalog.pools().unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!((pools[0].config.name.as_str(), pools[0].database.as_deref()), ("p", Some("p-1")));
        assert_eq!(pools[0].generations[0].id, 1);
        drop(catalog);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
