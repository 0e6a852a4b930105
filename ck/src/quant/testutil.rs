//! Shared test machinery: a seeded PRNG, random valid blocks of every
//! type, ggml's test data and error measures (tests/test-quantize-fns.cpp),
//! and one harness that holds every available kernel level of a weight
//! type to the scalar path and both to f32 references.

use super::*;

/// xorshift64*: deterministic, seeded per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal (sum of four uniforms), mean 0, sd ~`sd`.
    pub fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * sd * 1.732
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// A random f16 scale of magnitude in [lo, hi), random sign if `signed`.
    pub fn f16_scale(&mut self, lo: f32, hi: f32, signed: bool) -> [u8; 2] {
        let mut v = lo * (hi / lo).powf(self.unit());
        if signed && self.byte() & 1 == 1 {
            v = -v;
        }
        f32_to_f16(v)
    }

    /// Uniform in -127..=127 (the range activation quantization produces).
    pub fn i8_127(&mut self) -> i8 {
        ((self.next_u64() % 255) as i32 - 127) as i8
    }
}

/// The kernels of every level this CPU supports (always including scalar).
pub fn all_kernels() -> Vec<Kernels> {
    let ks: Vec<Kernels> = KernelLevel::ALL
        .iter()
        .filter_map(|&l| Kernels::new(l).ok())
        .collect();
    assert_eq!(ks[0].level(), KernelLevel::Scalar);
    ks
}

/// The SIMD levels this CPU supports (the block-level integer tests run
/// each of them against the scalar twin).
pub fn simd_levels() -> Vec<KernelLevel> {
    all_kernels()
        .into_iter()
        .map(|k| k.level())
        .filter(|&l| l != KernelLevel::Scalar)
        .collect()
}

/// ggml's `generate_data`: `0.1 + amplitude * cos(i + offset)`.
pub fn ggml_data(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + amplitude * (i as f32 + offset).cos())
        .collect()
}

/// Random valid weight blocks of type `t`, `nb` blocks (`k = nb * block`).
/// Scales are f16 of sane magnitude; quant bits are uniform.
pub fn random_row(t: GgmlType, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = row_bytes(t, k).unwrap();
    let mut v: Vec<u8> = (0..bytes).map(|_| rng.byte()).collect();
    let bs = t.type_size() as usize;
    let nb = k / block_size(t);
    for b in 0..nb {
        let blk = &mut v[b * bs..(b + 1) * bs];
        match t {
            GgmlType::F32 => blk.copy_from_slice(&rng.normal(1.0).to_le_bytes()),
            GgmlType::F16 => blk.copy_from_slice(&f32_to_f16(rng.normal(1.0))),
            GgmlType::BF16 => {
                blk.copy_from_slice(&bf16::f32_to_bf16_bits(rng.normal(1.0)).to_le_bytes())
            }
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
                blk[0..2].copy_from_slice(&rng.f16_scale(1e-3, 1e-1, true))
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                blk[0..2].copy_from_slice(&rng.f16_scale(1e-3, 1e-1, false));
                blk[2..4].copy_from_slice(&rng.f16_scale(1e-2, 1.0, true));
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                blk[0..2].copy_from_slice(&rng.f16_scale(1e-4, 1e-2, false));
                blk[2..4].copy_from_slice(&rng.f16_scale(1e-4, 1e-2, false));
            }
            GgmlType::Q6_K => blk[208..210].copy_from_slice(&rng.f16_scale(1e-5, 1e-3, true)),
            _ => panic!("random_row: no generator for {t}"),
        }
    }
    v
}

/// Random f32 activations, roughly normal with a few outliers.
pub fn random_activation_f32(k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..k)
        .map(|i| {
            if i % 97 == 13 {
                rng.normal(8.0)
            } else {
                rng.normal(1.0)
            }
        })
        .collect()
}

/// `x` quantized to `vec_dot_type(w)` with the scalar kernels.
pub fn quantize_activation(w: GgmlType, x: &[f32]) -> Vec<u8> {
    let t = vec_dot_type(w);
    let mut q = vec![0u8; row_bytes(t, x.len()).unwrap()];
    Kernels::scalar().quantize_row(t, x, &mut q).unwrap();
    q
}

pub fn dequantize(t: GgmlType, src: &[u8], k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; k];
    dequantize_row(t, src, &mut out).unwrap();
    out
}

/// (dot, sum of |products|) of two f32 vectors, in f64.
pub fn f64_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut dot = 0.0f64;
    let mut abs = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let p = x as f64 * y as f64;
        dot += p;
        abs += p.abs();
    }
    (dot, abs)
}

/// ggml's `array_rmse`: sqrt(sum of squared differences) / n.
pub fn ggml_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (sum.sqrt() / a.len() as f64) as f32
}

/// ggml's per-type dot-product error bound (test-quantize-fns.cpp). None
/// of the types here is in its low-bit list (Q2_K, IQ2_*, IQ3_*), so all
/// use `MAX_DOT_PRODUCT_ERROR`.
pub const MAX_DOT_PRODUCT_ERROR: f32 = 0.02;
/// ggml's `MAX_QUANTIZATION_TOTAL_ERROR` (round-trip rmse on its data).
pub const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;
/// Kernel vs the f64 dot of the dequantized rows (float rounding only):
/// |kernel - reference| <= this * sum |w_i * x_i|.
pub const KERNEL_VS_DEQUANT: f64 = 1e-5;
/// The same for Q4_1 and Q5_1, whose kernels use Q8_1's `s = fp16(d * sum)`, which
/// is rounded to f16 (relative error up to 2^-11) where the dequantized
/// activation is not.
pub const KERNEL_VS_DEQUANT_Q4_1: f64 = 1e-3;

fn kernel_vs_dequant(w: GgmlType) -> f64 {
    if matches!(w, GgmlType::Q4_1 | GgmlType::Q5_1) {
        KERNEL_VS_DEQUANT_Q4_1
    } else {
        KERNEL_VS_DEQUANT
    }
}

/// The whole-type harness: for every available level,
/// - ggml's dot-product test (its data, ref-quantized weights, activation
///   via `quantize_row`) stays under `MAX_DOT_PRODUCT_ERROR`,
/// - on random blocks, `vec_dot` is within `KERNEL_VS_DEQUANT` of the
///   dequantize-then-dot reference and equals the scalar level bit for
///   bit,
/// - `mat_vec` and `mat_mat` equal repeated `vec_dot` bit for bit, for
///   row and column counts around the kernels' tile sizes.
pub fn check_weight_type(w: GgmlType, seed: u64) {
    let kernels = all_kernels();
    let scalar = kernels[0];
    let xt = vec_dot_type(w);
    let block = block_size(w).max(32);

    // ggml's test, per level.
    let n = 32 * 128;
    let wdata = ggml_data(0.0, n, 2.0);
    let xdata = ggml_data(1.0, n, 2.0);
    let mut wq = vec![0u8; row_bytes(w, n).unwrap()];
    scalar.quantize_row(w, &wdata, &mut wq).unwrap();
    let (dot_ref, _) = f64_dot(&wdata, &xdata);
    for kern in &kernels {
        let mut xq = vec![0u8; row_bytes(xt, n).unwrap()];
        kern.quantize_row(xt, &xdata, &mut xq).unwrap();
        let got = kern.vec_dot(w, n, &wq, &xq);
        let err = ((got as f64 - dot_ref).abs() / n as f64) as f32;
        assert!(
            err < MAX_DOT_PRODUCT_ERROR,
            "{w} {}: ggml dot product error {err} >= {MAX_DOT_PRODUCT_ERROR} (got {got}, ref {dot_ref})",
            kern.level()
        );
    }

    // Random blocks: several row lengths, including the SmolLM2/Gemma widths.
    let mut rng = Rng::new(seed);
    let widths: Vec<usize> = [block, 2 * block, 576, 640, 1536, 2048, 4096]
        .into_iter()
        .filter(|k| k % block_size(w) == 0 && *k >= block)
        .collect();
    for &k in &widths {
        for _trial in 0..4 {
            let row = random_row(w, k, &mut rng);
            let xf = random_activation_f32(k, &mut rng);
            let xq = quantize_activation(w, &xf);
            let (dref, abs) = f64_dot(&dequantize(w, &row, k), &dequantize(xt, &xq, k));
            assert!(abs > 0.0, "{w}: degenerate random row");
            let s = scalar.vec_dot(w, k, &row, &xq) as f64;
            assert!(
                (s - dref).abs() <= kernel_vs_dequant(w) * abs,
                "{w} k={k} scalar: {s} vs dequantized dot {dref} (abs sum {abs})"
            );
            for kern in &kernels[1..] {
                let v = kern.vec_dot(w, k, &row, &xq) as f64;
                assert_eq!(
                    (v as f32).to_bits(),
                    (s as f32).to_bits(),
                    "{w} k={k} {}: {v} vs scalar {s}: the levels must agree bit for bit",
                    kern.level(),
                );
                assert!(
                    (v - dref).abs() <= kernel_vs_dequant(w) * abs,
                    "{w} k={k} {}: {v} vs dequantized dot {dref}",
                    kern.level()
                );
            }
        }
    }

    // mat_vec / mat_mat against repeated vec_dot, bit for bit.
    let k = *widths.iter().find(|&&k| k >= 512).unwrap_or(&widths[0]);
    let wb = row_bytes(w, k).unwrap();
    let xb = row_bytes(xt, k).unwrap();
    let n_rows = 11;
    let n_cols = 6;
    let rows: Vec<u8> = (0..n_rows)
        .flat_map(|_| random_row(w, k, &mut rng))
        .collect();
    let xs: Vec<u8> = (0..n_cols)
        .flat_map(|_| quantize_activation(w, &random_activation_f32(k, &mut rng)))
        .collect();
    for kern in &kernels {
        for nr in [1, 2, 3, 4, 5, 8, 11] {
            let rows = &rows[..nr * wb];
            for c in 0..n_cols {
                let x = &xs[c * xb..(c + 1) * xb];
                let mut out = vec![f32::NAN; nr];
                kern.mat_vec(w, k, rows, x, &mut out).unwrap();
                for r in 0..nr {
                    let v = kern.vec_dot(w, k, &rows[r * wb..(r + 1) * wb], x);
                    assert_eq!(
                        out[r].to_bits(),
                        v.to_bits(),
                        "{w} {} mat_vec rows={nr} row {r}: {} vs vec_dot {v}",
                        kern.level(),
                        out[r]
                    );
                }
            }
            for nc in [1, 2, 3, 4, 5, 6] {
                let xs = &xs[..nc * xb];
                let mut out = vec![f32::NAN; nr * nc];
                kern.mat_mat(w, k, rows, nr, xs, nc, &mut out).unwrap();
                for c in 0..nc {
                    for r in 0..nr {
                        let v = kern.vec_dot(
                            w,
                            k,
                            &rows[r * wb..(r + 1) * wb],
                            &xs[c * xb..(c + 1) * xb],
                        );
                        assert_eq!(
                            out[c * nr + r].to_bits(),
                            v.to_bits(),
                            "{w} {} mat_mat {nr}x{nc} at row {r} col {c}",
                            kern.level()
                        );
                    }
                }
            }
        }
    }
}

/// ggml's round-trip test: quantize its data with `quantize_row`, then
/// dequantize; rmse (ggml's measure) under `MAX_QUANTIZATION_TOTAL_ERROR`,
/// identical bytes at every level.
pub fn check_round_trip(t: GgmlType) {
    let n = 32 * 128;
    let data = ggml_data(0.0, n, 2.0);
    let kernels = all_kernels();
    let mut first: Option<Vec<u8>> = None;
    for kern in &kernels {
        let mut q = vec![0u8; row_bytes(t, n).unwrap()];
        kern.quantize_row(t, &data, &mut q).unwrap();
        let back = dequantize(t, &q, n);
        let err = ggml_rmse(&data, &back);
        assert!(
            err < MAX_QUANTIZATION_TOTAL_ERROR,
            "{t} {}: round-trip error {err}",
            kern.level()
        );
        match &first {
            None => first = Some(q),
            Some(f) => assert!(
                f == &q,
                "{t} {}: quantized bytes differ from scalar",
                kern.level()
            ),
        }
    }
}

/// A SIMD twin's block-level integer function, with the level it needs.
pub type BlockFn<W, X, S> = (KernelLevel, unsafe fn(&W, &X) -> S);

/// Holds each SIMD twin's exact integer block result to the scalar one on
/// `trials` block pairs from `gen` (which gets the trial number, so it can
/// place extreme values in the first few). Twins whose level this CPU
/// lacks are skipped; the count of comparisons made is asserted.
pub fn check_block_sums<W, X, S: PartialEq + std::fmt::Debug>(
    name: &str,
    trials: usize,
    mut gen: impl FnMut(&mut Rng, usize) -> (W, X),
    scalar: impl Fn(&W, &X) -> S,
    twins: &[BlockFn<W, X, S>],
) {
    let mut rng = Rng::new(name.len() as u64 * 7919);
    let runnable: Vec<_> = twins.iter().filter(|(l, _)| l.available()).collect();
    assert_eq!(
        runnable.len(),
        simd_levels().len(),
        "{name}: one twin per SIMD level this CPU has"
    );
    let mut compared = 0;
    for trial in 0..trials {
        let (w, x) = gen(&mut rng, trial);
        let want = scalar(&w, &x);
        for (level, f) in &runnable {
            // SAFETY: only twins whose level this CPU supports run.
            let got = unsafe { f(&w, &x) };
            assert_eq!(got, want, "{name} {level} trial {trial}");
            compared += 1;
        }
    }
    assert_eq!(compared, trials * runnable.len());
}

/// The `[AVX2, AVX-512]` block twins of a type, or none off x86-64.
macro_rules! x86_twins {
    ($avx2:path, $avx512:path) => {{
        #[cfg(target_arch = "x86_64")]
        let twins: Vec<$crate::quant::testutil::BlockFn<_, _, _>> = vec![
            ($crate::quant::KernelLevel::Avx2, $avx2),
            ($crate::quant::KernelLevel::Avx512, $avx512),
        ];
        #[cfg(not(target_arch = "x86_64"))]
        let twins: Vec<$crate::quant::testutil::BlockFn<_, _, _>> = Vec::new();
        twins
    }};
}
pub(crate) use x86_twins;

/// A Q8_K block with the given values and consistent `bsums`.
pub fn q8k_from_qs(qs: [i8; QK_K], d: f32) -> BlockQ8K {
    let mut bsums = [0u8; 32];
    for j in 0..QK_K / 16 {
        let s: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        bsums[2 * j..2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
    BlockQ8K {
        d: d.to_le_bytes(),
        qs,
        bsums,
    }
}

/// A random valid Q8_K activation block (values in -127..=127).
pub fn random_q8k(rng: &mut Rng) -> BlockQ8K {
    let qs = std::array::from_fn(|_| rng.i8_127());
    let d = rng.range(1e-3, 1e-1);
    q8k_from_qs(qs, d)
}

/// For the types whose matmuls of several tokens ggml computes in another
/// order (tinyBLAS for the float types, the tiled kernels for Q5_K/Q6_K):
/// `mat_vec_in_pass` gives the same bits at every level for one token
/// (where it is `mat_vec`) and for more, within the kernels' bound of the
/// dequantized dot, on lengths with partial steps.
pub fn check_pass_orders(w: GgmlType, seed: u64) {
    let kernels = all_kernels();
    let mut rng = Rng::new(seed);
    let bs = block_size(w);
    for k in [1, 7, 31, 33, 64, 100, 576, 1536, 256, 512, 2048] {
        if k % bs != 0 {
            continue;
        }
        let wb = row_bytes(w, k).unwrap();
        let n_rows = 5;
        let rows: Vec<u8> = (0..n_rows)
            .flat_map(|_| random_row(w, k, &mut rng))
            .collect();
        let xf = random_activation_f32(k, &mut rng);
        let xq = quantize_activation(w, &xf);
        let xd = dequantize(vec_dot_type(w), &xq, k);
        for n_tokens in [1, 2, 9] {
            let mut first: Option<Vec<f32>> = None;
            for kern in &kernels {
                let mut out = vec![f32::NAN; n_rows];
                kern.mat_vec_in_pass(w, k, &rows, &xq, n_tokens, &mut out)
                    .unwrap();
                for r in 0..n_rows {
                    let row = &rows[r * wb..(r + 1) * wb];
                    let (dref, abs) = f64_dot(&dequantize(w, row, k), &xd);
                    assert!(
                        (out[r] as f64 - dref).abs() <= KERNEL_VS_DEQUANT * abs,
                        "{w} k={k} n={n_tokens} {}: {} vs {dref}",
                        kern.level(),
                        out[r]
                    );
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{w} k={k} n={n_tokens} {}: {out:?} vs scalar {f:?}",
                        kern.level()
                    ),
                }
            }
            if n_tokens == 1 {
                let mut mv = vec![0f32; n_rows];
                kernels[0].mat_vec(w, k, &rows, &xq, &mut mv).unwrap();
                assert_eq!(first.as_ref().unwrap(), &mv);
            }
        }
    }
}
