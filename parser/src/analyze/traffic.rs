//! `traffic`: bytes read per step (the sum of record lengths), split by what
//! was read (weights, KV cache, activations, embedding rows), prefill
//! against decode, per layer and per op.
//!
//! The check holds every decode step to what the model says it must read:
//!
//! - weights: the bytes read by weight matmuls equal the sizes of the
//!   weights used as they lie in their buffers (each node that reads a weight
//!   reads all of it; a `mul_mat_id` node reads its experts' share), and
//!   every decode step uses the same set of weights. That is the GGUF size,
//!   except for a packed layout (AMX: the registry's `buffer_bytes`);
//! - embedding: one `token_embd` row per token of the batch;
//! - KV cache: with flash attention off, each layer reads K and V over the
//!   attended KV length as llama.cpp pads it (the cells in use rounded up to
//!   256, at most the cache size) times the bytes of one cache row:
//!   `n_layer x 2 x n_kv x row_bytes`, where `parse --stats` counts the same
//!   bytes. With flash attention on (FLASH_ATTN_EXT records), every query row
//!   reads the rows of one KV head over the cells its mask lets through
//!   (docs/trace-format.md): per KV tensor, `query rows x cells x head row
//!   bytes`, where the cells end at the newest token (`pos + n_tokens`) and
//!   span the same range for every query row;
//! - steps: every step the run traced is in the trace.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cktrace_tracer::{Op, Phase, TensorKind, TraceRecord};
use serde::Serialize;
use serde_json::json;

use super::plot::{self, Series};
use super::{bytes, Accumulator, Bundle, CheckOutcome, Experiment, Section, Table};

/// KV-cache padding of the pinned llama.cpp (`llama_kv_cache::get_padding`).
pub const KV_PAD: u64 = 256;

pub struct Traffic;

/// A byte kind's name and how to read it from a step.
type KindGetter = (&'static str, fn(&StepRow) -> u64);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Split {
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    pub embedding_rows: u64,
    pub unregistered: u64,
}

impl Split {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations + self.embedding_rows + self.unregistered
    }
    fn add(&mut self, o: &Split) {
        self.weights += o.weights;
        self.kv_cache += o.kv_cache;
        self.activations += o.activations;
        self.embedding_rows += o.embedding_rows;
        self.unregistered += o.unregistered;
    }
}

#[derive(Default)]
struct StepAcc {
    phases: u8,
    n_tokens: u16,
    pos: i32,
    records: u64,
    split: Split,
    /// Weight matmul nodes: (node, tensor, expert).
    nodes: HashSet<(u64, u32, i32)>,
    /// KV tensors read.
    kv: BTreeSet<u32>,
    /// Flash attention: per KV tensor, the cells read (lowest first, highest
    /// end), the query rows that read any (bit per row; rows past 127 are
    /// counted up to the highest end) and bytes of one head row.
    fa: BTreeMap<u32, (u32, u32, u128, u32, u64)>,
    /// Embedding rows read (sum of row ranges of get_rows weight reads) and
    /// the tensor.
    embd_rows: u64,
    embd_tensor: Option<u32>,
}

struct TrafficAcc {
    /// Per id: kind code, bytes, row_bytes, n_rows, n_expert.
    facts: Vec<(u8, u64, u64, u64, u64)>,
    steps: Vec<(u32, StepAcc)>,
    step_index: HashMap<u32, usize>,
    /// The step of the previous record and its index in `steps`.
    last_step: Option<(u32, usize)>,
    last: Option<(u32, u64, u32, i32)>,
    last_kv: Option<(u32, u32)>,
    /// [phase 0 prefill / 1 decode][layer + 1]
    layer: [Vec<Split>; 2],
    /// [phase][op code]
    op: [Vec<Split>; 2],
}

const K_NONE: u8 = 0;
const K_W: u8 = 1;
const K_KV: u8 = 2;
const K_ACT: u8 = 3;

impl TrafficAcc {
    fn new(b: &Bundle) -> TrafficAcc {
        let facts = b
            .trace
            .registry()
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let k = if t.id as usize != i {
                    K_NONE
                } else {
                    match t.kind {
                        TensorKind::Weight => K_W,
                        TensorKind::KvCache => K_KV,
                        TensorKind::Activation => K_ACT,
                    }
                };
                let ne = if t.shape.len() >= 3 {
                    t.shape[2].max(1)
                } else {
                    1
                };
                // A weight is read as it lies in its buffer (AMX packs rows
                // larger than the GGUF layout).
                let bytes = if k == K_W {
                    t.resident_bytes()
                } else {
                    t.bytes
                };
                (k, bytes, t.row_bytes, t.n_rows, ne)
            })
            .collect();
        TrafficAcc {
            facts,
            steps: Vec::new(),
            step_index: HashMap::new(),
            last_step: None,
            last: None,
            last_kv: None,
            layer: [Vec::new(), Vec::new()],
            op: [vec![Split::default(); 256], vec![Split::default(); 256]],
        }
    }
}

impl Accumulator for TrafficAcc {
    #[inline]
    fn observe(&mut self, r: &TraceRecord) {
        let kind = self
            .facts
            .get(r.tensor_id as usize)
            .map(|f| f.0)
            .unwrap_or(K_NONE);
        let mut sp = Split {
            activations: r.act_bytes,
            ..Default::default()
        };
        let get_rows = r.op == Op::GetRows as u8;
        match kind {
            K_W if get_rows => sp.embedding_rows = r.len,
            K_W => sp.weights = r.len,
            K_KV => sp.kv_cache = r.len,
            K_ACT => sp.activations += r.len,
            _ => sp.unregistered = r.len,
        }
        let si = match self.last_step {
            Some((st, i)) if st == r.step => i,
            _ => {
                let i = *self.step_index.entry(r.step).or_insert_with(|| {
                    self.steps.push((
                        r.step,
                        StepAcc {
                            pos: i32::MAX,
                            ..Default::default()
                        },
                    ));
                    self.steps.len() - 1
                });
                self.last_step = Some((r.step, i));
                i
            }
        };
        let s = &mut self.steps[si].1;
        s.phases |= 1 << r.phase.min(7);
        s.n_tokens = s.n_tokens.max(r.n_tokens);
        s.pos = s.pos.min(r.pos);
        s.records += 1;
        s.split.add(&sp);
        match kind {
            K_W if get_rows => {
                s.embd_rows += r.row1.saturating_sub(r.row0) as u64;
                s.embd_tensor.get_or_insert(r.tensor_id);
            }
            K_W if r.op == Op::MulMat as u8 || r.op == Op::MulMatId as u8 => {
                let key = (r.step, r.node, r.tensor_id, r.expert);
                if self.last != Some(key) {
                    s.nodes.insert((r.node, r.tensor_id, r.expert));
                    self.last = Some(key);
                }
            }
            K_KV => {
                if self.last_kv != Some((r.step, r.tensor_id)) {
                    s.kv.insert(r.tensor_id);
                    self.last_kv = Some((r.step, r.tensor_id));
                }
                if r.op == Op::FlashAttnExt as u8 && r.row1 > r.row0 {
                    let e = s.fa.entry(r.tensor_id).or_insert((u32::MAX, 0, 0, 0, 0));
                    e.0 = e.0.min(r.row0);
                    e.1 = e.1.max(r.row1);
                    for c in r.col0..r.col1.min(128) {
                        e.2 |= 1u128 << c;
                    }
                    e.3 = e.3.max(r.col1);
                    e.4 = r.len / (r.row1 - r.row0) as u64;
                }
            }
            _ => {}
        }
        let ph = (r.phase == Phase::Decode as u8) as usize;
        let li = (r.layer as i32 + 1).max(0) as usize;
        let v = &mut self.layer[ph];
        if li >= v.len() {
            v.resize(li + 1, Split::default());
        }
        v[li].add(&sp);
        self.op[ph][r.op as usize].add(&sp);
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// One step's figures, as in `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    pub step: u32,
    pub phase: String,
    pub n_tokens: u16,
    pub pos: i32,
    pub records: u64,
    #[serde(flatten)]
    pub split: Split,
    pub total: u64,
    /// GGUF bytes of the weights the step's matmul nodes used.
    pub expected_weights: u64,
    /// Distinct weight tensors read by matmuls.
    pub weight_tensors: u64,
    /// `n_kv x row_bytes` summed over the KV tensors read (decode steps).
    pub expected_kv_cache: u64,
    /// KV tensors read (2 per layer).
    pub kv_tensors: u64,
    /// Attended KV length `n_kv` as llama.cpp pads it.
    pub n_kv: u64,
    pub embedding_rows_read: u64,
}

fn phase_name(mask: u8) -> String {
    let v: Vec<&str> = Phase::ALL
        .iter()
        .filter(|p| mask & (1 << (**p as u8)) != 0)
        .map(|p| p.as_str())
        .collect();
    if v.is_empty() {
        "unknown".into()
    } else {
        v.join("+")
    }
}

struct Finished {
    steps: Vec<StepRow>,
    check: CheckOutcome,
    layer: [Vec<Split>; 2],
    op: [BTreeMap<u8, Split>; 2],
    bytes_per_decode_token: Option<u64>,
}

fn finish(b: &Bundle, mut acc: TrafficAcc) -> Finished {
    acc.steps.sort_by_key(|s| s.0);
    let mut fails = Vec::new();
    let mut rows = Vec::new();
    let mut first_set: Option<(u32, Vec<u32>)> = None;
    let n_layer = b.meta().map(|m| m.n_layer as u64).filter(|&n| n > 0);
    for (step, s) in &acc.steps {
        let step = *step;
        let decode = s.phases == 1 << Phase::Decode as u8;
        let expected_weights: u64 = s
            .nodes
            .iter()
            .map(|&(_, t, _)| {
                let f = acc.facts[t as usize];
                f.1 / f.4.max(1)
            })
            .sum();
        let mut set: Vec<u32> = s.nodes.iter().map(|&(_, t, _)| t).collect();
        set.sort_unstable();
        set.dedup();
        let n_kv_at = |rows: u64| {
            let used = (s.pos.max(0) as u64).saturating_add(s.n_tokens as u64);
            (used.div_ceil(KV_PAD) * KV_PAD).min(rows)
        };
        let newest = (s.pos.max(0) as u64).saturating_add(s.n_tokens as u64);
        // Flash attention: every layer has the same query rows; a tensor
        // whose records miss some of them reads less than the others.
        let q_rows =
            s.fa.values()
                .map(|&(_, _, mask, hi_col, _)| {
                    mask.count_ones() as u64 + hi_col.saturating_sub(128) as u64
                })
                .max()
                .unwrap_or(0);
        let expected_kv: u64 =
            s.kv.iter()
                .map(|&t| match s.fa.get(&t) {
                    // flash attention: every query row reads every cell of
                    // the span, which ends at the newest token
                    Some(&(lo, _, _, _, head_row)) => {
                        q_rows * newest.saturating_sub(lo as u64) * head_row
                    }
                    None => {
                        let f = acc.facts[t as usize];
                        n_kv_at(f.3) * f.2
                    }
                })
                .sum();
        let n_kv =
            s.kv.iter()
                .map(|&t| n_kv_at(acc.facts[t as usize].3))
                .max()
                .unwrap_or(0);
        let embd_row_bytes = s.embd_tensor.map(|t| acc.facts[t as usize].2).unwrap_or(0);
        if decode {
            if s.split.weights != expected_weights {
                fails.push(format!(
                    "step {step}: weight bytes read {} != size in their buffers (GGUF size, or packed) of the {} weights used {}",
                    s.split.weights,
                    set.len(),
                    expected_weights
                ));
            }
            match &first_set {
                None => first_set = Some((step, set.clone())),
                Some((s0, set0)) if *set0 != set => fails.push(format!(
                    "step {step} read {} weight tensors by matmul, step {s0} read {} (a different set)",
                    set.len(),
                    set0.len()
                )),
                _ => {}
            }
            if s.embd_rows != s.n_tokens as u64
                || s.split.embedding_rows != s.n_tokens as u64 * embd_row_bytes
            {
                fails.push(format!(
                    "step {step}: {} embedding rows ({} bytes) for {} tokens (one row of {} bytes each)",
                    s.embd_rows, s.split.embedding_rows, s.n_tokens, embd_row_bytes
                ));
            }
            if s.split.kv_cache != expected_kv {
                fails.push(format!(
                    "step {step}: KV bytes {} != {} ({} KV tensors x n_kv {} x row bytes)",
                    s.split.kv_cache,
                    expected_kv,
                    s.kv.len(),
                    n_kv
                ));
            }
            if let Some(nl) = n_layer {
                if s.kv.len() as u64 != 2 * nl {
                    fails.push(format!(
                        "step {step}: {} KV tensors read, expected 2 per layer x {nl} layers",
                        s.kv.len()
                    ));
                }
            }
        }
        rows.push(StepRow {
            step,
            phase: phase_name(s.phases),
            n_tokens: s.n_tokens,
            pos: if s.pos == i32::MAX { 0 } else { s.pos },
            records: s.records,
            split: s.split,
            total: s.split.total(),
            expected_weights,
            weight_tensors: set.len() as u64,
            expected_kv_cache: if decode { expected_kv } else { 0 },
            kv_tensors: s.kv.len() as u64,
            n_kv,
            embedding_rows_read: s.embd_rows,
        });
    }
    // Steps: the ones the run traced must all be there.
    let present: BTreeSet<u32> = acc.steps.iter().map(|s| s.0).collect();
    let expected: Option<Vec<u32>> = b.meta().and_then(|m| {
        let n = m.step_tokens.len() as u32;
        if n == 0 {
            return None;
        }
        let (a, z) = match m.traced_steps {
            Some([a, z]) => (a, z.min(n - 1)),
            None => (0, n - 1),
        };
        Some((a..=z).collect())
    });
    let expected = expected.unwrap_or_else(|| match (present.first(), present.last()) {
        (Some(&a), Some(&z)) => (a..=z).collect(),
        _ => Vec::new(),
    });
    // Missing steps first: they explain the rest.
    let mut step_fails = Vec::new();
    for s in &expected {
        if !present.contains(s) {
            step_fails.push(format!("step {s} was traced but has no records"));
        }
    }
    for s in &present {
        if !expected.contains(s) {
            step_fails.push(format!(
                "step {s} has records but meta.json says it was not traced"
            ));
        }
    }
    step_fails.append(&mut fails);
    let mut fails = step_fails;
    let decode: Vec<&StepRow> = rows.iter().filter(|r| r.phase == "decode").collect();
    if decode.is_empty() {
        fails.push("no decode step in the trace: nothing to check".into());
    }
    let bytes_per_decode_token = (!decode.is_empty())
        .then(|| decode.iter().map(|r| r.total).sum::<u64>() / decode.len() as u64);
    // Weights of the decode steps packed larger than their GGUF layout.
    let packed = first_set.as_ref().map_or(0, |(_, set)| {
        set.iter()
            .filter(|&&t| {
                b.trace
                    .registry()
                    .get(t)
                    .is_some_and(|x| x.resident_bytes() != x.bytes)
            })
            .count()
    });
    let ok = match decode.first() {
        Some(d) => format!(
            "{} decode steps: weights {} = size of {} tensors in their buffers{}, KV {} = 2 x {} layers x n_kv {} x row bytes, one embedding row per token",
            decode.len(),
            bytes(d.split.weights),
            d.weight_tensors,
            if packed > 0 {
                format!(" ({packed} packed larger than GGUF)")
            } else {
                " (GGUF size)".into()
            },
            bytes(d.split.kv_cache),
            d.kv_tensors / 2,
            d.n_kv
        ),
        None => String::new(),
    };
    let check = CheckOutcome::new(b, rows.len() as u64 + expected.len() as u64, fails, ok);
    Finished {
        steps: rows,
        check,
        layer: acc.layer,
        op: acc.op.map(|v| {
            v.into_iter()
                .enumerate()
                .filter(|(_, s)| s.total() > 0)
                .map(|(i, s)| (i as u8, s))
                .collect()
        }),
        bytes_per_decode_token,
    }
}

impl Experiment for Traffic {
    fn name(&self) -> &'static str {
        "traffic"
    }

    fn title(&self) -> &'static str {
        "Traffic: bytes per step by kind, layer and op"
    }

    fn accumulator(&self, bundle: &Bundle) -> Box<dyn Accumulator> {
        Box::new(TrafficAcc::new(bundle))
    }

    fn section(&self, bundles: &[Bundle], accs: Vec<Box<dyn Accumulator>>) -> Section {
        let fin: Vec<Finished> = bundles
            .iter()
            .zip(accs)
            .map(|(b, a)| {
                let a = a
                    .into_any()
                    .downcast::<TrafficAcc>()
                    .expect("traffic accumulator");
                finish(b, *a)
            })
            .collect();
        let mut tables = Vec::new();

        // Summary: mean per decode step and the prompt step, per bundle.
        let mut t = Table::new(
            "Bytes read per step: the prompt (prefill) and the mean decode step",
            &[
                "bundle",
                "phase",
                "steps",
                "weights",
                "KV cache",
                "activations",
                "embedding rows",
                "total",
            ],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for ph in ["prefill", "decode"] {
                let rs: Vec<&StepRow> = f.steps.iter().filter(|r| r.phase == ph).collect();
                if rs.is_empty() {
                    continue;
                }
                let n = rs.len() as u64;
                let mean = |g: fn(&StepRow) -> u64| bytes(rs.iter().map(|r| g(r)).sum::<u64>() / n);
                t.row(vec![
                    b.label.clone(),
                    ph.into(),
                    n.to_string(),
                    mean(|r| r.split.weights),
                    mean(|r| r.split.kv_cache),
                    mean(|r| r.split.activations),
                    mean(|r| r.split.embedding_rows),
                    mean(|r| r.total),
                ]);
            }
        }
        tables.push(t);

        // Per step.
        let mut t = Table::new(
            "Per step: bytes read and what the model predicts (decode steps)",
            &[
                "bundle",
                "step",
                "phase",
                "tokens",
                "pos",
                "weights",
                "expected",
                "KV cache",
                "expected KV",
                "n_kv",
                "embedding",
                "total",
            ],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for r in &f.steps {
                let dec = r.phase == "decode";
                t.row(vec![
                    b.label.clone(),
                    r.step.to_string(),
                    r.phase.clone(),
                    r.n_tokens.to_string(),
                    r.pos.to_string(),
                    bytes(r.split.weights),
                    if dec {
                        bytes(r.expected_weights)
                    } else {
                        "-".into()
                    },
                    bytes(r.split.kv_cache),
                    if dec {
                        bytes(r.expected_kv_cache)
                    } else {
                        "-".into()
                    },
                    r.n_kv.to_string(),
                    bytes(r.split.embedding_rows),
                    bytes(r.total),
                ]);
            }
        }
        tables.push(t);

        // Per layer, decode, mean per step.
        let mut header = vec!["layer".to_string()];
        for b in bundles {
            header.push(format!("{} weights", b.label));
            header.push(format!("{} KV", b.label));
            header.push(format!("{} activations", b.label));
        }
        let mut t = Table {
            caption:
                "Per layer: mean bytes per decode step (-1: outside the layers: embedding, output)"
                    .into(),
            header,
            rows: Vec::new(),
        };
        let n_layers = fin.iter().map(|f| f.layer[1].len()).max().unwrap_or(0);
        let ndec: Vec<u64> = fin
            .iter()
            .map(|f| {
                f.steps
                    .iter()
                    .filter(|r| r.phase == "decode")
                    .count()
                    .max(1) as u64
            })
            .collect();
        for li in 0..n_layers {
            let mut row = vec![(li as i64 - 1).to_string()];
            for (f, n) in fin.iter().zip(&ndec) {
                let s = f.layer[1].get(li).copied().unwrap_or_default();
                row.push(bytes(s.weights / n));
                row.push(bytes(s.kv_cache / n));
                row.push(bytes(s.activations / n));
            }
            t.row(row);
        }
        tables.push(t);

        // Per op.
        let mut t = Table::new(
            "Per op: total bytes (tensor read + activation operands)",
            &[
                "bundle",
                "phase",
                "op",
                "weights",
                "KV cache",
                "activations",
                "embedding rows",
                "total",
            ],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for (pi, ph) in ["prefill", "decode"].iter().enumerate() {
                for (op, s) in &f.op[pi] {
                    t.row(vec![
                        b.label.clone(),
                        ph.to_string(),
                        crate::names::op(*op).into_owned(),
                        bytes(s.weights),
                        bytes(s.kv_cache),
                        bytes(s.activations),
                        bytes(s.embedding_rows),
                        bytes(s.total()),
                    ]);
                }
            }
        }
        tables.push(t);

        // Plots.
        let mib = |v: u64| v as f64 / (1u64 << 20) as f64;
        let mut series = Vec::new();
        for (bi, (b, f)) in bundles.iter().zip(&fin).enumerate() {
            let kinds: [KindGetter; 4] = [
                ("weights", |r| r.split.weights),
                ("KV cache", |r| r.split.kv_cache),
                ("activations", |r| r.split.activations),
                ("embedding", |r| r.split.embedding_rows),
            ];
            for (ki, (name, g)) in kinds.iter().enumerate() {
                series.push(Series {
                    name: if bundles.len() > 1 {
                        format!("{} {name}", b.label)
                    } else {
                        name.to_string()
                    },
                    points: f.steps.iter().map(|r| (r.step as f64, mib(g(r)))).collect(),
                    color: ki,
                    dashed: bi > 0,
                });
            }
        }
        let p1 = plot::lines(
            "traffic-steps.svg",
            "Bytes read per step by kind",
            "step (0 = prompt)",
            "MiB",
            &series,
        );
        let cats: Vec<String> = (0..n_layers).map(|l| (l as i64 - 1).to_string()).collect();
        let groups: Vec<(String, Vec<f64>)> = bundles
            .iter()
            .zip(&fin)
            .zip(&ndec)
            .map(|((b, f), n)| {
                (
                    format!("{} weights + KV", b.label),
                    (0..n_layers)
                        .map(|l| {
                            let s = f.layer[1].get(l).copied().unwrap_or_default();
                            mib((s.weights + s.kv_cache + s.embedding_rows) / n)
                        })
                        .collect(),
                )
            })
            .collect();
        let p2 = plot::bars(
            "traffic-layers.svg",
            "Mean bytes per decode step by layer (-1: embedding and output)",
            "MiB",
            &cats,
            &groups,
            false,
        );

        let data = bundles
            .iter()
            .zip(&fin)
            .map(|(b, f)| {
                let layer = |ph: usize| {
                    f.layer[ph]
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.total() > 0)
                        .map(|(i, s)| json!({"layer": i as i64 - 1, "split": s}))
                        .collect::<Vec<_>>()
                };
                let op = |ph: usize| {
                    f.op[ph]
                        .iter()
                        .map(|(o, s)| json!({"op": crate::names::op(*o), "split": s}))
                        .collect::<Vec<_>>()
                };
                json!({
                    "bundle": b.label,
                    "bytes_per_decode_token": f.bytes_per_decode_token,
                    "steps": f.steps,
                    "by_layer": {"prefill": layer(0), "decode": layer(1)},
                    "by_op": {"prefill": op(0), "decode": op(1)},
                    "kv_pad": KV_PAD,
                })
            })
            .collect();

        Section {
            name: self.name().into(),
            title: self.title().into(),
            measured: "Bytes read per step (sum of record lengths plus activation operands), split into weights, KV cache, activations and embedding rows, for the prompt and every decode step, per layer and per op.".into(),
            check_title: "per decode step, weight bytes = sizes of the weights used in their buffers (GGUF, or AMX-packed), one embedding row per token, KV bytes = layers x 2 x padded n_kv x row bytes, and every traced step present".into(),
            checks: fin.into_iter().map(|f| f.check).collect(),
            tables,
            plots: vec![p1, p2],
            data,
        }
    }
}

/// Per-step figures of one bundle (for tests and callers that want them
/// without the report).
pub fn steps_of(b: &Bundle) -> (Vec<StepRow>, CheckOutcome) {
    let mut acc: Box<dyn Accumulator> = Box::new(TrafficAcc::new(b));
    super::pass::stream(b, std::slice::from_mut(&mut acc), false);
    let acc = acc
        .into_any()
        .downcast::<TrafficAcc>()
        .expect("traffic accumulator");
    let f = finish(b, *acc);
    (f.steps, f.check)
}
