//! `cktrace bench`: speed measured side by side in one run, reported as
//! medians and ratios (the machine is noisy; absolute numbers move).
//!
//! `decode` compares the decode tokens/s of `cktrace run`'s generation loop
//! (safe wrappers, sampler chain, UTF-8 streaming, step hooks) with a plain
//! loop over the raw llama.cpp C API on the same model, context settings and
//! build, alternating the two so drift hits both alike.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::ffi;
use crate::generate::{generate, GenParams, NoHook};
use crate::llama::{Context, ContextParams, Model, ModelParams};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// GGUF model path (default: the cached smollm2).
    pub model: PathBuf,
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: i32,
    /// Decode steps per repetition.
    #[arg(short = 'n', long, default_value_t = 64)]
    pub n: usize,
    /// Repetitions of each variant (the median is reported).
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    #[arg(short = 'p', long, default_value = "Hello")]
    pub prompt: String,
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The plain loop: raw C API, greedy argmax, no wrappers. Returns decode
/// tokens/s over `n` single-token decodes.
fn plain_loop(ctx: &mut Context, prompt: &[i32], n: usize) -> f64 {
    let c = ctx.as_ptr();
    let n_vocab = ctx.model().n_vocab();
    // SAFETY: c is a valid context; batches point into live local buffers for
    // the duration of each llama_decode call; logits are read before the next
    // decode.
    unsafe {
        ffi::llama_memory_clear(ffi::llama_get_memory(c), true);
        let mut toks = prompt.to_vec();
        let b = ffi::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
        assert_eq!(ffi::llama_decode(c, b), 0);
        let argmax = || {
            let l = std::slice::from_raw_parts(ffi::llama_get_logits_ith(c, -1), n_vocab);
            let mut best = 0;
            for i in 1..n_vocab {
                if l[i] > l[best] {
                    best = i;
                }
            }
            best as i32
        };
        let mut tok = argmax();
        let t = Instant::now();
        for _ in 0..n {
            let b = ffi::llama_batch_get_one(&mut tok, 1);
            assert_eq!(ffi::llama_decode(c, b), 0);
            tok = argmax();
        }
        n as f64 / t.elapsed().as_secs_f64()
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    crate::check::model_file(&a.model)?;
    let model = Model::load(&a.model, ModelParams::default())?;
    let mut ctx = Context::new(
        &model,
        ContextParams {
            n_ctx: 1024,
            n_batch: 512,
            threads: a.threads,
        },
        None,
    )?;
    let prompt = model.tokenize(&a.prompt, true)?;
    let params = GenParams {
        prompt: a.prompt.clone(),
        n_predict: a.n + 1,
        temp: 0.0,
        seed: 1,
        ignore_eos: true,
    };
    println!(
        "bench decode: {} ({}), {} threads, {} decode steps x {} reps, alternating",
        a.model.display(),
        model.desc(),
        a.threads,
        a.n,
        a.reps
    );
    // Warm-up: page in the weights, spin up the thread pool.
    plain_loop(&mut ctx, &prompt, 8);
    let (mut plain, mut run) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        plain.push(plain_loop(&mut ctx, &prompt, a.n));
        ctx.clear();
        let out = generate(&mut ctx, &params, &mut NoHook, |_| {})?;
        run.push(out.decode_tps());
        ctx.clear();
    }
    let (mp, mr) = (median(&mut plain), median(&mut run));
    println!(
        "plain C-API loop      median {:8.1} tok/s  {:?}",
        mp,
        plain
            .iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "cktrace run loop      median {:8.1} tok/s  {:?}",
        mr,
        run.iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!("ratio run/plain: {:.3}", mr / mp);
    Ok(())
}
