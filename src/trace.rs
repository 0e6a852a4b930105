//! Tracing the ggml engine: the hook our patch series calls from every CPU
//! kernel path, the registry built at model load, and the trace bundle
//! (`trace.bin`, `registry.json`, `meta.json`) written by `cktrace run
//! --trace`.
//!
//! The hook is a plain `extern "C"` function installed with
//! `ggml_cpu_set_trace_hook`; ggml calls it on the worker thread that did the
//! work, once per chunk / tile range / row. It resolves the tensor that was
//! read to a registry id (weights through a frozen pointer map built at load;
//! KV cache and activations by name, registered the first time they are seen),
//! fills a [`TraceRecord`] and hands it to the tracer's thread-local buffer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use cktrace_tracer::format::{flags, NO_ID};
use cktrace_tracer::sink::{self, SinkStats, TraceSink};
use cktrace_tracer::{
    layer_of, Engine, MemorySource, Meta, Op, Phase, Registry, TensorInfo, TensorKind, TraceRecord,
};

use crate::ffi;
use crate::generate::StepHook;
use crate::llama::{self, Model};

// Step state, written by the thread that calls llama_decode before each step
// and read by the workers inside the hook.
static STEP: AtomicU32 = AtomicU32::new(0);
static POS: AtomicI32 = AtomicI32::new(0);
static NTOK: AtomicU32 = AtomicU32::new(0);
static PHASE: AtomicU8 = AtomicU8::new(0);
/// Bumped before every decode: graph tensor addresses are only stable within
/// one graph computation, so resolutions are cached per epoch.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// One cached resolution: tensor address -> (base address, offset, id, layer, repacked).
#[derive(Clone, Copy, Default)]
struct Resolved {
    key: usize,
    epoch: u64,
    base: usize,
    off: u64,
    id: u32,
    layer: i16,
    repacked: bool,
}

thread_local! {
    /// The last few resolutions of this thread: a node's chunks share their
    /// tensors, so this spares the hash lookups on all but the first chunk.
    static RESOLVED: RefCell<([Resolved; 8], usize)> = const { RefCell::new(([EMPTY; 8], 0)) };
}

const EMPTY: Resolved = Resolved {
    key: 0,
    epoch: 0,
    base: 0,
    off: 0,
    id: 0,
    layer: 0,
    repacked: false,
};

/// What the hook needs to resolve tensors; frozen while the hook is installed
/// except for the runtime map, which has its own lock.
struct HookState {
    generation: u64,
    start_mono_ns: u64,
    /// Weight tensor address -> registry id.
    weights: HashMap<usize, u32>,
    /// Per id: layer and whether the copy read is repacked.
    info: Vec<(i16, bool)>,
    /// Per weight id: its name as ggml spells it, padded to the record field.
    names: Vec<[u8; 32]>,
    registry: Arc<Mutex<Registry>>,
    /// Runtime tensor name -> id.
    runtime: Mutex<HashMap<Box<[u8]>, u32>>,
}

static STATE: AtomicPtr<HookState> = AtomicPtr::new(std::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Per-thread cache of runtime ids: (generation, name -> (id, layer)).
    static RUNTIME_CACHE: RefCell<(u64, HashMap<Box<[u8]>, (u32, i16)>)> = RefCell::new((0, HashMap::new()));
}

fn name_bytes(t: &ffi::ggml_tensor) -> &[u8] {
    // SAFETY: `name` is a fixed-size char array inside the tensor.
    let b = unsafe { std::slice::from_raw_parts(t.name.as_ptr() as *const u8, t.name.len()) };
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

fn buft_name(t: &ffi::ggml_tensor) -> String {
    if t.buffer.is_null() {
        return String::new();
    }
    // SAFETY: a non-null buffer of a live tensor; the name is a static string.
    unsafe {
        let bt = ffi::ggml_backend_buffer_get_type(t.buffer);
        if bt.is_null() {
            return String::new();
        }
        CStr::from_ptr(ffi::ggml_backend_buft_name(bt))
            .to_string_lossy()
            .into_owned()
    }
}

fn shape(t: &ffi::ggml_tensor) -> Vec<u64> {
    // SAFETY: t is a valid tensor.
    let n = unsafe { ffi::ggml_n_dims(t) }.max(1) as usize;
    t.ne[..n].iter().map(|&x| x as u64).collect()
}

impl HookState {
    /// Registry id (and layer) of a runtime tensor, registering it on first sight.
    fn runtime_id(&self, t: &ffi::ggml_tensor) -> (u32, i16) {
        let name = name_bytes(t);
        let hit = RUNTIME_CACHE
            .try_with(|c| {
                let c = c.try_borrow().ok()?;
                if c.0 != self.generation {
                    return None;
                }
                c.1.get(name).copied()
            })
            .ok()
            .flatten();
        if let Some(v) = hit {
            return v;
        }
        let name_s = String::from_utf8_lossy(name).into_owned();
        let layer = layer_of(&name_s).map(|l| l as i16).unwrap_or(-1);
        let id = {
            let mut rt = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&id) = rt.get(name) {
                id
            } else {
                let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                let id = reg.tensors.len() as u32;
                let n_rows: u64 = t.ne[1..].iter().map(|&x| x.max(1) as u64).product();
                // SAFETY: valid tensor; pure size computations.
                let (row_bytes, bytes) = unsafe {
                    (
                        ffi::ggml_row_size(t.type_, t.ne[0]) as u64,
                        ffi::ggml_nbytes(t) as u64,
                    )
                };
                reg.tensors.push(TensorInfo {
                    id,
                    name: name_s.clone(),
                    kind: if name_s.starts_with("cache_") {
                        TensorKind::KvCache
                    } else {
                        TensorKind::Activation
                    },
                    dtype: llama::type_name(t.type_),
                    shape: shape(t),
                    n_rows,
                    row_bytes,
                    bytes,
                    layer: layer_of(&name_s),
                    gguf_offset: None,
                    source: MemorySource::Runtime,
                    buffer_type: buft_name(t),
                    data_ptrs: vec![t.data as u64],
                });
                rt.insert(name.into(), id);
                id
            }
        };
        let _ = RUNTIME_CACHE.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                if c.0 != self.generation {
                    *c = (self.generation, HashMap::new());
                }
                c.1.insert(name.into(), (id, layer));
            }
        });
        (id, layer)
    }

    /// Resolve a tensor to (base tensor, byte offset of `t` in the base, id, layer, repacked).
    fn resolve<'a>(&self, t: &'a ffi::ggml_tensor) -> (&'a ffi::ggml_tensor, u64, u32, i16, bool) {
        // Fast path: a registered weight carries its id in its padding.
        if t.view_src.is_null() {
            if let Some(id) = weight_tag(t) {
                if let Some(&(layer, repacked)) = self.info.get(id as usize) {
                    return (t, 0, id, layer, repacked);
                }
            }
        }
        let key = t as *const _ as usize;
        let epoch = EPOCH.load(Ordering::Relaxed) ^ (self.generation << 40);
        let hit = RESOLVED
            .try_with(|c| {
                let c = c.try_borrow().ok()?;
                c.0.iter()
                    .find(|e| e.key == key && e.epoch == epoch)
                    .copied()
            })
            .ok()
            .flatten();
        if let Some(e) = hit {
            // SAFETY: `base` was resolved from `t` in this same graph
            // computation (same epoch), so it is live as long as `t`.
            let base = unsafe { &*(e.base as *const ffi::ggml_tensor) };
            return (base, e.off, e.id, e.layer, e.repacked);
        }
        let r = self.resolve_slow(t);
        let _ = RESOLVED.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                let next = c.1;
                c.0[next] = Resolved {
                    key,
                    epoch,
                    base: r.0 as *const _ as usize,
                    off: r.1,
                    id: r.2,
                    layer: r.3,
                    repacked: r.4,
                };
                c.1 = (next + 1) % 8;
            }
        });
        r
    }

    fn resolve_slow<'a>(
        &self,
        t: &'a ffi::ggml_tensor,
    ) -> (&'a ffi::ggml_tensor, u64, u32, i16, bool) {
        let mut base = t;
        // SAFETY: view_src chains point at live tensors of the same graph or model.
        while !base.view_src.is_null() {
            base = unsafe { &*base.view_src };
        }
        let off = (t.data as u64).wrapping_sub(base.data as u64);
        if let Some(&id) = self.weights.get(&(base as *const _ as usize)) {
            let (layer, repacked) = self.info[id as usize];
            return (base, off, id, layer, repacked);
        }
        let (id, layer) = self.runtime_id(base);
        (base, off, id, layer, false)
    }
}

/// Marker byte in `ggml_tensor::padding[4]` of a weight the tracer tagged.
const TAG: u8 = 0xC7;

/// The registry id the tracer wrote into a weight's padding, if any.
///
/// `ggml_tensor` ends in 8 bytes of padding that ggml never uses (and zeroes
/// for every tensor it creates); while a trace session runs, bytes 0..4 hold
/// the registry id of each model weight and byte 4 the [`TAG`]. This turns
/// the id lookup of the hot path into one load from a cache line the kernel
/// just used. The tags are removed when the session ends.
fn weight_tag(t: &ffi::ggml_tensor) -> Option<u32> {
    let p = &t.padding;
    if p[4] as u8 != TAG {
        return None;
    }
    Some(u32::from_le_bytes([
        p[0] as u8, p[1] as u8, p[2] as u8, p[3] as u8,
    ]))
}

/// Write (or with `None`, clear) the tag of a model weight.
///
/// # Safety
/// `t` must point at a live model weight tensor that no thread is reading
/// concurrently (no decode is running).
unsafe fn set_weight_tag(t: *mut ffi::ggml_tensor, id: Option<u32>) {
    // SAFETY: caller guarantees a live, unshared tensor.
    let p = unsafe { &mut (*t).padding };
    match id {
        Some(id) => {
            for (i, b) in id.to_le_bytes().iter().enumerate() {
                p[i] = *b as _;
            }
            p[4] = TAG as _;
        }
        None => *p = [0; 8],
    }
}

unsafe extern "C" fn ggml_trace_hook(ev: *const ffi::ggml_cpu_trace_event) {
    let st = STATE.load(Ordering::Acquire);
    if st.is_null() || ev.is_null() {
        return;
    }
    // SAFETY: STATE is set while the hook is installed and cleared (then
    // freed) only after the hook is removed and the workers are idle; ggml
    // passes a valid event whose tensor pointers are live for the call.
    let (st, ev) = unsafe { (&*st, &*ev) };
    if ev.src.is_null() || ev.node.is_null() {
        return;
    }
    // SAFETY: non-null, live for the call (see above).
    let (src, node) = unsafe { (&*ev.src, &*ev.node) };
    let (base, off, id, layer, repacked) = st.resolve(src);
    let (act_id, _) = if ev.act.is_null() {
        (NO_ID, -1)
    } else {
        // SAFETY: non-null live tensor.
        let a = st.resolve(unsafe { &*ev.act });
        (a.2, a.3)
    };
    let op = match node.op {
        ffi::GGML_OP_MUL_MAT => Op::MulMat,
        ffi::GGML_OP_MUL_MAT_ID => Op::MulMatId,
        ffi::GGML_OP_GET_ROWS => Op::GetRows,
        _ => Op::Other,
    };
    let layer = if layer >= 0 {
        layer
    } else {
        std::str::from_utf8(name_bytes(node))
            .ok()
            .and_then(layer_of)
            .map(|l| l as i16)
            .unwrap_or(-1)
    };
    let mut fl = ev.flags & (flags::STRIDED | flags::OP_LEVEL);
    if repacked {
        fl |= flags::REPACKED;
    }
    let mut r = TraceRecord {
        t_ns: ev.t0_ns.saturating_sub(st.start_mono_ns),
        dur_ns: ev.t1_ns.saturating_sub(ev.t0_ns).min(u32::MAX as u64) as u32,
        step: STEP.load(Ordering::Relaxed),
        pos: POS.load(Ordering::Relaxed),
        n_tokens: NTOK.load(Ordering::Relaxed).min(u16::MAX as u32) as u16,
        phase: PHASE.load(Ordering::Relaxed),
        engine: Engine::Ggml as u8,
        op: op as u8,
        path: ev.path as u8,
        thread: ev.ith as u16,
        n_threads: ev.nth as u16,
        layer,
        tensor_id: id,
        act_id,
        offset: ev.offset.wrapping_add(off),
        len: ev.len,
        row0: ev.row0 as u32,
        row1: ev.row1 as u32,
        col0: ev.col0 as u32,
        col1: ev.col1 as u32,
        expert: ev.expert,
        flags: fl,
        node: ev.node as u64,
        act_bytes: ev.act_bytes,
        name: [0; 32],
    };
    // "Path A": the name as ggml itself spells it, not the registry's copy
    // (for a tagged weight, copied from its tensor when the session started).
    match st.names.get(id as usize) {
        Some(n) if weight_tag(src) == Some(id) => r.name = *n,
        _ => r.set_name(name_bytes(base)),
    }
    sink::record(r);
}

/// /proc/self/maps ranges that map `path`: (start, end, file offset).
fn file_mappings(path: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let canon = canon.to_string_lossy().into_owned();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let _perms = it.next()?;
            let off = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let _inode = it.next()?;
            let p: String = it.collect::<Vec<_>>().join(" ");
            if p != canon {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                off,
            ))
        })
        .collect()
}

/// Build the weight registry of a loaded model, with the address of each
/// weight's `ggml_tensor` (what the hook sees) by id.
pub fn model_registry(model: &Model) -> Result<(Registry, Vec<usize>)> {
    let gguf: HashMap<String, llama::GgufTensor> = llama::gguf_tensors(model.path())?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let maps = file_mappings(model.path());
    let mut reg = Registry::new();
    let mut structs = Vec::new();
    // SAFETY: the model is loaded; indices in range return live tensors.
    let n = unsafe { ffi::llama_model_n_tensors(model.as_ptr()) };
    for i in 0..n {
        let tp = unsafe { ffi::llama_model_get_tensor_by_index(model.as_ptr(), i) };
        if tp.is_null() {
            continue;
        }
        // SAFETY: non-null tensor owned by the model.
        let t = unsafe { &*tp };
        let name = String::from_utf8_lossy(name_bytes(t)).into_owned();
        let bt = buft_name(t);
        let data = t.data as u64;
        let g = gguf.get(&name);
        let in_map = maps.iter().find(|(a, b, _)| data >= *a && data < *b);
        let source = if bt.contains("REPACK") || bt.contains("AMX") || bt.contains("KLEIDI") {
            MemorySource::Repacked
        } else if in_map.is_some() {
            MemorySource::Mmap
        } else {
            MemorySource::Anon
        };
        // SAFETY: valid tensor; pure size computations.
        let (row_bytes, bytes) = unsafe {
            (
                ffi::ggml_row_size(t.type_, t.ne[0]) as u64,
                ffi::ggml_nbytes(t) as u64,
            )
        };
        let id = reg.tensors.len() as u32;
        reg.tensors.push(TensorInfo {
            id,
            name: name.clone(),
            kind: TensorKind::Weight,
            dtype: llama::type_name(t.type_),
            shape: shape(t),
            n_rows: t.ne[1..].iter().map(|&x| x.max(1) as u64).product(),
            row_bytes,
            bytes,
            layer: layer_of(&name),
            gguf_offset: g
                .map(|g| g.file_offset)
                .or_else(|| in_map.map(|(a, _, off)| off + (data - a))),
            source,
            buffer_type: bt,
            data_ptrs: vec![data],
        });
        structs.push(tp as usize);
    }
    Ok((reg, structs))
}

/// One traced run of the ggml engine.
pub struct TraceSession {
    dir: PathBuf,
    sink: Arc<TraceSink>,
    registry: Arc<Mutex<Registry>>,
    state: *mut HookState,
    /// Weights whose padding carries a tag, to clear at the end.
    tagged: Vec<usize>,
    n_weights: usize,
    finished: bool,
}

impl TraceSession {
    /// Create the bundle directory and trace file, register the model's
    /// weights and install the hook.
    pub fn start(
        dir: &Path,
        model: &Model,
        threads: u32,
        capacity: u64,
        trace_ops: bool,
    ) -> Result<TraceSession> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating trace directory {}", dir.display()))?;
        let (reg, structs) = model_registry(model)?;
        let sink = TraceSink::create(&dir.join("trace.bin"), capacity, Engine::Ggml, threads)
            .with_context(|| format!("creating {}", dir.join("trace.bin").display()))?;
        // The hook sees `ggml_tensor` addresses: key weights by those.
        let by_struct: HashMap<usize, u32> = structs
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, i as u32))
            .collect();
        let info = reg
            .tensors
            .iter()
            .map(|t| {
                (
                    t.layer.unwrap_or(-1) as i16,
                    t.source == MemorySource::Repacked,
                )
            })
            .collect();
        let n_weights = reg.tensors.len();
        for (i, &p) in structs.iter().enumerate() {
            // SAFETY: model weights, live as long as the model; no decode runs.
            unsafe { set_weight_tag(p as *mut ffi::ggml_tensor, Some(i as u32)) };
        }
        let registry = Arc::new(Mutex::new(reg));
        let state = Box::into_raw(Box::new(HookState {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            start_mono_ns: sink.start_mono_ns(),
            weights: by_struct,
            info,
            registry: registry.clone(),
            runtime: Mutex::new(HashMap::new()),
            names: structs
                .iter()
                .map(|&p| {
                    // SAFETY: model weights, live as long as the model.
                    let b = name_bytes(unsafe { &*(p as *const ffi::ggml_tensor) });
                    let mut n = [0u8; 32];
                    let k = b.len().min(32);
                    n[..k].copy_from_slice(&b[..k]);
                    n
                })
                .collect(),
        }));
        sink::install(sink.clone());
        STATE.store(state, Ordering::Release);
        // SAFETY: installs a valid extern "C" fn; ggml only calls it from
        // compute threads while it is set.
        unsafe {
            ffi::ggml_cpu_set_trace_ops(trace_ops);
            ffi::ggml_cpu_set_trace_hook(Some(ggml_trace_hook));
        }
        Ok(TraceSession {
            dir: dir.to_path_buf(),
            sink,
            registry,
            state,
            tagged: structs,
            n_weights,
            finished: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn n_weights(&self) -> usize {
        self.n_weights
    }

    fn untag(&mut self) {
        for p in self.tagged.drain(..) {
            // SAFETY: tagged in start; the model outlives the session and no
            // decode is running.
            unsafe { set_weight_tag(p as *mut ffi::ggml_tensor, None) };
        }
    }

    /// Remove the hook, flush everything, write registry.json and meta.json.
    pub fn finish(&mut self, mut meta: Meta) -> Result<SinkStats> {
        self.finished = true;
        self.untag();
        // SAFETY: no decode is running (we are on the thread that calls
        // llama_decode, between calls), so no worker is inside the hook.
        unsafe {
            ffi::ggml_cpu_set_trace_hook(None);
            ffi::ggml_cpu_set_trace_ops(false);
        }
        let st = STATE.swap(std::ptr::null_mut(), Ordering::AcqRel);
        sink::uninstall();
        let stats = self
            .sink
            .finish()
            .with_context(|| format!("finishing {}", self.sink.path().display()))?;
        if !st.is_null() {
            // SAFETY: created by Box::into_raw in start; no longer reachable.
            drop(unsafe { Box::from_raw(st) });
        }
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        write_json(&self.dir.join("registry.json"), &reg)?;
        meta.records = stats.written;
        meta.dropped = stats.dropped;
        write_json(&self.dir.join("meta.json"), &meta)?;
        Ok(stats)
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if !self.finished {
            self.untag();
            // SAFETY: as in finish: called between decodes.
            unsafe { ffi::ggml_cpu_set_trace_hook(None) };
            let st = STATE.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if let Some(s) = sink::uninstall() {
                let _ = s.finish();
            }
            if !st.is_null() {
                // SAFETY: created by Box::into_raw in start.
                drop(unsafe { Box::from_raw(st) });
            }
        }
        let _ = self.state;
    }
}

impl StepHook for TraceSession {
    fn before(&mut self, step: u32, pos: i32, tokens: &[i32]) {
        EPOCH.fetch_add(1, Ordering::Relaxed);
        STEP.store(step, Ordering::Relaxed);
        POS.store(pos, Ordering::Relaxed);
        NTOK.store(tokens.len() as u32, Ordering::Relaxed);
        PHASE.store(
            if step == 0 {
                Phase::Prefill as u8
            } else {
                Phase::Decode as u8
            },
            Ordering::Release,
        );
    }
    fn after(&mut self, _step: u32) {
        sink::flush_all();
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(f), v)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
