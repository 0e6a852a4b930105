//! Q6_K: 256 6-bit values in 16 sub-blocks of 16, each with a signed 8-bit
//! scale, under one f16 super-scale; value `i` is
//! `d * sc_{i/16} * (q_i - 32)`. Dotted with Q8_K.

use super::kquant::{make_qx_quants_rmse1, nearest_int, GROUP_MAX_EPS};
use super::order::{lanes_32, Acc8};
use super::q8_k::BlockQ8K;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels, QK_K,
};

/// ggml's `block_q6_K`. For each 128-value half `n`: `ql[64n + l]` holds
/// the low nibbles of values `128n + l` (low) and `128n + 64 + l` (high),
/// `ql[64n + 32 + l]` those of `128n + 32 + l` and `128n + 96 + l`;
/// `qh[32n + l]` holds the top two bits of values `128n + l`, `+32`, `+64`,
/// `+96` in bit pairs 0, 2, 4, 6.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 bits.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ6K {}

impl BlockQ6K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    /// Value `i` as stored, 0..=63.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let (n, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let ql = self.ql[64 * n + 32 * (quarter % 2) + l];
        let lo = if quarter < 2 { ql & 0x0F } else { ql >> 4 };
        let hi = (self.qh[32 * n + l] >> (2 * quarter)) & 3;
        lo | (hi << 4)
    }
}

/// `quantize_row_q6_K_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ6K]) {
    for (b, x) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let s =
                make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: f32_to_f16(0.0),
            };
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f32_to_f16(1.0 / iscale);
        for ib in 0..QK_K / 16 {
            b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = b.d() * b.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for n in 0..2 {
            let (j, ql, qh) = (128 * n, 64 * n, 32 * n);
            for i in 0..32 {
                let q1 = l[j + i] as u8 & 0xF;
                let q2 = l[j + i + 32] as u8 & 0xF;
                let q3 = l[j + i + 64] as u8 & 0xF;
                let q4 = l[j + i + 96] as u8 & 0xF;
                b.ql[ql + i] = q1 | (q3 << 4);
                b.ql[ql + i + 32] = q2 | (q4 << 4);
                b.qh[qh + i] = (l[j + i] as u8 >> 4)
                    | ((l[j + i + 32] as u8 >> 4) << 2)
                    | ((l[j + i + 64] as u8 >> 4) << 4)
                    | ((l[j + i + 96] as u8 >> 4) << 6);
            }
        }
    }
}

/// `dequantize_row_q6_K`.
pub(crate) fn dequantize_row(src: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * (b.q(i) as i32 - 32) as f32;
        }
    }
}

/// The exact integer dot product of one super-block:
/// `sum_i sc_{i/16} * (q_i - 32) * x_i`; the block's value is
/// `d * x.d * that`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
    let mut sumi = 0i32;
    for n in 0..2 {
        let mut sub = [0i32; 8];
        for l in 0..32 {
            let ql0 = w.ql[64 * n + l];
            let ql1 = w.ql[64 * n + 32 + l];
            let qh = w.qh[32 * n + l];
            let q = [
                (ql0 & 0xF) | ((qh & 3) << 4),
                (ql1 & 0xF) | (((qh >> 2) & 3) << 4),
                (ql0 >> 4) | (((qh >> 4) & 3) << 4),
                (ql1 >> 4) | (((qh >> 6) & 3) << 4),
            ];
            for (quarter, &qv) in q.iter().enumerate() {
                let e = 128 * n + 32 * quarter + l;
                sub[2 * quarter + l / 16] += (qv as i32 - 32) * x.qs[e] as i32;
            }
        }
        for (s, &v) in sub.iter().enumerate() {
            sumi += w.scales[8 * n + s] as i32 * v;
        }
    }
    sumi
}

/// The eight exact integer lanes of one super-block, as the SIMD kernels
/// form them: `-32 * (bsum_2l * sc_2l + bsum_2l+1 * sc_2l+1)` (the offset,
/// taken once), plus, for each 32-value group `g`, the unsigned 6-bit
/// values times the activations over values `4l..4l + 4` of the group,
/// scaled by the group's first scale for `l < 4` and its second for
/// `l >= 4`.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ6K, x: &BlockQ8K) -> [i32; 8] {
    let sc = |i: usize| w.scales[i] as i32;
    let mut lanes: [i32; 8] = std::array::from_fn(|l| {
        -32 * (x.bsum(2 * l) as i32 * sc(2 * l) + x.bsum(2 * l + 1) as i32 * sc(2 * l + 1))
    });
    for g in 0..8 {
        let (n, quarter) = (g / 4, g % 4);
        let q = |l: usize| {
            let ql = w.ql[64 * n + 32 * (quarter % 2) + l];
            let lo = if quarter < 2 { ql & 0xF } else { ql >> 4 };
            let hi = (w.qh[32 * n + l] >> (2 * quarter)) & 3;
            (lo | (hi << 4)) as i32
        };
        let y = |l: usize| x.qs[128 * n + 32 * quarter + l] as i32;
        let p = lanes_32(q, y);
        for l in 0..8 {
            lanes[l] += sc(2 * g + l / 4) * p[l];
        }
    }
    lanes
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q6_K_q8_K` float order
/// (eight lanes, one FMA of `x.d * d` per block, `hsum_float_8`), so it
/// returns the SIMD levels' bits.
pub(crate) fn vec_dot_q6k_q8k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q6_K vec_dot length mismatch");
    let mut acc = Acc8::default();
    for (a, b) in w.iter().zip(x) {
        acc.fma(b.d() * a.d(), block_lanes(a, b));
    }
    acc.hsum()
}

/// The i16 scales of the eight 32-value groups of a Q6_K block: group `g`
/// (values `32g..32g+32`) gets `[sc[2g]; 8]` then `[sc[2g + 1]; 8]`, the
/// layout `maddubs` leaves its 16-bit pair sums in. (ggml does this with
/// a byte shuffle per group; LLVM rewrites that broadcast into three
/// shuffles, so here one `vpshufb` per group picks words from a
/// half-duplicated widened copy, which it keeps.)
///
/// # Safety
///
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q6k_group_scales(scales: &[i8; 16]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.as_ptr().cast()));
    let lo = _mm256_permute4x64_epi64(s16, 0x44);
    let hi = _mm256_permute4x64_epi64(s16, 0xEE);
    std::array::from_fn(|g| {
        let m = (g % 4) as i64;
        let word = |w: i64| (2 * w) | ((2 * w + 1) << 8);
        let rep = |w: i64| {
            let p = word(w);
            p | (p << 16) | (p << 32) | (p << 48)
        };
        let ctrl = _mm256_set_epi64x(rep(2 * m + 1), rep(2 * m + 1), rep(2 * m), rep(2 * m));
        _mm256_shuffle_epi8(if g < 4 { lo } else { hi }, ctrl)
    })
}

/// The Q6_K tile of both x86 levels, ggml's AVX2 `ggml_vec_dot_q6_K_q8_K`:
/// the 6-bit values are rebuilt unsigned (0..=63), dotted with `maddubs`,
/// scaled per 16 values (`scale_acc`: `madd` + add, or `vpdpwssd`), and
/// the `-32` offset is taken once per block as `32 * sum(scale * bsum)`;
/// one FMA of `x.d * d` per block into eight lanes, then `hsum_float_8`.
#[cfg(target_arch = "x86_64")]
macro_rules! q6k_tile {
    () => {
        /// The four 32-value groups of half `j` (values `128j + 32k + l`),
        /// unsigned.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn q6_values(w: &BlockQ6K, j: usize) -> [__m256i; 4] {
            let m3 = _mm256_set1_epi8(3);
            let m15 = _mm256_set1_epi8(15);
            let ql = w.ql.as_ptr().add(64 * j);
            let q4bits1 = _mm256_loadu_si256(ql.cast());
            let q4bits2 = _mm256_loadu_si256(ql.add(32).cast());
            let q4bits_h = _mm256_loadu_si256(w.qh.as_ptr().add(32 * j).cast());
            let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
            let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)), 2);
            let q4h_2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
            let q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)), 2);
            [
                _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0),
                _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3),
            ]
        }

        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[BlockQ6K]; R],
            xs: [&[BlockQ8K]; C],
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
                let mut scales16 = [_mm256_setzero_si256(); R];
                let mut dw = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let w = &rows[r][b];
                    scales16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.scales.as_ptr().cast()));
                    dw[r] = f16_splat(w.d);
                }
                let mut sumi = [[_mm256_setzero_si256(); R]; C];
                let mut yd = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    let x = &xs[c][b];
                    yd[c] = _mm256_set1_ps(x.d());
                    let q8sums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
                    for r in 0..R {
                        let sub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales16[r]), 5);
                        sumi[c][r] = _mm256_sub_epi32(sumi[c][r], sub);
                    }
                }
                for j in 0..QK_K / 128 {
                    let mut q = [[_mm256_setzero_si256(); 4]; R];
                    let mut sc = [[_mm256_setzero_si256(); 4]; R];
                    for r in 0..R {
                        q[r] = q6_values(&rows[r][b], j);
                        let g = q6k_group_scales(&rows[r][b].scales);
                        sc[r].copy_from_slice(&g[4 * j..4 * j + 4]);
                    }
                    for c in 0..C {
                        let q8 = xs[c][b].qs.as_ptr().add(128 * j);
                        for k in 0..4 {
                            let q8k = _mm256_loadu_si256(q8.add(32 * k).cast());
                            for r in 0..R {
                                let p16 = _mm256_maddubs_epi16(q[r][k], q8k);
                                sumi[c][r] = scale_acc(sumi[c][r], sc[r][k], p16);
                            }
                        }
                    }
                }
                for c in 0..C {
                    for r in 0..R {
                        let d = _mm256_mul_ps(yd[c], dw[r]);
                        acc[c][r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[c][r]), acc[c][r]);
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

        /// The exact integer dot product of one super-block, through the
        /// kernels' lanes.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        pub(crate) unsafe fn block_dot_lanes(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
            let scales = _mm_loadu_si128(w.scales.as_ptr().cast());
            let q8sums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
            let sub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales)), 5);
            let g = q6k_group_scales(&w.scales);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 128 {
                let q = q6_values(w, j);
                for k in 0..4 {
                    let q8k = _mm256_loadu_si256(x.qs.as_ptr().add(128 * j + 32 * k).cast());
                    sumi = scale_acc(sumi, g[4 * j + k], _mm256_maddubs_epi16(q[k], q8k));
                }
            }
            hsum_i32_8(_mm256_sub_epi32(sumi, sub))
        }

        /// ggml's tiled order for each row ([`super::tiled_dot`]), the
        /// integer parts through the kernels' lanes.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tiled_rows(rows: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
            let nb = x.len();
            assert!(
                nb > 0 && rows.len() == nb * out.len(),
                "quant: mat_vec rows/blocks mismatch"
            );
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb)) {
                let mut acc = 0f32;
                for (a, b) in row.iter().zip(x) {
                    // SAFETY: the caller runs with this module's features.
                    let s1 = unsafe { block_dot_lanes(a, b) };
                    acc = super::tiled_step(a, b, s1, acc);
                }
                *o = acc;
            }
        }
    };
}

/// AVX2 + FMA + F16C.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{q6k_group_scales, BlockQ6K, BlockQ8K, QK_K};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// `acc + madd(scale, p16)`.
    ///
    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn scale_acc(acc: __m256i, scale: __m256i, p16: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(scale, p16))
    }

    q6k_tile!();

    tile_drivers!("avx2,fma,f16c", BlockQ6K, BlockQ8K, tile, mv_rows = 1, mm = 2 x 2);

    /// ggml's tiled order for each row.
    ///
    /// # Safety
    ///
    /// The CPU must support avx2,fma,f16c. Lengths are checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn mat_vec_tiled(rows: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
        // SAFETY: same CPU features as this function.
        unsafe { tiled_rows(rows, x, out) }
    }

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors (`vpdpwssd` for the
/// scales).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{q6k_group_scales, BlockQ6K, BlockQ8K, QK_K};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// `acc + madd(scale, p16)` in one `vpdpwssd`.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn scale_acc(acc: __m256i, scale: __m256i, p16: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, scale, p16)
    }

    q6k_tile!();

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ6K,
        BlockQ8K,
        tile,
        mv_rows = 2,
        mm = 2 x 2
    );
    /// ggml's tiled order for each row.
    ///
    /// # Safety
    ///
    /// The CPU must support avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni. Lengths are checked.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn mat_vec_tiled(rows: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
        // SAFETY: same CPU features as this function.
        unsafe { tiled_rows(rows, x, out) }
    }

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn block_dot(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// One super-block of [`tiled_dot`] from its exact integer part.
#[inline(always)]
pub(crate) fn tiled_step(a: &BlockQ6K, b: &BlockQ8K, s1: i32, acc: f32) -> f32 {
    ((s1 as f32) * a.d()).mul_add(b.d(), acc)
}

/// What ggml's "tiled" K-quant matmul (ggml-cpu/tiled, taken for passes of
/// eight or more tokens when the weights are not repacked) computes for one
/// output: per super-block `r = d * s1` with `s1` the exact integer part, then
/// `acc = fma(r, x.d, acc)`, from zero in block order.
pub(crate) fn tiled_dot(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: tiled vec_dot length mismatch");
    let mut acc = 0f32;
    for (a, b) in w.iter().zip(x) {
        acc = tiled_step(a, b, block_dot(a, b), acc);
    }
    acc
}

/// [`tiled_dot`] for each row at `kern`'s level (the same bits at every
/// level): `out[r] = tiled_dot(row r, x)`.
pub(crate) fn mat_vec_tiled(kern: Level, rows: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
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
    match kern.level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Kernels` at this level proves the CPU features.
        KernelLevel::Avx512 => unsafe { avx512::mat_vec_tiled(rows, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelLevel::Avx2 => unsafe { avx2::mat_vec_tiled(rows, x, out) },
        _ => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb)) {
                *o = tiled_dot(row, x);
            }
        }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ6K;
    type X = BlockQ8K;

    fn vec_dot_scalar(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
        vec_dot_q6k_q8k(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ6K], x: &[BlockQ8K], out: &mut [f32]) {
        match kern.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features.
            KernelLevel::Avx512 => unsafe { avx512::mat_vec(rows, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_vec(rows, x, out) },
            _ => mat_vec_scalar::<Self>(rows, x, out),
        }
    }

    fn mat_mat(kern: Level, rows: &[BlockQ6K], xs: &[BlockQ8K], nb: usize, out: &mut [f32]) {
        match kern.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features.
            KernelLevel::Avx512 => unsafe { avx512::mat_mat(rows, xs, nb, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_mat(rows, xs, nb, out) },
            _ => mat_mat_scalar::<Self>(rows, xs, nb, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q6_k_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q6_K, 10);
    }

    #[test]
    fn q6_k_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ6K {
                ql: std::array::from_fn(|_| rng.byte()),
                qh: std::array::from_fn(|_| rng.byte()),
                scales: std::array::from_fn(|_| rng.byte() as i8),
                d: rng.f16_scale(1e-5, 1e-3, true),
            };
            let mut x = testutil::random_q8k(rng);
            match trial {
                // Values 63 with scales -128, then values 0 with 127,
                // against the extreme activations.
                0 => {
                    (w.ql, w.qh, w.scales) = ([0xFF; 128], [0xFF; 64], [-128; 16]);
                    x = testutil::q8k_from_qs([127; QK_K], 0.5);
                }
                1 => {
                    (w.ql, w.qh, w.scales) = ([0; 128], [0; 64], [127; 16]);
                    x = testutil::q8k_from_qs([-127; QK_K], 0.5);
                }
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q6_K",
            2000,
            gen,
            |w, x| {
                let d = block_dot(w, x);
                assert_eq!(
                    block_lanes(w, x).iter().sum::<i32>(),
                    d,
                    "lanes sum to the block"
                );
                d
            },
            &testutil::x86_twins!(avx2::block_dot, avx512::block_dot),
        );
    }

    /// ggml's tiled order (passes of eight or more tokens) agrees across
    /// levels and with the dequantized dot.
    #[test]
    fn q6_k_pass_orders_agree_across_levels() {
        testutil::check_pass_orders(GgmlType::Q6_K, 66);
    }

    #[test]
    fn q6_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q6_K);
    }
}
