//! Frames of the inference protocol [`PROTOCOL`] (`/shardswarm/infer/1.0.0`).
//!
//! One stream per session per hop. The upstream side (the gateway, or the previous stage)
//! sends [`Frame::Open`] once, then one [`Frame::Step`] at a time; the downstream side answers
//! each step with [`Frame::Token`] (the sampled next token, computed by the last stage and
//! relayed back up the chain) or [`Frame::Error`], after which the stream is closed. Closing the
//! stream ends the session and frees its KV caches on every stage below.
//!
//! Every frame is `u32` big-endian length (of what follows) + `u8` type + body; integers big
//! endian, floats little-endian IEEE 754 (activations are f32, BRIEF §7), strings `u16` length +
//! UTF-8. A frame longer than [`MAX_FRAME_LEN`] is refused from its length prefix alone, before
//! anything is allocated; decoding never panics; every count is checked against the bytes left.

use std::ops::Range;

use bytes::{Buf, BufMut, BytesMut};

/// The libp2p protocol id of the inference pipeline.
pub const PROTOCOL: &str = "/shardswarm/infer/1.0.0";
/// The largest frame accepted: 128 MiB (a full 8192-token prefill of a 4096-wide model).
pub const MAX_FRAME_LEN: usize = 128 * 1024 * 1024;
/// The most hops a route may have.
pub const MAX_HOPS: usize = 256;

const T_OPEN: u8 = 1;
const T_STEP: u8 = 2;
const T_TOKEN: u8 = 3;
const T_ERROR: u8 = 4;
const IN_TOKENS: u8 = 0;
const IN_HIDDEN: u8 = 1;

/// One stage of a route: a peer and the contiguous shards it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The peer ID (base58).
    pub peer: String,
    /// Shard indices `[start, end)` this peer runs, in order.
    pub shards: Range<u32>,
}

/// How the last stage picks the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `<= 0` is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: u32,
    /// Nucleus sampling; `>= 1` disables.
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// What a step carries into a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Token ids (into the stage that holds the embedding).
    Tokens(Vec<u32>),
    /// Hidden states `[n, dim]` row-major f32 (from the previous stage).
    Hidden {
        /// Positions.
        n: u32,
        /// Embedding width.
        dim: u32,
        /// `n * dim` values.
        data: Vec<f32>,
    },
}

impl Input {
    /// How many positions the step covers.
    pub fn positions(&self) -> usize {
        match self {
            Input::Tokens(t) => t.len(),
            Input::Hidden { n, .. } => *n as usize,
        }
    }
}

/// Error codes carried by [`Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The frame was malformed or out of order.
    BadRequest = 1,
    /// The named peer does not hold (or has not loaded) the shards asked for.
    NotHolding = 2,
    /// The named peer has no room for another session (KV memory or session cap).
    Busy = 3,
    /// The named peer could not be reached or failed mid-step.
    Unreachable = 4,
    /// The named peer did not answer in time.
    Timeout = 5,
    /// The computation failed on the named peer.
    Compute = 6,
}

impl ErrorCode {
    /// The code for a wire byte (unknown bytes read as `Compute`).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::BadRequest,
            2 => Self::NotHolding,
            3 => Self::Busy,
            4 => Self::Unreachable,
            5 => Self::Timeout,
            _ => Self::Compute,
        }
    }
}

/// One frame of the inference protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Starts a session: `hops[0]` is the receiver, the rest is forwarded.
    Open {
        /// Chosen by the gateway, unique per attempt.
        session: u64,
        /// The route from the receiver on.
        hops: Vec<Hop>,
        /// Positions to reserve in the KV caches (prompt + completion).
        capacity: u32,
        /// How the last stage samples.
        sampling: Sampling,
    },
    /// Runs positions `pos..pos + input.positions()`.
    Step {
        /// First position.
        pos: u32,
        /// How long the receiver may wait for the rest of the chain, in milliseconds.
        budget_ms: u32,
        /// The uniform draw in `[0, 1)` the last stage samples with (ignored when greedy).
        draw: f32,
        /// Tokens or hidden states.
        input: Input,
    },
    /// The next token, sampled by the last stage.
    Token {
        /// Its id.
        id: u32,
    },
    /// The step (or the session) failed at `peer`.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// The peer at fault (the one that failed or could not be reached).
        peer: String,
        /// A human-readable reason.
        message: String,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over [`MAX_FRAME_LEN`] or zero.
    #[error("frame length {0} is out of range")]
    Length(usize),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body is shorter or longer than its fields say.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// The frame's kind (`"Open"`, `"Step"`, `"Token"` or `"Error"`), for messages about a frame
    /// that was not expected: formatting the frame itself could mean 128 MiB of floats as text.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Open { .. } => "Open",
            Frame::Step { .. } => "Step",
            Frame::Token { .. } => "Token",
            Frame::Error { .. } => "Error",
        }
    }

    /// Appends the encoded frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Frame::Open {
                session,
                hops,
                capacity,
                sampling,
            } => {
                out.put_u8(T_OPEN);
                out.put_u64(*session);
                out.put_u32(*capacity);
                out.put_f32_le(sampling.temperature);
                out.put_u32(sampling.top_k);
                out.put_f32_le(sampling.top_p);
                out.put_u16(hops.len() as u16);
                for h in hops {
                    put_str(out, &h.peer);
                    out.put_u32(h.shards.start);
                    out.put_u32(h.shards.end);
                }
            }
            Frame::Step {
                pos,
                budget_ms,
                draw,
                input,
            } => {
                out.put_u8(T_STEP);
                out.put_u32(*pos);
                out.put_u32(*budget_ms);
                out.put_f32_le(*draw);
                match input {
                    Input::Tokens(t) => {
                        out.put_u8(IN_TOKENS);
                        out.put_u32(t.len() as u32);
                        for id in t {
                            out.put_u32(*id);
                        }
                    }
                    Input::Hidden { n, dim, data } => {
                        out.put_u8(IN_HIDDEN);
                        out.put_u32(*n);
                        out.put_u32(*dim);
                        out.reserve(data.len() * 4);
                        for v in data {
                            out.put_f32_le(*v);
                        }
                    }
                }
            }
            Frame::Token { id } => {
                out.put_u8(T_TOKEN);
                out.put_u32(*id);
            }
            Frame::Error {
                code,
                peer,
                message,
            } => {
                out.put_u8(T_ERROR);
                out.put_u8(*code as u8);
                put_str(out, peer);
                put_str(out, message);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded frame as bytes.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }

    /// Checks a length prefix before reading the body.
    pub fn check_len(len: usize) -> Result<(), FrameError> {
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(FrameError::Length(len));
        }
        Ok(())
    }

    /// Decodes one frame body (type byte + fields, without the length prefix).
    pub fn decode_body(mut b: &[u8]) -> Result<Frame, FrameError> {
        Self::check_len(b.len())?;
        let t = b.get_u8();
        let frame = match t {
            T_OPEN => {
                let m = "Open";
                need(b, 8 + 4 + 12 + 2, m)?;
                let session = b.get_u64();
                let capacity = b.get_u32();
                let sampling = Sampling {
                    temperature: b.get_f32_le(),
                    top_k: b.get_u32(),
                    top_p: b.get_f32_le(),
                };
                let n = b.get_u16() as usize;
                if n == 0 || n > MAX_HOPS {
                    return Err(FrameError::Malformed(m));
                }
                let mut hops = Vec::with_capacity(n);
                for _ in 0..n {
                    let peer = get_str(&mut b, m)?;
                    need(b, 8, m)?;
                    let (start, end) = (b.get_u32(), b.get_u32());
                    if start >= end {
                        return Err(FrameError::Malformed(m));
                    }
                    hops.push(Hop {
                        peer,
                        shards: start..end,
                    });
                }
                Frame::Open {
                    session,
                    hops,
                    capacity,
                    sampling,
                }
            }
            T_STEP => {
                let m = "Step";
                need(b, 4 + 4 + 4 + 1 + 4, m)?;
                let pos = b.get_u32();
                let budget_ms = b.get_u32();
                let draw = b.get_f32_le();
                let input = match b.get_u8() {
                    IN_TOKENS => {
                        let n = b.get_u32() as usize;
                        if n == 0 || b.remaining() != n.saturating_mul(4) {
                            return Err(FrameError::Malformed(m));
                        }
                        Input::Tokens((0..n).map(|_| b.get_u32()).collect())
                    }
                    IN_HIDDEN => {
                        let n = b.get_u32();
                        need(b, 4, m)?;
                        let dim = b.get_u32();
                        let count = (n as usize).saturating_mul(dim as usize);
                        if count == 0 || b.remaining() != count.saturating_mul(4) {
                            return Err(FrameError::Malformed(m));
                        }
                        let data = (0..count).map(|_| b.get_f32_le()).collect();
                        Input::Hidden { n, dim, data }
                    }
                    _ => return Err(FrameError::Malformed(m)),
                };
                // Tokens or hidden: the body was consumed exactly above.
                return Ok(Frame::Step {
                    pos,
                    budget_ms,
                    draw,
                    input,
                });
            }
            T_TOKEN => {
                need(b, 4, "Token")?;
                Frame::Token { id: b.get_u32() }
            }
            T_ERROR => {
                let m = "Error";
                need(b, 1, m)?;
                let code = ErrorCode::from_code(b.get_u8());
                let peer = get_str(&mut b, m)?;
                let message = get_str(&mut b, m)?;
                Frame::Error {
                    code,
                    peer,
                    message,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        if b.has_remaining() {
            return Err(FrameError::Malformed("trailing bytes in"));
        }
        Ok(frame)
    }
}

fn need(b: &[u8], n: usize, what: &'static str) -> Result<(), FrameError> {
    if b.remaining() < n {
        return Err(FrameError::Malformed(what));
    }
    Ok(())
}

fn put_str(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

fn get_str(b: &mut &[u8], what: &'static str) -> Result<String, FrameError> {
    need(b, 2, what)?;
    let len = b.get_u16() as usize;
    need(b, len, what)?;
    let s = String::from_utf8_lossy(&b[..len]).into_owned();
    b.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.to_bytes();
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(Frame::decode_body(&bytes[4..]), Ok(f));
    }

    #[test]
    fn every_frame_round_trips() {
        roundtrip(Frame::Open {
            session: 7,
            hops: vec![
                Hop {
                    peer: "12D3KooWa".into(),
                    shards: 0..2,
                },
                Hop {
                    peer: "12D3KooWb".into(),
                    shards: 2..8,
                },
            ],
            capacity: 4096,
            sampling: Sampling {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
            },
        });
        roundtrip(Frame::Step {
            pos: 3,
            budget_ms: 1000,
            draw: 0.25,
            input: Input::Tokens(vec![1, 2, 49151]),
        });
        roundtrip(Frame::Step {
            pos: 0,
            budget_ms: 1,
            draw: 0.0,
            input: Input::Hidden {
                n: 2,
                dim: 3,
                data: vec![1.0, -2.5, 3.0, f32::MIN, 0.0, 1e-30],
            },
        });
        roundtrip(Frame::Token { id: 42 });
        roundtrip(Frame::Error {
            code: ErrorCode::Busy,
            peer: "p".into(),
            message: "no room: 3 sessions".into(),
        });
    }

    #[test]
    fn lengths_and_counts_are_checked() {
        assert_eq!(Frame::check_len(0), Err(FrameError::Length(0)));
        assert!(Frame::check_len(MAX_FRAME_LEN + 1).is_err());
        // A hidden step claiming a billion positions with 8 bytes of data.
        let mut b = BytesMut::new();
        b.put_u8(T_STEP);
        b.put_u32(0);
        b.put_u32(0);
        b.put_f32_le(0.0);
        b.put_u8(IN_HIDDEN);
        b.put_u32(1 << 30);
        b.put_u32(1 << 30);
        b.put_u64(0);
        assert_eq!(Frame::decode_body(&b), Err(FrameError::Malformed("Step")));
        // An Open with an empty shard range.
        let mut o = Frame::Open {
            session: 1,
            hops: vec![Hop {
                peer: "a".into(),
                shards: 0..1,
            }],
            capacity: 1,
            sampling: Sampling::greedy(),
        }
        .to_bytes();
        let n = o.len();
        o[n - 4..].copy_from_slice(&0u32.to_be_bytes());
        assert!(Frame::decode_body(&o[4..]).is_err());
        assert_eq!(Frame::decode_body(&[99]), Err(FrameError::UnknownType(99)));
    }
}
