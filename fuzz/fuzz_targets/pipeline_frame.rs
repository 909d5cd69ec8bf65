//! Inference frames (`/shardswarm/infer/1.0.0`): `Open` routes, `Step`s with tokens or f32
//! hidden states, `Token`, `Error`. Input: a length prefix and a body, as `io::read_frame` sees
//! them. Never panics; allocation is bounded by the body; an accepted frame re-encodes to the
//! same bytes (floats compared bitwise, NaNs included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_pipeline::frame::{Frame, Input};

fn same(a: &Frame, b: &Frame) -> bool {
    match (a, b) {
        (
            Frame::Step {
                pos,
                budget_ms,
                draw,
                input,
            },
            Frame::Step {
                pos: p2,
                budget_ms: b2,
                draw: d2,
                input: i2,
            },
        ) => {
            let inputs = match (input, i2) {
                (Input::Tokens(x), Input::Tokens(y)) => x == y,
                (
                    Input::Hidden { n, dim, data },
                    Input::Hidden {
                        n: n2,
                        dim: dim2,
                        data: data2,
                    },
                ) => {
                    n == n2
                        && dim == dim2
                        && data
                            .iter()
                            .map(|v| v.to_bits())
                            .eq(data2.iter().map(|v| v.to_bits()))
                }
                _ => false,
            };
            pos == p2 && budget_ms == b2 && draw.to_bits() == d2.to_bits() && inputs
        }
        (
            Frame::Open {
                session,
                hops,
                capacity,
                sampling,
            },
            Frame::Open {
                session: s2,
                hops: h2,
                capacity: c2,
                sampling: m2,
            },
        ) => {
            session == s2
                && hops == h2
                && capacity == c2
                && sampling.temperature.to_bits() == m2.temperature.to_bits()
                && sampling.top_k == m2.top_k
                && sampling.top_p.to_bits() == m2.top_p.to_bits()
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if Frame::check_len(len).is_ok() && data.len() - 4 >= len {
            let _ = Frame::decode_body(&data[4..4 + len]);
        }
    }
    let Ok(frame) = Frame::decode_body(data) else {
        return;
    };
    let bytes = frame.to_bytes();
    // Strings are re-encoded from their lossy UTF-8 reading, so compare decoded frames.
    let again = Frame::decode_body(&bytes[4..]).expect("re-encoded frame decodes");
    assert!(same(&again, &frame), "{again:?} != {frame:?}");
    if !matches!(frame, Frame::Open { .. } | Frame::Error { .. }) {
        assert_eq!(&bytes[4..], data, "re-encoding differs");
    }
});
