//! A persistent worker pool: `threads − 1` worker threads plus the calling thread.
//!
//! [`Pool::run`] offers one borrowed job (`Fn(participant)`) to every worker, runs it on the
//! caller too, and returns when every worker that joined has finished. Jobs are meant to share
//! out their work dynamically (claim items from a counter until none are left), so a worker
//! that is late — parked, or descheduled because another process holds its core — is simply
//! not waited for: once the caller's own call returns, the offer is withdrawn and only workers
//! already inside the job are waited for. Invariants:
//! - at most one job runs at a time (`run_lock`); a second caller blocks until the first is
//!   done, so the pool never uses more than `threads` cores;
//! - `state` packs (job generation, offers left, workers inside the job); a worker joins only
//!   with a compare-and-swap that checks the generation it was woken for and takes an offer,
//!   so it joins each job at most once and never after the withdrawal;
//! - the job reference outlives its use: `run` does not return (not even by unwinding) before
//!   the offers are withdrawn and no worker is inside the job, and workers read the reference
//!   only after joining — this is what makes erasing the job's lifetime sound;
//! - idle workers wait for at most [`SPIN`] after their last job without sleeping, so the next
//!   mat-vec of the same forward pass starts without a wake-up, then park: an idle process costs
//!   no CPU. They spin (`spin_loop` hints) for the first [`SPIN_HOT`], then yield the core on
//!   every check, so another runnable thread (candle's own pools, another process) gets it at
//!   once. The caller waits for workers inside the job the same way.
//!
//! A worker that panics inside the job is caught; `run` then panics on the caller's thread.

#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle thread waits without sleeping before parking.
///
/// A decode step of the default model runs ~200 mat-vecs of 5–100 µs each, separated by a few
/// µs of other work: waking a parked thread costs about as much as a small mat-vec, so workers
/// stay awake between them, and park once the pass is over.
pub const SPIN: Duration = Duration::from_micros(200);

/// How long of [`SPIN`] is pure spinning (without yielding the core).
pub const SPIN_HOT: Duration = Duration::from_micros(20);

/// The job a worker runs: `job(participant)`.
type Job = dyn Fn(usize) + Sync;

/// `state` layout: generation in bits 32..64, offers left in 16..32, workers inside in 0..16.
fn pack(generation: u32, offers: u64, inside: u64) -> u64 {
    (u64::from(generation) << 32) | (offers << 16) | inside
}
fn generation(s: u64) -> u32 {
    (s >> 32) as u32
}
fn offers(s: u64) -> u64 {
    (s >> 16) & 0xffff
}
fn inside(s: u64) -> u64 {
    s & 0xffff
}

struct Shared {
    /// The current job's generation; workers try to join when it changes (also at shutdown).
    epoch: AtomicU64,
    /// (generation, offers left, workers inside): see the module invariants.
    state: AtomicU64,
    /// The current job, lifetime-erased (see the module invariants); `None` between jobs.
    job: Mutex<Option<&'static Job>>,
    /// The thread waiting in `run`, unparked by the last worker to leave.
    caller: Mutex<Option<Thread>>,
    /// A worker's job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
}

/// A fixed-size pool of worker threads that run one job at a time together with the caller.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
    /// Generation of the last job (only touched under `run_lock`).
    generation: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

/// Waits until `done()` holds: spin, then spin yielding the core, then park.
fn wait_until(done: impl Fn() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let waited = start.elapsed();
        if waited < SPIN_HOT {
            std::hint::spin_loop();
        } else if waited < SPIN {
            std::thread::yield_now();
        } else {
            // A stale unpark only makes this return early; the loop re-checks.
            std::thread::park();
        }
    }
}

/// Takes one offer of job generation `g`; returns the participant index (1-based among
/// workers), or `None` if the job is gone, withdrawn or fully taken.
fn join(shared: &Shared, g: u32, workers: u64) -> Option<usize> {
    let mut s = shared.state.load(Ordering::Acquire);
    loop {
        if generation(s) != g || offers(s) == 0 {
            return None;
        }
        let next = pack(g, offers(s) - 1, inside(s) + 1);
        match shared
            .state
            .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some((workers - offers(s) + 1) as usize),
            Err(now) => s = now,
        }
    }
}

fn worker(shared: Arc<Shared>, workers: u64) {
    let mut seen = 0u64;
    loop {
        wait_until(|| shared.epoch.load(Ordering::Acquire) != seen);
        seen = shared.epoch.load(Ordering::Acquire);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(participant) = join(&shared, seen as u32, workers) else {
            continue;
        };
        let job = *shared.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(participant))).is_err()
        {
            shared.panicked.store(true, Ordering::Release);
        }
        // `job` is not used past this point: the caller may return once no worker is inside.
        let before = shared.state.fetch_sub(1, Ordering::AcqRel);
        if inside(before) == 1 {
            let caller = shared
                .caller
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(t) = caller {
                t.unpark();
            }
        }
    }
}

/// Withdraws the offers and waits for the workers inside the job when dropped (also while
/// unwinding), then clears the job.
struct Finish<'a>(&'a Shared);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        let mut s = shared.state.load(Ordering::Acquire);
        while let Err(now) = shared.state.compare_exchange_weak(
            s,
            pack(generation(s), 0, inside(s)),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            s = now;
        }
        wait_until(|| inside(shared.state.load(Ordering::Acquire)) == 0);
        *shared.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Pool {
    /// A pool using `threads` threads in total (the caller and `threads − 1` workers; at least
    /// one, at most 65,536). Fails only if the OS refuses to spawn a thread.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            state: AtomicU64::new(0),
            job: Mutex::new(None),
            caller: Mutex::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let n = threads.clamp(1, 1 << 16) - 1;
        let workers = (1..=n)
            .map(|p| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("shardswarm-kernels-{p}"))
                    .spawn(move || worker(shared, n as u64))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            shared,
            workers,
            run_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// Total threads that may run a job (workers + the caller).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(0)` on the calling thread and offers `job(p)` to each worker (`p` in
    /// `1..threads()`, each at most once); returns when `job(0)` has returned and every worker
    /// that took its offer in time has returned too. A worker that had not started by then
    /// does not run it: `job` must share its work out dynamically (claim items until none are
    /// left) rather than rely on every participant running.
    ///
    /// Must not be called from inside a job of the same pool (it would wait for itself).
    ///
    /// # Panics
    /// If any call of `job` panicked (after all of them have finished).
    pub fn run<'a>(&self, job: &'a (dyn Fn(usize) + Sync + 'a)) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        let _one_at_a_time = self.run_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = &*self.shared;
        // SAFETY: only the lifetime is changed. Workers read the reference only after joining
        // this job's generation, and `Finish` (dropped before this function returns or
        // unwinds) withdraws the offers, waits until no worker is inside, then clears the slot.
        let erased: &'static Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
        *shared.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(erased);
        *shared.caller.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(std::thread::current());
        // Generation 0 is never used, so a fresh worker (seen = 0) waits for the first job.
        let g = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let g = if g as u32 == 0 {
            self.generation
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1)
        } else {
            g
        };
        shared.state.store(
            pack(g as u32, self.workers.len() as u64, 0),
            Ordering::Release,
        );
        let finish = Finish(shared);
        shared.epoch.store(g, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        drop(finish);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            // A worker only ends by returning; a panic inside a job was already caught.
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A job that shares `items` out dynamically, recording who ran.
    fn share_out(pool: &Pool, items: usize) -> (Vec<usize>, Vec<usize>) {
        let next = AtomicUsize::new(0);
        let done: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
        let ran: Vec<AtomicUsize> = (0..pool.threads()).map(|_| AtomicUsize::new(0)).collect();
        pool.run(&|p| {
            ran[p].fetch_add(1, Ordering::Relaxed);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = done.get(i) else { break };
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        let load = |v: &[AtomicUsize]| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (load(&done), load(&ran))
    }

    #[test]
    fn every_item_is_done_once_and_nobody_runs_twice() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).expect("spawn");
            assert_eq!(pool.threads(), threads);
            for round in 0..300 {
                let (done, ran) = share_out(&pool, round % 40);
                assert!(done.iter().all(|&d| d == 1), "{threads} threads: {done:?}");
                assert_eq!(ran[0], 1);
                assert!(ran.iter().all(|&r| r <= 1), "{ran:?}");
            }
        }
    }

    #[test]
    fn workers_join_jobs_that_wait_for_them() {
        // The caller's part waits until every worker has joined, so all must run.
        let pool = Pool::new(3).expect("spawn");
        for _ in 0..100 {
            let joined = AtomicUsize::new(0);
            pool.run(&|p| {
                joined.fetch_add(1, Ordering::AcqRel);
                if p == 0 {
                    wait_until(|| joined.load(Ordering::Acquire) == 3);
                }
            });
            assert_eq!(joined.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn concurrent_callers_take_turns() {
        let pool = Pool::new(2).expect("spawn");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for round in 0..100 {
                        let (done, _) = share_out(&pool, round % 17);
                        assert!(done.iter().all(|&d| d == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2).expect("spawn");
        let r = catch_unwind(AssertUnwindSafe(|| {
            let joined = AtomicBool::new(false);
            pool.run(&|p| {
                if p == 0 {
                    wait_until(|| joined.load(Ordering::Acquire));
                } else {
                    joined.store(true, Ordering::Release);
                    panic!("boom in worker {p}");
                }
            });
        }));
        assert!(r.is_err());
        let (done, _) = share_out(&pool, 10);
        assert!(done.iter().all(|&d| d == 1));
    }

    #[test]
    fn a_caller_panic_waits_for_the_workers_inside() {
        let pool = Pool::new(3).expect("spawn");
        let inside_job = AtomicUsize::new(0);
        let left = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|p| {
                if p == 0 {
                    wait_until(|| inside_job.load(Ordering::Acquire) == 2);
                    panic!("boom in caller");
                }
                inside_job.fetch_add(1, Ordering::AcqRel);
                left.fetch_add(1, Ordering::AcqRel);
            });
        }));
        assert!(r.is_err());
        assert_eq!(left.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn state_packing_round_trips() {
        let s = pack(0xdead_beef, 0x1234, 0xfff);
        assert_eq!(
            (generation(s), offers(s), inside(s)),
            (0xdead_beef, 0x1234, 0xfff)
        );
    }
}
