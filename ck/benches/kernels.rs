//! Throughput of the ck engine's quantized kernels: GB/s of weight bytes
//! for `mat_vec` (decode) per type and kernel level, single-threaded, at
//! the matrix shapes of SmolLM2-135M (576 wide, 1536 FFN) and
//! Gemma-3-270M (640 wide, 2048 FFN).
//!
//! "hot" repeats one matrix (it stays in L2); "stream" walks copies of it
//! totalling 64 MiB, so the weights come from DRAM as in decode. The
//! `mat_mat` line is prefill: 8 activation columns per weight pass,
//! reported as weight GB/s per column (higher than mat_vec means the
//! weight decode is being amortized). Each figure is the best of ten
//! rounds, to keep other processes on a shared machine out of it.
//!
//! `cargo bench -p cktrace-ck --bench kernels [-- FILTER]`; FILTER matches
//! a type name (e.g. `q5_0`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use cktrace_ck::gguf::GgmlType;
use cktrace_ck::quant::{row_bytes, vec_dot_type, KernelLevel, Kernels};

const STREAM_BYTES: usize = 64 << 20;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 2.0
        })
        .collect()
}

/// Seconds per call of `f`: the best of `ROUNDS` rounds of at least
/// `min / ROUNDS` each. The minimum, not the mean, so that other processes
/// on a shared machine disturb the figure as little as possible.
fn time(min: Duration, mut f: impl FnMut()) -> f64 {
    const ROUNDS: u32 = 10;
    f();
    let round = min / ROUNDS;
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let mut n = 0u64;
        let start = Instant::now();
        loop {
            f();
            n += 1;
            let e = start.elapsed();
            if e >= round {
                best = best.min(e.as_secs_f64() / n as f64);
                break;
            }
        }
    }
    best
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let levels: Vec<Kernels> = KernelLevel::ALL
        .iter()
        .filter_map(|&l| Kernels::new(l).ok())
        .collect();
    let types = [
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ];
    // (rows, k): ffn_up of SmolLM2 and Gemma, then their ffn_down.
    let shapes = [(1536usize, 576usize), (2048, 640), (576, 1536), (640, 2048)];
    let min = Duration::from_millis(300);
    println!("single thread, best of 10 rounds; GB/s of weight bytes (hot = in cache, stream = 64 MiB of copies, mm8 = mat_mat with 8 columns, per column)");
    for &t in &types {
        if let Some(f) = &filter {
            if !t.name().contains(f.as_str()) {
                continue;
            }
        }
        let xt = vec_dot_type(t);
        for &(n_rows, k) in &shapes {
            if row_bytes(t, k).is_err() {
                continue;
            }
            let wb = row_bytes(t, k).unwrap();
            let mat_bytes = wb * n_rows;
            let scalar = Kernels::new(KernelLevel::Scalar).unwrap();
            let mut w = vec![0u8; mat_bytes];
            let wf = data(k * n_rows, 1);
            for (r, row) in w.chunks_exact_mut(wb).enumerate() {
                scalar
                    .quantize_row(t, &wf[r * k..(r + 1) * k], row)
                    .unwrap();
            }
            let copies = (STREAM_BYTES / mat_bytes).max(2);
            let big: Vec<u8> = (0..copies).flat_map(|_| w.iter().copied()).collect();
            let xf = data(k * 8, 2);
            let xb = row_bytes(xt, k).unwrap();
            let mut xq = vec![0u8; xb * 8];
            for c in 0..8 {
                scalar
                    .quantize_row(xt, &xf[c * k..(c + 1) * k], &mut xq[c * xb..(c + 1) * xb])
                    .unwrap();
            }
            let mut out = vec![0f32; n_rows * 8];
            let mut line = format!("{:5} {:4}x{:<5}", t.name(), n_rows, k);
            for kern in &levels {
                let hot = time(min, || {
                    kern.mat_vec(t, k, black_box(&w), &xq[..xb], &mut out[..n_rows])
                        .unwrap();
                });
                let mut i = 0;
                let stream = time(min, || {
                    let m = &big[i * mat_bytes..(i + 1) * mat_bytes];
                    kern.mat_vec(t, k, black_box(m), &xq[..xb], &mut out[..n_rows])
                        .unwrap();
                    i = (i + 1) % copies;
                });
                let mm = time(min, || {
                    kern.mat_mat(t, k, black_box(&w), n_rows, &xq, 8, &mut out)
                        .unwrap();
                });
                let gbs = |s: f64| mat_bytes as f64 / s / 1e9;
                line += &format!(
                    " | {:6} hot {:6.1} stream {:5.1} mm8 {:6.1}",
                    kern.level().to_string(),
                    gbs(hot),
                    gbs(stream),
                    gbs(mm / 8.0)
                );
            }
            println!("{line}");
            if t == GgmlType::Q5_0 || t == GgmlType::Q8_0 {
                packed_line(t, k, n_rows, &w, &xq, &levels, min);
            }
        }
    }
}

/// The same figures for the sixteen-row packed layout of `t`
/// (`quant::q5_0_x16`, `quant::q8_0_x16`; the latter has no `mat_mat`).
fn packed_line(
    t: GgmlType,
    k: usize,
    n_rows: usize,
    w: &[u8],
    xq: &[u8],
    levels: &[Kernels],
    min: Duration,
) {
    let scalar = Kernels::new(KernelLevel::Scalar).unwrap();
    let mut p = vec![0u8; w.len()];
    let q5 = t == GgmlType::Q5_0;
    if q5 {
        scalar.pack_q5_0_x16(k, w, &mut p).unwrap();
    } else {
        scalar.pack_q8_0_x16(k, w, &mut p).unwrap();
    }
    let mat_bytes = p.len();
    let copies = (STREAM_BYTES / mat_bytes).max(2);
    let big: Vec<u8> = (0..copies).flat_map(|_| p.iter().copied()).collect();
    let xb = xq.len() / 8;
    let mut out = vec![0f32; n_rows * 8];
    let mv = |kern: &Kernels, m: &[u8], out: &mut [f32]| {
        if q5 {
            kern.mat_vec_q5_0_x16(k, m, &xq[..xb], out).unwrap()
        } else {
            kern.mat_vec_q8_0_x16(k, m, &xq[..xb], out).unwrap()
        }
    };
    let mut line = format!("{:5} {:4}x{:<5}", format!("{}x16", t.name()), n_rows, k);
    for kern in levels {
        let hot = time(min, || mv(kern, black_box(&p), &mut out[..n_rows]));
        let mut i = 0;
        let stream = time(min, || {
            mv(
                kern,
                black_box(&big[i * mat_bytes..(i + 1) * mat_bytes]),
                &mut out[..n_rows],
            );
            i = (i + 1) % copies;
        });
        let gbs = |s: f64| mat_bytes as f64 / s / 1e9;
        line += &format!(
            " | {:6} hot {:6.1} stream {:5.1}",
            kern.level().to_string(),
            gbs(hot),
            gbs(stream)
        );
        if q5 {
            let mm = time(min, || {
                kern.mat_mat_q5_0_x16(k, black_box(&p), n_rows, xq, 8, &mut out)
                    .unwrap();
            });
            line += &format!(" mm8 {:6.1}", gbs(mm / 8.0));
        }
    }
    println!("{line}");
}
