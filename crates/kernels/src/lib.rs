//! Quantized mat-vec kernels for shardswarm's llama forward: our own code, not candle's.
//!
//! - [`QuantType`]: the GGUF/ggml block layouts read in place (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K,
//!   Q6_K); the weights are the raw bytes of a GGUF tensor, no repacking.
//! - Each input row is quantized once to 8 bits ([`Q8Block`] for the 32-value types,
//!   [`Q8KBlock`] for the K-quants), then every weight row is an integer dot product with it.
//! - [`Isa`]: a scalar reference ([`scalar`]) on every CPU; AVX2+FMA+F16C on x86-64 (Q4_0,
//!   Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) and NEON on aarch64 (Q4_0, Q4_1, Q8_0; untested here), chosen at
//!   run time. Prompts (several input rows) run tiles that unpack each weight block once for
//!   several rows, for all six types: on 256-bit vectors (`x86_tile`; AVX2, or AVX-VNNI where
//!   the CPU has it: [`Isa::AvxVnni`]) or with AVX-512 VNNI ([`Isa::Avx512Vnni`], `x86_vnni`,
//!   which also pairs weight rows for one-row Q4_0). All of them give the per-row AVX2
//!   kernels' results bit for bit.
//! - [`Engine`]: the instruction set plus a persistent [`Pool`] of `threads − 1` workers and
//!   the caller; [`Engine::global`] uses [`default_threads`] (`RAYON_NUM_THREADS`, else the
//!   available cores), so the pool is never larger than what `--threads` asked for.
//!
//! The only crate of the workspace with `unsafe`: SIMD intrinsics (loads and stores through
//! pointers, calling `#[target_feature]` functions after run-time detection) in the `x86`,
//! `x86_k`, `x86_tile`, `x86_vnni` and `neon` modules, and erasing a job's lifetime in [`Pool`]. Every
//! block says why it is sound.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod act;
mod engine;
mod pool;
mod quant;
pub mod scalar;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_k;
#[cfg(target_arch = "x86_64")]
mod x86_tile;
#[cfg(target_arch = "x86_64")]
mod x86_vnni;

pub use act::{Q8Block, Q8KBlock, quantize_q8, quantize_q8k};
pub use engine::{Engine, Isa, KernelError, Weights, default_threads, matmul, matvec};
pub use pool::{Pool, SPIN, SPIN_HOT};
pub use quant::QuantType;
