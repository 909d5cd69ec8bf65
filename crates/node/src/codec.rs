//! The request-response codec of `/shardswarm/cmd/1.0.0`: raw JSON bytes, one request per
//! stream, write side closed, read to end (the framing of rust-libp2p's JSON codec).
//!
//! It moves bytes only. Parsing happens above it so that malformed or oversized input can still
//! be answered with an error response instead of a dropped stream.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use shardswarm_proto::codec::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

/// The protocol id of the command protocol.
pub const CMD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shardswarm/cmd/1.0.0");

/// Past this many bytes an inbound request is no longer drained for a `TOO_LARGE` reply:
/// the stream is reset instead.
const MAX_DRAIN_BYTES: u64 = 16 * MAX_REQUEST_BYTES as u64;

/// An inbound request as read off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundBytes {
    /// The first bytes (at most the request cap).
    pub bytes: Vec<u8>,
    /// Total length seen (larger than `bytes.len()` when the request was over the cap).
    pub total_len: u64,
}

impl InboundBytes {
    /// True when the sender exceeded the request cap.
    pub fn oversized(&self) -> bool {
        self.total_len > MAX_REQUEST_BYTES as u64
    }
}

/// Byte codec for the command protocol.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CmdCodec;

async fn read_capped<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    cap: usize,
    drain: u64,
) -> io::Result<InboundBytes> {
    let mut bytes = Vec::new();
    (&mut *io).take(cap as u64).read_to_end(&mut bytes).await?;
    let mut total_len = bytes.len() as u64;
    if bytes.len() == cap {
        let mut sink = [0u8; 8192];
        loop {
            let n = io.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            total_len += n as u64;
            if total_len > drain {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message over {drain} bytes"),
                ));
            }
        }
    }
    Ok(InboundBytes { bytes, total_len })
}

impl libp2p::request_response::Codec for CmdCodec {
    type Protocol = StreamProtocol;
    type Request = InboundBytes;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<InboundBytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, MAX_REQUEST_BYTES, MAX_DRAIN_BYTES).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let got = read_capped(io, MAX_RESPONSE_BYTES + 1, MAX_RESPONSE_BYTES as u64 + 1).await?;
        if got.total_len > MAX_RESPONSE_BYTES as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too large",
            ));
        }
        Ok(got.bytes)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: InboundBytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.bytes).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_request_is_flagged_not_dropped() {
        let data = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let got = read_capped(&mut &data[..], MAX_REQUEST_BYTES, MAX_DRAIN_BYTES)
            .await
            .unwrap();
        assert!(got.oversized());
        assert_eq!(got.bytes.len(), MAX_REQUEST_BYTES);
        assert_eq!(got.total_len, data.len() as u64);
    }

    #[tokio::test]
    async fn huge_request_is_an_error() {
        let data = vec![b'x'; MAX_DRAIN_BYTES as usize + 10];
        assert!(
            read_capped(&mut &data[..], MAX_REQUEST_BYTES, MAX_DRAIN_BYTES)
                .await
                .is_err()
        );
    }
}
