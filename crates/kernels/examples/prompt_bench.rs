//! Prompt (mat-mat) throughput of each x86 engine (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) on the shapes of a 1.1B llama, the input
//! being a 64-token prompt: the AVX2 kernels (the baseline, measured in the same run) against
//! the AVX-512 VNNI tiled ones, where the CPU has them.
//!
//! `cargo run --release -p shardswarm-kernels --example prompt_bench [-- THREADS [TOKENS]]`
//! Prints ms per mat-mul, weight·token products per second and the ratio to the baseline.

use shardswarm_kernels::{Engine, Isa, QuantType};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let tokens: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    // (rows, cols): attention q/o, k/v, FFN gate/up, FFN down of TinyLlama-1.1B; the FFN
    // gate/up and down of SmolLM2-135M (the default model) for the 32-value types.
    let shapes = [
        (2048, 2048),
        (256, 2048),
        (5632, 2048),
        (2048, 5632),
        (1536, 576),
        (576, 1536),
    ];
    let isas: Vec<Isa> = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    if isas.is_empty() {
        eprintln!("no x86 SIMD engine on this CPU");
        return;
    }
    for ty in QuantType::ALL {
        for (rows, cols) in shapes {
            let Some(rb) = ty.row_bytes(cols) else {
                continue; // 576 is not a whole number of K-quant blocks
            };
            // Pseudo-random quants with small positive f16 scales (0x2000 ≈ 0.0078): Q4_0/Q8_0
            // have one at byte 0, Q4_1, Q4_K and Q5_K two (d and m or dmin) at bytes 0 and 2, Q6_K one
            // at byte 208.
            let (at, len) = match ty {
                QuantType::Q4_K | QuantType::Q5_K | QuantType::Q4_1 => (0, 4),
                QuantType::Q6_K => (208, 2),
                _ => (0, 2),
            };
            let w: Vec<u8> = (0..rows * rb)
                .map(|i| match i % ty.block_bytes() {
                    o if (at..at + len).contains(&o) && o % 2 == 0 => 0,
                    o if (at..at + len).contains(&o) => 0x20,
                    _ => ((i * 2654435761usize) >> 13) as u8,
                })
                .collect();
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
                .collect();
            let mut base = None;
            let mut first: Option<Vec<f32>> = None;
            for &isa in &isas {
                let engine = Engine::new(isa, threads).expect("engine");
                let mut out = vec![0f32; tokens * rows];
                // The best of 5 timings of 3 mat-muls: the machine may be shared.
                let secs = (0..5)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..3 {
                            engine
                                .matmul(ty, &w, rows, cols, &x, &mut out)
                                .expect("matmul");
                        }
                        start.elapsed().as_secs_f64() / 3.0
                    })
                    .fold(f64::INFINITY, f64::min);
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} differs from {:?}",
                        isas[0]
                    ),
                }
                let base_secs = *base.get_or_insert(secs);
                println!(
                    "{isa:?} {threads}t {ty:?} {rows}x{cols} × {tokens} tokens: {:7.2} ms, {:6.1} G products/s, {:.2}× {:?}",
                    secs * 1e3,
                    (rows * cols * tokens) as f64 / secs / 1e9,
                    base_secs / secs,
                    isas[0],
                );
            }
        }
    }
}
