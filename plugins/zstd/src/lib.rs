//! `zstd`, the bundled compression filter: real zstd (the C library, compiled to Wasm).
//!
//! Encoded form: one tag byte, then the payload.
//!
//! | tag | payload | when |
//! |---|---|---|
//! | [`TAG_ZSTD`] | a zstd frame | the page compressed to at most `max_compressed_bytes` |
//! | [`TAG_SAME_FILLED`] | the input length (u32, little-endian), then the repeated 8-byte word | zero-filled and same-filled pages |
//! | [`TAG_RAW`] | the page as it is | did not compress well, and `on_incompressible = store_raw` |
//!
//! The tag makes the format self-describing, so a newer version of this filter can keep
//! decoding what an older one stored (hot swap keeps pages readable).

use tmem_sdk::{ConfigKey, DecodeError, Encoded, Filter, Reject, config};

/// A zstd frame follows.
pub const TAG_ZSTD: u8 = 1;
/// An 8-byte word follows; the page is that word repeated.
pub const TAG_SAME_FILLED: u8 = 2;
/// The raw page follows.
pub const TAG_RAW: u8 = 3;

/// The zstd filter, with its compression and decompression contexts kept across calls.
pub struct Zstd {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    max_compressed_bytes: usize,
    store_raw: bool,
}

/// The zstd filter's config (see [`Zstd::CONFIG`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZstdConfig {
    level: i64,
    max_compressed_bytes: i64,
    on_incompressible: String,
}

impl Filter for Zstd {
    const NAME: &'static str = "zstd";
    const DESCRIPTION: &'static str = "zstd compression; same-filled pages as markers";
    const CONFIG: &'static [ConfigKey] = &[
        config::integer("level", "zstd compression level (negative levels are faster)", -7, 19, 3),
        config::integer(
            "max_compressed_bytes",
            "a page that compresses to more than this is incompressible (2990 is Google's far-memory cut-off for 4 KiB pages)",
            1,
            1 << 20,
            2990,
        ),
        tmem_sdk::one_of!(
            "on_incompressible",
            "reject an incompressible page (reject_compress_poor) or pass it on raw (stored_incompressible_pages)",
            ["reject", "store_raw"],
            "reject"
        ),
    ];
    type Config = ZstdConfig;

    fn new(config: ZstdConfig, _page_size: usize) -> Result<Self, String> {
        let level = config.level as i32;
        let mut compressor = zstd::bulk::Compressor::new(level).map_err(|e| format!("zstd level {level}: {e}"))?;
        // The host knows the page size and keeps the length; the frame needs neither.
        compressor.include_checksum(false).map_err(|e| e.to_string())?;
        compressor.include_contentsize(false).map_err(|e| e.to_string())?;
        compressor.include_dictid(false).map_err(|e| e.to_string())?;
        let decompressor = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
        Ok(Zstd {
            compressor,
            decompressor,
            max_compressed_bytes: config.max_compressed_bytes as usize,
            store_raw: config.on_incompressible == "store_raw",
        })
    }

    fn encode(&mut self, page: &[u8], out: &mut [u8]) -> Result<Encoded, Reject> {
        if let Some(word) = same_filled_word(page) {
            out[0] = TAG_SAME_FILLED;
            out[1..5].copy_from_slice(&(page.len() as u32).to_le_bytes());
            out[5..13].copy_from_slice(&word);
            return Ok(Encoded::SameFilled(13));
        }
        let compressed = self.compressor.compress_to_buffer(page, &mut out[1..]).map_err(|_| Reject::CompressFail)?;
        if compressed <= self.max_compressed_bytes {
            out[0] = TAG_ZSTD;
            return Ok(Encoded::Transformed(1 + compressed));
        }
        if !self.store_raw {
            return Err(Reject::CompressPoor);
        }
        out[0] = TAG_RAW;
        out[1..1 + page.len()].copy_from_slice(page);
        Ok(Encoded::Incompressible(1 + page.len()))
    }

    fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        let (&tag, payload) = data.split_first().ok_or(DecodeError)?;
        match tag {
            TAG_ZSTD => self.decompressor.decompress_to_buffer(payload, out).map_err(|_| DecodeError),
            TAG_SAME_FILLED if payload.len() == 12 => {
                let len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
                let out = out.get_mut(..len).filter(|o| o.len() % 8 == 0).ok_or(DecodeError)?;
                for chunk in out.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&payload[4..]);
                }
                Ok(len)
            }
            TAG_RAW if payload.len() <= out.len() => {
                out[..payload.len()].copy_from_slice(payload);
                Ok(payload.len())
            }
            _ => Err(DecodeError),
        }
    }
}

/// The 8-byte word a page repeats, if it does (zswap checks the same unit).
fn same_filled_word(page: &[u8]) -> Option<[u8; 8]> {
    let (first, rest) = page.split_first_chunk::<8>()?;
    rest.chunks_exact(8).all(|chunk| chunk == first).then_some(*first)
}

tmem_sdk::export_filter!(Zstd);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(on_incompressible: &str) -> Zstd {
        let config = ZstdConfig { level: 3, max_compressed_bytes: 2990, on_incompressible: on_incompressible.into() };
        Zstd::new(config, 4096).unwrap()
    }

    fn round_trip(f: &mut Zstd, page: &[u8]) -> (Encoded, usize) {
        let mut out = vec![0; 8192];
        let encoded = f.encode(page, &mut out).unwrap();
        let (Encoded::Transformed(n) | Encoded::SameFilled(n) | Encoded::Incompressible(n)) = encoded;
        let mut back = vec![0; page.len() + 4096];
        let len = f.decode(&out[..n], &mut back).unwrap();
        assert_eq!(&back[..len], page);
        (encoded, n)
    }

    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let page: Vec<u8> =
            b"the quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(4096).collect();
        let (encoded, n) = round_trip(&mut filter("reject"), &page);
        assert!(matches!(encoded, Encoded::Transformed(_)));
        assert!(n < 200, "{n}");
    }

    #[test]
    fn same_filled_pages_are_markers() {
        let mut f = filter("reject");
        assert_eq!(round_trip(&mut f, &[0u8; 4096]).0, Encoded::SameFilled(13));
        let page: Vec<u8> = 0xdead_beef_0102_0304u64.to_le_bytes().iter().copied().cycle().take(4096).collect();
        assert_eq!(round_trip(&mut f, &page).0, Encoded::SameFilled(13));
    }

    #[test]
    fn random_pages_are_rejected_or_stored_raw_as_configured() {
        let page = noise(7);
        let mut out = vec![0; 8192];
        assert_eq!(filter("reject").encode(&page, &mut out), Err(Reject::CompressPoor));
        assert_eq!(round_trip(&mut filter("store_raw"), &page).0, Encoded::Incompressible(4097));
    }

    #[test]
    fn corrupt_input_is_a_decode_error_not_a_panic() {
        let mut f = filter("reject");
        let mut page = vec![0; 4096];
        let huge_same = [TAG_SAME_FILLED, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for data in [&[][..], &[TAG_ZSTD, 1, 2, 3], &[9, 9], &[TAG_SAME_FILLED, 1], &huge_same] {
            assert_eq!(f.decode(data, &mut page), Err(DecodeError), "{data:?}");
        }
    }
}
