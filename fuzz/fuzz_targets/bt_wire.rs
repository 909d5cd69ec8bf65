//! The standard BitTorrent wire (`crates/btwire`) as a node reads it from any TCP client: the
//! BEP 3 handshake, then length-prefixed messages under limits, BEP 10 extended handshakes and
//! BEP 9 `ut_metadata` messages, and bencode. Input: a flag byte (bit 0: a piece count is
//! known, the next 4 bytes are it; the other bits: the chunk size the stream is cut into), then
//! the stream after the handshake. Never panics; the
//! message decoder never holds more than its cap; accepted values re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_btwire::bencode::Value;
use shardswarm_btwire::extension::{ExtendedHandshake, MetadataMsg};
use shardswarm_btwire::{Handshake, Limits, Message, MessageDecoder};

fuzz_target!(|data: &[u8]| {
    let _ = Handshake::decode(data);
    if let Ok(v) = Value::decode(data) {
        assert_eq!(Value::decode(&v.to_vec()).expect("canonical re-decode"), v);
    }
    let _ = ExtendedHandshake::decode(data);
    let _ = MetadataMsg::decode(bytes::Bytes::copy_from_slice(data));

    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let (limits, stream) = match (flag & 1, rest) {
        // At most what a metainfo of MAX_INFO_BYTES can describe (20 bytes a piece hash).
        (1, [a, b, c, d, stream @ ..]) => (
            Limits::for_pieces(u32::from_be_bytes([*a, *b, *c, *d]) % 838_861),
            stream,
        ),
        _ => (Limits::default(), rest),
    };
    let mut dec = MessageDecoder::new(limits);
    let chunk = usize::from(flag >> 1) + 1;
    'feed: for part in stream.chunks(chunk) {
        dec.push(part);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    match &m {
                        Message::Extended { id: 0, payload } => {
                            let _ = ExtendedHandshake::decode(payload);
                        }
                        Message::Extended { payload, .. } => {
                            let _ = MetadataMsg::decode(payload.clone());
                        }
                        _ => {}
                    }
                    let _ = m.to_vec();
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        assert!(dec.buffered() <= limits.max_len as usize + 4 + chunk);
    }
});
