//! BF16 weights against BF16 activations (`ggml_vec_dot_bf16`).

use super::{mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level, WeightKernels};

/// One bfloat16 element, as little-endian bytes (block size 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockBF16 {
    pub bits: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockBF16>() == 2);
// SAFETY: repr(C) over one byte array: alignment 1, no padding, any bits.
unsafe impl Block for BlockBF16 {}

impl BlockBF16 {
    /// Exact: bf16 is the top half of an f32.
    #[inline(always)]
    pub fn get(self) -> f32 {
        f32::from_bits((u16::from_le_bytes(self.bits) as u32) << 16)
    }
}

/// ggml's `ggml_compute_fp32_to_bf16`: NaN keeps its top bits with the
/// quiet bit forced; everything else rounds to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `ggml_cpu_fp32_to_bf16` (scalar on every x86 build of ggml).
pub(crate) fn quantize_row(x: &[f32], dst: &mut [BlockBF16]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        d.bits = f32_to_bf16_bits(v).to_le_bytes();
    }
}

pub(crate) fn dequantize_row(src: &[BlockBF16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// Scalar reference: exact bf16 products (they fit an f32) summed in f64,
/// like ggml's generic `ggml_vec_dot_bf16`.
pub(crate) fn vec_dot_bf16_scalar(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: bf16 vec_dot length mismatch");
    let mut sum = 0.0f64;
    for (a, b) in w.iter().zip(x) {
        sum += (a.get() * b.get()) as f64;
    }
    sum as f32
}

/// AVX2 + FMA + F16C: ggml's AVX2 structure (four 8-lane accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::BlockBF16;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Eight elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX2 and F16C; `p` points at eight readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockBF16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
            16,
        ))
    }

    float_tile!(
        BlockBF16,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        load,
        hsum_f32x8_ggml
    );

    tile_drivers!("avx2,fma,f16c", BlockBF16, BlockBF16, tile, mv_rows = 2, mm = 1 x 2);
}

/// AVX-512F: ggml's AVX-512 structure (four 16-lane accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::BlockBF16;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Sixteen elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX-512F; `p` points at sixteen readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockBF16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())),
            16,
        ))
    }

    float_tile!(
        BlockBF16,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        load,
        hsum_f32x16_gcc
    );

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockBF16,
        BlockBF16,
        tile,
        mv_rows = 2,
        mm = 2 x 2
    );
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockBF16;
    type X = BlockBF16;

    fn vec_dot_scalar(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
        vec_dot_bf16_scalar(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockBF16], x: &[BlockBF16], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockBF16], xs: &[BlockBF16], nb: usize, out: &mut [f32]) {
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
    fn bf16_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::BF16, 3);
    }

    #[test]
    fn bf16_round_trip() {
        testutil::check_round_trip(GgmlType::BF16);
    }

    #[test]
    fn bf16_rounding_matches_ggml() {
        // 1.0 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        // ... and 1.0 + 3*2^-8 ties up to the even neighbour.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(-2.0), 0xc000);
        // A signalling NaN becomes quiet, keeping its top bits.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        // Overflow rounds to infinity.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(
            BlockBF16 {
                bits: 0x3fc0u16.to_le_bytes()
            }
            .get(),
            1.5
        );
    }
}
