//! Totals over a trace: what was read, by whom, when, and how much of the
//! model each decode step touched.
//!
//! [`Stats::compute`] is a single streaming pass (split over up to two
//! threads) into fixed-size accumulators: per-op, per-path, per-layer and
//! per-thread tables indexed by the raw code, and one small entry per decode
//! step with a bitset of the weight tensors it touched. Memory stays flat in
//! the number of records.
//!
//! Bytes are classified by the registry kind of the record's `tensor_id`:
//! weights, KV cache, activations; a `get_rows` read of a weight is an
//! embedding-row read; ids that do not resolve are "unregistered". The
//! activation operand of a record (`act_bytes`) counts as activations. So
//! the split of a step adds up to its `len` plus `act_bytes` totals.

use std::collections::HashMap;
use std::io::{self, Write};

use cktrace_tracer::{Op, Phase, TensorKind, TraceRecord};
use serde::Serialize;

use crate::filter::{Filter, Matcher};
use crate::names;
use crate::reader::Trace;

/// Records, bytes and time of a group of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub records: u64,
    /// Sum of `len`: bytes of the traced tensor read.
    pub bytes: u64,
    /// Sum of `act_bytes`: bytes of activation operands read.
    pub act_bytes: u64,
    /// Sum of `dur_ns`: thread time spent (threads overlap, so this can
    /// exceed the wall time).
    pub dur_ns: u64,
}

impl Tally {
    #[inline]
    fn add(&mut self, r: &TraceRecord) {
        self.records += 1;
        self.bytes = self.bytes.saturating_add(r.len);
        self.act_bytes = self.act_bytes.saturating_add(r.act_bytes);
        self.dur_ns = self.dur_ns.saturating_add(r.dur_ns as u64);
    }

    fn merge(&mut self, o: &Tally) {
        self.records += o.records;
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.act_bytes = self.act_bytes.saturating_add(o.act_bytes);
        self.dur_ns = self.dur_ns.saturating_add(o.dur_ns);
    }
}

/// Bytes read, split by what they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByteSplit {
    /// Model weights (except embedding rows).
    pub weights: u64,
    pub kv_cache: u64,
    /// Activation tensors read as the traced tensor, plus every record's
    /// activation operand (`act_bytes`).
    pub activations: u64,
    /// Rows of a weight read by `get_rows` (token embeddings).
    pub embedding_rows: u64,
    /// Reads of tensors whose id does not resolve in the registry.
    pub unregistered: u64,
}

impl ByteSplit {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.activations)
            .saturating_add(self.embedding_rows)
            .saturating_add(self.unregistered)
    }

    pub(crate) fn merge(&mut self, o: &ByteSplit) {
        self.weights = self.weights.saturating_add(o.weights);
        self.kv_cache = self.kv_cache.saturating_add(o.kv_cache);
        self.activations = self.activations.saturating_add(o.activations);
        self.embedding_rows = self.embedding_rows.saturating_add(o.embedding_rows);
        self.unregistered = self.unregistered.saturating_add(o.unregistered);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpStats {
    pub op: String,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathStats {
    pub path: String,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerStats {
    /// -1 for tensors outside the layers (token_embd, output).
    pub layer: i16,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadStats {
    pub thread: u16,
    #[serde(flatten)]
    pub tally: Tally,
}

/// One decode step (0 = the prompt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepStats {
    pub step: u32,
    /// The phase(s) of its records, `+`-joined if several.
    pub phase: String,
    /// Largest batch size seen in the step.
    pub n_tokens: u16,
    /// Smallest batch position seen in the step.
    pub pos: i32,
    #[serde(flatten)]
    pub tally: Tally,
    /// Last end minus first start of the step's records.
    pub wall_ns: u64,
    pub split: ByteSplit,
    /// Distinct registry weight tensors read in this step...
    pub weight_tensors_touched: u64,
    /// ...out of this many weight tensors in the registry.
    pub weight_tensors: u64,
}

/// The result of [`Stats::compute`]; render with [`Stats::write_text`] or
/// serialize (serde) for JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub dir: String,
    /// The filter applied, if any.
    pub filter: Option<String>,
    /// Readable slots in the file.
    pub slots: u64,
    /// Slots reserved but never completed (skipped).
    pub incomplete_slots: u64,
    /// Records the writer dropped (from the header).
    pub dropped: u64,
    /// Complete records that passed the filter.
    pub records: u64,
    /// First start and last end over those records (ns since trace start).
    pub t_start_ns: u64,
    pub t_end_ns: u64,
    pub duration_ns: u64,
    pub total: Tally,
    pub split: ByteSplit,
    pub weight_tensors: u64,
    /// Distinct weight tensors read anywhere in the (filtered) trace.
    pub weight_tensors_touched: u64,
    pub by_op: Vec<OpStats>,
    pub by_path: Vec<PathStats>,
    pub by_layer: Vec<LayerStats>,
    pub by_thread: Vec<ThreadStats>,
    pub steps: Vec<StepStats>,
}

const KIND_NONE: u8 = 0;
const KIND_WEIGHT: u8 = 1;
const KIND_KV: u8 = 2;
const KIND_ACT: u8 = 3;

/// Registry facts needed per record, flattened to bytes.
pub(crate) struct Kinds {
    /// Per id: one of the KIND_* codes.
    kind: Vec<u8>,
    /// Per id: its index among the weight tensors (for the touched bitsets).
    weight_index: Vec<u32>,
    n_weights: usize,
}

impl Kinds {
    pub(crate) fn new(trace: &Trace) -> Kinds {
        let tensors = &trace.registry().tensors;
        let mut kind = Vec::with_capacity(tensors.len());
        let mut weight_index = Vec::with_capacity(tensors.len());
        let mut n_weights = 0usize;
        for (i, t) in tensors.iter().enumerate() {
            if t.id as usize != i {
                kind.push(KIND_NONE);
                weight_index.push(u32::MAX);
                continue;
            }
            kind.push(match t.kind {
                TensorKind::Weight => KIND_WEIGHT,
                TensorKind::KvCache => KIND_KV,
                TensorKind::Activation => KIND_ACT,
            });
            if t.kind == TensorKind::Weight {
                weight_index.push(n_weights as u32);
                n_weights += 1;
            } else {
                weight_index.push(u32::MAX);
            }
        }
        Kinds {
            kind,
            weight_index,
            n_weights,
        }
    }

    fn words(&self) -> usize {
        self.n_weights.div_ceil(64)
    }

    #[inline]
    fn kind_of(&self, id: u32) -> u8 {
        self.kind.get(id as usize).copied().unwrap_or(KIND_NONE)
    }

    /// The bytes of one record, classified (see the module doc).
    #[inline]
    pub(crate) fn split(&self, r: &TraceRecord) -> ByteSplit {
        let mut split = ByteSplit {
            activations: r.act_bytes,
            ..Default::default()
        };
        match self.kind_of(r.tensor_id) {
            KIND_WEIGHT if r.op == Op::GetRows as u8 => split.embedding_rows = r.len,
            KIND_WEIGHT => split.weights = r.len,
            KIND_KV => split.kv_cache = r.len,
            KIND_ACT => split.activations = split.activations.saturating_add(r.len),
            _ => split.unregistered = r.len,
        }
        split
    }
}

struct StepAcc {
    step: u32,
    tally: Tally,
    split: ByteSplit,
    /// Bit per phase code 0..=6; bit 7 for any other code.
    phases: u8,
    n_tokens: u16,
    pos: i32,
    t_min: u64,
    t_max: u64,
    /// Weight tensors touched, by weight index; allocated on first use.
    touched: Vec<u64>,
}

impl StepAcc {
    fn new(step: u32) -> StepAcc {
        StepAcc {
            step,
            tally: Tally::default(),
            split: ByteSplit::default(),
            phases: 0,
            n_tokens: 0,
            pos: i32::MAX,
            t_min: u64::MAX,
            t_max: 0,
            touched: Vec::new(),
        }
    }

    fn merge(&mut self, o: &StepAcc) {
        self.tally.merge(&o.tally);
        self.split.merge(&o.split);
        self.phases |= o.phases;
        self.n_tokens = self.n_tokens.max(o.n_tokens);
        self.pos = self.pos.min(o.pos);
        self.t_min = self.t_min.min(o.t_min);
        self.t_max = self.t_max.max(o.t_max);
        or_into(&mut self.touched, &o.touched);
    }
}

fn or_into(dst: &mut Vec<u64>, src: &[u64]) {
    if dst.len() < src.len() {
        dst.resize(src.len(), 0);
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= s;
    }
}

/// One thread's accumulators.
struct Acc {
    valid: u64,
    seen: u64,
    total: Tally,
    split: ByteSplit,
    t_min: u64,
    t_max: u64,
    op: Vec<Tally>,
    path: Vec<Tally>,
    /// Indexed by `layer + 1` (wrapping in u16, so -1 is 0 and the rare
    /// other negative layers land at the top); grown on demand.
    layer: Vec<Tally>,
    /// Indexed by thread; grown on demand.
    thread: Vec<Tally>,
    steps: Vec<StepAcc>,
    step_index: HashMap<u32, usize>,
    last_step: Option<(u32, usize)>,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            valid: 0,
            seen: 0,
            total: Tally::default(),
            split: ByteSplit::default(),
            t_min: u64::MAX,
            t_max: 0,
            op: vec![Tally::default(); 256],
            path: vec![Tally::default(); 256],
            layer: Vec::new(),
            thread: Vec::new(),
            steps: Vec::new(),
            step_index: HashMap::new(),
            last_step: None,
        }
    }

    #[inline]
    fn step_slot(&mut self, step: u32) -> usize {
        if let Some((s, i)) = self.last_step {
            if s == step {
                return i;
            }
        }
        let i = match self.step_index.get(&step) {
            Some(&i) => i,
            None => {
                self.steps.push(StepAcc::new(step));
                self.step_index.insert(step, self.steps.len() - 1);
                self.steps.len() - 1
            }
        };
        self.last_step = Some((step, i));
        i
    }

    #[inline]
    fn add(&mut self, r: &TraceRecord, kinds: &Kinds) {
        let end = r.t_ns.saturating_add(r.dur_ns as u64);
        self.total.add(r);
        self.t_min = self.t_min.min(r.t_ns);
        self.t_max = self.t_max.max(end);
        self.op[r.op as usize].add(r);
        self.path[r.path as usize].add(r);
        grow_at(&mut self.layer, (r.layer as u16).wrapping_add(1) as usize).add(r);
        grow_at(&mut self.thread, r.thread as usize).add(r);

        let kind = kinds.kind_of(r.tensor_id);
        let split = kinds.split(r);
        self.split.merge(&split);

        let si = self.step_slot(r.step);
        let s = &mut self.steps[si];
        s.tally.add(r);
        s.split.merge(&split);
        s.phases |= 1 << r.phase.min(7);
        s.n_tokens = s.n_tokens.max(r.n_tokens);
        s.pos = s.pos.min(r.pos);
        s.t_min = s.t_min.min(r.t_ns);
        s.t_max = s.t_max.max(end);
        if kind == KIND_WEIGHT {
            let w = kinds.weight_index[r.tensor_id as usize] as usize;
            if s.touched.is_empty() {
                s.touched = vec![0; kinds.words()];
            }
            s.touched[w / 64] |= 1 << (w % 64);
        }
    }

    fn merge(&mut self, o: Acc) {
        self.valid += o.valid;
        self.seen += o.seen;
        self.total.merge(&o.total);
        self.split.merge(&o.split);
        self.t_min = self.t_min.min(o.t_min);
        self.t_max = self.t_max.max(o.t_max);
        for (a, b) in self.op.iter_mut().zip(&o.op) {
            a.merge(b);
        }
        for (a, b) in self.path.iter_mut().zip(&o.path) {
            a.merge(b);
        }
        for (i, b) in o.layer.iter().enumerate() {
            grow_at(&mut self.layer, i).merge(b);
        }
        for (i, b) in o.thread.iter().enumerate() {
            grow_at(&mut self.thread, i).merge(b);
        }
        for s in o.steps {
            let i = self.step_slot(s.step);
            self.steps[i].merge(&s);
        }
    }
}

#[inline]
fn grow_at(v: &mut Vec<Tally>, i: usize) -> &mut Tally {
    if i >= v.len() {
        v.resize(i + 1, Tally::default());
    }
    &mut v[i]
}

fn scan(trace: &Trace, m: &Matcher<'_>, kinds: &Kinds, range: std::ops::Range<usize>) -> Acc {
    // Blocks of 8 MiB, each released after it is read: the resident set
    // stays flat however large the trace.
    const BLOCK: usize = 1 << 16;
    let mut acc = Acc::new();
    acc.seen = range.len() as u64;
    let mut start = range.start;
    while start < range.end {
        let end = (start + BLOCK).min(range.end);
        for r in trace.records_in(start..end) {
            acc.valid += 1;
            if m.matches(&r) {
                acc.add(&r, kinds);
            }
        }
        trace.release(start..end);
        start = end;
    }
    acc
}

impl Stats {
    /// Statistics of the complete records of `trace` that pass `filter`,
    /// using up to two threads on large traces.
    pub fn compute(trace: &Trace, filter: &Filter) -> Stats {
        let threads = if trace.slot_count() >= 1 << 20 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(2)
        } else {
            1
        };
        Stats::compute_with_threads(trace, filter, threads)
    }

    /// As [`Stats::compute`] with an explicit number of scan threads (>= 1).
    pub fn compute_with_threads(trace: &Trace, filter: &Filter, threads: usize) -> Stats {
        let kinds = Kinds::new(trace);
        let matcher = filter.matcher(trace.registry());
        let n = trace.slot_count();
        let threads = threads.clamp(1, 64).min(n.max(1));
        let acc = if threads == 1 {
            scan(trace, &matcher, &kinds, 0..n)
        } else {
            let per = n.div_ceil(threads);
            let parts: Vec<Acc> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (m, k) = (&matcher, &kinds);
                        let range = (t * per).min(n)..((t + 1) * per).min(n);
                        sc.spawn(move || scan(trace, m, k, range))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
            let mut it = parts.into_iter();
            let mut acc = it.next().unwrap_or_else(Acc::new);
            for p in it {
                acc.merge(p);
            }
            acc
        };
        Stats::finish(trace, filter, &kinds, acc)
    }

    fn finish(trace: &Trace, filter: &Filter, kinds: &Kinds, mut acc: Acc) -> Stats {
        let records = acc.total.records;
        let (t_start_ns, t_end_ns) = if records == 0 {
            (0, 0)
        } else {
            (acc.t_min, acc.t_max)
        };
        let by_op = acc
            .op
            .iter()
            .enumerate()
            .filter(|(_, t)| t.records > 0)
            .map(|(c, t)| OpStats {
                op: names::op(c as u8).into_owned(),
                tally: *t,
            })
            .collect();
        let by_path = acc
            .path
            .iter()
            .enumerate()
            .filter(|(_, t)| t.records > 0)
            .map(|(c, t)| PathStats {
                path: names::path(c as u8).into_owned(),
                tally: *t,
            })
            .collect();
        let mut by_layer: Vec<LayerStats> = acc
            .layer
            .iter()
            .enumerate()
            .filter(|(_, t)| t.records > 0)
            .map(|(i, t)| LayerStats {
                layer: (i as u16).wrapping_sub(1) as i16,
                tally: *t,
            })
            .collect();
        by_layer.sort_by_key(|l| l.layer);
        let by_thread = acc
            .thread
            .iter()
            .enumerate()
            .filter(|(_, t)| t.records > 0)
            .map(|(i, t)| ThreadStats {
                thread: i as u16,
                tally: *t,
            })
            .collect();
        acc.steps.sort_by_key(|s| s.step);
        let mut all_touched = Vec::new();
        let steps = acc
            .steps
            .iter()
            .map(|s| {
                or_into(&mut all_touched, &s.touched);
                StepStats {
                    step: s.step,
                    phase: phase_names(s.phases),
                    n_tokens: s.n_tokens,
                    pos: if s.pos == i32::MAX { 0 } else { s.pos },
                    tally: s.tally,
                    wall_ns: s.t_max.saturating_sub(s.t_min),
                    split: s.split,
                    weight_tensors_touched: popcount(&s.touched),
                    weight_tensors: kinds.n_weights as u64,
                }
            })
            .collect();
        Stats {
            dir: trace.dir().display().to_string(),
            filter: filter.describe(),
            slots: acc.seen,
            // Padding slots (direct writes fill the rest of a page) are
            // neither records nor missing.
            incomplete_slots: (acc.seen - acc.valid).saturating_sub(trace.header().padding),
            dropped: trace.header().dropped,
            records,
            t_start_ns,
            t_end_ns,
            duration_ns: t_end_ns.saturating_sub(t_start_ns),
            total: acc.total,
            split: acc.split,
            weight_tensors: kinds.n_weights as u64,
            weight_tensors_touched: popcount(&all_touched),
            by_op,
            by_path,
            by_layer,
            by_thread,
            steps,
        }
    }

    /// The human-readable report.
    pub fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "trace {}", self.dir)?;
        if let Some(f) = &self.filter {
            writeln!(w, "filter: {f}")?;
        }
        writeln!(
            w,
            "records: {} ({} slots, {} incomplete, {} dropped by the writer)",
            self.records, self.slots, self.incomplete_slots, self.dropped
        )?;
        writeln!(
            w,
            "time: {} ms to {} ms ({} ms); thread time {} ms",
            names::ms(self.t_start_ns),
            names::ms(self.t_end_ns),
            names::ms(self.duration_ns),
            names::ms(self.total.dur_ns)
        )?;
        let s = &self.split;
        let total = s.total();
        writeln!(
            w,
            "bytes read: {} ({} tensor reads + {} activation operands)",
            names::bytes(total),
            names::bytes(self.total.bytes),
            names::bytes(self.total.act_bytes)
        )?;
        for (label, v) in [
            ("weights", s.weights),
            ("kv_cache", s.kv_cache),
            ("activations", s.activations),
            ("embedding_rows", s.embedding_rows),
            ("unregistered", s.unregistered),
        ] {
            writeln!(
                w,
                "  {label:<15} {:>12} {:>6}",
                names::bytes(v),
                pct(v, total)
            )?;
        }
        writeln!(
            w,
            "weight tensors touched: {} of {}",
            self.weight_tensors_touched, self.weight_tensors
        )?;

        let header = |w: &mut dyn Write, key: &str| -> io::Result<()> {
            writeln!(w)?;
            writeln!(
                w,
                "{key:<18} {:>10} {:>12} {:>6} {:>12} {:>12}",
                "records", "bytes", "share", "act_bytes", "time_ms"
            )
        };
        let row = |w: &mut dyn Write, key: &str, t: &Tally| -> io::Result<()> {
            writeln!(
                w,
                "{key:<18} {:>10} {:>12} {:>6} {:>12} {:>12}",
                t.records,
                names::bytes(t.bytes),
                pct(t.bytes, self.total.bytes),
                names::bytes(t.act_bytes),
                names::ms(t.dur_ns)
            )
        };
        header(w, "op")?;
        for o in &self.by_op {
            row(w, &o.op, &o.tally)?;
        }
        header(w, "kernel path")?;
        for p in &self.by_path {
            row(w, &p.path, &p.tally)?;
        }
        header(w, "thread")?;
        for t in &self.by_thread {
            row(w, &t.thread.to_string(), &t.tally)?;
        }
        header(w, "layer")?;
        for l in &self.by_layer {
            let key = if l.layer < 0 {
                format!("{} (none)", l.layer)
            } else {
                l.layer.to_string()
            };
            row(w, &key, &l.tally)?;
        }

        writeln!(w)?;
        writeln!(
            w,
            "{:>5} {:<8} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>10}",
            "step",
            "phase",
            "tokens",
            "records",
            "weights",
            "kv_cache",
            "activations",
            "embedding",
            "unregist.",
            "wall_ms",
            "coverage",
            ""
        )?;
        for st in &self.steps {
            writeln!(
                w,
                "{:>5} {:<8} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>10}",
                st.step,
                st.phase,
                st.n_tokens,
                st.tally.records,
                names::bytes(st.split.weights),
                names::bytes(st.split.kv_cache),
                names::bytes(st.split.activations),
                names::bytes(st.split.embedding_rows),
                names::bytes(st.split.unregistered),
                names::ms(st.wall_ns),
                format!("{}/{}", st.weight_tensors_touched, st.weight_tensors),
                pct(st.weight_tensors_touched, st.weight_tensors),
            )?;
        }
        Ok(())
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn popcount(bits: &[u64]) -> u64 {
    bits.iter().map(|w| w.count_ones() as u64).sum()
}

fn phase_names(mask: u8) -> String {
    let mut v = Vec::new();
    for p in Phase::ALL {
        if mask & (1 << (*p as u8).min(7)) != 0 {
            v.push(p.as_str().to_string());
        }
    }
    for bit in 0..8u8 {
        if mask & (1 << bit) != 0 && Phase::from_u8(bit).is_none() {
            v.push(if bit == 7 {
                "unknown".to_string()
            } else {
                format!("unknown({bit})")
            });
        }
    }
    v.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::IntRange;
    use crate::synth::SynthSpec;
    use crate::testutil::Bundle;
    use cktrace_tracer::format::flags;
    use std::collections::{BTreeMap, BTreeSet};

    /// The straightforward recomputation the streaming pass must agree with.
    fn expect(b: &Bundle, keep: impl Fn(&TraceRecord) -> bool) -> Stats {
        let reg = &b.reg;
        let recs: Vec<&TraceRecord> = b
            .recs
            .iter()
            .filter(|r| r.flags & flags::VALID != 0 && keep(r))
            .collect();
        let tally = |rs: &[&TraceRecord]| Tally {
            records: rs.len() as u64,
            bytes: rs.iter().map(|r| r.len).sum(),
            act_bytes: rs.iter().map(|r| r.act_bytes).sum(),
            dur_ns: rs.iter().map(|r| r.dur_ns as u64).sum(),
        };
        let split = |rs: &[&TraceRecord]| {
            let mut s = ByteSplit::default();
            for r in rs {
                s.activations += r.act_bytes;
                match reg.get(r.tensor_id).map(|t| t.kind) {
                    Some(TensorKind::Weight) if r.op == Op::GetRows as u8 => {
                        s.embedding_rows += r.len
                    }
                    Some(TensorKind::Weight) => s.weights += r.len,
                    Some(TensorKind::KvCache) => s.kv_cache += r.len,
                    Some(TensorKind::Activation) => s.activations += r.len,
                    None => s.unregistered += r.len,
                }
            }
            s
        };
        fn group<'a, K: Ord>(
            rs: &[&'a TraceRecord],
            key: impl Fn(&TraceRecord) -> K,
        ) -> BTreeMap<K, Vec<&'a TraceRecord>> {
            let mut m: BTreeMap<K, Vec<&'a TraceRecord>> = BTreeMap::new();
            for r in rs {
                m.entry(key(r)).or_default().push(*r);
            }
            m
        }
        let touched = |rs: &[&TraceRecord]| {
            rs.iter()
                .filter(|r| {
                    reg.get(r.tensor_id)
                        .is_some_and(|t| t.kind == TensorKind::Weight)
                })
                .map(|r| r.tensor_id)
                .collect::<BTreeSet<_>>()
                .len() as u64
        };
        let n_weights = reg
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Weight)
            .count() as u64;
        let t0 = recs.iter().map(|r| r.t_ns).min().unwrap_or(0);
        let t1 = recs
            .iter()
            .map(|r| r.t_ns + r.dur_ns as u64)
            .max()
            .unwrap_or(0);
        Stats {
            dir: b.path().display().to_string(),
            filter: None,
            slots: b.recs.len() as u64,
            incomplete_slots: b
                .recs
                .iter()
                .filter(|r| r.flags & flags::VALID == 0)
                .count() as u64,
            dropped: 0,
            records: recs.len() as u64,
            t_start_ns: t0,
            t_end_ns: t1,
            duration_ns: t1 - t0,
            total: tally(&recs),
            split: split(&recs),
            weight_tensors: n_weights,
            weight_tensors_touched: touched(&recs),
            by_op: group(&recs, |r| r.op)
                .iter()
                .map(|(k, v)| OpStats {
                    op: Op::from_u8(*k).unwrap().to_string(),
                    tally: tally(v),
                })
                .collect(),
            by_path: group(&recs, |r| r.path)
                .iter()
                .map(|(k, v)| PathStats {
                    path: names::path(*k).into_owned(),
                    tally: tally(v),
                })
                .collect(),
            by_layer: group(&recs, |r| r.layer)
                .iter()
                .map(|(k, v)| LayerStats {
                    layer: *k,
                    tally: tally(v),
                })
                .collect(),
            by_thread: group(&recs, |r| r.thread)
                .iter()
                .map(|(k, v)| ThreadStats {
                    thread: *k,
                    tally: tally(v),
                })
                .collect(),
            steps: group(&recs, |r| r.step)
                .iter()
                .map(|(k, v)| StepStats {
                    step: *k,
                    phase: if *k == 0 { "prefill" } else { "decode" }.to_string(),
                    n_tokens: v.iter().map(|r| r.n_tokens).max().unwrap(),
                    pos: v.iter().map(|r| r.pos).min().unwrap(),
                    tally: tally(v),
                    wall_ns: v.iter().map(|r| r.t_ns + r.dur_ns as u64).max().unwrap()
                        - v.iter().map(|r| r.t_ns).min().unwrap(),
                    split: split(v),
                    weight_tensors_touched: touched(v),
                    weight_tensors: n_weights,
                })
                .collect(),
        }
    }

    #[test]
    fn totals_match_a_recomputation() {
        for spec in [SynthSpec::small(), SynthSpec::small_moe()] {
            let b = Bundle::new(spec);
            let t = Trace::open(b.path()).unwrap();
            let s = Stats::compute(&t, &Filter::default());
            assert_eq!(s, expect(&b, |_| true));
            // The split adds up to all bytes read.
            assert_eq!(s.split.total(), s.total.bytes + s.total.act_bytes);
            assert!(s.split.weights > 0 && s.split.kv_cache > 0 && s.split.embedding_rows > 0);
            // Two scan threads give the same answer as one.
            assert_eq!(Stats::compute_with_threads(&t, &Filter::default(), 2), s);
            assert_eq!(Stats::compute_with_threads(&t, &Filter::default(), 3), s);
        }
    }

    #[test]
    fn coverage_per_step() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        let s = Stats::compute(&t, &Filter::default());
        // Dense model: every step reads every weight except the embedding
        // table it reads rows of... which is a weight too, so all of them.
        for st in &s.steps {
            assert_eq!(st.weight_tensors, 2 + 7 * 2);
            assert_eq!(
                st.weight_tensors_touched, st.weight_tensors,
                "step {}",
                st.step
            );
        }
        let f = Filter {
            layer: vec![IntRange::one(0)],
            ..Default::default()
        };
        let s = Stats::compute(&t, &f);
        assert!(s.steps.iter().all(|st| st.weight_tensors_touched == 7));
    }

    #[test]
    fn filtered_totals_and_incomplete_slots() {
        let mut b = Bundle::small();
        b.recs[10].flags &= !flags::VALID;
        b.write();
        let t = Trace::open(b.path()).unwrap();
        let f = Filter {
            op: vec![Op::MulMat],
            step: vec![IntRange::one(1)],
            ..Default::default()
        };
        let mut want = expect(&b, |r| r.op == Op::MulMat as u8 && r.step == 1);
        want.filter = f.describe();
        assert_eq!(Stats::compute(&t, &f), want);
        assert_eq!(want.incomplete_slots, 1);
    }

    #[test]
    fn renders_text_and_json() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        let s = Stats::compute(&t, &Filter::default());
        let mut out = Vec::new();
        s.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "records: ",
            "weights",
            "kv_cache",
            "embedding_rows",
            "mul_mat",
            "repack_gemv",
            "coverage",
            "16/16",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["records"], s.records);
        assert_eq!(v["by_op"][0]["op"], "mul_mat");
        assert!(v["steps"][0]["split"]["weights"].as_u64().unwrap() > 0);
    }

    #[test]
    fn empty_trace() {
        let mut b = Bundle::small();
        b.recs.clear();
        b.write();
        let t = Trace::open(b.path()).unwrap();
        let s = Stats::compute(&t, &Filter::default());
        assert_eq!(s.records, 0);
        assert_eq!(s.duration_ns, 0);
        assert!(s.steps.is_empty());
        s.write_text(&mut Vec::new()).unwrap();
    }
}
