//! Running a child process while sampling its peak resident memory (`VmHWM` in
//! `/proc/<pid>/status`), for the benchmarks' memory columns.
//!
//! The kernel keeps `VmHWM` (the high-water mark of the resident set) up to date, so sampling it
//! is exact up to the last sample: the bench polls every 5 ms, and a process's peak (weights
//! mapped and touched, caches allocated) comes long before it exits. Linux only; elsewhere the
//! peak is `None`.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// Between samples of `/proc/<pid>/status`.
const SAMPLE: Duration = Duration::from_millis(5);

/// The `VmHWM` of `status` (the text of `/proc/<pid>/status`) in KiB.
pub(crate) fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `cmd` to completion like [`Command::output`] (stdin null, stdout and stderr captured)
/// and returns its output with the largest `VmHWM` seen, in KiB.
pub(crate) fn output_with_peak_rss(cmd: &mut Command) -> Result<(Output, Option<u64>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the child")?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status_path = format!("/proc/{}/status", child.id());
    // The exit is awaited on its own thread; between samples this one waits for it with a
    // timeout, so the loop ends as soon as the child does.
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let mut peak: Option<u64> = None;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| parse_vm_hwm_kib(&s))
        {
            peak = Some(peak.map_or(hwm, |p| p.max(hwm)));
        }
        match exit.recv_timeout(SAMPLE) {
            Ok(status) => break status.context("waiting for the child")?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the child's waiter thread ended without a status")
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((
        Output {
            status,
            stdout,
            stderr,
        },
        peak,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(4242));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
    }

    #[test]
    fn a_child_that_allocates_shows_a_larger_peak_than_one_that_does_not() -> Result<()> {
        // python3 touching 200 MiB vs doing nothing: the sampled peaks must tell them apart.
        let (small_out, small) = output_with_peak_rss(
            Command::new("python3").args(["-c", "import time; time.sleep(0.2)"]),
        )?;
        let (big_out, big) = output_with_peak_rss(Command::new("python3").args([
            "-c",
            "import time; b = bytearray(200 * 1024 * 1024); time.sleep(0.2); print(len(b))",
        ]))?;
        assert!(small_out.status.success() && big_out.status.success());
        assert_eq!(String::from_utf8_lossy(&big_out.stdout).trim(), "209715200");
        let (small, big) = (small.unwrap_or(0), big.unwrap_or(0));
        assert!(big > small + 150 * 1024, "peaks {small} KiB vs {big} KiB");
        Ok(())
    }
}
