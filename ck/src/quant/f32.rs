//! F32 weights against F32 activations (`ggml_vec_dot_f32`).

use super::order::{float_dot, float_lanes, gemm_float_dot};
use super::{mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level, WeightKernels};

/// One f32 element, as little-endian bytes (block size 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockF32 {
    pub bytes: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<BlockF32>() == 4);
// SAFETY: repr(C) over one byte array: alignment 1, no padding, any bits.
unsafe impl Block for BlockF32 {}

impl BlockF32 {
    #[inline(always)]
    pub fn get(self) -> f32 {
        f32::from_le_bytes(self.bytes)
    }
}

pub(crate) fn quantize_row(x: &[f32], dst: &mut [BlockF32]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        d.bytes = v.to_le_bytes();
    }
}

pub(crate) fn dequantize_row(src: &[BlockF32], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// The scalar level: ggml's x86 `ggml_vec_dot_f32` float order for this
/// CPU ([`float_dot`] with [`float_lanes`]), so it returns the SIMD
/// levels' bits.
pub(crate) fn vec_dot_f32_scalar(w: &[BlockF32], x: &[BlockF32]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: f32 vec_dot length mismatch");
    let (wf, xf) = (|i: usize| w[i].get(), |i: usize| x[i].get());
    if float_lanes() == 16 {
        float_dot::<16>(w.len(), wf, xf)
    } else {
        float_dot::<8>(w.len(), wf, xf)
    }
}

/// AVX2 + FMA + F16C: ggml's AVX2 structure (four 8-lane accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::BlockF32;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Eight elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX2 and F16C; `p` points at eight readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockF32) -> __m256 {
        _mm256_loadu_ps(p.cast())
    }

    float_tile!(
        BlockF32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        load,
        hsum_f32x8_ggml
    );

    tile_drivers!("avx2,fma,f16c", BlockF32, BlockF32, tile, mv_rows = 2, mm = 1 x 2);

    gemm_float_rows!(
        gemm_rows,
        "avx2,fma,f16c",
        BlockF32,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        hsum_float_8
    );

    /// ggml's AVX-512 order (four accumulators of sixteen lanes) on AVX2,
    /// for CPUs with AVX-512F, where ggml computes it.
    pub(crate) mod x16 {
        use super::super::BlockF32;
        use crate::quant::x86::*;
        use std::arch::x86_64::*;

        /// Sixteen elements from `p` as f32.
        ///
        /// # Safety
        ///
        /// AVX2 and F16C; `p` points at sixteen readable elements.
        #[inline(always)]
        unsafe fn load(p: *const BlockF32) -> F32x16 {
            F32x16(_mm256_loadu_ps(p.cast()), _mm256_loadu_ps(p.add(8).cast()))
        }

        float_tile!(BlockF32, F32x16, 16, zero_x16, fma_x16, add_x16, load, hsum_x16);

        tile_drivers!("avx2,fma,f16c", BlockF32, BlockF32, tile, mv_rows = 2, mm = 1 x 2);

        gemm_float_rows!(
            gemm_rows,
            "avx2,fma,f16c",
            BlockF32,
            16,
            zero_x16,
            fma_x16,
            hsum_x16
        );
    }
}

/// AVX-512F: ggml's AVX-512 structure (four 16-lane accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::BlockF32;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Sixteen elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX-512F; `p` points at sixteen readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockF32) -> __m512 {
        _mm512_loadu_ps(p.cast())
    }

    float_tile!(
        BlockF32,
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
        BlockF32,
        BlockF32,
        tile,
        mv_rows = 2,
        mm = 2 x 2
    );

    gemm_float_rows!(
        gemm_rows,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockF32,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        hsum_f32x16_gcc
    );
}

/// llamafile's tinyBLAS dot products (an F32/F16 matmul of two or more
/// tokens in ggml), in this CPU's lanes ([`gemm_float_dot`]), at `kern`'s
/// level: `out[r] = dot(row r, x)`.
pub(crate) fn mat_vec_gemm(kern: Level, rows: &[BlockF32], x: &[BlockF32], out: &mut [f32]) {
    let k = x.len();
    assert_eq!(
        rows.len(),
        k * out.len(),
        "quant: mat_vec rows/blocks mismatch"
    );
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let x16 = float_lanes() == 16;
    match kern.level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Kernels` at this level proves the CPU features.
        KernelLevel::Avx512 => unsafe { avx512::gemm_rows(rows, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelLevel::Avx2 if x16 => unsafe { avx2::x16::gemm_rows(rows, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelLevel::Avx2 => unsafe { avx2::gemm_rows(rows, x, out) },
        _ => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
                let (wf, xf) = (|i: usize| row[i].get(), |i: usize| x[i].get());
                *o = if x16 {
                    gemm_float_dot::<16>(k, wf, xf)
                } else {
                    gemm_float_dot::<8>(k, wf, xf)
                };
            }
        }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockF32;
    type X = BlockF32;

    fn vec_dot_scalar(w: &[BlockF32], x: &[BlockF32]) -> f32 {
        vec_dot_f32_scalar(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockF32], x: &[BlockF32], out: &mut [f32]) {
        match kern.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features.
            KernelLevel::Avx512 => unsafe { avx512::mat_vec(rows, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 if float_lanes() == 16 => unsafe { avx2::x16::mat_vec(rows, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_vec(rows, x, out) },
            _ => mat_vec_scalar::<Self>(rows, x, out),
        }
    }

    fn mat_mat(kern: Level, rows: &[BlockF32], xs: &[BlockF32], nb: usize, out: &mut [f32]) {
        match kern.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features.
            KernelLevel::Avx512 => unsafe { avx512::mat_mat(rows, xs, nb, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 if float_lanes() == 16 => unsafe {
                avx2::x16::mat_mat(rows, xs, nb, out)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_mat(rows, xs, nb, out) },
            _ => mat_mat_scalar::<Self>(rows, xs, nb, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn f32_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::F32, 1);
    }

    /// ggml's one-token (`vec_dot`) and tinyBLAS orders agree across
    /// levels, partial steps included.
    #[test]
    fn f32_pass_orders_agree_across_levels() {
        testutil::check_pass_orders(GgmlType::F32, 79);
    }

    #[test]
    fn f32_round_trip() {
        testutil::check_round_trip(GgmlType::F32);
    }
}
