//! The non-matmul ops of the forward pass, each written to compute what
//! ggml's CPU backend computes (ggml/src/ggml-cpu/ops.cpp and vec.h in the
//! vendored tree), in the same order where the order changes the rounding:
//!
//! - RMSNorm sums squares in f64 (`ggml_float`), then `scale = 1/sqrtf(mean
//!   + eps)`, `y = (x * scale) * w` (the fused RMS_NORM + MUL).
//! - RoPE builds the cos/sin cache as `ggml_rope_cache_init` does: theta
//!   starts at the position and is multiplied by `freq_base^(-2/n_dims)` in
//!   f32 once per pair, through `rope_yarn` (freq_scale, ext_factor,
//!   attn_factor).
//! - Softmax takes the max, sums `exp(x - max)` in f64, multiplies by 1/sum.
//! - SiLU is `x / (1 + exp(-x))`; SwiGLU is `silu(gate) * up`.
//! - GELU goes through ggml's f16 table (`GGML_GELU_FP16`): the input is
//!   rounded to f16, the tanh GELU of that value is rounded to f16 again;
//!   inputs at or beyond +-10 short-circuit as in `ggml_vec_gelu_f32`.
//!   [`geglu_ggml`] builds the table as the pinned build's compiler does
//!   (one FMA); [`gelu`]/[`geglu`] round one entry of the 65536 otherwise.

use half::f16;

use crate::config::{RopeKind, RopeParams};

/// `out = rmsnorm(x) * w` over one row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// ggml's `rope_yarn_corr_dims`.
fn corr_dims(p: &RopeParams) -> [f32; 2] {
    let dim = |n_rot: f32| -> f32 {
        p.n_dims as f32 * (p.n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * p.freq_base.ln())
    };
    let start = dim(p.beta_fast).floor();
    let end = dim(p.beta_slow).ceil();
    [start.max(0.0), end.min(p.n_dims as f32 - 1.0)]
}

/// Fills `cache` (`n_dims` floats: cos, sin per pair) for position `pos`.
pub fn rope_cache(p: &RopeParams, pos: usize, cache: &mut [f32]) {
    let theta_scale = p.freq_base.powf(-2.0 / p.n_dims as f32);
    let corr = corr_dims(p);
    let mut theta = pos as f32;
    for i0 in (0..p.n_dims).step_by(2) {
        let theta_extrap = theta;
        let theta_interp = p.freq_scale * theta_extrap;
        let mut th = theta_interp;
        let mut mscale = p.attn_factor;
        if p.ext_factor != 0.0 {
            let y = ((i0 / 2) as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
            let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * p.ext_factor;
            th = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * (1.0 / p.freq_scale).ln();
        }
        cache[i0] = th.cos() * mscale;
        cache[i0 + 1] = th.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotates one head (`x.len()` = head size >= `n_dims`) in place with a
/// cache from [`rope_cache`]; dimensions past `n_dims` are left as they are.
pub fn rope_apply(kind: RopeKind, n_dims: usize, cache: &[f32], x: &mut [f32]) {
    for i0 in (0..n_dims).step_by(2) {
        let (c, s) = (cache[i0], cache[i0 + 1]);
        let (a, b) = match kind {
            RopeKind::Normal => (i0, i0 + 1),
            RopeKind::Neox => (i0 / 2, i0 / 2 + n_dims / 2),
        };
        let (x0, x1) = (x[a], x[b]);
        // ggml's `rotate_pairs`, as the C++ compiler contracts it (GCC's
        // default -ffp-contract=fast): the first product fused.
        x[a] = fma32(x0, c, -(x1 * s));
        x[b] = fma32(x0, s, x1 * c);
    }
}

/// In-place softmax of `x`.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        sum += e as f64;
        *v = e;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out[i] = silu(gate[i]) * up[i]` (ggml's `swiglu` with the gate first).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// `out[i] = silu(gate[i]) * up[i]` as ggml's `ggml_vec_swiglu_f32` on
/// this CPU: `lanes` at a time with `ggml_v_silu` (`x / (1 + v_expf(0 -
/// x))`), the tail with libm's `expf`.
pub fn swiglu_ggml(lanes: usize, gate: &[f32], up: &[f32], out: &mut [f32]) {
    // The full vectors in SIMD (the same bits), the rest below.
    let done = crate::ops_x86::swiglu(lanes, gate, up, out);
    let n = out.len().min(gate.len()).min(up.len());
    swiglu_ggml_scalar(lanes, &gate[done..n], &up[done..n], &mut out[done..n]);
}

/// [`swiglu_ggml`] emulated lane by lane (the reference of its SIMD twin).
pub(crate) fn swiglu_ggml_scalar(lanes: usize, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let exp = if lanes == 16 {
        expf_ggml_avx512
    } else {
        expf_ggml_avx2
    };
    let n = out.len().min(gate.len()).min(up.len());
    let full = n / lanes * lanes;
    for i in 0..full {
        let g = gate[i];
        out[i] = (g / (1.0 + exp(0.0 - g))) * up[i];
    }
    for i in full..n {
        out[i] = silu(gate[i]) * up[i];
    }
}

/// ggml's `ggml_gelu_f32` (tanh approximation).
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// GELU as ggml's `ggml_vec_gelu_f32` with `GGML_GELU_FP16` computes it.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let h = f16::from_f32(x).to_f32();
        f16::from_f32(gelu_tanh(h)).to_f32()
    }
}

/// `out[i] = gelu(gate[i]) * up[i]` (ggml's `geglu`).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g * u
        } else {
            gelu(g) * u
        };
    }
}

/// `out[i] = x[i] * s` (ggml's `scale` without bias, or `mul` by a
/// broadcast scalar: one rounding per element).
pub fn scale(x: &[f32], s: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * s;
    }
}

/// Soft-capping in place: `x = cap * tanh(x * (1 / cap))`, as llama.cpp
/// builds it (`ggml_scale`, `ggml_tanh` = `tanhf`, `ggml_scale`).
pub fn softcap(cap: f32, x: &mut [f32]) {
    let inv = 1.0f32 / cap;
    for v in x.iter_mut() {
        *v = (*v * inv).tanh() * cap;
    }
}

/// ggml's `ggml_table_gelu_f16`, the table `GGML_GELU_FP16` looks GELU up
/// in: for every f16 value `x`, `ggml_gelu_f32(x)` rounded to f16, as the
/// pinned build computes it. GCC contracts `1.0f + GELU_COEF_A*x*x` into
/// `fma(GELU_COEF_A*x, x, 1.0f)` there (seen in the object code of
/// `ggml_cpu_init`), which [`gelu`] does not do; the two tables differ at
/// one entry (x = -1.9990234).
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const GELU_COEF_A: f32 = 0.044715;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16::from_bits(bits).to_f32();
                let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh());
                f16::from_f32(g).to_f32()
            })
            .collect()
    })
}

/// `out[i] = gelu(gate[i]) * up[i]` as ggml's `ggml_vec_geglu_f32` with
/// `GGML_GELU_FP16` computes it on the pinned build: 0 at or below -10,
/// `gate * up` at or above 10, else the f16 table entry of `gate` (rounded
/// to nearest even) times `up`.
pub fn geglu_ggml(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let table = gelu_table();
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g * u
        } else {
            table[f16::from_f32(g).to_bits() as usize] * u
        };
    }
}

/// `a + b` into `out`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// Writes `x` into `dst` as little-endian f16 (round to nearest even, as
/// F16C and ggml's `GGML_FP32_TO_FP16` do).
pub fn store_f16(x: &[f32], dst: &mut [u8]) {
    for (d, &v) in dst.chunks_exact_mut(2).zip(x) {
        d.copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }
}

/// Writes `x` into `dst` as little-endian f32.
pub fn store_f32(x: &[f32], dst: &mut [u8]) {
    for (d, &v) in dst.chunks_exact_mut(4).zip(x) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// How ggml's CPU build on this machine (llama.cpp builds with
/// `GGML_NATIVE`, for the host CPU) groups the float arithmetic of the
/// attention, so that the ck engine can add in the same order and match it
/// bit for bit:
///
/// - KQ and KQV are F16 x F16 matmuls that ggml hands to llamafile's
///   tinyBLAS: one accumulator of `dot_lanes` f32 lanes per output (16 with
///   AVX-512F, 8 with AVX2), an FMA per lane per step, then the halves
///   folded (`hsum`, `_mm512_reduce_add_ps`).
/// - Softmax exponentiates `softmax_lanes` values at a time with
///   `ggml_v_expf` (a polynomial, not libm's `expf`) and adds each
///   vector's folded sum into an f64.
///
/// The products of two f16 values are exact in f32, so `acc + a * b` is
/// the FMA ggml computes; no FMA instruction is needed to match it. This
/// follows the CPU, not `--kernels`: every kernel level gives the same
/// attention.
///
/// `paths` is the same kind of fact for the matmuls: which of ggml's CPU
/// kernels (repacked GEMV/GEMM, tiled, `vec_dot`) each weight goes
/// through, and so which float order the ck kernels compute for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlLanes {
    pub dot_lanes: usize,
    pub softmax_lanes: usize,
    pub paths: crate::profile::GgmlProfile,
}

impl GgmlLanes {
    /// What ggml built for this CPU uses.
    pub fn detect() -> GgmlLanes {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                let dq = is_x86_feature_detected!("avx512dq");
                return GgmlLanes {
                    dot_lanes: 16,
                    softmax_lanes: if dq { 16 } else { 8 },
                    paths: crate::profile::GgmlProfile::detect(),
                };
            }
        }
        GgmlLanes {
            dot_lanes: 8,
            softmax_lanes: 8,
            paths: crate::profile::GgmlProfile::detect(),
        }
    }
}

/// Dot product with `L` lane accumulators (lane `i` sums elements `i`,
/// `i + L`, ...), folded by halves at the end, as tinyBLAS computes it.
pub fn dot_lanes<const L: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let n = a.len().min(b.len());
    let full = n / L * L;
    for (ca, cb) in a[..full].chunks_exact(L).zip(b[..full].chunks_exact(L)) {
        for i in 0..L {
            acc[i] += ca[i] * cb[i];
        }
    }
    for i in full..n {
        acc[i - full] += a[i] * b[i];
    }
    fold(&mut acc)
}

/// [`dot_lanes`] with the lane count chosen at run time: what ggml's
/// tinyBLAS computes for an F16 x F16 matmul of two or more columns.
pub fn dot_ggml(lanes: usize, a: &[f32], b: &[f32]) -> f32 {
    if let Some(d) = crate::ops_x86::dot_lanes(lanes, a, b) {
        return d;
    }
    if lanes == 16 {
        dot_lanes::<16>(a, b)
    } else {
        dot_lanes::<8>(a, b)
    }
}

/// ggml's `ggml_vec_dot_f16` on x86 (what a one-column F16 matmul runs,
/// since llamafile's sgemm leaves `n < 2` to ggml): four accumulators of
/// `lanes` lanes over steps of `4 * lanes` elements, reduced pairwise
/// (`x0 + x2`, `x1 + x3`, then the two), the vector folded
/// (`_mm512_reduce_add_ps`) or, for 8 lanes, summed as AVX2's two `hadd`s
/// do; the tail past the last full step added in f64.
pub fn dot_ggml_vec(lanes: usize, a: &[f32], b: &[f32]) -> f32 {
    if let Some((s, np)) = crate::ops_x86::dot_vec(lanes, a, b) {
        let mut sumf = s as f64;
        for i in np..a.len().min(b.len()) {
            sumf += (a[i] * b[i]) as f64;
        }
        return sumf as f32;
    }
    dot_ggml_vec_scalar(lanes, a, b)
}

/// [`dot_ggml_vec`] emulated lane by lane (the reference of its SIMD twin).
pub(crate) fn dot_ggml_vec_scalar(lanes: usize, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let step = 4 * lanes;
    let np = n / step * step;
    let mut sum = [[0f32; 16]; 4];
    for i in (0..np).step_by(step) {
        for (j, acc) in sum.iter_mut().enumerate() {
            let (ca, cb) = (&a[i + j * lanes..][..lanes], &b[i + j * lanes..][..lanes]);
            for l in 0..lanes {
                acc[l] += ca[l] * cb[l];
            }
        }
    }
    for l in 0..lanes {
        sum[0][l] += sum[2][l];
        sum[1][l] += sum[3][l];
    }
    for l in 0..lanes {
        sum[0][l] += sum[1][l];
    }
    let x = &mut sum[0];
    let mut sumf = if lanes == 16 {
        fold(&mut x[..16]) as f64
    } else {
        let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
        ((t[0] + t[1]) + (t[2] + t[3])) as f64
    };
    for i in np..n {
        sumf += (a[i] * b[i]) as f64;
    }
    sumf as f32
}

/// Horizontal sum by halves: `v[i] += v[i + n/2]` until one is left.
fn fold(v: &mut [f32]) -> f32 {
    let mut n = v.len();
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// `fma(a, b, c)` in f32 through f64 (the product is exact in f64; the
/// sum rounds twice, which differs from one rounding only at exact f32
/// midpoints).
#[inline(always)]
fn fma32(a: f32, b: f32, c: f32) -> f32 {
    (a as f64 * b as f64 + c as f64) as f32
}

const EXP_R: f32 = 12582912.0; // 0x1.8p23
const EXP_LOG2E: f32 = f32::from_bits(0x3fb8aa3b); // 0x1.715476p+0
const EXP_LN2_HI: f32 = f32::from_bits(0x3f317200); // 0x1.62e4p-1
const EXP_LN2_LO: f32 = f32::from_bits(0x35bfbe8e); // 0x1.7f7d1cp-20
const EXP_P0: f32 = f32::from_bits(0x3c072010); // 0x1.0e4020p-7
const EXP_P1: f32 = f32::from_bits(0x3d2b9f17); // 0x1.573e2ep-5
const EXP_P2: f32 = f32::from_bits(0x3e2aaf33); // 0x1.555e66p-3
const EXP_P3: f32 = f32::from_bits(0x3efffedb); // 0x1.fffdb6p-2
const EXP_P4: f32 = f32::from_bits(0x3f7ffff6); // 0x1.ffffecp-1

/// One lane of ggml's AVX-512 `ggml_v_expf`.
pub fn expf_ggml_avx512(x: f32) -> f32 {
    let z = fma32(x, EXP_LOG2E, EXP_R);
    let n = z - EXP_R;
    let b = fma32(-n, EXP_LN2_LO, fma32(-n, EXP_LN2_HI, x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = fma32(
        fma32(fma32(EXP_P0, b, EXP_P1), u, fma32(EXP_P2, b, EXP_P3)),
        u,
        fma32(EXP_P4, b, 1.0),
    );
    // _mm512_scalef_ps(j, n): j * 2^n, rounded once.
    (j as f64 * 2f64.powi(n as i32)) as f32
}

/// One lane of ggml's AVX2 `ggml_v_expf`.
pub fn expf_ggml_avx2(x: f32) -> f32 {
    let z = fma32(x, EXP_LOG2E, EXP_R);
    let n = z - EXP_R;
    let b = fma32(-n, EXP_LN2_LO, fma32(-n, EXP_LN2_HI, x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = fma32(
        fma32(fma32(EXP_P0, b, EXP_P1), u, fma32(EXP_P2, b, EXP_P3)),
        u,
        EXP_P4 * b,
    );
    if !(n.abs() > 126.0) {
        return fma32(j, k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        fma32(s2, j, s2) * s1
    }
}

/// Softmax of the first `n` of `x` as ggml's `soft_max` computes a masked
/// row: exponentials `lanes` at a time (positions past `n` are masked and
/// contribute exact zeros), each vector's folded sum added into an f64,
/// then every value multiplied by `(float)(1.0 / sum)`.
pub fn softmax_ggml(lanes: usize, x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp = if lanes == 16 {
        expf_ggml_avx512
    } else {
        expf_ggml_avx2
    };
    let mut sum = 0f64;
    let mut v = [0f32; 16];
    // The full vectors exponentiated in SIMD (the same bits), then summed
    // as below.
    let done = crate::ops_x86::exp_sub(lanes, x, max);
    for (c, chunk) in x.chunks_mut(lanes).enumerate() {
        v[..lanes].fill(0.0);
        let simd = (c + 1) * lanes <= done;
        for (i, e) in chunk.iter_mut().enumerate() {
            if !simd {
                *e = exp(*e - max);
            }
            v[i] = *e;
        }
        sum += fold(&mut v[..lanes]) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for e in x.iter_mut() {
        *e *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope_params(kind: RopeKind) -> RopeParams {
        RopeParams {
            kind,
            n_dims: 8,
            freq_base: 10000.0,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 2048,
        }
    }

    #[test]
    fn rms_norm_of_a_constant_row_is_the_weight() {
        let x = [2.0f32; 8];
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let mut y = [0f32; 8];
        rms_norm(&x, &w, 0.0, &mut y);
        for (a, b) in y.iter().zip(&w) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for kind in [RopeKind::Normal, RopeKind::Neox] {
            let p = rope_params(kind);
            let mut cache = [0f32; 8];
            rope_cache(&p, 0, &mut cache);
            let x0: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
            let mut x = x0.clone();
            rope_apply(kind, 8, &cache, &mut x);
            assert_eq!(x, x0);
            rope_cache(&p, 17, &mut cache);
            rope_apply(kind, 8, &cache, &mut x);
            let n0: f32 = x0.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn rope_normal_rotates_adjacent_pairs_by_pos_theta() {
        let p = rope_params(RopeKind::Normal);
        let mut cache = [0f32; 8];
        rope_cache(&p, 3, &mut cache);
        let mut x = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        rope_apply(RopeKind::Normal, 8, &cache, &mut x);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masked_entries() {
        let mut x = [1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax(&mut x);
        assert_eq!(x[2], 0.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > x[1] && x[1] > x[0]);
    }

    #[test]
    fn gelu_matches_the_f16_table_semantics() {
        assert_eq!(gelu(-11.0), 0.0);
        assert_eq!(gelu(12.0), 12.0);
        assert_eq!(gelu(0.0), 0.0);
        let g = gelu(1.0);
        assert!((g - 0.8413).abs() < 2e-3, "{g}");
        // The result is an f16 value.
        assert_eq!(f16::from_f32(g).to_f32(), g);
    }

    #[test]
    fn ggml_expf_lanes_track_libm_and_handle_the_extremes() {
        for exp in [expf_ggml_avx512, expf_ggml_avx2] {
            for i in -2000..200 {
                let x = i as f32 * 0.05;
                let (a, b) = (exp(x), x.exp());
                // ggml: at most 1.45 ulp, plus 0.5 ulp of rounding.
                assert!((a - b).abs() <= 4e-7 * b + 1e-44, "{x}: {a} vs {b}");
            }
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(-200.0), 0.0);
            assert_eq!(exp(0.0), 1.0);
        }
    }

    #[test]
    fn lane_dots_and_ggml_softmax() {
        let a: Vec<f32> = (0..70).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..70).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        for l in [8, 16] {
            assert!((dot_ggml(l, &a, &b) as f64 - exact).abs() < 1e-5);
            assert!((dot_ggml_vec(l, &a, &b) as f64 - exact).abs() < 1e-5);
            let mut x = a.clone();
            softmax_ggml(l, &mut x);
            assert!((x.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ggml_geglu_table_is_the_contracted_tanh_gelu() {
        let t = gelu_table();
        let mut differ = Vec::new();
        for bits in 0..=u16::MAX {
            let x = f16::from_bits(bits).to_f32();
            if x.is_finite() && x > -10.0 && x < 10.0 && t[bits as usize] != gelu(x) {
                differ.push(x);
            }
        }
        // The FMA ggml's compiler forms changes one rounding to f16.
        assert_eq!(differ, vec![-1.9990234]);
        let mut o = [0f32; 4];
        geglu_ggml(&[-11.0, 12.0, 0.0, 1.0], &[2.0, 3.0, 4.0, 2.0], &mut o);
        assert_eq!(&o[..3], &[0.0, 36.0, 0.0]);
        assert!((o[3] - 2.0 * 0.8413).abs() < 4e-3, "{}", o[3]);
    }

    #[test]
    fn scale_and_softcap() {
        let mut o = [0f32; 2];
        scale(&[1.5, -2.0], 4.0, &mut o);
        assert_eq!(o, [6.0, -8.0]);
        let mut x = [0.0f32, 1.0, 1000.0, -1000.0];
        softcap(30.0, &mut x);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - 30.0 * (1.0f32 / 30.0).tanh()).abs() < 1e-6);
        assert_eq!((x[2], x[3]), (30.0, -30.0));
    }

    #[test]
    fn silu_and_swiglu() {
        assert_eq!(silu(0.0), 0.0);
        let mut o = [0f32; 2];
        swiglu(&[1.0, -1.0], &[2.0, 3.0], &mut o);
        assert!((o[0] - 2.0 * 0.731_058_6).abs() < 1e-6);
        assert!((o[1] - 3.0 * -0.268_941_43).abs() < 1e-6);
    }
}
