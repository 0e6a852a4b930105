//! Q4_K: 256 4-bit values in 8 sub-blocks of 32, each with a 6-bit scale
//! and a 6-bit min, under an f16 super-scale and super-min; value `i` of
//! sub-block `j` is `d * sc_j * q_i - dmin * m_j`. Dotted with Q8_K.

use super::kquant::{make_qkx2_quants, nearest_int, pack_scales_mins_k4, scales_mins_k4};
use super::q8_k::BlockQ8K;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels, QK_K};

/// ggml's `block_q4_K`. `qs` holds four 32-byte chunks; chunk `c` holds
/// values `64c + l` (low nibbles) and `64c + 32 + l` (high nibbles).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales, f16 bits.
    pub d: [u8; 2],
    /// Super-block scale of the mins, f16 bits.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed.
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ4K {}

impl BlockQ4K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(self.dmin)
    }

    /// Value `i` as stored, 0..=15.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let (c, r) = (i / 64, i % 64);
        let byte = self.qs[32 * c + r % 32];
        if r < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

/// `quantize_row_q4_K_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ4K]) {
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
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut laux,
                -1.0,
                0.1,
                20,
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
                let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15);
                l[32 * j + ii] = q as u8;
            }
        }
        for c in 0..4 {
            for i in 0..32 {
                b.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// `dequantize_row_q4_K`.
pub(crate) fn dequantize_row(src: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d(), b.dmin());
        let (sc, m) = scales_mins_k4(&b.scales);
        for (i, o) in y.iter_mut().enumerate() {
            let j = i / 32;
            *o = d * sc[j] as f32 * b.q(i) as f32 - min * m[j] as f32;
        }
    }
}

/// The exact integer parts of one super-block's dot product:
/// `(sum_j sc_j * sum_i q_i * x_i, sum_j m_j * (bsum_2j + bsum_2j+1))`;
/// the block's value is `d * x.d * first - dmin * x.d * second`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
    let (sc, m) = scales_mins_k4(&w.scales);
    let mut sumi = 0i32;
    for c in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let byte = w.qs[32 * c + l];
            lo += (byte & 0x0F) as i32 * x.qs[64 * c + l] as i32;
            hi += (byte >> 4) as i32 * x.qs[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let mut summ = 0i32;
    for j in 0..8 {
        summ += m[j] as i32 * (x.bsum(2 * j) as i32 + x.bsum(2 * j + 1) as i32);
    }
    (sumi, summ)
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q4_K_q8_K`, with one
/// accumulator instead of eight).
pub(crate) fn vec_dot_q4k_q8k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q4_K vec_dot length mismatch");
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
    type W = BlockQ4K;
    type X = BlockQ8K;

    fn vec_dot_scalar(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
        vec_dot_q4k_q8k(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q4_k_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q4_K, 8);
    }

    #[test]
    fn q4_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q4_K);
    }
}
