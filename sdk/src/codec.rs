//! The page framing that compression filters share: write only the codec, get the rest.
//!
//! A compression filter's encoded form is one tag byte, then the payload:
//!
//! | tag | payload | when |
//! |---|---|---|
//! | [`TAG_COMPRESSED`] | the codec's output | the page compressed to at most `max_compressed_bytes` |
//! | [`TAG_SAME_FILLED`] | the input length (u32, little-endian), then the repeated 8-byte word | zero-filled and same-filled pages |
//! | [`TAG_RAW`] | the page as it is | did not compress well, and `on_incompressible = store_raw` |
//!
//! The tag makes the format self-describing, so a newer version of a filter keeps decoding what
//! an older one stored (hot swap keeps pages readable), and the same-filled and raw forms are
//! byte for byte the same in every filter built on this module (`zstd`, `lz4`).
//!
//! A filter implements [`Codec`] (compress into a bounded buffer, decompress), declares
//! [`MAX_COMPRESSED_BYTES`] and [`ON_INCOMPRESSIBLE`] among its config keys, builds a
//! [`Framing`] from their values, and forwards its [`Filter`](crate::Filter) `encode`/`decode`
//! to [`Framing::encode`] and [`decode`].

use crate::{ConfigKey, DecodeError, Encoded, Reject, config};

/// The codec's output follows.
pub const TAG_COMPRESSED: u8 = 1;
/// The input length and an 8-byte word follow; the page is that word repeated.
pub const TAG_SAME_FILLED: u8 = 2;
/// The raw page follows.
pub const TAG_RAW: u8 = 3;

/// The config key that sets [`Framing`]'s cut-off.
pub const MAX_COMPRESSED_BYTES: ConfigKey = config::integer(
    "max_compressed_bytes",
    "a page that compresses to more than this is incompressible (2990 is Google's far-memory cut-off for 4 KiB pages)",
    1,
    1 << 20,
    2990,
);

/// The config key that says what [`Framing`] does with an incompressible page.
pub const ON_INCOMPRESSIBLE: ConfigKey = crate::one_of!(
    "on_incompressible",
    "reject an incompressible page (reject_compress_poor) or pass it on raw (stored_incompressible_pages)",
    ["reject", "store_raw"],
    "reject"
);

/// A compression algorithm, without framing.
pub trait Codec {
    /// Compresses `input` into `out`, returning the compressed length, or `None` when it
    /// compresses to more than `limit` bytes (≤ `out.len()`; a codec may stop as soon as it
    /// knows) or the codec failed: the page is then incompressible. `out` may be larger than
    /// `limit` (codecs that want their worst case's room to work in place get it when the host
    /// gave it).
    fn compress(&mut self, input: &[u8], out: &mut [u8], limit: usize) -> Option<usize>;

    /// Decompresses `data` (what [`compress`](Codec::compress) wrote) into `out`, returning the
    /// length; an error for anything else, never a panic.
    fn decompress(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError>;
}

/// What decides which pages are kept compressed: the values of [`MAX_COMPRESSED_BYTES`] and
/// [`ON_INCOMPRESSIBLE`].
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// A page that compresses to more bytes than this is incompressible.
    max_compressed_bytes: usize,
    /// `on_incompressible = store_raw`: pass incompressible pages on raw instead of refusing them.
    store_raw: bool,
}

impl Framing {
    /// The framing the two config values ask for.
    pub fn new(max_compressed_bytes: i64, on_incompressible: &str) -> Framing {
        Framing {
            max_compressed_bytes: max_compressed_bytes.max(0) as usize,
            store_raw: on_incompressible == "store_raw",
        }
    }

    /// Encodes `page` into `out`: a same-filled marker, the codec's output, or (as configured)
    /// the raw page or a [`Reject::CompressPoor`]. [`Reject::CompressFail`] when `out` has no
    /// room even for the raw page.
    pub fn encode(&self, codec: &mut impl Codec, page: &[u8], out: &mut [u8]) -> Result<Encoded, Reject> {
        if let Some(word) = same_filled_word(page) {
            let marker = out.get_mut(..13).ok_or(Reject::CompressFail)?;
            marker[0] = TAG_SAME_FILLED;
            marker[1..5].copy_from_slice(&(page.len() as u32).to_le_bytes());
            marker[5..13].copy_from_slice(&word);
            return Ok(Encoded::SameFilled(13));
        }
        let (tag, payload) = out.split_first_mut().ok_or(Reject::CompressFail)?;
        let limit = self.max_compressed_bytes.min(payload.len());
        if let Some(compressed) = codec.compress(page, payload, limit).filter(|&n| n <= limit) {
            *tag = TAG_COMPRESSED;
            return Ok(Encoded::Transformed(1 + compressed));
        }
        if !self.store_raw {
            return Err(Reject::CompressPoor);
        }
        payload.get_mut(..page.len()).ok_or(Reject::CompressFail)?.copy_from_slice(page);
        *tag = TAG_RAW;
        Ok(Encoded::Incompressible(1 + page.len()))
    }
}

/// Decodes what [`Framing::encode`] wrote (with any framing config) into `out`.
pub fn decode(codec: &mut impl Codec, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    let (&tag, payload) = data.split_first().ok_or(DecodeError)?;
    match tag {
        TAG_COMPRESSED => codec.decompress(payload, out),
        TAG_SAME_FILLED if payload.len() == 12 => {
            let len = u32::from_le_bytes(payload[..4].try_into().map_err(|_| DecodeError)?) as usize;
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

/// The 8-byte word a page repeats, if it does (zswap checks the same unit).
fn same_filled_word(page: &[u8]) -> Option<[u8; 8]> {
    let (first, rest) = page.split_first_chunk::<8>()?;
    rest.chunks_exact(8).all(|chunk| chunk == first).then_some(*first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A codec that "compresses" by dropping trailing zeros (length prefix + the rest).
    struct TrimZeros;

    impl Codec for TrimZeros {
        fn compress(&mut self, input: &[u8], out: &mut [u8], limit: usize) -> Option<usize> {
            let kept = input.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let out = out[..limit].get_mut(..4 + kept)?;
            out[..4].copy_from_slice(&(input.len() as u32).to_le_bytes());
            out[4..].copy_from_slice(&input[..kept]);
            Some(4 + kept)
        }

        fn decompress(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
            let len = u32::from_le_bytes(data.get(..4).ok_or(DecodeError)?.try_into().unwrap()) as usize;
            let (out, body) = (out.get_mut(..len).ok_or(DecodeError)?, &data[4..]);
            out.get_mut(..body.len()).ok_or(DecodeError)?.copy_from_slice(body);
            out[body.len()..].fill(0);
            Ok(len)
        }
    }

    fn round_trip(framing: Framing, page: &[u8]) -> Result<Encoded, Reject> {
        let mut out = vec![0; page.len() + 64];
        let encoded = framing.encode(&mut TrimZeros, page, &mut out)?;
        let (Encoded::Transformed(n) | Encoded::SameFilled(n) | Encoded::Incompressible(n)) = encoded;
        let mut back = vec![0; page.len()];
        assert_eq!(decode(&mut TrimZeros, &out[..n], &mut back), Ok(page.len()));
        assert_eq!(back, page);
        Ok(encoded)
    }

    fn page(nonzero: usize) -> Vec<u8> {
        let mut page = vec![0u8; 4096];
        for (i, b) in page[..nonzero].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        page
    }

    #[test]
    fn pages_are_compressed_marked_raw_or_refused_by_the_config() {
        let reject = Framing::new(100, "reject");
        let raw = Framing::new(100, "store_raw");
        assert_eq!(round_trip(reject, &page(50)), Ok(Encoded::Transformed(55)));
        assert_eq!(round_trip(reject, &[0u8; 4096]), Ok(Encoded::SameFilled(13)));
        assert_eq!(round_trip(reject, &[7u8; 4096]), Ok(Encoded::SameFilled(13)));
        // 4 + 97 > 100: over the cut-off.
        assert_eq!(round_trip(reject, &page(97)), Err(Reject::CompressPoor));
        assert_eq!(round_trip(raw, &page(97)), Ok(Encoded::Incompressible(4097)));
        assert_eq!(round_trip(raw, &page(96)), Ok(Encoded::Transformed(101)));
    }

    #[test]
    fn no_room_for_the_raw_page_is_a_failure_not_a_partial_write() {
        let mut small = [0u8; 100];
        let framing = Framing::new(4096, "store_raw");
        assert_eq!(framing.encode(&mut TrimZeros, &page(4000), &mut small), Err(Reject::CompressFail));
        assert_eq!(framing.encode(&mut TrimZeros, &[1u8; 4096], &mut small[..5]), Err(Reject::CompressFail));
    }

    #[test]
    fn corrupt_frames_are_decode_errors() {
        let mut out = vec![0; 4096];
        let huge_same = [TAG_SAME_FILLED, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let odd_same = [TAG_SAME_FILLED, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for data in [&[][..], &[9, 9], &[TAG_SAME_FILLED, 1], &huge_same, &odd_same, &[TAG_COMPRESSED, 1]] {
            assert_eq!(decode(&mut TrimZeros, data, &mut out), Err(DecodeError), "{data:?}");
        }
        assert_eq!(decode(&mut TrimZeros, &[TAG_RAW; 6], &mut out[..4]), Err(DecodeError));
    }
}
