//! `misbehave`, a **test fixture**, never bundled: a working store (over the host page store,
//! like `ram`) that misbehaves on command, so tests can prove the host survives it.
//!
//! It misbehaves on the calls of operation `op` numbered `after + 1`, `after + 1 + every`, …
//! counted per instance (a fresh instance counts from one again), in the way `mode` says:
//! spin forever, allocate until the memory cap stops it, or trap.

use tmem_sdk::{ConfigKey, GetError, Reject, Store, config, host_pages};

/// The fixture store.
pub struct Misbehave {
    config: MisbehaveConfig,
    calls: u64,
}

/// See [`Misbehave::CONFIG`].
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MisbehaveConfig {
    mode: String,
    op: String,
    after: i64,
    every: i64,
}

impl Misbehave {
    fn maybe_misbehave(&mut self, op: &str) {
        if self.config.op != op && self.config.op != "any" {
            return;
        }
        self.calls += 1;
        let (after, every) = (self.config.after as u64, self.config.every as u64);
        if self.calls <= after || !(self.calls - after - 1).is_multiple_of(every) {
            return;
        }
        match self.config.mode.as_str() {
            "loop" => loop {
                // A real spin: the host's deadline is the only way out.
                std::hint::black_box(&mut self.calls);
            },
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("misbehave: trap on {op} call {}", self.calls),
            _ => {}
        }
    }
}

impl Store for Misbehave {
    const NAME: &'static str = "misbehave";
    const DESCRIPTION: &'static str = "test fixture: a store that loops, eats memory or traps on command";
    const CONFIG: &'static [ConfigKey] = &[
        tmem_sdk::one_of!("mode", "how to misbehave", ["none", "loop", "bomb", "trap", "fail_init"], "none"),
        tmem_sdk::one_of!("op", "which operation misbehaves", ["put", "get", "delete", "clear", "any"], "put"),
        config::integer("after", "calls that behave before the first misbehaving one", 0, 1 << 40, 0),
        config::integer("every", "then misbehave on every n-th call", 1, 1 << 40, 1),
    ];
    type Config = MisbehaveConfig;

    fn new(config: MisbehaveConfig, _page_size: usize) -> Result<Self, String> {
        if config.mode == "fail_init" {
            return Err("misbehave: refusing to start (mode fail_init)".into());
        }
        Ok(Misbehave { config, calls: 0 })
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        self.maybe_misbehave("put");
        host_pages::put(offset, data).map_err(|_| Reject::AllocFail)
    }

    fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        self.maybe_misbehave("get");
        host_pages::get(offset, out).ok_or(GetError::NotFound)
    }

    fn delete(&mut self, offset: u64) {
        self.maybe_misbehave("delete");
        host_pages::delete(offset);
    }

    fn clear(&mut self) {
        self.maybe_misbehave("clear");
        host_pages::clear();
    }
}

tmem_sdk::export_store!(Misbehave);
