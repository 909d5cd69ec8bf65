//! The raw-stream baseline of `bench distribute` (c): the shard bytes sent over one bare stream
//! between two processes of this binary on loopback.
//!
//! - QUIC: libp2p's QUIC transport (quinn, libp2p TLS with fresh ed25519 identities, default
//!   config as the swarm uses it) driven directly, without a `Swarm`: one connection, one
//!   bidirectional stream. No framing, no hashing, no disk writes on the receiving side.
//! - TCP: a plain tokio socket.
//!
//! The hidden `bench raw-sink --kind K` process listens on 127.0.0.1 port 0, prints its address
//! on the first stdout line, reads one stream to its end and answers with the byte count
//! (u64 big-endian). The sender reads the shard files in 1 MiB chunks (page-cached after the
//! runs) and writes them; the clock runs from the stream open until the count came back.

use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use libp2p::core::Endpoint;
use libp2p::core::muxing::StreamMuxerExt;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, Transport, TransportEvent};
use libp2p::futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{Multiaddr, identity, quic};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

/// Bytes per write.
const CHUNK: usize = 1 << 20;
/// A whole measurement, sink start included.
const RAW_TIMEOUT: Duration = Duration::from_secs(120);

/// Which transport carries the raw stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    /// One libp2p QUIC stream.
    Quic,
    /// One TCP socket.
    Tcp,
}

/// Flags of the hidden `bench raw-sink`.
#[derive(Debug, Args)]
pub(super) struct SinkArgs {
    /// The transport to listen on.
    #[arg(long, value_enum)]
    kind: Kind,
}

/// Runs the receiving end: listen, print the address, count one stream's bytes, answer.
pub(super) async fn run_sink(args: SinkArgs) -> Result<()> {
    tokio::time::timeout(RAW_TIMEOUT, sink(args.kind))
        .await
        .context("raw sink timed out")?
}

async fn sink(kind: Kind) -> Result<()> {
    match kind {
        Kind::Tcp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?);
            let (mut s, _) = listener.accept().await?;
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0u64;
            loop {
                let k = s.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            s.write_all(&n.to_be_bytes()).await?;
            s.shutdown().await?;
        }
        Kind::Quic => {
            let key = identity::Keypair::generate_ed25519();
            let mut t = quic::tokio::Transport::new(quic::Config::new(&key));
            let listen: Multiaddr = super::QUIC_LISTEN.parse()?;
            t.listen_on(ListenerId::next(), listen)?;
            let mut printed = false;
            let upgrade = loop {
                match poll_fn(|cx| Pin::new(&mut t).poll(cx)).await {
                    TransportEvent::NewAddress { listen_addr, .. } if !printed => {
                        println!("{listen_addr}/p2p/{}", key.public().to_peer_id());
                        printed = true;
                    }
                    TransportEvent::Incoming { upgrade, .. } => break upgrade,
                    TransportEvent::ListenerError { error, .. } => bail!("QUIC listener: {error}"),
                    TransportEvent::ListenerClosed { reason, .. } => {
                        bail!("QUIC listener closed: {reason:?}")
                    }
                    _ => {}
                }
            };
            let (_peer, mut conn) = upgrade.await.context("QUIC handshake")?;
            let mut s = poll_fn(|cx| conn.poll_inbound_unpin(cx))
                .await
                .context("accepting the stream")?;
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0u64;
            loop {
                let k = s.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            s.write_all(&n.to_be_bytes()).await?;
            s.close().await?;
            // Let the answer reach the sender: wait until it closes the connection.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                poll_fn(|cx| conn.poll_inbound_unpin(cx)),
            )
            .await;
        }
    }
    Ok(())
}

/// Sends `shard-0..N-1.gguf` of `dir` to a fresh sink process; the seconds from the stream's
/// open until the sink confirmed every byte.
pub(super) async fn measure(bin: &Path, dir: &Path, shards: u32, kind: Kind) -> Result<f64> {
    let kind_arg = match kind {
        Kind::Quic => "quic",
        Kind::Tcp => "tcp",
    };
    let mut child = Command::new(bin)
        .args(["bench", "raw-sink", "--kind", kind_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the raw sink")?;
    let stdout = child.stdout.take().context("raw sink stdout")?;
    let run = async {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        let addr = line.trim().to_owned();
        if addr.is_empty() {
            bail!("the raw sink printed no address");
        }
        let files: Vec<_> = (0..shards)
            .map(|i| dir.join(format!("shard-{i}.gguf")))
            .collect();
        let (secs, sent, confirmed) = match kind {
            Kind::Tcp => send_tcp(&addr, &files).await?,
            Kind::Quic => send_quic(&addr, &files).await?,
        };
        if sent != confirmed {
            bail!("the raw sink counted {confirmed} bytes of {sent}");
        }
        let _ = child.wait().await;
        eprintln!(
            "bench: raw {kind_arg}: {:.1} MB in {secs:.2} s",
            sent as f64 / super::MB
        );
        Ok(secs)
    };
    tokio::time::timeout(RAW_TIMEOUT, run)
        .await
        .context("raw stream measurement timed out")?
}

/// The shard files read in order, one chunk at a time.
struct Chunks<'a> {
    files: std::slice::Iter<'a, PathBuf>,
    current: Option<tokio::fs::File>,
    buf: Vec<u8>,
}

impl<'a> Chunks<'a> {
    fn new(files: &'a [PathBuf]) -> Self {
        Chunks {
            files: files.iter(),
            current: None,
            buf: vec![0u8; CHUNK],
        }
    }

    /// The next non-empty chunk, or `None` after the last file.
    async fn next(&mut self) -> Result<Option<&[u8]>> {
        loop {
            if let Some(f) = &mut self.current {
                let k = f.read(&mut self.buf).await.context("reading a shard")?;
                if k > 0 {
                    return Ok(Some(&self.buf[..k]));
                }
                self.current = None;
            }
            let Some(path) = self.files.next() else {
                return Ok(None);
            };
            let f = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            self.current = Some(f);
        }
    }
}

async fn send_tcp(addr: &str, files: &[PathBuf]) -> Result<(f64, u64, u64)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let t0 = Instant::now();
    let mut chunks = Chunks::new(files);
    let mut sent = 0u64;
    while let Some(c) = chunks.next().await? {
        s.write_all(c).await?;
        sent += c.len() as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    Ok((t0.elapsed().as_secs_f64(), sent, u64::from_be_bytes(count)))
}

async fn send_quic(addr: &str, files: &[PathBuf]) -> Result<(f64, u64, u64)> {
    let addr: Multiaddr = addr.parse().context("the raw sink's address")?;
    let key = identity::Keypair::generate_ed25519();
    let mut t = quic::tokio::Transport::new(quic::Config::new(&key));
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let (_peer, mut conn) = t.dial(addr, opts)?.await.context("QUIC dial")?;
    let mut s = poll_fn(|cx| conn.poll_outbound_unpin(cx))
        .await
        .context("opening the stream")?;
    let t0 = Instant::now();
    let mut chunks = Chunks::new(files);
    let mut sent = 0u64;
    while let Some(c) = chunks.next().await? {
        s.write_all(c).await?;
        sent += c.len() as u64;
    }
    s.close().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = poll_fn(|cx| conn.poll_close_unpin(cx)).await;
    Ok((secs, sent, u64::from_be_bytes(count)))
}
