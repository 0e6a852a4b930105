//! The coverage census: proof that the trace misses nothing.
//!
//! Two passes over the same greedy generation. The first enumerates, with
//! llama.cpp's graph eval callback and no tracing, every MUL_MAT, MUL_MAT_ID
//! and GET_ROWS node ggml executed at every step, with its output shape, the
//! token ids GET_ROWS looked up, and how many rows MUL_MAT_ID routed to each
//! expert. The second pass is traced. The census then checks, per step, that
//! every enumerated node has records, that each weight matmul's records tile
//! its output (rows x columns) exactly once with no gap and no overlap (per
//! expert for MUL_MAT_ID), and that GET_ROWS on the embedding read exactly the
//! step's token ids. FLASH_ATTN_EXT nodes (flash attention on) are checked
//! too: for K and for V, every query row has records, the KV cells read by
//! the records of one query row never overlap, and every cell is inside the
//! cache view (the cells a row reads depend on its mask, so they need not
//! tile the view). It also tabulates which kernel path each weight took —
//! the data that explains the seed's "missing Q4_K tensors".

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use cktrace_tracer::format::{flags, NO_ID};
use cktrace_tracer::{KernelPath, Meta, Op, Registry, TensorKind, TraceRecord};

use cktrace_parser::tiling::{self, Rect};

use crate::ffi;
use crate::generate::{generate, GenParams, StepHook};
use crate::llama::{Context, ContextParams, Model};
use crate::trace::TraceSession;

/// One node the eval pass saw.
#[derive(Clone, Debug)]
pub struct NodeSeen {
    pub step: u32,
    pub op: Op,
    pub name: String,
    /// Name of the base tensor of src[0] (views resolved).
    pub src0: String,
    /// Output rows (dst ne0) and columns (ne1*ne2*ne3). FLASH_ATTN_EXT: the
    /// KV cells of the K view (ne1) and the query rows (ne1*ne2*ne3 of Q);
    /// `src0` is then the K cache.
    pub rows: u64,
    pub cols: u64,
    /// GET_ROWS: the row ids looked up. MUL_MAT_ID: rows routed per expert.
    pub ids: Vec<i64>,
}

fn base_name(mut t: &ffi::ggml_tensor) -> String {
    while !t.view_src.is_null() {
        // SAFETY: view chains point at live tensors.
        t = unsafe { &*t.view_src };
    }
    crate::llama::tensor_name(t).to_string()
}

struct StepCounter(Arc<Mutex<u32>>);
impl StepHook for StepCounter {
    fn before(&mut self, step: u32, _pos: i32, _tokens: &[i32]) {
        *self.0.lock().unwrap() = step;
    }
}

/// Pass 1: enumerate the nodes with the eval callback.
pub fn enumerate(
    model: &Model,
    cparams: ContextParams,
    params: &GenParams,
) -> Result<(Vec<NodeSeen>, Vec<i32>)> {
    let seen: Arc<Mutex<Vec<NodeSeen>>> = Arc::new(Mutex::new(Vec::new()));
    let step = Arc::new(Mutex::new(0u32));
    let (seen2, step2) = (seen.clone(), step.clone());
    let cb: crate::llama::EvalCallback = Box::new(move |t: &ffi::ggml_tensor, ask: bool| {
        let op = match t.op {
            ffi::GGML_OP_MUL_MAT => Op::MulMat,
            ffi::GGML_OP_MUL_MAT_ID => Op::MulMatId,
            ffi::GGML_OP_GET_ROWS => Op::GetRows,
            ffi::GGML_OP_FLASH_ATTN_EXT => Op::FlashAttnExt,
            _ => return !ask,
        };
        if ask {
            return true;
        }
        // The scheduler shows the callback nodes that the CPU backend then
        // skips (no COMPUTE flag): they were not executed, so not expected.
        if t.flags & ffi::GGML_TENSOR_FLAG_COMPUTE as i32 == 0 {
            return true;
        }
        // SAFETY: ggml passes computed nodes whose srcs are live; ids tensors
        // of GET_ROWS / MUL_MAT_ID are I32 host tensors.
        let src0 = unsafe { &*t.src[0] };
        let mut ids = Vec::new();
        match op {
            Op::GetRows => unsafe {
                let s1 = &*t.src[1];
                if s1.type_ == ffi::GGML_TYPE_I32 {
                    // strided read: the ids may be a view (MoE top-k selection)
                    for i2 in 0..s1.ne[2] {
                        for i1 in 0..s1.ne[1] {
                            for i0 in 0..s1.ne[0] {
                                let off = i2 as usize * s1.nb[2]
                                    + i1 as usize * s1.nb[1]
                                    + i0 as usize * s1.nb[0];
                                ids.push(*((s1.data as *const u8).add(off) as *const i32) as i64);
                            }
                        }
                    }
                }
            },
            // SAFETY: src[2] of MUL_MAT_ID is the live I32 ids tensor
            // [n_used, n_tokens]; we read it through its own strides.
            Op::MulMatId => unsafe {
                let idt = &*t.src[2];
                let n_expert = src0.ne[2] as usize;
                let mut counts = vec![0i64; n_expert];
                for j in 0..idt.ne[1] {
                    for i in 0..idt.ne[0] {
                        let p = (idt.data as *const u8)
                            .add((j as usize) * idt.nb[1] + (i as usize) * idt.nb[0])
                            as *const i32;
                        let e = *p as usize;
                        if e < n_expert {
                            counts[e] += 1;
                        }
                    }
                }
                ids = counts;
            },
            _ => {}
        }
        let (src0, rows, cols) = if op == Op::FlashAttnExt {
            // SAFETY: src[1] of FLASH_ATTN_EXT is the live K view.
            let k = unsafe { &*t.src[1] };
            (
                base_name(k),
                k.ne[1] as u64,
                (src0.ne[1] * src0.ne[2] * src0.ne[3]) as u64,
            )
        } else {
            (
                base_name(src0),
                t.ne[0] as u64,
                (t.ne[1] * t.ne[2] * t.ne[3]) as u64,
            )
        };
        seen2.lock().unwrap().push(NodeSeen {
            step: *step2.lock().unwrap(),
            op,
            name: crate::llama::tensor_name(t).to_string(),
            src0,
            rows,
            cols,
            ids,
        });
        true
    });
    let mut ctx = Context::new(model, cparams, Some(cb))?;
    let out = generate(&mut ctx, params, &mut StepCounter(step), |_| {})?;
    drop(ctx);
    let v = std::mem::take(&mut *seen.lock().unwrap());
    Ok((v, out.tokens))
}

/// What the census found.
#[derive(Debug, Default)]
pub struct CensusReport {
    pub nodes: usize,
    pub records: usize,
    pub failures: Vec<String>,
    /// weight name -> (dtype, buffer type, kernel paths with record counts)
    pub paths: BTreeMap<String, (String, String, BTreeMap<String, usize>)>,
    pub dropped: u64,
}

/// Check a trace bundle against the nodes of the eval pass.
pub fn check(dir: &Path, nodes: &[NodeSeen]) -> Result<CensusReport> {
    let trace = cktrace_parser::Trace::open(dir)?;
    let h = *trace.header();
    let recs: Vec<TraceRecord> = trace.records().collect();
    let reg: &Registry = trace.registry();
    let meta: Meta = trace.meta().cloned().unwrap_or_default();
    let mut rep = CensusReport {
        nodes: nodes.len(),
        records: recs.len(),
        dropped: h.dropped,
        ..Default::default()
    };
    if h.dropped != 0 {
        rep.failures.push(format!("{} records dropped", h.dropped));
    }
    if h.records != h.complete + h.padding {
        rep.failures.push(format!(
            "{} slots reserved but only {} complete (and {} padding)",
            h.records, h.complete, h.padding
        ));
    }
    // Path A vs Path B on every record.
    let mut bad_id = 0usize;
    for r in &recs {
        match reg.get(r.tensor_id) {
            Some(t) if t.name.as_bytes().starts_with(r.name_str().as_bytes()) => {}
            _ => {
                if bad_id == 0 {
                    rep.failures.push(format!(
                        "record name {:?} does not match registry id {}",
                        r.name_str(),
                        r.tensor_id
                    ));
                }
                bad_id += 1;
            }
        }
        if let Some(t) = reg.get(r.tensor_id) {
            if t.kind == TensorKind::Weight {
                let e = rep
                    .paths
                    .entry(t.name.clone())
                    .or_insert_with(|| (t.dtype.clone(), t.buffer_type.clone(), BTreeMap::new()));
                let p = KernelPath::from_u8(r.path)
                    .map(|p| p.as_str().to_string())
                    .unwrap_or(format!("path{}", r.path));
                *e.2.entry(p).or_default() += 1;
            }
        }
    }
    if bad_id > 1 {
        rep.failures.push(format!(
            "{bad_id} records in all fail the registry id / name check"
        ));
    }
    // Group records by (step, node).
    let mut groups: HashMap<(u32, u64), Vec<&TraceRecord>> = HashMap::new();
    for r in &recs {
        if r.flags & flags::OP_LEVEL == 0 {
            groups.entry((r.step, r.node)).or_default().push(r);
        }
    }
    // Key each group by (step, op, base tensor name). One weight can feed
    // several nodes of a step; the eval pass lists them in execution order,
    // so the traced groups of a key are put in the order they started
    // (their first record's time, then node address for a tie): a pairing
    // that does not depend on hash order.
    let mut by_key: BTreeMap<(u32, u8, String), Vec<Vec<&TraceRecord>>> = BTreeMap::new();
    for ((step, _), g) in groups {
        // A FLASH_ATTN_EXT node reads K and V; it is keyed by K, the tensor
        // of the records that carry the activation (Q).
        let first = if g[0].op == Op::FlashAttnExt as u8 {
            g.iter().find(|r| r.act_id != NO_ID).unwrap_or(&g[0])
        } else {
            &g[0]
        };
        let name = reg
            .get(first.tensor_id)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        by_key.entry((step, g[0].op, name)).or_default().push(g);
    }
    for gs in by_key.values_mut() {
        gs.sort_by_key(|g| (g.iter().map(|r| r.t_ns).min(), g[0].node));
    }
    let mut expected: BTreeMap<(u32, u8, String), Vec<&NodeSeen>> = BTreeMap::new();
    for n in nodes {
        expected
            .entry((n.step, n.op as u8, n.src0.clone()))
            .or_default()
            .push(n);
    }
    for (key, ns) in &expected {
        let Some(gs) = by_key.get(key) else {
            rep.failures.push(format!(
                "step {} {} on {} ({}): no records",
                key.0,
                Op::from_u8(key.1).unwrap(),
                key.2,
                ns[0].name
            ));
            continue;
        };
        if gs.len() != ns.len() {
            rep.failures.push(format!(
                "step {} {} on {}: {} nodes executed, {} traced",
                key.0,
                Op::from_u8(key.1).unwrap(),
                key.2,
                ns.len(),
                gs.len()
            ));
            continue;
        }
        for (n, g) in ns.iter().zip(gs) {
            match n.op {
                Op::MulMat => {
                    let mut rects: Vec<Rect> = g.iter().map(|r| rect(r)).collect();
                    if let Err(d) = tiling::check(&mut rects, n.rows, n.cols) {
                        rep.failures
                            .push(format!("step {} {} ({}): {}", n.step, n.name, n.src0, d));
                    }
                }
                Op::MulMatId => {
                    for (e, &cnt) in n.ids.iter().enumerate() {
                        let mut rects: Vec<Rect> = g
                            .iter()
                            .filter(|r| r.expert == e as i32)
                            .map(|r| rect(r))
                            .collect();
                        if cnt == 0 {
                            if !rects.is_empty() {
                                rep.failures.push(format!(
                                    "step {} {} expert {e}: records but no rows routed",
                                    n.step, n.name
                                ));
                            }
                            continue;
                        }
                        // rows of one expert = src0 ne1 = dst ne0
                        if let Err(d) = tiling::check(&mut rects, n.rows, cnt as u64) {
                            rep.failures
                                .push(format!("step {} {} expert {e}: {}", n.step, n.name, d));
                        }
                    }
                }
                Op::GetRows => {
                    let mut got: Vec<i64> = g.iter().map(|r| r.row0 as i64).collect();
                    let mut want = n.ids.clone();
                    got.sort_unstable();
                    want.sort_unstable();
                    if got != want {
                        rep.failures.push(format!(
                            "step {} {} ({}): rows read {:?} != ids {:?}",
                            n.step,
                            n.name,
                            n.src0,
                            trunc(&got),
                            trunc(&want)
                        ));
                    }
                    let is_embd = reg
                        .tensors
                        .iter()
                        .any(|t| t.name == n.src0 && t.kind == TensorKind::Weight);
                    if is_embd {
                        let toks: Vec<i64> = meta
                            .step_tokens
                            .get(n.step as usize)
                            .map(|v| v.iter().map(|&x| x as i64).collect())
                            .unwrap_or_default();
                        let mut toks_sorted = toks.clone();
                        toks_sorted.sort_unstable();
                        if toks_sorted != got {
                            rep.failures.push(format!(
                                "step {} {}: rows read {:?} are not the step's tokens {:?}",
                                n.step,
                                n.src0,
                                trunc(&got),
                                trunc(&toks)
                            ));
                        }
                    }
                }
                Op::FlashAttnExt => {
                    for (what, kv) in [("K", true), ("V", false)] {
                        let rs: Vec<&TraceRecord> = g
                            .iter()
                            .copied()
                            .filter(|r| (r.act_id != NO_ID) == kv)
                            .collect();
                        if let Err(d) = check_flash_attn(&rs, n.rows, n.cols) {
                            rep.failures.push(format!(
                                "step {} {} ({what} of {}): {d}",
                                n.step, n.name, n.src0
                            ));
                        }
                    }
                }
                Op::Other => {}
            }
        }
    }
    for (key, gs) in &by_key {
        if !expected.contains_key(key) {
            rep.failures.push(format!(
                "step {} {} on {}: {} traced nodes that the eval pass did not see",
                key.0,
                Op::from_u8(key.1).map(|o| o.as_str()).unwrap_or("?"),
                key.2,
                gs.len()
            ));
        }
    }
    Ok(rep)
}

/// The records of one FLASH_ATTN_EXT node for one of K / V: every query row
/// in `[0, q_rows)` has at least one record, the cells of the records of a
/// query row are disjoint, and all lie in `[0, cells)`.
fn check_flash_attn(rs: &[&TraceRecord], cells: u64, q_rows: u64) -> Result<(), String> {
    let mut per_row: Vec<Vec<(u32, u32)>> = vec![Vec::new(); q_rows as usize];
    for r in rs {
        if r.row0 > r.row1 || r.row1 as u64 > cells {
            return Err(format!(
                "cells {}..{} outside the {cells} of the view",
                r.row0, r.row1
            ));
        }
        if r.col0 >= r.col1 || r.col1 as u64 > q_rows {
            return Err(format!(
                "query rows {}..{} outside the {q_rows} of the node",
                r.col0, r.col1
            ));
        }
        for c in r.col0..r.col1 {
            per_row[c as usize].push((r.row0, r.row1));
        }
    }
    for (q, cells) in per_row.iter_mut().enumerate() {
        if cells.is_empty() {
            return Err(format!("query row {q} has no records"));
        }
        cells.retain(|c| c.0 < c.1);
        cells.sort_unstable();
        for w in cells.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!(
                    "query row {q} reads cells {}..{} twice",
                    w[1].0,
                    w[0].1.min(w[1].1)
                ));
            }
        }
    }
    Ok(())
}

fn rect(r: &TraceRecord) -> Rect {
    Rect::new(r.row0, r.row1, r.col0, r.col1, 0)
}

fn trunc(v: &[i64]) -> Vec<i64> {
    v.iter().take(12).copied().collect()
}

/// Run both passes and check. The traced pass writes its bundle to `dir`.
pub fn run(
    model: &Model,
    cparams: ContextParams,
    params: &GenParams,
    dir: &Path,
    meta: Meta,
) -> Result<CensusReport> {
    let (nodes, tokens_a) = enumerate(model, cparams, params)?;
    let mut session = TraceSession::start(
        dir,
        model,
        cparams.threads as u32,
        crate::DEFAULT_TRACE_CAPACITY,
        false,
    )?;
    let mut ctx = Context::new(model, cparams, None)?;
    let out = generate(&mut ctx, params, &mut session, |_| {})?;
    drop(ctx);
    let mut meta = meta;
    meta.prompt_tokens = out.prompt_tokens.clone();
    meta.step_tokens = out.step_tokens.clone();
    meta.generated_tokens = out.tokens.clone();
    session.finish(meta)?;
    let mut rep = check(dir, &nodes)?;
    if tokens_a != out.tokens {
        rep.failures.push(format!(
            "the eval pass generated {:?}, the traced pass {:?}",
            tokens_a, out.tokens
        ));
    }
    Ok(rep)
}
