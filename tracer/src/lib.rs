//! cktrace's tracer: the trace format, the tensor registry, and (in `sink`)
//! the thread-local buffers and mmap'd file that hooks write records into.

pub mod format;
pub mod registry;

pub use format::{Engine, KernelPath, Op, Phase, TraceHeader, TraceRecord};
pub use registry::{layer_of, MemorySource, Meta, Registry, TensorInfo, TensorKind};
