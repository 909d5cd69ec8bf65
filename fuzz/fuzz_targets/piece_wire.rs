//! Piece-protocol frames (`/shardswarm/pieces/1.0.0`) as the transfer conn tasks read them: the
//! incremental decoder fed in chunks, the one-shot `decode`, and bitfields carried by `Bitfield`
//! frames. Never panics; both decoders agree; every decoded frame re-encodes to its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_torrent::Bitfield;
use shardswarm_torrent::wire::{self, Frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size the stream is cut into (1..=256 bytes).
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut dec = FrameDecoder::new();
    let mut incremental = Vec::new();
    let mut failed = false;
    'feed: for part in data.chunks(chunk) {
        dec.push(part);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => incremental.push(f),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if !failed {
        let _ = dec.finish();
    }

    let mut oneshot = Vec::new();
    let mut rest = data;
    while let Ok(Some((f, used))) = wire::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(f.to_vec(), rest[..used], "re-encoding differs");
        assert_eq!(f.encoded_len(), used);
        oneshot.push(f);
        rest = &rest[used..];
    }
    assert_eq!(
        incremental, oneshot,
        "incremental and one-shot decoders disagree"
    );

    for f in &oneshot {
        if let Frame::Bitfield { bits, .. } = f {
            // A receiver checks the bits against the torrent's piece count.
            for len in [
                0u32,
                1,
                7,
                8,
                9,
                (bits.len() as u32).saturating_mul(8),
                u32::MAX,
            ] {
                if let Ok(b) = Bitfield::from_bytes(bits, len) {
                    assert_eq!(b.as_bytes(), &bits[..]);
                    assert!(b.iter_ones().all(|i| i < len));
                }
            }
        }
    }
});
