//! Progress bars on a terminal: per-shard downloads on a node, hashing on a server.
//!
//! Only when stderr is a terminal: otherwise nothing is drawn and the logs stay plain lines. The
//! bars follow `Handle::node_status()` (polled every 500 ms, the rate at which the transfer
//! service reports progress): one bar per shard being downloaded (bytes, rate, ETA), removed
//! once the shard leaves the download list (the log line `shard complete and verified` stays).
//! Log lines go through [`LogWriter`], which hides the bars while a line is written, so the two
//! never tear each other.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardswarm_node::Handle;
use shardswarm_node::hash_cache::{HashEvent, HashProgress};
use shardswarm_proto::NodeStatus;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the node's status is read.
const POLL: Duration = Duration::from_millis(500);

/// The bars on screen, if any: log lines are written around them.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

fn active() -> Option<MultiProgress> {
    ACTIVE.lock().ok().and_then(|a| a.clone())
}

fn set_active(mp: Option<MultiProgress>) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = mp;
    }
}

/// The tracing writer for stderr: while bars are drawn, each log line is written with the bars
/// hidden (`MultiProgress::suspend`) and redrawn below it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // tracing-subscriber formats a whole event, then writes it with one `write_all`.
        match active() {
            Some(mp) => mp.suspend(|| std::io::stderr().lock().write_all(buf)),
            None => std::io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// A progress bar for the server's hashing of shards it has not hashed before, when stderr is a
/// terminal (`None` otherwise: the `hashed` log line per file is all).
pub(crate) fn hash_progress() -> Option<HashProgress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template(
        "{prefix:>24} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let current: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Some(HashProgress::new(move |event| {
        let Ok(mut current) = current.lock() else {
            return;
        };
        match event {
            HashEvent::Started { file, bytes } => {
                set_active(Some(mp.clone()));
                let bar = mp.add(ProgressBar::new(bytes));
                bar.set_style(style.clone());
                bar.set_prefix(format!("hashing {file}"));
                *current = Some(bar);
            }
            HashEvent::Hashed { bytes } => {
                if let Some(bar) = current.as_ref() {
                    bar.inc(bytes);
                }
            }
            HashEvent::Finished { .. } => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
                set_active(None);
            }
        }
    }))
}

/// The running display; [`Bars::stop`] removes it.
#[derive(Debug)]
pub(crate) struct Bars {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Bars {
    /// Starts the display for `handle` when stderr is a terminal; `None` otherwise.
    pub(crate) fn start(handle: Handle) -> Option<Bars> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        set_active(Some(mp.clone()));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(handle, mp, stop_rx));
        Some(Bars { stop, task })
    }

    /// Clears the bars and waits for the display task to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(handle: Handle, mp: MultiProgress, mut stop: oneshot::Receiver<()>) {
    let mut shards = Shards::new(mp.clone());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        match handle.node_status().await {
            Ok(status) => shards.update(&status),
            Err(_) => break,
        }
    }
    shards.clear();
    set_active(None);
    let _ = mp.clear();
}

/// One bar per shard still downloading.
struct Shards {
    mp: MultiProgress,
    bars: BTreeMap<u32, ProgressBar>,
    style: ProgressStyle,
}

impl Shards {
    fn new(mp: MultiProgress) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Shards {
            mp,
            bars: BTreeMap::new(),
            style,
        }
    }

    fn update(&mut self, status: &NodeStatus) {
        for d in &status.downloading {
            let bar = self.bars.entry(d.index).or_insert_with(|| {
                let bar = self.mp.add(ProgressBar::new(d.size));
                bar.set_style(self.style.clone());
                bar.set_prefix(format!("shard {}", d.index));
                bar
            });
            bar.set_length(d.size);
            bar.set_position(d.have);
        }
        let done: Vec<u32> = self
            .bars
            .keys()
            .copied()
            .filter(|i| !status.downloading.iter().any(|d| d.index == *i))
            .collect();
        // A shard that left `downloading` is verified (the log says so) or was dropped: either
        // way its bar goes, so the bars always show exactly the running downloads.
        for index in done {
            if let Some(bar) = self.bars.remove(&index) {
                bar.finish_and_clear();
            }
        }
    }

    fn clear(&mut self) {
        for (_, bar) in std::mem::take(&mut self.bars) {
            bar.finish_and_clear();
        }
    }
}
