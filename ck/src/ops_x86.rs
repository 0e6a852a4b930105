//! SIMD twins of the elementwise ops in [`crate::ops`] whose cost shows in
//! a prefill: ggml's vector `expf` (`ggml_v_expf`, AVX-512 and AVX2
//! versions) in SwiGLU and softmax. Each computes, lane by lane, the same
//! operations as ggml's vector code (the same FMAs, the same `scalef` or
//! exponent arithmetic, the same IEEE division), so the results are ggml's
//! bits; the scalar emulations in `ops` are the reference they are tested
//! against.
//!
//! The entry points are safe: each checks the CPU features at run time and
//! returns how many leading elements it computed (0 when the CPU lacks the
//! features), leaving the rest to the scalar code.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the CPU runs the `lanes`-wide kernels (16: AVX-512F and DQ, 8:
/// AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn have(lanes: usize) -> bool {
    match lanes {
        16 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq"),
        8 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        _ => false,
    }
}

/// ggml's AVX-512 `ggml_v_expf`.
///
/// # Safety
///
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn expf16(x: __m512) -> __m512 {
    let r = _mm512_set1_ps(f32::from_bits(0x4b40_0000)); // 0x1.8p23
    let z = _mm512_fmadd_ps(x, _mm512_set1_ps(f32::from_bits(0x3fb8aa3b)), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(
        n,
        _mm512_set1_ps(f32::from_bits(0x35bfbe8e)),
        _mm512_fnmadd_ps(n, _mm512_set1_ps(f32::from_bits(0x3f317200)), x),
    );
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3c072010)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3d2b9f17)),
            ),
            u,
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3e2aaf33)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3efffedb)),
            ),
        ),
        u,
        _mm512_fmadd_ps(
            _mm512_set1_ps(f32::from_bits(0x3f7ffff6)),
            b,
            _mm512_set1_ps(1.0),
        ),
    );
    let res = _mm512_scalef_ps(j, n);
    if d == 0 {
        return res;
    }
    let zero = _mm512_setzero_ps();
    let alt = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
        _mm512_set1_ps(f32::INFINITY),
        zero,
    );
    _mm512_mask_blend_ps(d, res, alt)
}

/// ggml's AVX2 `ggml_v_expf`.
///
/// # Safety
///
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn expf8(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bfbe8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f317200)), x),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_bits(0x3c072010)),
                b,
                _mm256_set1_ps(f32::from_bits(0x3d2b9f17)),
            ),
            u,
            _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_bits(0x3e2aaf33)),
                b,
                _mm256_set1_ps(f32::from_bits(0x3efffedb)),
            ),
        ),
        u,
        _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7ffff6)), b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            d,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// # Safety
///
/// AVX-512F and DQ; the three slices hold at least `n` elements, `n` a
/// multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn swiglu16(gate: &[f32], up: &[f32], out: &mut [f32], n: usize) {
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        // SAFETY (loads, stores): i + 16 <= n <= each slice's length.
        let g = _mm512_loadu_ps(gate.as_ptr().add(i));
        let u = _mm512_loadu_ps(up.as_ptr().add(i));
        let e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(s, u));
    }
}

/// # Safety
///
/// AVX2 and FMA; the three slices hold at least `n` elements, `n` a
/// multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu8(gate: &[f32], up: &[f32], out: &mut [f32], n: usize) {
    let one = _mm256_set1_ps(1.0);
    for i in (0..n).step_by(8) {
        // SAFETY (loads, stores): i + 8 <= n <= each slice's length.
        let g = _mm256_loadu_ps(gate.as_ptr().add(i));
        let u = _mm256_loadu_ps(up.as_ptr().add(i));
        let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
    }
}

/// `out[i] = silu(gate[i]) * up[i]` for the leading multiple of `lanes`
/// elements, as ggml's `ggml_vec_swiglu_f32` computes them; returns how
/// many it computed (0 if this CPU lacks the `lanes`-wide features).
pub(crate) fn swiglu(lanes: usize, gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    let n = out.len().min(gate.len()).min(up.len());
    #[cfg(target_arch = "x86_64")]
    if have(lanes) {
        let full = n / lanes * lanes;
        // SAFETY: `have` checked the features; `full <= n` fits every slice.
        unsafe {
            if lanes == 16 {
                swiglu16(gate, up, out, full)
            } else {
                swiglu8(gate, up, out, full)
            }
        }
        return full;
    }
    let _ = (lanes, n, gate, up, out);
    0
}

/// # Safety
///
/// AVX-512F and DQ; `n <= x.len()`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn exp_sub16(x: &mut [f32], max: f32, n: usize) {
    let m = _mm512_set1_ps(max);
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n <= x.len().
        let p = x.as_mut_ptr().add(i);
        _mm512_storeu_ps(p, expf16(_mm512_sub_ps(_mm512_loadu_ps(p), m)));
    }
}

/// # Safety
///
/// AVX2 and FMA; `n <= x.len()`, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub8(x: &mut [f32], max: f32, n: usize) {
    let m = _mm256_set1_ps(max);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= x.len().
        let p = x.as_mut_ptr().add(i);
        _mm256_storeu_ps(p, expf8(_mm256_sub_ps(_mm256_loadu_ps(p), m)));
    }
}

/// `x[i] = ggml_v_expf(x[i] - max)` for the leading multiple of `lanes`
/// elements; returns how many it computed (0 if this CPU lacks the
/// features).
pub(crate) fn exp_sub(lanes: usize, x: &mut [f32], max: f32) -> usize {
    #[cfg(target_arch = "x86_64")]
    if have(lanes) {
        let full = x.len() / lanes * lanes;
        // SAFETY: `have` checked the features; `full <= x.len()`.
        unsafe {
            if lanes == 16 {
                exp_sub16(x, max, full)
            } else {
                exp_sub8(x, max, full)
            }
        }
        return full;
    }
    let _ = (lanes, x, max);
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{expf_ggml_avx2, expf_ggml_avx512};

    /// Inputs over the whole range the kernels branch on: ordinary values,
    /// the edges of the fast path (|n| near 126 and 192), and beyond.
    fn inputs() -> Vec<f32> {
        let mut v = Vec::new();
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            v.push((u - 0.5) * 40.0);
        }
        for e in [
            -150.0f32, -140.0, -104.0, -90.0, -87.5, -87.0, 87.0, 88.5, 89.0, 133.0, 140.0,
        ] {
            for d in 0..16 {
                v.push(e + d as f32 * 0.37);
            }
        }
        v.extend([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30]);
        v.truncate(v.len() / 16 * 16);
        v
    }

    #[test]
    fn vector_exp_equals_the_scalar_emulation() {
        for (lanes, scalar) in [
            (16usize, expf_ggml_avx512 as fn(f32) -> f32),
            (8, expf_ggml_avx2),
        ] {
            if !have(lanes) {
                eprintln!("skipping the {lanes}-lane check: this CPU lacks its features");
                continue;
            }
            let x = inputs();
            let mut y = x.clone();
            assert_eq!(exp_sub(lanes, &mut y, 0.5), x.len());
            for (a, b) in x.iter().zip(&y) {
                let want = scalar(a - 0.5);
                assert!(
                    want.to_bits() == b.to_bits() || (want.is_nan() && b.is_nan()),
                    "{lanes} lanes: exp({a} - 0.5) = {b:e}, scalar {want:e}"
                );
            }
        }
    }

    #[test]
    fn vector_swiglu_equals_the_scalar_emulation() {
        for lanes in [16usize, 8] {
            if !have(lanes) {
                eprintln!("skipping the {lanes}-lane check: this CPU lacks its features");
                continue;
            }
            let g = inputs();
            let u: Vec<f32> = g.iter().map(|v| 0.25 - v * 0.125).collect();
            let mut out = vec![0f32; g.len() + 5];
            let mut want = out.clone();
            // Past the last full vector the caller's scalar code runs.
            let n = swiglu(lanes, &g, &u, &mut out[..g.len()]);
            assert_eq!(n, g.len());
            crate::ops::swiglu_ggml_scalar(lanes, &g, &u, &mut want[..g.len()]);
            for i in 0..g.len() {
                assert_eq!(
                    out[i].to_bits(),
                    want[i].to_bits(),
                    "{lanes} lanes, gate {}",
                    g[i]
                );
            }
        }
    }
}
