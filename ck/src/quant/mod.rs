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
//! - `kernels.mat_vec_as(arith: MatArith, w, k, rows, x_q, out)`: `mat_vec`
//!   with the float order of another ggml kernel (the repacked Q4_0/Q4_K
//!   GEMV and GEMM, the tiled K-quant matmul; see `repack.rs`), the same
//!   bits at every level. `crate::profile` says which one ggml runs.
//!
//! Return types: `vec_dot` returns the `f32` and panics (with a message
//! naming the operation and the wrong length) if the slices do not match
//! `k`; [`Kernels::try_vec_dot`] is the same call returning a `Result`.
//! `quantize_row`, `mat_vec`, `mat_mat` and `dequantize_row` return
//! `Result<(), QuantError>` and check every length before touching memory.
//!
//! Also here: `quantize_row` accepts the weight types too (ggml's reference
//! quantizers, `quantize_row_q4_0_ref` and friends, for building test
//! models), [`block_size`], and the block structs themselves.
//!
//! # Arithmetic
//!
//! * Activation quantization follows the code ggml runs on an AVX2 machine
//!   (ggml-cpu/arch/x86/quants.c), which differs from ggml-quants.c's
//!   reference: Q8_0/Q8_1 scale by `127 / amax` and round half to even
//!   (`_mm256_round_ps`), where the reference multiplies by `1 / d` and
//!   rounds half away from zero. Q8_K is the reference on x86 too; F16 is
//!   `vcvtps2ph` round-to-nearest-even; BF16 is ggml's bit rounding. Every
//!   level here (scalar included) writes identical bytes, and they equal
//!   ggml's (checked against the pinned build's `quantize_row_q8_*`).
//! * The integer part of every dot product is exact and identical at every
//!   level (the tests hold each SIMD twin's per-block integer sums to the
//!   scalar ones, and the scalar lanes to the block sums). Every level,
//!   scalar included, also keeps ggml's x86 float structure: eight i32
//!   lanes per block (lane `l` sums values `4l..4l + 4` of each 32-value
//!   group), converted and accumulated with one FMA per lane and block
//!   with the scale product ggml forms, its 4-lane/scalar side sums
//!   (including the FMA GCC contracts Q4_1/Q5_1's `summs += m * s` and
//!   Q5_K's `summs += dmin * sum` into) and its horizontal sums. The
//!   scalar level does this in portable Rust (`order.rs`, `f32::mul_add`
//!   for each FMA), so **all levels return the same bits** for every type
//!   (tested on random blocks, and on whole models in
//!   `ck/tests/kernel_levels.rs`). Checked bit for bit against the pinned
//!   build's `ggml_vec_dot_*` (native, Zen 4), the kernels return ggml's
//!   bits for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K.
//!   llama.cpp itself repacks Q4_0/Q4_K weights and runs its own GEMV and
//!   GEMM for them: [`Kernels::mat_vec_as`] (repack.rs) computes those
//!   orders, bit for bit too, and `crate::profile` decides per weight and
//!   token which one ggml takes.
//! * ggml's arithmetic also depends on the size of the pass: for two or
//!   more tokens it hands F32/F16/BF16 (and Q4_0/Q5_0/Q8_0) matmuls to
//!   llamafile's tinyBLAS, and for eight or more tokens Q5_K/Q6_K (and the
//!   other K-quants, when not repacked) to its "tiled" kernels. Q8_0's
//!   tinyBLAS has `vec_dot`'s float order already (one FMA of `d_w * d_x`
//!   per block into eight lanes, then `hsum_float_8`); the others differ,
//!   and the ck engine follows them: [`Kernels::mat_vec_in_pass`] computes
//!   tinyBLAS's float kernels (one accumulator of 16 or 8 lanes per
//!   output, masked tail, lane sum; `vdpbf16ps` for BF16), and
//!   [`Kernels::mat_vec_as`] with `MatArith::Tiled` the tiled kernels'
//!   per-block `fnmadd(dmin, s2, d * s1)` then `fma(r, x.d, acc)` (when
//!   `crate::profile` says ggml takes them: [`TILED_MIN_TOKENS`] or more
//!   tokens, weights not repacked, `GGML_CPU_TILED_MM` not 0). With it the ck engine gives ggml's logits bit
//!   for bit on SmolLM2 Q5_K_M and BF16, teacher-forced over 256 steps
//!   with a batched prompt (max NMSE 0). Q5_1 has no tinyBLAS or tiled
//!   kernel.
//! * The float types follow the arithmetic ggml was built with for this
//!   CPU, not the kernel level: F32 and F16 use 16 lanes (four
//!   accumulators, GCC's `_mm512_reduce_add_ps`) on a CPU with AVX-512F
//!   and 8 (AVX's `hadd` reduction) otherwise, at every level. BF16
//!   ([`Bf16Order`]) uses `vdpbf16ps` on a CPU with AVX512_BF16 (the
//!   odd pair first, each an FMA with denormal inputs as zero and denormal
//!   results flushed; checked against the instruction), in
//!   `ggml_vec_dot_bf16`'s order for a one-token matmul and in tinyBLAS's
//!   order for two or more tokens ([`Kernels::mat_vec_in_pass`]); the
//!   ck-BF16 SmolLM2 gives ggml's logits bit for bit. Without AVX512_BF16,
//!   ggml's AVX-512F or AVX2 f32 paths are followed instead (those orders
//!   are computed in portable code at every level).
//! * `mat_vec` and `mat_mat` give every (row, column) pair the arithmetic
//!   of `vec_dot`, so they equal it bit for bit; they differ only in how
//!   many rows share an activation load and how many columns share a
//!   weight decode, and in prefetching the next row group (the hardware
//!   prefetcher alone streams several rows from DRAM far slower than one).
//! * Weight rows must be well-formed blocks; activations must come from
//!   [`Kernels::quantize_row`]. Malformed bytes never cause undefined
//!   behavior, but SIMD and scalar may then disagree (e.g. a Q8 activation
//!   byte of -128, which quantization never produces, overflows
//!   `_mm256_sign_epi8` the same way it does in ggml).
//!
//! # Levels
//!
//! [`KernelLevel::Avx2`] needs AVX2, FMA and F16C; [`KernelLevel::Avx512`]
//! adds AVX-512 F, BW, VL and VNNI and mostly uses 256-bit registers with
//! mask registers (`qh` bits straight into a mask), `vpdpbusd` and
//! `vpdpwssd`, which on Zen 4 beats 512-bit registers (double-pumped) for
//! these block sizes. The choice is made at run time
//! (`is_x86_feature_detected!`), so a portable build runs the same code as
//! a `-C target-cpu=native` one.
//!
//! # Tests
//!
//! Per type, at every level the CPU has (scalar always): ggml's
//! test-quantize-fns dot-product test on its own data (error per element
//! under `MAX_DOT_PRODUCT_ERROR` = 0.02 for every type here; none is in
//! ggml's low-bit list that gets 0.04), random valid blocks against the
//! f64 dot of the dequantized rows (within 1e-5 of the sum of |products|;
//! 1e-3 for Q4_1 and Q5_1, whose activation sum `s` is rounded to f16),
//! every level equal to scalar bit for bit, exact integer block sums and
//! lanes, `mat_vec` and
//! `mat_mat` equal to `vec_dot` bit for bit, hand-computed Q8_0/Q8_1/Q8_K
//! blocks, and round trips under ggml's `MAX_QUANTIZATION_TOTAL_ERROR`.

// The kernels are ports of ggml's C loops, which index several arrays
// with one counter; iterator chains would hide the correspondence.
#![allow(clippy::needless_range_loop)]

use std::fmt;
use std::str::FromStr;

use crate::gguf::GgmlType;

mod bf16;
mod f16;
mod f32;
mod kquant;
mod order;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
pub mod q5_0_x16;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
pub mod q8_0_x16;
mod q8_1;
mod q8_k;
mod repack;
#[cfg(target_arch = "x86_64")]
mod repack_x86;
#[cfg(test)]
mod testutil;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use bf16::{Bf16Order, BlockBF16};
pub use f16::BlockF16;
pub use f32::BlockF32;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8K;
pub use repack::MatArith;

/// Elements per super-block of the K-quants (`QK_K`).
pub const QK_K: usize = 256;

/// What a quantized-kernel call was given that it cannot use. Each message
/// names the operation and the value that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("kernel level {level} is not available on this CPU (it lacks {missing})")]
    LevelUnavailable { level: KernelLevel, missing: String },

    #[error("unknown kernel level {0:?} (expected scalar, avx2 or avx512)")]
    UnknownLevel(String),

    #[error("{op}: type {ty} is not supported (supported: {supported})")]
    UnsupportedType {
        op: &'static str,
        ty: GgmlType,
        supported: &'static str,
    },

    #[error("{op}: row length {k} is not a multiple of {ty}'s block size {block}")]
    NotBlockMultiple {
        op: &'static str,
        ty: GgmlType,
        k: usize,
        block: usize,
    },

    #[error("{op}: {what} is {got} {unit}, expected {expected}")]
    Length {
        op: &'static str,
        what: &'static str,
        unit: &'static str,
        got: usize,
        expected: usize,
    },

    #[error("{op}: size of {what} overflows usize")]
    Overflow {
        op: &'static str,
        what: &'static str,
    },
}

/// Which instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelLevel {
    /// Portable Rust, no SIMD intrinsics: the reference every other level
    /// is tested against.
    Scalar,
    /// AVX2 with FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI, on top of AVX2/FMA/F16C (Ice Lake, Zen 4
    /// and later). The kernels mostly use 256-bit registers with the
    /// AVX-512 mask registers and VNNI `vpdpbusd`/`vpdpwssd`.
    Avx512,
}

impl KernelLevel {
    /// Every level, slowest first.
    pub const ALL: [KernelLevel; 3] = [KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512];

    /// The fastest level this CPU supports.
    pub fn detect() -> KernelLevel {
        if KernelLevel::Avx512.available() {
            KernelLevel::Avx512
        } else if KernelLevel::Avx2.available() {
            KernelLevel::Avx2
        } else {
            KernelLevel::Scalar
        }
    }

    /// Whether this CPU has every feature the level's kernels use.
    pub fn available(self) -> bool {
        self.missing_features().is_empty()
    }

    /// The CPU features the level needs that this CPU lacks.
    pub fn missing_features(self) -> Vec<&'static str> {
        let needed: &[&'static str] = match self {
            KernelLevel::Scalar => &[],
            KernelLevel::Avx2 => &["avx2", "fma", "f16c"],
            KernelLevel::Avx512 => &[
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
            ],
        };
        needed.iter().copied().filter(|f| !cpu_has(f)).collect()
    }

    /// The name `FromStr` accepts and `Display` prints.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512 => "avx512",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> bool {
    match feature {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vl" => is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_feature: &str) -> bool {
    false
}

impl fmt::Display for KernelLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelLevel {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<KernelLevel, QuantError> {
        match s {
            "scalar" => Ok(KernelLevel::Scalar),
            "avx2" => Ok(KernelLevel::Avx2),
            "avx512" => Ok(KernelLevel::Avx512),
            _ => Err(QuantError::UnknownLevel(s.to_string())),
        }
    }
}

/// The kernels at one [`KernelLevel`], checked against the CPU.
///
/// Holding a `Kernels` is the proof that the CPU has the level's features:
/// the field is private and the only constructors check. Every SIMD path
/// relies on that proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    level: KernelLevel,
}

/// The pass size from which ggml computes Q5_K/Q6_K matmuls with its
/// "tiled" kernels (`ggml_tiled_min_batch`).
pub const TILED_MIN_TOKENS: usize = 8;

/// Weight types with kernels, for error messages.
const SUPPORTED_WEIGHTS: &str = "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K";
/// Types `quantize_row` and `dequantize_row` handle.
const SUPPORTED_ROWS: &str =
    "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q4_K, q5_K, q6_K, q8_K";

/// Whether the ck kernels can multiply weights of type `t`.
pub fn supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        t,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

/// Whether `quantize_row`/`dequantize_row` handle type `t`: the weight
/// types plus the activation types Q8_1 and Q8_K.
pub fn row_supported(t: GgmlType) -> bool {
    supported(t) || matches!(t, GgmlType::Q8_1 | GgmlType::Q8_K)
}

/// The type ggml converts activations to before a dot product with weights
/// of type `w` (`type_traits_cpu[w].vec_dot_type` in ggml-cpu.c). Types
/// whose ggml entry leaves it unset get F32, ggml's zero value.
pub fn vec_dot_type(w: GgmlType) -> GgmlType {
    use GgmlType::*;
    match w {
        F32 => F32,
        F16 => F16,
        BF16 => BF16,
        Q1_0 | Q2_0 | Q4_0 | Q5_0 | Q8_0 | MXFP4 | NVFP4 | IQ4_NL => Q8_0,
        Q4_1 | Q5_1 | Q8_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ3_S | IQ2_S | IQ1_S
        | IQ1_M | IQ4_XS | TQ1_0 | TQ2_0 => Q8_K,
        Q8_K | I8 | I16 | I32 | I64 | F64 => F32,
    }
}

/// Elements per block of `t` (`ggml_blck_size`).
pub fn block_size(t: GgmlType) -> usize {
    t.block_size() as usize
}

/// Bytes of one row of `k` elements of type `t` (`ggml_row_size`).
pub fn row_bytes(t: GgmlType, k: usize) -> Result<usize, QuantError> {
    row_bytes_for("row_bytes", t, k)
}

fn row_bytes_for(op: &'static str, t: GgmlType, k: usize) -> Result<usize, QuantError> {
    let block = block_size(t);
    if !k.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple {
            op,
            ty: t,
            k,
            block,
        });
    }
    (k / block)
        .checked_mul(t.type_size() as usize)
        .ok_or(QuantError::Overflow { op, what: "a row" })
}

fn check_len(
    op: &'static str,
    what: &'static str,
    unit: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), QuantError> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::Length {
            op,
            what,
            unit,
            got,
            expected,
        })
    }
}

fn mul(op: &'static str, what: &'static str, a: usize, b: usize) -> Result<usize, QuantError> {
    a.checked_mul(b).ok_or(QuantError::Overflow { op, what })
}

/// A quantization block as stored in GGUF files and ggml's buffers.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` with alignment 1, no padding, and
/// every bit pattern valid, so that any byte slice of a multiple of
/// `size_of::<Self>()` bytes can be viewed as blocks.
pub(crate) unsafe trait Block: Copy + 'static {}

/// `bytes` viewed as blocks of `B`.
///
/// # Panics
///
/// If `bytes.len()` is not a multiple of the block size (callers check the
/// length first and report it as a [`QuantError`]).
pub(crate) fn cast<B: Block>(bytes: &[u8]) -> &[B] {
    const { assert!(std::mem::align_of::<B>() == 1) };
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "quant: {} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: `B: Block` promises alignment 1, no padding and every bit
    // pattern valid; the length is a whole number of blocks, so the new
    // slice covers exactly the bytes of `bytes` and borrows them for the
    // same lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// `bytes` viewed as mutable blocks of `B`; see [`cast`].
pub(crate) fn cast_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    const { assert!(std::mem::align_of::<B>() == 1) };
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "quant: {} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: as in `cast`; the exclusive borrow of `bytes` moves to the
    // returned slice, and any bytes written through it are a valid `u8`.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size) }
}

/// f16 bits (little-endian bytes) to f32; exact.
#[inline(always)]
pub(crate) fn f16_to_f32(bits: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bits).to_f32()
}

/// f32 to f16 bits, rounding to nearest even like F16C's `vcvtps2ph` with
/// `_MM_FROUND_TO_NEAREST_INT` (`GGML_CPU_FP32_TO_FP16` on x86).
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// One weight type's kernels, as the dispatcher sees them. `mat_vec` and
/// `mat_mat` choose the SIMD twin from the [`Kernels`] proof; the default
/// bodies are the scalar loops over `vec_dot_scalar`.
pub(crate) trait WeightKernels {
    /// The weight block.
    type W: Block;
    /// The activation block (`vec_dot_type`).
    type X: Block;

    /// The scalar reference dot product of one row with one activation,
    /// both `nb` blocks long (the caller checked).
    fn vec_dot_scalar(w: &[Self::W], x: &[Self::X]) -> f32;

    /// `out[r] = dot(rows[r], x)` for each of `out.len()` rows of
    /// `x.len()` blocks.
    fn mat_vec(kern: Kernels, rows: &[Self::W], x: &[Self::X], out: &mut [f32]) {
        let _ = kern;
        mat_vec_scalar::<Self>(rows, x, out);
    }

    /// `out[c * n_rows + r] = dot(rows[r], xs[c])`.
    fn mat_mat(kern: Kernels, rows: &[Self::W], xs: &[Self::X], nb: usize, out: &mut [f32]) {
        let _ = kern;
        mat_mat_scalar::<Self>(rows, xs, nb, out);
    }
}

pub(crate) fn mat_vec_scalar<K: WeightKernels + ?Sized>(
    rows: &[K::W],
    x: &[K::X],
    out: &mut [f32],
) {
    let nb = x.len();
    assert_eq!(
        rows.len(),
        nb * out.len(),
        "quant: mat_vec rows/blocks mismatch"
    );
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb)) {
        *o = K::vec_dot_scalar(row, x);
    }
}

pub(crate) fn mat_mat_scalar<K: WeightKernels + ?Sized>(
    rows: &[K::W],
    xs: &[K::X],
    nb: usize,
    out: &mut [f32],
) {
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let n_rows = rows.len() / nb;
    let n_cols = xs.len() / nb;
    assert!(
        rows.len() == n_rows * nb && xs.len() == n_cols * nb && out.len() == n_rows * n_cols,
        "quant: mat_mat shape mismatch"
    );
    for (col, x) in xs.chunks_exact(nb).enumerate() {
        mat_vec_scalar::<K>(rows, x, &mut out[col * n_rows..(col + 1) * n_rows]);
    }
}

/// Split `out` (column-major, `n_rows` per column) into per-column
/// `mat_vec` calls; for SIMD twins without a dedicated GEMM tile.
#[allow(dead_code)]
pub(crate) fn mat_mat_by_columns<W, X>(
    rows: &[W],
    xs: &[X],
    nb: usize,
    out: &mut [f32],
    mut mat_vec: impl FnMut(&[W], &[X], &mut [f32]),
) {
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let n_rows = rows.len() / nb;
    let n_cols = xs.len() / nb;
    assert!(
        rows.len() == n_rows * nb && xs.len() == n_cols * nb && out.len() == n_rows * n_cols,
        "quant: mat_mat shape mismatch"
    );
    if n_rows == 0 {
        return;
    }
    for (x, o) in xs.chunks_exact(nb).zip(out.chunks_exact_mut(n_rows)) {
        mat_vec(rows, x, o);
    }
}

/// Calls `$f::<K>(args)` with `K` the kernel set of weight type `$w`, or
/// returns an unsupported-type error from the enclosing function.
macro_rules! with_weight_kernels {
    ($op:expr, $w:expr, $f:ident ( $($arg:expr),* )) => {
        match $w {
            GgmlType::F32 => $f::<f32::Kernels>($($arg),*),
            GgmlType::F16 => $f::<f16::Kernels>($($arg),*),
            GgmlType::BF16 => $f::<bf16::Kernels>($($arg),*),
            GgmlType::Q4_0 => $f::<q4_0::Kernels>($($arg),*),
            GgmlType::Q4_1 => $f::<q4_1::Kernels>($($arg),*),
            GgmlType::Q5_0 => $f::<q5_0::Kernels>($($arg),*),
            GgmlType::Q5_1 => $f::<q5_1::Kernels>($($arg),*),
            GgmlType::Q8_0 => $f::<q8_0::Kernels>($($arg),*),
            GgmlType::Q4_K => $f::<q4_k::Kernels>($($arg),*),
            GgmlType::Q5_K => $f::<q5_k::Kernels>($($arg),*),
            GgmlType::Q6_K => $f::<q6_k::Kernels>($($arg),*),
            other => {
                return Err(QuantError::UnsupportedType {
                    op: $op,
                    ty: other,
                    supported: SUPPORTED_WEIGHTS,
                })
            }
        }
    };
}

fn run_mat_vec<K: WeightKernels>(kern: Kernels, rows: &[u8], x: &[u8], out: &mut [f32]) {
    K::mat_vec(kern, cast(rows), cast(x), out);
}

fn run_mat_mat<K: WeightKernels>(
    kern: Kernels,
    rows: &[u8],
    xs: &[u8],
    nb: usize,
    out: &mut [f32],
) {
    K::mat_mat(kern, cast(rows), cast(xs), nb, out);
}

impl Kernels {
    /// The kernels at `level`, or an error naming the CPU features the
    /// level needs and this CPU lacks.
    pub fn new(level: KernelLevel) -> Result<Kernels, QuantError> {
        let missing = level.missing_features();
        if missing.is_empty() {
            Ok(Kernels { level })
        } else {
            Err(QuantError::LevelUnavailable {
                level,
                missing: missing.join(", "),
            })
        }
    }

    /// The kernels at the fastest level this CPU supports.
    pub fn detect() -> Kernels {
        Kernels {
            level: KernelLevel::detect(),
        }
    }

    /// The scalar kernels (always available).
    pub fn scalar() -> Kernels {
        Kernels {
            level: KernelLevel::Scalar,
        }
    }

    /// The level these kernels run at.
    pub fn level(&self) -> KernelLevel {
        self.level
    }

    /// Converts `x` (k elements) into type `t`'s blocks in `dst`
    /// (`row_bytes(t, k)` bytes). For the activation types (Q8_0, Q8_1,
    /// Q8_K, F16, BF16, F32) this is ggml's `from_float` as run on x86;
    /// for the other weight types it is ggml's reference quantizer
    /// (`quantize_row_*_ref`), meant for building test data.
    pub fn quantize_row(&self, t: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        const OP: &str = "quantize_row";
        if !row_supported(t) {
            return Err(QuantError::UnsupportedType {
                op: OP,
                ty: t,
                supported: SUPPORTED_ROWS,
            });
        }
        let expected = row_bytes_for(OP, t, x.len())?;
        check_len(OP, "dst", "bytes", dst.len(), expected)?;
        match t {
            GgmlType::F32 => f32::quantize_row(x, cast_mut(dst)),
            GgmlType::F16 => f16::quantize_row(*self, x, cast_mut(dst)),
            GgmlType::BF16 => bf16::quantize_row(x, cast_mut(dst)),
            GgmlType::Q8_0 => q8_0::quantize_row(*self, x, cast_mut(dst)),
            GgmlType::Q8_1 => q8_1::quantize_row(*self, x, cast_mut(dst)),
            GgmlType::Q8_K => q8_k::quantize_row(x, cast_mut(dst)),
            GgmlType::Q4_0 => q4_0::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q4_1 => q4_1::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q5_0 => q5_0::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q5_1 => q5_1::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q4_K => q4_k::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q5_K => q5_k::quantize_row_ref(x, cast_mut(dst)),
            GgmlType::Q6_K => q6_k::quantize_row_ref(x, cast_mut(dst)),
            _ => unreachable!("row_supported checked"),
        }
        Ok(())
    }

    /// One weight row (`k` elements of type `w`, `row_bytes(w, k)` bytes)
    /// dotted with one activation quantized to `vec_dot_type(w)`.
    ///
    /// # Panics
    ///
    /// If `w` is unsupported or a length does not match `k`; the message
    /// names the operation and the wrong value. [`Kernels::try_vec_dot`]
    /// returns the same failure as an error.
    pub fn vec_dot(&self, w: GgmlType, k: usize, w_row: &[u8], x_q: &[u8]) -> f32 {
        match self.try_vec_dot(w, k, w_row, x_q) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Kernels::vec_dot`], returning an error instead of panicking.
    pub fn try_vec_dot(
        &self,
        w: GgmlType,
        k: usize,
        w_row: &[u8],
        x_q: &[u8],
    ) -> Result<f32, QuantError> {
        let mut out = [0.0f32];
        self.mat_vec_op("vec_dot", w, k, w_row, x_q, 1, &mut out)?;
        Ok(out[0])
    }

    /// `out.len()` consecutive weight rows (type `w`, `k` elements each)
    /// against one activation quantized to `vec_dot_type(w)`:
    /// `out[r] = vec_dot(row r, x_q)`, bit for bit.
    pub fn mat_vec(
        &self,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        x_q: &[u8],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        self.mat_vec_op("mat_vec", w, k, rows, x_q, 1, out)
    }

    /// [`Kernels::mat_vec`] as ggml computes it inside a matmul of
    /// `n_tokens` activations (the engine's pass): ggml hands matmuls of
    /// two or more tokens with F32, F16 or BF16 weights to llamafile's
    /// tinyBLAS, whose order of additions differs from its `vec_dot`'s,
    /// and this follows it (in the order of this CPU, at every level). For
    /// one token, and for the other types, this is `mat_vec`. (tinyBLAS's
    /// Q4_0/Q5_0/Q8_0 prompt kernels are not followed.)
    #[allow(clippy::too_many_arguments)]
    pub fn mat_vec_in_pass(
        &self,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        x_q: &[u8],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        self.mat_vec_op("mat_vec_in_pass", w, k, rows, x_q, n_tokens, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn mat_vec_op(
        &self,
        op: &'static str,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        x_q: &[u8],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        if !supported(w) {
            return Err(QuantError::UnsupportedType {
                op,
                ty: w,
                supported: SUPPORTED_WEIGHTS,
            });
        }
        let w_bytes = row_bytes_for(op, w, k)?;
        let x_bytes = row_bytes_for(op, vec_dot_type(w), k)?;
        let rows_bytes = mul(op, "the weight data", w_bytes, out.len())?;
        check_len(op, "the weight data", "bytes", rows.len(), rows_bytes)?;
        check_len(op, "the activation data", "bytes", x_q.len(), x_bytes)?;
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let kern = *self;
        if n_tokens >= 2 && matches!(w, GgmlType::BF16 | GgmlType::F16 | GgmlType::F32) {
            match w {
                GgmlType::BF16 => bf16::mat_vec_pass(kern, true, cast(rows), cast(x_q), out),
                GgmlType::F16 => f16::mat_vec_gemm(kern, cast(rows), cast(x_q), out),
                _ => f32::mat_vec_gemm(kern, cast(rows), cast(x_q), out),
            }
            return Ok(());
        }
        with_weight_kernels!(op, w, run_mat_vec(kern, rows, x_q, out));
        Ok(())
    }

    /// `n_rows` weight rows x `n_cols` activations (each quantized to
    /// `vec_dot_type(w)`, `row_bytes(vec_dot_type(w), k)` bytes, back to
    /// back). `out[col * n_rows + row] = vec_dot(row, col)`, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn mat_mat(
        &self,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        n_rows: usize,
        xs_q: &[u8],
        n_cols: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        const OP: &str = "mat_mat";
        if !supported(w) {
            return Err(QuantError::UnsupportedType {
                op: OP,
                ty: w,
                supported: SUPPORTED_WEIGHTS,
            });
        }
        let w_bytes = row_bytes_for(OP, w, k)?;
        let x_bytes = row_bytes_for(OP, vec_dot_type(w), k)?;
        check_len(
            OP,
            "the weight data",
            "bytes",
            rows.len(),
            mul(OP, "the weight data", w_bytes, n_rows)?,
        )?;
        check_len(
            OP,
            "the activation data",
            "bytes",
            xs_q.len(),
            mul(OP, "the activation data", x_bytes, n_cols)?,
        )?;
        check_len(
            OP,
            "out",
            "elements",
            out.len(),
            mul(OP, "out", n_rows, n_cols)?,
        )?;
        let nb = k / block_size(w);
        if nb == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let kern = *self;
        with_weight_kernels!(OP, w, run_mat_mat(kern, rows, xs_q, nb, out));
        Ok(())
    }
}

/// Converts one row of type `t` (`row_bytes(t, dst.len())` bytes) to f32,
/// as ggml's `to_float` does.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    const OP: &str = "dequantize_row";
    if !row_supported(t) {
        return Err(QuantError::UnsupportedType {
            op: OP,
            ty: t,
            supported: SUPPORTED_ROWS,
        });
    }
    let expected = row_bytes_for(OP, t, dst.len())?;
    check_len(OP, "src", "bytes", src.len(), expected)?;
    match t {
        GgmlType::F32 => f32::dequantize_row(cast(src), dst),
        GgmlType::F16 => f16::dequantize_row(cast(src), dst),
        GgmlType::BF16 => bf16::dequantize_row(cast(src), dst),
        GgmlType::Q4_0 => q4_0::dequantize_row(cast(src), dst),
        GgmlType::Q4_1 => q4_1::dequantize_row(cast(src), dst),
        GgmlType::Q5_0 => q5_0::dequantize_row(cast(src), dst),
        GgmlType::Q5_1 => q5_1::dequantize_row(cast(src), dst),
        GgmlType::Q8_0 => q8_0::dequantize_row(cast(src), dst),
        GgmlType::Q8_1 => q8_1::dequantize_row(cast(src), dst),
        GgmlType::Q4_K => q4_k::dequantize_row(cast(src), dst),
        GgmlType::Q5_K => q5_k::dequantize_row(cast(src), dst),
        GgmlType::Q6_K => q6_k::dequantize_row(cast(src), dst),
        GgmlType::Q8_K => q8_k::dequantize_row(cast(src), dst),
        _ => unreachable!("row_supported checked"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_round_trip() {
        for level in KernelLevel::ALL {
            assert_eq!(level.to_string().parse::<KernelLevel>().unwrap(), level);
        }
        let err = "sse".parse::<KernelLevel>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown kernel level \"sse\" (expected scalar, avx2 or avx512)"
        );
    }

    #[test]
    fn kernels_new_matches_availability() {
        assert!(KernelLevel::Scalar.available());
        for level in KernelLevel::ALL {
            match Kernels::new(level) {
                Ok(k) => {
                    assert!(level.available());
                    assert_eq!(k.level(), level);
                }
                Err(e) => {
                    assert!(!level.available());
                    assert!(e.to_string().contains("not available on this CPU"), "{e}");
                }
            }
        }
        assert!(Kernels::detect().level().available());
    }

    #[test]
    fn vec_dot_types_follow_ggml() {
        use GgmlType::*;
        for (w, x) in [
            (F32, F32),
            (F16, F16),
            (BF16, BF16),
            (Q4_0, Q8_0),
            (Q5_0, Q8_0),
            (Q8_0, Q8_0),
            (Q4_1, Q8_1),
            (Q5_1, Q8_1),
            (Q4_K, Q8_K),
            (Q5_K, Q8_K),
            (Q6_K, Q8_K),
        ] {
            assert_eq!(vec_dot_type(w), x, "{w}");
            assert!(supported(w));
        }
        assert!(!supported(Q2_K));
        assert!(!supported(Q8_K));
    }

    #[test]
    fn row_bytes_matches_block_layout() {
        assert_eq!(row_bytes(GgmlType::Q4_K, 512).unwrap(), 2 * 144);
        assert_eq!(row_bytes(GgmlType::Q5_0, 576).unwrap(), 18 * 22);
        assert_eq!(row_bytes(GgmlType::Q8_K, 256).unwrap(), 292);
        assert_eq!(row_bytes(GgmlType::F16, 3).unwrap(), 6);
        let err = row_bytes(GgmlType::Q6_K, 576).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row_bytes: row length 576 is not a multiple of q6_K's block size 256"
        );
    }

    #[test]
    fn bad_lengths_are_errors_not_ub() {
        let kern = Kernels::detect();
        let w = vec![0u8; row_bytes(GgmlType::Q5_0, 64).unwrap()];
        let x = vec![0u8; row_bytes(GgmlType::Q8_0, 64).unwrap()];
        let err = kern
            .try_vec_dot(GgmlType::Q5_0, 64, &w[..w.len() - 1], &x)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "vec_dot: the weight data is 43 bytes, expected 44"
        );
        assert!(kern.try_vec_dot(GgmlType::Q5_0, 64, &w, &x[..10]).is_err());
        assert!(kern.try_vec_dot(GgmlType::Q5_0, 48, &w, &x).is_err());
        assert!(kern.try_vec_dot(GgmlType::Q3_K, 256, &w, &x).is_err());
        let mut out = [0.0f32; 3];
        assert!(kern.mat_vec(GgmlType::Q5_0, 64, &w, &x, &mut out).is_err());
        assert!(kern
            .mat_mat(GgmlType::Q5_0, 64, &w, 1, &x, 2, &mut out[..2])
            .is_err());
        assert!(kern
            .mat_mat(GgmlType::Q5_0, 64, &w, 1, &x, 1, &mut out[..2])
            .is_err());
        let mut q = vec![0u8; 33];
        assert!(kern
            .quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut q)
            .is_err());
        assert!(kern
            .quantize_row(GgmlType::Q8_0, &[0.0; 31], &mut q)
            .is_err());
        let mut f = [0.0f32; 32];
        assert!(dequantize_row(GgmlType::Q8_0, &q, &mut f).is_err());
        assert!(dequantize_row(GgmlType::IQ2_XS, &q, &mut f).is_err());
        // An empty row is fine and dots to zero.
        assert_eq!(kern.vec_dot(GgmlType::Q4_K, 0, &[], &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "vec_dot: the activation data is 10 bytes, expected 34")]
    fn vec_dot_panics_with_a_clear_message() {
        let kern = Kernels::detect();
        let w = vec![0u8; 22];
        kern.vec_dot(GgmlType::Q5_0, 32, &w, &[0u8; 10]);
    }
}
