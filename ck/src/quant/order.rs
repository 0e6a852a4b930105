//! The float order of the SIMD kernels (ggml's x86 `vec_dot` code) in
//! portable Rust, so that the scalar level returns their bits.
//!
//! Every kernel splits a block's exact integer dot product into eight i32
//! lanes (lane `l` sums values `4l..4l + 4` of each 32-value group, the
//! grouping of `maddubs` + `madd` and of `vpdpbusd`), converts them to f32
//! and accumulates each lane with one FMA per block; the lanes are summed
//! at the end in ggml's `hsum_float_8` order. The helpers here are those
//! steps, with [`f32::mul_add`] where the SIMD code uses an FMA (one
//! rounding, like `vfmadd`).

/// Eight f32 lanes, one FMA per block each (`acc = fma(d, lanes, acc)`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Acc8(pub [f32; 8]);

impl Acc8 {
    /// `acc[l] = fma(d, lanes[l] as f32, acc[l])`, as
    /// `_mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc)`.
    #[inline(always)]
    pub fn fma(&mut self, d: f32, lanes: [i32; 8]) {
        for l in 0..8 {
            self.0[l] = d.mul_add(lanes[l] as f32, self.0[l]);
        }
    }

    /// ggml's `hsum_float_8`.
    #[inline(always)]
    pub fn hsum(self) -> f32 {
        hsum_float_8(self.0)
    }
}

/// ggml's `hsum_float_8`: the high half added to the low half, then lanes
/// 0+2 and 1+3, then those two.
#[inline(always)]
pub(crate) fn hsum_float_8(x: [f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// ggml's 4-lane `hsum` of the K-quant kernels (`x + movehl(x)`, then
/// lane 0 + lane 1).
#[inline(always)]
pub(crate) fn hsum_float_4(x: [f32; 4]) -> f32 {
    (x[0] + x[2]) + (x[1] + x[3])
}

/// `_mm512_reduce_add_ps` in GCC's order (the halves folded: lane `i`
/// plus lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`), which is
/// [`hsum_float_8`] of the two halves' sum.
#[inline(always)]
pub(crate) fn hsum_f32x16(x: &[f32; 16]) -> f32 {
    hsum_float_8(std::array::from_fn(|i| x[i + 8] + x[i]))
}

/// ggml's `GGML_F32x8_REDUCE` lane sum (AVX): high + low half, then two
/// `hadd`s: `(r0 + r1) + (r2 + r3)`.
#[inline(always)]
pub(crate) fn hsum_f32x8_hadd(x: &[f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (r[0] + r[1]) + (r[2] + r[3])
}

/// Lane `l` of `sum(a[i] * b[i])` over 32 values: values `4l..4l + 4`.
#[inline(always)]
pub(crate) fn lanes_32(a: impl Fn(usize) -> i32, b: impl Fn(usize) -> i32) -> [i32; 8] {
    std::array::from_fn(|l| (4 * l..4 * l + 4).map(|i| a(i) * b(i)).sum())
}

/// How ggml's float `vec_dot` (F32, F16) groups its lanes on this CPU:
/// 16 lanes when ggml is built with AVX-512F (llama.cpp builds for the host
/// CPU), else 8. This follows the CPU, not the kernel level, so every level
/// returns the same bits.
pub(crate) fn float_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return 16;
        }
    }
    8
}

/// ggml's `ggml_vec_dot_f32`/`_f16` on x86 in portable Rust: four
/// accumulators of `L` lanes, one FMA per element (the products of f16 or
/// f32 values, fused as the FMA does), reduced as `(a0 + a2) + (a1 + a3)`
/// and then across lanes (GCC's `_mm512_reduce_add_ps` for 16, AVX's two
/// `hadd`s for 8); the last `n % (4 * L)` elements added in f64.
pub(crate) fn float_dot<const L: usize>(
    n: usize,
    w: impl Fn(usize) -> f32,
    x: impl Fn(usize) -> f32,
) -> f32 {
    let step = 4 * L;
    let np = n - n % step;
    let mut acc = [[0f32; L]; 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for l in 0..L {
                let e = i + j * L + l;
                a[l] = w(e).mul_add(x(e), a[l]);
            }
        }
        i += step;
    }
    let v: [f32; L] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let h = if L == 16 {
        hsum_f32x16(v[..].try_into().unwrap())
    } else {
        hsum_f32x8_hadd(v[..].try_into().unwrap())
    };
    let mut s = h as f64;
    for e in np..n {
        s += (w(e) * x(e)) as f64;
    }
    s as f32
}

/// llamafile's tinyBLAS F32/F16 dot product (one output of a matmul of
/// two or more tokens) in portable Rust: one accumulator of `L` lanes
/// (element `i` into lane `i % L`, one FMA each), the last partial step
/// zero-filled as tinyBLAS's masked load does (`fma(0, 0, acc)`), then the
/// lane sum (GCC's `_mm512_reduce_add_ps` for 16, `hsum_float_8` for 8).
pub(crate) fn gemm_float_dot<const L: usize>(
    n: usize,
    w: impl Fn(usize) -> f32,
    x: impl Fn(usize) -> f32,
) -> f32 {
    let mut acc = [0f32; L];
    for i in 0..n {
        acc[i % L] = w(i).mul_add(x(i), acc[i % L]);
    }
    if !n.is_multiple_of(L) {
        for a in &mut acc[n % L..] {
            *a = 0f32.mul_add(0.0, *a);
        }
    }
    if L == 16 {
        hsum_f32x16(acc[..].try_into().unwrap())
    } else {
        hsum_float_8(acc[..].try_into().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsums_follow_the_x86_shuffles() {
        // Values whose sums round differently under other orders.
        let x: [f32; 8] = [1e8, 1.0, -1e8, 3.0, 0.5, 7.0, 0.25, -2.0];
        let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
        assert_eq!(hsum_float_8(x), (r[0] + r[2]) + (r[1] + r[3]));
        assert_eq!(hsum_f32x8_hadd(&x), (r[0] + r[1]) + (r[2] + r[3]));
        let mut y = [0f32; 16];
        y[..8].copy_from_slice(&x);
        y[8] = 5.0;
        assert_eq!(
            hsum_f32x16(&y),
            hsum_float_8(std::array::from_fn(|i| y[i] + y[i + 8]))
        );
    }
}
