//! x86-64 SIMD helpers shared by the kernels, after the helpers at the top
//! of ggml-cpu/arch/x86/quants.c.
//!
//! Every helper is `#[inline(always)]` without a `#[target_feature]` of its
//! own: it is only ever called from a `#[target_feature]` kernel and is
//! compiled as part of it. Each is `unsafe` because it uses intrinsics;
//! the caller must run with the features named in its `# Safety`.

use std::arch::x86_64::*;

/// ggml's `hsum_float_8`, in ggml's order (high half + low half, then
/// lanes 0+2 and 1+3, then those two), so sums match ggml bit for bit.
///
/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn hsum_float_8(x: __m256) -> f32 {
    let mut res = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// ggml's `hsum_i32_8`.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn hsum_i32_8(a: __m256i) -> i32 {
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let hi64 = _mm_unpackhi_epi64(sum128, sum128);
    let sum64 = _mm_add_epi32(hi64, sum128);
    let hi32 = _mm_shuffle_epi32(sum64, 0b10_11_00_01);
    _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
}

/// An f16 converted and broadcast to all eight lanes (`vpbroadcastw` from
/// memory, `vcvtph2ps`): the per-block scale as the FMA wants it, with no
/// scalar round trip. (A scalar `vpinsrw` + `vcvtph2ps` + `vbroadcastss`
/// chain measured 2-3x slower per block on Zen 4.) Lane values are exact,
/// so `f16_splat(a) * f16_splat(b)` equals `set1(f16(a) * f16(b))`.
///
/// # Safety
///
/// AVX2 and F16C.
#[inline(always)]
pub(crate) unsafe fn f16_splat(bits: [u8; 2]) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(u16::from_le_bytes(bits) as i16))
}

/// ggml's `bytes_from_nibbles_32`: 16 bytes of packed nibbles to 32 bytes,
/// the low nibbles first, then the high ones, each 0..=15. (One 128-bit
/// broadcast load and a per-half variable shift instead of ggml's shift
/// and insert; same result.)
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn bytes_from_nibbles_32(qs: &[u8; 16]) -> __m256i {
    let tmp = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast()));
    let shifted = _mm256_srlv_epi64(tmp, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// ggml's `bytes_from_bits_32`: bit `i` of `x` to byte `i`, 0xFF where the
/// bit is set and 0x00 where not.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf_mask = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf_mask);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}

/// Sums of four consecutive `u8 * i8` products into eight i32 lanes
/// without VNNI: `maddubs` (pairs, exact while a pair sum fits an i16) and
/// `madd` with ones. Lane `l` is the sum over bytes `4l..4l+4`, the same
/// grouping as `vpdpbusd`.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn dot_u8i8_lanes(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// ggml's `mul_sum_i8_pairs` integer lanes for two signed vectors: the sign
/// of `x` moved onto `y`, then [`dot_u8i8_lanes`]. (A byte of -128 in `y`
/// where `x` is negative overflows, as in ggml.)
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn dot_i8i8_lanes(x: __m256i, y: __m256i) -> __m256i {
    dot_u8i8_lanes(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// `16 * (y[4l] + .. + y[4l+3])` in lane `l`: the offset term that turns
/// an unsigned 5-bit dot into the signed `(q - 16) * y` one.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn sum4_times(y: __m256i, times: i8) -> __m256i {
    dot_u8i8_lanes(_mm256_set1_epi8(times), y)
}

/// As [`dot_u8i8_lanes`] with VNNI `vpdpbusd`, accumulating onto `acc`
/// (exact: no intermediate i16).
///
/// # Safety
///
/// AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// The bytes a register tile should prefetch while it works: the next row
/// group of the matrix, spread evenly over the tile's block loop so that
/// it arrives about when the tile before it finishes.
///
/// Measured on Zen 4: with four rows in flight, the hardware prefetcher
/// alone streams weights from DRAM at a third of the single-row rate
/// (every row crosses 4 KiB pages on its own); with this, the multi-row
/// kernels stream at least as fast as ggml's one row at a time. The hint
/// is T1 (into L2): the L1 prefetcher does the last hop, and L1 is not
/// crowded with lines a cached matrix did not need fetched.
#[derive(Clone, Copy)]
pub(crate) struct Prefetch {
    base: *const u8,
    /// Bytes to cover per loop step.
    per_step: usize,
}

impl Prefetch {
    pub(crate) const NONE: Prefetch = Prefetch {
        base: std::ptr::null(),
        per_step: 0,
    };

    /// Prefetch the elements `next` (any type) over `steps` loop steps.
    pub(crate) fn over<T>(next: &[T], steps: usize) -> Prefetch {
        let bytes = std::mem::size_of_val(next);
        if bytes == 0 || steps == 0 {
            return Prefetch::NONE;
        }
        Prefetch {
            base: next.as_ptr().cast(),
            per_step: bytes.div_ceil(steps),
        }
    }

    /// Touch the cache lines that start within steps `from..to`'s share
    /// (and, at step 0, the line holding the first byte), so that each
    /// line is touched once over the loop. A hint: the addresses are
    /// never dereferenced, and prefetches never fault.
    ///
    /// # Safety
    ///
    /// SSE.
    #[inline(always)]
    pub(crate) unsafe fn range(&self, from: usize, to: usize) {
        if self.base.is_null() {
            return;
        }
        let a0 = self.base as usize + from * self.per_step;
        let a1 = self.base as usize + to * self.per_step;
        let mut line = if from == 0 { a0 & !63 } else { (a0 + 63) & !63 };
        while line < a1 {
            // `wrapping_add` from `base` keeps the pointer's provenance;
            // nothing is read through it.
            let p = self
                .base
                .wrapping_add(line.wrapping_sub(self.base as usize));
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
            line += 64;
        }
    }

    /// [`Prefetch::range`] of one step.
    ///
    /// # Safety
    ///
    /// SSE.
    #[inline(always)]
    pub(crate) unsafe fn step(&self, i: usize) {
        self.range(i, i + 1);
    }
}

/// Generates a level's `mat_vec` and `mat_mat` from its register-tile
/// kernel `$tile::<R, C>(rows: [&[W]; R], xs: [&[X]; C]) -> [[f32; R]; C]`,
/// which must give every (row, column) pair the arithmetic of `R = C = 1`
/// so that all three entry points agree bit for bit.
///
/// `mat_vec` runs `$mv_rows` rows per pass over the activation; `mat_mat`
/// runs `$mm_rows x $mm_cols` tiles (each weight block decoded once per
/// tile, used for `$mm_cols` columns), with smaller tiles at the edges.
macro_rules! tile_drivers {
    ($features:literal, $W:ty, $X:ty, $tile:ident, mv_rows = $mv:literal, mm = $mr:literal x $mc:literal) => {
        /// `out[r] = dot(rows[r], x)`, `$mv_rows` rows at a time.
        ///
        /// # Safety
        ///
        /// The CPU must support the features this function is compiled
        /// for (see its `target_feature`). Lengths are checked.
        #[target_feature(enable = $features)]
        #[allow(clippy::int_plus_one)]
        pub(crate) unsafe fn mat_vec(rows: &[$W], x: &[$X], out: &mut [f32]) {
            let nb = x.len();
            assert_eq!(
                rows.len(),
                nb * out.len(),
                "quant: mat_vec rows/blocks mismatch"
            );
            if nb == 0 {
                out.fill(0.0);
                return;
            }
            let n = out.len();
            let mut r = 0;
            while r + $mv <= n {
                let rs: [&[$W]; $mv] =
                    core::array::from_fn(|i| &rows[(r + i) * nb..(r + i + 1) * nb]);
                let next = &rows[(r + 2 * $mv).min(n) * nb..(r + 3 * $mv).min(n) * nb];
                // SAFETY: same CPU features as this function.
                let res = unsafe { $tile::<$mv, 1>(rs, [x], Prefetch::over(next, nb)) };
                out[r..r + $mv].copy_from_slice(&res[0]);
                r += $mv;
            }
            while r < n {
                let next = &rows[(r + 1) * nb..(r + 2).min(n) * nb];
                // SAFETY: same CPU features as this function.
                let res = unsafe {
                    $tile::<1, 1>([&rows[r * nb..(r + 1) * nb]], [x], Prefetch::over(next, nb))
                };
                out[r] = res[0][0];
                r += 1;
            }
        }

        /// `out[c * n_rows + r] = dot(rows[r], xs[c])`, in register tiles.
        ///
        /// # Safety
        ///
        /// As for `mat_vec`.
        #[target_feature(enable = $features)]
        #[allow(clippy::int_plus_one)]
        pub(crate) unsafe fn mat_mat(rows: &[$W], xs: &[$X], nb: usize, out: &mut [f32]) {
            if nb == 0 {
                out.fill(0.0);
                return;
            }
            let n_rows = rows.len() / nb;
            let n_cols = xs.len() / nb;
            assert!(
                rows.len() == n_rows * nb
                    && xs.len() == n_cols * nb
                    && out.len() == n_rows * n_cols,
                "quant: mat_mat shape mismatch"
            );
            let row = |r: usize| &rows[r * nb..(r + 1) * nb];
            // The rows after a tile's, for it to prefetch.
            let ahead = |r: usize, k: usize| {
                Prefetch::over(&rows[r.min(n_rows) * nb..(r + k).min(n_rows) * nb], nb)
            };
            let col = |c: usize| &xs[c * nb..(c + 1) * nb];
            let mut c = 0;
            while c < n_cols {
                let full_cols = c + $mc <= n_cols;
                let mut r = 0;
                while r < n_rows {
                    let full_rows = r + $mr <= n_rows;
                    if full_rows && full_cols {
                        // SAFETY: same CPU features as this function.
                        let res = unsafe {
                            $tile::<$mr, $mc>(
                                core::array::from_fn(|i| row(r + i)),
                                core::array::from_fn(|j| col(c + j)),
                                ahead(r + $mr, $mr),
                            )
                        };
                        for j in 0..$mc {
                            out[(c + j) * n_rows + r..(c + j) * n_rows + r + $mr]
                                .copy_from_slice(&res[j]);
                        }
                        r += $mr;
                    } else if full_cols {
                        // SAFETY: same CPU features as this function.
                        let res = unsafe {
                            $tile::<1, $mc>(
                                [row(r)],
                                core::array::from_fn(|j| col(c + j)),
                                ahead(r + 1, 1),
                            )
                        };
                        for j in 0..$mc {
                            out[(c + j) * n_rows + r] = res[j][0];
                        }
                        r += 1;
                    } else if full_rows {
                        for j in c..n_cols {
                            // SAFETY: same CPU features as this function.
                            let res = unsafe {
                                $tile::<$mr, 1>(
                                    core::array::from_fn(|i| row(r + i)),
                                    [col(j)],
                                    ahead(r + $mr, $mr),
                                )
                            };
                            out[j * n_rows + r..j * n_rows + r + $mr].copy_from_slice(&res[0]);
                        }
                        r += $mr;
                    } else {
                        for j in c..n_cols {
                            // SAFETY: same CPU features as this function.
                            let res = unsafe { $tile::<1, 1>([row(r)], [col(j)], ahead(r + 1, 1)) };
                            out[j * n_rows + r] = res[0][0];
                        }
                        r += 1;
                    }
                }
                c += if full_cols { $mc } else { n_cols - c };
            }
        }
    };
}
pub(crate) use tile_drivers;

/// The register tile of the types whose block value is
/// `d_w * d_x * (exact integer dot)`: Q4_0, Q5_0 and Q8_0 against Q8_0.
/// The invoking module provides `weights(&W) -> __m256i` (the block's
/// values as bytes), `act(&X) -> Act` (an activation block loaded once
/// per tile column, with an optional offset term) and
/// `lanes(__m256i, &Act) -> __m256i` (eight exact i32 lanes, lane `l`
/// summing values `4l..4l+4`). The float side is ggml's AVX2 `vec_dot`
/// for these types: per block one FMA of `set1(d_w * d_x)` times the
/// converted lanes into eight f32 lanes, then `hsum_float_8`; so every
/// level that uses it returns ggml's bits.
macro_rules! scaled_block_tile {
    ($W:ty, $X:ty) => {
        scaled_block_tile!($W, $X, tile);
    };
    ($W:ty, $X:ty, $tile:ident) => {
        /// One activation block, loaded once per tile column.
        struct Act {
            y: __m256i,
            off: __m256i,
            d: __m256,
        }

        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn $tile<const R: usize, const C: usize>(
            rows: [&[$W]; R],
            xs: [&[$X]; C],
            pf: Prefetch,
        ) -> [[f32; R]; C] {
            let nb = xs[0].len();
            for r in &rows {
                assert_eq!(r.len(), nb);
            }
            for x in &xs {
                assert_eq!(x.len(), nb);
            }
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            for b in 0..nb {
                pf.step(b);
                let mut wv = [_mm256_setzero_si256(); R];
                let mut dw = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let w = &rows[r][b];
                    wv[r] = weights(w);
                    dw[r] = f16_splat(w.d);
                }
                for c in 0..C {
                    let a = act(&xs[c][b]);
                    for r in 0..R {
                        let d = _mm256_mul_ps(dw[r], a.d);
                        let q = _mm256_cvtepi32_ps(lanes(wv[r], &a));
                        acc[c][r] = _mm256_fmadd_ps(d, q, acc[c][r]);
                    }
                }
            }
            let mut out = [[0.0f32; R]; C];
            for c in 0..C {
                for r in 0..R {
                    out[c][r] = hsum_float_8(acc[c][r]);
                }
            }
            out
        }

        /// The exact integer dot product of one block pair, through the
        /// same lanes as the kernels.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[cfg(test)]
        #[inline(always)]
        pub(crate) unsafe fn block_dot_lanes(w: &$W, x: &$X) -> i32 {
            hsum_i32_8(lanes(weights(w), &act(x)))
        }
    };
}
pub(crate) use scaled_block_tile;

/// [`scaled_block_tile`] for the AVX-512 levels, with two rows in one
/// 512-bit register: the low half holds row `2p`'s eight lanes, the high
/// half row `2p + 1`'s, so one `vpdpbusd`, one conversion, one scale
/// multiply and one FMA serve two rows. Each half computes exactly the
/// operations of the eight-lane tile on the same values (integer lanes are
/// exact; the multiply and FMA are per lane), so the bits are those of
/// `tile_lanes8` and of ggml's AVX2 `vec_dot`. Tiles with an odd row count
/// take `tile_lanes8`. The module's `lanes` must be `dpbusd(a.off, wu, a.y)`.
macro_rules! paired_block_tile {
    ($W:ty, $X:ty) => {
        scaled_block_tile!($W, $X, tile_lanes8);

        /// Two rows per register where the tile has an even row count.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels (AVX-512F, VNNI).
        #[inline(always)]
        unsafe fn tile_pairs<const R: usize, const C: usize>(
            rows: [&[$W]; R],
            xs: [&[$X]; C],
            pf: Prefetch,
        ) -> [[f32; R]; C] {
            let nb = xs[0].len();
            for r in &rows {
                assert_eq!(r.len(), nb);
            }
            for x in &xs {
                assert_eq!(x.len(), nb);
            }
            // Lane l of the scale vector comes from element l / 8 of the
            // pair's two scales.
            let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            // Accumulators [column][pair]; only the first R / 2 pairs used.
            let mut acc = [[_mm512_setzero_ps(); R]; C];
            for b in 0..nb {
                pf.step(b);
                let mut wz = [_mm512_setzero_si512(); R];
                let mut dw = [_mm_setzero_ps(); R];
                for p in 0..R / 2 {
                    let (w0, w1) = (&rows[2 * p][b], &rows[2 * p + 1][b]);
                    wz[p] =
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(weights(w0)), weights(w1));
                    let bits = (u16::from_le_bytes(w0.d) as u32)
                        | ((u16::from_le_bytes(w1.d) as u32) << 16);
                    dw[p] = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
                }
                for c in 0..C {
                    let a = act(&xs[c][b]);
                    let yz = _mm512_broadcast_i64x4(a.y);
                    let offz = _mm512_broadcast_i64x4(a.off);
                    let dx = _mm256_castps256_ps128(a.d);
                    for p in 0..R / 2 {
                        // d_w * d_x for both rows, then spread over halves.
                        let d = _mm512_permutexvar_ps(
                            halves,
                            _mm512_castps128_ps512(_mm_mul_ps(dw[p], dx)),
                        );
                        let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(offz, wz[p], yz));
                        acc[c][p] = _mm512_fmadd_ps(d, q, acc[c][p]);
                    }
                }
            }
            let mut out = [[0.0f32; R]; C];
            for c in 0..C {
                for p in 0..R / 2 {
                    let v = acc[c][p];
                    out[c][2 * p] = hsum_float_8(_mm512_castps512_ps256(v));
                    out[c][2 * p + 1] = hsum_float_8(_mm256_castpd_ps(
                        _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)),
                    ));
                }
            }
            out
        }

        /// The module's tile: row pairs in 512-bit registers, a single row
        /// in eight lanes.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[$W]; R],
            xs: [&[$X]; C],
            pf: Prefetch,
        ) -> [[f32; R]; C] {
            if R % 2 == 0 {
                tile_pairs(rows, xs, pf)
            } else {
                tile_lanes8(rows, xs, pf)
            }
        }
    };
}
pub(crate) use paired_block_tile;

/// ggml's `hsum` of a 4-lane accumulator in the K-quant kernels
/// (`acc_m + movehl`, then `add_ss` with `movehdup`).
///
/// # Safety
///
/// SSE3.
#[inline(always)]
pub(crate) unsafe fn hsum_float_4(x: __m128) -> f32 {
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// ggml's unpacking of a Q4_K/Q5_K block's 12 scale bytes (the
/// `utmp`/`kmask` dance): 8 scales then 8 mins, as 16 bytes.
#[inline(always)]
pub(crate) fn k4_scales_mins(q: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut utmp = [
        u32::from_le_bytes([q[0], q[1], q[2], q[3]]),
        u32::from_le_bytes([q[4], q[5], q[6], q[7]]),
        u32::from_le_bytes([q[8], q[9], q[10], q[11]]),
        0,
    ];
    utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
    let uaux = utmp[1] & KMASK1;
    utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
    utmp[2] = uaux;
    utmp[0] &= KMASK1;
    utmp
}

/// The sixteen i16 lanes of a Q4_K/Q5_K block's scales and mins
/// (`_mm256_cvtepu8_epi16` of the unpacked bytes): scales in the low
/// half, mins in the high half.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn k4_mins_and_scales(q: &[u8; 12]) -> __m256i {
    let u = k4_scales_mins(q);
    _mm256_cvtepu8_epi16(_mm_set_epi32(
        u[3] as i32,
        u[2] as i32,
        u[1] as i32,
        u[0] as i32,
    ))
}

/// ggml's `get_scale_shuffle_k4(i)`: picks i16 lane `i` of each 128-bit
/// half.
///
/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn k4_scale_shuffle(i: usize) -> __m256i {
    let pair = ((2 * i) | ((2 * i + 1) << 8)) as i16;
    _mm256_set1_epi16(pair)
}

/// Q8_K's `bsums` summed in pairs (`_mm_hadd_epi16` of the two halves):
/// lane `j` is the sum of the activations of 32-value sub-block `j`.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
pub(crate) unsafe fn q8k_pair_sums(bsums: &[u8; 32]) -> __m128i {
    let q8sums = _mm256_loadu_si256(bsums.as_ptr().cast());
    _mm_hadd_epi16(
        _mm256_extracti128_si256(q8sums, 0),
        _mm256_extracti128_si256(q8sums, 1),
    )
}

/// The register tile of the float types (F32, F16, BF16), after ggml's
/// `ggml_vec_dot_f32`/`_f16`: `$load(ptr)` converts `$lanes` elements to
/// f32; four accumulators of `$lanes` lanes take one FMA each per step of
/// `4 * $lanes` elements; they are reduced as `(a0 + a2) + (a1 + a3)` and
/// then across lanes (`$hsum`), and the last `n % (4 * $lanes)` elements
/// are added in f64, as ggml does.
macro_rules! float_tile {
    ($W:ty, $vec:ty, $lanes:literal, $zero:ident, $fma:ident, $add:ident, $load:ident, $hsum:ident) => {
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[$W]; R],
            xs: [&[$W]; C],
            pf: Prefetch,
        ) -> [[f32; R]; C] {
            let n = xs[0].len();
            for r in &rows {
                assert_eq!(r.len(), n);
            }
            for x in &xs {
                assert_eq!(x.len(), n);
            }
            let step = 4 * $lanes;
            let np = n - n % step;
            let mut acc = [[[$zero(); 4]; R]; C];
            let mut i = 0;
            while i < np {
                // `pf` spreads over the row's elements.
                pf.range(i, i + step);
                for j in 0..4 {
                    let mut wv = [$zero(); R];
                    for r in 0..R {
                        // In bounds: i + (j + 1) * lanes <= np <= n.
                        wv[r] = $load(rows[r].as_ptr().add(i + j * $lanes));
                    }
                    for c in 0..C {
                        let xv = $load(xs[c].as_ptr().add(i + j * $lanes));
                        for r in 0..R {
                            acc[c][r][j] = $fma(wv[r], xv, acc[c][r][j]);
                        }
                    }
                }
                i += step;
            }
            let mut out = [[0.0f32; R]; C];
            for c in 0..C {
                for r in 0..R {
                    let a = acc[c][r];
                    let v = $hsum($add($add(a[0], a[2]), $add(a[1], a[3])));
                    let mut s = v as f64;
                    for e in np..n {
                        s += (rows[r][e].get() * xs[c][e].get()) as f64;
                    }
                    out[c][r] = s as f32;
                }
            }
            out
        }
    };
}
pub(crate) use float_tile;

/// ggml's `GGML_F32x8_REDUCE` lane sum: high + low half, then two
/// `hadd`s.
///
/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn hsum_f32x8_ggml(x: __m256) -> f32 {
    let t0 = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// `_mm512_reduce_add_ps` in GCC's order (halves, quarters, then two
/// in-register shuffles), which ggml's AVX-512 float reduction uses.
///
/// # Safety
///
/// AVX-512F.
#[inline(always)]
pub(crate) unsafe fn hsum_f32x16_gcc(x: __m512) -> f32 {
    let t3 = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(x), _mm512_castps512_ps256(x));
    let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
    let t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, 0b01_00_11_10));
    let t10 = _mm_add_ps(t8, _mm_shuffle_ps(t8, t8, 0b10_11_00_01));
    _mm_cvtss_f32(t10)
}

/// Sixteen f32 lanes as two 256-bit halves: ggml's AVX-512 float order
/// (lane `i` of the low half is lane `i`, of the high half lane `i + 8`)
/// on AVX2.
#[derive(Clone, Copy)]
pub(crate) struct F32x16(pub __m256, pub __m256);

/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn zero_x16() -> F32x16 {
    F32x16(_mm256_setzero_ps(), _mm256_setzero_ps())
}

/// # Safety
///
/// FMA.
#[inline(always)]
pub(crate) unsafe fn fma_x16(a: F32x16, b: F32x16, c: F32x16) -> F32x16 {
    F32x16(
        _mm256_fmadd_ps(a.0, b.0, c.0),
        _mm256_fmadd_ps(a.1, b.1, c.1),
    )
}

/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn add_x16(a: F32x16, b: F32x16) -> F32x16 {
    F32x16(_mm256_add_ps(a.0, b.0), _mm256_add_ps(a.1, b.1))
}

/// [`hsum_f32x16_gcc`] of the two halves: GCC's order folds the high
/// eight lanes onto the low eight first, then sums those as
/// `hsum_float_8` does.
///
/// # Safety
///
/// AVX.
#[inline(always)]
pub(crate) unsafe fn hsum_x16(x: F32x16) -> f32 {
    hsum_float_8(_mm256_add_ps(x.1, x.0))
}

/// Generates `$name(rows, x, out)`: llamafile's tinyBLAS float dot product
/// (what ggml computes for each output of an F32/F16/BF16 matmul of two or
/// more tokens): one accumulator of `$lanes` lanes per output, one FMA per
/// `$lanes` elements, the last partial step zero-filled (tinyBLAS's
/// masked load), then the lane sum `$hsum`. Uses the invoking module's
/// `load`.
macro_rules! gemm_float_rows {
    ($name:ident, $features:literal, $W:ty, $lanes:literal, $zero:ident, $fma:ident, $hsum:ident) => {
        /// # Safety
        ///
        /// The CPU must support the features this function is compiled
        /// for (see its `target_feature`). Lengths are checked.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(rows: &[$W], x: &[$W], out: &mut [f32]) {
            let k = x.len();
            assert!(
                k > 0 && rows.len() == k * out.len(),
                "quant: mat_vec rows/blocks mismatch"
            );
            let np = k - k % $lanes;
            let mut xt = [<$W>::default(); $lanes];
            xt[..k - np].copy_from_slice(&x[np..]);
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
                let mut acc = $zero();
                let mut i = 0;
                while i < np {
                    // SAFETY: i + lanes <= np <= k elements of both; same
                    // CPU features as this function.
                    acc = unsafe { $fma(load(row.as_ptr().add(i)), load(x.as_ptr().add(i)), acc) };
                    i += $lanes;
                }
                if np < k {
                    let mut wt = [<$W>::default(); $lanes];
                    wt[..k - np].copy_from_slice(&row[np..]);
                    // SAFETY: both buffers hold `lanes` elements.
                    acc = unsafe { $fma(load(wt.as_ptr()), load(xt.as_ptr()), acc) };
                }
                // SAFETY: same CPU features as this function.
                *o = unsafe { $hsum(acc) };
            }
        }
    };
}
pub(crate) use gemm_float_rows;
