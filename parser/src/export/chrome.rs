//! Chrome trace-event JSON (`chrome://tracing`, Perfetto, speedscope):
//! `{"traceEvents":[...]}` with
//!
//! - metadata events (`"ph":"M"`) naming the process and one track per
//!   thread (`pid` 1, `tid` = the record's thread);
//! - one complete event (`"ph":"X"`) per record: `name` the tensor's
//!   registry name, `cat` the kernel path, `ts`/`dur` in microseconds since
//!   trace start, `args` with op, step, layer, bytes, act_bytes, rows and
//!   cols;
//! - counter events (`"ph":"C"`, name `bytes read`) with the cumulative
//!   bytes read so far split into weights / kv_cache / activations /
//!   embedding_rows / unregistered, sampled on up to 2000 time buckets
//!   (records counted at their end time).
//!
//! The file is streamed: two passes over the mapping (time range and
//! threads, then events), no record is held in memory.

use std::io::{self, BufWriter, Write};

use cktrace_tracer::TraceRecord;

use crate::export::{progress, record_name};
use crate::filter::Filter;
use crate::names;
use crate::reader::Trace;
use crate::stats::{ByteSplit, Kinds};

/// What [`write_chrome`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChromeSummary {
    /// Complete events (= records exported).
    pub records: u64,
    /// Counter samples.
    pub counters: u64,
    /// Thread tracks.
    pub threads: u64,
}

const BUCKETS: u64 = 2000;

/// Microseconds with 3 decimals from nanoseconds, exact.
struct Us(u64);

impl std::fmt::Display for Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Write the records of `trace` passing `filter` as Chrome trace events.
pub fn write_chrome(
    trace: &Trace,
    filter: &Filter,
    out: &mut dyn Write,
) -> io::Result<ChromeSummary> {
    let m = filter.matcher(trace.registry());
    let kinds = Kinds::new(trace);

    // Pass 1: time range, thread set, count.
    let (mut t0, mut t1, mut count) = (u64::MAX, 0u64, 0u64);
    let mut threads: Vec<bool> = Vec::new();
    for r in trace.records().filter(|r| m.matches(r)) {
        t0 = t0.min(r.t_ns);
        t1 = t1.max(r.t_ns.saturating_add(r.dur_ns as u64));
        count += 1;
        let th = r.thread as usize;
        if th >= threads.len() {
            threads.resize(th + 1, false);
        }
        threads[th] = true;
    }
    if count == 0 {
        t0 = 0;
    }
    let span = t1.saturating_sub(t0).max(1);
    let nb = BUCKETS.min(span) as usize;
    let mut buckets = vec![ByteSplit::default(); nb];

    let mut w = BufWriter::with_capacity(1 << 18, out);
    let mut summary = ChromeSummary::default();
    w.write_all(b"{\"traceEvents\":[\n")?;
    write!(
        w,
        "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{{\"name\":"
    )?;
    serde_json::to_writer(&mut w, &format!("cktrace {}", trace.dir().display()))?;
    w.write_all(b"}}")?;
    for (t, _) in threads.iter().enumerate().filter(|(_, seen)| **seen) {
        write!(
            w,
            ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{t},\"args\":{{\"name\":\"thread {t}\"}}}}"
        )?;
        write!(w, ",\n{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":{t},\"args\":{{\"sort_index\":{t}}}}}")?;
        summary.threads += 1;
    }

    // Pass 2: one X event per record.
    let pb = progress(count, "chrome trace");
    for r in trace.records().filter(|r| m.matches(r)) {
        write_event(&mut w, trace, &r)?;
        let end = r.t_ns.saturating_add(r.dur_ns as u64);
        let b = ((end.saturating_sub(t0) as u128 * nb as u128) / span as u128).min(nb as u128 - 1)
            as usize;
        buckets[b].merge(&kinds.split(&r));
        summary.records += 1;
        if summary.records % 65536 == 0 {
            pb.set_position(summary.records);
        }
    }
    pb.finish_and_clear();

    // Cumulative counters at bucket ends (plus a zero at the start).
    let mut cum = ByteSplit::default();
    let mut emit = |w: &mut BufWriter<&mut dyn Write>,
                    ts_ns: u64,
                    c: &ByteSplit|
     -> io::Result<()> {
        summary.counters += 1;
        write!(
            w,
            ",\n{{\"name\":\"bytes read\",\"ph\":\"C\",\"pid\":1,\"ts\":{},\"args\":{{\"weights\":{},\"kv_cache\":{},\"activations\":{},\"embedding_rows\":{},\"unregistered\":{}}}}}",
            Us(ts_ns),
            c.weights,
            c.kv_cache,
            c.activations,
            c.embedding_rows,
            c.unregistered
        )
    };
    if count > 0 {
        emit(&mut w, t0, &cum)?;
        for (i, b) in buckets.iter().enumerate() {
            if *b == ByteSplit::default() {
                continue;
            }
            cum.merge(b);
            let ts = t0 + ((i as u128 + 1) * span as u128 / nb as u128) as u64;
            emit(&mut w, ts, &cum)?;
        }
    }
    w.write_all(b"\n],\"displayTimeUnit\":\"ns\"}\n")?;
    w.flush()?;
    Ok(summary)
}

fn write_event(w: &mut dyn Write, trace: &Trace, r: &TraceRecord) -> io::Result<()> {
    w.write_all(b",\n{\"name\":")?;
    match trace.tensor(r.tensor_id) {
        Some(t) => serde_json::to_writer(&mut *w, &t.name)?,
        None => serde_json::to_writer(&mut *w, &record_name(r))?,
    }
    write!(
        w,
        ",\"cat\":\"{}\",\"ph\":\"X\",\"pid\":1,\"tid\":{},\"ts\":{},\"dur\":{},\"args\":{{\"op\":\"{}\",\"step\":{},\"layer\":{},\"bytes\":{},\"act_bytes\":{},\"rows\":[{},{}],\"cols\":[{},{}]",
        names::path(r.path),
        r.thread,
        Us(r.t_ns),
        Us(r.dur_ns as u64),
        names::op(r.op),
        r.step,
        r.layer,
        r.len,
        r.act_bytes,
        r.row0,
        r.row1,
        r.col0,
        r.col1
    )?;
    if r.expert >= 0 {
        write!(w, ",\"expert\":{}", r.expert)?;
    }
    w.write_all(b"}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Bundle;
    use serde_json::Value;

    #[test]
    fn events_parse_back_with_required_fields() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        let mut out = Vec::new();
        let s = write_chrome(&t, &Filter::default(), &mut out).unwrap();
        assert_eq!(s.records, b.recs.len() as u64);
        assert_eq!(s.threads, 2);
        let v: Value = serde_json::from_slice(&out).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        let (mut x, mut c, mut m) = (0, 0, 0);
        let mut last = 0u64;
        for e in events {
            assert_eq!(e["pid"], 1, "{e}");
            assert!(e["name"].is_string(), "{e}");
            match e["ph"].as_str().unwrap() {
                "X" => {
                    x += 1;
                    for k in ["cat", "tid", "ts", "dur", "args"] {
                        assert!(!e[k].is_null(), "{k} missing in {e}");
                    }
                    assert!(e["ts"].is_f64() && e["dur"].is_f64());
                    for k in ["op", "step", "layer", "bytes", "rows"] {
                        assert!(!e["args"][k].is_null(), "args.{k} missing in {e}");
                    }
                }
                "C" => {
                    c += 1;
                    assert!(e["ts"].is_f64());
                    let total: u64 = e["args"]
                        .as_object()
                        .unwrap()
                        .values()
                        .map(|v| v.as_u64().unwrap())
                        .sum();
                    assert!(total >= last, "cumulative counter went down");
                    last = total;
                }
                "M" => {
                    m += 1;
                    assert!(e["args"].is_object());
                }
                other => panic!("unexpected phase {other}"),
            }
        }
        assert_eq!(x, b.recs.len());
        assert_eq!(c as u64, s.counters);
        assert_eq!(m, 1 + 2 * 2);
        let stats = crate::stats::Stats::compute(&t, &Filter::default());
        assert_eq!(
            last,
            stats.split.total(),
            "final cumulative bytes = all bytes read"
        );
        // ts of the first X event is the record's start in µs.
        let first = events.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!(
            first["ts"].as_f64().unwrap(),
            b.recs[0].t_ns as f64 / 1000.0
        );
    }

    #[test]
    fn empty_selection_is_valid_json() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        let f = Filter {
            step: vec![crate::filter::IntRange::one(99)],
            ..Default::default()
        };
        let mut out = Vec::new();
        let s = write_chrome(&t, &f, &mut out).unwrap();
        assert_eq!(s, ChromeSummary::default());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["traceEvents"].as_array().unwrap().len(), 1);
    }
}
