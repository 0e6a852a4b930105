//! Q5_1: 32 5-bit values with an f16 scale and an f16 min; value `i` is
//! `d * q_i + m`. Dotted with Q8_1 activations, whose `s` carries the
//! min term.
//!
//! SmolLM2's Q5_K_M files are mostly Q5_1: their widths (576) are not
//! multiples of the K-quants' 256, so llama.cpp's quantizer falls back to
//! it for most matrices.

use super::order::{lanes_32, Acc8};
use super::q8_1::BlockQ8_1;
use super::{
    f16_to_f32, f32_to_f16, mat_mat_scalar, mat_vec_scalar, Block, KernelLevel, Kernels as Level,
    WeightKernels,
};

pub const QK5_1: usize = 32;

/// ggml's `block_q5_1`: byte `j` of `qs` holds the low 4 bits of value `j`
/// (low nibble) and of value `j + 16` (high nibble); bit `i` of `qh`
/// (little-endian u32) is bit 4 of value `i`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// Scale, f16 bits.
    pub d: [u8; 2],
    /// Min, f16 bits.
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ5_1 {}

impl BlockQ5_1 {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn m(&self) -> f32 {
        f16_to_f32(self.m)
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

/// `quantize_row_q5_1_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ5_1]) {
    for (b, xb) in dst.iter_mut().zip(x.chunks_exact(QK5_1)) {
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
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK5_1 / 2 + j] - min) * id;
            // ggml: `(uint8_t)(x + 0.5f)`; x is in 0..=31 (plus rounding).
            let q0 = (x0 + 0.5) as u8;
            let q1 = (x1 + 0.5) as u8;
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK5_1 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// `dequantize_row_q5_1`.
pub(crate) fn dequantize_row(src: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK5_1)) {
        let (d, m) = (b.d(), b.m());
        for (i, o) in y.iter_mut().enumerate() {
            *o = b.q(i) as f32 * d + m;
        }
    }
}

/// The exact integer dot product of one block pair: `sum(q_i * x_i)` with
/// the unsigned 5-bit values.
#[cfg(test)]
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ5_1, x: &BlockQ8_1) -> i32 {
    (0..QK5_1).map(|i| w.q(i) as i32 * x.qs[i] as i32).sum()
}

/// The eight exact integer lanes of one block pair (lane `l` sums values
/// `4l..4l + 4`), as the SIMD kernels form them.
#[inline(always)]
pub(crate) fn block_lanes(w: &BlockQ5_1, x: &BlockQ8_1) -> [i32; 8] {
    lanes_32(|i| w.q(i) as i32, |i| x.qs[i] as i32)
}

/// The scalar level: ggml's AVX2 `ggml_vec_dot_q5_1_q8_1` float order
/// (eight lanes, one FMA of `d_w * d_x` per block, `hsum_float_8`, plus
/// the running `m_w * s_x` sum), so it returns the SIMD levels' bits.
pub(crate) fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q5_1 vec_dot length mismatch");
    let mut acc = Acc8::default();
    let mut summs = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        summs = a.m().mul_add(b.s(), summs);
        acc.fma(a.d() * b.d(), block_lanes(a, b));
    }
    acc.hsum() + summs
}

/// The Q5_1 tile of both x86 levels (`weights` and `lanes` differ):
/// ggml's AVX2 `ggml_vec_dot_q5_1_q8_1`, one FMA of `d_w * d_x` times the
/// lanes per block into eight f32 lanes, plus a scalar running sum of
/// `m_w * s_x`, added after `hsum_float_8`.
#[cfg(target_arch = "x86_64")]
macro_rules! q5_1_tile {
    () => {
        /// # Safety
        ///
        /// The CPU features of this module's kernels.
        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(
            rows: [&[BlockQ5_1]; R],
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
                    wu[r] = weights(w);
                    dw[r] = f16_splat(w.d);
                    mw[r] = f16_splat(w.m);
                }
                for c in 0..C {
                    let x = &xs[c][b];
                    let y = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    let (dx, sx) = (f16_splat(x.d), f16_splat(x.s));
                    for r in 0..R {
                        // ggml writes `summs += m * s` (GCC contracts it to
                        // an FMA); the product of two f16 values is exact
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
        pub(crate) unsafe fn block_dot_lanes(w: &BlockQ5_1, x: &BlockQ8_1) -> i32 {
            hsum_i32_8(lanes(weights(w), _mm256_loadu_si256(x.qs.as_ptr().cast())))
        }
    };
}

/// AVX2 + FMA + F16C (`maddubs` + `madd`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{BlockQ5_1, BlockQ8_1};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// The 5-bit values as bytes: nibbles, plus 16 where the `qh` bit is
    /// set (ggml's `bytes_from_bits_32` and `0x10` mask).
    ///
    /// # Safety
    ///
    /// AVX2 (the features of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ5_1) -> __m256i {
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
    unsafe fn lanes(wu: __m256i, y: __m256i) -> __m256i {
        dot_u8i8_lanes(wu, y)
    }

    q5_1_tile!();

    tile_drivers!("avx2,fma,f16c", BlockQ5_1, BlockQ8_1, tile, mv_rows = 4, mm = 2 x 4);

    /// [`block_dot_lanes`] as a test entry point.
    ///
    /// # Safety
    ///
    /// AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn block_dot(w: &BlockQ5_1, x: &BlockQ8_1) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

/// AVX-512 (BW, VL) + VNNI on 256-bit vectors: the `qh` bits straight into
/// a mask register (`vpaddb` under mask adds the 16s) and `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{BlockQ5_1, BlockQ8_1};
    use crate::quant::x86::*;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn weights(w: &BlockQ5_1) -> __m256i {
        let nib = bytes_from_nibbles_32(&w.qs);
        let k = _cvtu32_mask32(u32::from_le_bytes(w.qh));
        _mm256_mask_add_epi8(nib, k, nib, _mm256_set1_epi8(16))
    }

    /// # Safety
    ///
    /// The AVX-512 level's features (those of this module's kernels).
    #[inline(always)]
    unsafe fn lanes(wu: __m256i, y: __m256i) -> __m256i {
        dpbusd(_mm256_setzero_si256(), wu, y)
    }

    q5_1_tile!();

    tile_drivers!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        BlockQ5_1,
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
    pub(crate) unsafe fn block_dot(w: &BlockQ5_1, x: &BlockQ8_1) -> i32 {
        // SAFETY: same CPU features as this function.
        unsafe { block_dot_lanes(w, x) }
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ5_1;
    type X = BlockQ8_1;

    fn vec_dot_scalar(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
        vec_dot_q5_1_q8_1(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockQ5_1], x: &[BlockQ8_1], out: &mut [f32]) {
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

    fn mat_mat(kern: Level, rows: &[BlockQ5_1], xs: &[BlockQ8_1], nb: usize, out: &mut [f32]) {
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
    fn q5_1_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q5_1, 15);
    }

    /// The SIMD twins' integer block sums equal the scalar ones exactly,
    /// on random blocks and the extreme ones; the lanes sum to the block.
    #[test]
    fn q5_1_simd_block_sums_equal_scalar() {
        let gen = |rng: &mut testutil::Rng, trial: usize| {
            let mut w = BlockQ5_1 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                m: rng.f16_scale(1e-2, 1.0, true),
                qh: std::array::from_fn(|_| rng.byte()),
                qs: std::array::from_fn(|_| rng.byte()),
            };
            let mut x = BlockQ8_1 {
                d: rng.f16_scale(1e-3, 1e-1, false),
                s: rng.f16_scale(1e-3, 1.0, true),
                qs: std::array::from_fn(|_| rng.i8_127()),
            };
            match trial {
                // All values 31 against -127, then against 127.
                0 => (w.qh, w.qs, x.qs) = ([0xFF; 4], [0xFF; 16], [-127; 32]),
                1 => (w.qh, w.qs, x.qs) = ([0xFF; 4], [0xFF; 16], [127; 32]),
                _ => {}
            }
            (w, x)
        };
        testutil::check_block_sums(
            "q5_1",
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
        let w = BlockQ5_1 {
            d: [0; 2],
            m: [0; 2],
            qh: [0xFF; 4],
            qs: [0xFF; 16],
        };
        let x = BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [-127; 32],
        };
        assert_eq!(block_dot(&w, &x), -31 * 127 * 32);
    }

    /// A hand-built block: values 0..=31 with d = 0.5, m = -1.
    #[test]
    fn q5_1_dequantizes_a_hand_built_block() {
        let mut x = [0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = -1.0 + 0.5 * i as f32;
        }
        let mut q = [0u8; 24];
        Level::scalar()
            .quantize_row(GgmlType::Q5_1, &x, &mut q)
            .unwrap();
        let b = crate::quant::cast::<BlockQ5_1>(&q)[0];
        assert_eq!(b.d(), 15.5 / 31.0);
        assert_eq!(b.m(), -1.0);
        for i in 0..32 {
            assert_eq!(b.q(i) as usize, i, "value {i}");
        }
        // Values 16..=31 set bit 4: the upper half of qh.
        assert_eq!(u32::from_le_bytes(b.qh), 0xFFFF_0000);
        let mut back = [0f32; 32];
        crate::quant::dequantize_row(GgmlType::Q5_1, &q, &mut back).unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn q5_1_round_trip() {
        testutil::check_round_trip(GgmlType::Q5_1);
    }
}
