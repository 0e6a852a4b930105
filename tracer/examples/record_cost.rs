//! Cost of one `sink::record` call (thread-local append + periodic write),
//! measured on a real trace file: `cargo run --release -p cktrace-tracer --example record_cost`.
use cktrace_tracer::sink::{self, TraceSink};
use cktrace_tracer::{Engine, TraceRecord};
use std::time::Instant;

fn main() {
    let dir = std::env::temp_dir().join(format!("cktrace-record-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 2_000_000u64;
    sink::install(TraceSink::create(&dir.join("trace.bin"), n + 10, Engine::Ggml, 1).unwrap());
    let mut r = TraceRecord::default();
    r.set_name(b"blk.0.ffn_down.weight");
    let t = Instant::now();
    for i in 0..n {
        r.t_ns = i;
        sink::record(r);
        if i % 2705 == 2704 {
            sink::flush_all();
        }
    }
    sink::flush_all();
    let dt = t.elapsed().as_secs_f64();
    let st = sink::uninstall().unwrap().finish().unwrap();
    println!(
        "{:.1} ns per record including the per-step flush ({} written, {} dropped)",
        dt * 1e9 / n as f64,
        st.written,
        st.dropped
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
