//! `cktrace bench engines`: the ck engine against the ggml engine (llama.cpp
//! on its default path), in one process, alternating, so both see the same
//! machine state. Each pair runs a prefill of a fixed prompt (64 tokens by
//! default, one pass) and then greedy single-token decode steps, first on
//! one engine, then on the other (the order flips every pair, so neither
//! always runs on a cache the other warmed).
//!
//! Besides tok/s and their ratios it prints each engine's fraction of the
//! memory roofline: decode reads every weight once per token, so the best a
//! memory-bound decoder can do is (read bandwidth) / (weight bytes per
//! token). Weight bytes per token are the model's tensor bytes minus what a
//! decode step does not read (the embedding table, of which `get_rows`
//! reads one row, unless the output matmul reads it as a tied output). The
//! read bandwidth is measured in the same run, before and after the pairs:
//! the same number of threads each streams its part of a 1 GiB buffer
//! (sums of 64-bit words, which the compiler vectorizes), best of 5 passes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cktrace_ck::layout::{KvType, LayoutOptions};
use cktrace_ck::{Engine, EngineOptions};

use super::{fmt_list, median, paired_ratio, resolve_prompt_tokens, BenchArgs};
use crate::gguf::GgufFile;
use crate::llama::{Context, ContextParams, Model, ModelParams};

/// What one engine did in one pair.
struct Sample {
    prefill_tps: f64,
    decode_tps: f64,
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn ggml_pair(ctx: &mut Context, prompt: &[i32], n: usize) -> Result<Sample> {
    ctx.clear();
    let t = Instant::now();
    ctx.decode(prompt, 0)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut tok = argmax(ctx.logits()) as i32;
    let mut pos = prompt.len() as i32;
    let t = Instant::now();
    for _ in 0..n {
        ctx.decode(&[tok], pos)?;
        tok = argmax(ctx.logits()) as i32;
        pos += 1;
    }
    Ok(Sample {
        prefill_tps: prefill,
        decode_tps: n as f64 / t.elapsed().as_secs_f64(),
    })
}

fn ck_pair(e: &mut Engine, prompt: &[u32], n: usize) -> Result<Sample> {
    e.clear();
    let t = Instant::now();
    let mut tok = argmax(e.forward(prompt, 0)?);
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut pos = prompt.len();
    let t = Instant::now();
    for _ in 0..n {
        tok = argmax(e.forward(&[tok], pos)?);
        pos += 1;
    }
    Ok(Sample {
        prefill_tps: prefill,
        decode_tps: n as f64 / t.elapsed().as_secs_f64(),
    })
}

/// Bytes of weights one decode step reads: every tensor except the
/// embedding table, which `get_rows` reads one row of, unless the model
/// has no `output.weight` (tied: the output matmul reads all of it).
pub fn decode_weight_bytes(f: &GgufFile) -> u64 {
    let tied = f.tensor("output.weight").is_none();
    f.tensors()
        .iter()
        .filter(|t| tied || t.name != "token_embd.weight")
        .map(|t| t.size)
        .sum()
}

/// Streaming read bandwidth with `threads` threads over a 1 GiB buffer,
/// best of `passes` (bytes per second).
pub fn read_bandwidth(threads: usize, passes: usize) -> f64 {
    const LEN: usize = 1 << 27; // u64 words: 1 GiB
    let buf: Vec<u64> = (0..LEN as u64).collect();
    let chunk = LEN.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..passes {
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(chunk) {
                s.spawn(move || {
                    let mut acc = [0u64; 8];
                    for c in part.chunks_exact(8) {
                        for i in 0..8 {
                            acc[i] = acc[i].wrapping_add(c[i]);
                        }
                    }
                    black_box(acc);
                });
            }
        });
        let bw = (LEN * 8) as f64 / t.elapsed().as_secs_f64();
        best = best.max(bw);
    }
    best
}

pub fn bench_engines(a: &BenchArgs, prompt_tokens: usize) -> Result<()> {
    crate::check::model_file(&a.model)?;
    if a.reps < 7 {
        bail!(
            "bench engines: --reps {} is too few pairs for a median of paired ratios (at least 7)",
            a.reps
        );
    }
    // SAFETY: bench runs one command per process, on the main thread, and
    // this precedes its one model load: no other thread is running.
    unsafe { crate::llama::set_amx(!a.no_amx) };
    let model = Model::load(&a.model, ModelParams::default())?;
    let prompt = resolve_prompt_tokens(&model, &a.prompt, prompt_tokens)?;
    let n_ctx = (prompt.len() + a.n + 16).max(256);
    let mut ctx = Context::new(
        &model,
        ContextParams {
            n_ctx: n_ctx as u32,
            n_batch: prompt.len().max(64) as u32,
            threads: a.threads,
            flash_attn: a.flash_attn,
        },
        None,
    )?;
    let mut ck = Engine::new(
        &a.model,
        EngineOptions {
            layout: LayoutOptions {
                ctx: n_ctx,
                batch: prompt.len().max(1),
                threads: a.threads as usize,
                kv_type: KvType::F16,
                weights: a.weights,
                head: a.head,
                layers: a.layers,
            },
            kernels: None,
            check_canaries: false,
            ggml_paths: None,
        },
    )?;
    let gguf = GgufFile::open(&a.model)?;
    let wbytes = decode_weight_bytes(&gguf);
    let ck_prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();

    println!(
        "bench engines: {} ({}), {} threads, prefill {} tokens + {} decode steps, {} alternating pairs, ggml flash attention {:?}, ck kernels {}, ck weights {}, ck head {}, ck layers {}",
        a.model.display(),
        model.desc(),
        a.threads,
        prompt.len(),
        a.n,
        a.reps,
        a.flash_attn,
        ck.kernels().level(),
        a.weights,
        a.head,
        a.layers
    );
    let bw0 = read_bandwidth(a.threads as usize, 5);
    // Warm-up: page the weights in for both engines, start both pools.
    ggml_pair(&mut ctx, &prompt, 8)?;
    ck_pair(&mut ck, &ck_prompt, 8)?;
    let (mut g, mut c) = (Vec::new(), Vec::new());
    for i in 0..a.reps {
        // Let the other engine's workers stop spinning and park.
        let settle = || std::thread::sleep(Duration::from_millis(50));
        if i % 2 == 0 {
            settle();
            g.push(ggml_pair(&mut ctx, &prompt, a.n)?);
            settle();
            c.push(ck_pair(&mut ck, &ck_prompt, a.n)?);
        } else {
            settle();
            c.push(ck_pair(&mut ck, &ck_prompt, a.n)?);
            settle();
            g.push(ggml_pair(&mut ctx, &prompt, a.n)?);
        }
    }
    let bw1 = read_bandwidth(a.threads as usize, 5);
    let bw = bw0.max(bw1);

    let dec = |v: &[Sample]| v.iter().map(|s| s.decode_tps).collect::<Vec<_>>();
    let pre = |v: &[Sample]| v.iter().map(|s| s.prefill_tps).collect::<Vec<_>>();
    let (gd, cd, gp, cp) = (dec(&g), dec(&c), pre(&g), pre(&c));
    println!(
        "ggml decode   median {:8.1} tok/s   [{}]",
        median(&gd),
        fmt_list(&gd)
    );
    println!(
        "ck   decode   median {:8.1} tok/s   [{}]",
        median(&cd),
        fmt_list(&cd)
    );
    println!(
        "ggml prefill  median {:8.1} tok/s   [{}]",
        median(&gp),
        fmt_list(&gp)
    );
    println!(
        "ck   prefill  median {:8.1} tok/s   [{}]",
        median(&cp),
        fmt_list(&cp)
    );
    println!(
        "ratio ck/ggml decode:  {:.3} of the medians, {:.3} median of paired runs",
        median(&cd) / median(&gd),
        paired_ratio(&cd, &gd)
    );
    println!(
        "ratio ck/ggml prefill: {:.3} of the medians, {:.3} median of paired runs",
        median(&cp) / median(&gp),
        paired_ratio(&cp, &gp)
    );
    println!(
        "read bandwidth: {:.1} GB/s ({} threads streaming 1 GiB, best of 5; {:.1} before, {:.1} after the pairs)",
        bw / 1e9,
        a.threads,
        bw0 / 1e9,
        bw1 / 1e9
    );
    let frac = |tps: f64| wbytes as f64 * tps / bw;
    println!(
        "memory roofline: {:.1} MB of weights per decode token; ggml {:.2}, ck {:.2} of the read bandwidth (roofline {:.1} tok/s)",
        wbytes as f64 / 1e6,
        frac(median(&gd)),
        frac(median(&cd)),
        bw / wbytes as f64
    );
    Ok(())
}
