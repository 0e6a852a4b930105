//! `cktrace bench`: speed measured side by side in one run, reported as
//! medians and ratios (the machine is noisy; absolute numbers move, ratios
//! measured alternately in one process are what to compare).
//!
//! - `decode`: the decode tok/s of `cktrace run`'s generation loop (safe
//!   wrappers, sampler chain, UTF-8 streaming, step hooks) against a plain
//!   loop over the raw llama.cpp C API, same model, context and build.
//! - `trace`: the generation loop with the trace hook installed against the
//!   same loop without it, plus the cost per record.
//! - `hook`: this build (hook compiled in, not installed) against a build of
//!   the same llama.cpp without the patch series (`CKTRACE_NO_PATCHES=1`),
//!   run as two processes alternately.
//! - `stock`: untraced `cktrace run` against stock llama.cpp (the pin built
//!   unpatched with llama.cpp's CMake defaults, a plain C-API loop), as
//!   alternating processes (see [`stock`]).
//! - `engines`: the ck engine against the ggml engine, prefill and decode,
//!   with each one's fraction of the measured memory roofline (see
//!   [`engines`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use rustc_hash::FxHashMap;

use crate::ffi;
use crate::generate::{generate, GenParams, NoHook};
use crate::llama::{Context, ContextParams, FlashAttn, Model, ModelParams};

mod engines;
mod stock;

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCmd {
    /// `cktrace run`'s loop vs a plain C-API loop (decode tok/s).
    Decode(BenchArgs),
    /// Tracing on vs off (decode tok/s, cost per record).
    Trace(BenchArgs),
    /// Untraced `cktrace run` vs stock llama.cpp (unpatched pin, llama.cpp's
    /// CMake defaults, plain C-API loop; built once into ~/.cache/cktrace/stock).
    Stock(BenchArgs),
    /// The ck engine vs the ggml engine: prefill and decode tok/s, ratios,
    /// and each engine's fraction of the memory roofline (read bandwidth
    /// measured in the same run).
    Engines {
        #[command(flatten)]
        args: BenchArgs,
        /// Prompt length of the prefill (the prompt text's tokens, repeated
        /// or cut to this many).
        #[arg(long, default_value_t = 64, value_parser = crate::check::flags::tokens, allow_negative_numbers = true)]
        prompt_tokens: u32,
    },
    /// Hook compiled in but not installed vs a build without the patches.
    Hook {
        #[command(flatten)]
        args: BenchArgs,
        /// A cktrace binary built with CKTRACE_NO_PATCHES=1.
        #[arg(long)]
        baseline: PathBuf,
    },
    /// `parse --stats` speed over a synthetic trace of the given size (GB/s,
    /// records/s). The trace is left in DIR for `cktrace parse DIR --stats`
    /// under /usr/bin/time to measure peak memory.
    Parse {
        /// Where to write the synthetic trace bundle.
        dir: PathBuf,
        /// Trace size in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(short = 'r', long, default_value_t = 3)]
        runs: usize,
    },
    /// `analyze` speed over a synthetic trace of the given size: each
    /// experiment's streaming pass alone and all of them in one pass (GB/s,
    /// records/s, peak memory).
    Analyze {
        /// Where to write the synthetic trace bundle.
        dir: PathBuf,
        /// Trace size in MiB.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        mib: u64,
        #[arg(short = 'r', long, default_value_t = 3, value_parser = crate::check::flags::reps, allow_negative_numbers = true)]
        runs: usize,
    },
    /// Print the plain-loop decode tok/s of each repetition (used by `hook`).
    #[command(hide = true)]
    Plain(BenchArgs),
}

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// A GGUF file or a catalogue name (smollm2, smollm2-q4km, gemma3, ...).
    pub model: PathBuf,
    #[arg(short = 't', long, default_value_t = 2, value_parser = crate::check::flags::threads, allow_negative_numbers = true)]
    pub threads: i32,
    /// Decode steps per repetition.
    #[arg(short = 'n', long, default_value_t = 64, value_parser = crate::check::flags::steps, allow_negative_numbers = true)]
    pub n: usize,
    /// Repetitions of each variant (the median is reported).
    #[arg(short = 'r', long, default_value_t = 7, value_parser = crate::check::flags::reps, allow_negative_numbers = true)]
    pub reps: usize,
    #[arg(short = 'p', long, default_value = "Hello")]
    pub prompt: String,
    /// Hide the AMX buffer type (weights take CPU_REPACK).
    #[arg(long)]
    pub no_amx: bool,
    /// Flash attention: auto (llama.cpp's default, on for CPU), on or off.
    #[arg(long, value_enum, default_value_t = FlashAttn::Auto)]
    pub flash_attn: FlashAttn,
    /// bench engines: where the ck engine keeps its weights, as `run
    /// --engine ck --weights` (map the file, or copy into the arena).
    #[arg(long, value_parser = <cktrace_ck::layout::WeightPlacement as std::str::FromStr>::from_str, default_value = "map")]
    pub weights: cktrace_ck::layout::WeightPlacement,
    /// bench engines: the ck engine's output head layout, as `run --engine
    /// ck --head`.
    #[arg(long, value_parser = <cktrace_ck::layout::WeightLayout as std::str::FromStr>::from_str, default_value = "packed")]
    pub head: cktrace_ck::layout::WeightLayout,
    /// bench engines: the ck engine's Q5_0 layer matrices' layout, as `run
    /// --engine ck --layers`.
    #[arg(long, value_parser = <cktrace_ck::layout::WeightLayout as std::str::FromStr>::from_str, default_value = "packed")]
    pub layers: cktrace_ck::layout::WeightLayout,
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
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

/// The `q` quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Median of the ratios of adjacent pairs `a[i] / b[i]`: each pair ran back
/// to back, so slow drift of the machine cancels out of the ratio.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plain loop: raw C API, greedy argmax, no wrappers. Returns decode
/// tokens/s over `n` single-token decodes.
fn plain_loop(ctx: &mut Context, prompt: &[i32], n: usize) -> Result<f64> {
    let c = ctx.as_ptr();
    let n_vocab = ctx.model().n_vocab();
    // SAFETY: c is a valid context; batches point into live local buffers for
    // the duration of each llama_decode call; logits are read before the next
    // decode and hold n_vocab floats.
    unsafe {
        ffi::llama_memory_clear(ffi::llama_get_memory(c), true);
        let mut toks = prompt.to_vec();
        let b = ffi::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
        if ffi::llama_decode(c, b) != 0 {
            bail!("llama_decode failed on the prompt");
        }
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
            if ffi::llama_decode(c, b) != 0 {
                bail!("llama_decode failed");
            }
            tok = argmax();
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }
}

struct Setup {
    model: Model,
}

fn setup(a: &BenchArgs) -> Result<Setup> {
    crate::check::model_file(&a.model)?;
    // SAFETY: bench runs one command per process, on the main thread, and
    // this precedes its one model load: no other thread is running.
    unsafe { crate::llama::set_amx(!a.no_amx) };
    let model = Model::load(&a.model, ModelParams::default())?;
    Ok(Setup { model })
}

fn cparams(a: &BenchArgs) -> ContextParams {
    ContextParams {
        n_ctx: (a.n as u32 + 64).max(256),
        n_batch: 256,
        threads: a.threads,
        flash_attn: a.flash_attn,
    }
}

pub fn run(mut cmd: BenchCmd) -> Result<()> {
    // Catalogue names resolve (and fetch) as for every other command.
    match &mut cmd {
        BenchCmd::Decode(a) | BenchCmd::Trace(a) | BenchCmd::Plain(a) | BenchCmd::Stock(a) => {
            resolve(a)?
        }
        BenchCmd::Hook { args, .. } | BenchCmd::Engines { args, .. } => resolve(args)?,
        BenchCmd::Parse { .. } | BenchCmd::Analyze { .. } => {}
    }
    match cmd {
        BenchCmd::Decode(a) => bench_decode(&a),
        BenchCmd::Trace(a) => bench_trace(&a),
        BenchCmd::Stock(a) => stock::bench_stock(&a),
        BenchCmd::Engines {
            args,
            prompt_tokens,
        } => engines::bench_engines(&args, prompt_tokens as usize),
        BenchCmd::Hook { args, baseline } => bench_hook(&args, &baseline),
        BenchCmd::Parse { dir, mib, runs } => {
            let r = cktrace_parser::bench::bench_parse(
                &dir,
                mib << 20,
                runs,
                &mut std::io::stdout().lock(),
            )?;
            let _ = r;
            Ok(())
        }
        BenchCmd::Analyze { dir, mib, runs } => {
            cktrace_parser::analyze::bench::bench_analyze(
                &dir,
                mib << 20,
                runs,
                &mut std::io::stdout().lock(),
            )?;
            Ok(())
        }
        BenchCmd::Plain(a) => {
            let s = setup(&a)?;
            let mut ctx = Context::new(&s.model, cparams(&a), None)?;
            let prompt = s.model.tokenize(&a.prompt, true)?;
            plain_loop(&mut ctx, &prompt, 8)?;
            for _ in 0..a.reps {
                println!("{:.3}", plain_loop(&mut ctx, &prompt, a.n)?);
            }
            Ok(())
        }
    }
}

/// The prompt text's tokens (with BOS), repeated or cut to exactly `n`.
fn resolve_prompt_tokens(model: &Model, text: &str, n: usize) -> Result<Vec<i32>> {
    let t = model.tokenize(text, true)?;
    if t.is_empty() {
        bail!("bench: the prompt {text:?} has no tokens");
    }
    let body = if t.len() > 1 { &t[1..] } else { &t[..] };
    let mut out = vec![t[0]];
    while out.len() < n {
        out.push(body[(out.len() - 1) % body.len()]);
    }
    out.truncate(n);
    Ok(out)
}

fn resolve(a: &mut BenchArgs) -> Result<()> {
    a.model = crate::check::resolve_model(a.model.to_str())?;
    Ok(())
}

/// Greedy generation of `a.n` decode steps that never stops early.
fn bench_params(a: &BenchArgs) -> GenParams {
    GenParams {
        prompt: a.prompt.clone(),
        n_predict: a.n + 1,
        temp: 0.0,
        seed: 1,
        ignore_eos: true,
    }
}

fn print_header(what: &str, a: &BenchArgs, model: &Model, how: &str) {
    println!(
        "bench {what}: {} ({}), {} threads, {} decode steps x {} reps, {how}",
        a.model.display(),
        model.desc(),
        a.threads,
        a.n,
        a.reps
    );
}

fn bench_decode(a: &BenchArgs) -> Result<()> {
    let s = setup(a)?;
    let mut ctx = Context::new(&s.model, cparams(a), None)?;
    let prompt = s.model.tokenize(&a.prompt, true)?;
    let params = bench_params(a);
    print_header("decode", a, &s.model, "alternating");
    plain_loop(&mut ctx, &prompt, 8)?; // warm-up: page in weights, start the pool
    let (mut plain, mut run) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        plain.push(plain_loop(&mut ctx, &prompt, a.n)?);
        ctx.clear();
        run.push(generate(&mut ctx, &params, &mut NoHook, |_| {})?.decode_tps());
        ctx.clear();
    }
    let (mp, mr) = (median(&plain), median(&run));
    println!(
        "plain C-API loop   median {mp:8.1} tok/s   [{}]",
        fmt_list(&plain)
    );
    println!(
        "cktrace run loop   median {mr:8.1} tok/s   [{}]",
        fmt_list(&run)
    );
    println!(
        "ratio run/plain: {:.3} of the medians, {:.3} median of paired runs",
        mr / mp,
        paired_ratio(&run, &plain)
    );
    Ok(())
}

/// Times the step hooks of the hook it wraps (the tracer's flush).
struct TimedHook<'a, H: crate::generate::StepHook> {
    inner: &'a mut H,
    secs: f64,
}

impl<H: crate::generate::StepHook> crate::generate::StepHook for TimedHook<'_, H> {
    fn before(&mut self, step: u32, pos: i32, tokens: &[i32]) {
        let t = Instant::now();
        self.inner.before(step, pos, tokens);
        self.secs += t.elapsed().as_secs_f64();
    }
    fn after(&mut self, step: u32) {
        let t = Instant::now();
        self.inner.after(step);
        self.secs += t.elapsed().as_secs_f64();
    }
}

/// Steps per block of `bench trace`'s interleaved estimate.
const BLOCK_STEPS: u32 = 8;

/// Turns tracing on and off in blocks of [`BLOCK_STEPS`] decode steps within
/// one run and times each step. At the end of an "on" block it waits for
/// the block's records to reach the file, inside that block's last step, so
/// the writes are charged to the steps that made them and not to the "off"
/// block after them. Adjacent blocks are a fraction of a second apart, so
/// the machine's drift between runs cancels out.
struct BlockHook<'a> {
    inner: &'a mut crate::trace::TraceSession,
    /// Whether the first block of decode steps is traced.
    first_on: bool,
    t0: Option<Instant>,
    /// (step, traced, seconds) of every decode step.
    steps: Vec<(u32, bool, f64)>,
}

impl BlockHook<'_> {
    fn traced(&self, step: u32) -> bool {
        step == 0 || (((step - 1) / BLOCK_STEPS) % 2 == 0) == self.first_on
    }
}

impl crate::generate::StepHook for BlockHook<'_> {
    fn before(&mut self, step: u32, pos: i32, tokens: &[i32]) {
        let on = self.traced(step);
        if step == 0 || on != self.traced(step - 1) {
            self.inner.set_recording(on);
        }
        self.t0 = Some(Instant::now());
        self.inner.before(step, pos, tokens);
    }
    fn after(&mut self, step: u32) {
        self.inner.after(step);
        let on = self.traced(step);
        if on && !self.traced(step + 1) {
            self.inner.drain();
        }
        if let Some(t0) = self.t0.take() {
            if step > 0 {
                self.steps.push((step, on, t0.elapsed().as_secs_f64()));
            }
        }
    }
}

/// The interleaved estimate from one run's step times and records per
/// step: per pair of adjacent whole blocks (one traced, one not), the
/// difference of their mean step times per record, and the ratio of their
/// speeds.
fn block_pairs(steps: &[(u32, bool, f64)], recs: &FxHashMap<u32, u64>) -> Vec<(f64, f64)> {
    let mut blocks: Vec<(bool, f64, u64, u32)> = Vec::new(); // (on, secs, records, steps)
    for &(step, on, secs) in steps {
        let b = ((step - 1) / BLOCK_STEPS) as usize;
        if blocks.len() <= b {
            blocks.resize(b + 1, (on, 0.0, 0, 0));
        }
        let e = &mut blocks[b];
        e.1 += secs;
        e.2 += recs.get(&step).copied().unwrap_or(0);
        e.3 += 1;
    }
    blocks
        .chunks_exact(2)
        .filter(|p| p[0].3 == BLOCK_STEPS && p[1].3 == BLOCK_STEPS && p[0].0 != p[1].0)
        .filter_map(|p| {
            let (on, off) = if p[0].0 { (p[0], p[1]) } else { (p[1], p[0]) };
            (on.2 > 0).then(|| {
                let n = BLOCK_STEPS as f64;
                let per_rec = (on.1 - off.1) / n * 1e9 / (on.2 as f64 / n);
                (per_rec, off.1 / on.1)
            })
        })
        .collect()
}

fn bench_trace(a: &BenchArgs) -> Result<()> {
    let s = setup(a)?;
    let mut ctx = Context::new(&s.model, cparams(a), None)?;
    let params = bench_params(a);
    let tmp = std::env::temp_dir().join(format!("cktrace-bench-{}", std::process::id()));
    print_header("trace", a, &s.model, "alternating off/on");
    // Every traced run of the bench: a fresh bundle in `dir`, default capacity.
    let start = |dir: &Path| {
        crate::trace::TraceSession::start(
            dir,
            &s.model,
            a.threads as u32,
            crate::DEFAULT_TRACE_CAPACITY,
            false,
        )
    };
    generate(&mut ctx, &params, &mut NoHook, |_| {})?; // warm-up
    ctx.clear();
    let (mut off, mut on, mut per_rec, mut flush_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut recs_per_step = 0.0;
    // CKTRACE_TRACE_CUT (a diagnostic, see trace.rs) leaves the file empty:
    // count the records of one uncut traced run first.
    let cut = std::env::var("CKTRACE_TRACE_CUT").ok();
    let mut calibrated = None;
    if let Some(c) = &cut {
        std::env::remove_var("CKTRACE_TRACE_CUT");
        let dir = tmp.join("calibrate");
        let mut session = start(&dir)?;
        let t = generate(&mut ctx, &params, &mut session, |_| {})?;
        ctx.clear();
        session.finish(Default::default())?;
        let trace = cktrace_parser::Trace::open(&dir)?;
        let n = trace.records().filter(|r| r.step > 0).count() as f64;
        calibrated = Some(n / t.n_decode as f64);
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_var("CKTRACE_TRACE_CUT", c);
        println!("CKTRACE_TRACE_CUT={c}: tracing cut off at that stage in the 'on' runs");
    }
    // Time the host took from this VM's CPUs (steal) during each run: on a
    // virtual machine whose CPUs are all busy, the host's work for it (the
    // virtual disk's writes, faulting in guest memory) comes out of them.
    let (mut steal_off, mut steal_on) = (Vec::new(), Vec::new());
    for i in 0..a.reps {
        let s0 = steal_ns();
        let t_off = generate(&mut ctx, &params, &mut NoHook, |_| {})?;
        let s1 = steal_ns();
        ctx.clear();
        let dir = tmp.join(format!("r{i}"));
        let mut session = start(&dir)?;
        let mut timed = TimedHook {
            inner: &mut session,
            secs: 0.0,
        };
        let s2 = steal_ns();
        let t_on = generate(&mut ctx, &params, &mut timed, |_| {})?;
        let s3 = steal_ns();
        if let (Some(s0), Some(s1), Some(s2), Some(s3)) = (s0, s1, s2, s3) {
            steal_off.push((s1 - s0) as f64 / 1e6 / t_off.n_decode.max(1) as f64);
            steal_on.push((s3 - s2) as f64 / 1e6 / t_on.n_decode.max(1) as f64);
        }
        flush_s.push(timed.secs * 1e3 / (t_on.n_decode + 1) as f64);
        ctx.clear();
        let st = session.finish(Default::default())?;
        if st.dropped != 0 {
            bail!("{} records dropped during the benchmark", st.dropped);
        }
        // Records of the decode steps only (the timed part).
        let trace = cktrace_parser::Trace::open(&dir)?;
        let n_dec = match calibrated {
            Some(per_step) => per_step * t_on.n_decode as f64,
            None => trace.records().filter(|r| r.step > 0).count() as f64,
        };
        recs_per_step = n_dec / t_on.n_decode as f64;
        off.push(t_off.decode_tps());
        on.push(t_on.decode_tps());
        per_rec.push((t_on.decode_s - t_off.decode_s) * 1e9 / n_dec);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The interleaved estimate: blocks of steps on and off within each run.
    let mut pairs = Vec::new();
    if cut.is_none() {
        for i in 0..a.reps {
            let dir = tmp.join(format!("b{i}"));
            let mut session = start(&dir)?;
            let mut hook = BlockHook {
                inner: &mut session,
                first_on: i % 2 == 0,
                t0: None,
                steps: Vec::new(),
            };
            generate(&mut ctx, &params, &mut hook, |_| {})?;
            let steps = std::mem::take(&mut hook.steps);
            ctx.clear();
            let st = session.finish(Default::default())?;
            if st.dropped != 0 {
                bail!("{} records dropped during the benchmark", st.dropped);
            }
            let trace = cktrace_parser::Trace::open(&dir)?;
            let mut recs: FxHashMap<u32, u64> = FxHashMap::default();
            for r in trace.records() {
                *recs.entry(r.step).or_default() += 1;
            }
            pairs.extend(block_pairs(&steps, &recs));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    // One more traced run, with the tracer timing itself in place: the
    // hook's building time and the positioned writes, per record (the two
    // clock reads per batch of 64 events and per write cost ~1 ns/record).
    let costs = if cut.is_none() {
        let dir = tmp.join("profile");
        let mut session = start(&dir)?;
        cktrace_tracer::sink::set_profiling(true);
        let r = generate(&mut ctx, &params, &mut session, |_| {});
        cktrace_tracer::sink::set_profiling(false);
        r?;
        ctx.clear();
        session.finish(Default::default())?;
        Some(cktrace_tracer::sink::costs())
    } else {
        None
    };
    let clock = crate::tsc::choose();
    let _ = std::fs::remove_dir_all(&tmp);
    let (mo, mn) = (median(&off), median(&on));
    println!("tracing off   median {mo:8.1} tok/s   [{}]", fmt_list(&off));
    println!("tracing on    median {mn:8.1} tok/s   [{}]", fmt_list(&on));
    println!(
        "records per decode step: {recs_per_step:.0}; step-boundary hooks {:.3} ms per step (handing the blocks to the writer thread every 50 ms, and the writer taking a core meanwhile; without one, each thread writes its own records at the end of every graph)",
        median(&flush_s)
    );
    let total = median(&per_rec);
    println!(
        "cost per record (median of (t_on - t_off) / records): {total:.0} ns; trace clock {}; one read here: CLOCK_MONOTONIC {:.1} ns, rdtsc {:.1} ns",
        clock.name(),
        clock_read_ns(cktrace_tracer::sink::monotonic_ns),
        clock_read_ns(crate::tsc::rdtsc)
    );
    // Per step over the whole run (prompt included), so an estimate.
    let stolen = if steal_on.is_empty() {
        0.0
    } else {
        let (so, sn) = (median(&steal_off), median(&steal_on));
        let per = (sn - so) * 1e6 / recs_per_step.max(1.0);
        println!(
            "time the host took from this machine's CPUs (steal, /proc/stat, whole runs): {so:.3} ms per step off, {sn:.3} on; the difference is {per:.0} ns per record of the cost"
        );
        per
    };
    if let Some(c) = costs {
        let per = |ns: u64, n: u64| if n == 0 { 0.0 } else { ns as f64 / n as f64 };
        let (b, w) = (per(c.build_ns, c.build_recs), per(c.write_ns, c.write_recs));
        let wt = per(c.writer_ns, c.writer_recs);
        // Thread time, summed over the threads; they build and write their
        // own records side by side, so the wall time is about 1/threads.
        let th = a.threads.max(1) as f64;
        println!(
            "measured in place (one more traced run, {} records), thread time per record: building {b:.1} ns in the hook, handing over {w:.1} ns ({}); writer thread {wt:.1} ns of CPU per record; as wall time with {th} threads side by side about {:.1} + {:.1} ns, and {stolen:.0} ns stolen by the host, leaving {:.0} ns of the cost per record to the C side (clock read, event copy), the writer thread and to what tracing does to the kernels' caches",
            c.build_recs,
            if c.writer_recs > 0 { "queued for the writer thread, direct writes" } else { "positioned writes through the page cache" },
            b / th,
            w / th,
            total - (b + w) / th - stolen
        );
    }
    println!(
        "ratio on/off: {:.3} of the medians, {:.3} median of paired runs",
        mn / mo,
        paired_ratio(&on, &off)
    );
    if !pairs.is_empty() {
        let per: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let ratio: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        println!(
            "interleaved, blocks of {BLOCK_STEPS} steps on and off within each run ({} pairs, an on block's writes waited for in it): cost per record {:.0} ns (median; quartiles {:.0} to {:.0}), ratio on/off {:.3}",
            pairs.len(),
            median(&per),
            quantile(&per, 0.25),
            quantile(&per, 0.75),
            median(&ratio)
        );
    }
    Ok(())
}

/// Steal time of all CPUs so far (the `cpu` line of /proc/stat, in ns), or
/// None where the kernel does not report it.
fn steal_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks * 1_000_000_000 / hz as u64)
}

/// What one read of a clock (CLOCK_MONOTONIC, or the TSC) costs on this
/// machine: the median of 5 runs of a million back-to-back reads.
fn clock_read_ns(read: fn() -> u64) -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let n = 1_000_000u64;
            let t = Instant::now();
            let mut acc = 0u64;
            for _ in 0..n {
                acc = acc.wrapping_add(read());
            }
            std::hint::black_box(acc);
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    median(&runs)
}

fn bench_hook(a: &BenchArgs, baseline: &Path) -> Result<()> {
    let me = std::env::current_exe().context("locating this binary")?;
    let plain_args = |bin: &Path| -> Result<Vec<f64>> {
        let mut c = Command::new(bin);
        c.args(["bench", "plain"]).arg(&a.model).args([
            "-t",
            &a.threads.to_string(),
            "-n",
            &a.n.to_string(),
            "-r",
            "1",
        ]);
        if a.no_amx {
            c.arg("--no-amx");
        }
        let o = c
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !o.status.success() {
            bail!(
                "{} bench plain failed: {}",
                bin.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    };
    println!(
        "bench hook: {} , {} threads, {} decode steps, {} alternating process pairs",
        a.model.display(),
        a.threads,
        a.n,
        a.reps
    );
    println!(
        "  this build (hook compiled in, not installed): {}",
        me.display()
    );
    println!(
        "  baseline (CKTRACE_NO_PATCHES=1):              {}",
        baseline.display()
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        without.extend(plain_args(baseline)?);
        with.extend(plain_args(&me)?);
    }
    let (mw, mo) = (median(&with), median(&without));
    println!(
        "hook compiled in   median {mw:8.1} tok/s   [{}]",
        fmt_list(&with)
    );
    println!(
        "no patches         median {mo:8.1} tok/s   [{}]",
        fmt_list(&without)
    );
    println!(
        "ratio hooked/unpatched: {:.3} of the medians, {:.3} median of paired runs",
        mw / mo,
        paired_ratio(&with, &without)
    );
    Ok(())
}
