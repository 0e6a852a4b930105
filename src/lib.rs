//! cktrace: per-thread memory-access tracing of quantized LLM inference on
//! CPU. The library holds the safe llama.cpp layer, the generation loop, the
//! model catalogue and the tracer glue; `main.rs` is the CLI over it.

pub mod bench;
pub mod census;
pub mod check;
pub mod ffi;
pub mod generate;
pub mod llama;
#[cfg(not(cktrace_no_hook))]
pub mod trace;
#[cfg(cktrace_no_hook)]
#[path = "trace_stub.rs"]
pub mod trace;

pub mod gguf;
pub mod models;
pub mod testmodel;
