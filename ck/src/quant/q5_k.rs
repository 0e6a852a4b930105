//! Q5_K: Q4_K with a fifth bit per value (`qh`); values 0..=31. Dotted
//! with Q8_K.

use super::kquant::{make_qkx2_quants, nearest_int, pack_scales_mins_k4, scales_mins_k4};
use super::q8_k::BlockQ8K;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels, QK_K};

/// ggml's `block_q5_K`. Low nibbles as in Q4_K; bit `2c` of `qh[l]` is
/// bit 4 of value `64c + l`, bit `2c + 1` that of value `64c + 32 + l`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5K {
    /// Super-block scale of the scales, f16 bits.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 bits.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed as in Q4_K.
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ5K {}

impl BlockQ5K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(self.dmin)
    }

    /// Value `i` as stored, 0..=31.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let (c, r) = (i / 64, i % 64);
        let byte = self.qs[32 * c + r % 32];
        let lo = if r < 32 { byte & 0x0F } else { byte >> 4 };
        let bit = 2 * c + r / 32;
        lo | (((self.qh[r % 32] >> bit) & 1) << 4)
    }
}

/// `quantize_row_q5_K_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ5K]) {
    for (b, x) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 32];
        let mut weights = [0f32; 32];
        let mut mins = [0f32; 8];
        let mut scales = [0f32; 8];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 32 {
            let xs = &x[32 * j..32 * j + 32];
            let mut sum_x2 = 0.0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (s, m) = make_qkx2_quants(
                31,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut laux,
                -0.5,
                0.1,
                15,
                false,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..8 {
            ls[j] = nearest_int(inv_scale * scales[j]) as u8;
            lm[j] = nearest_int(inv_min * mins[j]) as u8;
        }
        b.scales = pack_scales_mins_k4(&ls, &lm);
        b.d = f32_to_f16(max_scale / 63.0);
        b.dmin = f32_to_f16(max_min / 63.0);
        let (sc, m) = scales_mins_k4(&b.scales);
        for j in 0..QK_K / 32 {
            let d = b.d() * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin() * m[j] as f32;
            for ii in 0..32 {
                let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 31);
                l[32 * j + ii] = q as u8;
            }
        }
        b.qh = [0; QK_K / 8];
        let (mut m1, mut m2) = (1u8, 2u8);
        for c in 0..4 {
            for j in 0..32 {
                let mut l1 = l[64 * c + j];
                if l1 > 15 {
                    l1 -= 16;
                    b.qh[j] |= m1;
                }
                let mut l2 = l[64 * c + 32 + j];
                if l2 > 15 {
                    l2 -= 16;
                    b.qh[j] |= m2;
                }
                b.qs[32 * c + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// `dequantize_row_q5_K`.
pub(crate) fn dequantize_row(src: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let (sc, m) = scales_mins_k4(&b.scales);
        for (i, o) in y.iter_mut().enumerate() {
            let j = i / 32;
            *o = d * sc[j] as f32 * b.q(i) as f32 - min * m[j] as f32;
        }
    }
}

/// The exact integer parts of one super-block's dot product, as for
/// Q4_K: `(sum_j sc_j * sum_i q_i * x_i, sum_j m_j * bsums of j)`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ5K, x: &BlockQ8K) -> (i32, i32) {
    let (sc, m) = scales_mins_k4(&w.scales);
    let mut sumi = 0i32;
    for c in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let byte = w.qs[32 * c + l];
            let h = w.qh[l] >> (2 * c);
            let q0 = (byte & 0x0F) | ((h & 1) << 4);
            let q1 = (byte >> 4) | (((h >> 1) & 1) << 4);
            lo += q0 as i32 * x.qs[64 * c + l] as i32;
            hi += q1 as i32 * x.qs[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let mut summ = 0i32;
    for j in 0..8 {
        summ += m[j] as i32 * (x.bsum(2 * j) as i32 + x.bsum(2 * j + 1) as i32);
    }
    (sumi, summ)
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q5_K_q8_K`, with one
/// accumulator).
pub(crate) fn vec_dot_q5k_q8k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q5_K vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sumi, summ) = block_dot(a, b);
        let d = a.d() * b.d();
        let dmin = a.dmin() * b.d();
        sum += d * sumi as f32;
        sum -= dmin * summ as f32;
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ5K;
    type X = BlockQ8K;

    fn vec_dot_scalar(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
        vec_dot_q5k_q8k(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q5_k_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q5_K, 9);
    }

    #[test]
    fn q5_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q5_K);
    }
}
