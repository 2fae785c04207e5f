//! The config file of `tmem serve --config FILE` (`/etc/tmem/tmem.toml` in the Debian
//! package): a declarative description applied at every start, so a reboot brings the pools
//! and swap devices back.
//!
//! - `[serve]` — the settings of `tmem serve`'s flags, by the same names (`listen`, `data_dir`,
//!   `memory_limit`, `mlock`, `allow_path`, ...). A flag (or its `TMEM_*` variable) given on
//!   the command line overrides the file; `allow_path` lists are joined.
//! - `[[pool]]` — pools, exactly as the API's `POST /api/v1/pools` body (`PoolConfig`) in TOML:
//!   created if missing, left as they are (with a warning) if they exist.
//! - `[[swap]]` — ublk block devices (`pool`, `size`, `backing`, `ublk_id`) attached if their
//!   pool has none. Making and enabling the swap area (`mkswap`, `swapon`, a swap unit or an
//!   fstab line) is left to the system.
//!
//! Unknown keys are errors; every error names the file and the line and column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tmem_api::rest::PoolConfig;
use tmem_host::MemoryLimit;
use tmem_host::declared::{Declared, DeclaredDevice};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[serve]`: what the flags of `tmem serve` also say.
    #[serde(default)]
    pub serve: ServeSection,
    /// `[[pool]]`: pools to create if missing.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// `[[swap]]`: ublk devices to attach if their pool has none.
    #[serde(default)]
    pub swap: Vec<SwapEntry>,
}

/// `[serve]`: each key as the flag of the same name (`--data-dir` is `data_dir`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--peer-listen`.
    pub peer_listen: Option<SocketAddr>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--mlock`.
    #[serde(default)]
    pub mlock: bool,
    /// `--memory-limit`: `"2G"`, `"20%"` or `"none"`.
    #[serde(default, deserialize_with = "memory_limit")]
    pub memory_limit: Option<MemoryLimit>,
    /// `--max-instances` (16 to 100000, as the flag).
    #[serde(default, deserialize_with = "max_instances")]
    pub max_instances: Option<u32>,
    /// `--max-connections`.
    pub max_connections: Option<u64>,
    /// `--handshake-timeout`, in seconds.
    pub handshake_timeout: Option<u64>,
    /// `--allow-path`, as a list.
    #[serde(default)]
    pub allow_path: Vec<PathBuf>,
    /// `--secrets-key`.
    pub secrets_key: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--tls-psk`.
    pub tls_psk: Option<PathBuf>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--insecure-plain-tcp`.
    #[serde(default)]
    pub insecure_plain_tcp: bool,
    /// `--api-tls`.
    #[serde(default)]
    pub api_tls: bool,
    /// `--socket-users`, as a list.
    #[serde(default)]
    pub socket_users: Vec<String>,
    /// `--socket-group`.
    pub socket_group: Option<String>,
}

/// `[[swap]]`: a ublk device over a pool (`/dev/ublkbN`), to be a swap device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapEntry {
    /// The pool it stores into (declared in `[[pool]]` or made through the API).
    pub pool: String,
    /// The device's size: bytes, or a string with a suffix (`"8G"`).
    #[serde(deserialize_with = "size")]
    pub size: u64,
    /// The backing file (or block device) that takes the pages the pool refuses: an absolute
    /// path under the data dir or an `allow_path`.
    pub backing: String,
    /// N of `/dev/ublkbN`; absent: the next free one (then the swap line cannot name it).
    pub ublk_id: Option<u32>,
}

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid: toml's message names the line, the column and the key.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where.
        source: toml::de::Error,
    },
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        ConfigFile::parse(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<ConfigFile, toml::de::Error> {
        toml::from_str(text)
    }

    /// The pools and devices the file declares, as the host applies them.
    pub fn declared(&self) -> Declared {
        Declared {
            pools: self.pool.clone(),
            devices: self.swap.iter().map(|s| DeclaredDevice::ublk(&s.pool, s.size, &s.backing, s.ublk_id)).collect(),
        }
    }
}

/// A size: an integer of bytes, or a string such as `"8G"`.
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => super::args::parse_size(&text).map_err(serde::de::Error::custom),
    }
}

fn max_instances<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(deserializer)? {
        n @ 16..=100_000 => Ok(Some(n)),
        n => Err(serde::de::Error::custom(format!("max_instances = {n} is not in 16..=100000"))),
    }
}

fn memory_limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<MemoryLimit>, D::Error> {
    let text = String::deserialize(deserializer)?;
    super::args::parse_memory_limit(&text).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use tmem_api::rest::FrontendKind;

    use super::*;

    /// The commented default of the Debian package parses, and declares nothing until edited.
    #[test]
    fn the_packaged_default_parses_and_declares_nothing() {
        let text = include_str!("../../packaging/tmem.toml");
        let file = ConfigFile::parse(text).unwrap();
        assert!(file.pool.is_empty() && file.swap.is_empty());
        // Every commented-out line, uncommented, is a valid file too.
        let uncommented: String = text
            .lines()
            .map(|l| l.strip_prefix("#").filter(|rest| !rest.starts_with(' ') && !rest.is_empty()).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = ConfigFile::parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(file.pool.len(), 2, "{uncommented}");
        assert_eq!(file.swap.len(), 1);
        assert_eq!(file.serve.data_dir.as_deref(), Some(Path::new("/var/lib/tmem")));
    }

    #[test]
    fn a_full_file_parses_into_settings_pools_and_devices() {
        let file = ConfigFile::parse(
            r#"
[serve]
listen = "127.0.0.1:7500"
data_dir = "/var/lib/tmem"
memory_limit = "25%"
mlock = true
allow_path = ["/srv/swap"]

[[pool]]
name = "cold"
backends = [{ plugin = "sled", grants = ["storage"] }]

[[pool]]
name = "swap"
backends = [{ plugin = "zstd", config = { level = 3 } }, { plugin = "ram" }]
max_bytes = 1073741824
tier = { lower = "cold", idle_seconds = 60 }

[[swap]]
pool = "swap"
ublk_id = 0
size = "8G"
backing = "/var/lib/tmem/swap0.backing"
"#,
        )
        .unwrap();
        assert_eq!(file.serve.listen, Some("127.0.0.1:7500".parse().unwrap()));
        assert_eq!(file.serve.memory_limit, Some(MemoryLimit::PercentOfRam(25)));
        assert!(file.serve.mlock);
        assert_eq!(file.pool[1].backends[0].config, serde_json::json!({"level": 3}));
        assert_eq!(file.pool[1].tier.as_ref().unwrap().lower, "cold");
        let declared = file.declared();
        assert_eq!(declared.pools.len(), 2);
        let device = &declared.devices[0];
        assert_eq!((device.pool.as_str(), device.request.size_bytes), ("swap", 8 << 30));
        assert_eq!((device.request.kind, device.request.ublk_id), (FrontendKind::Ublk, Some(0)));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let cases = [
            ("[serve]\nlisten = \"127.0.0.1:7411\"\nmemroy_limit = \"20%\"\n", "line 3", "memroy_limit"),
            ("[serve]\nmemory_limit = \"lots\"\n", "line 2", "lots"),
            ("[serve]\n\nmax_instances = 3\n", "line 3", "16..=100000"),
            ("[[pool]]\nname = \"swap\"\nbackends = [{ plugin = \"ram\" }]\nmax_page = 5\n", "line 4", "max_page"),
            ("[[swap]]\npool = \"swap\"\nsize = \"8Q\"\nbacking = \"/x\"\n", "line 3", "size suffix"),
            ("[[swap]]\npool = \"swap\"\nbacking = \"/x\"\n", "line 1", "size"),
            ("[serve\n", "line 1", "unclosed table"),
        ];
        for (text, line, what) in cases {
            let message = ConfigFile::parse(text).unwrap_err().to_string();
            assert!(message.contains(line) && message.contains(what), "{text:?}: {message}");
        }
    }
}
