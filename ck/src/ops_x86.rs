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

/// The scalar `fold` of 16 lanes (`v[i] += v[i + 8]`, then 4, 2, 1) in
/// registers.
///
/// # Safety
///
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fold16(v: __m512) -> f32 {
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
    );
    fold8(h)
}

/// The scalar `fold` of 8 lanes (`v[i] += v[i + 4]`, then 2, 1).
///
/// # Safety
///
/// AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fold8(v: __m256) -> f32 {
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
}

/// `ops::dot_lanes::<16>`: 16 lane accumulators (`acc + a * b`, two
/// roundings), the partial last vector loaded masked (its missing lanes add
/// `+0 * +0`, which leaves an accumulator that started at `+0` as it is),
/// folded by halves.
///
/// # Safety
///
/// AVX-512F; `n <= a.len(), b.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn dot_lanes16(a: &[f32], b: &[f32], n: usize) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let full = n / 16 * 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= full <= n.
        let p = _mm512_mul_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
        acc = _mm512_add_ps(acc, p);
    }
    if full < n {
        let m: __mmask16 = (1u32 << (n - full)) as u16 - 1;
        // SAFETY: the mask reads elements full..n only.
        let p = _mm512_mul_ps(
            _mm512_maskz_loadu_ps(m, pa.add(full)),
            _mm512_maskz_loadu_ps(m, pb.add(full)),
        );
        acc = _mm512_add_ps(acc, p);
    }
    fold16(acc)
}

/// `ops::dot_lanes::<8>` (see [`dot_lanes16`]).
///
/// # Safety
///
/// AVX2; `n <= a.len(), b.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_lanes8(a: &[f32], b: &[f32], n: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let full = n / 8 * 8;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= n.
        let p = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
        acc = _mm256_add_ps(acc, p);
    }
    if full < n {
        let r = (n - full) as i32;
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(r),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        // SAFETY: the mask reads elements full..n only.
        let p = _mm256_mul_ps(
            _mm256_maskload_ps(pa.add(full), m),
            _mm256_maskload_ps(pb.add(full), m),
        );
        acc = _mm256_add_ps(acc, p);
    }
    fold8(acc)
}

/// `ops::dot_lanes::<lanes>(a, b)`, bit for bit, if this CPU has the
/// `lanes`-wide features; `None` otherwise.
#[inline]
pub(crate) fn dot_lanes(lanes: usize, a: &[f32], b: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if have(lanes) {
        let n = a.len().min(b.len());
        // SAFETY: `have` checked the features; n fits both slices.
        return Some(unsafe {
            if lanes == 16 {
                dot_lanes16(a, b, n)
            } else {
                dot_lanes8(a, b, n)
            }
        });
    }
    let _ = (lanes, a, b);
    None
}

/// `ops::dot_ggml_vec(16, ..)` over its full steps of 64 elements: four
/// accumulators, reduced `(x0 + x2) + (x1 + x3)` and folded; the caller adds
/// the tail.
///
/// # Safety
///
/// AVX-512F; `np <= a.len(), b.len()`, a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn dot_vec16(a: &[f32], b: &[f32], np: usize) -> f32 {
    let mut x = [_mm512_setzero_ps(); 4];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for i in (0..np).step_by(64) {
        for (j, acc) in x.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= np.
            let p = _mm512_mul_ps(
                _mm512_loadu_ps(pa.add(i + 16 * j)),
                _mm512_loadu_ps(pb.add(i + 16 * j)),
            );
            *acc = _mm512_add_ps(*acc, p);
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(x[0], x[2]), _mm512_add_ps(x[1], x[3]));
    fold16(s)
}

/// `ops::dot_ggml_vec(8, ..)` over its full steps of 32 elements; the lanes
/// summed as AVX2's two `hadd`s do (`(t0 + t1) + (t2 + t3)` of `t[i] = x[i]
/// + x[i + 4]`).
///
/// # Safety
///
/// AVX2; `np <= a.len(), b.len()`, a multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_vec8(a: &[f32], b: &[f32], np: usize) -> f32 {
    let mut x = [_mm256_setzero_ps(); 4];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for i in (0..np).step_by(32) {
        for (j, acc) in x.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= np.
            let p = _mm256_mul_ps(
                _mm256_loadu_ps(pa.add(i + 8 * j)),
                _mm256_loadu_ps(pb.add(i + 8 * j)),
            );
            *acc = _mm256_add_ps(*acc, p);
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]));
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let h = _mm_hadd_ps(t, t);
    _mm_cvtss_f32(_mm_hadd_ps(h, h))
}

/// The vector part of `ops::dot_ggml_vec`: `(sum over the full steps, np)`
/// if this CPU has the `lanes`-wide features.
#[inline]
pub(crate) fn dot_vec(lanes: usize, a: &[f32], b: &[f32]) -> Option<(f32, usize)> {
    #[cfg(target_arch = "x86_64")]
    if have(lanes) {
        let n = a.len().min(b.len());
        let np = n / (4 * lanes) * (4 * lanes);
        // SAFETY: `have` checked the features; np fits both slices.
        return Some(unsafe {
            if lanes == 16 {
                (dot_vec16(a, b, np), np)
            } else {
                (dot_vec8(a, b, np), np)
            }
        });
    }
    let _ = (lanes, a, b);
    None
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

    #[test]
    fn vector_dots_equal_the_scalar_emulations() {
        let x = inputs();
        let a: Vec<f32> = x.iter().map(|v| v * 0.01).collect();
        let b: Vec<f32> = x.iter().rev().map(|v| 0.5 - v * 0.003).collect();
        for lanes in [16usize, 8] {
            if !have(lanes) {
                eprintln!("skipping the {lanes}-lane check: this CPU lacks its features");
                continue;
            }
            // Every tail length, short and long vectors, and offsets that
            // misalign the loads.
            for n in (0..300).chain([511, 512, 513, 4096, 4099]) {
                for off in [0usize, 3] {
                    let (a, b) = (&a[off..off + n], &b[off + 7..off + 7 + n]);
                    let want = if lanes == 16 {
                        crate::ops::dot_lanes::<16>(a, b)
                    } else {
                        crate::ops::dot_lanes::<8>(a, b)
                    };
                    let got = dot_lanes(lanes, a, b).unwrap();
                    assert_eq!(got.to_bits(), want.to_bits(), "dot_lanes {lanes} n {n}");
                    let want = crate::ops::dot_ggml_vec_scalar(lanes, a, b);
                    let got = crate::ops::dot_ggml_vec(lanes, a, b);
                    assert_eq!(got.to_bits(), want.to_bits(), "dot_ggml_vec {lanes} n {n}");
                }
            }
        }
    }
}
