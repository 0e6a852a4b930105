//! The tensor registry: every tensor a trace record can name, with where its
//! bytes live. Written as `registry.json` next to `trace.bin`; a record's
//! `tensor_id` / `act_id` is an index into [`Registry::tensors`].
//!
//! Weights are registered at model load (name, GGUF file offset, type, shape,
//! layer, the buffer holding them and whether that buffer is the mmap'd file,
//! an anonymous allocation, or a repacked copy). Runtime tensors (KV cache,
//! activations) are registered the first time a hook sees them.

use serde::{Deserialize, Serialize};

/// Version of the `registry.json` schema.
pub const REGISTRY_VERSION: u32 = 1;

/// What a tensor is, for splitting traffic into weights / KV / activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// A model weight from the GGUF file.
    Weight,
    /// A KV-cache tensor (or a view of one).
    KvCache,
    /// An intermediate activation of the compute graph.
    Activation,
}

/// Where a tensor's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// Directly in the mmap'd model file: `gguf_offset` is the file offset of
    /// the first byte, and reading the tensor reads the page cache.
    Mmap,
    /// Copied into an anonymous host buffer (mmap off, or a buffer type that
    /// copies).
    Anon,
    /// Converted at load into another layout (CPU_REPACK, AMX, KleidiAI); the
    /// record's `offset`/`len` are in the repacked buffer, its row range in
    /// the original tensor's rows.
    Repacked,
    /// Allocated by the runtime (KV cache, compute buffers).
    Runtime,
}

/// One tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Index in [`Registry::tensors`]; what records store.
    pub id: u32,
    /// Full name (`blk.3.attn_q.weight`, `cache_k_l3`, `attn_norm-3`).
    pub name: String,
    pub kind: TensorKind,
    /// ggml type name (`q4_K`, `q8_0`, `f32`, ...).
    pub dtype: String,
    /// ggml `ne`: elements per dimension, innermost first.
    pub shape: Vec<u64>,
    /// Rows (product of dims 1..): the unit of the records' row ranges.
    pub n_rows: u64,
    /// Bytes of one row in the original (GGUF) layout.
    pub row_bytes: u64,
    /// Total bytes of the tensor in the GGUF layout.
    pub bytes: u64,
    /// Bytes the tensor occupies in its buffer (ggml's `get_alloc_size` of
    /// its buffer type), where a kernel reads it. Differs from `bytes` only
    /// for a layout that is not the GGUF one: AMX packs Q4_K rows into 148
    /// bytes per 256 values (GGUF: 144) and Q8_0 rows into 38 per 32 (34).
    /// Absent in registries written before it was recorded: then `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// Transformer layer, if the name carries one.
    pub layer: Option<i32>,
    /// Absolute offset of the tensor's data in the GGUF file (weights only).
    pub gguf_offset: Option<u64>,
    pub source: MemorySource,
    /// Name of the ggml buffer type holding it (`CPU`, `CPU_Mapped`,
    /// `CPU_REPACK`, `AMX`, ...).
    pub buffer_type: String,
    /// Data address(es) in the traced process, one per copy.
    pub data_ptrs: Vec<u64>,
}

/// The whole registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    pub tensors: Vec<TensorInfo>,
}

impl TensorInfo {
    /// Bytes of the tensor as it lies in its buffer ([`Self::buffer_bytes`],
    /// else the GGUF size).
    pub fn resident_bytes(&self) -> u64 {
        self.buffer_bytes.unwrap_or(self.bytes)
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            version: REGISTRY_VERSION,
            tensors: Vec::new(),
        }
    }

    /// The tensor with this id, if any.
    pub fn get(&self, id: u32) -> Option<&TensorInfo> {
        self.tensors.get(id as usize).filter(|t| t.id == id)
    }
}

/// The layer number in a tensor name: `blk.12.attn_q.weight` -> 12,
/// `cache_k_l12` -> 12, `attn_norm-12` -> 12.
pub fn layer_of(name: &str) -> Option<i32> {
    if let Some(rest) = name.strip_prefix("blk.") {
        return rest.split('.').next()?.parse().ok();
    }
    let base = name.split(' ').next().unwrap_or(name);
    if let Some(i) = base.rfind("_l") {
        if let Ok(n) = base[i + 2..].parse() {
            return Some(n);
        }
    }
    let (_, n) = base.rsplit_once('-')?;
    n.parse().ok()
}

/// `meta.json`: the facts of one traced run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    /// `ggml` or `ck`.
    pub engine: String,
    pub model_path: String,
    pub model_sha256: String,
    pub arch: String,
    pub n_layer: u32,
    pub prompt: String,
    pub prompt_tokens: Vec<i32>,
    /// Tokens fed at each step (step 0 = the prompt).
    pub step_tokens: Vec<Vec<i32>>,
    pub generated_tokens: Vec<i32>,
    pub threads: u32,
    pub mmap: bool,
    pub repack: bool,
    /// Whether the AMX extra buffer type was allowed (`--no-amx` clears it).
    #[serde(default)]
    pub amx: bool,
    /// Flash attention as asked (`run --flash-attn`): `auto` (llama.cpp's
    /// default, on for the CPU backend), `on` or `off`; empty in bundles
    /// written before the flag existed (they ran with it off).
    #[serde(default)]
    pub flash_attn: String,
    /// The clock the trace points read: `tsc` (the invariant time-stamp
    /// counter, converted to CLOCK_MONOTONIC ns by the tracer) or
    /// `monotonic` (clock_gettime); empty in bundles written before the
    /// field existed, and for the ck engine's bundles, which read
    /// CLOCK_MONOTONIC. Record times mean the same either way.
    #[serde(default)]
    pub trace_clock: String,
    pub llama_cpp: String,
    pub llama_cpp_patches: String,
    pub command_line: Vec<String>,
    pub records: u64,
    pub dropped: u64,
    /// The machine the run happened on (absent in bundles written before
    /// cktrace recorded it).
    #[serde(default)]
    pub machine: Option<Machine>,
    /// Steps recorded (`run --trace-steps A..B`: first and last, inclusive);
    /// absent when every step was traced.
    #[serde(default)]
    pub traced_steps: Option<[u32; 2]>,
    /// Steps that ran but were not recorded (outside `traced_steps`).
    #[serde(default)]
    pub untraced_steps: u64,
    /// The run was stopped early (a signal, a closed stdout) and finished
    /// its bundle at a step boundary.
    #[serde(default)]
    pub interrupted: bool,
    /// Why the run ended: `done`, `SIGINT`, `SIGTERM`, `broken pipe`,
    /// `context full`.
    #[serde(default)]
    pub end: String,
    /// Steps completed (step 0 is the prompt).
    #[serde(default)]
    pub steps_completed: u32,
}

/// Facts about the machine a trace was recorded on, read at run time (the
/// analysis may happen elsewhere). Every field is best effort: what the
/// kernel does not expose stays empty or zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `flags` of /proc/cpuinfo (first CPU).
    pub cpu_flags: Vec<String>,
    /// Logical CPUs online.
    pub logical_cpus: u32,
    /// Physical cores (distinct core ids per package).
    pub physical_cores: u32,
    /// Caches of CPU 0, from /sys/devices/system/cpu/cpu0/cache.
    pub caches: Vec<CacheInfo>,
    /// Page size in bytes (sysconf).
    pub page_size: u64,
    /// /sys/kernel/mm/transparent_hugepage/enabled, e.g. `always [madvise] never`.
    pub thp_enabled: String,
    /// /sys/kernel/mm/transparent_hugepage/defrag.
    pub thp_defrag: String,
    /// uname: system, release and version.
    pub kernel: String,
    /// MemTotal of /proc/meminfo, bytes.
    pub mem_total: u64,
    /// Threads the engine ran with.
    pub threads_used: u32,
}

/// One CPU cache level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    pub size_bytes: u64,
    pub line_bytes: u64,
    pub ways: u32,
    /// The sysfs `shared_cpu_list` (which logical CPUs share it).
    pub shared_cpus: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_from_names() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("cache_k_l7"), Some(7));
        assert_eq!(layer_of("attn_norm-3"), Some(3));
        assert_eq!(layer_of("cache_k_l7 (view)"), Some(7));
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(layer_of("output.weight"), None);
    }
}
