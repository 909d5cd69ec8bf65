//! The public types of the download engine: its tuning, the actions it asks for, and what it
//! answers and refuses.

use std::time::Duration;

/// Tuning of a [`Download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Bytes per request (clipped to the piece size and the wire maximum). Default 256 KiB.
    pub block_size: u32,
    /// Most requests outstanding to one peer. Default 8.
    pub max_in_flight_per_peer: usize,
    /// A request unanswered this long is re-issued elsewhere. Default 20 s.
    pub request_timeout: Duration,
    /// Bad pieces a peer may be the sole source of before it is banned. Default 1.
    pub max_strikes: u32,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            block_size: 256 * 1024,
            max_in_flight_per_peer: 8,
            request_timeout: Duration::from_secs(20),
            max_strikes: 1,
        }
    }
}

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Send `Frame::Request { id, piece, offset, length, .. }` to `peer`.
    Request {
        /// The uploader.
        peer: P,
        /// The request id (unique in this download).
        id: u64,
        /// The piece.
        piece: u32,
        /// Byte offset in the piece.
        offset: u32,
        /// Bytes wanted.
        length: u32,
    },
    /// Send `Frame::Cancel { id }` to `peer` (timed out, or an endgame duplicate arrived
    /// elsewhere); a `Piece` for it that still arrives is to be dropped.
    Cancel {
        /// The uploader.
        peer: P,
        /// The withdrawn request.
        id: u64,
    },
    /// Disconnect `peer` and refuse it from now on: it served bad data.
    Ban {
        /// The offender.
        peer: P,
    },
    /// Every piece is verified: finish the storage.
    Completed,
}

/// Where a received block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedBlock {
    /// The piece.
    pub piece: u32,
    /// Byte offset in the piece (write at `piece_offset(piece) + offset`).
    pub offset: u32,
    /// The block length the data must have.
    pub length: u32,
    /// Every block of the piece is now here: verify it and call [`Download::piece_verified`].
    pub piece_complete: bool,
}

/// An outstanding request, as looked up with [`Download::pending_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRequest<P> {
    /// The uploader asked.
    pub peer: P,
    /// The piece.
    pub piece: u32,
    /// Byte offset in the piece.
    pub offset: u32,
    /// Bytes asked for.
    pub length: u32,
}

/// Events the engine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// No such outstanding request (never issued, cancelled, timed out, already answered).
    #[error("no outstanding request {id}")]
    UnknownRequest {
        /// The id.
        id: u64,
    },
    /// The request exists but was sent to another peer.
    #[error("request {id} was not sent to this peer")]
    NotYourRequest {
        /// The id.
        id: u64,
    },
}
