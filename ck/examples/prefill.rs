//! A profiling harness for the ck engine alone: loads a GGUF model and
//! runs a prefill of N tokens (ids 1000.., no tokenizer) R times, then D
//! decode steps, printing the median of each; meant for `perf record`.
//!
//! `cargo run --release -p cktrace-ck --example prefill -- MODEL [N] [R] [D] [THREADS]`
//! (`CK_WEIGHTS=copy` copies the weights into the arena instead of mapping them;
//! `CK_HEAD=plain` reads the output head in the GGUF layout).

use std::time::Instant;

use cktrace_ck::layout::{KvType, LayoutOptions, WeightLayout, WeightPlacement};
use cktrace_ck::{Engine, EngineOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .expect("usage: prefill MODEL [N] [R] [D] [THREADS]");
    let num = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (n, reps, dec, threads) = (num(2, 64), num(3, 10), num(4, 32), num(5, 2));
    let mut e = Engine::new(
        model.as_ref(),
        EngineOptions {
            layout: LayoutOptions {
                ctx: (n + dec + 16).max(256),
                batch: n,
                threads,
                kv_type: KvType::F16,
                weights: match std::env::var("CK_WEIGHTS").as_deref() {
                    Ok("copy") => WeightPlacement::Copy,
                    _ => WeightPlacement::Map,
                },
                head: match std::env::var("CK_HEAD").as_deref() {
                    Ok("plain") => WeightLayout::Plain,
                    _ => WeightLayout::Packed,
                },
                layers: match std::env::var("CK_LAYERS").as_deref() {
                    Ok("plain") => WeightLayout::Plain,
                    _ => WeightLayout::Packed,
                },
            },
            kernels: None,
            check_canaries: false,
            ggml_paths: None,
        },
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let prompt: Vec<u32> = (0..n as u32).map(|i| 1000 + i * 7).collect();
    let (mut pre, mut de) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        e.clear();
        let t = Instant::now();
        e.forward(&prompt, 0).unwrap();
        pre.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..dec {
            e.forward(&[1000 + i as u32], n + i).unwrap();
        }
        de.push(dec as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "prefill {:.1} tok/s, decode {:.1} tok/s (medians of {reps})",
        median(pre),
        median(de)
    );
}
