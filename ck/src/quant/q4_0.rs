//! Q4_0: 32 4-bit values with one f16 scale; value `i` is
//! `d * (q_i - 8)`. Dotted with Q8_0 activations.

use super::q8_0::BlockQ8_0;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels};

pub const QK4_0: usize = 32;

/// ggml's `block_q4_0`: byte `j` holds value `j` in its low nibble and
/// value `j + 16` in its high nibble.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ4_0 {}

impl BlockQ4_0 {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

/// `quantize_row_q4_0_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ4_0]) {
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK4_0)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for j in 0..QK4_0 / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK4_0 / 2 + j] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// `dequantize_row_q4_0`.
pub(crate) fn dequantize_row(src: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
        let d = b.d();
        for j in 0..QK4_0 / 2 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK4_0 / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// The exact integer dot product of one block pair.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK4_0 / 2 {
        let v0 = (w.qs[j] & 0x0F) as i32 - 8;
        let v1 = (w.qs[j] >> 4) as i32 - 8;
        sum += v0 * x.qs[j] as i32 + v1 * x.qs[j + QK4_0 / 2] as i32;
    }
    sum
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q4_0_q8_0`).
pub(crate) fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_0 vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += block_dot(a, b) as f32 * (a.d() * b.d());
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ4_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q4_0_q8_0(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q4_0_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_0, 4);
    }

    #[test]
    fn q4_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_0);
    }
}
