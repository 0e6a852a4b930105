//! Q5_0: 32 5-bit values with one f16 scale; value `i` is
//! `d * (q_i - 16)`. Dotted with Q8_0 activations.
//!
//! Most of SmolLM2's and Gemma-3-270M's matrices are Q5_0 (their widths,
//! 576 and 640, are not multiples of the K-quants' 256), so this is the
//! kernel decode spends its time in.

use super::order::{lanes_32, Acc8};
use super::q8_0::BlockQ8_0;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

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
#[cfg(test)]
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

/// The eight exact integer lanes of one block pair (lane `l` sums values
/// `4l..4l + 4`), as the SIMD kernels form them.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ5_0, x: &BlockQ8_0) -> [i32; 8] {
    lanes_32(|i| w.q(i) as i32 - 16, |i| x.qs[i] as i32)
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q5_0_q8_0` float order
/// (eight lanes, one FMA of `d_w * d_x` per block, `hsum_float_8`), so it
/// returns the SIMD levels' bits.
pub(crate) fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q5_0 vec_dot length mismatch");
    let mut acc = Acc8::default();
    for (a, b) in w.iter().zip(x) {
        acc.fma(a.d() * b.d(), block_lanes(a, b));
    }
    acc.hsum()
}

/// AVX2 + FMA + F16C. The float side is ggml's AVX2
/// `ggml_vec_dot_q5_0_q8_0` (see [`scaled_block_tile`](crate::quant::x86)).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ5_0, BlockQ8_0};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// The 5-bit values as unsigned bytes: nibbles, plus 16 where the
    /// `qh` bit is set (ggml's `bytes_from_bits_32` trick, kept unsigned
    /// so the offset can be taken once per activation block).
    ///
    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ5_0) -> __m256i {
        let hi = bytes_from_bits_32(u32::from_le_bytes(w.qh));
        _mm256_or_si256(
            bytes_from_nibbles_32(&w.qs),
            _mm256_and_si256(hi, _mm256_set1_epi8(0x10)),
        )
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
        Act {
            y,
            off: sum4_times(y, 16),
            d: f16_splat(x.d),
        }
    }

    /// `sum((q - 16) * y)` per group of four: `q * y` minus `16 * y`.
    ///
    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, a: &Act) -> __m256i {
        _mm256_sub_epi32(dot_u8i8_lanes(wu, a.y), a.off)
    }

    scaled_block_tile!(BlockQ5_0, BlockQ8_0);

    tile_drivers!("avx2,fma,f16c", BlockQ5_0, BlockQ8_0, tile, mv_rows = 4, mm = 2 x 4);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ5_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors: the `qh` bits go straight
/// into a mask register (`vpaddb` under mask adds the 16s), and `vpdpbusd`
/// does the multiply-add in one instruction, starting from the negated
/// offset term.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{BlockQ5_0, BlockQ8_0};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ5_0) -> __m256i {
        let nib = bytes_from_nibbles_32(&w.qs);
        let k = _cvtu32_mask32(u32::from_le_bytes(w.qh));
        _mm256_mask_add_epi8(nib, k, nib, _mm256_set1_epi8(16))
    }

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
        let off = dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(16), y);
        Act {
            y,
            off: _mm256_sub_epi32(_mm256_setzero_si256(), off),
            d: f16_splat(x.d),
        }
    }

    /// `-16 * y + q * y` per group of four, in one `vpdpbusd`.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, a: &Act) -> __m256i {
        dpbusd(a.off, wu, a.y)
    }

    paired_block_tile!(BlockQ5_0, BlockQ8_0);

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ5_0,
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
    pub(crate) unsafe fn block_dot(w: &BlockQ5_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ5_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q5_0_q8_0(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ5_0], x: &[BlockQ8_0], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ5_0], xs: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
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
    fn q5_0_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q5_0, 6);
    }

    /// The SIMD twins' integer block sums equal the scalar ones exactly,
    /// on random blocks and the extreme ones.
    #[test]
    fn q5_0_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ5_0 {
                d: rng.f16_scale(1e-3, 1e-1, true),
                qh: std::array::from_fn(|_| rng.byte()),
                qs: std::array::from_fn(|_| rng.byte()),
            };
            let mut x = BlockQ8_0 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                qs: std::array::from_fn(|_| rng.i8_127()),
            };
            match trial {
                // All weights -16 against -127, then all +15 against 127.
                0 => (w.qh, w.qs, x.qs) = ([0; 4], [0; 16], [-127; 32]),
                1 => (w.qh, w.qs, x.qs) = ([0xFF; 4], [0xFF; 16], [127; 32]),
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q5_0",
            4000,
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
        let w = BlockQ5_0 {
            d: [0; 2],
            qh: [0; 4],
            qs: [0; 16],
        };
        assert_eq!(
            block_dot(
                &w,
                &BlockQ8_0 {
                    d: [0; 2],
                    qs: [-127; 32]
                }
            ),
            16 * 127 * 32
        );
    }

    #[test]
    fn q5_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q5_0);
    }
}
