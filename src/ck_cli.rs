//! The command line of the ck engine: `cktrace run --engine ck` and
//! `cktrace layout`. Tokens come from llama.cpp's tokenizer through a
//! vocab-only load (no weights mapped by llama.cpp), with the chat template
//! as the ggml run applies it, and sampling goes through the same llama.cpp
//! sampler chain, so both engines see and pick identical token ids.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};

use cktrace_ck::layout::{KvType, LayoutOptions, WeightLayout, WeightPlacement};
use cktrace_ck::quant::KernelLevel;
use cktrace_ck::{Engine, EngineOptions};

use crate::generate::{flush_utf8, EndReason, GenOutput};
use crate::llama::{Model, Sampler};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// llama.cpp through the FFI.
    #[default]
    Ggml,
    /// cktrace's own fixed-layout engine.
    Ck,
}

fn parse_level(s: &str) -> std::result::Result<KernelLevel, String> {
    KernelLevel::from_str(s).map_err(|e| e.to_string())
}

/// The `run` flags of the engine choice and the ck engine's options.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Which engine runs the model.
    #[arg(long, value_enum, default_value_t = EngineKind::Ggml)]
    pub engine: EngineKind,
    /// ck: force a kernel level (scalar, avx2, avx512); default: the best
    /// this CPU has.
    #[arg(long, value_parser = parse_level)]
    pub kernels: Option<KernelLevel>,
    /// ck: element type of the KV cache (f16, f32).
    #[arg(long, value_parser = KvType::from_str, default_value = "f16")]
    pub kv_type: KvType,
    /// ck: read weights in place from the mapped file (map) or copy them
    /// into the arena (copy).
    #[arg(long, value_parser = WeightPlacement::from_str, default_value = "map")]
    pub weights: WeightPlacement,
    /// ck: a Q8_0 output head is copied into the arena sixteen rows
    /// interleaved (packed) or read in the GGUF layout (plain).
    #[arg(long, value_parser = WeightLayout::from_str, default_value = "packed")]
    pub head: WeightLayout,
    /// ck: the Q5_0 layer matrices are copied into the arena sixteen rows
    /// interleaved (packed) or read in the GGUF layout (plain).
    #[arg(long, value_parser = WeightLayout::from_str, default_value = "packed")]
    pub layers: WeightLayout,
    /// ck: most prompt tokens computed in one pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// ck: check the arena's canaries after every step (always on in debug
    /// builds).
    #[arg(long)]
    pub check_canaries: bool,
    /// ck: write the named intermediates of step N (0 = the prompt) to
    /// --dump DIR.
    #[arg(long, value_name = "N", requires = "dump")]
    pub dump_step: Option<u64>,
    /// ck: directory for --dump-step.
    #[arg(long, value_name = "DIR", requires = "dump_step")]
    pub dump: Option<PathBuf>,
}

impl EngineArgs {
    pub fn is_ck(&self) -> bool {
        self.engine == EngineKind::Ck
    }

    /// Errors if a ck-only flag was given to the ggml engine.
    pub fn check_ggml(&self) -> Result<()> {
        let ck_only = [
            (self.kernels.is_some(), "--kernels"),
            (self.kv_type != KvType::F16, "--kv-type"),
            (self.weights != WeightPlacement::Map, "--weights"),
            (self.head != WeightLayout::Packed, "--head"),
            (self.layers != WeightLayout::Packed, "--layers"),
            (self.batch != 64, "--batch"),
            (self.check_canaries, "--check-canaries"),
            (self.dump_step.is_some(), "--dump-step"),
        ];
        if let Some((_, flag)) = ck_only.iter().find(|(given, _)| *given) {
            bail!("{flag} applies to the ck engine only (add --engine ck)");
        }
        Ok(())
    }
}

/// What `run` asks of the ck engine besides its own options.
pub struct RunParams<'a> {
    pub prompt: &'a str,
    pub n_predict: usize,
    pub threads: usize,
    pub ctx: usize,
    pub seed: u32,
    pub temp: f32,
    pub ignore_eos: bool,
    /// Feed the prompt as raw text even if the model has a chat template.
    pub raw: bool,
}

/// `cktrace run --engine ck`: prints the text as it forms, then the same
/// timing line as the ggml run.
pub fn run(path: &Path, e: &EngineArgs, p: &RunParams, out: &mut dyn Write) -> Result<GenOutput> {
    let vocab = Model::load_vocab_only(path)?;
    let text = if p.raw {
        None
    } else {
        vocab.chat_prompt(p.prompt)
    }
    .unwrap_or_else(|| p.prompt.to_string());
    let prompt_tokens = vocab.tokenize(&text, true)?;
    if prompt_tokens.is_empty() {
        bail!("the prompt has no tokens");
    }
    let options = EngineOptions {
        layout: LayoutOptions {
            ctx: p.ctx,
            batch: e.batch.min(p.ctx),
            threads: p.threads,
            kv_type: e.kv_type,
            weights: e.weights,
            head: e.head,
            layers: e.layers,
        },
        kernels: e.kernels,
        check_canaries: e.check_canaries,
        ggml_paths: None,
    };
    let mut engine = Engine::new(path, options).context("starting the ck engine")?;
    let ids = |t: &[i32]| -> Vec<u32> { t.iter().map(|&x| x as u32).collect() };
    let mut sampler = Sampler::new(p.temp, p.seed);
    let mut g = GenOutput {
        prompt_tokens: prompt_tokens.clone(),
        ..Default::default()
    };
    let dump = |engine: &Engine, step: u64| -> Result<()> {
        if let (Some(s), Some(dir)) = (e.dump_step, &e.dump) {
            if s == step {
                engine
                    .dump(dir, step)
                    .with_context(|| format!("dumping step {step}"))?;
            }
        }
        Ok(())
    };

    let t0 = Instant::now();
    engine
        .forward(&ids(&prompt_tokens), 0)
        .context("ck forward pass of the prompt")?;
    g.prefill_s = t0.elapsed().as_secs_f64();
    g.step_tokens.push(prompt_tokens.clone());
    dump(&engine, 0)?;

    let mut pending: Vec<u8> = Vec::new();
    let mut io_err = None;
    let mut emit = |s: &str| {
        if io_err.is_none() {
            if let Err(err) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                // As in the ggml loop: a closed stdout ends the run at the
                // next step.
                crate::stop::request_pipe_stop();
                io_err = Some(err);
            }
        }
    };
    let mut pos = prompt_tokens.len();
    for step in 1..=p.n_predict as u64 {
        if let Some(r) = crate::stop::requested() {
            g.end = EndReason::Stopped(r);
            break;
        }
        let tok = sampler.sample_logits(engine.logits());
        if vocab.is_eog(tok) && !p.ignore_eos {
            break;
        }
        g.tokens.push(tok);
        pending.extend(vocab.token_bytes(tok));
        flush_utf8(&mut pending, &mut g.text, &mut emit);
        if step as usize == p.n_predict {
            break;
        }
        if pos >= p.ctx {
            g.end = EndReason::ContextFull {
                n_ctx: p.ctx as u32,
                needed: prompt_tokens.len() + p.n_predict,
            };
            break;
        }
        if let Some(r) = crate::stop::requested() {
            g.end = EndReason::Stopped(r);
            break;
        }
        let t = Instant::now();
        engine
            .forward(&[tok as u32], pos)
            .with_context(|| format!("ck forward pass of step {step}"))?;
        g.decode_s += t.elapsed().as_secs_f64();
        g.n_decode += 1;
        g.step_tokens.push(vec![tok]);
        dump(&engine, step)?;
        pos += 1;
    }
    if !pending.is_empty() {
        let s = String::from_utf8_lossy(&pending).into_owned();
        emit(&s);
        g.text.push_str(&s);
    }
    match io_err {
        Some(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing generated text")
        }
        _ => Ok(g),
    }
}

/// `cktrace layout`.
#[derive(Args, Clone, Debug)]
pub struct LayoutArgs {
    /// A GGUF file or a catalogue name.
    pub model: String,
    /// Context length (KV-cache slots).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Most tokens per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, value_parser = KvType::from_str, default_value = "f16")]
    pub kv_type: KvType,
    #[arg(long, value_parser = WeightPlacement::from_str, default_value = "map")]
    pub weights: WeightPlacement,
    #[arg(long, value_parser = WeightLayout::from_str, default_value = "packed")]
    pub head: WeightLayout,
    #[arg(long, value_parser = WeightLayout::from_str, default_value = "packed")]
    pub layers: WeightLayout,
    /// Write here instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// Plans `path` and writes layout.json.
pub fn layout(a: &LayoutArgs, path: &Path, stdout: &mut dyn Write) -> Result<()> {
    let o = LayoutOptions {
        ctx: a.ctx,
        batch: a.batch,
        threads: a.threads,
        kv_type: a.kv_type,
        weights: a.weights,
        head: a.head,
        layers: a.layers,
    };
    let plan = cktrace_ck::engine::plan(path, &o).context("planning the layout")?;
    let json = plan.layout().to_json();
    match &a.output {
        Some(out) => {
            std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?
        }
        None => stdout.write_all(json.as_bytes())?,
    }
    Ok(())
}

/// [`run`] on standard output, followed by a newline and the timing line.
/// Returns how the run ended (a signal, a closed stdout and a full context
/// end it early, as for the ggml engine; see `cktrace::stop`).
pub fn run_stdout(path: &Path, e: &EngineArgs, p: &RunParams) -> Result<EndReason> {
    let stdout = std::io::stdout();
    let g = run(path, e, p, &mut stdout.lock())?;
    if g.end != EndReason::Stopped(crate::stop::StopReason::BrokenPipe) {
        let mut lock = stdout.lock();
        let shown = writeln!(lock)
            .and_then(|_| writeln!(lock, "{}", g.timing_line()))
            .and_then(|_| lock.flush());
        if let Err(err) = shown {
            if err.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(err).context("writing the timing line");
            }
        }
    }
    Ok(g.end)
}
