//! BF16 weights against BF16 activations: `ggml_vec_dot_bf16` for a
//! one-token matmul and llamafile's tinyBLAS for two or more tokens, each
//! in the arithmetic ggml built for this CPU uses ([`Bf16Order`]).
//!
//! On a CPU with AVX512_BF16 both use `vdpbf16ps`: per 32-bit lane, the
//! odd pair's product is added to the accumulator with one FMA, then the
//! even pair's, each rounded to nearest even with denormal inputs read as
//! zero and denormal results flushed to zero (Intel's pseudo-code; checked
//! on Zen 4 against the instruction, see the tests). `ggml_vec_dot_bf16`
//! keeps two such accumulators over 64-element steps and adds their lane
//! sums in f64; tinyBLAS keeps one per output over 32-element steps. On
//! other CPUs ggml widens to f32 and uses FMA lanes (16 with AVX-512F, 8
//! with AVX2). Every kernel level computes the order of the CPU, not of
//! the level, so all levels return the same bits.

use super::order::{hsum_f32x16, hsum_float_8};
use super::{mat_mat_scalar, Block, KernelLevel, Kernels as Level, WeightKernels};

/// One bfloat16 element, as little-endian bytes (block size 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockBF16 {
    pub bits: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockBF16>() == 2);
// SAFETY: repr(C) over one byte array: alignment 1, no padding, any bits.
unsafe impl Block for BlockBF16 {}

impl BlockBF16 {
    /// Exact: bf16 is the top half of an f32.
    #[inline(always)]
    pub fn get(self) -> f32 {
        f32::from_bits((u16::from_le_bytes(self.bits) as u32) << 16)
    }
}

/// ggml's `ggml_compute_fp32_to_bf16`: NaN keeps its top bits with the
/// quiet bit forced; everything else rounds to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `ggml_cpu_fp32_to_bf16` (scalar on every x86 build of ggml).
pub(crate) fn quantize_row(x: &[f32], dst: &mut [BlockBF16]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        d.bits = f32_to_bf16_bits(v).to_le_bytes();
    }
}

pub(crate) fn dequantize_row(src: &[BlockBF16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// The arithmetic ggml's BF16 matmuls use on this CPU (llama.cpp builds
/// ggml for the host CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Order {
    /// AVX512_BF16: `vdpbf16ps` (`_mm512_dpbf16_ps`).
    Dpbf16,
    /// AVX-512F without BF16: widened to f32, 16-lane FMAs.
    F32x16,
    /// AVX2 (or less): widened to f32, 8-lane FMAs.
    F32x8,
}

impl Bf16Order {
    /// What ggml built for this CPU computes.
    pub fn detect() -> Bf16Order {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                if is_x86_feature_detected!("avx512bf16") {
                    return Bf16Order::Dpbf16;
                }
                return Bf16Order::F32x16;
            }
        }
        Bf16Order::F32x8
    }
}

/// Denormals to (signed) zero: `vdpbf16ps`'s DAZ on inputs and FTZ on
/// results.
#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One 32-bit lane of `vdpbf16ps`: `acc` plus the products of the pairs
/// `(w[0], x[0])` and `(w[1], x[1])`, the odd one first.
#[inline(always)]
pub(crate) fn dpbf16_lane(acc: f32, w: [BlockBF16; 2], x: [BlockBF16; 2]) -> f32 {
    let t = ftz(ftz(w[1].get()).mul_add(ftz(x[1].get()), ftz(acc)));
    ftz(ftz(w[0].get()).mul_add(ftz(x[0].get()), t))
}

/// `acc` (16 lanes) after `vdpbf16ps` with 32 elements from `w` and `x`
/// (fewer at the end of a row: the rest read as zero, like tinyBLAS's
/// masked load).
#[inline(always)]
fn dpbf16_step(acc: &mut [f32; 16], w: &[BlockBF16], x: &[BlockBF16]) {
    let z = BlockBF16::default();
    let at = |v: &[BlockBF16], i: usize| if i < v.len() { v[i] } else { z };
    for (l, a) in acc.iter_mut().enumerate() {
        *a = dpbf16_lane(
            *a,
            [at(w, 2 * l), at(w, 2 * l + 1)],
            [at(x, 2 * l), at(x, 2 * l + 1)],
        );
    }
}

/// The products of the last `n % step` elements added in f64, as ggml's
/// `vec_dot_bf16` ends.
fn tail_f64(mut sum: f64, w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    for (a, b) in w.iter().zip(x) {
        sum += (a.get() * b.get()) as f64;
    }
    sum as f32
}

/// `ggml_vec_dot_bf16` in portable Rust, in `order`.
pub(crate) fn vec_dot_bf16_in(order: Bf16Order, w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: bf16 vec_dot length mismatch");
    let n = w.len();
    match order {
        Bf16Order::Dpbf16 => {
            let np = n - n % 64;
            let (mut c1, mut c2) = ([0f32; 16], [0f32; 16]);
            for i in (0..np).step_by(64) {
                dpbf16_step(&mut c1, &w[i..i + 32], &x[i..i + 32]);
                dpbf16_step(&mut c2, &w[i + 32..i + 64], &x[i + 32..i + 64]);
            }
            let sum = 0.0f64 + hsum_f32x16(&c1) as f64 + hsum_f32x16(&c2) as f64;
            tail_f64(sum, &w[np..], &x[np..])
        }
        Bf16Order::F32x16 => {
            let np = n - n % 32;
            let (mut c1, mut c2) = ([0f32; 16], [0f32; 16]);
            for i in (0..np).step_by(32) {
                for l in 0..16 {
                    c1[l] = w[i + l].get().mul_add(x[i + l].get(), c1[l]);
                    c2[l] = w[i + 16 + l].get().mul_add(x[i + 16 + l].get(), c2[l]);
                }
            }
            let sum = 0.0f64 + hsum_f32x16(&c1) as f64 + hsum_f32x16(&c2) as f64;
            tail_f64(sum, &w[np..], &x[np..])
        }
        Bf16Order::F32x8 => {
            let np = n - n % 32;
            let mut c = [[0f32; 8]; 4];
            for i in (0..np).step_by(32) {
                for (j, cj) in c.iter_mut().enumerate() {
                    for l in 0..8 {
                        let e = i + 8 * j + l;
                        cj[l] = w[e].get().mul_add(x[e].get(), cj[l]);
                    }
                }
            }
            let v: [f32; 8] = std::array::from_fn(|l| (c[0][l] + c[2][l]) + (c[1][l] + c[3][l]));
            tail_f64(hsum_float_8(v) as f64, &w[np..], &x[np..])
        }
    }
}

/// llamafile's tinyBLAS BF16 dot product (one output of a matmul of two
/// or more tokens) in portable Rust, in `order`: one accumulator over
/// steps of 32 (`vdpbf16ps`), 16 or 8 elements, the last partial step
/// zero-filled, then the lane sum.
pub(crate) fn gemm_dot_bf16_in(order: Bf16Order, w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    assert_eq!(w.len(), x.len(), "quant: bf16 vec_dot length mismatch");
    let n = w.len();
    match order {
        Bf16Order::Dpbf16 => {
            let mut acc = [0f32; 16];
            for i in (0..n).step_by(32) {
                let e = (i + 32).min(n);
                dpbf16_step(&mut acc, &w[i..e], &x[i..e]);
            }
            hsum_f32x16(&acc)
        }
        Bf16Order::F32x16 => {
            let mut acc = [0f32; 16];
            for i in 0..n {
                acc[i % 16] = w[i].get().mul_add(x[i].get(), acc[i % 16]);
            }
            hsum_f32x16(&acc)
        }
        Bf16Order::F32x8 => {
            let mut acc = [0f32; 8];
            for i in 0..n {
                acc[i % 8] = w[i].get().mul_add(x[i].get(), acc[i % 8]);
            }
            hsum_float_8(acc)
        }
    }
}

/// The scalar level: `ggml_vec_dot_bf16` in this CPU's order.
pub(crate) fn vec_dot_bf16_scalar(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    vec_dot_bf16_in(Bf16Order::detect(), w, x)
}

/// AVX-512 with AVX512_BF16: `vdpbf16ps` itself, for the [`Bf16Order::Dpbf16`]
/// order (only chosen on CPUs that have it).
#[cfg(target_arch = "x86_64")]
pub(crate) mod dpbf16 {
    use super::BlockBF16;
    use crate::quant::x86::hsum_f32x16_gcc;
    use std::arch::x86_64::*;

    /// 32 elements from `p`, as `vdpbf16ps` reads them.
    ///
    /// # Safety
    ///
    /// AVX-512F; `p` points at 32 readable elements.
    #[inline(always)]
    unsafe fn load(p: *const BlockBF16) -> __m512bh {
        // SAFETY (of the transmute): __m512i and __m512bh are both 64
        // plain bytes.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast()))
    }

    /// `ggml_vec_dot_bf16` with AVX512_BF16.
    ///
    /// # Safety
    ///
    /// AVX-512F, BW, VL and BF16. Lengths are checked.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn vec_dot(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
        assert_eq!(w.len(), x.len(), "quant: bf16 vec_dot length mismatch");
        let n = w.len();
        let np = n - n % 64;
        let (mut c1, mut c2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        for i in (0..np).step_by(64) {
            // SAFETY: i + 64 <= np <= n elements of both slices.
            unsafe {
                c1 = _mm512_dpbf16_ps(c1, load(pw.add(i)), load(px.add(i)));
                c2 = _mm512_dpbf16_ps(c2, load(pw.add(i + 32)), load(px.add(i + 32)));
            }
        }
        let sum = 0.0f64 + hsum_f32x16_gcc(c1) as f64 + hsum_f32x16_gcc(c2) as f64;
        super::tail_f64(sum, &w[np..], &x[np..])
    }

    /// tinyBLAS's BF16 dot product with AVX512_BF16 (masked load for the
    /// last partial step).
    ///
    /// # Safety
    ///
    /// AVX-512F, BW, VL and BF16. Lengths are checked.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn gemm_dot(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
        assert_eq!(w.len(), x.len(), "quant: bf16 vec_dot length mismatch");
        let n = w.len();
        let np = n - n % 32;
        let mut acc = _mm512_setzero_ps();
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        for i in (0..np).step_by(32) {
            // SAFETY: i + 32 <= np <= n elements of both slices.
            unsafe {
                acc = _mm512_dpbf16_ps(acc, load(pw.add(i)), load(px.add(i)));
            }
        }
        let rem = n - np;
        if rem != 0 {
            let k: __mmask32 = (1u32 << rem) - 1;
            // SAFETY: the mask covers the `rem` elements left in both
            // slices; masked-off elements are not read.
            unsafe {
                let a = _mm512_maskz_loadu_epi16(k, pw.add(np).cast());
                let b = _mm512_maskz_loadu_epi16(k, px.add(np).cast());
                acc = _mm512_dpbf16_ps(
                    acc,
                    std::mem::transmute::<__m512i, __m512bh>(a),
                    std::mem::transmute::<__m512i, __m512bh>(b),
                );
            }
        }
        hsum_f32x16_gcc(acc)
    }
}

/// The dot product of one row with one activation in this CPU's order, for
/// a one-token matmul (`gemm == false`) or a larger one, at `kern`'s level.
#[inline]
fn dot_at(kern: Level, order: Bf16Order, gemm: bool, w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kern.level() == KernelLevel::Avx512 && order == Bf16Order::Dpbf16 {
        // SAFETY: the AVX-512 level proves avx512f/bw/vl, and
        // `Bf16Order::Dpbf16` is only detected on CPUs with avx512bf16.
        return unsafe {
            if gemm {
                dpbf16::gemm_dot(w, x)
            } else {
                dpbf16::vec_dot(w, x)
            }
        };
    }
    let _ = kern;
    if gemm {
        gemm_dot_bf16_in(order, w, x)
    } else {
        vec_dot_bf16_in(order, w, x)
    }
}

/// `out[r] = dot(row r, x)` in this CPU's order for a one-token matmul
/// (`gemm == false`, `ggml_vec_dot_bf16`) or a larger one (tinyBLAS).
pub(crate) fn mat_vec_pass(
    kern: Level,
    gemm: bool,
    rows: &[BlockBF16],
    x: &[BlockBF16],
    out: &mut [f32],
) {
    let k = x.len();
    assert_eq!(
        rows.len(),
        k * out.len(),
        "quant: mat_vec rows/blocks mismatch"
    );
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let order = Bf16Order::detect();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
        *o = dot_at(kern, order, gemm, row, x);
    }
}

pub(crate) struct Kernels;

impl WeightKernels for Kernels {
    type W = BlockBF16;
    type X = BlockBF16;

    fn vec_dot_scalar(w: &[BlockBF16], x: &[BlockBF16]) -> f32 {
        vec_dot_bf16_scalar(w, x)
    }

    fn mat_vec(kern: Level, rows: &[BlockBF16], x: &[BlockBF16], out: &mut [f32]) {
        mat_vec_pass(kern, false, rows, x, out);
    }

    fn mat_mat(kern: Level, rows: &[BlockBF16], xs: &[BlockBF16], nb: usize, out: &mut [f32]) {
        if kern.level() == KernelLevel::Scalar || nb == 0 {
            return mat_mat_scalar::<Self>(rows, xs, nb, out);
        }
        let n_rows = rows.len() / nb;
        for (x, o) in xs.chunks_exact(nb).zip(out.chunks_exact_mut(n_rows.max(1))) {
            mat_vec_pass(kern, false, rows, x, &mut o[..n_rows]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::testutil;

    #[test]
    fn bf16_kernels_match_scalar_and_references() {
        testutil::check_weight_type(GgmlType::BF16, 3);
    }

    /// The portable `vdpbf16ps` lane equals the instruction on this CPU
    /// (when it has AVX512_BF16) on random pairs of every exponent,
    /// denormals, infinities and signed zeros included.
    #[test]
    fn bf16_dpbf16_lane_equals_the_instruction() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")) {
                eprintln!("no AVX512_BF16 here: nothing to compare with");
                return;
            }
            use std::arch::x86_64::*;
            /// # Safety
            ///
            /// AVX-512F and BF16.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
            unsafe fn hw(acc: &[f32; 16], w: &[BlockBF16; 32], x: &[BlockBF16; 32]) -> [f32; 16] {
                let mut out = [0f32; 16];
                // SAFETY: 16 f32 and 32 bf16 values each; same features.
                unsafe {
                    let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        w.as_ptr().cast(),
                    ));
                    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        x.as_ptr().cast(),
                    ));
                    let r = _mm512_dpbf16_ps(_mm512_loadu_ps(acc.as_ptr()), a, b);
                    _mm512_storeu_ps(out.as_mut_ptr(), r);
                }
                out
            }
            let mut rng = testutil::Rng::new(1616);
            let mut bf = |wide: bool| {
                let e = if wide {
                    rng.byte() as u16
                } else {
                    100 + (rng.byte() % 56) as u16
                };
                let v = ((rng.byte() as u16 & 1) << 15) | (e << 7) | (rng.byte() as u16 & 0x7f);
                BlockBF16 {
                    bits: v.to_le_bytes(),
                }
            };
            let mut compared = 0;
            for trial in 0..20000 {
                let wide = trial % 4 == 0;
                let w: [BlockBF16; 32] = std::array::from_fn(|_| bf(wide));
                let x: [BlockBF16; 32] = std::array::from_fn(|_| bf(wide));
                let acc: [f32; 16] = std::array::from_fn(|i| {
                    let b = if trial % 5 == 0 {
                        // denormal accumulators
                        (w[i].get().to_bits() ^ x[i].get().to_bits()) & 0x807f_ffff
                    } else {
                        w[i + 16].get().to_bits() ^ (x[i + 16].get().to_bits() >> 9)
                    };
                    f32::from_bits(b)
                });
                // SAFETY: checked above that the CPU has the features.
                let want = unsafe { hw(&acc, &w, &x) };
                for l in 0..16 {
                    let got =
                        dpbf16_lane(acc[l], [w[2 * l], w[2 * l + 1]], [x[2 * l], x[2 * l + 1]]);
                    if want[l].is_nan() {
                        assert!(got.is_nan(), "trial {trial} lane {l}");
                    } else {
                        assert_eq!(got.to_bits(), want[l].to_bits(), "trial {trial} lane {l}");
                    }
                    compared += 1;
                }
            }
            assert_eq!(compared, 20000 * 16);
        }
    }

    /// Both of ggml's BF16 orders (one token: `vec_dot_bf16`; more:
    /// tinyBLAS) agree across levels, partial steps included.
    #[test]
    fn bf16_pass_orders_agree_across_levels() {
        testutil::check_pass_orders(GgmlType::BF16, 77);
    }

    #[test]
    fn bf16_round_trip() {
        testutil::check_round_trip(GgmlType::BF16);
    }

    #[test]
    fn bf16_rounding_matches_ggml() {
        // 1.0 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        // ... and 1.0 + 3*2^-8 ties up to the even neighbour.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(-2.0), 0xc000);
        // A signalling NaN becomes quiet, keeping its top bits.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        // Overflow rounds to infinity.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(
            BlockBF16 {
                bits: 0x3fc0u16.to_le_bytes()
            }
            .get(),
            1.5
        );
    }
}
