//! The float arithmetic of ggml's other CPU matmul paths: the repacked
//! GEMV/GEMM kernels of the CPU_REPACK buffer (ggml-cpu/repack.cpp, x86
//! versions in ggml-cpu/arch/x86/repack.cpp) and the tiled K-quant matmul
//! (ggml-cpu/tiled/), computed on the weights as they are stored in the
//! file (ggml's interleaved memory layout changes which bytes sit
//! together, not what is added to what).
//!
//! ggml's default path on an x86 CPU does not call `ggml_vec_dot_*` for
//! every weight: Q4_0 and Q4_K matrices with a multiple of 8 rows are
//! repacked at load, and a prompt matmul of 8 or more tokens with other
//! K-quant weights goes through the tiled kernel. Each of these adds the
//! same exact integer block sums as `vec_dot` in another float order, and
//! those differences are amplified, layer after layer, by the rounding of
//! the quantized activations. [`crate::profile::GgmlProfile`] decides which
//! [`MatArith`] a weight gets; this module computes it.
//!
//! The activations are the ones `vec_dot` takes: ggml's
//! `ggml_quantize_mat_q8_0_4x8` / `ggml_quantize_mat_q8_K_4x8` (what the
//! repacked GEMM quantizes groups of four tokens with) write the same
//! values as `quantize_row_q8_0` / `quantize_row_q8_K` on x86, interleaved
//! (the same `127 / amax` or `-127 / max` scale, `_mm256_round_ps` to
//! nearest even; the 4x8 Q8_K picks the sign of the scale by another rule
//! when `+amax` and `-amax` both occur, which negates both the scale and
//! every value and leaves each product, hence each result, unchanged).
//!
//! Per output element (weight row `r`, token `t`), with `isum` the exact
//! integer sum of a block and `dw`, `dmin` the weight's f16 scales widened,
//! `da` the activation's scale, and `fma` one rounding:
//!
//! - [`MatArith::RepackQ4_0`] (`ggml_gemv_q4_0_8x8_q8_0` and
//!   `ggml_gemm_q4_0_8x8_q8_0`, AVX2 and AVX-512 alike): per 32-block,
//!   `acc = fma(isum, dw * da, acc)`.
//! - [`MatArith::RepackQ4KGemv`] (`ggml_gemv_q4_K_8x8_q8_K`, the tokens
//!   past the last multiple of 4): per super-block, `acc = fma(sumi, dw *
//!   da, acc)` and `accm = fma(summ, dmin * da, accm)`; the result is
//!   `acc - accm`.
//! - [`MatArith::RepackQ4KGemm`] (`ggml_gemm_q4_K_8x8_q8_K`, groups of 4
//!   tokens): the same, but one FMA pair per 64 values (two sub-blocks)
//!   instead of per super-block.
//! - [`MatArith::Tiled`] (`tiled_run_microtile`, VNNI and AVX2 variants):
//!   per super-block, `res = sumi * dw`, `res = fma(-dmin, summ, res)` for
//!   the types with mins, then `acc = fma(res, da, acc)` (the AVX2 kernel
//!   writes that FMA; GCC contracts the VNNI kernel's `add(acc, mul(res,
//!   da))` into the same instruction).
//!
//! The integer sums are exact (the scalar code uses the per-type
//! `block_dot`s of the `vec_dot` kernels; repack_x86.rs has AVX2 twins for
//! Q4_0, Q4_K and Q6_K), and the float chain above is the same per element
//! at every level, so every [`KernelLevel`](super::KernelLevel) returns the
//! same bits.

use super::q4_0::{self, BlockQ4_0};
use super::q4_k::{self, BlockQ4K};
use super::q8_0::BlockQ8_0;
use super::q8_k::BlockQ8K;
use super::{cast, check_len, row_bytes_for, vec_dot_type, Kernels, QuantError, QK_K};
use crate::gguf::GgmlType;

/// Which float arithmetic a matmul of one weight computes: `vec_dot`'s, or
/// one of the other kernels ggml's CPU backend runs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatArith {
    /// `ggml_vec_dot_*` (and llamafile's tinyBLAS, which adds in the same
    /// order for the types it takes): what [`Kernels::mat_vec`] computes.
    VecDot,
    /// The repacked Q4_0 GEMV/GEMM (`q4_0_8x8_q8_0`).
    RepackQ4_0,
    /// The repacked Q4_K GEMV (`q4_K_8x8_q8_K`), one token.
    RepackQ4KGemv,
    /// The repacked Q4_K GEMM (`q4_K_8x8_q8_K`), a token of a group of 4.
    RepackQ4KGemm,
    /// The tiled K-quant matmul (Q4_K, Q5_K, Q6_K here).
    Tiled,
}

impl MatArith {
    /// Whether weights of type `w` can take this arithmetic.
    pub fn takes(self, w: GgmlType) -> bool {
        match self {
            MatArith::VecDot => super::supported(w),
            MatArith::RepackQ4_0 => w == GgmlType::Q4_0,
            MatArith::RepackQ4KGemv | MatArith::RepackQ4KGemm => w == GgmlType::Q4_K,
            MatArith::Tiled => matches!(w, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K),
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            MatArith::VecDot => "vec_dot",
            MatArith::RepackQ4_0 => "repack q4_0_8x8",
            MatArith::RepackQ4KGemv => "repack q4_K_8x8 gemv",
            MatArith::RepackQ4KGemm => "repack q4_K_8x8 gemm",
            MatArith::Tiled => "tiled",
        }
    }
}

impl std::fmt::Display for MatArith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// One row of the repacked Q4_0 kernels.
fn dot_repack_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        acc = fma(q4_0::block_dot(a, b) as f32, a.d() * b.d(), acc);
    }
    acc
}

/// The scaled 4-bit sums of the four 64-value chunks of a super-block:
/// `sc_2c * dot_2c + sc_2c+1 * dot_2c+1`.
fn q4k_chunk_sums(w: &BlockQ4K, x: &BlockQ8K, sc: &[u8; 8]) -> [i32; 4] {
    let mut out = [0i32; 4];
    for (c, o) in out.iter_mut().enumerate() {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let byte = w.qs[32 * c + l];
            lo += (byte & 0x0F) as i32 * x.qs[64 * c + l] as i32;
            hi += (byte >> 4) as i32 * x.qs[64 * c + 32 + l] as i32;
        }
        *o = sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    out
}

/// The mins parts of the four 64-value chunks: `m_2c * bsum_2c + m_2c+1 *
/// bsum_2c+1`, a sub-block's bsum being the sum of its two 16-value bsums.
#[inline(always)]
fn q4k_chunk_mins(x: &BlockQ8K, m: &[u8; 8]) -> [i32; 4] {
    let mut out = [0i32; 4];
    for (c, o) in out.iter_mut().enumerate() {
        let b0 = x.bsum(4 * c) as i32 + x.bsum(4 * c + 1) as i32;
        let b1 = x.bsum(4 * c + 2) as i32 + x.bsum(4 * c + 3) as i32;
        *o = m[2 * c] as i32 * b0 + m[2 * c + 1] as i32 * b1;
    }
    out
}

/// One row of `ggml_gemv_q4_K_8x8_q8_K`: one FMA pair per super-block.
#[inline(always)]
fn dot_repack_q4k_gemv(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for (a, b) in w.iter().zip(x) {
        let (sc, m) = super::kquant::scales_mins_k4(&a.scales);
        let sumi: i32 = q4k_chunk_sums(a, b, &sc).iter().sum();
        let summ: i32 = q4k_chunk_mins(b, &m).iter().sum();
        let da = b.d();
        acc = fma(sumi as f32, a.d() * da, acc);
        accm = fma(summ as f32, a.dmin() * da, accm);
    }
    acc - accm
}

/// One row of `ggml_gemm_q4_K_8x8_q8_K`: one FMA pair per 64 values.
#[inline(always)]
fn dot_repack_q4k_gemm(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for (a, b) in w.iter().zip(x) {
        let (sc, m) = super::kquant::scales_mins_k4(&a.scales);
        let sumi = q4k_chunk_sums(a, b, &sc);
        let summ = q4k_chunk_mins(b, &m);
        let da = b.d();
        let (s, sm) = (a.d() * da, a.dmin() * da);
        for c in 0..QK_K / 64 {
            acc = fma(sumi[c] as f32, s, acc);
            accm = fma(summ[c] as f32, sm, accm);
        }
    }
    acc - accm
}

/// One row of the tiled kernel for a type with mins (Q4_K, Q5_K), given
/// its `(sumi, summ)` per super-block.
#[inline(always)]
fn tiled_step_min(acc: f32, sumi: i32, summ: i32, d: f32, dmin: f32, da: f32) -> f32 {
    let res = fma(-dmin, summ as f32, sumi as f32 * d);
    fma(res, da, acc)
}

fn dot_tiled_q4k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (sumi, summ) = q4_k::block_dot(a, b);
        acc = tiled_step_min(acc, sumi, summ, a.d(), a.dmin(), b.d());
    }
    acc
}

/// `out[r] = dot(rows[r], x)` with the row function `f`.
fn rows_with<W: super::Block, X: super::Block>(
    rows: &[u8],
    x: &[u8],
    out: &mut [f32],
    f: impl Fn(&[W], &[X]) -> f32,
) {
    let x: &[X] = cast(x);
    let rows: &[W] = cast(rows);
    let nb = x.len();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb)) {
        *o = f(row, x);
    }
}

impl Kernels {
    /// [`Kernels::mat_vec`] with the float arithmetic `arith` instead of
    /// `vec_dot`'s: `out.len()` consecutive weight rows (type `w`, `k`
    /// elements each) against one activation quantized to
    /// `vec_dot_type(w)`. Every level returns the same bits.
    pub fn mat_vec_as(
        &self,
        arith: MatArith,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        x_q: &[u8],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        const OP: &str = "mat_vec_as";
        if arith == MatArith::VecDot {
            return self.mat_vec(w, k, rows, x_q, out);
        }
        if !arith.takes(w) {
            return Err(QuantError::UnsupportedType {
                op: OP,
                ty: w,
                supported: match arith {
                    MatArith::RepackQ4_0 => "q4_0",
                    MatArith::Tiled => "q4_K, q5_K, q6_K",
                    _ => "q4_K",
                },
            });
        }
        let w_bytes = row_bytes_for(OP, w, k)?;
        let x_bytes = row_bytes_for(OP, vec_dot_type(w), k)?;
        let rows_bytes = w_bytes.checked_mul(out.len()).ok_or(QuantError::Overflow {
            op: OP,
            what: "the weight data",
        })?;
        check_len(OP, "the weight data", "bytes", rows.len(), rows_bytes)?;
        check_len(OP, "the activation data", "bytes", x_q.len(), x_bytes)?;
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let simd = self.level() >= super::KernelLevel::Avx2;
        match (arith, w) {
            #[cfg(target_arch = "x86_64")]
            (MatArith::RepackQ4_0, _) if simd => {
                // SAFETY: the `Kernels` level proves AVX2, FMA and F16C;
                // the lengths were checked above.
                unsafe {
                    super::repack_x86::rows_repack_q4_0(cast(rows), cast(x_q), out, dot_repack_q4_0)
                }
            }
            #[cfg(target_arch = "x86_64")]
            (MatArith::RepackQ4KGemv | MatArith::RepackQ4KGemm, _)
            | (MatArith::Tiled, GgmlType::Q4_K)
                if simd =>
            {
                use super::repack_x86::Q4KChain;
                let chain = match arith {
                    MatArith::RepackQ4KGemv => Q4KChain::Gemv,
                    MatArith::RepackQ4KGemm => Q4KChain::Gemm,
                    _ => Q4KChain::Tiled,
                };
                // SAFETY: as above.
                unsafe { super::repack_x86::rows_q4k(cast(rows), cast(x_q), out, chain) }
            }
            // The tiled Q5_K/Q6_K order at every level (SIMD integer parts).
            (MatArith::Tiled, GgmlType::Q5_K) => {
                super::q5_k::mat_vec_tiled(*self, cast(rows), cast(x_q), out)
            }
            (MatArith::Tiled, GgmlType::Q6_K) => {
                super::q6_k::mat_vec_tiled(*self, cast(rows), cast(x_q), out)
            }
            (MatArith::RepackQ4_0, _) => rows_with(rows, x_q, out, dot_repack_q4_0),
            (MatArith::RepackQ4KGemv, _) => rows_with(rows, x_q, out, dot_repack_q4k_gemv),
            (MatArith::RepackQ4KGemm, _) => rows_with(rows, x_q, out, dot_repack_q4k_gemm),
            (MatArith::Tiled, GgmlType::Q4_K) => rows_with(rows, x_q, out, dot_tiled_q4k),
            (MatArith::Tiled, _) => unreachable!("Tiled takes q4_K, q5_K and q6_K only"),
            (MatArith::VecDot, _) => unreachable!("handled above"),
        }
        Ok(())
    }
}

impl Kernels {
    /// `n_rows` weight rows x `n_cols` activations with the arithmetic
    /// `arith`: `out[col * n_rows + row]` is, bit for bit, what
    /// [`Kernels::mat_vec_as`] gives that row and activation. The repacked
    /// Q4_K GEMM and `vec_dot` run as register tiles over rows and tokens
    /// (each weight block decoded once per tile); the others column by
    /// column.
    #[allow(clippy::too_many_arguments)]
    pub fn mat_mat_as(
        &self,
        arith: MatArith,
        w: GgmlType,
        k: usize,
        rows: &[u8],
        n_rows: usize,
        xs_q: &[u8],
        n_cols: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        const OP: &str = "mat_mat_as";
        if arith == MatArith::VecDot {
            return self.mat_mat(w, k, rows, n_rows, xs_q, n_cols, out);
        }
        let x_bytes = row_bytes_for(OP, vec_dot_type(w), k)?;
        let need = |what: &'static str, a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or(QuantError::Overflow { op: OP, what })
        };
        check_len(
            OP,
            "the activation data",
            "bytes",
            xs_q.len(),
            need("the activation data", x_bytes, n_cols)?,
        )?;
        check_len(
            OP,
            "out",
            "elements",
            out.len(),
            need("out", n_rows, n_cols)?,
        )?;
        #[cfg(target_arch = "x86_64")]
        if arith == MatArith::RepackQ4KGemm
            && w == GgmlType::Q4_K
            && self.level() >= super::KernelLevel::Avx2
            && k > 0
            && k % QK_K == 0
        {
            let w_bytes = row_bytes_for(OP, w, k)?;
            check_len(
                OP,
                "the weight data",
                "bytes",
                rows.len(),
                need("the weight data", w_bytes, n_rows)?,
            )?;
            // SAFETY: the `Kernels` level proves AVX2, FMA and F16C; the
            // lengths were checked above (whole blocks: k % QK_K == 0).
            unsafe { super::repack_x86::mat_mat_q4k_gemm(cast(rows), cast(xs_q), k / QK_K, out) };
            return Ok(());
        }
        if n_rows == 0 {
            return Ok(());
        }
        for (c, o) in out.chunks_exact_mut(n_rows).enumerate() {
            self.mat_vec_as(arith, w, k, rows, &xs_q[c * x_bytes..(c + 1) * x_bytes], o)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil::{
        all_kernels, dequantize, f64_dot, quantize_activation, random_activation_f32, random_row,
        Rng,
    };

    const ARITHS: [(MatArith, GgmlType); 6] = [
        (MatArith::RepackQ4_0, GgmlType::Q4_0),
        (MatArith::RepackQ4KGemv, GgmlType::Q4_K),
        (MatArith::RepackQ4KGemm, GgmlType::Q4_K),
        (MatArith::Tiled, GgmlType::Q4_K),
        (MatArith::Tiled, GgmlType::Q5_K),
        (MatArith::Tiled, GgmlType::Q6_K),
    ];

    /// 19 rows (two groups of 8 for the SIMD lanes and a tail of 3) of
    /// random valid blocks against one activation.
    fn case(ty: GgmlType, k: usize, seed: u64) -> (Vec<u8>, Vec<u8>, Vec<f32>, usize) {
        let mut rng = Rng::new(seed);
        let n_rows = 19;
        let mut rows = Vec::new();
        for _ in 0..n_rows {
            rows.extend(random_row(ty, k, &mut rng));
        }
        let x = random_activation_f32(k, &mut rng);
        let xq = quantize_activation(ty, &x);
        (rows, xq, x, n_rows)
    }

    #[test]
    fn every_level_gives_the_same_bits_and_the_right_value() {
        let k = 1024;
        for (arith, ty) in ARITHS {
            let (rows, xq, _, n_rows) = case(ty, k, 7);
            let xd = dequantize(crate::quant::vec_dot_type(ty), &xq, k);
            let wb = rows.len() / n_rows;
            let mut first: Option<Vec<f32>> = None;
            for kern in all_kernels() {
                let mut out = vec![0f32; n_rows];
                kern.mat_vec_as(arith, ty, k, &rows, &xq, &mut out).unwrap();
                for (r, &o) in out.iter().enumerate() {
                    let wd = dequantize(ty, &rows[r * wb..(r + 1) * wb], k);
                    let (dot, abs) = f64_dot(&wd, &xd);
                    assert!(
                        (o as f64 - dot).abs() <= 1e-5 * abs,
                        "{arith} {ty} at {}: row {r}: {o} vs {dot} (sum |products| {abs})",
                        kern.level()
                    );
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{arith} {ty}: {} differs from scalar",
                        kern.level()
                    ),
                }
            }
        }
    }

    /// The token-blocked entry point gives every (row, token) the bits of
    /// the one-token kernel, for every arithmetic and level, with token
    /// counts that leave partial tiles (1..9) and a row tail past the
    /// eight-row groups (19 rows).
    #[test]
    fn mat_mat_as_equals_mat_vec_as_per_token() {
        let k = 512;
        let ariths = [
            (MatArith::VecDot, GgmlType::Q4_K),
            (MatArith::VecDot, GgmlType::Q5_0),
        ];
        for (arith, ty) in ARITHS.into_iter().chain(ariths) {
            let (rows, _, _, n_rows) = case(ty, k, 11);
            let mut rng = Rng::new(5);
            let n_cols = 9;
            let mut xs = Vec::new();
            for _ in 0..n_cols {
                xs.extend(quantize_activation(ty, &random_activation_f32(k, &mut rng)));
            }
            let xb = xs.len() / n_cols;
            for kern in all_kernels() {
                for cols in 1..=n_cols {
                    let mut out = vec![f32::NAN; n_rows * cols];
                    kern.mat_mat_as(
                        arith,
                        ty,
                        k,
                        &rows,
                        n_rows,
                        &xs[..cols * xb],
                        cols,
                        &mut out,
                    )
                    .unwrap();
                    for c in 0..cols {
                        let mut want = vec![0f32; n_rows];
                        kern.mat_vec_as(arith, ty, k, &rows, &xs[c * xb..(c + 1) * xb], &mut want)
                            .unwrap();
                        let got = &out[c * n_rows..(c + 1) * n_rows];
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{arith} {ty} at {}, {cols} tokens: token {c} differs",
                            kern.level()
                        );
                    }
                }
            }
        }
    }

    /// The float orders differ, so on random data each arithmetic gives
    /// other bits than `vec_dot` on some rows (a dispatch that silently
    /// fell back to `vec_dot` would fail here).
    #[test]
    fn the_arithmetics_are_not_vec_dot() {
        let k = 2048;
        for (arith, ty) in ARITHS {
            let (rows, xq, _, n_rows) = case(ty, k, 11);
            let kern = Kernels::scalar();
            let mut a = vec![0f32; n_rows];
            let mut v = vec![0f32; n_rows];
            kern.mat_vec_as(arith, ty, k, &rows, &xq, &mut a).unwrap();
            kern.mat_vec(ty, k, &rows, &xq, &mut v).unwrap();
            let differ = a.iter().zip(&v).filter(|(x, y)| x != y).count();
            assert!(differ > 0, "{arith} {ty} equals vec_dot on every row");
        }
    }

    #[test]
    fn wrong_types_and_lengths_are_errors() {
        let kern = Kernels::scalar();
        let (rows, xq, _, n_rows) = case(GgmlType::Q4_K, 256, 3);
        let mut out = vec![0f32; n_rows];
        let e = kern
            .mat_vec_as(
                MatArith::RepackQ4_0,
                GgmlType::Q4_K,
                256,
                &rows,
                &xq,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mat_vec_as: type q4_K is not supported (supported: q4_0)"
        );
        assert!(kern
            .mat_vec_as(MatArith::Tiled, GgmlType::Q8_0, 256, &rows, &xq, &mut out)
            .is_err());
        assert!(kern
            .mat_vec_as(
                MatArith::RepackQ4KGemv,
                GgmlType::Q4_K,
                256,
                &rows[1..],
                &xq,
                &mut out
            )
            .is_err());
        assert!(kern
            .mat_vec_as(
                MatArith::RepackQ4KGemm,
                GgmlType::Q4_K,
                256,
                &rows,
                &xq[..10],
                &mut out
            )
            .is_err());
    }
}
