//! `cktrace bench analyze`: how fast the experiments stream a trace. Writes
//! a synthetic trace of the requested size (see [`crate::synth`]), then
//! times the streaming pass of every experiment alone and of all together
//! (median of `runs`), and reports GB/s of record data and the peak
//! resident memory. The trace is read from the page cache after the first
//! run; the figures are the analysis', not the disk's.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{experiments, pass, Bundle};
use crate::synth::{self, SynthSpec};

#[derive(Clone, Debug, Serialize)]
pub struct ExperimentTiming {
    /// Experiment name, or `all` for every experiment in one pass.
    pub name: String,
    pub seconds: Vec<f64>,
    pub gb_per_s: f64,
    pub records_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchAnalyze {
    pub bytes: u64,
    pub records: u64,
    pub timings: Vec<ExperimentTiming>,
    pub vm_hwm_kib: u64,
    pub rss_anon_kib: u64,
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

/// Write (or reuse, if `dir` already holds a trace of about this size) a
/// synthetic trace of at least `bytes` bytes in `dir` and time the
/// experiments over it.
pub fn bench_analyze(
    dir: &Path,
    bytes: u64,
    runs: usize,
    out: &mut dyn Write,
) -> anyhow::Result<BenchAnalyze> {
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
    writeln!(
        out,
        "{records} records written in {:.2} s",
        t.elapsed().as_secs_f64()
    )?;
    let bundle = Bundle::open("A", dir)?;
    let data = bundle.trace.data_len();
    let all = experiments();
    let mut timings = Vec::new();
    let mut sets: Vec<(String, Vec<usize>)> = (0..all.len())
        .map(|i| (all[i].name().to_string(), vec![i]))
        .collect();
    sets.push(("all".into(), (0..all.len()).collect()));
    for (name, idx) in sets {
        let mut secs = Vec::new();
        for _ in 0..runs {
            let mut accs: Vec<_> = idx.iter().map(|&i| all[i].accumulator(&bundle)).collect();
            let t = Instant::now();
            let n = pass::stream(&bundle, &mut accs, false);
            // The sections are part of the work (they finish the figures).
            for (k, &i) in idx.iter().enumerate() {
                let a = accs.remove(0);
                let _ = k;
                std::hint::black_box(all[i].section(std::slice::from_ref(&bundle), vec![a]));
            }
            secs.push(t.elapsed().as_secs_f64());
            std::hint::black_box(n);
        }
        let m = median(&secs);
        let tm = ExperimentTiming {
            name: name.clone(),
            gb_per_s: data as f64 / m / 1e9,
            records_per_s: records as f64 / m,
            seconds: secs,
        };
        writeln!(
            out,
            "{name:<12} median {m:.3} s = {:.2} GB/s, {:.1} M records/s",
            tm.gb_per_s,
            tm.records_per_s / 1e6
        )?;
        timings.push(tm);
    }
    let res = BenchAnalyze {
        bytes: data,
        records,
        timings,
        vm_hwm_kib: proc_status("VmHWM:"),
        rss_anon_kib: proc_status("RssAnon:"),
    };
    writeln!(
        out,
        "memory: peak RSS {} MiB ({} MiB anonymous now) for a {} MiB trace",
        res.vm_hwm_kib >> 10,
        res.rss_anon_kib >> 10,
        data >> 20
    )?;
    Ok(res)
}
