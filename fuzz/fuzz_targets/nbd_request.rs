//! An NBD client's stream as the host's server reads it: the client flags, options (their
//! headers, and the `INFO`/`GO` and meta-context payloads) until `EXPORT_NAME` or `GO` starts
//! transmission, then request headers (a write's payload skipped, as the server reads it).
//! Whatever decodes re-encodes to the same bytes; no length reaches past the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tmem_api::nbd::*;

fuzz_target!(|data: &[u8]| {
    let Some((flags, mut stream)) = data.split_first_chunk::<4>() else { return };
    match parse_client_flags(*flags) {
        Ok(flags) => assert_eq!(flags & !CLIENT_FLAGS, 0),
        Err(_) => return,
    }
    // Options, as many as the server reads before it gives up on a client.
    let mut transmission = false;
    for _ in 0..1024 {
        let Some((header, rest)) = stream.split_first_chunk::<OPTION_HEADER_LEN>() else { return };
        let Ok(OptionHeader { option, len }) = parse_option_header(header) else { return };
        assert!(len <= MAX_OPTION_DATA);
        // The data is read only when all of it is there (the server waits for it).
        let Some((data, rest)) = rest.split_at_checked(len as usize) else { return };
        let mut again = Vec::new();
        put_option(&mut again, option, data).expect("an accepted length builds");
        assert_eq!(again[..OPTION_HEADER_LEN], header[..], "an option header re-encodes to the same bytes");
        stream = rest;
        match option {
            OPT_INFO | OPT_GO => info(data),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => meta_context(data),
            _ => {}
        }
        if option == OPT_EXPORT_NAME || (option == OPT_GO && parse_info(data).is_ok()) {
            transmission = true;
            break;
        }
    }
    if !transmission {
        return;
    }
    while let Some((header, rest)) = stream.split_first_chunk::<REQUEST_LEN>() {
        let Ok(request) = parse_request(header) else { return };
        assert_eq!(request.to_bytes(), *header, "a request header re-encodes to the same bytes");
        if request.command == CMD_DISC {
            return;
        }
        let Ok(payload) = request.write_payload() else {
            assert!(request.command == CMD_WRITE && request.len > MAX_PAYLOAD);
            return;
        };
        assert!(payload <= MAX_PAYLOAD as usize);
        let Some((_, rest)) = rest.split_at_checked(payload) else { return };
        stream = rest;
    }
});

fn info(data: &[u8]) {
    let Ok(request) = parse_info(data) else { return };
    assert!(request.name.len() <= data.len());
    let infos: Vec<u16> = request.infos().collect();
    for info in &infos {
        assert!(request.wants(*info));
    }
    let again = info_payload(request.name, &infos).expect("decoded option data fits an option");
    assert_eq!(again, data, "INFO/GO data re-encodes to the same bytes");
}

fn meta_context(data: &[u8]) {
    let Ok(request) = parse_meta_context(data) else { return };
    assert!(request.queries.len() <= data.len() / 4, "no more queries than the bytes hold");
    let again = meta_context_payload(request.name, &request.queries).expect("decoded option data fits an option");
    assert_eq!(again, data, "meta-context data re-encodes to the same bytes");
}
