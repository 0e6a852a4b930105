//! `cktrace bench parse`: how fast a trace is read. Writes a synthetic
//! trace of the requested size, then times a bare decode of every record
//! and [`Stats::compute`] (median of several runs) and reports GB/s and
//! records/s. The trace is read from the page cache after the first run;
//! the numbers are the parser's, not the disk's.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::filter::Filter;
use crate::reader::Trace;
use crate::stats::Stats;
use crate::synth::{self, SynthSpec};

/// Timings of [`bench_parse`].
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Bytes of record data scanned (file minus header).
    pub bytes: u64,
    pub records: u64,
    /// Seconds to write the synthetic trace.
    pub write_s: f64,
    /// Seconds per run of a bare decode of every record.
    pub decode_s: Vec<f64>,
    /// Seconds per run of `Stats::compute` with no filter (two scan
    /// threads when the machine has them).
    pub stats_s: Vec<f64>,
    /// Seconds per run of the same on one thread.
    pub stats_1t_s: Vec<f64>,
    pub decode_gb_per_s: f64,
    pub stats_gb_per_s: f64,
    pub stats_records_per_s: f64,
    pub stats_1t_gb_per_s: f64,
    /// Peak resident memory of the process and, at the end, its anonymous
    /// (heap) and file-backed (the mapped trace) parts, in KiB, from
    /// /proc/self/status (0 where unavailable).
    pub vm_hwm_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Write a synthetic trace of at least `bytes` bytes into `dir` (created;
/// an existing bundle there is overwritten), then time `runs` decodes and
/// `runs` stats passes over it, printing progress and results to `out`.
pub fn bench_parse(
    dir: &Path,
    bytes: u64,
    runs: usize,
    out: &mut dyn Write,
) -> anyhow::Result<BenchResult> {
    let runs = runs.max(1);
    let spec = SynthSpec::for_bytes(bytes);
    writeln!(
        out,
        "writing a synthetic trace of {} MiB to {} ...",
        bytes >> 20,
        dir.display()
    )?;
    let t = Instant::now();
    let records = synth::write_synthetic(dir, &spec)?;
    let write_s = t.elapsed().as_secs_f64();
    let trace = Trace::open(dir)?;
    let data = trace.data_len();
    writeln!(
        out,
        "{records} records, {:.1} MiB, written in {write_s:.2} s",
        data as f64 / (1 << 20) as f64
    )?;

    let mut decode_s = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        // Fold a field of every record so the decode cannot be skipped.
        let sum = trace
            .records()
            .fold(0u64, |a, r| a.wrapping_add(r.len ^ r.t_ns));
        std::hint::black_box(sum);
        decode_s.push(t.elapsed().as_secs_f64());
    }
    let filter = Filter::default();
    let mut stats_s = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let s = Stats::compute(&trace, &filter);
        std::hint::black_box(&s);
        stats_s.push(t.elapsed().as_secs_f64());
    }
    let mut stats_1t_s = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let s = Stats::compute_with_threads(&trace, &filter, 1);
        std::hint::black_box(&s);
        stats_1t_s.push(t.elapsed().as_secs_f64());
    }
    let (d, s, s1) = (median(&decode_s), median(&stats_s), median(&stats_1t_s));
    let res = BenchResult {
        bytes: data,
        records,
        write_s,
        decode_gb_per_s: data as f64 / d / 1e9,
        stats_gb_per_s: data as f64 / s / 1e9,
        stats_records_per_s: records as f64 / s,
        stats_1t_gb_per_s: data as f64 / s1 / 1e9,
        decode_s,
        stats_s,
        stats_1t_s,
        vm_hwm_kib: proc_status("VmHWM:"),
        rss_anon_kib: proc_status("RssAnon:"),
        rss_file_kib: proc_status("RssFile:"),
    };
    writeln!(
        out,
        "decode: median {:.3} s = {:.2} GB/s, {:.1} M records/s (single thread)",
        d,
        res.decode_gb_per_s,
        records as f64 / d / 1e6
    )?;
    writeln!(
        out,
        "stats:  median {:.3} s = {:.2} GB/s, {:.1} M records/s",
        s,
        res.stats_gb_per_s,
        res.stats_records_per_s / 1e6
    )?;
    writeln!(
        out,
        "stats, one thread: median {:.3} s = {:.2} GB/s, {:.1} M records/s",
        s1,
        res.stats_1t_gb_per_s,
        records as f64 / s1 / 1e6
    )?;
    writeln!(
        out,
        "memory: peak RSS {} MiB; now {} KiB anonymous + {} MiB of mapped trace file",
        res.vm_hwm_kib >> 10,
        res.rss_anon_kib,
        res.rss_file_kib >> 10
    )?;
    Ok(res)
}
