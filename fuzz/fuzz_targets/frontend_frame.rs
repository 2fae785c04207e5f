//! The frontend protocol as the host reads it: a stream of frames from a client (HELLO,
//! BATCH, TAKEN), each decoded; every accepted batch re-encodes to a payload that decodes to
//! the same ops. The input's first byte picks the pool's page size.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tmem_api::frontend::{self as proto, Op};
use tmem_api::wire::{self, Reader};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else { return };
    // Small pages keep batches of many ops within a fuzzer's input; 4096 is the real smallest.
    let page_size = [1, 8, 512, 4096][usize::from(pick & 3)];
    tmem_fuzz::frames(stream, proto::MAX_BODY, |kind, _id, payload| match kind {
        proto::HELLO => hello(payload),
        proto::BATCH => batch(payload, page_size),
        proto::TAKEN => {
            let _ = Reader::new(payload).u64("the taken count");
        }
        _ => {}
    });
});

fn hello(payload: &[u8]) {
    let Ok((token, pool, name)) = proto::parse_hello(payload) else { return };
    let encoded = proto::hello_payload(token, pool, name).expect("decoded strings fit a str16");
    assert!(payload.starts_with(&encoded), "HELLO re-encodes to the bytes it was read from");
    assert_eq!(proto::parse_hello(&encoded), Ok((token, pool, name)));
}

fn batch(payload: &[u8], page_size: usize) {
    let Ok(iter) = proto::batch_ops(payload, page_size) else {
        assert!(proto::parse_batch(payload, page_size).is_err(), "the two decoders agree");
        return;
    };
    let count = iter.len();
    let ops: Vec<Op<'_>> = iter.clone().collect();
    assert_eq!(ops.len(), count, "the iterator yields the count it announced");
    assert!(count <= proto::MAX_BATCH);
    assert_eq!(proto::parse_batch(payload, page_size).as_deref(), Ok(&ops[..]));
    for op in &ops {
        if let Op::Store(_, page) = op {
            assert_eq!(page.len(), page_size, "a stored page is one page");
        }
    }
    let bound = proto::answer_bound(iter, page_size);
    assert!(bound >= wire::BODY_HEADER + 2 + count, "the answer bound covers a result per op");

    let mut again = (count as u16).to_le_bytes().to_vec();
    for op in &ops {
        proto::put_op(&mut again, op);
    }
    // INVALIDATE_AREA's offset is ignored (and encoded as 0): compare lengths, and ops.
    assert_eq!(again.len(), payload.len(), "a batch re-encodes to as many bytes");
    assert_eq!(proto::parse_batch(&again, page_size).as_deref(), Ok(&ops[..]), "decode, encode, decode");
}
