//! The Q4_K, Q5_K and Q6_K prompt tiles on 256-bit vectors (see the parent module).

/// Defines this module's kernels inside a `tile_kernels!` module (see the parent's doc): they
/// use its `dot4`, `dot_q8` and `scaled` and carry its target features `$feat`.
macro_rules! k_tiles {
    ($feat:literal) => {
        /// All Q4_K (`B` = 144) or Q5_K (`B` = 176) rows of `w` against the `n` input
        /// rows.
        ///
        /// # Safety
        /// As [`tiled_q8`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn tiled_k4<const B: usize>(
            w: &[u8],
            pairs: &[Q8KPair],
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let (blocks, _) = w.as_chunks::<B>();
            // Each block's unpacked scales, once: a tile would redo them for every input group.
            let sms: Vec<[u8; 16]> = blocks
                .iter()
                .map(|b| crate::x86_k::scales_mins_k4(&b[4..16]))
                .collect();
            row_tiles!(blocks.len() / per_row, n, RM_K, RN_K, |r, t, M, N| {
                tile_k4::<B, M, N>(blocks, &sms, r, pairs, t, per_row, n, out)
            });
        }

        /// Q4_K or Q5_K weight rows `r0..r0 + M` × input rows `t0..t0 + N`, as
        /// `crate::x86_k::dot_q4_k` / `dot_q5_k` compute each (Q5_K: the fifth bit from
        /// `qh`, and the minimum term summed as one scalar per block).
        #[allow(clippy::too_many_arguments)]
        #[inline]
        #[target_feature(enable = $feat)]
        fn tile_k4<const B: usize, const M: usize, const N: usize>(
            blocks: &[[u8; B]],
            sms: &[[u8; 16]],
            r0: usize,
            pairs: &[Q8KPair],
            t0: usize,
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let q5 = B == 176;
            assert!(B == 144 || q5);
            let qs_at = if q5 { 48 } else { 16 };
            let m4 = _mm256_set1_epi8(0x0f);
            let mut acc = [[_mm256_setzero_ps(); N]; M];
            let mut acc_m = [[_mm_setzero_ps(); N]; M];
            let mut summs = [[0f32; N]; M];
            for b in 0..per_row {
                let mut sm = [[0u8; 16]; M];
                for (i, sm) in sm.iter_mut().enumerate() {
                    *sm = sms[(r0 + i) * per_row + b];
                }
                let mut sumi = [[_mm256_setzero_si256(); N]; M];
                for s in 0..8 {
                    for i in 0..M {
                        let blk = &blocks[(r0 + i) * per_row + b];
                        assert!(qs_at + 128 <= B);
                        // SAFETY: 32 bytes at qs_at + 32·(s / 2) ≤ B − 32 (asserted).
                        let q = unsafe {
                            _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * (s / 2)).cast())
                        };
                        let mut q = if s % 2 == 0 {
                            _mm256_and_si256(q, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4)
                        };
                        if q5 {
                            // SAFETY: the 32 `qh` bytes at 16..48 of a 176-byte block.
                            let hb = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16).cast()) };
                            let bit = _mm256_srl_epi16(hb, _mm_cvtsi32_si128(s as i32));
                            let high = _mm256_and_si256(bit, _mm256_set1_epi8(1));
                            q = _mm256_add_epi8(q, _mm256_slli_epi16::<4>(high));
                        }
                        let scale = _mm256_set1_epi16(i16::from(sm[i][s]));
                        for j in 0..N {
                            let t = t0 + j;
                            let q8 = half(&pairs[(t / 2) * per_row + b].qs[s], t);
                            // SAFETY: 32 bytes inside the pair's 64-byte sub-block row.
                            let yq = unsafe { _mm256_loadu_si256(q8.as_ptr().cast()) };
                            let p = _mm256_maddubs_epi16(q, yq);
                            sumi[i][j] = scaled(sumi[i][j], p, scale);
                        }
                    }
                }
                for i in 0..M {
                    let blk = &blocks[(r0 + i) * per_row + b];
                    let d = _mm256_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
                    let dmin_w = crate::x86::f16_one(blk[2], blk[3]);
                    let min_bytes = &sm[i][8..];
                    // SAFETY: the 8 minimum bytes of `sm[i]`; an 8-byte load.
                    let mins = unsafe { _mm_loadl_epi64(min_bytes.as_ptr().cast()) };
                    let mins = _mm_cvtepu8_epi16(mins);
                    for j in 0..N {
                        let t = t0 + j;
                        let y = &pairs[(t / 2) * per_row + b];
                        let (h8, h4) = (8 * (t % 2), 4 * (t % 2));
                        // SAFETY: 8 f32, 8 i16 and 4 f32 inside the pair's fields.
                        let (yd, sub_sums, neg_d4) = unsafe {
                            (
                                _mm256_loadu_ps(y.d.as_ptr().add(h8)),
                                _mm_loadu_si128(y.sub_sums.as_ptr().add(h8).cast()),
                                _mm_loadu_ps(y.neg_d4.as_ptr().add(h4)),
                            )
                        };
                        let min_prod = _mm_madd_epi16(mins, sub_sums);
                        if q5 {
                            let zero = _mm_setzero_si128();
                            let h = _mm_hadd_epi32(_mm_hadd_epi32(min_prod, zero), zero);
                            let dmin = y.neg_d4[h4] * dmin_w;
                            summs[i][j] += dmin * _mm_cvtsi128_si32(h) as f32;
                        } else {
                            let scale_m = _mm_mul_ps(_mm_set1_ps(dmin_w), neg_d4);
                            acc_m[i][j] =
                                _mm_fmadd_ps(scale_m, _mm_cvtepi32_ps(min_prod), acc_m[i][j]);
                        }
                        let sumf = _mm256_cvtepi32_ps(sumi[i][j]);
                        acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(d, yd), sumf, acc[i][j]);
                    }
                }
            }
            for i in 0..M {
                for j in 0..N {
                    let m = if q5 {
                        summs[i][j]
                    } else {
                        let m = acc_m[i][j];
                        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                        _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
                    };
                    out[(r0 + i) * n + t0 + j] = crate::x86::hsum(acc[i][j]) + m;
                }
            }
        }

        /// All Q6_K rows of `w` against the `n` input rows.
        ///
        /// # Safety
        /// As [`tiled_q8`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn tiled_q6_k(
            w: &[u8],
            pairs: &[Q8KPair],
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let (blocks, _) = w.as_chunks::<210>();
            row_tiles!(blocks.len() / per_row, n, RM_K, RN_K, |r, t, M, N| {
                tile_q6_k::<M, N>(blocks, r, pairs, t, per_row, n, out)
            });
        }

        /// Q6_K weight rows `r0..r0 + M` × input rows `t0..t0 + N`, as
        /// `crate::x86_k::dot_q6_k` computes each.
        #[inline]
        #[target_feature(enable = $feat)]
        fn tile_q6_k<const M: usize, const N: usize>(
            blocks: &[[u8; 210]],
            r0: usize,
            pairs: &[Q8KPair],
            t0: usize,
            per_row: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let m32 = _mm256_set1_epi8(32);
            let mut acc = [[_mm256_setzero_ps(); N]; M];
            for b in 0..per_row {
                let mut sumi = [[_mm256_setzero_si256(); N]; M];
                for s in 0..8 {
                    let (jj, k) = (s / 4, s % 4);
                    let mut y = [_mm256_setzero_si256(); N];
                    let mut y32 = [_mm256_setzero_si256(); N];
                    for (j, (y, y32)) in y.iter_mut().zip(y32.iter_mut()).enumerate() {
                        let t = t0 + j;
                        let q = half(&pairs[(t / 2) * per_row + b].qs[s], t);
                        // SAFETY: 32 bytes inside the pair's 64-byte sub-block row.
                        *y = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
                        *y32 = _mm256_maddubs_epi16(m32, *y);
                    }
                    for i in 0..M {
                        let blk = &blocks[(r0 + i) * per_row + b];
                        // SAFETY: 16 bytes at 192, 32 at 64jj + 32·(k % 2) ≤ 96 and at
                        // 128 + 32jj ≤ 160 of a 210-byte block.
                        let (scales, ql, qh) = unsafe {
                            (
                                _mm_loadu_si128(blk.as_ptr().add(192).cast()),
                                _mm256_loadu_si256(blk.as_ptr().add(64 * jj + 32 * (k % 2)).cast()),
                                _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * jj).cast()),
                            )
                        };
                        // Values 32s..32s + 32 are groups 2s and 2s + 1.
                        let sc = crate::x86_k::q6_group_scales(scales, 2 * s);
                        let q = crate::x86_k::q6_quants(ql, qh, k);
                        for j in 0..N {
                            let raw = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y[j]), y32[j]);
                            sumi[i][j] = scaled(sumi[i][j], raw, sc);
                        }
                    }
                }
                for i in 0..M {
                    let blk = &blocks[(r0 + i) * per_row + b];
                    let d = _mm256_set1_ps(crate::x86::f16_one(blk[208], blk[209]));
                    for j in 0..N {
                        let t = t0 + j;
                        let y = &pairs[(t / 2) * per_row + b];
                        // SAFETY: 8 f32 inside the pair's `d`.
                        let yd = unsafe { _mm256_loadu_ps(y.d.as_ptr().add(8 * (t % 2))) };
                        let sumf = _mm256_cvtepi32_ps(sumi[i][j]);
                        acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(d, yd), sumf, acc[i][j]);
                    }
                }
            }
            for i in 0..M {
                for j in 0..N {
                    out[(r0 + i) * n + t0 + j] = crate::x86::hsum(acc[i][j]);
                }
            }
        }
    };
}
