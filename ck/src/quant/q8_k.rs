//! Q8_K: 256 int8 values with an f32 scale and the sums of each 16 values,
//! the activation type of the K-quants (the sums fold the weights' mins
//! and offsets into a few multiplies).

use super::kquant::nearest_int;
use super::{Block, QK_K};

/// ggml's `block_q8_K`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8K {
    /// Scale, f32 bits (little-endian).
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    /// `sum(qs[16 * j .. 16 * j + 16])` as 16 little-endian i16.
    pub bsums: [u8; QK_K / 16 * 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ8K {}

impl BlockQ8K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * j], self.bsums[2 * j + 1]])
    }
}

/// `quantize_row_q8_K_ref`, which is also what ggml runs on x86
/// (`quantize_row_q8_K` calls it): the value of largest magnitude (first
/// one on ties) maps to -127 via `iscale = -127 / max`, values round half
/// to even (`nearest_int`), `d = 1 / iscale`. An all-zero block gets
/// `d = 0`, zero values and zero sums (ggml leaves its sums unwritten).
pub(crate) fn quantize_row(x: &[f32], dst: &mut [BlockQ8K]) {
    assert_eq!(
        x.len(),
        dst.len() * QK_K,
        "quant: q8_K quantize length mismatch"
    );
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            b.d = 0.0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [0; 32];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            b.bsums[2 * j..2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

pub(crate) fn dequantize_row(src: &[BlockQ8K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q8_k_quantize_matches_hand_computed_block() {
        // The largest magnitude is negative (-127 at index 0): iscale =
        // -127 / -127 = 1, so values are the inputs rounded half to even.
        let mut x = [0.0f32; QK_K];
        x[..8].copy_from_slice(&[-127.0, 2.5, 3.5, -0.5, 1.5, 100.0, -3.2, 0.4]);
        x[16] = 50.0;
        x[255] = 126.6;
        let mut q = [0u8; 292];
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_K, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8K>(&q)[0];
            assert_eq!(b.d(), 1.0);
            assert_eq!(&b.qs[..8], &[-127, 2, 4, 0, 2, 100, -3, 0]);
            assert_eq!(b.qs[16], 50);
            assert_eq!(b.qs[255], 127);
            // bsums: -127 + 2 + 4 + 2 + 100 - 3 = -22; then 50; last 127.
            assert_eq!(b.bsum(0), -22);
            assert_eq!(b.bsum(1), 50);
            assert_eq!(b.bsum(15), 127);
            assert!((2..15).all(|j| b.bsum(j) == 0));
        }
        // A positive max maps to -127: iscale = -127 / 10 = -12.7.
        let mut x = [0.0f32; QK_K];
        x[0] = 10.0;
        x[1] = 5.0; // -63.5: ties to even, -64
        x[2] = -10.0; // same magnitude later: the first one wins, +127
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_K, &x, &mut q).unwrap();
            let b = crate::quant::cast::<BlockQ8K>(&q)[0];
            assert_eq!(b.d(), 1.0f32 / (-127.0f32 / 10.0));
            assert_eq!(&b.qs[..3], &[-127, -64, 127]);
            assert_eq!(b.bsum(0), -64);
        }
        // All zeros.
        for kern in testutil::all_kernels() {
            kern.quantize_row(GgmlType::Q8_K, &[0.0; QK_K], &mut q)
                .unwrap();
            assert!(q.iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn q8_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q8_K);
    }
}
