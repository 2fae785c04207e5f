//! What the fuzz targets share: walking a stream of `wire` frames as a host reads it, with the
//! framing's invariants checked on every frame. (Each target is a `fuzz_targets/*.rs` binary;
//! `examples/seeds.rs` writes the checked-in seed corpus.)

use tmem_api::wire;

/// Walks `stream` as a host reads it, frame by frame, under a body limit of `max_body`, and
/// calls `each(kind, id, payload)` for every whole frame. Checked on the way, for every frame:
/// `parse_header` and `read_frame` agree on it, the body never reaches past the input, and
/// building the frame again (`wire::frame`) gives back its exact bytes. Stops at the first
/// frame that is refused or cut short.
pub fn frames(mut stream: &[u8], max_body: usize, mut each: impl FnMut(u8, u32, &[u8])) {
    while let Some(field) = stream.first_chunk::<{ wire::LEN_BYTES }>() {
        let Ok(len) = wire::body_len(*field, max_body) else {
            // The blocking reader refuses it too, before allocating anything.
            let mut reader = stream;
            assert!(wire::read_frame(&mut reader, max_body).is_err(), "read_frame took a refused length");
            return;
        };
        assert!((wire::BODY_HEADER..=max_body).contains(&len));
        if stream.len() < wire::LEN_BYTES + len {
            // Cut short: an error (never a frame of fewer bytes). Only read with an allocation
            // the input could fill, so a fuzzer's huge length fields stay cheap.
            let mut reader = stream;
            assert!(wire::read_frame(&mut reader, max_body).is_err(), "read_frame returned a cut frame");
            return;
        }
        let whole = &stream[..wire::LEN_BYTES + len];
        let mut reader = stream;
        let body = wire::read_frame(&mut reader, max_body).expect("a whole frame reads").expect("not the end");
        assert_eq!(body, whole[wire::LEN_BYTES..], "read_frame returns the body as sent");
        assert_eq!(reader.len(), stream.len() - whole.len(), "read_frame consumes exactly one frame");

        let header = wire::parse_header(whole[..wire::HEADER_LEN].try_into().expect("header bytes"), max_body)
            .expect("a body of an accepted length has a header");
        let (kind, id, payload) = wire::parse_body(&body).expect("a body of at least 5 bytes splits");
        assert_eq!((header.kind, header.id, header.payload_len), (kind, id, payload.len()));

        let mut again = Vec::new();
        wire::frame(&mut again, max_body, kind, id, &[payload]).expect("an accepted frame builds again");
        assert_eq!(again, whole, "decode then encode gives the same bytes");

        each(kind, id, payload);
        stream = &stream[whole.len()..];
    }
}
