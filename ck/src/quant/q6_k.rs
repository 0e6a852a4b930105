//! Q6_K: 256 6-bit values in 16 sub-blocks of 16, each with a signed 8-bit
//! scale, under one f16 super-scale; value `i` is
//! `d * sc_{i/16} * (q_i - 32)`. Dotted with Q8_K.

use super::kquant::{make_qx_quants_rmse1, nearest_int, GROUP_MAX_EPS};
use super::q8_k::BlockQ8K;
use super::{f16_to_f32, f32_to_f16, Block, WeightKernels, QK_K};

/// ggml's `block_q6_K`. For each 128-value half `n`: `ql[64n + l]` holds
/// the low nibbles of values `128n + l` (low) and `128n + 64 + l` (high),
/// `ql[64n + 32 + l]` those of `128n + 32 + l` and `128n + 96 + l`;
/// `qh[32n + l]` holds the top two bits of values `128n + l`, `+32`, `+64`,
/// `+96` in bit pairs 0, 2, 4, 6.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 bits.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bits.
unsafe impl Block for BlockQ6K {}

impl BlockQ6K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }

    /// Value `i` as stored, 0..=63.
    #[inline(always)]
    pub fn q(&self, i: usize) -> u8 {
        let (n, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let ql = self.ql[64 * n + 32 * (quarter % 2) + l];
        let lo = if quarter < 2 { ql & 0x0F } else { ql >> 4 };
        let hi = (self.qh[32 * n + l] >> (2 * quarter)) & 3;
        lo | (hi << 4)
    }
}

/// `quantize_row_q6_K_ref`.
pub(crate) fn quantize_row_ref(x: &[f32], dst: &mut [BlockQ6K]) {
    for (b, x) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let s =
                make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: f32_to_f16(0.0),
            };
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f32_to_f16(1.0 / iscale);
        for ib in 0..QK_K / 16 {
            b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = b.d() * b.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for n in 0..2 {
            let (j, ql, qh) = (128 * n, 64 * n, 32 * n);
            for i in 0..32 {
                let q1 = l[j + i] as u8 & 0xF;
                let q2 = l[j + i + 32] as u8 & 0xF;
                let q3 = l[j + i + 64] as u8 & 0xF;
                let q4 = l[j + i + 96] as u8 & 0xF;
                b.ql[ql + i] = q1 | (q3 << 4);
                b.ql[ql + i + 32] = q2 | (q4 << 4);
                b.qh[qh + i] = (l[j + i] as u8 >> 4)
                    | ((l[j + i + 32] as u8 >> 4) << 2)
                    | ((l[j + i + 64] as u8 >> 4) << 4)
                    | ((l[j + i + 96] as u8 >> 4) << 6);
            }
        }
    }
}

/// `dequantize_row_q6_K`.
pub(crate) fn dequantize_row(src: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * (b.q(i) as i32 - 32) as f32;
        }
    }
}

/// The exact integer dot product of one super-block:
/// `sum_i sc_{i/16} * (q_i - 32) * x_i`; the block's value is
/// `d * x.d * that`.
#[inline(always)]
pub(crate) fn block_dot(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
    let mut sumi = 0i32;
    for n in 0..2 {
        let mut sub = [0i32; 8];
        for l in 0..32 {
            let ql0 = w.ql[64 * n + l];
            let ql1 = w.ql[64 * n + 32 + l];
            let qh = w.qh[32 * n + l];
            let q = [
                (ql0 & 0xF) | ((qh & 3) << 4),
                (ql1 & 0xF) | (((qh >> 2) & 3) << 4),
                (ql0 >> 4) | (((qh >> 4) & 3) << 4),
                (ql1 >> 4) | (((qh >> 6) & 3) << 4),
            ];
            for (quarter, &qv) in q.iter().enumerate() {
                let e = 128 * n + 32 * quarter + l;
                sub[2 * quarter + l / 16] += (qv as i32 - 32) * x.qs[e] as i32;
            }
        }
        for (s, &v) in sub.iter().enumerate() {
            sumi += w.scales[8 * n + s] as i32 * v;
        }
    }
    sumi
}

/// Scalar reference (ggml's generic `ggml_vec_dot_q6_K_q8_K`, with one
/// accumulator).
pub(crate) fn vec_dot_q6k_q8k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: q6_K vec_dot length mismatch");
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += (a.d() * b.d()) * block_dot(a, b) as f32;
    }
    sum
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockQ6K;
    type X = BlockQ8K;

    fn vec_dot_scalar(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
        vec_dot_q6k_q8k(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn q6_k_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::Q6_K, 10);
    }

    #[test]
    fn q6_k_round_trip() {
        testutil::check_round_trip(GgmlType::Q6_K);
    }
}
