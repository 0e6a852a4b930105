//! Q4_1: 32 4-bit values with an f16 scale and an f16 min; value `i` is
//! `d * q_i + m`. Dotted with Q8_1 activations, whose `s` carries the
//! min term.

use super::order::{lanes_32, Acc8};
use super::q8_1::BlockQ8_1;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

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
#[cfg(test)]
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

/// The eight exact integer lanes of one block pair (lane `l` sums values
/// `4l..4l + 4`), as the SIMD kernels form them.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ4_1, x: &BlockQ8_1) -> [i32; 8] {
    let v = |i: usize| {
        let b = w.qs[i % 16];
        (if i < 16 { b & 0x0F } else { b >> 4 }) as i32
    };
    lanes_32(v, |i| x.qs[i] as i32)
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q4_1_q8_1` float order
/// (eight lanes, one FMA of `d_w * d_x` per block, `hsum_float_8`, plus
/// the running `m_w * s_x` sum), so it returns the SIMD levels' bits.
pub(crate) fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_1 vec_dot length mismatch");
    let mut acc = Acc8::default();
    let mut summs = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        summs = a.m().mul_add(b.s(), summs);
        acc.fma(a.d() * b.d(), block_lanes(a, b));
    }
    acc.hsum() + summs
}

/// The Q4_1 tile of both x86 levels (`lanes` differs): ggml's AVX2
/// `ggml_vec_dot_q4_1_q8_1`, one FMA of `d_w * d_x` times the lanes per
/// block into eight f32 lanes, plus a scalar running sum of `m_w * s_x`,
/// added after `hsum_float_8`.
#[cfg(target_arch = "x86_64")]
macro_rules! q4_1_tile {
    () => {
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[BlockQ4_1]; R],
            xs: [&[BlockQ8_1]; C],
            pf: Prefetch,
        ) -> [[f32; R]; C] {
            let nb = xs[0].len();
            for r in &rows {
                assert_eq!(r.len(), nb);
            }
            for x in &xs {
                assert_eq!(x.len(), nb);
            }
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            // ggml's scalar `summs`, kept in all eight lanes (each lane
            // does the same IEEE operations, so lane 0 is ggml's value).
            let mut summs = [[_mm256_setzero_ps(); R]; C];
            for b in 0..nb {
                pf.step(b);
                let mut wu = [_mm256_setzero_si256(); R];
                let mut dw = [_mm256_setzero_ps(); R];
                let mut mw = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let w = &rows[r][b];
                    wu[r] = bytes_from_nibbles_32(&w.qs);
                    dw[r] = f16_splat(w.d);
                    mw[r] = f16_splat(w.m);
                }
                for c in 0..C {
                    let x = &xs[c][b];
                    let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    let (dx, sx) = (f16_splat(x.d), f16_splat(x.s));
                    for r in 0..R {
                        // ggml writes `summs += m * s`, which GCC contracts
                        // to an FMA; the product of two f16 values is exact
                        // in f32, so fused or not gives the same bits.
                        summs[c][r] = _mm256_fmadd_ps(mw[r], sx, summs[c][r]);
                        let d = _mm256_mul_ps(dw[r], dx);
                        let q = _mm256_cvtepi32_ps(lanes(wu[r], y));
                        acc[c][r] = _mm256_fmadd_ps(d, q, acc[c][r]);
                    }
                }
            }
            let mut out = [[0.0f32; R]; C];
            for c in 0..C {
                for r in 0..R {
                    out[c][r] = hsum_float_8(acc[c][r]) + _mm256_cvtss_f32(summs[c][r]);
                }
            }
            out
        }

        /// The exact integer dot product of one block pair, through the
        /// kernels' lanes.
        ///
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[cfg(test)]
        #[inline(always)]
        pub(crate) unsafe fn block_dot_lanes(w: &BlockQ4_1, x: &BlockQ8_1) -> i32 {
            hsum_i32_8(lanes(
                bytes_from_nibbles_32(&w.qs),
                _mm256_loadu_si256(x.qs.as_ptr().cast()),
            ))
        }
    };
}

/// AVX2 + FMA + F16C (`maddubs` + `madd`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ4_1, BlockQ8_1};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, y: __m256i) -> __m256i {
        dot_u8i8_lanes(wu, y)
    }

    q4_1_tile!();

    tile_drivers!("avx2,fma,f16c", BlockQ4_1, BlockQ8_1, tile, mv_rows = 4, mm = 2 x 4);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ4_1, x: &BlockQ8_1) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors (`vpdpbusd`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{BlockQ4_1, BlockQ8_1};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, y: __m256i) -> __m256i {
        dpbusd(_mm256_setzero_si256(), wu, y)
    }

    q4_1_tile!();

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ4_1,
        BlockQ8_1,
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
    pub(crate) unsafe fn block_dot(w: &BlockQ4_1, x: &BlockQ8_1) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ4_1;
    type X = BlockQ8_1;

    fn vec_dot_scalar(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        vec_dot_q4_1_q8_1(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ4_1], x: &[BlockQ8_1], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ4_1], xs: &[BlockQ8_1], nb: usize, out: &mut [f32]) {
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
    fn q4_1_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_1, 5);
    }

    #[test]
    fn q4_1_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ4_1 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                m: rng.f16_scale(1e-2, 1.0, true),
                qs: std::array::from_fn(|_| rng.byte()),
            };
            let mut x = BlockQ8_1 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                s: rng.f16_scale(1e-3, 1.0, true),
                qs: std::array::from_fn(|_| rng.i8_127()),
            };
            match trial {
                0 => (w.qs, x.qs) = ([0xFF; 16], [-127; 32]),
                1 => (w.qs, x.qs) = ([0xFF; 16], [127; 32]),
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q4_1",
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
    fn q4_1_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_1);
    }
}
