//! Q5_0: 32 5-bit values with one f16 scale; value `i` is
//! `d * (q_i - 16)`. Dotted with Q8_0 activations.
//!
//! Most of SmolLM2's and Gemma-3-270M's matrices are Q5_0 (their widths,
//! 576 and 640, are not multiples of the K-quants' 256), so this is the
//! kernel decode spends its time in.

use super::q8_0::BlockQ8_0;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels};

pub const QK5_0: usize = 32;

/// ggml's `block_q5_0`: byte `j` of `qs` holds the low 4 bits of value `j`
/// (low nibble) and of value `j + 16` (high nibble); bit `i` of `qh`
/// (little-endian u32) is bit 4 of value `i`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ5_0 {}

impl BlockQ5_0 {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    /// Value `i` as stored, 0..=31.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let qh = u32::from_le_bytes(self.qh);
        let lo = if i < 16 {
            self.qs[i] & 0x0F
        } else {
            self.qs[i - 16] >> 4
        };
        lo | ((((qh >> i) & 1) as u8) << 4)
    }
}

/// `quantize_row_q5_0_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ5_0]) {
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK5_0)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK5_0 / 2 + j] * id;
            let q0 = ((x0 + 16.5) as i8).min(31) as u8;
            let q1 = ((x1 + 16.5) as i8).min(31) as u8;
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK5_0 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// `dequantize_row_q5_0`.
pub(crate) fn dequantize_row(src: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK5_0)) {
        let d = b.d();
        for (i, o) in y.iter_mut().enumerate() {
            *o = (b.q(i) as i32 - 16) as f32 * d;
        }
    }
}

/// The exact integer dot product of one block pair:
/// `sum((q_i - 16) * x_i)`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ5_0, x: &BlockQ8_0) -> i32 {
    let qh = u32::from_le_bytes(w.qh);
    let mut sum = 0i32;
    for j in 0..QK5_0 / 2 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let v0 = ((w.qs[j] & 0x0F) as u32 | h0) as i32 - 16;
        let v1 = ((w.qs[j] >> 4) as u32 | h1) as i32 - 16;
        sum += v0 * x.qs[j] as i32 + v1 * x.qs[j + QK5_0 / 2] as i32;
    }
    sum
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q5_0_q8_0`).
pub(crate) fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q5_0 vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += block_dot(a, b) as f32 * (a.d() * b.d());
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ5_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q5_0_q8_0(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q5_0_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q5_0, 6);
    }

    #[test]
    fn q5_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q5_0);
    }
}
