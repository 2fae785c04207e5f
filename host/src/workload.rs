//! Realistic page contents, deterministic from a seed: the mix the anchors use (15% zero
//! pages, 15% random pages, 70% text-like pages), for the demo, benchmarks and tests.

/// What a generated page looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageClass {
    /// All zero bytes.
    Zero,
    /// Incompressible noise.
    Random,
    /// Words and numbers, compressible about 3:1 like real program memory.
    Text,
}

/// A small, fast, deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "page",
    "swap",
    "memory",
    "store",
    "load",
    "kernel",
    "offset",
    "pool",
    "the",
    "of",
    "and",
    "to",
    "in",
    "frontswap",
    "compressed",
    "backend",
    "transcendent",
    "cache",
    "value",
    "user",
    "request",
    "id",
    "name",
    "status",
    "ok",
    "error",
    "time",
    "count",
    "buffer",
    "node",
    "next",
    "prev",
    "data",
    "key",
    "index",
    "null",
    "true",
    "false",
    "{",
    "}",
    ":",
];

/// The class of page `index` under `seed`: 15% zero, 15% random, 70% text.
pub fn class_of(seed: u64, index: u64) -> PageClass {
    match Rng::new(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F)).below(100) {
        0..15 => PageClass::Zero,
        15..30 => PageClass::Random,
        _ => PageClass::Text,
    }
}

/// Fills `page` with the contents of page `index` under `seed` (same inputs, same bytes).
pub fn fill_page(seed: u64, index: u64, page: &mut [u8]) {
    let mut rng = Rng::new(seed.rotate_left(17) ^ index);
    match class_of(seed, index) {
        PageClass::Zero => page.fill(0),
        PageClass::Random => {
            for chunk in page.chunks_mut(8) {
                let bytes = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        PageClass::Text => {
            let mut at = 0;
            while at < page.len() {
                let piece: &[u8] = if rng.below(5) == 0 {
                    // A number, like a counter or an id in a record.
                    let n = rng.below(100_000);
                    let text = format!("{n} ");
                    let len = text.len().min(page.len() - at);
                    page[at..at + len].copy_from_slice(&text.as_bytes()[..len]);
                    at += len;
                    continue;
                } else {
                    WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes()
                };
                for &b in piece.iter().chain(b" ") {
                    if at == page.len() {
                        break;
                    }
                    page[at] = b;
                    at += 1;
                }
            }
        }
    }
}

/// A freshly allocated page `index` under `seed`.
pub fn page(seed: u64, index: u64, page_size: usize) -> Vec<u8> {
    let mut p = vec![0; page_size];
    fill_page(seed, index, &mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_deterministic_and_the_mix_is_as_documented() {
        assert_eq!(page(1, 42, 4096), page(1, 42, 4096));
        assert_ne!(page(1, 42, 4096), page(2, 42, 4096));
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            counts[class_of(7, i) as usize] += 1;
        }
        assert!((1200..1800).contains(&counts[0]), "zero {counts:?}");
        assert!((1200..1800).contains(&counts[1]), "random {counts:?}");
        assert!((6500..7500).contains(&counts[2]), "text {counts:?}");
    }
}
