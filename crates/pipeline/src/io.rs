//! Reading and writing [`Frame`]s on any tokio byte stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{Frame, FrameError};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The transport failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a frame; the stream is out of sync.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A bidirectional byte stream to another stage.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A boxed [`Duplex`].
pub type BoxStream = Box<dyn Duplex>;

/// Largest buffer reserved for a frame body before its bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Frame>, StreamError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    Frame::check_len(len)?;
    // The buffer grows with the bytes that actually arrive: a peer that announces 128 MiB and
    // sends nothing costs nothing.
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "stream ended inside a frame ({} of {len} bytes)",
                body.len()
            ),
        )
        .into());
    }
    Ok(Some(Frame::decode_body(&body)?))
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), StreamError> {
    let bytes = frame.to_bytes();
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_a_duplex_and_eof_is_clean() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &Frame::Token { id: 5 }).await?;
            write_frame(&mut a, &Frame::Token { id: 6 }).await?;
            Ok::<_, StreamError>(())
        });
        assert_eq!(read_frame(&mut b).await?, Some(Frame::Token { id: 5 }));
        assert_eq!(read_frame(&mut b).await?, Some(Frame::Token { id: 6 }));
        writer.await??;
        assert_eq!(read_frame(&mut b).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_prefix_without_its_body_is_an_eof_error() -> anyhow::Result<()> {
        // The body buffer grows with what arrives (it used to be allocated whole from the
        // prefix: 128 MiB for 4 bytes; tests/hostile.rs measures that).
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(crate::frame::MAX_FRAME_LEN as u32).to_be_bytes())
            .await?;
        a.write_all(&[3, 0, 0]).await?;
        drop(a);
        let err = read_frame(&mut b).await.expect_err("truncated");
        assert!(
            matches!(&err, StreamError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_huge_length_prefix_is_refused_before_allocating() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await?;
        let err = read_frame(&mut b).await.expect_err("refused");
        assert!(
            matches!(err, StreamError::Frame(FrameError::Length(_))),
            "{err}"
        );
        Ok(())
    }
}
