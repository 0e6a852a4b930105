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
    #[cfg(target_arch = "x86_64")]
    if kern.level() >= super::KernelLevel::Avx2 {
        // SAFETY: a `Kernels` at Avx2 or above proves avx2, fma and f16c.
        unsafe { avx2::quantize_row(x, dst) };
        return;
    }
    let _ = kern;
    quantize_row_scalar(x, dst);
}

/// ggml's AVX2 `quantize_row_q8_1`.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8_1, QK8_1};
    use crate::quant::q8_0::avx2::{f32_to_f16, pack_i8, quantize_block};
    use crate::quant::x86::hsum_i32_8;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// AVX2, FMA and F16C. Lengths are checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quantize_row(x: &[f32], dst: &mut [BlockQ8_1]) {
        assert_eq!(
            x.len(),
            dst.len() * QK8_1,
            "quant: q8_1 quantize length mismatch"
        );
        for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK8_1)) {
            // SAFETY: same CPU features as this function; 32 elements.
            unsafe {
                let (d, q) = quantize_block(xb);
                b.d = f32_to_f16(d);
                let sum = hsum_i32_8(_mm256_add_epi32(
                    _mm256_add_epi32(q[0], q[1]),
                    _mm256_add_epi32(q[2], q[3]),
                ));
                b.s = f32_to_f16(d * sum as f32);
                pack_i8(q, &mut b.qs);
            }
        }
    }
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

    /// The SIMD quantizer writes the scalar one's bytes, `s` included.
    #[test]
    fn q8_1_simd_quantize_equals_scalar() {
        let mut rng = testutil::Rng::new(82);
        let mut x: Vec<f32> = (0..32 * 64).map(|_| rng.normal(1.0)).collect();
        for (i, v) in x[..32 * 4].iter_mut().enumerate() {
            *v = match i / 32 {
                0 => (i as f32 - 16.0) + 0.5,
                1 => 0.0,
                2 => 1e-30 * (i as f32 - 64.0),
                _ => 3e38 * ((i % 3) as f32 - 1.0),
            };
        }
        x[0] = 127.0;
        let zero = BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [0; 32],
        };
        let mut want = vec![zero; 64];
        quantize_row_scalar(&x, &mut want);
        for kern in testutil::all_kernels() {
            let mut got = vec![zero; 64];
            quantize_row(kern, &x, &mut got);
            assert_eq!(got, want, "{}", kern.level());
        }
    }

    #[test]
    fn q8_1_round_trip() {
        testutil::check_round_trip(GgmlType::Q8_1);
    }
}
