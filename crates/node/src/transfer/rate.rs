//! A shared token bucket for `--upload-limit` / `--download-limit`: payload bytes per second,
//! with a quarter second of burst (a whole second let a capped seed dump a large share of a small
//! catalog on everyone at once before peers could trade). Callers await [`RateLimiter::acquire`] before moving bytes.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A rate such as `20MB/s`, `512KiB/s` or `1000000` (bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// Why a rate string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a rate looks like 20MB/s, 512KiB/s or a number of bytes per second; got {0:?}")]
pub struct RateParseError(pub String);

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateParseError(s.to_owned());
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "kB" | "KB" | "k" | "K" => 1e3,
            "MB" | "M" => 1e6,
            "GB" | "G" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(err()),
        };
        let v = num * mult;
        if !(v.is_finite() && v >= 1.0) {
            return Err(err());
        }
        Ok(Rate(v as u64))
    }
}

/// Seconds of traffic the bucket holds.
const BURST_SECS: f64 = 0.25;

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// A cloneable limiter; unlimited when built from `None`.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (or none).
    pub fn new(rate: Option<Rate>) -> Self {
        RateLimiter {
            inner: rate.map(|Rate(r)| {
                Arc::new(Mutex::new(Bucket {
                    rate: r as f64,
                    tokens: r as f64 * BURST_SECS,
                    last: Instant::now(),
                }))
            }),
        }
    }

    /// Takes `bytes` tokens, waiting as long as the rate requires.
    pub async fn acquire(&self, bytes: usize) {
        let Some(inner) = &self.inner else { return };
        let wait = {
            let mut b = match inner.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            let now = Instant::now();
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * b.rate).min(b.rate * BURST_SECS);
            b.tokens -= bytes as f64;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("20MB/s".parse::<Rate>().unwrap(), Rate(20_000_000));
        assert_eq!("512KiB/s".parse::<Rate>().unwrap(), Rate(524_288));
        assert_eq!("1000".parse::<Rate>().unwrap(), Rate(1000));
        assert_eq!("1.5M".parse::<Rate>().unwrap(), Rate(1_500_000));
        for bad in ["", "fast", "-1MB/s", "0", "3XB/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_spreads_bytes_over_time() {
        let l = RateLimiter::new(Some(Rate(1000)));
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire(1000).await;
        }
        // A quarter second of burst, then 1000 B/s: 5000 bytes take about 4.75 s of virtual time.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4650) && took <= Duration::from_millis(4850),
            "{took:?}"
        );
    }
}
