//! Consistency checks of a trace, each a pass/fail with a failure count and
//! one example:
//!
//! - `registry`: every record's `tensor_id` (and `act_id`, when set)
//!   resolves in the registry, and the record's truncated name is a prefix
//!   of the registry name: the name the hook saw ("Path A") agrees with the
//!   tensor the registry says it is ("Path B").
//! - `monotonic`: per thread, timestamps never go backwards in file order.
//!   Threads flush their records in batches, so records of different
//!   threads interleave in the file, but each thread's own records keep
//!   their order.
//! - `tiling`: the `mul_mat` / `mul_mat_id` records of one node (grouped by
//!   step, node and expert) cover the node's output exactly once. For
//!   `mul_mat`, the rectangles rows `[row0,row1)` x columns `[col0,col1)`
//!   must tile `[0,R) x [0,C)` with no overlap and no gap, where R is the
//!   registry `n_rows` of a weight (for other tensors, such as KV-cache
//!   views, the largest `row1` seen) and C the largest `col1` seen. For
//!   `mul_mat_id` an expert may compute a subset of the columns, so only
//!   overlap is checked. Records flagged `OP_LEVEL` are not chunk reads and
//!   are left out.
//! - `complete`: the writer dropped nothing and every reserved slot was
//!   completed (no slot without `VALID`, no slot cut off by the file's end).
//!
//! A trace that was not finished (its writer killed, or still running) is
//! checked as what it is: the header says which steps are done
//! (`steps_done`, `steps_done_slots`); those are checked as above, and the
//! records of the step in flight are reported as a partial step, counted
//! and not checked (its nodes are cut, and its runtime tensors may not be
//! in registry.json yet).
//!
//! Validation always covers the whole trace: a filter would cut nodes in
//! half and make tiling fail.

use std::collections::HashMap;
use std::io::{self, Write};

use cktrace_tracer::format::{flags, NAME_LEN, NO_ID};
use cktrace_tracer::{Op, TensorKind, TraceRecord};
use serde::Serialize;

use crate::export::Row;
use crate::reader::Trace;
use crate::tiling::{self, Rect};

/// Which check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    Registry,
    Monotonic,
    Tiling,
    Complete,
}

impl CheckId {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::Registry => "registry",
            CheckId::Monotonic => "monotonic",
            CheckId::Tiling => "tiling",
            CheckId::Complete => "complete",
        }
    }
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failing item, as an example.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Example {
    /// Slot index of the record in `trace.bin`.
    pub slot: u64,
    pub message: String,
    /// The record, decoded (absent when the slot is not readable).
    pub record: Option<Row<'static>>,
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub id: CheckId,
    /// What the check verifies.
    pub title: &'static str,
    pub passed: bool,
    /// Items checked: records, or nodes for `tiling`, or slots for `complete`.
    pub checked: u64,
    /// Items that failed.
    pub failures: u64,
    pub example: Option<Example>,
}

/// The unfinished last step of a trace whose writer did not finish it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partial {
    /// Steps the header marks complete (all checked).
    pub steps_done: u32,
    /// First slot of the unfinished step.
    pub first_slot: u64,
    /// Records of the unfinished step that reached the file (not checked).
    pub records: u64,
}

/// All checks of one trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub dir: String,
    pub checks: Vec<Check>,
    /// Set for a trace that was not finished: its completed steps are
    /// checked, the step in flight is only counted.
    pub partial: Option<Partial>,
}

struct CheckAcc {
    checked: u64,
    failures: u64,
    example: Option<(u64, String)>,
}

impl CheckAcc {
    fn new() -> CheckAcc {
        CheckAcc {
            checked: 0,
            failures: 0,
            example: None,
        }
    }

    fn fail(&mut self, slot: u64, msg: impl FnOnce() -> String) {
        self.failures = self.failures.saturating_add(1);
        if self.example.is_none() {
            self.example = Some((slot, msg()));
        }
    }
}

struct Group {
    tensor_id: u32,
    first_slot: u64,
    mixed: Option<(u64, u32)>,
    is_id: bool,
    rects: Vec<Rect>,
}

fn name_bytes(r: &TraceRecord) -> &[u8] {
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    &r.name[..end]
}

impl Validation {
    /// Run every check over the whole trace.
    pub fn run(trace: &Trace) -> Validation {
        let mut reg = CheckAcc::new();
        let mut mono = CheckAcc::new();
        let mut last_t: Vec<Option<(u64, u64)>> = Vec::new();
        let mut groups: HashMap<(u32, u64, i32), Group> = HashMap::new();
        let n_tensors = trace.registry().tensors.len();

        let partial_from = trace.partial_from().unwrap_or(usize::MAX);
        let mut partial_records = 0u64;
        for (slot, r) in trace.records().with_slots() {
            if slot >= partial_from {
                partial_records += 1;
                continue;
            }
            let slot = slot as u64;
            // (a) registry ids and names.
            reg.checked += 1;
            match trace.tensor(r.tensor_id) {
                None => reg.fail(slot, || {
                    if r.tensor_id == NO_ID {
                        format!("record of '{}' has no tensor_id (not registered)", r.name_str())
                    } else {
                        format!(
                            "tensor_id {} of '{}' does not resolve (registry has {n_tensors} tensors)",
                            r.tensor_id,
                            r.name_str()
                        )
                    }
                }),
                Some(t) => {
                    let rn = name_bytes(&r);
                    let agrees = t.name.as_bytes().starts_with(rn) && (!rn.is_empty() || t.name.is_empty());
                    if !agrees {
                        reg.fail(slot, || {
                            format!(
                                "record name '{}' is not a prefix of registry name '{}' (tensor_id {})",
                                String::from_utf8_lossy(rn),
                                t.name,
                                r.tensor_id
                            )
                        });
                    } else if r.act_id != NO_ID && trace.tensor(r.act_id).is_none() {
                        reg.fail(slot, || {
                            format!("act_id {} does not resolve (registry has {n_tensors} tensors)", r.act_id)
                        });
                    }
                }
            }

            // (b) per-thread monotonic timestamps.
            mono.checked += 1;
            let th = r.thread as usize;
            if th >= last_t.len() {
                last_t.resize(th + 1, None);
            }
            if let Some((prev_t, prev_slot)) = last_t[th] {
                if r.t_ns < prev_t {
                    mono.fail(slot, || {
                        format!(
                            "thread {} goes back in time: t_ns {} after {} (slot {prev_slot})",
                            r.thread, r.t_ns, prev_t
                        )
                    });
                }
            }
            last_t[th] = Some((r.t_ns, slot));

            // (c) collect matmul rectangles.
            let is_mm = r.op == Op::MulMat as u8;
            let is_id = r.op == Op::MulMatId as u8;
            if (is_mm || is_id) && r.flags & flags::OP_LEVEL == 0 {
                let g = groups
                    .entry((r.step, r.node, r.expert))
                    .or_insert_with(|| Group {
                        tensor_id: r.tensor_id,
                        first_slot: slot,
                        mixed: None,
                        is_id: false,
                        rects: Vec::new(),
                    });
                g.is_id |= is_id;
                if g.tensor_id != r.tensor_id && g.mixed.is_none() {
                    g.mixed = Some((slot, r.tensor_id));
                }
                g.rects
                    .push(Rect::new(r.row0, r.row1, r.col0, r.col1, slot));
            }
        }

        // (c) tiling, per group, examples from the earliest failing group.
        let mut tiling = CheckAcc::new();
        let mut keys: Vec<_> = groups.iter().map(|(k, g)| (g.first_slot, *k)).collect();
        keys.sort_unstable();
        for (_, key) in keys {
            let Some(g) = groups.get_mut(&key) else {
                continue;
            };
            tiling.checked += 1;
            if let Err((slot, msg)) = check_group(trace, key, g) {
                tiling.fail(slot, || msg);
            }
        }

        // (d) completeness.
        let mut complete = CheckAcc::new();
        let h = trace.header();
        complete.checked = h.records;
        if h.dropped != 0 {
            complete.failures = complete.failures.saturating_add(h.dropped);
            complete.example.get_or_insert((
                h.records,
                format!(
                    "the writer dropped {} records (capacity {} exhausted)",
                    h.dropped, h.capacity
                ),
            ));
        }
        let readable = trace.slot_count();
        let checked_slots = readable.min(partial_from);
        if partial_from != usize::MAX {
            complete.checked = checked_slots as u64;
        }
        for i in 0..checked_slots {
            // A record, or padding that filled the rest of a page written
            // whole (flag PAD, never with VALID).
            let valid = trace
                .slot_bytes(i)
                .map(|b| crate::reader::is_valid(b) || crate::reader::is_padding(b))
                .unwrap_or(false);
            if !valid {
                complete.fail(i as u64, || {
                    format!("slot {i} was reserved but never completed (no VALID flag)")
                });
            }
        }
        let missing = h.records.saturating_sub(readable as u64);
        if missing != 0 && partial_from == usize::MAX {
            complete.failures = complete.failures.saturating_add(missing);
            complete.example.get_or_insert((
                readable as u64,
                format!(
                    "the header reserves {} slots but only {readable} are in the file ({} bytes)",
                    h.records,
                    trace.file_len()
                ),
            ));
        }

        let rows = |acc: &CheckAcc| -> Option<Example> {
            acc.example.as_ref().map(|(slot, msg)| Example {
                slot: *slot,
                message: msg.clone(),
                record: usize::try_from(*slot)
                    .ok()
                    .and_then(|s| trace.slot(s))
                    .map(|r| Row::new(&r, trace.registry()).into_owned()),
            })
        };
        let mk = |id, title, acc: &CheckAcc| Check {
            id,
            title,
            passed: acc.failures == 0,
            checked: acc.checked,
            failures: acc.failures,
            example: rows(acc),
        };
        Validation {
            dir: trace.dir().display().to_string(),
            checks: vec![
                mk(
                    CheckId::Registry,
                    "tensor ids resolve and record names agree with the registry (Path A vs Path B)",
                    &reg,
                ),
                mk(CheckId::Monotonic, "timestamps never decrease per thread in file order", &mono),
                mk(CheckId::Tiling, "mul_mat row/column ranges tile each node exactly once", &tiling),
                mk(CheckId::Complete, "no dropped records and no incomplete slots", &complete),
            ],
            partial: trace.partial_from().map(|first| Partial {
                steps_done: h.steps_done,
                first_slot: first as u64,
                records: partial_records,
            }),
        }
    }

    /// True when every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The check with this id.
    pub fn check(&self, id: CheckId) -> &Check {
        self.checks
            .iter()
            .find(|c| c.id == id)
            .expect("every check is run")
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// One line per check, plus the example of each failed one.
    pub fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "validate {}", self.dir)?;
        for c in &self.checks {
            let unit = match c.id {
                CheckId::Tiling => "nodes",
                CheckId::Complete => "slots",
                _ => "records",
            };
            if c.passed {
                writeln!(w, "PASS {:<10} {} {unit}: {}", c.id, c.checked, c.title)?;
            } else {
                writeln!(
                    w,
                    "FAIL {:<10} {} of {} {unit} failed: {}",
                    c.id, c.failures, c.checked, c.title
                )?;
                if let Some(e) = &c.example {
                    writeln!(w, "     example: slot {}: {}", e.slot, e.message)?;
                    if let Some(r) = &e.record {
                        writeln!(w, "     record: {}", r.summary())?;
                    }
                }
            }
        }
        if let Some(p) = &self.partial {
            writeln!(
                w,
                "PARTIAL    the trace was not finished: steps 0..{} checked; step {} is partial (with any step after it), {} records from slot {}, not checked",
                p.steps_done, p.steps_done, p.records, p.first_slot
            )?;
        }
        writeln!(w, "{}", if self.ok() { "ok" } else { "FAILED" })
    }
}

/// Check one node's rectangles; `Err((slot, message))` on the first problem.
fn check_group(trace: &Trace, key: (u32, u64, i32), g: &mut Group) -> Result<(), (u64, String)> {
    let (step, node, expert) = key;
    let what = || {
        let name = trace
            .tensor(g.tensor_id)
            .map(|t| t.name.as_str())
            .unwrap_or("?");
        if expert >= 0 {
            format!("step {step} node {node:#x} ({name}) expert {expert}")
        } else {
            format!("step {step} node {node:#x} ({name})")
        }
    };
    if let Some((slot, other)) = g.mixed {
        return Err((
            slot,
            format!("{}: mixes tensor ids {} and {other}", what(), g.tensor_id),
        ));
    }
    if g.is_id {
        // An expert may compute a subset of the columns: overlap only.
        return tiling::check_overlap(&mut g.rects)
            .map_err(|d| (d.slot(g.first_slot), format!("{}: {d}", what())));
    }
    // The output's extent: a weight's rows from the registry; for other
    // tensors (KV-cache views) and for the columns, the largest seen. A
    // missing last column band is therefore invisible here; `cktrace
    // census`, which knows each node's shape, catches it with the same
    // checker.
    let max_row1 = g.rects.iter().map(|r| r.row1 as u64).max().unwrap_or(0);
    let cols = g.rects.iter().map(|r| r.col1 as u64).max().unwrap_or(0);
    let rows = match trace.tensor(g.tensor_id) {
        Some(t) if t.kind == TensorKind::Weight => t.n_rows,
        _ => max_row1,
    };
    tiling::check(&mut g.rects, rows, cols)
        .map_err(|d| (d.slot(g.first_slot), format!("{}: {d}", what())))
}

#[cfg(test)]
mod bundle_tests {
    use super::*;
    use crate::synth::SynthSpec;
    use crate::testutil::Bundle;

    fn run(b: &Bundle) -> Validation {
        Validation::run(&Trace::open(b.path()).unwrap())
    }

    /// The ids of the failed checks.
    fn failed(v: &Validation) -> Vec<CheckId> {
        v.failed().map(|c| c.id).collect()
    }

    fn is_weight_matmul(b: &Bundle, r: &TraceRecord) -> bool {
        r.op == Op::MulMat as u8
            && b.reg
                .get(r.tensor_id)
                .is_some_and(|t| t.kind == TensorKind::Weight)
    }

    #[test]
    fn good_traces_pass() {
        for spec in [SynthSpec::small(), SynthSpec::small_moe()] {
            let b = Bundle::new(spec);
            let v = run(&b);
            assert!(v.ok(), "{v:#?}");
            assert_eq!(v.check(CheckId::Registry).checked, b.recs.len() as u64);
            assert!(v.check(CheckId::Tiling).checked > 10);
            let mut out = Vec::new();
            v.write_text(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("PASS tiling") && text.ends_with("ok\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn unresolved_tensor_id_fails_registry() {
        let mut b = Bundle::small();
        let i = b
            .recs
            .iter()
            .position(|r| r.op == Op::GetRows as u8)
            .unwrap();
        b.recs[i].tensor_id = 9999;
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Registry]);
        let c = v.check(CheckId::Registry);
        assert_eq!(c.failures, 1);
        let e = c.example.as_ref().unwrap();
        assert_eq!(e.slot, i as u64);
        assert!(e.message.contains("tensor_id 9999"), "{}", e.message);
        assert_eq!(e.record.as_ref().unwrap().tensor_id, 9999);
    }

    #[test]
    fn name_mismatch_fails_registry() {
        let mut b = Bundle::small();
        let i = b.recs.iter().position(|r| is_weight_matmul(&b, r)).unwrap();
        // Point the record at another (existing) tensor: Path A != Path B.
        b.recs[i].tensor_id = b
            .reg
            .tensors
            .iter()
            .find(|t| t.name == "output.weight")
            .unwrap()
            .id;
        b.write();
        let v = run(&b);
        assert!(failed(&v).contains(&CheckId::Registry));
        let e = v.check(CheckId::Registry).example.clone().unwrap();
        assert!(
            e.message
                .contains("is not a prefix of registry name 'output.weight'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn truncated_names_agree() {
        let b = Bundle::small();
        let r = b
            .recs
            .iter()
            .find(|r| b.reg.get(r.tensor_id).unwrap().name.len() > 32)
            .unwrap();
        assert_eq!(r.name_str().len(), 32);
        assert!(run(&b).ok());
    }

    #[test]
    fn overlapping_rows_fail_tiling() {
        let mut b = Bundle::small();
        let i = b
            .recs
            .iter()
            .position(|r| is_weight_matmul(&b, r) && r.row0 > 0)
            .unwrap();
        b.recs[i].row0 -= 8;
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Tiling]);
        let c = v.check(CheckId::Tiling);
        assert_eq!(c.failures, 1);
        let e = c.example.as_ref().unwrap();
        assert!(e.message.contains("overlap"), "{}", e.message);
        let mut out = Vec::new();
        v.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL tiling")
                && text.contains("example: slot")
                && text.ends_with("FAILED\n"),
            "{text}"
        );
    }

    #[test]
    fn removed_record_is_a_gap() {
        let mut b = Bundle::small();
        let i = b
            .recs
            .iter()
            .position(|r| is_weight_matmul(&b, r) && r.step == 1)
            .unwrap();
        let gone = b.recs.remove(i);
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Tiling]);
        let e = v.check(CheckId::Tiling).example.clone().unwrap();
        let want = format!(
            "rows {}..{} x cols {}..{} not computed",
            gone.row0, gone.row1, gone.col0, gone.col1
        );
        assert!(
            e.message.contains(&want),
            "{} does not contain {want}",
            e.message
        );
    }

    #[test]
    fn rows_beyond_the_tensor_fail_tiling() {
        let mut b = Bundle::small();
        let i = b.recs.iter().position(|r| is_weight_matmul(&b, r)).unwrap();
        let n = b.reg.get(b.recs[i].tensor_id).unwrap().n_rows as u32;
        b.recs[i].row0 = n;
        b.recs[i].row1 = n + 16;
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Tiling]);
    }

    #[test]
    fn expert_overlap_fails_and_subsets_pass() {
        let mut b = Bundle::new(SynthSpec::small_moe());
        assert!(run(&b).ok());
        let i = b
            .recs
            .iter()
            .position(|r| r.op == Op::MulMatId as u8)
            .unwrap();
        let dup = b.recs[i];
        b.recs.insert(i + 1, dup);
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Tiling]);
        assert!(v
            .check(CheckId::Tiling)
            .example
            .as_ref()
            .unwrap()
            .message
            .contains("expert"));
    }

    #[test]
    fn time_going_back_fails_monotonic() {
        let mut b = Bundle::small();
        // Move a record before the previous record of the same thread.
        let th = b.recs[20].thread;
        let j = (0..20).rev().find(|&j| b.recs[j].thread == th).unwrap();
        let r = b.recs.remove(20);
        b.recs.insert(j, r);
        b.write();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Monotonic]);
        assert_eq!(v.check(CheckId::Monotonic).failures, 1);
    }

    #[test]
    fn incomplete_and_dropped_fail_complete() {
        let mut b = Bundle::small();
        b.recs[7].flags &= !flags::VALID;
        b.write();
        let v = run(&b);
        assert!(failed(&v).contains(&CheckId::Complete));
        assert_eq!(v.check(CheckId::Complete).example.as_ref().unwrap().slot, 7);

        let b = Bundle::small();
        let mut h = crate::synth::header_for(b.recs.len() as u64, 2);
        h.dropped = 5;
        crate::synth::write_bundle(b.path(), &h, &b.reg, None, &b.recs).unwrap();
        let v = run(&b);
        assert_eq!(failed(&v), vec![CheckId::Complete]);
        assert_eq!(v.check(CheckId::Complete).failures, 5);
        assert!(v
            .check(CheckId::Complete)
            .example
            .as_ref()
            .unwrap()
            .message
            .contains("dropped 5"));
    }

    /// A trace whose writer was killed in step `k`: the header marks steps
    /// `0..k` done; the records of step `k` that reached the file are a
    /// partial, unchecked step, and every completed step is checked.
    fn killed_in(b: &mut Bundle, k: u32, keep_of_step: usize, hole: bool) -> Validation {
        let first = b.recs.iter().position(|r| r.step >= k).unwrap();
        let step_len = b.recs[first..].iter().take_while(|r| r.step == k).count();
        assert!(keep_of_step < step_len);
        b.recs.truncate(first + keep_of_step);
        if hole && keep_of_step > 0 {
            // A slot of the step in flight reserved but never written.
            let last = b.recs.len() - 1;
            b.recs[last] = TraceRecord::default();
        }
        let mut h = crate::synth::header_for(b.recs.len() as u64, b.spec.threads);
        h.finished = 0;
        h.capacity = 1 << 20;
        h.complete = b.recs.len() as u64 - hole as u64;
        h.steps_done = k;
        h.steps_done_slots = first as u64;
        crate::synth::write_bundle(b.path(), &h, &b.reg, None, &b.recs).unwrap();
        run(b)
    }

    #[test]
    fn a_killed_trace_checks_its_completed_steps() {
        for (k, keep, hole) in [(0, 5, true), (1, 9, false), (2, 3, true), (1, 0, false)] {
            let mut b = Bundle::small();
            let v = killed_in(&mut b, k, keep, hole);
            assert!(v.ok(), "killed in step {k}: {v:#?}");
            let p = v.partial.clone().unwrap();
            assert_eq!(
                (p.steps_done, p.records),
                (k, keep as u64 - (hole && keep > 0) as u64)
            );
            let mut out = Vec::new();
            v.write_text(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains(&format!("step {k} is partial")) && text.ends_with("ok\n"),
                "{text}"
            );
            if k > 0 {
                assert!(v.check(CheckId::Tiling).checked > 0);
            }
        }
        // A defect inside a completed step still fails.
        let mut b = Bundle::small();
        let i = b
            .recs
            .iter()
            .position(|r| is_weight_matmul(&b, r) && r.step == 1)
            .unwrap();
        b.recs.remove(i);
        let v = killed_in(&mut b, 2, 4, false);
        assert_eq!(failed(&v), vec![CheckId::Tiling]);
        // And a slot without VALID inside a completed step fails `complete`.
        let mut b = Bundle::small();
        b.recs[3].flags &= !flags::VALID;
        let v = killed_in(&mut b, 2, 4, false);
        assert!(failed(&v).contains(&CheckId::Complete), "{v:#?}");
    }

    #[test]
    fn cut_file_fails_complete() {
        let b = Bundle::small();
        let len = std::fs::metadata(b.bin()).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(b.bin())
            .unwrap()
            .set_len(len - 128 * 3)
            .unwrap();
        let v = run(&b);
        let c = v.check(CheckId::Complete);
        assert!(!c.passed);
        assert_eq!(c.failures, 3);
    }
}
