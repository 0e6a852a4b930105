//! Q8_0: 32 int8 values with one f16 scale. Both a weight type and the
//! activation type of Q4_0, Q5_0 and Q8_0 weights.

use super::order::{lanes_32, Acc8};
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

pub const QK8_0: usize = 32;

/// ggml's `block_q8_0`: value `i` is `d * qs[i]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ8_0 {}

impl BlockQ8_0 {
    pub const ZERO: BlockQ8_0 = BlockQ8_0 {
        d: [0; 2],
        qs: [0; QK8_0],
    };

    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

/// `_mm256_cvtps_epi32` then the saturating packs of ggml's x86
/// `quantize_row_q8_0`: an already-rounded float to int8 (NaN and
/// out-of-range floats become `i32::MIN`, which saturates to -128).
#[inline(always)]
pub(crate) fn cvt_pack_i8(r: f32) -> i8 {
    let i = if r.is_nan() || !(-2147483648.0..2147483648.0).contains(&r) {
        i32::MIN
    } else {
        r as i32
    };
    i.clamp(-128, 127) as i8
}

/// The amax, scale and multiplier of ggml's x86 `quantize_row_q8_0` /
/// `quantize_row_q8_1`: `d = amax / 127`, `id = 127 / amax` (the reference
/// uses `1 / d`), and the int8 values `round_half_even(x * id)`.
#[inline(always)]
pub(crate) fn quantize_block_x86(x: &[f32]) -> (f32, [i8; 32]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = cvt_pack_i8((v * id).round_ties_even());
    }
    (d, qs)
}

/// ggml's x86 `quantize_row_q8_0` (the AVX2 path: `127 / amax` and
/// round-half-even; ggml-quants.c's reference rounds half away from zero).
pub(crate) fn quantize_row_scalar(x: &[f32], dst: &mut [BlockQ8_0]) {
    assert_eq!(
        x.len(),
        dst.len() * QK8_0,
        "quant: q8_0 quantize length mismatch"
    );
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK8_0)) {
        let (d, qs) = quantize_block_x86(xb);
        b.d = f32_to_f16(d);
        b.qs = qs;
    }
}

pub(crate) fn quantize_row(kern: Level, x: &[f32], dst: &mut [BlockQ8_0]) {
    #[cfg(target_arch = "x86_64")]
    if kern.level() >= KernelLevel::Avx2 {
        // SAFETY: a `Kernels` at Avx2 or above proves avx2, fma and f16c.
        unsafe { avx2::quantize_row(x, dst) };
        return;
    }
    let _ = kern;
    quantize_row_scalar(x, dst);
}

/// `dequantize_row_q8_0`.
pub(crate) fn dequantize_row(src: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// The exact integer dot product of one weight block with one activation
/// block: `sum(w.qs[i] * x.qs[i])`.
#[cfg(test)]
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    w.qs.iter()
        .zip(&x.qs)
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q8_0_q8_0` float order
/// (eight lanes of four products, one FMA of `d_w * d_x` per block,
/// `hsum_float_8`), so it returns the SIMD levels' bits.
pub(crate) fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q8_0 vec_dot length mismatch");
    let mut acc = Acc8::default();
    for (a, b) in w.iter().zip(x) {
        acc.fma(
            a.d() * b.d(),
            lanes_32(|i| a.qs[i] as i32, |i| b.qs[i] as i32),
        );
    }
    acc.hsum()
}

/// AVX2 + FMA + F16C: ggml's AVX2 `quantize_row_q8_0` and
/// `ggml_vec_dot_q8_0_q8_0` (sign trick, `maddubs` + `madd`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ8_0, QK8_0};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// The block's amax, `d = amax / 127`, and its 32 values as four
    /// vectors of i32 (`round_half_even(x * 127 / amax)`), as in ggml's
    /// x86 `quantize_row_q8_0`/`q8_1`.
    ///
    /// # Safety
    ///
    /// AVX2; `x` has 32 elements.
    #[inline(always)]
    pub(crate) unsafe fn quantize_block(x: &[f32]) -> (f32, [__m256i; 4]) {
        assert_eq!(x.len(), QK8_0);
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut max_abs = _mm256_andnot_ps(sign, v[0]);
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v[1]));
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v[2]));
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v[3]));
        let mut max4 = _mm_max_ps(
            _mm256_extractf128_ps(max_abs, 1),
            _mm256_castps256_ps128(max_abs),
        );
        max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
        max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
        let max_scalar = _mm_cvtss_f32(max4);
        let d = max_scalar / 127.0;
        let id = if max_scalar != 0.0 {
            127.0 / max_scalar
        } else {
            0.0
        };
        let mul = _mm256_set1_ps(id);
        let q = v.map(|v| {
            let r = _mm256_round_ps(_mm256_mul_ps(v, mul), _MM_FROUND_TO_NEAREST_INT);
            _mm256_cvtps_epi32(r)
        });
        (d, q)
    }

    /// ggml's pack of four i32 vectors into 32 saturated i8 in order.
    ///
    /// # Safety
    ///
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn pack_i8(q: [__m256i; 4], dst: &mut [i8; 32]) {
        let i0 = _mm256_packs_epi32(q[0], q[1]);
        let i2 = _mm256_packs_epi32(q[2], q[3]);
        let i0 = _mm256_packs_epi16(i0, i2);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256(
            dst.as_mut_ptr().cast(),
            _mm256_permutevar8x32_epi32(i0, perm),
        );
    }

    /// f32 to f16 bits with F16C, round to nearest even
    /// (`GGML_CPU_FP32_TO_FP16`).
    ///
    /// # Safety
    ///
    /// F16C.
    #[inline(always)]
    pub(crate) unsafe fn f32_to_f16(x: f32) -> [u8; 2] {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
        (_mm_extract_epi16::<0>(h) as u16).to_le_bytes()
    }

    /// # Safety
    ///
    /// AVX2, FMA and F16C. Lengths are checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quantize_row(x: &[f32], dst: &mut [BlockQ8_0]) {
        assert_eq!(
            x.len(),
            dst.len() * QK8_0,
            "quant: q8_0 quantize length mismatch"
        );
        for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK8_0)) {
            // SAFETY: same CPU features as this function; 32 elements.
            unsafe {
                let (d, q) = quantize_block(xb);
                b.d = f32_to_f16(d);
                pack_i8(q, &mut b.qs);
            }
        }
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ8_0) -> __m256i {
        _mm256_loadu_si256(w.qs.as_ptr().cast())
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        Act {
            y: _mm256_loadu_si256(x.qs.as_ptr().cast()),
            off: _mm256_setzero_si256(),
            d: f16_splat(x.d),
        }
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wv: __m256i, a: &Act) -> __m256i {
        let _ = a.off;
        dot_i8i8_lanes(wv, a.y)
    }

    scaled_block_tile!(BlockQ8_0, BlockQ8_0);

    tile_drivers!("avx2,fma,f16c", BlockQ8_0, BlockQ8_0, tile, mv_rows = 4, mm = 2 x 4);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors: the weights biased to
/// unsigned (`w ^ 0x80 = w + 128`) so one `vpdpbusd` does the
/// multiply-add, starting from `-128 * sum(y)` per group of four.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::BlockQ8_0;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ8_0) -> __m256i {
        _mm256_xor_si256(
            _mm256_loadu_si256(w.qs.as_ptr().cast()),
            _mm256_set1_epi8(-128),
        )
    }

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
        let off = dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(-128), y);
        Act {
            y,
            off: _mm256_sub_epi32(_mm256_setzero_si256(), off),
            d: f16_splat(x.d),
        }
    }

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, a: &Act) -> __m256i {
        dpbusd(a.off, wu, a.y)
    }

    paired_block_tile!(BlockQ8_0, BlockQ8_0);

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ8_0,
        BlockQ8_0,
        tile,
        mv_rows = 8,
        mm = 4 x 4
    );

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn block_dot(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ8_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q8_0_q8_0(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ8_0], x: &[BlockQ8_0], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ8_0], xs: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
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
    fn q8_0_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q8_0, 7);
    }

    /// A block whose scale is exactly 1 (amax 127), so the values are the
    /// inputs rounded: ties go to even as on ggml's AVX2 path (the
    /// reference's `roundf` would give 3, -3, 1 and -1 for the ties).
    #[test]
    fn q8_0_quantize_matches_hand_computed_block() {
        let mut x = [0.0f32; 32];
        x[..8].copy_from_slice(&[127.0, 2.5, -2.5, 3.5, 0.5, -0.5, 1.49, -126.6]);
        for (i, v) in x[8..].iter_mut().enumerate() {
            *v = i as f32 - 12.0;
        }
        let mut q = [0u8; 34];
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_0, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8_0>(&q)[0];
            assert_eq!(b.d, [0x00, 0x3c], "{}: d is f16 1.0", kern.level());
            let mut want = [0i8; 32];
            want[..8].copy_from_slice(&[127, 2, -2, 4, 0, 0, 1, -127]);
            for (i, w) in want[8..].iter_mut().enumerate() {
                *w = i as i8 - 12;
            }
            assert_eq!(b.qs, want, "{}", kern.level());
        }
        // A scale that is not a power of two: amax 2.54 -> d = 0.02,
        // id = 127 / 2.54 = 50 (the reference's 1 / d is 49.999996).
        let mut x = [0.0f32; 32];
        x[0] = 2.54;
        x[1] = -0.01; // -0.5 exactly at id = 50: ties to even, 0
        x[2] = 0.03; // 1.5: ties to even, 2
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_0, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8_0>(&q)[0];
            assert_eq!(b.d, f32_to_f16(2.54f32 / 127.0));
            assert_eq!(&b.qs[..4], &[127, 0, 2, 0], "{}", kern.level());
        }
        // All zeros: d = 0, values 0.
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut q)
                .unwrap();
            assert_eq!(q, [0u8; 34]);
        }
    }

    #[test]
    fn q8_0_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ8_0 {
                d: rng.f16_scale(1e-3, 1e-1, true),
                qs: std::array::from_fn(|_| rng.byte() as i8),
            };
            let mut x = BlockQ8_0 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                qs: std::array::from_fn(|_| rng.i8_127()),
            };
            match trial {
                // Weights may hold -128 (activations never do).
                0 => (w.qs, x.qs) = ([-128; 32], [-127; 32]),
                1 => (w.qs, x.qs) = ([-128; 32], [127; 32]),
                2 => (w.qs, x.qs) = ([127; 32], [127; 32]),
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q8_0",
            4000,
            gen,
            |w, x| {
                let d = block_dot(w, x);
                let lanes = lanes_32(|i| w.qs[i] as i32, |i| x.qs[i] as i32);
                assert_eq!(lanes.iter().sum::<i32>(), d, "lanes sum to the block");
                d
            },
            &testutil::x86_twins!(avx2::block_dot, avx512::block_dot),
        );
    }

    /// The SIMD quantizer writes the scalar one's bytes on awkward inputs:
    /// ties at every scale, tiny and huge magnitudes, zeros, signed zero.
    #[test]
    fn q8_0_simd_quantize_equals_scalar() {
        let mut rng = testutil::Rng::new(81);
        let mut x: Vec<f32> = (0..32 * 64).map(|_| rng.normal(1.0)).collect();
        for (i, v) in x[..32 * 8].iter_mut().enumerate() {
            // Block 0: half-integers against amax 127 (every value a tie).
            *v = match i / 32 {
                0 => (i as f32 - 16.0) + 0.5,
                1 => 0.0,
                2 => -0.0,
                3 => 1e-30 * (i as f32 - 64.0),
                4 => 3e38 * ((i % 3) as f32 - 1.0),
                _ => *v * 1e-4,
            };
        }
        x[0] = 127.0;
        let mut want = vec![BlockQ8_0::ZERO; 64];
        quantize_row_scalar(&x, &mut want);
        for kern in testutil::all_kernels() {
            let mut got = vec![BlockQ8_0::ZERO; 64];
            quantize_row(kern, &x, &mut got);
            assert_eq!(got, want, "{}", kern.level());
        }
    }

    #[test]
    fn q8_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q8_0);
    }
}
