//! The Q4_0 and Q8_0 prompt tiles on 256-bit vectors (see the parent module).

/// Defines this module's kernels inside a `tile_kernels!` module (see the parent's doc): they
/// use its `dot4`, `dot_q8` and `scaled` and carry its target features `$feat`.
macro_rules! q8_tiles {
    ($feat:literal) => {
        /// All Q4_0 (`B` = 18) or Q8_0 (`B` = 34) rows of `w` against the `n` input rows.
        ///
        /// # Safety
        /// The CPU must have `$feat`; `w` holds whole rows of `per_row` blocks, `pairs`
        /// `n.div_ceil(2) · per_row` entries and `out` rows × n values.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn tiled_q8<const B: usize>(
            w: &[u8],
            pairs: &[Q8Pair],
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let (blocks, _) = w.as_chunks::<B>();
            row_tiles!(blocks.len() / per_row, n, RM, RN, |r, t, M, N| {
                tile_q8::<B, M, N>(blocks, r, pairs, t, per_row, n, out)
            });
        }

        /// Weight rows `r0..r0 + M` × input rows `t0..t0 + N`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn tile_q8<const B: usize, const M: usize, const N: usize>(
            blocks: &[[u8; B]],
            r0: usize,
            pairs: &[Q8Pair],
            t0: usize,
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let mut acc = [[_mm256_setzero_ps(); N]; M];
            for b in 0..per_row {
                let mut wq = [_mm256_setzero_si256(); M];
                let mut wd = [_mm256_setzero_ps(); M];
                for i in 0..M {
                    let blk = &blocks[(r0 + i) * per_row + b];
                    wq[i] = if B == 18 {
                        crate::x86::nibbles(blk, 2)
                    } else {
                        assert!(B >= 34);
                        // SAFETY: bytes 2..34 of a block of ≥ 34 bytes (asserted).
                        unsafe { _mm256_loadu_si256(blk.as_ptr().add(2).cast()) }
                    };
                    wd[i] = _mm256_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
                }
                for j in 0..N {
                    let t = t0 + j;
                    let y = &pairs[(t / 2) * per_row + b];
                    let h = 8 * (t % 2);
                    // SAFETY: 32 bytes, 8 f32 and 8 i32 inside the pair's 64-byte fields.
                    let (yq, yd, ns) = unsafe {
                        (
                            _mm256_loadu_si256(half(&y.qs, t).as_ptr().cast()),
                            _mm256_loadu_ps(y.d.as_ptr().add(h)),
                            _mm256_loadu_si256(y.neg_sums.as_ptr().add(h).cast()),
                        )
                    };
                    let init = if B == 18 {
                        _mm256_slli_epi32::<3>(ns)
                    } else {
                        ns
                    };
                    for i in 0..M {
                        let isum = if B == 18 {
                            dot4(init, wq[i], yq)
                        } else {
                            dot_q8(wq[i], yq, init)
                        };
                        let xy = _mm256_cvtepi32_ps(isum);
                        acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], yd), xy, acc[i][j]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (j, a) in acc.iter().enumerate() {
                    out[(r0 + i) * n + t0 + j] = crate::x86::hsum(*a);
                }
            }
        }
    };
}
