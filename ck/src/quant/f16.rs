//! F16 weights against F16 activations (`ggml_vec_dot_f16`).

use super::{f16_to_f32, f32_to_f16, Block, Kernels as Level, WeightKernels};

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
    let _ = kern;
    for (d, &v) in dst.iter_mut().zip(x) {
        d.bits = f32_to_f16(v);
    }
}

pub(crate) fn dequantize_row(src: &[BlockF16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// Scalar reference: exact f16→f32, f32 products summed in f64, like
/// ggml's generic `ggml_vec_dot_f16`.
pub(crate) fn vec_dot_f16_scalar(w: &[BlockF16], x: &[BlockF16]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: f16 vec_dot length mismatch");
    let mut sum = 0.0f64;
    for (a, b) in w.iter().zip(x) {
        sum += (a.get() * b.get()) as f64;
    }
    sum as f32
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockF16;
    type X = BlockF16;

    fn vec_dot_scalar(w: &[BlockF16], x: &[BlockF16]) -> f32 {
        vec_dot_f16_scalar(w, x)
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn f16_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::F16, 2);
    }

    #[test]
    fn f16_round_trip() {
        testutil::check_round_trip(GgmlType::F16);
    }
}
