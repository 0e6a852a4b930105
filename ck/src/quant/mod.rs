//! Quantized kernels of the ck engine: one file per block type (its
//! `#[repr(C)]` struct with a compile-time size check, the scalar reference,
//! and SIMD twins), behind one runtime dispatch ([`Kernels`]).
//!
//! Activations are converted for the dot products exactly as ggml's CPU
//! type traits say (`vec_dot_type`), so both engines compute the same
//! arithmetic.
//!
//! INTERFACE CONTRACT (the engine codes against this; keep the names):
//!
//! - `KernelLevel { Scalar, Avx2, Avx512 }`, `KernelLevel::detect()`,
//!   `KernelLevel::available(self) -> bool`, `FromStr` for
//!   "scalar|avx2|avx512", `Display`.
//! - `Kernels::new(level) -> Result<Kernels, QuantError>` (error if the CPU
//!   lacks the level); `Kernels::detect()`; `kernels.level()`.
//! - `vec_dot_type(w: GgmlType) -> GgmlType` (ggml's table).
//! - `row_bytes(t: GgmlType, k: usize) -> Result<usize, QuantError>`.
//! - `supported(t: GgmlType) -> bool` for weight types.
//! - `kernels.quantize_row(t, x: &[f32], dst: &mut [u8])`: x (k elements,
//!   k a multiple of t's block size) into t's blocks (t = Q8_0, Q8_1, Q8_K,
//!   F16, BF16 or F32).
//! - `kernels.vec_dot(w, k, w_row: &[u8], x_q: &[u8]) -> f32`: one weight
//!   row (k elements of type w) against activations already quantized to
//!   `vec_dot_type(w)`.
//! - `kernels.mat_vec(w, k, rows: &[u8], x_q: &[u8], out: &mut [f32])`:
//!   `out.len()` consecutive weight rows against one activation.
//! - `kernels.mat_mat(w, k, rows: &[u8], n_rows, xs_q: &[u8], n_cols,
//!   out: &mut [f32])`: n_rows weight rows x n_cols quantized activations
//!   (each `row_bytes(vec_dot_type(w), k)` bytes, back to back); out is
//!   column-major by activation: `out[col * n_rows + row]`.
//! - `dequantize_row(t, src: &[u8], dst: &mut [f32])`.
