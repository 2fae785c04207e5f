//! `lz4`, the bundled fast compression filter: the LZ4 block format (zram's default codec),
//! by the pure-Rust `lz4_flex`.
//!
//! Encoded form: one tag byte, then the payload.
//!
//! | tag | payload | when |
//! |---|---|---|
//! | [`TAG_LZ4`] | an LZ4 block | the page compressed to at most `max_compressed_bytes` |
//! | [`TAG_SAME_FILLED`] | the input length (u32, little-endian), then the repeated 8-byte word | zero-filled and same-filled pages |
//! | [`TAG_RAW`] | the page as it is | did not compress well, and `on_incompressible = store_raw` |
//!
//! The tag makes the format self-describing, so a newer version of this filter can keep
//! decoding what an older one stored (hot swap keeps pages readable). The same-filled and raw
//! forms are the `zstd` filter's, byte for byte.
//!
//! LZ4 has no level; `lz4_flex` has no acceleration knob either, so the config is only what
//! decides which pages are kept compressed.

use lz4_flex::block::{CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size};
use tmem_sdk::{ConfigKey, DecodeError, Encoded, Filter, Reject, config};

/// An LZ4 block follows.
pub const TAG_LZ4: u8 = 1;
/// An 8-byte word follows; the page is that word repeated.
pub const TAG_SAME_FILLED: u8 = 2;
/// The raw page follows.
pub const TAG_RAW: u8 = 3;

/// The lz4 filter, with its compression hash table kept across calls.
pub struct Lz4 {
    /// The match finder's table, reused (and cleared) by every encode instead of 8 KiB of
    /// stack per page.
    table: CompressTable,
    /// Where a page is compressed when the host's output buffer has less room than LZ4's
    /// worst case for it (pages of 64 KiB and more, or a large input from an earlier filter):
    /// `lz4_flex` refuses such a buffer before it knows the compressed size. Grown on first
    /// need; 4 KiB pages never use it.
    scratch: Vec<u8>,
    /// A page that compresses to more bytes than this is incompressible.
    max_compressed_bytes: usize,
    /// `on_incompressible = store_raw`: pass incompressible pages on raw instead of refusing them.
    store_raw: bool,
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
    const CONFIG: &'static [ConfigKey] = &[
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
    type Config = Lz4Config;

    fn new(config: Lz4Config, _page_size: usize) -> Result<Self, String> {
        Ok(Lz4 {
            table: CompressTable::default(),
            scratch: Vec::new(),
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
        let (tag, payload) = out.split_first_mut().ok_or(Reject::CompressFail)?;
        if let Some(compressed) = self.compress(page, payload) {
            *tag = TAG_LZ4;
            return Ok(Encoded::Transformed(1 + compressed));
        }
        if !self.store_raw {
            return Err(Reject::CompressPoor);
        }
        *tag = TAG_RAW;
        payload.get_mut(..page.len()).ok_or(Reject::CompressFail)?.copy_from_slice(page);
        Ok(Encoded::Incompressible(1 + page.len()))
    }

    fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        let (&tag, payload) = data.split_first().ok_or(DecodeError)?;
        match tag {
            TAG_LZ4 => decompress_into(payload, out).map_err(|_| DecodeError),
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

impl Lz4 {
    /// Compresses `input` into `payload` if it compresses to at most `max_compressed_bytes`
    /// and fits there, returning the compressed length.
    fn compress(&mut self, input: &[u8], payload: &mut [u8]) -> Option<usize> {
        let limit = self.max_compressed_bytes.min(payload.len());
        let worst_case = get_maximum_output_size(input.len());
        if payload.len() >= worst_case {
            let compressed = compress_into_with_table(input, payload, &mut self.table).ok()?;
            return (compressed <= limit).then_some(compressed);
        }
        if self.scratch.len() < worst_case {
            self.scratch.resize(worst_case, 0);
        }
        let compressed = compress_into_with_table(input, &mut self.scratch, &mut self.table).ok()?;
        let fits = payload.get_mut(..compressed).filter(|_| compressed <= limit)?;
        fits.copy_from_slice(&self.scratch[..compressed]);
        Some(compressed)
    }
}

/// The 8-byte word a page repeats, if it does (zswap checks the same unit).
fn same_filled_word(page: &[u8]) -> Option<[u8; 8]> {
    let (first, rest) = page.split_first_chunk::<8>()?;
    rest.chunks_exact(8).all(|chunk| chunk == first).then_some(*first)
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
