//! F16 weights against F16 activations (`ggml_vec_dot_f16`).

use super::order::{float_dot, float_lanes, gemm_float_dot};
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

/// One IEEE half-precision element, as little-endian bytes (block size 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockF16 {
    pub bits: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockF16>() == 2);
// SAFETY: repr(C) over one byte array: alignment 1, no padding, any bits.
unsafe impl Block for BlockF16 {}

impl BlockF16 {
    #[inline(always)]
    pub fn get(self) -> f32 {
        f16_to_f32(self.bits)
    }
}

/// `ggml_cpu_fp32_to_fp16`: round to nearest even (F16C `vcvtps2ph` with
/// `_MM_FROUND_TO_NEAREST_INT` on x86; the `half` crate rounds the same
/// way, NaNs stay NaN with the quiet bit set).
pub(crate) fn quantize_row(kern: Level, x: &[f32], dst: &mut [BlockF16]) {
    #[cfg(target_arch = "x86_64")]
    if kern.level() >= KernelLevel::Avx2 {
        // SAFETY: a `Kernels` at Avx2 or above proves avx2, fma and f16c.
        unsafe { avx2::quantize_row(x, dst) };
        return;
    }
    let _ = kern;
    quantize_row_scalar(x, dst);
}

pub(crate) fn quantize_row_scalar(x: &[f32], dst: &mut [BlockF16]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        d.bits = f32_to_f16(v);
    }
}

pub(crate) fn dequantize_row(src: &[BlockF16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// The scalar level: ggml's x86 `ggml_vec_dot_f16` float order for this
/// CPU ([`float_dot`] with [`float_lanes`]), so it returns the SIMD
/// levels' bits.
pub(crate) fn vec_dot_f16_scalar(w: &[BlockF16], x: &[BlockF16]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: f16 vec_dot length mismatch");
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
    use super::BlockF16;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Eight elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX2 and F16C; `p` points at eight readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockF16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    /// `ggml_cpu_fp32_to_fp16`: `vcvtps2ph` eight at a time, the rest
    /// one at a time (same rounding).
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C. Lengths are checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quantize_row(x: &[f32], dst: &mut [BlockF16]) {
        assert_eq!(x.len(), dst.len(), "quant: f16 quantize length mismatch");
        let n8 = x.len() - x.len() % 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: same CPU features as this function; i + 8 <= len of both.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                    x.as_ptr().add(i),
                ));
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
            }
        }
        super::quantize_row_scalar(&x[n8..], &mut dst[n8..]);
    }

    float_tile!(
        BlockF16,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        load,
        hsum_f32x8_ggml
    );

    tile_drivers!("avx2,fma,f16c", BlockF16, BlockF16, tile, mv_rows = 2, mm = 1 x 2);

    gemm_float_rows!(
        gemm_rows,
        "avx2,fma,f16c",
        BlockF16,
        8,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        hsum_float_8
    );

    /// ggml's AVX-512 order (four accumulators of sixteen lanes) on AVX2,
    /// for CPUs with AVX-512F, where ggml computes it.
    pub(crate) mod x16 {
        use super::super::BlockF16;
        use crate::quant::x86::*;
        use std::arch::x86_64::*;

        /// Sixteen elements from `p` as f32.
        ///
        /// # Safety
        ///
        /// AVX2 and F16C; `p` points at sixteen readable elements.
        #[inline(always)]
        unsafe fn load(p: *const BlockF16) -> F32x16 {
            F32x16(
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
            )
        }

        float_tile!(BlockF16, F32x16, 16, zero_x16, fma_x16, add_x16, load, hsum_x16);

        tile_drivers!("avx2,fma,f16c", BlockF16, BlockF16, tile, mv_rows = 2, mm = 1 x 2);

        gemm_float_rows!(
            gemm_rows,
            "avx2,fma,f16c",
            BlockF16,
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
    use super::BlockF16;
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// Sixteen elements from `p` as f32.
    ///
    /// # Safety
    ///
    /// AVX-512F; `p` points at sixteen readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockF16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }

    float_tile!(
        BlockF16,
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
        BlockF16,
        BlockF16,
        tile,
        mv_rows = 2,
        mm = 2 x 2
    );

    gemm_float_rows!(
        gemm_rows,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockF16,
        16,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        hsum_f32x16_gcc
    );
}

/// llamafile's tinyBLAS dot products (an F32/F16 matmul of two or more
/// tokens in ggml), in this CPU's lanes ([`gemm_float_dot`]), at `kern`'s
/// level: `out[r] = dot(row r, x)`.
pub(crate) fn mat_vec_gemm(kern: Level, rows: &[BlockF16], x: &[BlockF16], out: &mut [f32]) {
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
    type W = BlockF16;
    type X = BlockF16;

    fn vec_dot_scalar(w: &[BlockF16], x: &[BlockF16]) -> f32 {
        vec_dot_f16_scalar(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockF16], x: &[BlockF16], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockF16], xs: &[BlockF16], nb: usize, out: &mut [f32]) {
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
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn f16_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::F16, 2);
    }

    /// F16C's conversion and the `half` crate's agree on ties, overflow,
    /// subnormals, infinities and NaNs.
    #[test]
    fn f16_simd_quantize_equals_scalar() {
        let mut x = vec![
            1.0 + 1.0 / 2048.0, // tie: to even (down)
            1.0 + 3.0 / 2048.0, // tie: to even (up)
            65504.0,
            65520.0, // rounds to infinity
            1e-8,    // f16 subnormal
            -3e-5,
            5.9604645e-8 / 2.0, // half the smallest subnormal: ties to 0
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::from_bits(0xffc1_2345),
            -0.0,
        ];
        let mut rng = testutil::Rng::new(16);
        x.extend((0..300).map(|_| rng.normal(100.0)));
        let mut want = vec![BlockF16::default(); x.len()];
        quantize_row_scalar(&x, &mut want);
        for kern in testutil::all_kernels() {
            let mut got = vec![BlockF16::default(); x.len()];
            quantize_row(kern, &x, &mut got);
            assert_eq!(got, want, "{}", kern.level());
        }
        assert_eq!(want[0].bits, 0x3c00u16.to_le_bytes());
        assert_eq!(want[1].bits, 0x3c02u16.to_le_bytes());
        assert_eq!(want[3].bits, 0x7c00u16.to_le_bytes());
    }

    /// ggml's one-token (`vec_dot`) and tinyBLAS orders agree across
    /// levels, partial steps included.
    #[test]
    fn f16_pass_orders_agree_across_levels() {
        testutil::check_pass_orders(GgmlType::F16, 78);
    }

    #[test]
    fn f16_round_trip() {
        testutil::check_round_trip(GgmlType::F16);
    }
}
