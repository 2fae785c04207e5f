//! `zstd`, the bundled compression filter: real zstd (the C library, compiled to Wasm).
//!
//! Encoded form: the compression filters' shared framing ([`tmem_sdk::codec`]): a tag byte,
//! then a zstd frame ([`TAG_ZSTD`]), a same-filled marker or the raw page. The tag makes the
//! format self-describing, so a newer version of this filter can keep decoding what an older
//! one stored (hot swap keeps pages readable).

use tmem_sdk::codec::{self, Codec, Framing};
use tmem_sdk::{ConfigKey, DecodeError, Encoded, Filter, Reject, config};

/// A zstd frame follows.
pub const TAG_ZSTD: u8 = codec::TAG_COMPRESSED;
pub use codec::{TAG_RAW, TAG_SAME_FILLED};

/// The zstd filter: its compression and decompression contexts, kept across calls, and the
/// framing its config asks for.
pub struct Zstd {
    codec: ZstdCodec,
    framing: Framing,
}

/// zstd's contexts, as a [`Codec`].
struct ZstdCodec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
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
        codec::MAX_COMPRESSED_BYTES,
        codec::ON_INCOMPRESSIBLE,
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
            codec: ZstdCodec { compressor, decompressor },
            framing: Framing::new(config.max_compressed_bytes, &config.on_incompressible),
        })
    }

    fn encode(&mut self, page: &[u8], out: &mut [u8]) -> Result<Encoded, Reject> {
        self.framing.encode(&mut self.codec, page, out)
    }

    fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        codec::decode(&mut self.codec, data, out)
    }
}

impl Codec for ZstdCodec {
    fn compress(&mut self, input: &[u8], out: &mut [u8], limit: usize) -> Option<usize> {
        // A frame that would pass `limit` fails as "destination too small": zstd stops there.
        self.compressor.compress_to_buffer(input, &mut out[..limit]).ok()
    }

    fn decompress(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        self.decompressor.decompress_to_buffer(data, out).map_err(|_| DecodeError)
    }
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
