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
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
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
    fn silu_and_swiglu() {
        assert_eq!(silu(0.0), 0.0);
        let mut o = [0f32; 2];
        swiglu(&[1.0, -1.0], &[2.0, 3.0], &mut o);
        assert!((o[0] - 2.0 * 0.731_058_6).abs() < 1e-6);
        assert!((o[1] - 3.0 * -0.268_941_43).abs() < 1e-6);
    }
}
