//! The peer protocol as a peer host reads it: a stream of frames from a `remote` store
//! (HELLO, PUT, GET, DELETE, CLEAR), each decoded; what decodes re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tmem_api::peer;

fuzz_target!(|data: &[u8]| {
    tmem_fuzz::frames(data, peer::MAX_BODY, |kind, _id, payload| match kind {
        peer::HELLO => {
            if let Ok((token, pool)) = peer::parse_hello(payload) {
                let encoded = peer::hello_payload(token, pool).expect("decoded strings fit a str16");
                assert_eq!(encoded, payload, "HELLO re-encodes to the same bytes");
            }
        }
        peer::PUT | peer::GET | peer::DELETE => match peer::parse_offset(payload) {
            Ok((offset, rest)) => {
                assert_eq!([&offset.to_le_bytes()[..], rest].concat(), payload, "offset and rest are the payload");
            }
            Err(_) => assert!(payload.len() < 8, "only a payload shorter than an offset is refused"),
        },
        _ => {}
    });
});
