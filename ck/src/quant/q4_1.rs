//! Q4_1: 32 4-bit values with an f16 scale and an f16 min; value `i` is
//! `d * q_i + m`. Dotted with Q8_1 activations, whose `s` carries the
//! min term.

use super::q8_1::BlockQ8_1;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels};

pub const QK4_1: usize = 32;

/// ggml's `block_q4_1`: byte `j` holds value `j` (low nibble) and `j + 16`
/// (high nibble).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    /// Min, f16 bits.
    pub m: [u8; 2],
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ4_1 {}

impl BlockQ4_1 {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn m(&self) -> f32 {
        f16_to_f32(self.m)
    }
}

/// `quantize_row_q4_1_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ4_1]) {
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK4_1)) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for j in 0..QK4_1 / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK4_1 / 2 + j] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// `dequantize_row_q4_1`.
pub(crate) fn dequantize_row(src: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_1)) {
        let (d, m) = (b.d(), b.m());
        for j in 0..QK4_1 / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK4_1 / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// The exact integer dot product of one block pair: `sum(q_i * x_i)` with
/// the unsigned 4-bit values.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ4_1, x: &BlockQ8_1) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK4_1 / 2 {
        let v0 = (w.qs[j] & 0x0F) as i32;
        let v1 = (w.qs[j] >> 4) as i32;
        sum += v0 * x.qs[j] as i32 + v1 * x.qs[j + QK4_1 / 2] as i32;
    }
    sum
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q4_1_q8_1`).
pub(crate) fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_1 vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += (a.d() * b.d()) * block_dot(a, b) as f32 + a.m() * b.s();
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ4_1;
    type X = BlockQ8_1;

    fn vec_dot_scalar(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        vec_dot_q4_1_q8_1(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q4_1_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_1, 5);
    }

    #[test]
    fn q4_1_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_1);
    }
}
