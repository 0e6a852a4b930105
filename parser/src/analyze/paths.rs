//! `paths`: the kernel-path census (which path read which tensors, per
//! tensor type and buffer type), and what the naive approach would have
//! recorded of it: one hook in the generic `ggml_compute_forward_mul_mat`,
//! logging on thread 0 only. Such a hook sees what thread 0 computed of the
//! tensors that reach that function (the paths inside it: the `vec_dot`
//! chunk loop, and the llamafile and tiled kernels it hands batches to), and
//! nothing of repacked tensors (computed by the extra buffer type before
//! the generic function is reached), `get_rows` (the embedding) or
//! `mul_mat_id`.
//!
//! The check is a cross-check of two independent sources: the naive hook's
//! "would have seen" set predicted from the registry (a weight read by a
//! `mul_mat` reaches the generic function exactly when its buffer is not an
//! extra buffer type) must equal the weights whose records carry a path of
//! the generic function, with no weight read partly through it.

use std::any::Any;
use std::collections::BTreeMap;

use cktrace_tracer::{KernelPath, MemorySource, Op, TensorKind, TraceRecord};
use serde::Serialize;
use serde_json::json;

use super::plot;
use super::{bytes, pct, Accumulator, Bundle, CheckOutcome, Experiment, Section, Table};

pub struct Paths;

/// The kernel paths inside `ggml_compute_forward_mul_mat`: its chunk loop
/// and the kernels it hands a whole op to.
pub const GENERIC_FN: [u8; 3] = [
    KernelPath::VecDot as u8,
    KernelPath::Llamafile as u8,
    KernelPath::Tiled as u8,
];

/// Per tensor: what read it, by path.
#[derive(Clone, Default)]
struct TensorAcc {
    /// Bit per path code (< 63), bit 63 for any other code.
    paths: u64,
    records: u64,
    bytes: u64,
    /// Bytes read through the generic function (any thread / thread 0).
    generic_bytes: u64,
    generic_t0_bytes: u64,
    /// `mul_mat` records, and those on a path of the generic function.
    mm: u64,
    mm_generic: u64,
}

struct PathsAcc {
    tensors: Vec<TensorAcc>,
    /// Per path code: records, bytes.
    by_path: BTreeMap<u8, (u64, u64)>,
    unresolved: u64,
}

fn bit(code: u8) -> u64 {
    if code < 63 {
        1 << code
    } else {
        1 << 63
    }
}

impl Accumulator for PathsAcc {
    #[inline]
    fn observe(&mut self, r: &TraceRecord) {
        let e = self.by_path.entry(r.path).or_default();
        e.0 += 1;
        e.1 += r.len;
        let Some(t) = self.tensors.get_mut(r.tensor_id as usize) else {
            self.unresolved += 1;
            return;
        };
        t.paths |= bit(r.path);
        t.records += 1;
        t.bytes += r.len;
        let generic = GENERIC_FN.contains(&r.path);
        if generic {
            t.generic_bytes += r.len;
            if r.thread == 0 {
                t.generic_t0_bytes += r.len;
            }
        }
        if r.op == Op::MulMat as u8 {
            t.mm += 1;
            t.mm_generic += generic as u64;
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Whether a buffer type is one of ggml's CPU extra buffer types (the
/// weights in it are computed before the generic function is reached).
pub fn is_extra_buffer(buffer_type: &str) -> bool {
    !(buffer_type.is_empty()
        || buffer_type == "CPU"
        || buffer_type.ends_with("_Mapped")
        || buffer_type.ends_with("_Host"))
}

fn path_names(mask: u64) -> Vec<String> {
    (0..64u8)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            if b == 63 {
                "unknown".to_string()
            } else {
                crate::names::path(b).into_owned()
            }
        })
        .collect()
}

/// `[0,1,2,5,7,8]` -> `0-2, 5, 7-8`.
pub fn ranges(v: &[i64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// The role of a weight: `blk.3.attn_v.weight` -> `attn_v`.
pub(crate) fn role(name: &str) -> String {
    let n = name.strip_suffix(".weight").unwrap_or(name);
    match n.strip_prefix("blk.") {
        Some(rest) => rest
            .split_once('.')
            .map(|x| x.1)
            .unwrap_or(rest)
            .to_string(),
        None => n.to_string(),
    }
}

#[derive(Serialize)]
struct CensusRow {
    dtype: String,
    buffer_type: String,
    kind: String,
    paths: Vec<String>,
    tensors: u64,
    records: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct RoleRow {
    role: String,
    dtypes: Vec<String>,
    paths: Vec<String>,
    layers: Vec<i64>,
    seen_layers: Vec<i64>,
    missed_layers: Vec<i64>,
    bytes: u64,
    seen_bytes: u64,
}

struct Finished {
    census: Vec<CensusRow>,
    roles: Vec<RoleRow>,
    by_path: BTreeMap<u8, (u64, u64)>,
    check: CheckOutcome,
    seen_bytes: u64,
    weight_bytes: u64,
    kernel_paths: Vec<String>,
}

fn finish(b: &Bundle, acc: PathsAcc) -> Finished {
    let reg = &b.trace.registry().tensors;
    let mut census: BTreeMap<(String, String, String, u64), CensusRow> = BTreeMap::new();
    let mut roles: BTreeMap<String, RoleRow> = BTreeMap::new();
    let mut fails = Vec::new();
    let mut checked = 0u64;
    let mut generic_weights = 0u64;
    let (mut seen_bytes, mut weight_bytes) = (0u64, 0u64);
    let mut tensor_paths: BTreeMap<String, u64> = BTreeMap::new();
    for (i, t) in acc.tensors.iter().enumerate() {
        if t.records == 0 {
            continue;
        }
        let Some(info) = reg.get(i).filter(|x| x.id as usize == i) else {
            continue;
        };
        let kind = crate::names::kind(info.kind).to_string();
        let c = census
            .entry((
                info.dtype.clone(),
                info.buffer_type.clone(),
                kind.clone(),
                t.paths,
            ))
            .or_insert_with(|| CensusRow {
                dtype: info.dtype.clone(),
                buffer_type: info.buffer_type.clone(),
                kind,
                paths: path_names(t.paths),
                tensors: 0,
                records: 0,
                bytes: 0,
            });
        c.tensors += 1;
        c.records += t.records;
        c.bytes += t.bytes;
        if info.kind != TensorKind::Weight {
            continue;
        }
        *tensor_paths
            .entry(path_names(t.paths).join("+"))
            .or_default() += 1;
        weight_bytes += t.bytes;
        seen_bytes += t.generic_t0_bytes;
        let layer = info.layer.map(|l| l as i64).unwrap_or(-1);
        let r = roles.entry(role(&info.name)).or_insert_with(|| RoleRow {
            role: role(&info.name),
            dtypes: Vec::new(),
            paths: Vec::new(),
            layers: Vec::new(),
            seen_layers: Vec::new(),
            missed_layers: Vec::new(),
            bytes: 0,
            seen_bytes: 0,
        });
        if !r.dtypes.contains(&info.dtype) {
            r.dtypes.push(info.dtype.clone());
        }
        for p in path_names(t.paths) {
            if !r.paths.contains(&p) {
                r.paths.push(p);
            }
        }
        r.layers.push(layer);
        if t.generic_t0_bytes > 0 {
            r.seen_layers.push(layer);
        } else {
            r.missed_layers.push(layer);
        }
        r.bytes += t.bytes;
        r.seen_bytes += t.generic_t0_bytes;

        // The check: registry prediction against the records' path codes.
        if t.mm > 0 {
            checked += 1;
            let predicted =
                info.source != MemorySource::Repacked && !is_extra_buffer(&info.buffer_type);
            let actual_all = t.mm_generic == t.mm;
            let actual_none = t.mm_generic == 0;
            generic_weights += actual_all as u64;
            if predicted && !actual_all {
                fails.push(format!(
                    "{} ({} in {}): predicted to reach the generic mul_mat, but {} of its {} mul_mat records took {}",
                    info.name,
                    info.dtype,
                    info.buffer_type,
                    t.mm - t.mm_generic,
                    t.mm,
                    path_names(GENERIC_FN.iter().fold(t.paths, |m, p| m & !bit(*p))).join("+")
                ));
            } else if !predicted && !actual_none {
                fails.push(format!(
                    "{} ({} in {}, {}): an extra buffer type, yet {} of its mul_mat records took a path of the generic mul_mat",
                    info.name,
                    info.dtype,
                    info.buffer_type,
                    crate::names::source(info.source),
                    t.mm_generic
                ));
            }
        }
    }
    if checked == 0 {
        fails.push("no weight read by a mul_mat: nothing to check".into());
    }
    let check = CheckOutcome::new(
        b,
        checked,
        fails,
        format!(
            "{checked} weights read by mul_mat: the registry's buffer types predict exactly the {generic_weights} that reached the generic mul_mat"
        ),
    );
    let mut census: Vec<CensusRow> = census.into_values().collect();
    census.sort_by_key(|c| std::cmp::Reverse(c.bytes));
    let mut roles: Vec<RoleRow> = roles.into_values().collect();
    for r in &mut roles {
        r.layers.sort_unstable();
        r.seen_layers.sort_unstable();
        r.missed_layers.sort_unstable();
    }
    roles.sort_by_key(|r| (r.layers.first().copied().unwrap_or(-1) < 0, r.role.clone()));
    let kernel_paths = tensor_paths
        .iter()
        .map(|(p, n)| format!("{p}: {n} weights"))
        .collect();
    Finished {
        census,
        roles,
        by_path: acc.by_path,
        check,
        seen_bytes,
        weight_bytes,
        kernel_paths,
    }
}

impl Experiment for Paths {
    fn name(&self) -> &'static str {
        "paths"
    }

    fn title(&self) -> &'static str {
        "Kernel paths, and what a one-function hook would have seen"
    }

    fn accumulator(&self, bundle: &Bundle) -> Box<dyn Accumulator> {
        Box::new(PathsAcc {
            tensors: vec![TensorAcc::default(); bundle.trace.registry().tensors.len()],
            by_path: BTreeMap::new(),
            unresolved: 0,
        })
    }

    fn section(&self, bundles: &[Bundle], accs: Vec<Box<dyn Accumulator>>) -> Section {
        let fin: Vec<Finished> = bundles
            .iter()
            .zip(accs)
            .map(|(b, a)| {
                finish(
                    b,
                    *a.into_any()
                        .downcast::<PathsAcc>()
                        .expect("paths accumulator"),
                )
            })
            .collect();
        let mut tables = Vec::new();
        let mut t = Table::new(
            "Kernel-path census: tensors by type, buffer type and the paths that read them",
            &[
                "bundle",
                "dtype",
                "buffer type",
                "kind",
                "paths",
                "tensors",
                "records",
                "bytes",
            ],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for c in &f.census {
                t.row(vec![
                    b.label.clone(),
                    c.dtype.clone(),
                    c.buffer_type.clone(),
                    c.kind.clone(),
                    c.paths.join("+"),
                    c.tensors.to_string(),
                    c.records.to_string(),
                    bytes(c.bytes),
                ]);
            }
        }
        tables.push(t);
        let mut t = Table::new(
            "What a hook in the generic ggml_compute_forward_mul_mat on thread 0 would have recorded, per weight role",
            &["bundle", "weight", "dtype", "paths", "layers seen", "layers missed", "bytes seen"],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for r in &f.roles {
                t.row(vec![
                    b.label.clone(),
                    r.role.clone(),
                    r.dtypes.join(", "),
                    r.paths.join("+"),
                    ranges(&r.seen_layers),
                    ranges(&r.missed_layers),
                    pct(r.seen_bytes as f64, r.bytes as f64),
                ]);
            }
            t.row(vec![
                b.label.clone(),
                "all weights".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!(
                    "{} of {} ({})",
                    bytes(f.seen_bytes),
                    bytes(f.weight_bytes),
                    pct(f.seen_bytes as f64, f.weight_bytes as f64)
                ),
            ]);
        }
        tables.push(t);
        let mut t = Table::new(
            "Records and bytes by kernel path",
            &["bundle", "path", "records", "bytes"],
        );
        for (b, f) in bundles.iter().zip(&fin) {
            for (p, (n, by)) in &f.by_path {
                t.row(vec![
                    b.label.clone(),
                    crate::names::path(*p).into_owned(),
                    n.to_string(),
                    bytes(*by),
                ]);
            }
        }
        tables.push(t);

        let mut all_paths: Vec<u8> = fin.iter().flat_map(|f| f.by_path.keys().copied()).collect();
        all_paths.sort_unstable();
        all_paths.dedup();
        let cats: Vec<String> = all_paths
            .iter()
            .map(|p| crate::names::path(*p).into_owned())
            .collect();
        let groups: Vec<(String, Vec<f64>)> = bundles
            .iter()
            .zip(&fin)
            .map(|(b, f)| {
                (
                    b.label.clone(),
                    all_paths
                        .iter()
                        .map(|p| {
                            f.by_path.get(p).map(|x| x.1).unwrap_or(0) as f64 / (1u64 << 20) as f64
                        })
                        .collect(),
                )
            })
            .collect();
        let p1 = plot::bars(
            "paths-bytes.svg",
            "Bytes read by kernel path",
            "MiB",
            &cats,
            &groups,
            false,
        );
        let data = bundles
            .iter()
            .zip(&fin)
            .map(|(b, f)| {
                json!({
                    "bundle": b.label,
                    "kernel_paths": f.kernel_paths,
                    "census": f.census,
                    "naive_hook": {
                        "hook": "generic ggml_compute_forward_mul_mat (vec_dot, llamafile, tiled), thread 0 only",
                        "roles": f.roles,
                        "seen_bytes": f.seen_bytes,
                        "weight_bytes": f.weight_bytes,
                    },
                    "by_path": f.by_path.iter().map(|(p, (n, by))| json!({"path": crate::names::path(*p), "records": n, "bytes": by})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Section {
            name: self.name().into(),
            title: self.title().into(),
            measured: "Which kernel path read each tensor (per tensor type and buffer type), and which weights and layers a hook in the generic ggml_compute_forward_mul_mat on thread 0 would have recorded or missed.".into(),
            check_title: "the weights the registry's buffer types predict to reach the generic mul_mat are exactly those whose mul_mat records carry its paths (vec_dot, llamafile, tiled)".into(),
            checks: fin.into_iter().map(|f| f.check).collect(),
            tables,
            plots: vec![p1],
            data,
        }
    }
}
