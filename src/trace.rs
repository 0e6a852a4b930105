//! Tracing the ggml engine: the hook our patch series calls from every CPU
//! kernel path, the registry built at model load, and the trace bundle
//! (`trace.bin`, `registry.json`, `meta.json`) written by `cktrace run
//! --trace`.
//!
//! The hook is a plain `extern "C"` function installed with
//! `ggml_cpu_set_trace_hook`; ggml calls it on the worker thread that did the
//! work with a batch of that thread's events (one per chunk / tile range /
//! row) whenever 64 have piled up and when it has finished its part of a
//! graph. Each event
//! becomes one [`TraceRecord`] in the tracer's thread-local buffer: what all
//! records of a node share (registry ids, layer, name) comes from a
//! per-thread memo of the node, made once by resolving the tensor that was
//! read (weights through a tag in their `ggml_tensor`; KV cache and
//! activations by name, registered the first time they are seen).

use std::cell::RefCell;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use cktrace_tracer::format::{flags, RecordWords, NO_ID, RECORD_WORDS};
use cktrace_tracer::sink::{self, SinkStats, TraceSink};
use cktrace_tracer::{
    layer_of, Engine, MemorySource, Meta, Op, Phase, Registry, TensorInfo, TensorKind, TraceRecord,
};

use crate::ffi;
use crate::generate::StepHook;
use crate::llama::{self, Model};
use crate::tsc::{self, Calibration, Clock, ClockKind};

// Step state, written by the thread that calls llama_decode before each step
// and read by the workers inside the hook.
static STEP: AtomicU32 = AtomicU32::new(0);
static POS: AtomicI32 = AtomicI32::new(0);
static NTOK: AtomicU32 = AtomicU32::new(0);
static PHASE: AtomicU8 = AtomicU8::new(0);

/// What every record of one node has in common (ids, layer, name, op), as
/// one thread resolved it. Valid while the node is the same ggml tensor
/// (its stamp is intact, see [`node_stamp`]), reads the same tensor at the
/// same address and has the same activation operand.
#[derive(Clone, Copy)]
struct Memo {
    /// The node's index ([`node_index`]); `u32::MAX` in an empty entry.
    idx: u32,
    node: usize,
    src: usize,
    src_data: usize,
    act: usize,
    stamp: u64,
    /// Byte offset of the tensor read within the registered (base) tensor.
    off: u64,
    template: RecordWords,
}

const MEMO_EMPTY: Memo = Memo {
    idx: u32::MAX,
    node: 0,
    src: 0,
    src_data: 0,
    act: 0,
    stamp: 0,
    off: 0,
    template: [0; RECORD_WORDS],
};

/// Nodes a thread's memo table holds (two entries each). A decode graph has
/// a few hundred traced nodes; indices are handed out per session, and a
/// long run that builds many graphs reuses the table modulo this (an entry
/// keeps its node's full index, so a reused slot only costs a miss).
const MEMO_NODES: usize = 4096;

thread_local! {
    /// This thread's memo table, indexed by the node index that the node's
    /// stamp carries ([`node_stamp`]): entries `2i` and `2i + 1` belong to
    /// node `i`, one per tensor it reads (a FLASH_ATTN_EXT node reads two,
    /// K and V, alternately). A record costs a load of the node's stamp,
    /// a few compares and the template's words (an event of the same node as
    /// the one before skips even the lookup); tensors are resolved again
    /// only when ggml builds a new node (llama.cpp reuses decode graphs, so
    /// mostly never). Unlike a hash of the node's address, the index never
    /// makes two nodes of one graph evict each other (measured: with a
    /// 1024-slot direct-mapped table, 134 of SmolLM2's ~300 node entries
    /// missed on every decode step).
    static MEMO: RefCell<Vec<Memo>> = const { RefCell::new(Vec::new()) };
}

/// What the hook needs to resolve tensors; frozen while the hook is installed
/// except for the runtime map, which has its own lock.
struct HookState {
    generation: u64,
    /// The next node index to hand out ([`node_index`]).
    next_node: AtomicU32,
    /// Converts the trace points' clock readings to record times.
    clock: Arc<Calibration>,
    /// Per id: layer and whether the copy read is repacked.
    info: Vec<(i16, bool)>,
    /// Per weight id: its name as ggml spells it, padded to the record field.
    names: Vec<[u8; 32]>,
    registry: Arc<Mutex<Registry>>,
    /// Runtime tensor name -> id.
    runtime: Mutex<FxHashMap<Box<[u8]>, u32>>,
}

static STATE: AtomicPtr<HookState> = AtomicPtr::new(std::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runtime tensor name -> (registry id, layer).
type RuntimeIds = FxHashMap<Box<[u8]>, (u32, i16)>;

thread_local! {
    /// Per-thread cache of runtime ids: (generation, name -> (id, layer)).
    static RUNTIME_CACHE: RefCell<(u64, RuntimeIds)> = RefCell::new((0, FxHashMap::default()));
}

fn name_bytes(t: &ffi::ggml_tensor) -> &[u8] {
    llama::c_chars(&t.name)
}

/// Bytes `t` occupies in its buffer (the buffer type's `get_alloc_size`:
/// larger than `ggml_nbytes` where the layout is packed, as AMX's is).
fn buffer_bytes(t: &ffi::ggml_tensor) -> Option<u64> {
    if t.buffer.is_null() {
        return None;
    }
    // SAFETY: a non-null buffer of a live tensor; get_alloc_size only reads
    // the tensor's type and shape.
    unsafe {
        let bt = ffi::ggml_backend_buffer_get_type(t.buffer);
        if bt.is_null() {
            return None;
        }
        Some(ffi::ggml_backend_buft_get_alloc_size(bt, t) as u64)
    }
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
                    buffer_bytes: None,
                });
                rt.insert(name.into(), id);
                id
            }
        };
        let _ = RUNTIME_CACHE.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                if c.0 != self.generation {
                    *c = (self.generation, FxHashMap::default());
                }
                c.1.insert(name.into(), (id, layer));
            }
        });
        (id, layer)
    }

    /// Resolve a tensor to (base tensor, byte offset of `t` in the base, id, layer, repacked).
    fn resolve<'a>(&self, t: &'a ffi::ggml_tensor) -> (&'a ffi::ggml_tensor, u64, u32, i16, bool) {
        // A registered weight carries its id in its padding.
        if t.view_src.is_null() {
            if let Some(id) = weight_tag(t) {
                if let Some(&(layer, repacked)) = self.info.get(id as usize) {
                    return (t, 0, id, layer, repacked);
                }
            }
        }
        self.resolve_slow(t)
    }

    /// A memo entry for a node this thread has no valid entry for.
    #[cold]
    fn memo(
        &self,
        ev: &ffi::ggml_cpu_trace_event,
        src: &ffi::ggml_tensor,
        stamp: u64,
        idx: u32,
    ) -> Memo {
        // SAFETY: a live node; its op and name are not written while it is
        // computed (only its padding is, and only atomically).
        let (op, node_name) = unsafe {
            (
                std::ptr::addr_of!((*ev.node).op).read(),
                std::ptr::addr_of!((*ev.node).name).read(),
            )
        };
        let (base, off, id, layer, repacked) = self.resolve(src);
        let act_id = if ev.act.is_null() {
            NO_ID
        } else {
            // SAFETY: non-null live tensor (ggml passes the node's operand).
            self.resolve(unsafe { &*ev.act }).2
        };
        let op = match op {
            ffi::GGML_OP_MUL_MAT => Op::MulMat,
            ffi::GGML_OP_MUL_MAT_ID => Op::MulMatId,
            ffi::GGML_OP_GET_ROWS => Op::GetRows,
            ffi::GGML_OP_FLASH_ATTN_EXT => Op::FlashAttnExt,
            _ => Op::Other,
        };
        let layer = if layer >= 0 {
            layer
        } else {
            std::str::from_utf8(llama::c_chars(&node_name))
                .ok()
                .and_then(layer_of)
                .map(|l| l as i16)
                .unwrap_or(-1)
        };
        let mut template = TraceRecord {
            engine: Engine::Ggml as u8,
            op: op as u8,
            layer,
            tensor_id: id,
            act_id,
            flags: if repacked { flags::REPACKED } else { 0 },
            node: ev.node as u64,
            ..TraceRecord::EMPTY
        };
        // "Path A": the name as ggml itself spells it, not the registry's copy
        // (for a tagged weight, copied from its tensor when the session started).
        match self.names.get(id as usize) {
            Some(n) if weight_tag(src) == Some(id) => template.name = *n,
            _ => template.set_name(name_bytes(base)),
        }
        Memo {
            idx,
            node: ev.node as usize,
            src: ev.src as usize,
            src_data: src.data as usize,
            act: ev.act as usize,
            stamp,
            off,
            template: template.words(),
        }
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
        // Every model weight is tagged when the session starts.
        if let Some(id) = weight_tag(base).filter(|&id| (id as usize) < self.info.len()) {
            let (layer, repacked) = self.info[id as usize];
            return (base, off, id, layer, repacked);
        }
        let (id, layer) = self.runtime_id(base);
        (base, off, id, layer, false)
    }
}

/// Marker byte in `ggml_tensor::padding[4]` of a weight the tracer tagged.
const TAG: u8 = 0xC7;
/// Marker byte in `ggml_tensor::padding[4]` of a graph node the hook memoised.
const NODE_MARK: u8 = 0xA5;

const _: () = assert!(std::mem::offset_of!(ffi::ggml_tensor, padding) % 8 == 0);

/// The 8 padding bytes that end every `ggml_tensor`, as one atomic word.
///
/// ggml never uses them (it zeroes them when it creates a tensor). The tracer
/// keeps two kinds of marks there: the registry id of each model weight
/// ([`weight_tag`]), and on graph nodes a per-session stamp ([`node_stamp`])
/// that says the hook's memo of that node is still valid: when ggml builds a
/// new node in the same memory it zeroes the stamp, so a stale memo entry can
/// never be used for a different node.
///
/// # Safety
/// `t` points at a live `ggml_tensor`. The padding is only ever accessed
/// through this word (atomically), so concurrent hooks do not race.
unsafe fn pad_word<'a>(t: *const ffi::ggml_tensor) -> &'a AtomicU64 {
    // SAFETY: in bounds of the live tensor and 8-aligned (asserted above).
    unsafe { AtomicU64::from_ptr(std::ptr::addr_of!((*t).padding) as *mut u64) }
}

/// The stamp this session writes on the graph nodes it memoised: the
/// session's generation (low 32 bits) and [`NODE_MARK`]; the node's index
/// in the memo tables goes in the top 24 bits ([`node_index`]).
fn node_stamp(generation: u64) -> u64 {
    (generation & 0xffff_ffff) | (NODE_MARK as u64) << 32
}

/// Bits of a node's padding word that hold the session stamp.
const STAMP_MASK: u64 = (1 << 40) - 1;
/// A node index: 24 bits, from a counter that would wrap after 16M nodes
/// (the memo table uses it modulo [`MEMO_NODES`] and keeps it in the entry).
const NODE_INDEX_MASK: u64 = (1 << 24) - 1;

/// The memo index of a node: read from its stamp when this session stamped
/// it, otherwise claimed from the session's counter and written there (by
/// whichever thread gets there first; the others adopt its index).
#[inline(always)]
fn node_index(word: &AtomicU64, stamp: u64, next: &AtomicU32) -> usize {
    let w = word.load(Ordering::Relaxed);
    match stamped_index(w, stamp) {
        Some(i) => i,
        None => claim_node_index(word, w, stamp, next),
    }
}

/// The node index a padding word holds, if this session stamped it.
#[inline(always)]
fn stamped_index(word: u64, stamp: u64) -> Option<usize> {
    (word & STAMP_MASK == stamp).then_some((word >> 40) as usize)
}

/// The first of a node's two entries in a thread's memo table.
#[inline(always)]
fn memo_slot(idx: usize) -> usize {
    2 * (idx % MEMO_NODES)
}

#[cold]
fn claim_node_index(word: &AtomicU64, old: u64, stamp: u64, next: &AtomicU32) -> usize {
    let idx = next.fetch_add(1, Ordering::Relaxed) as u64 & NODE_INDEX_MASK;
    match word.compare_exchange(old, stamp | idx << 40, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => idx as usize,
        Err(w) => match stamped_index(w, stamp) {
            Some(i) => i,
            // Rewritten meanwhile by something that is not this session
            // (ggml rebuilding the node would be a bug: it is being
            // computed). Use the claimed index without stamping; the
            // entry's key check still holds.
            None => idx as usize,
        },
    }
}

/// The registry id the tracer wrote into a weight's padding, if any.
///
/// While a trace session runs, bytes 0..4 of each model weight's padding hold
/// its registry id and byte 4 the [`TAG`]. This turns the id lookup of the
/// hot path into one load from the tensor the kernel just used. The tags are
/// removed when the session ends.
fn weight_tag(t: &ffi::ggml_tensor) -> Option<u32> {
    // SAFETY: a live tensor (we hold a reference to it).
    let w = unsafe { pad_word(t) }.load(Ordering::Relaxed);
    if (w >> 32) as u8 != TAG {
        return None;
    }
    Some(w as u32)
}

/// Write (or with `None`, clear) the tag of a model weight.
///
/// # Safety
/// `t` must point at a live model weight tensor.
unsafe fn set_weight_tag(t: *mut ffi::ggml_tensor, id: Option<u32>) {
    let w = id.map_or(0, |id| id as u64 | (TAG as u64) << 32);
    // SAFETY: caller guarantees a live tensor.
    unsafe { pad_word(t) }.store(w, Ordering::Relaxed);
}

/// Where the hook stops, to measure what each stage of tracing costs
/// (`CKTRACE_TRACE_CUT`, read when a session starts; a diagnostic for
/// `cktrace bench trace`, never for real traces): 0 = nothing cut, 1 = `c`
/// (the hook returns at once: what is left is the C side, clock reads and
/// events), 2 = `records` (records are built as usual into a thread-local
/// scratch buffer that is thrown away: no file write).
static CUT: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// The scratch buffer of `CKTRACE_TRACE_CUT=records`.
    static SCRATCH: RefCell<Vec<TraceRecord>> = const { RefCell::new(Vec::new()) };
}

/// The hook ggml calls with a batch of one thread's events (see the patch's
/// `trace.h`): each becomes one record in that thread's buffer.
unsafe extern "C" fn ggml_trace_hook(
    evs: *const ffi::ggml_cpu_trace_event,
    n: std::os::raw::c_int,
) {
    let st = STATE.load(Ordering::Acquire);
    if st.is_null() {
        return;
    }
    let cut = CUT.load(Ordering::Relaxed);
    if cut == 1 {
        return;
    }
    if n == 0 {
        // This thread finished its part of a graph.
        if cut == 2 {
            let _ = SCRATCH.try_with(|s| s.try_borrow_mut().map(|mut s| s.clear()));
        } else if !sink::direct_active() {
            // Writes through the page cache: each thread writes its own.
            sink::flush_local();
        }
        // With a writer thread the records wait in the thread's block for
        // the next handover (see `TraceSession::after`).
        return;
    }
    if evs.is_null() || n < 0 {
        return;
    }
    let (prof_t0, prof_w0) = if sink::profiling() {
        (sink::monotonic_ns(), sink::thread_write_ns())
    } else {
        (0, 0)
    };
    // SAFETY: STATE is set while the hook is installed and cleared (then
    // freed) only after the hook is removed and the workers are idle; ggml
    // passes `n` valid events whose tensor pointers are live for the call.
    let (st, evs) = unsafe { (&*st, std::slice::from_raw_parts(evs, n as usize)) };
    let step = Step {
        step: STEP.load(Ordering::Relaxed),
        pos: POS.load(Ordering::Relaxed),
        n_tokens: NTOK.load(Ordering::Relaxed).min(u16::MAX as u32) as u16,
        phase: PHASE.load(Ordering::Relaxed),
    };
    let stamp = node_stamp(st.generation);
    let clock = st.clock.clock();
    let done = MEMO
        .try_with(|m| {
            let Ok(mut m) = m.try_borrow_mut() else {
                return false;
            };
            let table = &mut *m;
            if cut == 2 {
                let _ = SCRATCH.try_with(|s| {
                    let Ok(mut s) = s.try_borrow_mut() else {
                        return;
                    };
                    for ev in evs {
                        if ev.src.is_null() || ev.node.is_null() {
                            continue;
                        }
                        // SAFETY: non-null and live for the call (see above).
                        let src = unsafe { &*ev.src };
                        let j = memo_entry(table, st, ev, src, stamp);
                        let slot = &table[j];
                        if s.len() >= 4096 {
                            s.clear();
                        }
                        s.push(TraceRecord::from_words(fill_words(
                            &slot.template,
                            ev,
                            &step,
                            slot.off,
                            &clock,
                        )));
                    }
                });
                return true;
            }
            prefetch_memos(table, stamp, evs);
            let written = sink::with_writer(|w| {
                let mut malformed = 0;
                // The last record's tensors and memo entry. A thread mostly
                // computes several chunks of a node in a row, and within one
                // call an entry found valid stays valid (the tensors are
                // live and unchanged until the call returns).
                let mut last = (std::ptr::null(), std::ptr::null(), std::ptr::null(), 0);
                for ev in evs {
                    if ev.src.is_null() || ev.node.is_null() {
                        malformed += 1;
                        last.0 = std::ptr::null();
                        continue;
                    }
                    let j = if (ev.node, ev.src, ev.act) == (last.0, last.1, last.2) {
                        last.3
                    } else {
                        // SAFETY: non-null and live for the call (see above).
                        let src = unsafe { &*ev.src };
                        let j = memo_entry(table, st, ev, src, stamp);
                        last = (ev.node, ev.src, ev.act, j);
                        j
                    };
                    let slot = &table[j];
                    w.push_words(&fill_words(&slot.template, ev, &step, slot.off, &clock));
                }
                // An event without its tensors cannot become a record; count
                // it rather than lose it silently (the patch never sends one).
                if malformed > 0 {
                    sink::count_dropped(malformed);
                }
            });
            if written.is_none() {
                sink::count_dropped(evs.len() as u64);
            }
            true
        })
        .unwrap_or(false);
    if !done {
        // Thread teardown: no memo; build each record from scratch.
        for ev in evs {
            if ev.src.is_null() || ev.node.is_null() {
                sink::count_dropped(1);
                continue;
            }
            // SAFETY: non-null and live for the call (see above).
            let m = st.memo(ev, unsafe { &*ev.src }, stamp, u32::MAX);
            sink::record_words(&fill_words(&m.template, ev, &step, m.off, &clock));
        }
    }
    if prof_t0 != 0 {
        // less the writes of a full buffer done inside this call
        let wrote = sink::thread_write_ns() - prof_w0;
        sink::add_build_cost(
            (sink::monotonic_ns() - prof_t0).saturating_sub(wrote),
            evs.len() as u64,
        );
    }
}

/// The index in this thread's memo table of a valid entry for the event's
/// (node, tensor read), resolving the tensors again if there is none.
#[inline(always)]
fn memo_entry(
    table: &mut Vec<Memo>,
    st: &HookState,
    ev: &ffi::ggml_cpu_trace_event,
    src: &ffi::ggml_tensor,
    stamp: u64,
) -> usize {
    // SAFETY: ev.node is a live tensor (checked non-null by the caller).
    let word = unsafe { pad_word(ev.node) };
    let idx = node_index(word, stamp, &st.next_node);
    let i = memo_slot(idx);
    if table.len() < i + 2 {
        grow_memo(table, i + 2);
    }
    let key = |m: &Memo| {
        m.idx == idx as u32
            && m.node == ev.node as usize
            && m.src == ev.src as usize
            && m.src_data == src.data as usize
            && m.act == ev.act as usize
            && m.stamp == stamp
    };
    if key(&table[i]) {
        return i;
    }
    if key(&table[i + 1]) {
        return i + 1;
    }
    refresh_memo(table, i, idx as u32, st, ev, src, stamp)
}

#[cold]
fn grow_memo(table: &mut Vec<Memo>, len: usize) {
    let len = len.next_power_of_two().clamp(64, 2 * MEMO_NODES);
    table.resize(len, MEMO_EMPTY);
}

/// Resolve an event's tensors into one of its node's two entries: the one
/// that already holds this tensor read (stale), else the first one not
/// holding the node's other tensor read.
#[cold]
#[inline(never)]
fn refresh_memo(
    table: &mut [Memo],
    i: usize,
    idx: u32,
    st: &HookState,
    ev: &ffi::ggml_cpu_trace_event,
    src: &ffi::ggml_tensor,
    stamp: u64,
) -> usize {
    let ours = |m: &Memo| m.idx == idx && m.node == ev.node as usize && m.stamp == stamp;
    let j = if ours(&table[i]) && table[i].src != ev.src as usize {
        i + 1
    } else {
        i
    };
    table[j] = st.memo(ev, src, stamp, idx);
    j
}

/// Ask for the nodes' stamps (which hold their memo indices) and the data
/// pointers of the tensors read of a batch, then for the memo entries,
/// before they are used. The hook runs once per 64 events, after the thread
/// has streamed megabytes of weights, so these have left the caches; looking
/// them up one by one cost a memory latency per node (measured: half of the
/// hook's samples were on the first load of a slot). Asked for together, the
/// misses overlap.
#[inline]
fn prefetch_memos(table: &[Memo], stamp: u64, evs: &[ffi::ggml_cpu_trace_event]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut prev = std::ptr::null();
        for ev in evs {
            if ev.node == prev {
                continue;
            }
            prev = ev.node;
            // SAFETY: prefetches only hint the cache; they never fault and
            // read nothing: a hint on any address is harmless.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(
                    (ev.node as *const i8)
                        .wrapping_add(std::mem::offset_of!(ffi::ggml_tensor, padding)),
                );
                // The tensor read: its data pointer is part of the key.
                _mm_prefetch::<_MM_HINT_T0>(
                    (ev.src as *const i8)
                        .wrapping_add(std::mem::offset_of!(ffi::ggml_tensor, data)),
                );
            }
        }
        let mut prev = std::ptr::null();
        for ev in evs {
            if ev.node == prev || ev.node.is_null() {
                continue;
            }
            prev = ev.node;
            // SAFETY: a live tensor (non-null; ggml passes live nodes).
            let w = unsafe { pad_word(ev.node) }.load(Ordering::Relaxed);
            let Some(idx) = stamped_index(w, stamp) else {
                continue;
            };
            let i = memo_slot(idx);
            if let Some(m) = table.get(i..i + 2) {
                let p = m.as_ptr() as *const i8;
                for off in (0..std::mem::size_of_val(m)).step_by(64) {
                    // SAFETY: as above; the address is inside the table.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (table, stamp, evs);
}

/// The step facts of every record of a batch.
struct Step {
    step: u32,
    pos: i32,
    n_tokens: u16,
    phase: u8,
}

/// A record from its node's template (words) and what this event did,
/// as words: built in registers and packed from there (see
/// `pack::pack_words`). What [`fill`] and the VALID flag make of the
/// template record (a test checks that the two agree).
#[inline(always)]
fn fill_words(
    t: &RecordWords,
    ev: &ffi::ggml_cpu_trace_event,
    s: &Step,
    off: u64,
    clock: &Clock,
) -> RecordWords {
    // Word layout: see RecordWords.
    let lo32 = |x: i64| u64::from(x as u32);
    let dur = clock.dur(ev.t0_ns, ev.t1_ns).min(u64::from(u32::MAX));
    let fl = (t[9] >> 32) as u32 | ev.flags & (flags::STRIDED | flags::OP_LEVEL) | flags::VALID;
    [
        clock.ns(ev.t0_ns),
        dur | u64::from(s.step) << 32,
        u64::from(s.pos as u32)
            | u64::from(s.n_tokens) << 32
            | u64::from(s.phase) << 48
            | t[2] & 0xFF << 56,
        t[3] & 0xFF
            | u64::from(ev.path as u8) << 8
            | u64::from(ev.ith as u16) << 16
            | u64::from(ev.nth as u16) << 32
            | t[3] & 0xFFFF << 48,
        t[4],
        ev.offset.wrapping_add(off),
        ev.len,
        lo32(ev.row0) | lo32(ev.row1) << 32,
        lo32(ev.col0) | lo32(ev.col1) << 32,
        u64::from(ev.expert as u32) | u64::from(fl) << 32,
        t[10],
        ev.act_bytes,
        t[12],
        t[13],
        t[14],
        t[15],
    ]
}

/// Complete a record from its node's template: what this event did (the
/// field-by-field statement of [`fill_words`], its test oracle).
#[cfg(test)]
fn fill(r: &mut TraceRecord, ev: &ffi::ggml_cpu_trace_event, s: &Step, off: u64, clock: &Clock) {
    r.t_ns = clock.ns(ev.t0_ns);
    r.dur_ns = clock.dur(ev.t0_ns, ev.t1_ns).min(u32::MAX as u64) as u32;
    r.step = s.step;
    r.pos = s.pos;
    r.n_tokens = s.n_tokens;
    r.phase = s.phase;
    r.path = ev.path as u8;
    r.thread = ev.ith as u16;
    r.n_threads = ev.nth as u16;
    r.offset = ev.offset.wrapping_add(off);
    r.len = ev.len;
    r.row0 = ev.row0 as u32;
    r.row1 = ev.row1 as u32;
    r.col0 = ev.col0 as u32;
    r.col1 = ev.col1 as u32;
    r.expert = ev.expert;
    r.flags |= ev.flags & (flags::STRIDED | flags::OP_LEVEL);
    r.act_bytes = ev.act_bytes;
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
            buffer_bytes: buffer_bytes(t).filter(|&b| b != bytes),
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
    clock: Arc<Calibration>,
    /// Weights whose padding carries a tag, to clear at the end.
    tagged: Vec<usize>,
    n_weights: usize,
    /// Tensors in the registry.json on disk.
    registry_saved: usize,
    /// Steps whose `after` has run: `finish` marks them all done.
    steps_ended: u32,
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
        remove_old_bundle(dir)?;
        let (reg, structs) = model_registry(model)?;
        let sink = TraceSink::create(&dir.join("trace.bin"), capacity, Engine::Ggml, threads)
            .with_context(|| format!("creating {}", dir.join("trace.bin").display()))?;
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
        CUT.store(
            match std::env::var("CKTRACE_TRACE_CUT").as_deref() {
                Ok("c") => 1,
                Ok("records") => 2,
                _ => 0,
            },
            Ordering::Relaxed,
        );
        // CKTRACE_TRACE_BUFFER (a diagnostic): write a thread's records
        // mid-graph every N records instead of when 4096 have piled up.
        sink::set_flush_at(
            std::env::var("CKTRACE_TRACE_BUFFER")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(sink::LOCAL_CAPACITY),
        );
        // The TSC where it is invariant (see tsc.rs); the patched ggml says
        // whether it can read it. Calibrating spins for 2 ms, before any
        // step is timed.
        let mut kind = tsc::choose();
        // SAFETY: sets a flag the trace points read; no decode is running.
        if kind == ClockKind::Tsc && !unsafe { ffi::ggml_cpu_set_trace_tsc(true) } {
            kind = ClockKind::Monotonic;
        }
        let clock = Arc::new(Calibration::new(kind, sink.start_mono_ns()));
        let state = Box::into_raw(Box::new(HookState {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            next_node: AtomicU32::new(0),
            clock: clock.clone(),
            info,
            registry: registry.clone(),
            runtime: Mutex::new(FxHashMap::default()),
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
        // A sink left installed by an earlier session that was never
        // finished comes back here; finishing it marks that trace done.
        if let Some(old) = sink::install(sink.clone()) {
            let _ = old.finish();
        }
        STATE.store(state, Ordering::Release);
        // SAFETY: installs a valid extern "C" fn; ggml only calls it from
        // compute threads while it is set.
        unsafe {
            ffi::ggml_cpu_set_trace_ops(trace_ops);
            ffi::ggml_cpu_set_trace_hook(Some(ggml_trace_hook));
        }
        let mut session = TraceSession {
            dir: dir.to_path_buf(),
            sink,
            registry,
            state,
            clock,
            tagged: structs,
            n_weights,
            registry_saved: 0,
            steps_ended: 0,
            finished: false,
        };
        session.save_registry()?;
        Ok(session)
    }

    /// Write registry.json if tensors were registered since it was last
    /// written. The bundle of a run that is killed then still has the
    /// registry of every record it holds, so `cktrace parse` can read it.
    fn save_registry(&mut self) -> Result<()> {
        let reg = {
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if self.registry_saved == reg.tensors.len() && self.registry_saved > 0 {
                return Ok(());
            }
            reg.clone()
        };
        write_json(&self.dir.join("registry.json"), &reg)?;
        self.registry_saved = reg.tensors.len();
        Ok(())
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

    /// Stop or resume recording between steps (`run --trace-steps`): the
    /// hook is removed while off, so untraced steps cost nothing.
    pub fn set_recording(&mut self, on: bool) {
        if self.finished {
            return;
        }
        // SAFETY: called between decodes (no worker is inside the hook); the
        // hook state stays installed, so resuming needs nothing else.
        unsafe { ffi::ggml_cpu_set_trace_hook(if on { Some(ggml_trace_hook) } else { None }) };
    }

    /// Hand every thread's records over and wait until they are in the file
    /// (a benchmark's way of charging the writes to the steps that made
    /// them). Call between decodes.
    pub fn drain(&mut self) {
        sink::flush_all();
        self.sink.sync();
    }

    /// Remove the hook, flush everything, write registry.json and meta.json.
    /// A session finishes once; a second call is an error.
    pub fn finish(&mut self, mut meta: Meta) -> Result<SinkStats> {
        if self.finished {
            anyhow::bail!("trace {} is already finished", self.dir.display());
        }
        self.finished = true;
        self.untag();
        // SAFETY: no decode is running (we are on the thread that calls
        // llama_decode, between calls), so no worker is inside the hook.
        unsafe {
            ffi::ggml_cpu_set_trace_hook(None);
            ffi::ggml_cpu_set_trace_ops(false);
            ffi::ggml_cpu_set_trace_tsc(false);
        }
        let st = STATE.swap(std::ptr::null_mut(), Ordering::AcqRel);
        sink::uninstall();
        // Every ended step is complete once what was handed over is written
        // (the writer thread marks it after the queued writes).
        if self.steps_ended > 0 && self.save_registry().is_ok() {
            self.sink.mark_steps_done(self.steps_ended);
        }
        let stats = self
            .sink
            .finish()
            .with_context(|| format!("finishing {}", self.sink.path().display()))?;
        if !st.is_null() {
            // SAFETY: created by Box::into_raw in start; no longer reachable.
            drop(unsafe { Box::from_raw(st) });
        }
        self.save_registry()?;
        meta.records = stats.written;
        meta.dropped = stats.dropped;
        meta.trace_clock = self.clock.kind().name().into();
        write_json(&self.dir.join("meta.json"), &meta)?;
        Ok(stats)
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if !self.finished {
            self.untag();
            // SAFETY: as in finish: called between decodes.
            unsafe {
                ffi::ggml_cpu_set_trace_hook(None);
                ffi::ggml_cpu_set_trace_ops(false);
                ffi::ggml_cpu_set_trace_tsc(false);
            }
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
        // No worker is in the hook between steps: move the clock's base to
        // now, with the slope measured over the whole trace so far.
        self.clock.reanchor();
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
    fn after(&mut self, step: u32) {
        // Runtime tensors seen in this step join registry.json now (in
        // practice during the first steps only). Every 50 ms or so (and
        // after the prompt) the records buffered in the threads are handed
        // to the writer, and only after both are the steps marked done in
        // the header: a reader of a killed trace finds every tensor of every
        // completed step. A registry failure is reported by `finish`, which
        // writes it again; the steps are then not marked.
        let saved = self.save_registry().is_ok();
        self.steps_ended = self.steps_ended.max(step + 1);
        if step == 0 || sink::handover_due() {
            sink::flush_all();
            if saved {
                self.sink.mark_steps_done(step + 1);
            }
        }
    }
}

/// The files of a trace bundle. A run into a directory removes those an
/// earlier run left there before it writes anything, so an old meta.json
/// never sits beside a new trace.bin.
pub const BUNDLE_FILES: [&str; 7] = [
    "trace.bin",
    "registry.json",
    "meta.json",
    "layout.json",
    "registry.json.tmp",
    "meta.json.tmp",
    "layout.json.tmp",
];

fn remove_old_bundle(dir: &Path) -> Result<()> {
    for f in BUNDLE_FILES {
        let p = dir.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the old {}", p.display())),
        }
    }
    Ok(())
}

/// Write `v` as JSON to `path`, whole or not at all (a temporary file renamed
/// over it), so a reader never sees a half-written file.
fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, v)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::flush(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
    drop(w);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_indices_are_claimed_once_and_never_shared() {
        let next = AtomicU32::new(0);
        let stamp = node_stamp(7);
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let ia = node_index(&a, stamp, &next);
        let ib = node_index(&b, stamp, &next);
        assert_ne!(ia, ib, "two nodes of one session share an index");
        assert_eq!(
            node_index(&a, stamp, &next),
            ia,
            "a stamped node keeps its index"
        );
        assert_eq!(a.load(Ordering::Relaxed) & STAMP_MASK, stamp);
        // ggml rebuilding a node zeroes its padding; another session's stamp
        // is not ours either: both get a fresh index.
        a.store(0, Ordering::Relaxed);
        let ia2 = node_index(&a, stamp, &next);
        assert!(ia2 != ia && ia2 != ib);
        b.store(node_stamp(8) | 5 << 40, Ordering::Relaxed);
        let ib2 = node_index(&b, stamp, &next);
        assert!(ib2 != 5 && ib2 != ia2);
        assert_eq!(b.load(Ordering::Relaxed) >> 40, ib2 as u64);
    }

    #[test]
    fn records_built_as_words_equal_records_filled_field_by_field() {
        // A template with every byte set, so that a word built from the
        // wrong bits of it shows; events with extreme and ordinary values.
        let mut template = TraceRecord::EMPTY;
        template.engine = Engine::Ggml as u8;
        template.op = 0xA5;
        template.layer = -1;
        template.tensor_id = 0x1234_5678;
        template.act_id = NO_ID;
        template.flags = flags::REPACKED | 0x8000_0000;
        template.node = 0xDEAD_BEEF_F00D;
        template.set_name(b"blk.7.ffn_down.weight_with_a_long_name");
        let clock = Clock::monotonic(1000);
        for k in 0u64..400 {
            let x = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let ev = ffi::ggml_cpu_trace_event {
                t0_ns: 1000 + (x >> 20),
                t1_ns: if k % 7 == 0 {
                    0
                } else {
                    1000 + (x >> 20) + (x & 0xFFFF_FFFF_FFFF)
                },
                offset: x,
                len: x.rotate_left(7),
                act_bytes: x >> 3,
                row0: x as i64,
                row1: -(k as i64),
                col0: (x >> 11) as i64,
                col1: i64::MIN + k as i64,
                expert: if k % 2 == 0 { -1 } else { x as i32 },
                path: (k % 300) as i32 - 20,
                ith: -(k as i32),
                nth: 70000 + k as i32,
                flags: x as u32,
                ..Default::default()
            };
            let step = Step {
                step: x as u32,
                pos: -(x as i32),
                n_tokens: (x >> 40) as u16,
                phase: (x >> 50) as u8,
            };
            let off = x.rotate_right(13);
            let mut want = template;
            fill(&mut want, &ev, &step, off, &clock);
            want.flags |= flags::VALID;
            let got = fill_words(&template.words(), &ev, &step, off, &clock);
            assert_eq!(TraceRecord::from_words(got), want, "event {k}");
        }
    }

    #[test]
    fn node_indices_wrap_inside_the_padding_word() {
        let next = AtomicU32::new(u32::MAX);
        let stamp = node_stamp(1);
        let w = AtomicU64::new(0);
        let i = node_index(&w, stamp, &next);
        assert_eq!(i as u64, u32::MAX as u64 & NODE_INDEX_MASK);
        assert_eq!(
            w.load(Ordering::Relaxed) & STAMP_MASK,
            stamp,
            "stamp intact"
        );
        assert_eq!(node_index(&w, stamp, &next), i);
    }
}
