//! cktrace-ck: the parts of cktrace that need no llama.cpp: the GGUF reader
//! and writer, which both engines use, and the fixed-layout engine (config,
//! layout planner and arena, quantized kernels, ops, architectures, thread
//! pool), so that it builds and tests in seconds without cmake.

pub mod arch;
pub mod arena;
pub mod config;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod layout;
pub mod model;
pub mod ops;
mod ops_x86;
pub mod pool;
pub mod profile;
pub mod quant;

pub use engine::{Engine, EngineOptions};
pub use error::{CkError, Result};
