//! The Q4_1 prompt kernel on 256-bit vectors: 8 weight rows, one per 32-bit lane (see the
//! parent module).

/// Defines this module's kernels inside a `tile_kernels!` module (see the parent's doc): they
/// use its `dot4`, `dot_q8` and `scaled` and carry its target features `$feat`.
macro_rules! q4_1_tiles {
    ($feat:literal) => {
        /// Q4_1 weight rows (8 per group, one per 32-bit lane, transposed block by block)
        /// against the `n` input rows, as `crate::x86_vnni::q4_1` does on 512 bits: each lane
        /// sums its row's exact block sums with the reference's `f32` steps in block order.
        /// Returns how many rows it did (whole groups); the caller runs the rest.
        ///
        /// # Safety
        /// The CPU must have `$feat`; `w` holds whole rows of `per_row` blocks, `acts`,
        /// `dy` and `sy` `n · per_row` entries, `out` rows × n values.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn rows_q4_1(
            w: &[u8],
            acts: &[Q8Block],
            dy: &[f32],
            sy: &[f32],
            per_row: usize,
            out: &mut [f32],
        ) -> usize {
            let row_bytes = per_row * 20;
            let n = acts.len() / per_row;
            let groups = w.len() / row_bytes / 8;
            assert!(row_bytes <= i32::MAX as usize / 8);
            let lanes = _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(row_bytes as i32),
            );
            let mut tq = vec![[_mm256_setzero_si256(); 8]; per_row];
            let mut td = vec![[_mm256_setzero_ps(); 2]; per_row];
            for g in 0..groups {
                let base = &w[g * 8 * row_bytes..(g + 1) * 8 * row_bytes];
                for (b, (q, dm)) in tq.iter_mut().zip(td.iter_mut()).enumerate() {
                    let mut d = [0u16; 8];
                    let mut m = [0u16; 8];
                    for r in 0..8 {
                        let blk = &base[r * row_bytes + 20 * b..];
                        d[r] = u16::from_le_bytes([blk[0], blk[1]]);
                        m[r] = u16::from_le_bytes([blk[2], blk[3]]);
                    }
                    // SAFETY: 8 u16 each; unaligned loads. The gathers read dword k of
                    // row r's quants, inside `base` (r < 8, 20b + 4 + 4k + 4 ≤ row_bytes).
                    unsafe {
                        dm[0] = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
                        dm[1] = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().cast()));
                        let p = base.as_ptr().add(20 * b + 4).cast::<i32>();
                        for k in 0..4 {
                            let v = _mm256_i32gather_epi32::<1>(p.byte_add(4 * k), lanes);
                            q[k] = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
                            q[4 + k] =
                                _mm256_and_si256(_mm256_srli_epi32::<4>(v), _mm256_set1_epi8(0x0f));
                        }
                    }
                }
                let out = &mut out[g * 8 * n..(g + 1) * 8 * n];
                let mut t = 0;
                while t + Q4_1_ROWS <= n {
                    pass_q4_1::<Q4_1_ROWS>(&tq, &td, acts, dy, sy, t, n, out);
                    t += Q4_1_ROWS;
                }
                while t < n {
                    pass_q4_1::<1>(&tq, &td, acts, dy, sy, t, n, out);
                    t += 1;
                }
            }
            groups * 8
        }

        /// Input rows `t0..t0 + N` against a transposed group of 8 Q4_1 rows.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        fn pass_q4_1<const N: usize>(
            tq: &[[__m256i; 8]],
            td: &[[__m256; 2]],
            acts: &[Q8Block],
            dy: &[f32],
            sy: &[f32],
            t0: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let per_row = tq.len();
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, (q, dm)) in tq.iter().zip(td).enumerate() {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let i = (t0 + j) * per_row + b;
                    let y = &acts[i].qs;
                    let mut even = _mm256_setzero_si256();
                    let mut odd = _mm256_setzero_si256();
                    for k in 0..4 {
                        let quad = |s: usize| {
                            i32::from_le_bytes([
                                y[4 * s] as u8,
                                y[4 * s + 1] as u8,
                                y[4 * s + 2] as u8,
                                y[4 * s + 3] as u8,
                            ])
                        };
                        even = dot4(even, q[2 * k], _mm256_set1_epi32(quad(2 * k)));
                        odd = dot4(odd, q[2 * k + 1], _mm256_set1_epi32(quad(2 * k + 1)));
                    }
                    let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(even, odd));
                    // The reference's term: (Σq·y · d) · d_y + m · s_y, no FMA.
                    let term = _mm256_add_ps(
                        _mm256_mul_ps(_mm256_mul_ps(isum, dm[0]), _mm256_set1_ps(dy[i])),
                        _mm256_mul_ps(dm[1], _mm256_set1_ps(sy[i])),
                    );
                    *acc = _mm256_add_ps(*acc, term);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let mut v = [0f32; 8];
                // SAFETY: `v` is 8 f32; unaligned store.
                unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *a) };
                for (r, v) in v.iter().enumerate() {
                    out[r * n + t0 + j] = *v;
                }
            }
        }
    };
}
