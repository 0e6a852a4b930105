//! `file-order`: every weight read mapped to absolute GGUF file offsets and
//! to 4 KiB pages, and how far the order of access is from the order of the
//! file.
//!
//! Mapping: a read of a tensor held in the mapped file (or a copy of it) is
//! `gguf_offset + offset .. + len`; a read of a repacked tensor is mapped
//! through its rows, `gguf_offset + row0 * row_bytes .. gguf_offset + row1 *
//! row_bytes` (plus the expert's plane for `mul_mat_id`), since its `offset`
//! is in the repacked buffer.
//!
//! Order: each thread's reads in trace order (a thread's records are in
//! time order; threads run concurrently) form a sequence of pages; a
//! transition from one page to the next is *sequential* when the next page
//! is the same or the one after. Within one read every transition is
//! sequential; between reads it depends on where the next read starts.
//! Runs are maximal stretches of sequential transitions, in pages.
//!
//! First-touch layout: the same figures if the file's tensors were laid out
//! in the order the trace first touches them (each tensor keeping its
//! offset within a page, so transitions inside a tensor are unchanged and
//! only those between tensors are evaluated again).
//!
//! The check: the bytes mapped to file offsets equal the weight bytes read,
//! counted in the file's layout (every weight read maps; a repacked read is
//! its rows' GGUF bytes, and its `len` must be those rows as they lie in its
//! buffer, which AMX packs larger), every mapped read lies inside its
//! tensor's extent in the file, and the registry's extents do not overlap
//! each other or run past the end of the model file.

use std::any::Any;
use std::collections::HashMap;

use cktrace_tracer::{Phase, TensorKind, TraceRecord};
use serde::Serialize;
use serde_json::json;

use super::plot::{self, Series};
use super::{bytes, pct, Accumulator, Bundle, CheckOutcome, Experiment, Section, Table};

pub struct FileOrder;

/// Page size the experiment maps reads to.
pub const PAGE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;
/// Heatmap resolution.
const NX: usize = 240;
const NY: usize = 160;
/// Run-length buckets: [1], [2,4), [4,8) ... pages.
const RUN_BUCKETS: usize = 24;

#[derive(Clone, Copy, Default)]
struct ThreadState {
    /// Last page read, last tensor, last byte read relative to that tensor.
    last: Option<(u64, u32, u64)>,
    run: u64,
}

#[derive(Clone, Copy, Default, Serialize)]
pub struct Order {
    /// Page transitions (between consecutive pages of a thread's sequence).
    pub transitions: u64,
    pub sequential: u64,
    /// Transitions from one read to the next.
    pub read_transitions: u64,
    pub read_sequential: u64,
    /// Non-sequential transitions within one tensor and between tensors.
    pub jumps_within: u64,
    pub jumps_between: u64,
    pub mapped_bytes: u64,
}

impl Order {
    fn add(&mut self, o: &Order) {
        self.transitions += o.transitions;
        self.sequential += o.sequential;
        self.read_transitions += o.read_transitions;
        self.read_sequential += o.read_sequential;
        self.jumps_within += o.jumps_within;
        self.jumps_between += o.jumps_between;
        self.mapped_bytes += o.mapped_bytes;
    }
    pub fn fraction(&self) -> f64 {
        if self.transitions == 0 {
            0.0
        } else {
            self.sequential as f64 / self.transitions as f64
        }
    }
}

/// Key of a transition between two tensors: (decode?, from tensor, last
/// byte read relative to it, to tensor, first byte read relative to it).
type Between = (bool, u32, u64, u32, u64);

struct FileOrderAcc {
    /// Per id: (gguf_offset, bytes, row_bytes, rows_per_expert, repacked);
    /// offset u64::MAX when the tensor is not a weight with one.
    map: Vec<(u64, u64, u64, u64, bool)>,
    /// Per id: bytes of one row in its buffer (repacked reads are that many
    /// bytes per row read).
    buffer_row: Vec<u64>,
    threads: Vec<ThreadState>,
    steps: Vec<(u32, u8, Order)>,
    step_index: HashMap<u32, usize>,
    last_step: Option<(u32, usize)>,
    between: HashMap<Between, u64>,
    first_touch: Vec<u32>,
    touched: Vec<bool>,
    runs: [[u64; RUN_BUCKETS]; 2],
    heat: Vec<u64>,
    /// The heatmap's x axis: decode time `[t0, t1)` ns, or (no decode
    /// step) trace order over `slots`.
    window: Option<(u64, u64)>,
    slots: u64,
    slot: u64,
    file_len: u64,
    weight_len: u64,
    /// The weight reads in the file's layout: `len` of a read in the file's
    /// layout, rows x GGUF row bytes of a repacked one.
    file_layout_len: u64,
    unmapped_bytes: u64,
    out_of_extent: u64,
    first_bad: Option<String>,
    /// Repacked reads whose `len` is not rows x the buffer's row bytes.
    bad_len: u64,
    first_bad_len: Option<String>,
}

fn bucket(run: u64) -> usize {
    (63 - run.max(1).leading_zeros() as usize).min(RUN_BUCKETS - 1)
}

impl FileOrderAcc {
    fn new(b: &Bundle) -> FileOrderAcc {
        let map = b
            .facts
            .iter()
            .map(|f| match (f.kind, f.gguf_offset) {
                (Some(TensorKind::Weight), Some(o)) => {
                    (o, f.bytes, f.row_bytes, f.rows_per_expert, f.repacked)
                }
                _ => (u64::MAX, 0, 0, 0, false),
            })
            .collect();
        let buffer_row = b.facts.iter().map(|f| f.buffer_row_bytes).collect();
        let n = b.facts.len();
        FileOrderAcc {
            map,
            buffer_row,
            threads: Vec::new(),
            steps: Vec::new(),
            step_index: HashMap::new(),
            last_step: None,
            between: HashMap::new(),
            first_touch: Vec::new(),
            touched: vec![false; n],
            runs: [[0; RUN_BUCKETS]; 2],
            heat: vec![0; NX * NY],
            window: decode_window(&b.trace),
            slots: b.trace.slot_count().max(1) as u64,
            slot: 0,
            file_len: b.file_len.max(1),
            weight_len: 0,
            file_layout_len: 0,
            unmapped_bytes: 0,
            out_of_extent: 0,
            first_bad: None,
            bad_len: 0,
            first_bad_len: None,
        }
    }

    #[inline]
    fn step(&mut self, step: u32, phase: u8) -> &mut Order {
        let i = match self.last_step {
            Some((s, i)) if s == step => i,
            _ => {
                let i = match self.step_index.get(&step) {
                    Some(&i) => i,
                    None => {
                        self.steps.push((step, 0, Order::default()));
                        self.step_index.insert(step, self.steps.len() - 1);
                        self.steps.len() - 1
                    }
                };
                self.last_step = Some((step, i));
                i
            }
        };
        let s = &mut self.steps[i];
        s.1 |= 1 << phase.min(7);
        &mut s.2
    }
}

impl Accumulator for FileOrderAcc {
    #[inline]
    fn observe(&mut self, r: &TraceRecord) {
        let slot = self.slot;
        self.slot += 1;
        let Some(&(off, size, row_bytes, rpe, repacked)) = self.map.get(r.tensor_id as usize)
        else {
            return;
        };
        if off == u64::MAX {
            return;
        }
        self.weight_len += r.len;
        if repacked {
            let rows = (r.row1 as u64).saturating_sub(r.row0 as u64);
            let want = rows * self.buffer_row[r.tensor_id as usize];
            if r.len != want {
                self.bad_len += 1;
                if self.first_bad_len.is_none() {
                    self.first_bad_len = Some(format!(
                        "a read of repacked tensor {} rows {}..{} is {} bytes, not {rows} x {} (its rows in its buffer)",
                        r.tensor_id,
                        r.row0,
                        r.row1,
                        r.len,
                        self.buffer_row[r.tensor_id as usize]
                    ));
                }
            }
            self.file_layout_len += rows * row_bytes;
        } else {
            self.file_layout_len += r.len;
        }
        let (a, b) = if repacked {
            let base = if r.expert >= 0 {
                r.expert as u64 * rpe
            } else {
                0
            };
            (
                off + (base + r.row0 as u64) * row_bytes,
                off + (base + r.row1 as u64) * row_bytes,
            )
        } else {
            (off + r.offset, off + r.offset + r.len)
        };
        if b <= a {
            if r.len > 0 {
                self.unmapped_bytes += r.len;
            }
            return;
        }
        if a < off || b > off + size {
            self.out_of_extent += 1;
            if self.first_bad.is_none() {
                self.first_bad = Some(format!(
                    "a read of tensor {} maps to file bytes {a}..{b}, outside its extent {off}..{}",
                    r.tensor_id,
                    off + size
                ));
            }
        }
        let t = r.tensor_id as usize;
        if !self.touched[t] {
            self.touched[t] = true;
            self.first_touch.push(r.tensor_id);
        }
        let (p0, p1) = (a >> PAGE_SHIFT, (b - 1) >> PAGE_SHIFT);
        let th = r.thread as usize;
        if th >= self.threads.len() {
            self.threads.resize(th + 1, ThreadState::default());
        }
        let decode = r.phase == Phase::Decode as u8;
        let st = self.threads[th];
        let mut o = Order {
            transitions: p1 - p0,
            sequential: p1 - p0,
            mapped_bytes: b - a,
            ..Default::default()
        };
        let mut run = st.run;
        match st.last {
            Some((lp, lt, lrel)) => {
                let seq = p0 == lp || p0 == lp + 1;
                o.transitions += 1;
                o.read_transitions += 1;
                if seq {
                    o.sequential += 1;
                    o.read_sequential += 1;
                    run += p1.saturating_sub(lp);
                } else {
                    self.runs[decode as usize][bucket(run)] += 1;
                    run = p1 - p0 + 1;
                    if lt == r.tensor_id {
                        o.jumps_within += 1;
                    } else {
                        o.jumps_between += 1;
                    }
                }
                if lt != r.tensor_id {
                    *self
                        .between
                        .entry((decode, lt, lrel, r.tensor_id, a - off))
                        .or_default() += 1;
                }
            }
            None => run = p1 - p0 + 1,
        }
        self.threads[th] = ThreadState {
            last: Some((p1, r.tensor_id, b - 1 - off)),
            run,
        };
        self.step(r.step, r.phase).add(&o);
        // Heatmap: x = time of the decode steps (or trace order), y = file
        // offset.
        let x = match self.window {
            Some(_) if !decode => return,
            Some((t0, t1)) => ((r.t_ns.saturating_sub(t0) as u128 * NX as u128)
                / (t1 - t0).max(1) as u128)
                .min(NX as u128 - 1) as usize,
            None => ((slot * NX as u64) / self.slots).min(NX as u64 - 1) as usize,
        };
        let y0 = ((a as u128 * NY as u128) / self.file_len as u128).min(NY as u128 - 1) as usize;
        let y1 =
            (((b - 1) as u128 * NY as u128) / self.file_len as u128).min(NY as u128 - 1) as usize;
        if y0 == y1 {
            self.heat[y0 * NX + x] += b - a;
        } else {
            let per = (b - a) / (y1 - y0 + 1) as u64;
            for y in y0..=y1 {
                self.heat[y * NX + x] += per.max(1);
            }
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// First start and last end (ns) of the decode records, found without a
/// pass: a bundle's steps are contiguous in the file (records are flushed
/// after every step), so the first decode slot is found by bisection and
/// the times are read from the blocks at either end.
fn decode_window(trace: &crate::reader::Trace) -> Option<(u64, u64)> {
    let n = trace.slot_count();
    let decode_at = |i: usize| -> Option<bool> {
        trace
            .records_in(i..(i + 64).min(n))
            .next()
            .map(|r| r.phase == Phase::Decode as u8)
    };
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match decode_at(mid) {
            Some(true) => hi = mid,
            _ => lo = mid + 1,
        }
    }
    if lo >= n {
        return None;
    }
    const EDGE: usize = 4096;
    let t0 = trace
        .records_in(lo..(lo + EDGE).min(n))
        .filter(|r| r.phase == Phase::Decode as u8)
        .map(|r| r.t_ns)
        .min()?;
    let t1 = trace
        .records_in(n.saturating_sub(EDGE)..n)
        .filter(|r| r.phase == Phase::Decode as u8)
        .map(|r| r.t_ns + r.dur_ns as u64)
        .max()?;
    (t1 > t0).then_some((t0, t1))
}

#[derive(Clone, Serialize)]
pub struct StepOrder {
    pub step: u32,
    pub phase: String,
    #[serde(flatten)]
    pub order: Order,
    pub sequential_fraction: f64,
}

#[derive(Clone, Serialize)]
pub struct Jump {
    pub from: String,
    pub to: String,
    pub count: u64,
    /// Mean file distance from the last byte read to the next, bytes
    /// (signed: negative jumps go back in the file).
    pub distance: i64,
}

struct Finished {
    steps: Vec<StepOrder>,
    decode: Order,
    prefill: Order,
    first_touch_decode: Order,
    runs: [[u64; RUN_BUCKETS]; 2],
    jumps: Vec<Jump>,
    forward_between: u64,
    backward_between: u64,
    heat: Vec<Vec<u64>>,
    window: Option<(u64, u64)>,
    bounds: Vec<f64>,
    first_touch_order: Vec<String>,
    check: CheckOutcome,
    weight_len: u64,
    file_layout_len: u64,
    mapped: u64,
}

fn finish(b: &Bundle, acc: FileOrderAcc) -> Finished {
    let mut steps: Vec<StepOrder> = acc
        .steps
        .iter()
        .map(|(s, ph, o)| StepOrder {
            step: *s,
            phase: if *ph == 1 << Phase::Decode as u8 {
                "decode".into()
            } else if *ph == 1 << Phase::Prefill as u8 {
                "prefill".into()
            } else {
                "mixed".into()
            },
            order: *o,
            sequential_fraction: o.fraction(),
        })
        .collect();
    steps.sort_by_key(|s| s.step);
    let mut decode = Order::default();
    let mut prefill = Order::default();
    for s in &steps {
        if s.phase == "decode" {
            decode.add(&s.order);
        } else {
            prefill.add(&s.order);
        }
    }
    let mapped = decode.mapped_bytes + prefill.mapped_bytes;

    // First-touch layout: new start of each touched tensor, same page phase.
    let mut new_start: HashMap<u32, u64> = HashMap::new();
    let mut cursor = 0u64;
    for &t in &acc.first_touch {
        let (off, size, ..) = acc.map[t as usize];
        let phase = off % PAGE;
        let s = cursor + (phase + PAGE - cursor % PAGE) % PAGE;
        new_start.insert(t, s);
        cursor = s + size;
    }
    let seq = |a: u64, b: u64| {
        let (pa, pb) = (a >> PAGE_SHIFT, b >> PAGE_SHIFT);
        pb == pa || pb == pa + 1
    };
    let mut ft = decode;
    // Jumps between tensors, by role (`attn_v -> attn_k`, over all layers).
    let mut jumps: HashMap<(String, String), (u64, i64)> = HashMap::new();
    let (mut fwd, mut bwd) = (0u64, 0u64);
    for (&(dec, ta, ra, tb, rb), &n) in &acc.between {
        let (oa, ob) = (acc.map[ta as usize].0, acc.map[tb as usize].0);
        let (xa, xb) = (oa + ra, ob + rb);
        let actual = seq(xa, xb);
        if dec {
            if xb > xa {
                fwd += n;
            } else {
                bwd += n;
            }
            let (na, nb) = (new_start[&ta] + ra, new_start[&tb] + rb);
            let hyp = seq(na, nb);
            match (actual, hyp) {
                (true, false) => {
                    ft.sequential -= n;
                    ft.read_sequential -= n;
                    ft.jumps_between += n;
                }
                (false, true) => {
                    ft.sequential += n;
                    ft.read_sequential += n;
                    ft.jumps_between -= n;
                }
                _ => {}
            }
            if !actual {
                let key = (
                    super::paths::role(b.name(ta)),
                    super::paths::role(b.name(tb)),
                );
                let e = jumps.entry(key).or_insert((0, 0));
                e.0 += n;
                e.1 += (xb as i64 - xa as i64) * n as i64;
            }
        }
    }
    let mut jumps: Vec<Jump> = jumps
        .into_iter()
        .map(|((from, to), (count, sum))| Jump {
            from,
            to,
            count,
            distance: sum / count.max(1) as i64,
        })
        .collect();
    jumps.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then(x.from.cmp(&y.from))
            .then(x.to.cmp(&y.to))
    });
    jumps.truncate(15);

    // The check.
    let mut fails = Vec::new();
    if mapped != acc.file_layout_len {
        fails.push(format!(
            "bytes mapped to file offsets {} != weight bytes read in the file's layout {} ({} bytes of weight reads could not be mapped)",
            mapped,
            acc.file_layout_len,
            acc.file_layout_len.saturating_sub(mapped)
        ));
    }
    if acc.bad_len > 0 {
        fails.push(format!(
            "{} repacked reads are not whole rows of their buffer; first: {}",
            acc.bad_len,
            acc.first_bad_len.clone().unwrap_or_default()
        ));
    }
    if acc.out_of_extent > 0 {
        fails.push(format!(
            "{} reads fall outside their tensor's file extent; first: {}",
            acc.out_of_extent,
            acc.first_bad.clone().unwrap_or_default()
        ));
    }
    let mut ext: Vec<(u64, u64, u32)> = acc
        .map
        .iter()
        .enumerate()
        .filter(|(_, m)| m.0 != u64::MAX)
        .map(|(i, m)| (m.0, m.0 + m.1, i as u32))
        .collect();
    ext.sort_unstable();
    ext.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1); // a tied weight: same bytes
    for w in ext.windows(2) {
        if w[1].0 < w[0].1 {
            fails.push(format!(
                "registry extents overlap: {} at {}..{} and {} at {}..{}",
                b.name(w[0].2),
                w[0].0,
                w[0].1,
                b.name(w[1].2),
                w[1].0,
                w[1].1
            ));
        }
    }
    if let (Some(len), Some(last)) = (b.model_file_len, ext.last()) {
        if last.1 > len {
            fails.push(format!(
                "{} ends at file byte {}, past the end of the model file ({len} bytes)",
                b.name(last.2),
                last.1
            ));
        }
    }
    if acc.weight_len == 0 {
        fails.push("no weight read in the trace: nothing to map".into());
    }
    let check = CheckOutcome::new(
        b,
        ext.len() as u64 + 1,
        fails,
        format!(
            "{} of weight reads mapped to file offsets = the weight bytes read in the file's layout{}; {} tensor extents inside the file, none overlapping",
            bytes(mapped),
            if acc.file_layout_len != acc.weight_len {
                format!(" ({} as read from packed buffers)", bytes(acc.weight_len))
            } else {
                String::new()
            },
            ext.len()
        ),
    );

    let heat: Vec<Vec<u64>> = acc.heat.chunks(NX).map(|c| c.to_vec()).collect();
    let mib = (1u64 << 20) as f64;
    let bounds: Vec<f64> = ext
        .iter()
        .filter(|e| e.1 - e.0 >= (b.file_len / 400).max(1))
        .map(|e| e.0 as f64 / mib)
        .collect();
    Finished {
        steps,
        decode,
        prefill,
        first_touch_decode: ft,
        runs: acc.runs,
        jumps,
        forward_between: fwd,
        backward_between: bwd,
        heat,
        window: acc.window,
        bounds,
        first_touch_order: acc
            .first_touch
            .iter()
            .take(64)
            .map(|&t| b.name(t).to_string())
            .collect(),
        check,
        weight_len: acc.weight_len,
        file_layout_len: acc.file_layout_len,
        mapped,
    }
}

impl Experiment for FileOrder {
    fn name(&self) -> &'static str {
        "file-order"
    }

    fn title(&self) -> &'static str {
        "File order: weight reads in GGUF file offsets and 4 KiB pages"
    }

    fn accumulator(&self, bundle: &Bundle) -> Box<dyn Accumulator> {
        Box::new(FileOrderAcc::new(bundle))
    }

    fn section(&self, bundles: &[Bundle], accs: Vec<Box<dyn Accumulator>>) -> Section {
        let fin: Vec<Finished> = bundles
            .iter()
            .zip(accs)
            .map(|(b, a)| {
                finish(
                    b,
                    *a.into_any()
                        .downcast::<FileOrderAcc>()
                        .expect("file-order accumulator"),
                )
            })
            .collect();
        let mut tables = Vec::new();
        let mut t = Table::new(
            "Order of access against order in the file (decode steps; prefill for comparison)",
            &[
                "bundle",
                "layout",
                "phase",
                "page transitions",
                "sequential",
                "read-to-read sequential",
                "jumps within a tensor",
                "jumps between tensors",
            ],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for (layout, ph, o) in [
                ("file", "prefill", &f.prefill),
                ("file", "decode", &f.decode),
                ("first-touch", "decode", &f.first_touch_decode),
            ] {
                t.row(vec![
                    b.label.clone(),
                    layout.into(),
                    ph.into(),
                    o.transitions.to_string(),
                    pct(o.sequential as f64, o.transitions as f64),
                    pct(o.read_sequential as f64, o.read_transitions as f64),
                    o.jumps_within.to_string(),
                    o.jumps_between.to_string(),
                ]);
            }
            t.row(vec![
                b.label.clone(),
                "file".into(),
                "decode".into(),
                format!(
                    "between tensors: {} forward, {} backward",
                    f.forward_between, f.backward_between
                ),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        tables.push(t);
        let mut t = Table::new(
            "Where the jumps between tensors are: non-sequential transitions from one weight to the next, by role over all layers (decode steps, most frequent first)",
            &["bundle", "from", "to", "count", "mean distance"],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for j in &f.jumps {
                let d = if j.distance < 0 {
                    format!("-{}", bytes(j.distance.unsigned_abs()))
                } else {
                    format!("+{}", bytes(j.distance as u64))
                };
                t.row(vec![
                    b.label.clone(),
                    j.from.clone(),
                    j.to.clone(),
                    j.count.to_string(),
                    d,
                ]);
            }
        }
        tables.push(t);
        let mut t = Table::new(
            "Run lengths: maximal sequential stretches of pages, decode steps",
            &["bundle", "pages", "runs"],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for (i, n) in f.runs[1].iter().enumerate().filter(|(_, n)| **n > 0) {
                let lo = 1u64 << i;
                t.row(vec![
                    b.label.clone(),
                    if i == 0 {
                        "1".into()
                    } else {
                        format!("{}-{}", lo, (lo << 1) - 1)
                    },
                    n.to_string(),
                ]);
            }
        }
        tables.push(t);

        let mut plots = Vec::new();
        let series: Vec<Series> = bundles
            .iter()
            .zip(&fin)
            .enumerate()
            .map(|(i, (b, f))| Series {
                name: format!("{} sequential fraction", b.label),
                points: f
                    .steps
                    .iter()
                    .map(|s| (s.step as f64, s.sequential_fraction))
                    .collect(),
                color: i,
                dashed: false,
            })
            .collect();
        plots.push(plot::lines(
            "file-order-sequential.svg",
            "Fraction of page transitions that are sequential, per step",
            "step (0 = prompt)",
            "fraction",
            &series,
        ));
        let max_bucket = fin
            .iter()
            .map(|f| f.runs[1].iter().rposition(|&n| n > 0).unwrap_or(0))
            .max()
            .unwrap_or(0);
        let cats: Vec<String> = (0..=max_bucket)
            .map(|i| {
                if i == 0 {
                    "1".into()
                } else {
                    format!("{}+", 1u64 << i)
                }
            })
            .collect();
        let groups: Vec<(String, Vec<f64>)> = bundles
            .iter()
            .zip(&fin)
            .map(|(b, f)| {
                (
                    b.label.clone(),
                    f.runs[1][..=max_bucket].iter().map(|&n| n as f64).collect(),
                )
            })
            .collect();
        plots.push(plot::bars(
            "file-order-runs.svg",
            "Run-length distribution of sequential page runs (decode)",
            "runs",
            &cats,
            &groups,
            true,
        ));
        for (b, f) in bundles.iter().zip(&fin) {
            let mib = (1u64 << 20) as f64;
            let (caption, x_label, x_range) = match f.window {
                Some((t0, t1)) => (
                    format!(
                        "{}: file offset read against time, decode steps (lines: tensor starts)",
                        b.label
                    ),
                    "ms since the first decode step",
                    (0.0, (t1 - t0) as f64 / 1e6),
                ),
                None => (
                    format!(
                        "{}: file offset read against trace order (lines: tensor starts)",
                        b.label
                    ),
                    "records in trace order",
                    (0.0, b.trace.slot_count() as f64),
                ),
            };
            plots.push(plot::heatmap(
                &format!("file-order-heatmap-{}.svg", b.label),
                &caption,
                x_label,
                "file offset, MiB",
                &f.heat,
                x_range,
                (0.0, b.file_len as f64 / mib),
                &f.bounds,
            ));
        }
        let data = bundles
            .iter()
            .zip(&fin)
            .map(|(b, f)| {
                json!({
                    "bundle": b.label,
                    "page_bytes": PAGE,
                    "sequential_fraction": f.decode.fraction(),
                    "decode": f.decode,
                    "prefill": f.prefill,
                    "first_touch_decode": f.first_touch_decode,
                    "first_touch_sequential_fraction": f.first_touch_decode.fraction(),
                    "between_forward": f.forward_between,
                    "between_backward": f.backward_between,
                    "run_length_buckets_log2": {"prefill": f.runs[0].to_vec(), "decode": f.runs[1].to_vec()},
                    "jumps": f.jumps,
                    "steps": f.steps,
                    "first_touch_order": f.first_touch_order,
                    "mapped_bytes": f.mapped,
                    "weight_bytes": f.weight_len,
                    "weight_bytes_file_layout": f.file_layout_len,
                    "file_len": b.file_len,
                })
            })
            .collect();
        Section {
            name: self.name().into(),
            title: self.title().into(),
            measured: "Every weight read mapped to absolute GGUF file offsets (repacked rows through the registry's row mapping) and 4 KiB pages: the fraction of page transitions that are sequential per step, run lengths, where the jumps are, and the same figures for a file laid out in first-touch order.".into(),
            check_title: "bytes mapped to file offsets = weight bytes read in the file's layout (a packed AMX row counted as its GGUF row), every repacked read whole rows of its buffer, every read inside its tensor's extent, extents disjoint and inside the file".into(),
            checks: fin.into_iter().map(|f| f.check).collect(),
            tables,
            plots,
            data,
        }
    }
}
