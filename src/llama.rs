//! Safe wrappers over the llama.cpp C API: backend init, model load, context,
//! tokenizer, batch decode, sampling, the graph eval callback, quantization
//! and model facts.
//!
//! Every C handle lives in a `NonNull` owner with `Drop`; a NULL or an error
//! code becomes a [`LlamaError`]. llama.cpp's own log output is captured: it
//! is printed only when `CKTRACE_LOG=1` (or [`set_verbose`]), and the last
//! error-level line is kept so that a failed load can say *why*.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use crate::ffi;

/// Errors from llama.cpp calls.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("{path}: llama.cpp could not load the model: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("llama.cpp could not create a context: {0}")]
    Context(String),
    #[error("tokenize failed for a prompt of {0} bytes")]
    Tokenize(usize),
    #[error("llama_decode failed with code {code} ({what})")]
    Decode { code: i32, what: &'static str },
    #[error("{0}")]
    PromptTooLong(String),
    #[error("{path}: quantize to {ftype} failed (llama_model_quantize returned {code}): {reason}")]
    Quantize {
        path: PathBuf,
        ftype: String,
        code: u32,
        reason: String,
    },
    #[error("unknown quantize type {0:?} (known: {1})")]
    UnknownFtype(String, String),
    #[error("{0}: path is not valid UTF-8 / contains NUL")]
    BadPath(PathBuf),
    #[error("{path}: gguf: {reason}")]
    Gguf { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, LlamaError>;

static INIT: Once = Once::new();
static VERBOSE: AtomicBool = AtomicBool::new(false);
static LAST_ERROR: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Print llama.cpp's log lines to stderr.
pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

unsafe extern "C" fn log_cb(level: ffi::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if level == ffi::GGML_LOG_LEVEL_ERROR {
        if let Ok(mut e) = LAST_ERROR.lock() {
            // "llama_model_load: error loading model: X" -> "error loading model: X"
            let line = s.trim();
            let line = match line.split_once(": ") {
                Some((f, rest)) if !f.contains(' ') => rest,
                _ => line,
            };
            if !line.is_empty() && e.len() < 8 {
                e.push(line.to_string());
            }
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        eprint!("{s}");
    }
}

/// The error-level lines llama.cpp logged since the last call, joined.
fn take_last_error() -> String {
    LAST_ERROR
        .lock()
        .map(|mut e| std::mem::take(&mut *e).join("; "))
        .unwrap_or_default()
}

/// Initialise the llama.cpp backend once per process.
pub fn init() {
    INIT.call_once(|| {
        if std::env::var("CKTRACE_LOG")
            .map(|v| v == "1")
            .unwrap_or(false)
        {
            set_verbose(true);
        }
        // SAFETY: plain C initialisers; log_cb is a valid `extern "C"` fn for
        // the lifetime of the process and ignores its user pointer.
        unsafe {
            ffi::llama_log_set(Some(log_cb), std::ptr::null_mut());
            ffi::ggml_log_set(Some(log_cb), std::ptr::null_mut());
            ffi::llama_backend_init();
        }
    });
}

/// Allow or hide the AMX extra buffer type (patch 0003, which reads
/// `GGML_CPU_NO_AMX` when the CPU backend registers). Must be called before
/// the first model load of the process; later calls have no effect.
///
/// # Safety
///
/// Sets an environment variable: no other thread may read or write the
/// environment at the same time (llama.cpp's threads included). Call it
/// from `main` before any model is loaded and any thread is started.
pub unsafe fn set_amx(enabled: bool) {
    if !enabled {
        std::env::set_var("GGML_CPU_NO_AMX", "1");
    }
}

/// llama.cpp's description of the CPU features it was built with.
pub fn system_info() -> String {
    init();
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::llama_print_system_info()) }
        .to_string_lossy()
        .into_owned()
}

fn cpath(p: &Path) -> Result<CString> {
    p.to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| LlamaError::BadPath(p.to_path_buf()))
}

/// How to load a model.
#[derive(Clone, Copy, Debug)]
pub struct ModelParams {
    /// Map the file instead of reading it into anonymous memory.
    pub mmap: bool,
    /// Allow CPU "extra buffer types" (repack, AMX): weights converted at load.
    pub repack: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            mmap: true,
            repack: true,
        }
    }
}

/// A loaded model.
pub struct Model {
    ptr: NonNull<ffi::llama_model>,
    path: PathBuf,
}

// SAFETY: a llama_model is immutable after load and llama.cpp documents it as
// shareable between contexts on different threads.
unsafe impl Send for Model {}
// SAFETY: as above; every method takes &self and only reads the model.
unsafe impl Sync for Model {}

impl Model {
    pub fn load(path: &Path, params: ModelParams) -> Result<Model> {
        Model::load_with(path, params, false)
    }

    /// Loads only the vocabulary (tokenizer, chat template, special
    /// tokens): no tensor is read or mapped, so an engine that reads the
    /// weights itself (the ck engine) does not map them twice.
    pub fn load_vocab_only(path: &Path) -> Result<Model> {
        Model::load_with(path, ModelParams::default(), true)
    }

    fn load_with(path: &Path, params: ModelParams, vocab_only: bool) -> Result<Model> {
        init();
        let c = cpath(path)?;
        // SAFETY: default params are plain data; we only change scalar fields.
        let mut p = unsafe { ffi::llama_model_default_params() };
        p.load_mode = if params.mmap {
            ffi::LLAMA_LOAD_MODE_MMAP
        } else {
            ffi::LLAMA_LOAD_MODE_NONE
        };
        p.use_extra_bufts = params.repack;
        p.n_gpu_layers = 0;
        p.vocab_only = vocab_only;
        take_last_error();
        // SAFETY: `c` is a valid C string for the duration of the call.
        let raw = unsafe { ffi::llama_model_load_from_file(c.as_ptr(), p) };
        match NonNull::new(raw) {
            Some(ptr) => Ok(Model {
                ptr,
                path: path.to_path_buf(),
            }),
            None => {
                let reason = take_last_error();
                Err(LlamaError::ModelLoad {
                    path: path.to_path_buf(),
                    reason: if reason.is_empty() {
                        "no reason given (run with CKTRACE_LOG=1)".into()
                    } else {
                        reason
                    },
                })
            }
        }
    }

    pub fn as_ptr(&self) -> *mut ffi::llama_model {
        self.ptr.as_ptr()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn vocab(&self) -> *const ffi::llama_vocab {
        // SAFETY: the model is valid; the vocab lives as long as the model.
        unsafe { ffi::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    /// A metadata value as a string (`general.architecture`, ...).
    pub fn meta(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        let mut buf = vec![0u8; 512];
        // SAFETY: buf is writable for buf.len() bytes; llama.cpp NUL-terminates.
        let n = unsafe {
            ffi::llama_model_meta_val_str(
                self.ptr.as_ptr(),
                k.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    pub fn arch(&self) -> String {
        self.meta("general.architecture").unwrap_or_default()
    }

    /// A one-line description ("llama 135M Q4_1").
    pub fn desc(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: buf is writable for buf.len() bytes.
        unsafe {
            ffi::llama_model_desc(
                self.ptr.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }

    pub fn n_layer(&self) -> u32 {
        // SAFETY: valid model.
        unsafe { ffi::llama_model_n_layer(self.ptr.as_ptr()) as u32 }
    }

    pub fn n_embd(&self) -> u32 {
        // SAFETY: valid model.
        unsafe { ffi::llama_model_n_embd(self.ptr.as_ptr()) as u32 }
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab.
        unsafe { ffi::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    pub fn size_bytes(&self) -> u64 {
        // SAFETY: valid model.
        unsafe { ffi::llama_model_size(self.ptr.as_ptr()) }
    }

    pub fn is_eog(&self, tok: i32) -> bool {
        // SAFETY: valid vocab; any token id is accepted.
        unsafe { ffi::llama_vocab_is_eog(self.vocab(), tok) }
    }

    /// `user` wrapped in the model's own chat template as one user turn
    /// followed by the assistant's turn, or `None` if the model has no
    /// template (a base model) or llama.cpp does not know it.
    pub fn chat_prompt(&self, user: &str) -> Option<String> {
        // SAFETY: valid model; NULL name = the default template; the returned
        // string lives as long as the model.
        let tmpl = unsafe { ffi::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        if tmpl.is_null() {
            return None;
        }
        let (role, content) = (CString::new("user").ok()?, CString::new(user).ok()?);
        let msg = ffi::llama_chat_message {
            role: role.as_ptr(),
            content: content.as_ptr(),
        };
        let mut buf = vec![0u8; user.len() * 2 + 512];
        for _ in 0..2 {
            // SAFETY: msg points at live C strings; buf is writable for its length.
            let n = unsafe {
                ffi::llama_chat_apply_template(
                    tmpl,
                    &msg,
                    1,
                    true,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                )
            };
            if n < 0 {
                return None;
            }
            if (n as usize) <= buf.len() {
                buf.truncate(n as usize);
                return String::from_utf8(buf).ok();
            }
            buf.resize(n as usize, 0);
        }
        None
    }

    /// Tokenize `text`, adding BOS if the model wants it.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        let mut toks = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: text is valid for text.len() bytes; toks is writable for
            // toks.len() entries.
            let n = unsafe {
                ffi::llama_tokenize(
                    self.vocab(),
                    text.as_ptr() as *const c_char,
                    text.len() as i32,
                    toks.as_mut_ptr(),
                    toks.len() as i32,
                    add_special,
                    true,
                )
            };
            if n >= 0 {
                toks.truncate(n as usize);
                return Ok(toks);
            }
            if n == i32::MIN {
                break;
            }
            toks.resize((-n) as usize, 0);
        }
        Err(LlamaError::Tokenize(text.len()))
    }

    /// The bytes of one token (may be a partial UTF-8 sequence).
    pub fn token_bytes(&self, tok: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf is writable for buf.len() bytes.
            let n = unsafe {
                ffi::llama_token_to_piece(
                    self.vocab(),
                    tok,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                    0,
                    false,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// Detokenize a sequence (lossy for invalid UTF-8).
    pub fn detokenize(&self, toks: &[i32]) -> String {
        let bytes: Vec<u8> = toks.iter().flat_map(|&t| self.token_bytes(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts borrow it and are dropped first.
        unsafe { ffi::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Called for every graph node when installed on a context: first with
/// `ask = true` (return whether you want to see the node's data), then, for
/// the nodes you asked for, with `ask = false` after the node was computed.
/// Return `false` from an `ask = false` call to abort the graph.
pub type EvalCallback = Box<dyn FnMut(&ffi::ggml_tensor, bool) -> bool + Send>;

/// Whether attention runs as one fused FLASH_ATTN_EXT op (`On`) or as
/// MUL_MAT over the KV cache, softmax, MUL_MAT (`Off`). `Auto` is
/// llama.cpp's default: on where the backend supports it, which the CPU
/// backend does. Both are traced: FA_EXT through its own trace points
/// (kernel paths `flash_attn*`), the matmuls like any other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FlashAttn {
    #[default]
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub fn as_str(self) -> &'static str {
        match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        }
    }

    fn to_ffi(self) -> ffi::llama_flash_attn_type {
        match self {
            FlashAttn::Auto => ffi::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttn::On => ffi::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => ffi::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// How to create a context.
#[derive(Clone, Copy, Debug)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: i32,
    pub flash_attn: FlashAttn,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            n_ctx: 2048,
            n_batch: 512,
            threads: 2,
            flash_attn: FlashAttn::Auto,
        }
    }
}

/// An inference context bound to a model.
pub struct Context<'m> {
    ptr: NonNull<ffi::llama_context>,
    /// The context's own worker threads, kept for its whole life. Without an
    /// attached pool ggml starts and joins fresh threads for every graph
    /// computation (every decode step), which costs time and gives every
    /// step new threads (and new thread-local state) to trace.
    pool: NonNull<ffi::ggml_threadpool>,
    model: &'m Model,
    // Keeps the eval callback alive as long as the context; the C side holds a
    // raw pointer to it.
    _cb: Option<Box<EvalCallback>>,
}

unsafe extern "C" fn eval_trampoline(
    t: *mut ffi::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    if t.is_null() || user.is_null() {
        return ask;
    }
    // SAFETY: `user` is the Box<EvalCallback> owned by the Context, alive for
    // as long as the context can call us; `t` is a valid tensor for the call.
    let cb = unsafe { &mut *(user as *mut EvalCallback) };
    cb(unsafe { &*t }, ask)
}

impl<'m> Context<'m> {
    pub fn new(
        model: &'m Model,
        params: ContextParams,
        cb: Option<EvalCallback>,
    ) -> Result<Context<'m>> {
        // SAFETY: default params are plain data.
        let mut p = unsafe { ffi::llama_context_default_params() };
        p.n_ctx = params.n_ctx;
        p.n_batch = params.n_batch;
        p.n_ubatch = params.n_batch;
        p.n_threads = params.threads;
        p.n_threads_batch = params.threads;
        p.no_perf = false;
        p.flash_attn_type = params.flash_attn.to_ffi();
        let mut boxed = cb.map(Box::new);
        if let Some(b) = boxed.as_mut() {
            p.cb_eval = Some(eval_trampoline);
            p.cb_eval_user_data = (&mut **b) as *mut EvalCallback as *mut c_void;
        }
        take_last_error();
        // SAFETY: model is valid and outlives the context ('m).
        let raw = unsafe { ffi::llama_init_from_model(model.as_ptr(), p) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::Context(take_last_error()))?;
        // SAFETY: plain-data params; the pool is attached to our context and
        // freed in Drop after the context.
        let pool = unsafe {
            let mut tp = ffi::ggml_threadpool_params_default(params.threads);
            let pool = ffi::ggml_threadpool_new(&mut tp);
            match NonNull::new(pool) {
                Some(pool) => {
                    ffi::llama_attach_threadpool(raw, pool.as_ptr(), pool.as_ptr());
                    pool
                }
                None => {
                    ffi::llama_free(raw);
                    return Err(LlamaError::Context(format!(
                        "could not create a pool of {} threads",
                        params.threads
                    )));
                }
            }
        };
        Ok(Context {
            ptr,
            pool,
            model,
            _cb: boxed,
        })
    }

    pub fn as_ptr(&self) -> *mut ffi::llama_context {
        self.ptr.as_ptr()
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context length in tokens (what the KV cache holds).
    pub fn n_ctx(&self) -> u32 {
        // SAFETY: the context is valid for our lifetime.
        unsafe { ffi::llama_n_ctx(self.ptr.as_ptr()) }
    }

    /// Evaluate `tokens` at positions `pos..pos+len` of sequence 0, asking for
    /// logits of the last token only.
    pub fn decode(&mut self, tokens: &[i32], pos: i32) -> Result<()> {
        // SAFETY: batch_init allocates arrays for tokens.len() tokens and one
        // sequence id each; we fill exactly that many and free it below.
        unsafe {
            let n = tokens.len() as i32;
            let mut b = ffi::llama_batch_init(n, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *b.token.add(i) = t;
                *b.pos.add(i) = pos + i as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = (i + 1 == tokens.len()) as i8;
            }
            b.n_tokens = n;
            let rc = ffi::llama_decode(self.ptr.as_ptr(), b);
            ffi::llama_batch_free(b);
            match rc {
                0 => Ok(()),
                1 => Err(LlamaError::Decode {
                    code: rc,
                    what: "no KV slot for the batch (context full)",
                }),
                2 => Err(LlamaError::Decode {
                    code: rc,
                    what: "aborted",
                }),
                _ => Err(LlamaError::Decode {
                    code: rc,
                    what: "error",
                }),
            }
        }
    }

    /// Logits of the last token that asked for them.
    pub fn logits(&self) -> &[f32] {
        // SAFETY: after a successful decode llama.cpp holds n_vocab logits for
        // output -1; they stay valid until the next decode (&self borrow).
        unsafe {
            let p = ffi::llama_get_logits_ith(self.ptr.as_ptr(), -1);
            if p.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(p, self.model.n_vocab())
        }
    }

    /// Drop all KV-cache contents.
    pub fn clear(&mut self) {
        // SAFETY: valid context.
        unsafe { ffi::llama_memory_clear(ffi::llama_get_memory(self.ptr.as_ptr()), true) }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the context and its pool; the pool outlives the
        // context that uses it; the callback box is dropped after this.
        unsafe {
            ffi::llama_detach_threadpool(self.ptr.as_ptr());
            ffi::llama_free(self.ptr.as_ptr());
            ffi::ggml_threadpool_free(self.pool.as_ptr());
        }
    }
}

/// A token sampler: greedy when `temp <= 0`, else temperature + seeded
/// categorical sampling.
pub struct Sampler {
    ptr: NonNull<ffi::llama_sampler>,
}

// SAFETY: the sampler chain is owned and used by one thread at a time.
unsafe impl Send for Sampler {}

impl Sampler {
    pub fn new(temp: f32, seed: u32) -> Sampler {
        // SAFETY: chain_init returns an owned chain; chain_add takes ownership
        // of each sampler added.
        unsafe {
            let chain = ffi::llama_sampler_chain_init(ffi::llama_sampler_chain_default_params());
            if temp <= 0.0 {
                ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_greedy());
            } else {
                ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_temp(temp));
                ffi::llama_sampler_chain_add(chain, ffi::llama_sampler_init_dist(seed));
            }
            Sampler {
                ptr: NonNull::new(chain).expect("llama_sampler_chain_init returned NULL"),
            }
        }
    }

    /// Sample from the last logits of `ctx`.
    pub fn sample(&mut self, ctx: &Context) -> i32 {
        // SAFETY: both handles are valid; idx -1 = last output.
        unsafe { ffi::llama_sampler_sample(self.ptr.as_ptr(), ctx.as_ptr(), -1) }
    }

    /// Sample from a logits slice (one per token id) with the same chain,
    /// as `llama_sampler_sample` does with a context's logits: apply, take
    /// the selected token, accept it.
    pub fn sample_logits(&mut self, logits: &[f32]) -> i32 {
        let mut cur: Vec<ffi::llama_token_data> = logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| ffi::llama_token_data {
                id: i as i32,
                logit,
                p: 0.0,
            })
            .collect();
        let mut arr = ffi::llama_token_data_array {
            data: cur.as_mut_ptr(),
            size: cur.len(),
            selected: -1,
            sorted: false,
        };
        // SAFETY: `arr` points at `cur`, which outlives both calls; the
        // chain only reorders/edits the array's entries within `size`.
        unsafe {
            ffi::llama_sampler_apply(self.ptr.as_ptr(), &mut arr);
            let tok = if arr.selected >= 0 && (arr.selected as usize) < arr.size {
                (*arr.data.add(arr.selected as usize)).id
            } else {
                0
            };
            ffi::llama_sampler_accept(self.ptr.as_ptr(), tok);
            tok
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: we own the chain.
        unsafe { ffi::llama_sampler_free(self.ptr.as_ptr()) }
    }
}

/// Quantize types `cktrace quantize` accepts.
pub const FTYPES: &[(&str, ffi::llama_ftype)] = &[
    ("Q4_0", ffi::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("Q4_1", ffi::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("Q5_0", ffi::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("Q5_1", ffi::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("Q8_0", ffi::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("Q2_K", ffi::LLAMA_FTYPE_MOSTLY_Q2_K),
    ("Q3_K_M", ffi::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("Q4_K_S", ffi::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("Q4_K_M", ffi::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q5_K_M", ffi::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q6_K", ffi::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("F16", ffi::LLAMA_FTYPE_MOSTLY_F16),
    ("BF16", ffi::LLAMA_FTYPE_MOSTLY_BF16),
];

/// Quantize `input` to `output` as `ftype` (requantizing allowed).
pub fn quantize(input: &Path, output: &Path, ftype: &str, threads: i32) -> Result<()> {
    init();
    let ft = FTYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(ftype))
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            LlamaError::UnknownFtype(
                ftype.to_string(),
                FTYPES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    let (ci, co) = (cpath(input)?, cpath(output)?);
    // SAFETY: default params are plain data; the pointer fields stay NULL.
    let mut p = unsafe { ffi::llama_model_quantize_default_params() };
    p.ftype = ft;
    p.allow_requantize = true;
    p.nthread = threads;
    take_last_error();
    // SAFETY: both strings are valid C strings; p lives across the call.
    let rc = unsafe { ffi::llama_model_quantize(ci.as_ptr(), co.as_ptr(), &p) };
    if rc != 0 {
        let _ = std::fs::remove_file(output);
        return Err(LlamaError::Quantize {
            path: input.to_path_buf(),
            ftype: ftype.to_string(),
            code: rc,
            reason: take_last_error(),
        });
    }
    Ok(())
}

/// One tensor of a GGUF file as gguf's own C reader sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    pub dtype: String,
    pub type_id: u32,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    pub bytes: u64,
}

/// The tensor list of a GGUF file, read with ggml's gguf reader (metadata
/// only, no tensor data loaded).
pub fn gguf_tensors(path: &Path) -> Result<Vec<GgufTensor>> {
    init();
    let c = cpath(path)?;
    take_last_error();
    // SAFETY: no_alloc = true reads only metadata; ctx is freed below.
    unsafe {
        let ctx = ffi::gguf_init_from_file(
            c.as_ptr(),
            ffi::gguf_init_params {
                no_alloc: true,
                ctx: std::ptr::null_mut(),
            },
        );
        if ctx.is_null() {
            return Err(LlamaError::Gguf {
                path: path.to_path_buf(),
                reason: take_last_error(),
            });
        }
        let data = ffi::gguf_get_data_offset(ctx) as u64;
        let n = ffi::gguf_get_n_tensors(ctx);
        let mut v = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            let name = CStr::from_ptr(ffi::gguf_get_tensor_name(ctx, i))
                .to_string_lossy()
                .into_owned();
            let ty = ffi::gguf_get_tensor_type(ctx, i);
            v.push(GgufTensor {
                name,
                dtype: CStr::from_ptr(ffi::ggml_type_name(ty))
                    .to_string_lossy()
                    .into_owned(),
                type_id: ty as u32,
                file_offset: data + ffi::gguf_get_tensor_offset(ctx, i) as u64,
                bytes: ffi::gguf_get_tensor_size(ctx, i) as u64,
            });
        }
        ffi::gguf_free(ctx);
        Ok(v)
    }
}

/// The name of a ggml type.
pub fn type_name(t: ffi::ggml_type) -> String {
    // SAFETY: ggml_type_name returns a static string for any type value.
    let p = unsafe { ffi::ggml_type_name(t) };
    if p.is_null() {
        return format!("type{t}");
    }
    // SAFETY: non-null static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The name of a ggml tensor.
pub fn tensor_name(t: &ffi::ggml_tensor) -> &str {
    std::str::from_utf8(c_chars(&t.name)).unwrap_or("")
}

/// A fixed-size C char array field (a tensor name) as bytes, up to its first
/// NUL.
pub fn c_chars(field: &[std::os::raw::c_char]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and layout.
    let b = unsafe { std::slice::from_raw_parts(field.as_ptr() as *const u8, field.len()) };
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}
