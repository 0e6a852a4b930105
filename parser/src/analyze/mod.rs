//! `cktrace analyze`: memory-access experiments over one or two trace
//! bundles, written as `results.json` (schema in `docs/analyze.md`),
//! `results.md`, one SVG per plot and a self-contained `report.html`.
//!
//! The framework is small on purpose, so that later experiments (page cache,
//! cache lines, roofline, threads, experts) slot in beside the first three:
//!
//! - An [`Experiment`] names itself (its `--only` name), makes one
//!   [`Accumulator`] per bundle, and turns the finished accumulators of all
//!   bundles into one [`Section`]: a sentence saying what was measured, a
//!   [`CheckOutcome`] per bundle, tables, plots and the JSON data.
//! - [`pass::stream`] is the one streaming pass: it reads each bundle's
//!   records once, in file order, block by block (releasing the mapped pages
//!   as `parse --stats` does, so memory stays flat), and hands every record
//!   to every selected experiment's accumulator.
//! - [`report`] renders the sections (Markdown and HTML); [`plot`] draws
//!   with plotters' SVG backend.
//!
//! Accumulators keep state bounded by the model (tensors, layers, steps,
//! fixed histograms), never by the number of records.

pub mod bench;
pub mod file_order;
pub mod machine;
pub mod pass;
pub mod paths;
pub mod plot;
pub mod report;
pub mod traffic;

use std::any::Any;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cktrace_tracer::format::NO_ID;
use cktrace_tracer::{MemorySource, Meta, TensorKind, TraceRecord};
use serde::Serialize;

use crate::reader::Trace;

/// Version of the `results.json` schema; bumped on incompatible changes.
pub const RESULTS_VERSION: u32 = 1;
/// The `schema` field of `results.json`.
pub const RESULTS_SCHEMA: &str = "cktrace-analyze";

/// One experiment: how to accumulate a bundle and how to report bundles.
pub trait Experiment: Sync {
    /// The `--only` name (`traffic`, `paths`, `file-order`).
    fn name(&self) -> &'static str;
    /// Section title in the report.
    fn title(&self) -> &'static str;
    /// A fresh accumulator for one bundle.
    fn accumulator(&self, bundle: &Bundle) -> Box<dyn Accumulator>;
    /// The section, from the accumulators of every bundle (same order as
    /// `bundles`). Plots are written under `out` by the caller from
    /// [`Section::plots`].
    fn section(&self, bundles: &[Bundle], accs: Vec<Box<dyn Accumulator>>) -> Section;
}

/// Per-bundle state of one experiment, fed every complete record in file
/// order.
pub trait Accumulator: Send {
    fn observe(&mut self, r: &TraceRecord);
    /// For [`Experiment::section`] to get its concrete type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// The experiments, in report order.
pub fn experiments() -> Vec<Box<dyn Experiment>> {
    vec![
        Box::new(traffic::Traffic),
        Box::new(paths::Paths),
        Box::new(file_order::FileOrder),
    ]
}

/// Registry facts per tensor id, flattened for the per-record paths.
#[derive(Clone, Debug)]
pub struct TensorFacts {
    pub kind: Option<TensorKind>,
    pub gguf_offset: Option<u64>,
    pub bytes: u64,
    pub row_bytes: u64,
    /// Rows of one expert (dim 1) when the tensor has an expert dimension.
    pub rows_per_expert: u64,
    /// Experts (dim 2), 1 for a 2-D tensor.
    pub n_expert: u64,
    pub repacked: bool,
    /// Bytes of one row as it lies in the tensor's buffer (the GGUF
    /// `row_bytes`, except for a packed layout: AMX).
    pub buffer_row_bytes: u64,
}

/// One opened bundle and what every experiment needs to know about it.
pub struct Bundle {
    /// `A`, `B`: how tables and plots tell bundles apart.
    pub label: String,
    /// A short description: model file name and load options.
    pub title: String,
    pub trace: Trace,
    pub facts: Vec<TensorFacts>,
    /// End of the last weight in the GGUF file (the file size if the model
    /// file is readable and longer).
    pub file_len: u64,
    /// Size of the model file, if `meta.model_path` can be read here.
    pub model_file_len: Option<u64>,
}

impl Bundle {
    pub fn open(label: &str, dir: &Path) -> anyhow::Result<Bundle> {
        let trace = Trace::open(dir)?;
        Ok(Bundle::new(label, trace))
    }

    pub fn new(label: &str, trace: Trace) -> Bundle {
        let facts: Vec<TensorFacts> = trace
            .registry()
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ok = t.id as usize == i;
                let n_expert = if t.shape.len() >= 3 {
                    t.shape[2].max(1)
                } else {
                    1
                };
                TensorFacts {
                    kind: ok.then_some(t.kind),
                    gguf_offset: if ok { t.gguf_offset } else { None },
                    bytes: t.bytes,
                    row_bytes: t.row_bytes,
                    rows_per_expert: if n_expert > 1 { t.shape[1] } else { t.n_rows },
                    n_expert,
                    repacked: t.source == MemorySource::Repacked,
                    buffer_row_bytes: if t.n_rows > 0 && t.buffer_bytes.is_some() {
                        t.resident_bytes() / t.n_rows
                    } else {
                        t.row_bytes
                    },
                }
            })
            .collect();
        let weights_end = facts
            .iter()
            .filter_map(|f| f.gguf_offset.map(|o| o.saturating_add(f.bytes)))
            .max()
            .unwrap_or(0);
        let model_file_len = trace
            .meta()
            .and_then(|m| std::fs::metadata(&m.model_path).ok())
            .map(|m| m.len());
        let title = describe(trace.meta(), trace.dir());
        Bundle {
            label: label.to_string(),
            title,
            file_len: weights_end.max(model_file_len.unwrap_or(0)),
            model_file_len,
            trace,
            facts,
        }
    }

    /// Facts of a record's tensor, if its id resolves.
    #[inline]
    pub fn fact(&self, id: u32) -> Option<&TensorFacts> {
        if id == NO_ID {
            return None;
        }
        self.facts.get(id as usize).filter(|f| f.kind.is_some())
    }

    pub fn meta(&self) -> Option<&Meta> {
        self.trace.meta()
    }

    /// The tensor name of an id (`?` if it does not resolve).
    pub fn name(&self, id: u32) -> &str {
        self.trace
            .tensor(id)
            .map(|t| t.name.as_str())
            .unwrap_or("?")
    }
}

fn describe(meta: Option<&Meta>, dir: &Path) -> String {
    match meta {
        Some(m) => {
            let file = Path::new(&m.model_path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| m.model_path.clone());
            let mut opts = Vec::new();
            if !m.repack {
                opts.push("no repack");
            }
            if !m.mmap {
                opts.push("no mmap");
            }
            if !m.amx {
                opts.push("no AMX");
            }
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!(", {}", opts.join(", "))
            };
            format!("{file} ({}, {} threads{opts})", m.engine, m.threads)
        }
        None => dir.display().to_string(),
    }
}

/// Pass or fail of one experiment's check on one bundle.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckOutcome {
    pub bundle: String,
    pub passed: bool,
    /// Items compared (steps, nodes, records).
    pub checked: u64,
    pub failures: u64,
    /// One sentence: what agreed, or the first disagreement.
    pub detail: String,
}

impl CheckOutcome {
    pub fn new(bundle: &Bundle, checked: u64, failures: Vec<String>, ok_detail: String) -> Self {
        CheckOutcome {
            bundle: bundle.label.clone(),
            passed: failures.is_empty(),
            checked,
            failures: failures.len() as u64,
            detail: match failures.first() {
                None => ok_detail,
                Some(f) if failures.len() == 1 => f.clone(),
                Some(f) => format!("{f} (and {} more)", failures.len() - 1),
            },
        }
    }
}

/// A table: header and rows of cells, rendered to Markdown and HTML.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: impl Into<String>, header: &[&str]) -> Table {
        Table {
            caption: caption.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// A plot: an SVG document and the file it is written to.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    /// File name under the output directory (`traffic-steps.svg`).
    pub file: String,
    pub caption: String,
    #[serde(skip)]
    pub svg: String,
}

/// What one experiment reports.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub name: String,
    pub title: String,
    /// One sentence: what was measured.
    pub measured: String,
    /// What the check compares.
    pub check_title: String,
    pub checks: Vec<CheckOutcome>,
    /// Short key figures per bundle, for the summary and the Markdown.
    #[serde(skip)]
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    /// The experiment's figures, one object per bundle (schema per
    /// experiment in `docs/analyze.md`).
    pub data: Vec<serde_json::Value>,
}

impl Section {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Headline figures of one bundle, for the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BundleSummary {
    pub label: String,
    pub dir: String,
    pub title: String,
    pub model: String,
    pub arch: String,
    pub engine: String,
    pub threads: u32,
    pub repack: bool,
    pub mmap: bool,
    pub records: u64,
    pub steps: u64,
    pub machine: Option<cktrace_tracer::Machine>,
    pub warnings: Vec<String>,
    /// Filled in by the experiments that compute them.
    pub kernel_paths: Vec<String>,
    pub bytes_per_decode_token: Option<u64>,
    pub sequential_fraction: Option<f64>,
}

/// The whole `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub schema: &'static str,
    pub version: u32,
    pub cktrace_version: &'static str,
    pub bundles: Vec<BundleSummary>,
    pub experiments: Vec<Section>,
    /// True when every check of every experiment passed.
    pub passed: bool,
    /// Seconds of the streaming pass per bundle, and bytes scanned.
    pub timing: Vec<PassTiming>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PassTiming {
    pub bundle: String,
    pub bytes: u64,
    pub records: u64,
    pub seconds: f64,
}

/// Parse `--only a,b`: every name must be an experiment's.
pub fn select(only: &[String]) -> anyhow::Result<Vec<Box<dyn Experiment>>> {
    let all = experiments();
    if only.is_empty() {
        return Ok(all);
    }
    let names: Vec<&str> = all.iter().map(|e| e.name()).collect();
    let mut want = Vec::new();
    for o in only.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if o.is_empty() {
            continue;
        }
        if !names.contains(&o) {
            bail!(
                "--only: unknown experiment '{o}' (known: {})",
                names.join(", ")
            );
        }
        if !want.contains(&o) {
            want.push(o);
        }
    }
    Ok(all
        .into_iter()
        .filter(|e| want.contains(&e.name()))
        .collect())
}

/// Run `exps` over `bundles` and return the results (no files written).
pub fn analyze(bundles: &[Bundle], exps: &[Box<dyn Experiment>], progress: bool) -> Results {
    let mut per_exp: Vec<Vec<Box<dyn Accumulator>>> = exps.iter().map(|_| Vec::new()).collect();
    let mut timing = Vec::new();
    for b in bundles {
        let mut accs: Vec<Box<dyn Accumulator>> = exps.iter().map(|e| e.accumulator(b)).collect();
        let t = std::time::Instant::now();
        let n = pass::stream(b, &mut accs, progress);
        timing.push(PassTiming {
            bundle: b.label.clone(),
            bytes: b.trace.data_len(),
            records: n,
            seconds: t.elapsed().as_secs_f64(),
        });
        for (i, a) in accs.into_iter().enumerate() {
            per_exp[i].push(a);
        }
    }
    let sections: Vec<Section> = exps
        .iter()
        .zip(per_exp)
        .map(|(e, accs)| e.section(bundles, accs))
        .collect();
    let mut summaries: Vec<BundleSummary> = bundles.iter().map(summary).collect();
    for s in &sections {
        for (i, d) in s.data.iter().enumerate() {
            let Some(sum) = summaries.get_mut(i) else {
                continue;
            };
            if let Some(v) = d.get("bytes_per_decode_token").and_then(|v| v.as_u64()) {
                sum.bytes_per_decode_token = Some(v);
            }
            if let Some(v) = d.get("sequential_fraction").and_then(|v| v.as_f64()) {
                sum.sequential_fraction = Some(v);
            }
            if let Some(v) = d.get("kernel_paths").and_then(|v| v.as_array()) {
                sum.kernel_paths = v
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect();
            }
        }
    }
    let passed = sections.iter().all(|s| s.passed());
    Results {
        schema: RESULTS_SCHEMA,
        version: RESULTS_VERSION,
        cktrace_version: env!("CARGO_PKG_VERSION"),
        bundles: summaries,
        experiments: sections,
        passed,
        timing,
    }
}

fn summary(b: &Bundle) -> BundleSummary {
    let m = b.meta();
    BundleSummary {
        label: b.label.clone(),
        dir: b.trace.dir().display().to_string(),
        title: b.title.clone(),
        model: m.map(|m| m.model_path.clone()).unwrap_or_default(),
        arch: m.map(|m| m.arch.clone()).unwrap_or_default(),
        engine: m.map(|m| m.engine.clone()).unwrap_or_else(|| {
            cktrace_tracer::Engine::from_u8(b.trace.header().engine as u8)
                .map(|e| e.as_str().to_string())
                .unwrap_or_default()
        }),
        threads: m.map(|m| m.threads).unwrap_or(b.trace.header().n_threads),
        repack: m.is_some_and(|m| m.repack),
        mmap: m.is_some_and(|m| m.mmap),
        records: b.trace.slot_count() as u64,
        steps: m.map(|m| m.step_tokens.len() as u64).unwrap_or(0),
        machine: m.and_then(|m| m.machine.clone()),
        warnings: b.trace.warnings().to_vec(),
        ..Default::default()
    }
}

/// Write `results.json`, `results.md`, the SVGs and `report.html` into
/// `out` (created). Returns the paths written.
pub fn write_outputs(results: &Results, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("{}: cannot write", p.display()))?;
        written.push(p);
        Ok(())
    };
    put(
        "results.json",
        &serde_json::to_vec_pretty(results).context("serializing results")?,
    )?;
    put("results.md", report::markdown(results).as_bytes())?;
    for s in &results.experiments {
        for p in &s.plots {
            put(&p.file, p.svg.as_bytes())?;
        }
    }
    put("report.html", report::html(results).as_bytes())?;
    Ok(written)
}

/// `1536` -> `1.50 KiB` (for tables).
pub(crate) fn bytes(n: u64) -> String {
    crate::names::bytes(n)
}

/// `part / whole` as a percentage with one decimal, `-` when whole is 0.
pub(crate) fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "-".into()
    } else {
        format!("{:.1}%", part * 100.0 / whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Bundle as TestBundle;
    use cktrace_tracer::Op;

    fn run(b: &TestBundle, only: &str) -> Results {
        let bundle = Bundle::open("A", b.path()).unwrap();
        let exps = select(&[only.to_string()]).unwrap();
        analyze(std::slice::from_ref(&bundle), &exps, false)
    }

    fn check(r: &Results) -> &CheckOutcome {
        &r.experiments[0].checks[0]
    }

    #[test]
    fn select_names() {
        assert_eq!(select(&[]).unwrap().len(), 3);
        let s = select(&["file-order,paths".into()]).unwrap();
        let names: Vec<&str> = s.iter().map(|e| e.name()).collect();
        assert_eq!(names, ["paths", "file-order"]);
        let e = select(&["nope".into()]).err().unwrap().to_string();
        assert!(
            e.contains("unknown experiment 'nope'") && e.contains("traffic"),
            "{e}"
        );
    }

    #[test]
    fn paths_check_passes_then_fails_on_a_wrong_buffer_type() {
        let mut b = TestBundle::small();
        // The synthetic decode steps read even layers through CPU_REPACK:
        // say so in the registry, as the real tracer does, and let their
        // prompt batches take the repack gemm too.
        let mut repacked = Vec::new();
        for t in b.reg.tensors.iter_mut() {
            if t.kind == TensorKind::Weight && t.layer.is_some_and(|l| l % 2 == 0) {
                t.buffer_type = "CPU_REPACK".into();
                t.source = MemorySource::Repacked;
                repacked.push(t.id);
            }
        }
        for r in b.recs.iter_mut() {
            if repacked.contains(&r.tensor_id)
                && r.path == cktrace_tracer::KernelPath::Llamafile as u8
            {
                r.path = cktrace_tracer::KernelPath::RepackGemm as u8;
            }
        }
        b.write();
        let r = run(&b, "paths");
        assert!(check(&r).passed, "{}", check(&r).detail);
        // Layer 1 is read through vec_dot in the synthetic decode steps;
        // claim it sits in an extra buffer type.
        let t = b
            .reg
            .tensors
            .iter_mut()
            .find(|t| t.name == "blk.1.attn_q.weight")
            .unwrap();
        t.buffer_type = "CPU_REPACK".into();
        b.write();
        let r = run(&b, "paths");
        assert!(!check(&r).passed);
        assert!(
            check(&r).detail.contains("blk.1.attn_q.weight"),
            "{}",
            check(&r).detail
        );
    }

    #[test]
    fn file_order_check_passes_then_fails_on_a_shifted_offset() {
        let mut b = TestBundle::small();
        let r = run(&b, "file-order");
        assert!(check(&r).passed, "{}", check(&r).detail);
        let d = &r.experiments[0].data[0];
        assert_eq!(d["mapped_bytes"], d["weight_bytes"]);
        let f = d["sequential_fraction"].as_f64().unwrap();
        assert!(f > 0.0 && f <= 1.0);
        let t = b
            .reg
            .tensors
            .iter_mut()
            .find(|t| t.name == "blk.0.attn_k.weight")
            .unwrap();
        t.gguf_offset = t.gguf_offset.map(|o| o + 100);
        b.write();
        let r = run(&b, "file-order");
        assert!(!check(&r).passed);
        assert!(check(&r).detail.contains("overlap"), "{}", check(&r).detail);
    }

    #[test]
    fn file_order_maps_repacked_rows_through_the_registry() {
        // Repacked reads carry offsets in the repacked buffer; mapped through
        // rows they still add up to the weight bytes.
        let mut b = TestBundle::small();
        for t in b
            .reg
            .tensors
            .iter_mut()
            .filter(|t| t.name.contains("blk.0."))
        {
            if t.kind == TensorKind::Weight {
                t.source = MemorySource::Repacked;
            }
        }
        for r in b
            .recs
            .iter_mut()
            .filter(|r| r.layer == 0 && r.op == Op::MulMat as u8)
        {
            r.offset += 1 << 40; // nonsense in file terms
        }
        b.write();
        let r = run(&b, "file-order");
        // (The KV reads of layer 0 moved too; file-order maps weights only.)
        assert!(check(&r).passed, "{}", check(&r).detail);
    }

    #[test]
    fn packed_buffers_are_counted_as_read() {
        // AMX packs a weight's rows larger than the GGUF layout: the records
        // carry the packed bytes, the registry the packed size. Traffic holds
        // the reads to the packed size, file-order maps them through rows.
        let mut b = TestBundle::small();
        let mut packed = std::collections::HashMap::new();
        for t in b
            .reg
            .tensors
            .iter_mut()
            .filter(|t| t.kind == TensorKind::Weight && t.layer == Some(0) && t.n_rows > 0)
        {
            t.source = MemorySource::Repacked;
            t.buffer_type = "AMX".into();
            t.buffer_bytes = Some(t.n_rows * (t.row_bytes + 4));
            packed.insert(t.id, t.row_bytes + 4);
        }
        assert!(!packed.is_empty());
        for r in b.recs.iter_mut().filter(|r| r.op == Op::MulMat as u8) {
            if let Some(&row) = packed.get(&r.tensor_id) {
                r.len = (r.row1 - r.row0) as u64 * row;
            }
        }
        b.write();
        // (The synthetic KV reads do not follow llama.cpp's padding, so
        // traffic is held to its weight figures only.)
        let weights_hold = |b: &TestBundle| {
            let bundle = Bundle::open("A", b.path()).unwrap();
            let (steps, _) = traffic::steps_of(&bundle);
            steps
                .iter()
                .filter(|s| s.phase == "decode")
                .all(|s| s.split.weights == s.expected_weights)
        };
        assert!(weights_hold(&b));
        let r = run(&b, "file-order");
        assert!(check(&r).passed, "{}", check(&r).detail);
        let d = &r.experiments[0].data[0];
        assert_eq!(d["mapped_bytes"], d["weight_bytes_file_layout"]);
        assert!(d["weight_bytes"].as_u64() > d["mapped_bytes"].as_u64());

        // The registry without the packed size: traffic sees more bytes read
        // than the weights hold, file-order reads that are not whole rows.
        let saved = b.reg.clone();
        for t in b.reg.tensors.iter_mut() {
            t.buffer_bytes = None;
        }
        b.write();
        assert!(!weights_hold(&b));
        let r = run(&b, "traffic");
        assert!(
            check(&r).detail.contains("weight bytes read"),
            "{}",
            check(&r).detail
        );
        let r = run(&b, "file-order");
        assert!(!check(&r).passed);
        assert!(
            check(&r).detail.contains("not whole rows of their buffer"),
            "{}",
            check(&r).detail
        );
        b.reg = saved;
        b.write();
        assert!(weights_hold(&b));
    }

    #[test]
    fn traffic_weights_and_steps() {
        let mut b = TestBundle::small();
        let bundle = Bundle::open("A", b.path()).unwrap();
        let (steps, _) = traffic::steps_of(&bundle);
        assert_eq!(steps.len(), 3);
        for s in steps.iter().filter(|s| s.phase == "decode") {
            assert_eq!(s.split.weights, s.expected_weights, "step {}", s.step);
            assert_eq!(s.embedding_rows_read, 1);
        }
        // A decode step missing: the check names it.
        b.recs.retain(|r| r.step != 1);
        b.write();
        let r = run(&b, "traffic");
        assert!(!check(&r).passed);
        assert!(
            check(&r)
                .detail
                .contains("step 1 was traced but has no records"),
            "{}",
            check(&r).detail
        );
    }

    #[test]
    fn outputs_are_written_and_self_contained() {
        let b = TestBundle::small();
        let b2 = TestBundle::small();
        let bundles = vec![
            Bundle::open("A", b.path()).unwrap(),
            Bundle::open("B", b2.path()).unwrap(),
        ];
        let r = analyze(&bundles, &experiments(), false);
        let out = tempfile::tempdir().unwrap();
        let files = write_outputs(&r, out.path()).unwrap();
        assert!(files.iter().any(|f| f.ends_with("report.html")));
        let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
        assert!(!html.contains("http:") && !html.contains("https:"));
        for id in ["summary", "traffic", "paths", "file-order"] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap())
                .unwrap();
        assert_eq!(v["version"], RESULTS_VERSION);
        assert_eq!(v["bundles"].as_array().unwrap().len(), 2);
        for e in v["experiments"].as_array().unwrap() {
            assert_eq!(e["checks"].as_array().unwrap().len(), 2);
            assert_eq!(e["data"].as_array().unwrap().len(), 2);
            for p in e["plots"].as_array().unwrap() {
                let f = out.path().join(p["file"].as_str().unwrap());
                let svg = std::fs::read_to_string(f).unwrap();
                assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
            }
        }
        let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
        assert!(md.contains("| A |") && md.contains("| B |"));
    }
}
