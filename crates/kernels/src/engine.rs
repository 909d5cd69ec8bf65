//! [`Engine`]: an instruction set plus a worker pool; runs quantized mat-vec / mat-mat.
//!
//! `matmul` quantizes each input row once, then splits the weight rows into chunks that the
//! pool's threads claim one at a time (an atomic counter), so a thread slowed by other load on
//! the machine simply takes fewer chunks. Each chunk runs every input row against its weight
//! rows while they are in cache, so a prompt of `n` rows reads the weights once, not `n` times.

use crate::act::Acts;
use crate::pool::Pool;
use crate::quant::ActKind;
use crate::quant::QuantType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Below this many weight bytes a mat-vec runs on the calling thread alone: waking the pool
/// would cost more than it saves.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// Chunks per thread: more balance the load under contention, fewer cost less bookkeeping.
const CHUNKS_PER_THREAD: usize = 4;

/// One weight matrix for [`Engine::matmul_many`]: `rows` rows of `cols` values of `ty`, as
/// GGUF's raw blocks (row-major).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    /// The block type.
    pub ty: QuantType,
    /// The raw blocks.
    pub data: &'a [u8],
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of the type's block size).
    pub cols: usize,
}

impl Weights<'_> {
    /// Checks the shapes against the input width `cols`, `n` input rows and an output of
    /// `out_len` values.
    fn check(&self, cols: usize, n: usize, out_len: usize) -> Result<(), KernelError> {
        let ty = self.ty;
        let row_bytes = ty.row_bytes(self.cols).ok_or(KernelError::Cols {
            ty,
            cols: self.cols,
        })?;
        let size = |what, got, want| {
            if got == want {
                Ok(())
            } else {
                Err(KernelError::Size { what, got, want })
            }
        };
        size("input width", self.cols, cols)?;
        size("weights", self.data.len(), self.rows * row_bytes)?;
        size("output", out_len, n * self.rows)
    }
}

/// A run of weight rows, the activations they meet, and where their results go (`[rows, n]`).
struct Chunk<'w, 'o> {
    ty: QuantType,
    data: &'w [u8],
    acts: &'w Acts,
    out: &'o mut [f32],
}

/// An instruction set the kernels can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The portable reference (any CPU).
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (prompts in tiles of several weight and input rows).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-VNNI (256-bit `vpdpbusd`; Intel since Alder Lake): its prompt
    /// tiles use it.
    AvxVnni,
    /// x86-64 with AVX-512 F/BW and VNNI on top of [`Isa::Avx2`]: prompts of every type and
    /// one-row Q4_0 run VNNI kernels (the same results bit for bit), the rest the AVX2 ones.
    Avx512Vnni,
    /// aarch64 NEON (untested on this project's CI: no ARM machine).
    Neon,
}

impl Isa {
    /// The best instruction set this CPU has.
    pub fn detect() -> Isa {
        [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// True when this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::available(),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => crate::x86::available() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => crate::x86_vnni::available(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// True when `self` has a SIMD dot product for `ty`; the others run the scalar reference,
    /// which is slower than candle's kernels — callers may prefer those then.
    pub fn accelerates(self, ty: QuantType) -> bool {
        match self {
            Isa::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => crate::x86::accelerates(ty),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::accelerates(ty),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Why a mat-mul was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The requested instruction set is not available on this CPU.
    #[error("instruction set {0:?} is not available on this CPU")]
    Unavailable(Isa),
    /// `cols` is not a whole number of blocks of the type.
    #[error("{ty:?}: {cols} columns are not a whole number of {}-value blocks", ty.block_elems())]
    Cols {
        /// The weight type.
        ty: QuantType,
        /// The row width.
        cols: usize,
    },
    /// A buffer does not have the size the shape implies.
    #[error("{what}: {got} elements, expected {want}")]
    Size {
        /// `"weights"` (bytes), `"output"` (values), `"input width"` or `"outputs"` (count).
        what: &'static str,
        /// The size passed.
        got: usize,
        /// The size the shape implies.
        want: usize,
    },
    /// The input is not a positive whole number of rows.
    #[error("an input of {len} values is not a positive whole number of {cols}-value rows")]
    Input {
        /// Values passed.
        len: usize,
        /// The row width.
        cols: usize,
    },
    /// The worker threads could not be started.
    #[error("cannot start kernel worker threads: {0}")]
    Spawn(String),
}

/// The thread count the kernels use by default: `RAYON_NUM_THREADS` when set to a positive
/// number (the CLI's `--threads` sets it), else the available parallelism (which honours the
/// process's CPU affinity mask and cgroup quota).
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the reference kernel on the rows in `w` (`out` = rows × n, row-major).
pub(crate) fn scalar_rows(ty: QuantType, w: &[u8], acts: &Acts, out: &mut [f32]) {
    match acts {
        Acts::Q8 {
            blocks, per_row, ..
        } => {
            let rb = per_row * ty.block_bytes();
            let n = blocks.len() / per_row;
            for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                for (a, v) in blocks.chunks_exact(*per_row).zip(o) {
                    *v = crate::scalar::dot_q8(ty, wr, a);
                }
            }
        }
        Acts::Q8K {
            blocks, per_row, ..
        } => {
            let rb = per_row * ty.block_bytes();
            let n = blocks.len() / per_row;
            for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                for (a, v) in blocks.chunks_exact(*per_row).zip(o) {
                    *v = crate::scalar::dot_q8k(ty, wr, a);
                }
            }
        }
    }
}

/// An instruction set and a persistent worker pool.
#[derive(Debug)]
pub struct Engine {
    isa: Isa,
    pool: Pool,
}

impl Engine {
    /// An engine on `isa` with `threads` threads in total (the caller included).
    pub fn new(isa: Isa, threads: usize) -> Result<Self, KernelError> {
        if !isa.is_available() {
            return Err(KernelError::Unavailable(isa));
        }
        let pool = Pool::new(threads).map_err(|e| KernelError::Spawn(e.to_string()))?;
        Ok(Self { isa, pool })
    }

    /// The process-wide engine: [`Isa::detect`] and [`default_threads`], built on first use.
    ///
    /// # Panics
    /// If its threads cannot be spawned.
    pub fn global() -> &'static Engine {
        static GLOBAL: OnceLock<Engine> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let (isa, threads) = (Isa::detect(), default_threads());
            match Engine::new(isa, threads) {
                Ok(e) => e,
                Err(e) => panic!("shardswarm-kernels: {e}"),
            }
        })
    }

    /// The instruction set.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Total threads a mat-mul uses.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// `out = x · Wᵀ` for one input row: `weights` holds `rows` rows of `cols` values of `ty`
    /// (GGUF's raw blocks, row-major), `x` has `cols` values, `out` gets `rows`.
    pub fn matvec(
        &self,
        ty: QuantType,
        weights: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.matmul(ty, weights, rows, cols, x, out)
    }

    /// `out = x · Wᵀ` for `n = x.len() / cols` input rows: `out` is `[n, rows]` row-major.
    pub fn matmul(
        &self,
        ty: QuantType,
        weights: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let w = Weights {
            ty,
            data: weights,
            rows,
            cols,
        };
        self.matmul_many(&[w], x, &mut [out])
    }

    /// Several mat-muls of the same input at once (`outs[i] = x · Wᵢᵀ`, `[n, rowsᵢ]`): the
    /// input is quantized once per activation format, and the rows of all the matrices are
    /// shared out across the pool in one pass — for the projections that read one input (a
    /// layer's Q, K and V; its FFN gate and up) this saves pool round trips and balances the
    /// small ones.
    ///
    /// All `ws` must have the same `cols`.
    pub fn matmul_many(
        &self,
        ws: &[Weights<'_>],
        x: &[f32],
        outs: &mut [&mut [f32]],
    ) -> Result<(), KernelError> {
        let Some(cols) = ws.first().map(|w| w.cols) else {
            return Ok(());
        };
        if cols == 0 || x.is_empty() || !x.len().is_multiple_of(cols) {
            return Err(KernelError::Input { len: x.len(), cols });
        }
        let n = x.len() / cols;
        if outs.len() != ws.len() {
            return Err(KernelError::Size {
                what: "outputs",
                got: outs.len(),
                want: ws.len(),
            });
        }
        for (w, out) in ws.iter().zip(outs.iter()) {
            w.check(cols, n, out.len())?;
        }
        let quantized = |kind| {
            ws.iter().any(|w| w.ty.act_kind() == kind).then(|| {
                let mut acts = Acts::zeroed(kind, n, cols);
                self.quantize(x, &mut acts);
                acts.finish();
                if self.pairs_rows(n, ws) {
                    acts.pair();
                }
                acts
            })
        };
        let (q8, q8k) = (quantized(ActKind::Q8), quantized(ActKind::Q8K));
        let acts_of = |ty: QuantType| match ty.act_kind() {
            ActKind::Q8 => q8.as_ref(),
            ActKind::Q8K => q8k.as_ref(),
        };
        // The kernels write [rows, n]; with n > 1 that is transposed to [n, rows] after.
        let mut scratch: Vec<Vec<f32>> = if n == 1 {
            Vec::new()
        } else {
            ws.iter().map(|w| vec![0f32; w.rows * n]).collect()
        };
        {
            let mut targets: Vec<&mut [f32]> = if n == 1 {
                outs.iter_mut().map(|o| &mut **o).collect()
            } else {
                scratch.iter_mut().map(|t| t.as_mut_slice()).collect()
            };
            let total_rows: usize = ws.iter().map(|w| w.rows).sum();
            let total_bytes: usize = ws.iter().map(|w| w.data.len()).sum();
            let threads = self.pool.threads();
            let parallel = threads > 1 && total_bytes >= PARALLEL_MIN_BYTES;
            let chunk_rows = if !parallel {
                usize::MAX
            } else {
                total_rows
                    .div_ceil(threads * CHUNKS_PER_THREAD)
                    .next_multiple_of(4)
            };
            let mut chunks: Vec<Chunk<'_, '_>> = Vec::new();
            for (w, target) in ws.iter().zip(targets.iter_mut()) {
                let Some(acts) = acts_of(w.ty) else { continue };
                let rb = w.data.len() / w.rows.max(1);
                let rows_per = chunk_rows.min(w.rows.max(1));
                for (data, out) in w
                    .data
                    .chunks(rows_per * rb)
                    .zip(target.chunks_mut(rows_per * n))
                {
                    chunks.push(Chunk {
                        ty: w.ty,
                        data,
                        acts,
                        out,
                    });
                }
            }
            self.run_chunks(chunks, parallel);
        }
        if n > 1 {
            for (t, out) in scratch.iter().zip(outs.iter_mut()) {
                transpose(t, n, out);
            }
        }
        Ok(())
    }

    /// Runs the chunks: on this thread alone unless `parallel`, else claimed one at a time by
    /// the pool's threads.
    fn run_chunks(&self, chunks: Vec<Chunk<'_, '_>>, parallel: bool) {
        if !parallel || chunks.len() <= 1 {
            for c in chunks {
                self.kernel(c.ty, c.data, c.acts, c.out);
            }
            return;
        }
        let chunks: Vec<Mutex<Chunk<'_, '_>>> = chunks.into_iter().map(Mutex::new).collect();
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                // Each index is claimed once, so the lock is never contended.
                let mut c = chunk.lock().unwrap_or_else(PoisonError::into_inner);
                let c = &mut *c;
                self.kernel(c.ty, c.data, c.acts, c.out);
            }
        });
    }

    /// True when `n` input rows against `ws` take the paired-row (tiled) kernels.
    fn pairs_rows(&self, n: usize, ws: &[Weights<'_>]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.isa, Isa::Avx2 | Isa::AvxVnni) {
            return n >= 2 && ws.iter().any(|w| crate::x86_tile::tiles(w.ty));
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            return ws.iter().any(|w| {
                if n >= 2 {
                    crate::x86_vnni::tiles(w.ty)
                } else {
                    crate::x86_vnni::pairs_weight_rows(w.ty)
                }
            });
        }
        let _ = (n, ws);
        false
    }

    fn quantize(&self, x: &[f32], acts: &mut Acts) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => crate::x86::quantize(x, acts),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::quantize(x, acts),
            _ => crate::act::quantize_scalar(x, acts),
        }
    }

    /// The kernel of this engine's instruction set on the rows in `w`.
    fn kernel(&self, ty: QuantType, w: &[u8], acts: &Acts, out: &mut [f32]) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86_tile::rows(false, ty, w, acts, out),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => crate::x86_tile::rows(true, ty, w, acts, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => crate::x86_vnni::rows(ty, w, acts, out),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::rows(ty, w, acts, out),
            _ => scalar_rows(ty, w, acts, out),
        }
    }
}

/// `out` (`[n, rows]`) = the transpose of `t` (`[rows, n]`), in blocks of rows so that both
/// sides stay in cache (a plain loop writes `out` with a stride of `rows` values: it took a
/// tenth of a 1.1B model's prefill).
fn transpose(t: &[f32], n: usize, out: &mut [f32]) {
    const BLOCK: usize = 16;
    let rows = t.len() / n;
    for (b, block) in t.chunks(BLOCK * n).enumerate() {
        let r0 = b * BLOCK;
        let width = block.len() / n;
        for (i, dst) in out.chunks_exact_mut(rows).enumerate() {
            for (k, v) in dst[r0..r0 + width].iter_mut().enumerate() {
                *v = block[k * n + i];
            }
        }
    }
}

/// `out = x · Wᵀ` for one input row on [`Engine::global`] (see [`Engine::matvec`]).
pub fn matvec(
    ty: QuantType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    Engine::global().matvec(ty, weights, rows, cols, x, out)
}

/// `out = x · Wᵀ` for several input rows on [`Engine::global`] (see [`Engine::matmul`]).
pub fn matmul(
    ty: QuantType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    Engine::global().matmul(ty, weights, rows, cols, x, out)
}
