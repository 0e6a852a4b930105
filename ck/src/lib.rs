//! cktrace-ck: the parts of cktrace that need no llama.cpp. Today that is
//! the GGUF reader and writer, which both engines use; the fixed-layout
//! engine (config, layout planner and arena, quantized kernels, ops,
//! architectures, thread pool) grows here, so that it builds and tests in
//! seconds without cmake.

pub mod gguf;
pub mod quant;
