//! `cargo bench -p cktrace-parser`: parse speed on a synthetic trace.
//! CKTRACE_BENCH_MIB sets the size (default 1024 MiB); the trace is written
//! to a temporary directory under CKTRACE_BENCH_DIR (default the system's).

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("CKTRACE_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let root = std::env::var_os("CKTRACE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("cktrace-bench-parse-{}", std::process::id()));
    let res = cktrace_parser::bench::bench_parse(&dir, mib << 20, 3, &mut std::io::stdout());
    let _ = std::fs::remove_dir_all(&dir);
    res.map(|_| ())
}
