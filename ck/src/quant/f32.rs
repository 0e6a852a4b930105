//! F32 weights against F32 activations (`ggml_vec_dot_f32`).

use super::{Block, WeightKernels};

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

/// Scalar reference: f32 products summed in f64, like ggml's generic
/// `ggml_vec_dot_f32`.
pub(crate) fn vec_dot_f32_scalar(w: &[BlockF32], x: &[BlockF32]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: f32 vec_dot length mismatch");
    let mut sum = 0.0f64;
    for (a, b) in w.iter().zip(x) {
        sum += (a.get() * b.get()) as f64;
    }
    sum as f32
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockF32;
    type X = BlockF32;

    fn vec_dot_scalar(w: &[BlockF32], x: &[BlockF32]) -> f32 {
        vec_dot_f32_scalar(w, x)
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

    #[test]
    fn f32_round_trip() {
        testutil::check_round_trip(GgmlType::F32);
    }
}
