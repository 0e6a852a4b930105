//! Q4_0: 32 4-bit values with one f16 scale; value `i` is
//! `d * (q_i - 8)`. Dotted with Q8_0 activations.

use super::order::{lanes_32, Acc8};
use super::q8_0::BlockQ8_0;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

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

/// The eight exact integer lanes of one block pair (lane `l` sums values
/// `4l..4l + 4`), as the SIMD kernels form them.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ4_0, x: &BlockQ8_0) -> [i32; 8] {
    let v = |i: usize| {
        let b = w.qs[i % 16];
        (if i < 16 { b & 0x0F } else { b >> 4 }) as i32 - 8
    };
    lanes_32(v, |i| x.qs[i] as i32)
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q4_0_q8_0` float order
/// (eight lanes, one FMA of `d_w * d_x` per block, `hsum_float_8`), so it
/// returns the SIMD levels' bits.
pub(crate) fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_0 vec_dot length mismatch");
    let mut acc = Acc8::default();
    for (a, b) in w.iter().zip(x) {
        acc.fma(a.d() * b.d(), block_lanes(a, b));
    }
    acc.hsum()
}

/// AVX2 + FMA + F16C. The float side is ggml's AVX2
/// `ggml_vec_dot_q4_0_q8_0`; the integer side keeps the nibbles unsigned
/// and subtracts `8 * sum(y)` once per activation block.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ4_0, BlockQ8_0};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ4_0) -> __m256i {
        bytes_from_nibbles_32(&w.qs)
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
        Act {
            y,
            off: sum4_times(y, 8),
            d: f16_splat(x.d),
        }
    }

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, a: &Act) -> __m256i {
        _mm256_sub_epi32(dot_u8i8_lanes(wu, a.y), a.off)
    }

    scaled_block_tile!(BlockQ4_0, BlockQ8_0);

    tile_drivers!("avx2,fma,f16c", BlockQ4_0, BlockQ8_0, tile, mv_rows = 4, mm = 2 x 4);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors: one `vpdpbusd` per block
/// from `-8 * sum(y)`.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{BlockQ4_0, BlockQ8_0};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ4_0) -> __m256i {
        bytes_from_nibbles_32(&w.qs)
    }

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn act(x: &BlockQ8_0) -> Act {
        let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
        let off = dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(8), y);
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

    paired_block_tile!(BlockQ4_0, BlockQ8_0);

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ4_0,
        BlockQ8_0,
        tile,
        mv_rows = 4,
        mm = 4 x 4
    );

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// The AVX-512 level's features.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn block_dot(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ4_0;
    type X = BlockQ8_0;

    fn vec_dot_scalar(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        vec_dot_q4_0_q8_0(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ4_0], x: &[BlockQ8_0], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ4_0], xs: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
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
    fn q4_0_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_0, 4);
    }

    #[test]
    fn q4_0_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ4_0 {
                d: rng.f16_scale(1e-3, 1e-1, true),
                qs: std::array::from_fn(|_| rng.byte()),
            };
            let mut x = BlockQ8_0 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                qs: std::array::from_fn(|_| rng.i8_127()),
            };
            match trial {
                0 => (w.qs, x.qs) = ([0; 16], [-127; 32]),
                1 => (w.qs, x.qs) = ([0xFF; 16], [127; 32]),
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q4_0",
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
    }

    #[test]
    fn q4_0_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_0);
    }
}
