// The body of the `versioned` test fixture, shared by its two versions (each crate defines
// `FORMAT` and `MASK`, then includes this file).

use tmem_sdk::{DecodeError, Encoded, Filter, Reject};

/// The fixture filter.
pub struct Versioned;

impl Filter for Versioned {
    const NAME: &'static str = "versioned";
    const DESCRIPTION: &'static str = "test fixture: a filter whose stored format differs between its versions";
    type Config = tmem_sdk::NoConfig;

    fn new(_config: Self::Config, _page_size: usize) -> Result<Self, String> {
        Ok(Versioned)
    }

    fn encode(&mut self, input: &[u8], out: &mut [u8]) -> Result<Encoded, Reject> {
        out[0] = FORMAT;
        for (o, i) in out[1..=input.len()].iter_mut().zip(input) {
            *o = i ^ MASK;
        }
        Ok(Encoded::Transformed(input.len() + 1))
    }

    fn decode(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
        // Another version's bytes are refused, never misread.
        if data.first() != Some(&FORMAT) {
            return Err(DecodeError);
        }
        for (o, d) in out.iter_mut().zip(&data[1..]) {
            *o = d ^ MASK;
        }
        Ok(data.len() - 1)
    }
}

tmem_sdk::export_filter!(Versioned);
