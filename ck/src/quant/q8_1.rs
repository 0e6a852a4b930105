//! Q8_1: Q8_0 plus `s = d * sum(qs)`, the activation type of Q4_1 weights
//! (the sum lets the kernel add the weights' min in one multiply).

use super::q8_0::quantize_block_x86;
use super::{f16_to_f32, f32_to_f16, Block, Kernels as Level};

pub const QK8_1: usize = 32;

/// ggml's `block_q8_1`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    /// `d * sum(qs)`, f16 bits.
    pub s: [u8; 2],
    pub qs: [i8; QK8_1],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ8_1 {}

impl BlockQ8_1 {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn s(&self) -> f32 {
        f16_to_f32(self.s)
    }
}

/// ggml's x86 `quantize_row_q8_1`: as Q8_0 (`127 / amax`, round half to
/// even), and `s = fp16(d * sum)` with `d` the f32 scale before its own
/// rounding to f16.
pub(crate) fn quantize_row_scalar(x: &[f32], dst: &mut [BlockQ8_1]) {
    assert_eq!(
        x.len(),
        dst.len() * QK8_1,
        "quant: q8_1 quantize length mismatch"
    );
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK8_1)) {
        let (d, qs) = quantize_block_x86(xb);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        b.d = f32_to_f16(d);
        b.s = f32_to_f16(d * sum as f32);
        b.qs = qs;
    }
}

pub(crate) fn quantize_row(kern: Level, x: &[f32], dst: &mut [BlockQ8_1]) {
    let _ = kern;
    quantize_row_scalar(x, dst);
}

pub(crate) fn dequantize_row(src: &[BlockQ8_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_1)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    /// As Q8_0's hand-computed block, plus `s = fp16(d * sum)`.
    #[test]
    fn q8_1_quantize_matches_hand_computed_block() {
        let mut x = [0.0f32; 32];
        x[..6].copy_from_slice(&[-127.0, 2.5, 3.5, 0.5, -0.5, 10.2]);
        let mut q = [0u8; 36];
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_1, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8_1>(&q)[0];
            assert_eq!(b.d, [0x00, 0x3c], "{}: d is f16 1.0", kern.level());
            assert_eq!(&b.qs[..6], &[-127, 2, 4, 0, 0, 10], "{}", kern.level());
            assert!(b.qs[6..].iter().all(|&v| v == 0));
            // sum = -127 + 2 + 4 + 10 = -111
            assert_eq!(b.s(), -111.0, "{}", kern.level());
        }
        // s is rounded from d * sum in f32, not from the f16 d.
        let mut x = [0.0f32; 32];
        x[0] = 1.0;
        x[1] = 0.5;
        let d = 1.0f32 / 127.0;
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_1, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8_1>(&q)[0];
            // 0.5 * 127 = 63.5 ties to even: 64.
            assert_eq!(&b.qs[..2], &[127, 64]);
            assert_eq!(b.s, f32_to_f16(d * 191.0));
        }
    }

    #[test]
    fn q8_1_round_trip() {
        testutil::check_round_trip(GgmlType::Q8_1);
    }
}
