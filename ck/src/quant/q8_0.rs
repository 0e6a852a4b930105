//! Q8_0: 32 int8 values with one f16 scale. Both a weight type and the
//! activation type of Q4_0, Q5_0 and Q8_0 weights.

use super::{f16_to_f32, f32_to_f16, Block, Kernels as Level, WeightKernels};

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
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    w.qs.iter()
        .zip(&x.qs)
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q8_0_q8_0`).
pub(crate) fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q8_0 vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += block_dot(a, b) as f32 * (a.d() * b.d());
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ8_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q8_0_q8_0(w, x)
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
    fn q8_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q8_0);
    }
}
