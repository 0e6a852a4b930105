//! The `cktrace parse` and `cktrace export` subcommands as clap argument
//! structs with a `run` that returns the process exit code. The caller owns
//! stdout (passed as `out`); warnings and progress go to stderr.
//!
//! `dir` may be omitted on the command line; the caller then fills it in
//! with [`resolve_dir`], which reads the last trace directory recorded under
//! the trace root.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};

use crate::export::{self, chrome, parquet, Format};
use crate::filter::Filter;
use crate::reader::Trace;
use crate::stats::Stats;
use crate::validate::Validation;

/// Name of the file under the trace root that holds the last trace
/// directory.
pub const LAST_FILE: &str = "LAST";

/// `opt` if given, else the directory named in `<default_root>/LAST` (a
/// relative path there is relative to `default_root`).
pub fn resolve_dir(opt: Option<PathBuf>, default_root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = opt {
        return Ok(p);
    }
    let mut last = default_root.join(LAST_FILE);
    if !last.exists() && default_root.join("last").exists() {
        last = default_root.join("last");
    }
    let text = std::fs::read_to_string(&last).with_context(|| {
        format!(
            "no trace directory given and {} cannot be read (record a trace first, or pass DIR)",
            last.display()
        )
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        bail!("no trace directory given and {} is empty", last.display());
    }
    let p = PathBuf::from(line);
    Ok(if p.is_relative() {
        default_root.join(p)
    } else {
        p
    })
}

/// `cktrace parse`: list, summarize or check a trace.
#[derive(Args, Clone, Debug, Default)]
pub struct ParseArgs {
    /// Trace bundle directory (default: the last trace recorded).
    pub dir: Option<PathBuf>,
    /// Print at most N records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub filter: Filter,
    /// Print statistics (bytes per op, layer, thread, kernel path and step;
    /// weight coverage per step) instead of records.
    #[arg(long)]
    pub stats: bool,
    /// Run the consistency checks (registry names, per-thread time order,
    /// row-range tiling, completeness); exit status 1 if any fails. Checks
    /// the whole trace: filters do not apply.
    #[arg(long)]
    pub validate: bool,
    /// Output format (for --stats and --validate: json/jsonl print JSON,
    /// the others text).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `cktrace export`: write a trace as Chrome trace events or Parquet.
#[derive(Args, Clone, Debug, Default)]
#[command(group(ArgGroup::new("output").required(true).multiple(true).args(["chrome", "parquet"])))]
pub struct ExportArgs {
    /// Trace bundle directory (default: the last trace recorded).
    pub dir: Option<PathBuf>,
    /// Write Chrome trace-event JSON (chrome://tracing, Perfetto) to FILE
    /// (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub chrome: Option<PathBuf>,
    /// Write one Parquet row per record, with the registry columns joined.
    #[arg(long, value_name = "FILE")]
    pub parquet: Option<PathBuf>,
    #[command(flatten)]
    pub filter: Filter,
}

/// `cktrace analyze`: the memory-access experiments over one bundle, or two
/// side by side.
#[derive(Args, Clone, Debug, Default)]
pub struct AnalyzeArgs {
    /// Trace bundle directory (default: the last trace recorded).
    pub dir: Option<PathBuf>,
    /// A second bundle, shown beside the first in every table and plot.
    pub dir2: Option<PathBuf>,
    /// Run only these experiments (comma-separated: traffic, paths,
    /// file-order).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Output directory (default: `analysis` inside the first bundle).
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: Option<PathBuf>,
}

impl AnalyzeArgs {
    /// Run; `Ok(1)` when a check failed (the outputs are written anyway).
    pub fn run(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        quiet_pipe(self.run_inner(out))
    }

    fn run_inner(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        use crate::analyze;
        let exps = analyze::select(&self.only)?;
        let dir = self.dir.context("no trace directory given")?;
        let mut bundles = Vec::new();
        for (label, d) in [("A", Some(dir.clone())), ("B", self.dir2.clone())] {
            let Some(d) = d else { continue };
            let b = analyze::Bundle::open(label, &d)?;
            for w in b.trace.warnings() {
                eprintln!("cktrace: warning: {w}");
            }
            bundles.push(b);
        }
        let out_dir = self.out.unwrap_or_else(|| dir.join("analysis"));
        let results = analyze::analyze(&bundles, &exps, io::stderr().is_terminal());
        analyze::write_outputs(&results, &out_dir)?;
        for s in &results.experiments {
            for c in &s.checks {
                writeln!(
                    out,
                    "{} {:<10} {}: {}",
                    if c.passed { "PASS" } else { "FAIL" },
                    s.name,
                    c.bundle,
                    c.detail
                )?;
            }
        }
        for t in &results.timing {
            writeln!(
                out,
                "bundle {}: {} records ({:.1} MiB) streamed in {:.3} s",
                t.bundle,
                t.records,
                t.bytes as f64 / (1u64 << 20) as f64,
                t.seconds
            )?;
        }
        writeln!(out, "wrote {}", out_dir.join("report.html").display())?;
        out.flush()?;
        Ok(if results.passed { 0 } else { 1 })
    }
}

fn open(dir: Option<PathBuf>) -> anyhow::Result<Trace> {
    let dir = dir.context("no trace directory given")?;
    let trace = Trace::open(&dir)?;
    for w in trace.warnings() {
        eprintln!("cktrace: warning: {w}");
    }
    Ok(trace)
}

/// A write to a closed pipe (`cktrace parse | head`) ends output quietly.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn quiet_pipe(r: anyhow::Result<i32>) -> anyhow::Result<i32> {
    match r {
        Err(e) if broken_pipe(&e) => Ok(0),
        r => r,
    }
}

impl ParseArgs {
    /// Run; `Ok(1)` when validation failed.
    pub fn run(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        quiet_pipe(self.run_inner(out))
    }

    fn run_inner(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        let trace = open(self.dir)?;
        let json = matches!(self.format, Format::Json | Format::Jsonl);
        if !self.validate && !self.stats {
            export::write_records(&trace, &self.filter, self.format, self.limit, out)?;
            return Ok(0);
        }
        let validation = self.validate.then(|| {
            if !self.filter.is_empty() {
                eprintln!("cktrace: warning: filters do not apply to --validate (it checks the whole trace)");
            }
            Validation::run(&trace)
        });
        let stats = self.stats.then(|| Stats::compute(&trace, &self.filter));
        if json {
            let mut w = BufWriter::new(&mut *out);
            match (&stats, &validation) {
                (Some(s), Some(v)) => serde_json::to_writer_pretty(
                    &mut w,
                    &serde_json::json!({ "stats": s, "validation": v }),
                )?,
                (Some(s), None) => serde_json::to_writer_pretty(&mut w, s)?,
                (None, Some(v)) => serde_json::to_writer_pretty(&mut w, v)?,
                (None, None) => {}
            }
            writeln!(w)?;
            w.flush()?;
        } else {
            if let Some(s) = &stats {
                s.write_text(out)?;
            }
            if let Some(v) = &validation {
                if stats.is_some() {
                    writeln!(out)?;
                }
                v.write_text(out)?;
            }
        }
        out.flush()?;
        Ok(match validation {
            Some(v) if !v.ok() => 1,
            _ => 0,
        })
    }
}

impl ExportArgs {
    /// Run; reports what was written to `out` (or to stderr when the Chrome
    /// trace itself goes to `out`).
    pub fn run(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        quiet_pipe(self.run_inner(out))
    }

    fn run_inner(self, out: &mut dyn Write) -> anyhow::Result<i32> {
        let trace = open(self.dir)?;
        let mut notes = Vec::new();
        if let Some(path) = &self.chrome {
            let s = if path.as_os_str() == "-" {
                chrome::write_chrome(&trace, &self.filter, out)?
            } else {
                let mut f = File::create(path)
                    .with_context(|| format!("{}: cannot create", path.display()))?;
                let s = chrome::write_chrome(&trace, &self.filter, &mut f)
                    .with_context(|| format!("{}: write failed", path.display()))?;
                f.sync_all()
                    .with_context(|| format!("{}: write failed", path.display()))?;
                s
            };
            notes.push(format!(
                "wrote {} events ({} threads, {} counter samples) to {}",
                s.records,
                s.threads,
                s.counters,
                path.display()
            ));
        }
        if let Some(path) = &self.parquet {
            let rows = parquet::write_parquet(&trace, &self.filter, path)?;
            notes.push(format!("wrote {rows} rows to {}", path.display()));
        }
        let to_stderr = self.chrome.as_deref().is_some_and(|p| p.as_os_str() == "-");
        for n in notes {
            if to_stderr {
                eprintln!("cktrace: {n}");
            } else {
                writeln!(out, "{n}")?;
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Bundle;
    use cktrace_tracer::{Op, Phase};
    use clap::Parser;

    #[derive(Parser, Debug)]
    enum Cmd {
        Parse(ParseArgs),
        Export(ExportArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cmd::try_parse_from(std::iter::once("cktrace").chain(args.iter().copied()))
    }

    fn run_parse(args: &[&str]) -> (i32, String) {
        let Cmd::Parse(a) = parse(args).unwrap() else {
            panic!()
        };
        let mut out = Vec::new();
        let code = a.run(&mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn flags_parse() {
        let Cmd::Parse(a) = parse(&[
            "parse",
            "/x",
            "--layer",
            "-1,0..2",
            "--op",
            "mul_mat,get_rows",
            "--phase",
            "decode",
            "--path",
            "repack_gemv",
            "--tensor",
            "attn_.*",
            "--step",
            "1..=3",
            "--thread",
            "0",
            "--limit",
            "5",
            "--format",
            "csv",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.dir.as_deref(), Some(Path::new("/x")));
        assert_eq!(a.filter.layer.len(), 2);
        assert_eq!(a.filter.layer[0], crate::filter::IntRange::one(-1));
        assert_eq!(a.filter.op, vec![Op::MulMat, Op::GetRows]);
        assert_eq!(a.filter.phase, vec![Phase::Decode]);
        assert_eq!(a.limit, Some(5));
        assert_eq!(a.format, Format::Csv);
        let e = parse(&["parse", "--op", "conv"]).unwrap_err().to_string();
        assert!(e.contains("unknown op 'conv'"), "{e}");
        let e = parse(&["parse", "--tensor", "("]).unwrap_err().to_string();
        assert!(e.contains("bad tensor regex"), "{e}");
        assert!(
            parse(&["export", "/x"]).is_err(),
            "export needs --chrome or --parquet"
        );
    }

    #[test]
    fn resolve_dir_reads_last() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_dir(Some("/a".into()), root.path()).unwrap(),
            PathBuf::from("/a")
        );
        let e = resolve_dir(None, root.path()).unwrap_err().to_string();
        assert!(e.contains("LAST cannot be read"), "{e}");
        std::fs::write(root.path().join(LAST_FILE), "runs/20240101\n").unwrap();
        assert_eq!(
            resolve_dir(None, root.path()).unwrap(),
            root.path().join("runs/20240101")
        );
        std::fs::write(root.path().join(LAST_FILE), "/abs/dir\n").unwrap();
        assert_eq!(
            resolve_dir(None, root.path()).unwrap(),
            PathBuf::from("/abs/dir")
        );
    }

    #[test]
    fn parse_runs_and_exit_codes() {
        let mut b = Bundle::small();
        let dir = b.path().to_str().unwrap().to_string();
        let (code, out) = run_parse(&["parse", &dir, "--limit", "3", "--format", "csv"]);
        assert_eq!((code, out.lines().count()), (0, 4));
        let (code, out) = run_parse(&["parse", &dir, "--stats"]);
        assert_eq!(code, 0);
        assert!(out.contains("bytes read"));
        let (code, out) = run_parse(&["parse", &dir, "--validate"]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = run_parse(&["parse", &dir, "--validate", "--stats", "--format", "json"]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["stats"]["records"].as_u64().unwrap() > 0);
        assert_eq!(v["validation"]["checks"].as_array().unwrap().len(), 4);

        let i = b
            .recs
            .iter()
            .position(|r| r.op == Op::MulMat as u8 && r.step == 2)
            .unwrap();
        b.recs.remove(i);
        b.write();
        let (code, out) = run_parse(&["parse", &dir, "--validate"]);
        assert_eq!(code, 1);
        assert!(
            out.contains("FAIL tiling") && out.contains("not computed"),
            "{out}"
        );

        let Cmd::Parse(a) = parse(&["parse"]).unwrap() else {
            panic!()
        };
        assert!(a
            .run(&mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("no trace directory"));
        let Cmd::Parse(a) = parse(&["parse", "/nonexistent/trace"]).unwrap() else {
            panic!()
        };
        assert!(a
            .run(&mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/trace"));
    }

    #[test]
    fn broken_pipe_is_not_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let b = Bundle::small();
        let Cmd::Parse(a) = parse(&["parse", b.path().to_str().unwrap()]).unwrap() else {
            panic!()
        };
        assert_eq!(a.run(&mut Closed).unwrap(), 0);
    }

    #[test]
    fn export_writes_files() {
        let b = Bundle::small();
        let dir = b.path().to_str().unwrap();
        let chrome = b.path().join("c.json");
        let pq = b.path().join("t.parquet");
        let Cmd::Export(a) = parse(&[
            "export",
            dir,
            "--chrome",
            chrome.to_str().unwrap(),
            "--parquet",
            pq.to_str().unwrap(),
            "--op",
            "mul_mat",
        ])
        .unwrap() else {
            panic!()
        };
        let mut out = Vec::new();
        assert_eq!(a.run(&mut out).unwrap(), 0);
        let out = String::from_utf8(out).unwrap();
        let n = b.recs.iter().filter(|r| r.op == Op::MulMat as u8).count();
        assert!(out.contains(&format!("wrote {n} events")), "{out}");
        assert!(out.contains(&format!("wrote {n} rows")), "{out}");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&chrome).unwrap()).unwrap();
        assert!(v["traceEvents"].as_array().unwrap().len() > n);
        assert!(std::fs::metadata(&pq).unwrap().len() > 0);
    }
}
