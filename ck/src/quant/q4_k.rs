//! Q4_K: 256 4-bit values in 8 sub-blocks of 32, each with a 6-bit scale
//! and a 6-bit min, under an f16 super-scale and super-min; value `i` of
//! sub-block `j` is `d * sc_j * q_i - dmin * m_j`. Dotted with Q8_K.

use super::kquant::{make_qkx2_quants, nearest_int, pack_scales_mins_k4, scales_mins_k4};
use super::order::{hsum_float_4, lanes_32, Acc8};
use super::q8_k::BlockQ8K;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels, QK_K,
};

/// ggml's `block_q4_K`. `qs` holds four 32-byte chunks; chunk `c` holds
/// values `64c + l` (low nibbles) and `64c + 32 + l` (high nibbles).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales, f16 bits.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 bits.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed.
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ4K {}

impl BlockQ4K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(self.dmin)
    }

    /// Value `i` as stored, 0..=15.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let (c, r) = (i / 64, i % 64);
        let byte = self.qs[32 * c + r % 32];
        if r < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

/// `quantize_row_q4_K_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ4K]) {
    for (b, x) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 32];
        let mut weights = [0f32; 32];
        let mut mins = [0f32; 8];
        let mut scales = [0f32; 8];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 32 {
            let xs = &x[32 * j..32 * j + 32];
            let mut sum_x2 = 0.0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (s, m) = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut laux,
                -1.0,
                0.1,
                20,
                false,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..8 {
            ls[j] = nearest_int(inv_scale * scales[j]) as u8;
            lm[j] = nearest_int(inv_min * mins[j]) as u8;
        }
        b.scales = pack_scales_mins_k4(&ls, &lm);
        b.d = f32_to_f16(max_scale / 63.0);
        b.dmin = f32_to_f16(max_min / 63.0);
        let (sc, m) = scales_mins_k4(&b.scales);
        for j in 0..QK_K / 32 {
            let d = b.d() * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin() * m[j] as f32;
            for ii in 0..32 {
                let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15);
                l[32 * j + ii] = q as u8;
            }
        }
        for c in 0..4 {
            for i in 0..32 {
                b.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// `dequantize_row_q4_K`.
pub(crate) fn dequantize_row(src: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let (sc, m) = scales_mins_k4(&b.scales);
        for (i, o) in y.iter_mut().enumerate() {
            let j = i / 32;
            *o = d * sc[j] as f32 * b.q(i) as f32 - min * m[j] as f32;
        }
    }
}

/// The exact integer parts of one super-block's dot product:
/// `(sum_j sc_j * sum_i q_i * x_i, sum_j m_j * (bsum_2j + bsum_2j+1))`;
/// the block's value is `d * x.d * first - dmin * x.d * second`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
    let (sc, m) = scales_mins_k4(&w.scales);
    let mut sumi = 0i32;
    for c in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let byte = w.qs[32 * c + l];
            lo += (byte & 0x0F) as i32 * x.qs[64 * c + l] as i32;
            hi += (byte >> 4) as i32 * x.qs[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let mut summ = 0i32;
    for j in 0..8 {
        summ += m[j] as i32 * (x.bsum(2 * j) as i32 + x.bsum(2 * j + 1) as i32);
    }
    (sumi, summ)
}

/// The mins term's four i32 lanes, as `_mm_madd_epi16(mins, q8s)` forms
/// them: lane `i` is `m_2i * s_2i + m_2i+1 * s_2i+1`, with `s_j` the sum
/// of the activations of 32-value sub-block `j` (`bsum_2j + bsum_2j+1`).
#[inline(always)]
pub(crate) fn mins_lanes(m: &[u8; 8], x: &BlockQ8K) -> [i32; 4] {
    let s = |j: usize| x.bsum(2 * j) as i32 + x.bsum(2 * j + 1) as i32;
    std::array::from_fn(|i| m[2 * i] as i32 * s(2 * i) + m[2 * i + 1] as i32 * s(2 * i + 1))
}

/// The eight exact integer lanes of the scaled 4-bit dot product of one
/// super-block, as the SIMD kernels form them: lane `l` is
/// `sum_j sc_j * sum(q * x)` over values `4l..4l + 4` of each 32-value
/// sub-block `j`.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ4K, x: &BlockQ8K, sc: &[u8; 8]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for c in 0..4 {
        let qs = &w.qs[32 * c..32 * c + 32];
        let lo = lanes_32(|i| (qs[i] & 0x0F) as i32, |i| x.qs[64 * c + i] as i32);
        let hi = lanes_32(|i| (qs[i] >> 4) as i32, |i| x.qs[64 * c + 32 + i] as i32);
        for l in 0..8 {
            lanes[l] += sc[2 * c] as i32 * lo[l] + sc[2 * c + 1] as i32 * hi[l];
        }
    }
    lanes
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q4_K_q8_K` float order (the
/// mins term into four lanes with one FMA of `-x.d * dmin`, the scaled dot
/// into eight with one FMA of `x.d * d`, then `hsum_float_8(acc) +
/// hsum(acc_m)`), so it returns the SIMD levels' bits.
pub(crate) fn vec_dot_q4k_q8k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_K vec_dot length mismatch");
    let mut acc = Acc8::default();
    let mut acc_m = [0f32; 4];
    for (a, b) in w.iter().zip(x) {
        let (sc, m) = scales_mins_k4(&a.scales);
        let yd = b.d();
        let dmin = (0.0 - yd) * a.dmin();
        let prod = mins_lanes(&m, b);
        for i in 0..4 {
            acc_m[i] = dmin.mul_add(prod[i] as f32, acc_m[i]);
        }
        acc.fma(yd * a.d(), block_lanes(a, b, &sc));
    }
    acc.hsum() + hsum_float_4(acc_m)
}

/// The Q4_K tile of both x86 levels, ggml's AVX2 `ggml_vec_dot_q4_K_q8_K`:
/// per super-block, the mins term `madd(mins, pair sums of bsums)` goes
/// into a 4-lane accumulator with one FMA of `-x.d * dmin`, and the
/// scaled 4-bit dot (`maddubs`, then `scale_acc`: `madd` with the scale
/// and add) into eight lanes with one FMA of `x.d * d`; the result is
/// `hsum_float_8(acc) + hsum(acc_m)`. `scale_acc` differs per level.
#[cfg(target_arch = "x86_64")]
macro_rules! q4k_tile {
    () => {
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[BlockQ4K]; R],
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
            let m4 = _mm256_set1_epi8(0xF);
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            let mut acc_m = [[_mm_setzero_ps(); R]; C];
            for b in 0..nb {
                pf.step(b);
                let mut scales = [_mm256_setzero_si256(); R];
                let mut mins = [_mm_setzero_si128(); R];
                let mut dw = [_mm256_setzero_ps(); R];
                let mut dminw = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let w = &rows[r][b];
                    let ms = k4_mins_and_scales(&w.scales);
                    let sc = _mm256_extracti128_si256(ms, 0);
                    scales[r] = _mm256_set_m128i(sc, sc);
                    mins[r] = _mm256_extracti128_si256(ms, 1);
                    dw[r] = f16_splat(w.d);
                    dminw[r] = f16_splat(w.dmin);
                }
                let mut yd = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    let x = &xs[c][b];
                    yd[c] = _mm256_set1_ps(x.d());
                    let q8s = q8k_pair_sums(&x.bsums);
                    let neg_yd = _mm256_castps256_ps128(_mm256_sub_ps(_mm256_setzero_ps(), yd[c]));
                    for r in 0..R {
                        let dmin = _mm_mul_ps(neg_yd, _mm256_castps256_ps128(dminw[r]));
                        let prod = _mm_madd_epi16(mins[r], q8s);
                        acc_m[c][r] = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(prod), acc_m[c][r]);
                    }
                }
                let mut sumi = [[_mm256_setzero_si256(); R]; C];
                for j in 0..QK_K / 64 {
                    let mut q4l = [_mm256_setzero_si256(); R];
                    let mut q4h = [_mm256_setzero_si256(); R];
                    let mut sl = [_mm256_setzero_si256(); R];
                    let mut sh = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        let q4bits = _mm256_loadu_si256(rows[r][b].qs.as_ptr().add(32 * j).cast());
                        q4l[r] = _mm256_and_si256(q4bits, m4);
                        q4h[r] = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                        sl[r] = _mm256_shuffle_epi8(scales[r], k4_scale_shuffle(2 * j));
                        sh[r] = _mm256_shuffle_epi8(scales[r], k4_scale_shuffle(2 * j + 1));
                    }
                    for c in 0..C {
                        let q8 = xs[c][b].qs.as_ptr().add(64 * j);
                        let q8l = _mm256_loadu_si256(q8.cast());
                        let q8h = _mm256_loadu_si256(q8.add(32).cast());
                        for r in 0..R {
                            let s = scale_acc(sumi[c][r], sl[r], _mm256_maddubs_epi16(q4l[r], q8l));
                            sumi[c][r] = scale_acc(s, sh[r], _mm256_maddubs_epi16(q4h[r], q8h));
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
                    out[c][r] = hsum_float_8(acc[c][r]) + hsum_float_4(acc_m[c][r]);
                }
            }
            out
        }

        /// The exact integer parts of one super-block (see
        /// [`super::block_dot`]), through the kernels' lanes.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[cfg(test)]
        #[inline(always)]
        pub(crate) unsafe fn block_dot_lanes(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
            let ms = k4_mins_and_scales(&w.scales);
            let sc = _mm256_extracti128_si256(ms, 0);
            let scales = _mm256_set_m128i(sc, sc);
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8k_pair_sums(&x.bsums));
            let m4 = _mm256_set1_epi8(0xF);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let q4bits = _mm256_loadu_si256(w.qs.as_ptr().add(32 * j).cast());
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                let q8 = x.qs.as_ptr().add(64 * j);
                let p16l = _mm256_maddubs_epi16(q4l, _mm256_loadu_si256(q8.cast()));
                let p16h = _mm256_maddubs_epi16(q4h, _mm256_loadu_si256(q8.add(32).cast()));
                sumi = scale_acc(
                    sumi,
                    _mm256_shuffle_epi8(scales, k4_scale_shuffle(2 * j)),
                    p16l,
                );
                sumi = scale_acc(
                    sumi,
                    _mm256_shuffle_epi8(scales, k4_scale_shuffle(2 * j + 1)),
                    p16h,
                );
            }
            let prod8 = _mm256_set_m128i(_mm_setzero_si128(), prod);
            (hsum_i32_8(sumi), hsum_i32_8(prod8))
        }
    };
}

/// AVX2 + FMA + F16C.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ4K, BlockQ8K, QK_K};
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

    q4k_tile!();

    tile_drivers!("avx2,fma,f16c", BlockQ4K, BlockQ8K, tile, mv_rows = 2, mm = 2 x 2);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors: `vpdpwssd` applies the
/// scale and accumulates in one instruction; 32 registers allow wider
/// tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{BlockQ4K, BlockQ8K, QK_K};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// `acc + madd(scale, p16)` in one `vpdpwssd` (exact, no saturation).
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn scale_acc(acc: __m256i, scale: __m256i, p16: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, scale, p16)
    }

    q4k_tile!();

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ4K,
        BlockQ8K,
        tile,
        mv_rows = 4,
        mm = 4 x 2
    );

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn block_dot(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ4K;
    type X = BlockQ8K;

    fn vec_dot_scalar(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
        vec_dot_q4k_q8k(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ4K], x: &[BlockQ8K], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ4K], xs: &[BlockQ8K], nb: usize, out: &mut [f32]) {
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
    fn q4_k_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_K, 8);
    }

    #[test]
    fn q4_k_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ4K {
                d: rng.f16_scale(1e-4, 1e-2, false),
                dmin: rng.f16_scale(1e-4, 1e-2, false),
                scales: std::array::from_fn(|_| rng.byte()),
                qs: std::array::from_fn(|_| rng.byte()),
            };
            let mut x = testutil::random_q8k(rng);
            if trial < 2 {
                // Every scale and min 63, every value 15, activations at
                // the extremes.
                w.scales = [0xFF; 12];
                w.qs = [0xFF; QK_K / 2];
                x = testutil::q8k_from_qs(
                    if trial == 0 {
                        [127; QK_K]
                    } else {
                        [-127; QK_K]
                    },
                    0.5,
                );
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q4_K",
            2000,
            gen,
            |w, x| {
                let d = block_dot(w, x);
                let (sc, m) = scales_mins_k4(&w.scales);
                assert_eq!(block_lanes(w, x, &sc).iter().sum::<i32>(), d.0);
                assert_eq!(
                    crate::quant::q4_k::mins_lanes(&m, x).iter().sum::<i32>(),
                    d.1
                );
                d
            },
            &testutil::x86_twins!(avx2::block_dot, avx512::block_dot),
        );
    }

    #[test]
    fn q4_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_K);
    }
}
