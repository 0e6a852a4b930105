//! cktrace: per-thread memory-access tracing of quantized LLM inference on
//! CPU. The library holds the safe llama.cpp layer, the generation loop, the
//! model catalogue and the tracer glue; `main.rs` is the CLI over it.

pub mod bench;
pub mod census;
pub mod check;
pub mod ck_cli;
pub mod ffi;
pub mod generate;
pub mod llama;
#[cfg(not(cktrace_no_hook))]
pub mod trace;
#[cfg(cktrace_no_hook)]
#[path = "trace_stub.rs"]
pub mod trace;

pub use cktrace_ck::gguf;

/// Records a trace can hold by default (a sparse file: 8 GiB of address
/// space, only what is written uses disk).
pub const DEFAULT_TRACE_CAPACITY: u64 = 1 << 26;

/// Where traces go when `--trace` has no directory: `$CKTRACE_TRACE_ROOT`,
/// else `./cktrace-traces`. `LAST` in it names the newest trace.
pub fn trace_root() -> std::path::PathBuf {
    std::env::var_os("CKTRACE_TRACE_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("cktrace-traces"))
}
pub mod models;
pub mod stop;
pub mod testmodel;
pub mod tsc;
