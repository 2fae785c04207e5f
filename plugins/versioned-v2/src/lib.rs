//! `versioned` 2.0.0, a **test fixture**: format 2, `[2][page XOR 0xa5]`. See
//! `plugins/versioned-v1`.

const FORMAT: u8 = 2;
const MASK: u8 = 0xa5;

include!("../../versioned-v1/src/versioned.rs");
