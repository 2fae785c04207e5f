//! `sled`, the bundled persistent store: pages kept on disk, surviving host restarts and
//! crashes.
//!
//! The plugin needs the `storage` capability: with it, the host backs this pool's host page
//! store with the pool's own sled database under the host's data dir (the plugin sees only
//! its pool's pages, never a path). Durability — when a store is acknowledged relative to
//! the disk — is the pool's `durability` setting, enforced by the host (`docs/durability.md`).
//!
//! What the plugin adds is an integrity check: every record is `[format 1][CRC-32 of the
//! data, little-endian][data]`, verified on every load, so a damaged record is reported as a
//! failed load (`decompress_fail`, `load_failures`), never returned as a page.

use tmem_sdk::{Capability, GetError, NoConfig, Reject, Store, host_pages};

/// Format byte of a record.
const FORMAT: u8 = 1;
/// Bytes before the data: the format byte and the CRC.
const HEADER: usize = 5;

/// The persistent store.
pub struct Sled {
    record: Vec<u8>,
}

/// Frames `data` as a record in `record`.
fn frame(data: &[u8], record: &mut Vec<u8>) {
    record.clear();
    record.push(FORMAT);
    record.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    record.extend_from_slice(data);
}

/// The data of a record, if its format and CRC are right.
fn unframe(record: &[u8]) -> Option<&[u8]> {
    let (header, data) = record.split_at_checked(HEADER)?;
    let crc = u32::from_le_bytes(header[1..].try_into().ok()?);
    (header[0] == FORMAT && crc32fast::hash(data) == crc).then_some(data)
}

impl Store for Sled {
    const NAME: &'static str = "sled";
    const DESCRIPTION: &'static str = "pages kept on disk in the pool's own sled database (needs the storage grant)";
    const CAPABILITIES: &'static [Capability] = &[Capability::Storage];
    type Config = NoConfig;

    fn new(_config: NoConfig, page_size: usize) -> Result<Self, String> {
        Ok(Sled { record: Vec::with_capacity(page_size + 4096 + HEADER) })
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        frame(data, &mut self.record);
        host_pages::put(offset, &self.record).map_err(|_| Reject::AllocFail)
    }

    fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        self.record.resize(out.len() + HEADER, 0);
        let len = host_pages::get(offset, &mut self.record).ok_or(GetError::NotFound)?;
        let data = unframe(&self.record[..len]).ok_or(GetError::Corrupt)?;
        out[..data.len()].copy_from_slice(data);
        Ok(data.len())
    }

    fn delete(&mut self, offset: u64) {
        host_pages::delete(offset);
    }

    fn clear(&mut self) {
        host_pages::clear();
    }
}

tmem_sdk::export_store!(Sled);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let mut store = Sled::new(NoConfig {}, 4096).unwrap();
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        store.put(3, &page).unwrap();
        let mut out = vec![0u8; 4096 + 4096];
        assert_eq!(store.get(3, &mut out), Ok(4096));
        assert_eq!(&out[..4096], &page[..]);
        assert_eq!(store.get(4, &mut out), Err(GetError::NotFound));
        // Flip one bit of the kept record: the load is refused, not returned.
        let mut record = vec![0u8; 4096 + HEADER];
        let n = host_pages::get(3, &mut record).unwrap();
        record[100] ^= 1;
        host_pages::put(3, &record[..n]).unwrap();
        assert_eq!(store.get(3, &mut out), Err(GetError::Corrupt));
        // A truncated record too.
        host_pages::put(3, &record[..3]).unwrap();
        assert_eq!(store.get(3, &mut out), Err(GetError::Corrupt));
        store.delete(3);
        assert_eq!(store.get(3, &mut out), Err(GetError::NotFound));
    }
}
