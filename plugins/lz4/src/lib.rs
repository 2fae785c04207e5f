//! `lz4`, the bundled fast compression filter: the LZ4 block format (zram's default codec),
//! by the pure-Rust `lz4_flex`.
//!
//! Encoded form: the compression filters' shared framing ([`tmem_sdk::codec`]): a tag byte,
//! then an LZ4 block ([`TAG_LZ4`]), a same-filled marker or the raw page — the same markers and
//! raw form as the `zstd` filter, byte for byte. The tag makes the format self-describing, so a
//! newer version of this filter can keep decoding what an older one stored.
//!
//! LZ4 has no level; `lz4_flex` has no acceleration knob either, so the config is only what
//! decides which pages are kept compressed.

use lz4_flex::block::{CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size};
use tmem_sdk::codec::{self, Codec, Framing};
use tmem_sdk::{ConfigKey, DecodeError, Encoded, Filter, Reject};

/// An LZ4 block follows.
pub const TAG_LZ4: u8 = codec::TAG_COMPRESSED;
pub use codec::{TAG_RAW, TAG_SAME_FILLED};

/// The lz4 filter: its codec state, kept across calls, and the framing its config asks for.
pub struct Lz4 {
    codec: Lz4Codec,
    framing: Framing,
}

/// `lz4_flex`'s state, as a [`Codec`].
struct Lz4Codec {
    /// The match finder's table, reused (and cleared) by every encode instead of 8 KiB of
    /// stack per page.
    table: CompressTable,
    /// Where a page is compressed when the host's output buffer has less room than LZ4's
    /// worst case for it (pages of 64 KiB and more, or a large input from an earlier filter):
    /// `lz4_flex` refuses such a buffer before it knows the compressed size. Grown on first
    /// need; 4 KiB pages never use it.
    scratch: Vec<u8>,
}

/// The lz4 filter's config (see [`Lz4::CONFIG`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lz4Config {
    max_compressed_bytes: i64,
    on_incompressible: String,
}

impl Filter for Lz4 {
    const NAME: &'static str = "lz4";
    const DESCRIPTION: &'static str = "lz4 compression (fast, zram's default); same-filled pages as markers";
    const CONFIG: &'static [ConfigKey] = &[codec::MAX_COMPRESSED_BYTES, codec::ON_INCOMPRESSIBLE];
    type Config = Lz4Config;

    fn new(config: Lz4Config, _page_size: usize) -> Result<Self, String> {
        Ok(Lz4 {
            codec: Lz4Codec { table: CompressTable::default(), scratch: Vec::new() },
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

impl Codec for Lz4Codec {
    fn compress(&mut self, input: &[u8], out: &mut [u8], limit: usize) -> Option<usize> {
        let worst_case = get_maximum_output_size(input.len());
        if out.len() >= worst_case {
            let compressed = compress_into_with_table(input, out, &mut self.table).ok()?;
            return (compressed <= limit).then_some(compressed);
        }
        if self.scratch.len() < worst_case {
            self.scratch.resize(worst_case, 0);
        }
        let compressed = compress_into_with_table(input, &mut self.scratch, &mut self.table).ok()?;
        let fits = out.get_mut(..compressed).filter(|_| compressed <= limit)?;
        fits.copy_from_slice(&self.scratch[..compressed]);
        Some(compressed)
    }

    fn decompress(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        decompress_into(data, out).map_err(|_| DecodeError)
    }
}

tmem_sdk::export_filter!(Lz4);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_with(max_compressed_bytes: i64, on_incompressible: &str) -> Lz4 {
        let config = Lz4Config { max_compressed_bytes, on_incompressible: on_incompressible.into() };
        Lz4::new(config, 4096).unwrap()
    }

    fn filter(on_incompressible: &str) -> Lz4 {
        filter_with(2990, on_incompressible)
    }

    fn round_trip(f: &mut Lz4, page: &[u8]) -> (Encoded, usize) {
        let mut out = vec![0; page.len() + 4096];
        let encoded = f.encode(page, &mut out).unwrap();
        let (Encoded::Transformed(n) | Encoded::SameFilled(n) | Encoded::Incompressible(n)) = encoded;
        let mut back = vec![0; page.len() + 4096];
        let len = f.decode(&out[..n], &mut back).unwrap();
        assert_eq!(&back[..len], page);
        (encoded, n)
    }

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn text() -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(4096).collect()
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let (encoded, n) = round_trip(&mut filter("reject"), &text());
        assert!(matches!(encoded, Encoded::Transformed(_)));
        assert!(n < 200, "{n}");
    }

    #[test]
    fn half_random_pages_compress_to_about_half() {
        // Random bytes then zeros: lz4 keeps the random half as literals and the rest as one match.
        let mut page = noise(3, 2048);
        page.resize(4096, 0);
        let (encoded, n) = round_trip(&mut filter("reject"), &page);
        assert!(matches!(encoded, Encoded::Transformed(_)));
        assert!((2048..2200).contains(&n), "{n}");
    }

    #[test]
    fn one_filter_round_trips_many_different_pages() {
        // The kept hash table must not carry one page's matches into the next.
        let mut f = filter("store_raw");
        for seed in 0u64..64 {
            let mut page = text();
            page[(seed as usize * 61) % 4096..][..8].copy_from_slice(&seed.to_le_bytes());
            round_trip(&mut f, &page);
            round_trip(&mut f, &noise(seed, 4096));
        }
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
        let page = noise(7, 4096);
        let mut out = vec![0; 8192];
        assert_eq!(filter("reject").encode(&page, &mut out), Err(Reject::CompressPoor));
        assert_eq!(round_trip(&mut filter("store_raw"), &page).0, Encoded::Incompressible(4097));
    }

    #[test]
    fn max_compressed_bytes_is_the_cut_off() {
        let mut page = noise(3, 2048);
        page.resize(4096, 0);
        let (_, n) = round_trip(&mut filter("reject"), &page);
        let compressed = n as i64 - 1;
        assert!(matches!(round_trip(&mut filter_with(compressed, "reject"), &page).0, Encoded::Transformed(_)));
        let mut out = vec![0; 8192];
        assert_eq!(filter_with(compressed - 1, "reject").encode(&page, &mut out), Err(Reject::CompressPoor));
        assert_eq!(round_trip(&mut filter_with(compressed - 1, "store_raw"), &page).0, Encoded::Incompressible(4097));
    }

    #[test]
    fn inputs_larger_than_the_worst_case_room_still_compress() {
        // A 64 KiB page (or an earlier filter's output larger than a page): `out` is the input
        // plus 4 KiB, less than LZ4's worst case, so it goes through the scratch buffer.
        let page: Vec<u8> = text().into_iter().cycle().take(65536).collect();
        let (encoded, n) = round_trip(&mut filter_with(1 << 20, "reject"), &page);
        assert!(matches!(encoded, Encoded::Transformed(_)) && n < 1000, "{encoded:?}");
        let random = noise(9, 65536);
        let mut out = vec![0; 65536 + 4096];
        assert_eq!(filter_with(60_000, "reject").encode(&random, &mut out), Err(Reject::CompressPoor));
        assert_eq!(round_trip(&mut filter_with(60_000, "store_raw"), &random).0, Encoded::Incompressible(65537));
        // Compressed bigger than the input, but within the configured maximum: kept as LZ4.
        assert!(
            matches!(round_trip(&mut filter_with(1 << 20, "reject"), &random).0, Encoded::Transformed(n) if n > 65536)
        );
        // No room even for the raw input: the filter failed, nothing half-written is claimed.
        let mut small = vec![0; 100];
        assert_eq!(filter("store_raw").encode(&random, &mut small), Err(Reject::CompressFail));
        assert_eq!(filter("reject").encode(&random, &mut small), Err(Reject::CompressPoor));
    }

    #[test]
    fn corrupt_input_is_a_decode_error_not_a_panic() {
        let mut f = filter("reject");
        let mut page = vec![0; 4096];
        let huge_same = [TAG_SAME_FILLED, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        // A literal run longer than its input, a match before the start of the output.
        let long_literal = [TAG_LZ4, 0xf0, 0xff, 0xff, 0x10, 1, 2, 3];
        let bad_offset = [TAG_LZ4, 0x14, b'a', 0x09, 0x00, 0x00];
        for data in [&[][..], &[TAG_LZ4, 0xff], &[9, 9], &[TAG_SAME_FILLED, 1], &huge_same, &long_literal, &bad_offset]
        {
            assert_eq!(f.decode(data, &mut page), Err(DecodeError), "{data:?}");
        }
        // A block that decodes to more than `out` holds.
        let mut out = vec![0; 8192];
        let Ok(Encoded::Transformed(n)) = f.encode(&text(), &mut out) else { panic!("text compresses") };
        assert_eq!(f.decode(&out[..n], &mut page[..100]), Err(DecodeError));
    }

    #[test]
    fn truncated_or_bit_flipped_blocks_never_panic() {
        let mut f = filter("reject");
        let mut page = text();
        page[1000..1400].copy_from_slice(&noise(5, 400));
        let mut out = vec![0; 8192];
        let Ok(Encoded::Transformed(n)) = f.encode(&page, &mut out) else { panic!("compresses") };
        let block = &out[..n];
        let mut back = vec![0; 4096];
        for len in 0..n {
            let _ = f.decode(&block[..len], &mut back);
        }
        for i in 1..n {
            for bit in 0..8 {
                let mut flipped = block.to_vec();
                flipped[i] ^= 1 << bit;
                if let Ok(len) = f.decode(&flipped, &mut back) {
                    assert!(len <= back.len());
                }
            }
        }
    }
}
