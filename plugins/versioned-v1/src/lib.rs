//! `versioned` 1.0.0, a **test fixture**, never bundled: a filter that stores pages as
//! `[format byte 1][page XOR 0x5a]` and refuses to decode any other format. With version
//! 2.0.0 (`plugins/versioned-v2`, format 2) it proves that a hot swap reads every page
//! through the version that stored it.

const FORMAT: u8 = 1;
const MASK: u8 = 0x5a;

include!("versioned.rs");
