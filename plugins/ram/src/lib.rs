//! `ram`, the bundled in-memory store: pages live in the host page store, in host memory.
//!
//! The bytes are kept by the host (through [`tmem_sdk::host_pages`]), not in this plugin's
//! linear memory, so a trapped or replaced instance loses nothing. The host accounts every
//! byte it keeps, which is what the pool reports as `pool_total_size`.

use tmem_sdk::{GetError, NoConfig, Reject, Store, host_pages};

/// The in-memory store.
pub struct Ram;

impl Store for Ram {
    const NAME: &'static str = "ram";
    const DESCRIPTION: &'static str = "pages kept in host memory (lost when the host stops)";
    type Config = NoConfig;

    fn new(_config: NoConfig, _page_size: usize) -> Result<Self, String> {
        Ok(Ram)
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        host_pages::put(offset, data).map_err(|_| Reject::AllocFail)
    }

    fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        host_pages::get(offset, out).ok_or(GetError::NotFound)
    }

    fn delete(&mut self, offset: u64) {
        host_pages::delete(offset);
    }

    fn clear(&mut self) {
        host_pages::clear();
    }
}

tmem_sdk::export_store!(Ram);
