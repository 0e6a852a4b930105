//! cktrace's tracer: the trace format (`format`), the tensor registry
//! (`registry`), and the thread-local buffers and mmap'd file that hooks
//! write records into (`sink`). It knows nothing of ggml: the engines turn
//! their kernel events into [`TraceRecord`]s and call [`sink::record`].

pub mod format;
pub mod pack;
pub mod registry;
pub mod sink;

pub use format::{Engine, KernelPath, Op, Phase, TraceHeader, TraceRecord};
pub use registry::{
    layer_of, CacheInfo, Machine, MemorySource, Meta, Registry, TensorInfo, TensorKind,
};
pub use sink::{SinkStats, TraceSink};
