//! `cktrace analyze` end to end: the real binary traces the real models
//! (SmolLM2 Q4_K_M with repack on and off, Gemma-3, and the TinyLlama-shaped
//! Q4_K_M written by `test-model --like`), analyzes the traces, and every
//! experiment's check must pass; the same checks must fail on deliberately
//! damaged copies of a real trace. The report opens in headless Chromium.
//! Nothing here depends on a record count or a timing: kernel paths and
//! chunking differ from CPU to CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cktrace_tracer::format::{TraceHeader, TraceRecord, HEADER_SIZE, RECORD_SIZE};
use serde_json::Value;

mod common;
use common::{model, run, scratch, stderr, stdout};

/// Decode steps of every traced run here (plus the prompt step).
const DECODE_STEPS: usize = 16;

/// `cktrace run MODEL -p Hello -n 17 -t 2 --ignore-eos --trace DIR EXTRA...`:
/// the prompt step and 16 decode steps on 2 threads.
fn trace(model: &Path, dir: &Path, extra: &[&str]) {
    let n = (DECODE_STEPS + 1).to_string();
    let mut args = vec![
        "run",
        model.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        &n,
        "-t",
        "2",
        "--ignore-eos",
        "--trace",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "run failed: {}", stderr(&o));
}

/// Run `cktrace analyze` and read its results.json.
fn analyze(dirs: &[&Path], out: &Path, only: Option<&str>) -> (Output, Value) {
    let mut args: Vec<String> = vec!["analyze".into()];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap().to_string()));
    args.push("-o".into());
    args.push(out.to_str().unwrap().into());
    if let Some(o) = only {
        args.push("--only".into());
        args.push(o.into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    assert!(
        !stderr(&o).contains("panicked"),
        "analyze panicked: {}",
        stderr(&o)
    );
    let text = std::fs::read_to_string(out.join("results.json"))
        .unwrap_or_else(|e| panic!("no results.json ({e}): {}", stderr(&o)));
    (
        o,
        serde_json::from_str(&text).expect("results.json is JSON"),
    )
}

fn experiment<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no experiment {name} in results"))
}

/// Every check of every experiment passed, for every bundle.
fn assert_all_pass(what: &str, o: &Output, r: &Value, bundles: usize) {
    assert_eq!(r["schema"], "cktrace-analyze");
    assert_eq!(r["version"], 1);
    let exps = r["experiments"].as_array().unwrap();
    let names: Vec<&str> = exps.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["traffic", "paths", "file-order"], "{what}");
    for e in exps {
        let checks = e["checks"].as_array().unwrap();
        assert_eq!(checks.len(), bundles, "{what}: {}", e["name"]);
        for c in checks {
            assert_eq!(
                c["passed"],
                true,
                "{what}: {} check failed on bundle {}: {}\n{}",
                e["name"],
                c["bundle"],
                c["detail"],
                stdout(o)
            );
        }
    }
    assert_eq!(r["passed"], true, "{what}");
    assert!(o.status.success(), "{what}: {}", stderr(o));
}

/// The failing check of experiment `name`, with its detail.
fn failed_detail(r: &Value, name: &str) -> String {
    let e = experiment(r, name);
    let c = &e["checks"][0];
    assert_eq!(
        c["passed"], false,
        "{name} should fail on this input, passed with: {}",
        c["detail"]
    );
    c["detail"].as_str().unwrap().to_string()
}

struct Pair {
    _dir: tempfile::TempDir,
    on: PathBuf,
    off: PathBuf,
    out: PathBuf,
    output: Output,
    results: Value,
}

/// SmolLM2 Q4_K_M traced with repack on and with `--no-repack`, analyzed
/// side by side (once per test process).
fn smollm2_pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let dir = scratch("analyze-pair");
        let m = model("smollm2-q4km");
        let on = dir.path().join("repack");
        let off = dir.path().join("no-repack");
        trace(&m, &on, &[]);
        trace(&m, &off, &["--no-repack"]);
        let out = dir.path().join("report");
        let (output, results) = analyze(&[&on, &off], &out, None);
        Pair {
            on,
            off,
            out,
            output,
            results,
            _dir: dir,
        }
    })
}

#[test]
fn smollm2_q4km_repack_on_and_off_side_by_side() {
    let p = smollm2_pair();
    assert_all_pass(
        "smollm2-q4km A=repack B=no-repack",
        &p.output,
        &p.results,
        2,
    );
    let r = &p.results;
    // Both bundles in paths and file-order, with what tells them apart.
    let paths = experiment(r, "paths");
    let data = paths["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let bufs = |d: &Value| -> Vec<String> {
        d["census"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["dtype"] == "q4_K")
            .map(|c| c["buffer_type"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        bufs(&data[0]).iter().any(|b| b != "CPU_Mapped"),
        "repack on: Q4_K should sit in an extra buffer type: {:?}",
        bufs(&data[0])
    );
    assert!(
        bufs(&data[1]).iter().all(|b| b == "CPU_Mapped"),
        "--no-repack: Q4_K read in place: {:?}",
        bufs(&data[1])
    );
    // The naive hook sees more of the model without repack: the Q4_K
    // weights then reach the generic mul_mat. Counted in weights, not in
    // thread 0's share of the bytes, which depends on how the chunks fell
    // between the threads (ggml hands each thread its first chunk by index,
    // so thread 0 always reads part of every weight that reaches it).
    let seen_weights = |d: &Value| -> usize {
        d["naive_hook"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seen_layers"].as_array().unwrap().len())
            .sum()
    };
    let q4k_seen = |d: &Value| -> usize {
        d["naive_hook"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dtypes"].as_array().unwrap().iter().any(|t| t == "q4_K"))
            .map(|r| r["seen_layers"].as_array().unwrap().len())
            .sum()
    };
    assert!(
        seen_weights(&data[1]) > seen_weights(&data[0]),
        "naive hook: {} weights seen without repack, {} with",
        seen_weights(&data[1]),
        seen_weights(&data[0])
    );
    assert!(
        q4k_seen(&data[1]) > 0,
        "no-repack: the naive hook sees Q4_K weights"
    );
    let fo = experiment(r, "file-order");
    let data = fo["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for d in data {
        let f = d["sequential_fraction"].as_f64().unwrap();
        assert!(f > 0.0 && f <= 1.0, "{d}");
        assert_eq!(d["mapped_bytes"], d["weight_bytes_file_layout"]);
    }
    // Bytes read equal the file-layout bytes unless a weight is packed
    // larger in its buffer (AMX, when this CPU has it and repack is on).
    for (d, dir) in data.iter().zip([&p.on, &p.off]) {
        let reg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("registry.json")).unwrap())
                .unwrap();
        let packed = reg["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["buffer_bytes"].is_u64());
        let (read, file) = (
            d["weight_bytes"].as_u64().unwrap(),
            d["weight_bytes_file_layout"].as_u64().unwrap(),
        );
        assert_eq!(
            read > file,
            packed,
            "read {read}, file layout {file}, packed {packed}"
        );
    }
    for name in [
        "results.md",
        "report.html",
        "traffic-steps.svg",
        "paths-bytes.svg",
        "file-order-heatmap-A.svg",
        "file-order-heatmap-B.svg",
    ] {
        assert!(p.out.join(name).is_file(), "{name} not written");
    }
    // Side by side in the rendered tables too.
    let md = std::fs::read_to_string(p.out.join("results.md")).unwrap();
    for section in ["(`paths`)", "(`file-order`)"] {
        let i = md.find(section).expect(section);
        let rest = &md[i..];
        assert!(
            rest.contains("| A |") && rest.contains("| B |"),
            "{section}"
        );
    }
    // Machine facts recorded at run time and shown in the summary.
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(p.on.join("meta.json")).unwrap()).unwrap();
    let m = &meta["machine"];
    assert!(!m["cpu_model"].as_str().unwrap().is_empty());
    assert!(m["page_size"].as_u64().unwrap() >= 4096);
    assert!(!m["caches"].as_array().unwrap().is_empty());
    assert!(!m["kernel"].as_str().unwrap().is_empty());
    assert_eq!(m["threads_used"], 2);
    assert!(m["cpu_flags"].as_array().unwrap().len() > 5);
    assert_eq!(r["bundles"][0]["machine"]["cpu_model"], m["cpu_model"]);
    let _ = &p.off;
}

#[test]
fn report_has_no_network_reference() {
    let p = smollm2_pair();
    let html = std::fs::read_to_string(p.out.join("report.html")).unwrap();
    let lower = html.to_lowercase();
    for bad in [
        "http:", "https:", "//www", "<link", "<script", "@import", "url(", "src=", "<img",
        "<iframe",
    ] {
        assert!(!lower.contains(bad), "report.html contains {bad:?}");
    }
    for href in lower.split("href=\"").skip(1) {
        assert!(
            href.starts_with('#'),
            "non-local href in report.html: {}",
            &href[..href.len().min(60)]
        );
    }
    assert!(html.matches("<svg").count() >= 5);
}

/// Headless Chromium with no network of its own, as the issue asks.
fn chromium(profile: &Path) -> Command {
    let exe = ["chromium", "chromium-browser"]
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .copied()
        .expect("chromium is not installed: run scripts/setup.sh (it installs Debian's chromium for this test)");
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--proxy-server=127.0.0.1:9",
        "--window-size=1280,1000",
    ]);
    c.arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn report_renders_in_headless_chromium() {
    let p = smollm2_pair();
    let url = format!("file://{}", p.out.join("report.html").display());
    let scratch = scratch("chromium");
    // Every section is in the rendered DOM.
    let o = chromium(&scratch.path().join("p1"))
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", &url])
        .output()
        .expect("spawn chromium");
    assert!(o.status.success(), "chromium --dump-dom: {}", stderr(&o));
    let dom = stdout(&o);
    for id in ["summary", "traffic", "paths", "file-order"] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "section {id} not rendered"
        );
    }
    assert!(dom.matches("<svg").count() >= 5, "plots not rendered");
    assert!(dom.contains("PASS"));
    // No console error, no failed load.
    let log = stderr(&o);
    for l in log.lines() {
        assert!(
            !(l.contains("CONSOLE")
                || l.contains("Uncaught")
                || l.contains("ERR_FILE_NOT_FOUND")
                || l.contains("net::ERR")),
            "chromium reported a page error: {l}"
        );
    }
    // A screenshot of the first screen, kept with the test output.
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze-report");
    std::fs::create_dir_all(&keep).unwrap();
    let shot = keep.join("report-first-screen.png");
    let _ = std::fs::remove_file(&shot);
    let o = chromium(&scratch.path().join("p2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("spawn chromium");
    assert!(o.status.success(), "chromium --screenshot: {}", stderr(&o));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot looks empty");
    std::fs::copy(p.out.join("report.html"), keep.join("report.html")).unwrap();
    println!(
        "screenshot of the report's first screen: {}",
        shot.display()
    );
}

#[test]
fn gemma3_checks_pass() {
    let dir = scratch("analyze-gemma3");
    let t = dir.path().join("trace");
    trace(&model("gemma3"), &t, &[]);
    let (o, r) = analyze(&[&t], &dir.path().join("out"), None);
    assert_all_pass("gemma3", &o, &r, 1);
    let steps = experiment(&r, "traffic")["data"][0]["steps"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(steps, DECODE_STEPS + 1);
}

/// The TinyLlama-shaped model, quantized to Q4_K_M by llama.cpp's rules;
/// kept under the test target directory between runs (it takes minutes).
fn tinyllama_q4km() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let q = dir.join("tinyllama-1.1b-shaped-smollm2-vocab.Q4_K_M.gguf");
        if q.is_file() {
            return q;
        }
        let _ = model("smollm2");
        let f16 = dir.join("tinyllama-1.1b-shaped-smollm2-vocab.F16.gguf");
        let o = run(&[
            "test-model",
            "--like",
            "tinyllama-1.1b",
            f16.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "test-model --like: {}", stderr(&o));
        assert!(stdout(&o).contains("vocab 49152"), "{}", stdout(&o));
        let tmp = dir.join("tinyllama.partial.gguf");
        let o = run(&[
            "quantize",
            f16.to_str().unwrap(),
            tmp.to_str().unwrap(),
            "Q4_K_M",
        ]);
        assert!(o.status.success(), "quantize: {}", stderr(&o));
        let _ = std::fs::remove_file(&f16);
        std::fs::rename(&tmp, &q).unwrap();
        q
    })
    .clone()
}

#[test]
fn tinyllama_shaped_q4km_checks_pass() {
    let m = tinyllama_q4km();
    let dir = scratch("analyze-tinyllama");
    let t = dir.path().join("trace");
    trace(&m, &t, &[]);
    // A real Q4_K_M type mix of that shape: mostly Q4_K, some Q6_K.
    let reg: Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("registry.json")).unwrap()).unwrap();
    let weights: Vec<&Value> = reg["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "weight")
        .collect();
    let count = |d: &str| weights.iter().filter(|t| t["dtype"] == d).count();
    assert!(
        count("q4_K") > 100 && count("q6_K") >= 10,
        "q4_K {} q6_K {}",
        count("q4_K"),
        count("q6_K")
    );
    let embd = weights
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["shape"], serde_json::json!([2048, 49152]));
    assert_eq!(
        weights
            .iter()
            .filter(|t| t["name"].as_str().unwrap().ends_with("ffn_down.weight"))
            .count(),
        22
    );
    let (o, r) = analyze(&[&t], &dir.path().join("out"), None);
    assert_all_pass("tinyllama-shaped Q4_K_M", &o, &r, 1);
}

// ---- deliberately wrong inputs ----------------------------------------------

/// A copy of a bundle in which `keep` decides which records stay and `reg`
/// may edit the registry.
fn damaged(src: &Path, dst: &Path, keep: impl Fn(&TraceRecord) -> bool, reg: impl Fn(&mut Value)) {
    std::fs::create_dir_all(dst).unwrap();
    let bytes = std::fs::read(src.join("trace.bin")).unwrap();
    let head: [u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().unwrap();
    let mut h = TraceHeader::from_bytes(&head);
    // A packed trace is unpacked, and the copy written in fixed slots
    // (version 1).
    let slots = if h.is_packed() {
        use cktrace_tracer::pack;
        let scan = pack::scan(&bytes);
        let mut img = vec![0u8; h.records as usize * RECORD_SIZE];
        let (_, problems) = pack::unpack_into(&bytes, &scan.chunks, &mut img);
        assert!(scan.problems.is_empty() && problems.is_empty());
        h.version = cktrace_tracer::format::VERSION_RAW;
        h.data_end = 0;
        img
    } else {
        bytes[HEADER_SIZE..].to_vec()
    };
    let mut body = Vec::new();
    for c in slots.chunks_exact(RECORD_SIZE) {
        let r = TraceRecord::from_bytes(c.try_into().unwrap());
        // Padding slots (direct writes) go; the copy is written whole.
        if r.flags != cktrace_tracer::format::flags::PAD && keep(&r) {
            body.extend_from_slice(c);
        }
    }
    let n = (body.len() / RECORD_SIZE) as u64;
    h.records = n;
    h.complete = n;
    h.capacity = n;
    h.padding = 0;
    h.steps_done_slots = h.steps_done_slots.min(n);
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(&body);
    std::fs::write(dst.join("trace.bin"), out).unwrap();
    let mut r: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("registry.json")).unwrap()).unwrap();
    reg(&mut r);
    std::fs::write(dst.join("registry.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    std::fs::copy(src.join("meta.json"), dst.join("meta.json")).unwrap();
}

fn tensor_id(reg: &Value, name: &str) -> u32 {
    reg["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))["id"]
        .as_u64()
        .unwrap() as u32
}

#[test]
fn checks_fail_on_wrong_inputs() {
    let p = smollm2_pair();
    let src = &p.on;
    let d = scratch("analyze-wrong");
    let reg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("registry.json")).unwrap()).unwrap();
    let nothing = |_: &mut Value| {};
    let analyze_one = |name: &str, only: &str| {
        let (o, r) = analyze(
            &[&d.path().join(name)],
            &d.path().join(format!("{name}-out")),
            Some(only),
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "a failed check exits 1: {}",
            stderr(&o)
        );
        r
    };

    // traffic: one decode step's records removed.
    damaged(src, &d.path().join("no-step-5"), |r| r.step != 5, nothing);
    let e = failed_detail(&analyze_one("no-step-5", "traffic"), "traffic");
    assert!(e.contains("step 5"), "{e}");

    // traffic: one weight matmul node of one step missing.
    let q = tensor_id(&reg, "blk.7.ffn_up.weight");
    damaged(
        src,
        &d.path().join("no-node"),
        |r| !(r.step == 3 && r.tensor_id == q),
        nothing,
    );
    let e = failed_detail(&analyze_one("no-node", "traffic"), "traffic");
    assert!(e.contains("step 3"), "{e}");

    // traffic: half of one layer's K-cache reads in one step.
    let k = tensor_id(&reg, "cache_k_l4");
    damaged(
        src,
        &d.path().join("kv-half"),
        |r| !(r.step == 6 && r.tensor_id == k && r.thread == 1),
        nothing,
    );
    let e = failed_detail(&analyze_one("kv-half", "traffic"), "traffic");
    assert!(e.contains("KV bytes"), "{e}");

    // file-order: a registry offset shifted onto the next tensor.
    let shift = tensor_id(&reg, "blk.10.attn_q.weight") as usize;
    damaged(
        src,
        &d.path().join("shifted"),
        |_| true,
        |r| {
            let t = &mut r["tensors"][shift];
            let o = t["gguf_offset"].as_u64().unwrap();
            t["gguf_offset"] = (o + 4096).into();
        },
    );
    let e = failed_detail(&analyze_one("shifted", "file-order"), "file-order");
    assert!(e.contains("overlap") || e.contains("outside"), "{e}");

    // paths: the registry claims a generic-path weight sits in an extra
    // buffer type.
    let generic = tensor_id(&reg, "blk.3.attn_q.weight") as usize;
    damaged(
        src,
        &d.path().join("wrong-buffer"),
        |_| true,
        |r| {
            r["tensors"][generic]["buffer_type"] = "CPU_REPACK".into();
            r["tensors"][generic]["source"] = "repacked".into();
        },
    );
    let e = failed_detail(&analyze_one("wrong-buffer", "paths"), "paths");
    assert!(e.contains("blk.3.attn_q.weight"), "{e}");

    // The undamaged copy passes all three.
    damaged(src, &d.path().join("intact"), |_| true, nothing);
    let (o, r) = analyze(
        &[&d.path().join("intact")],
        &d.path().join("intact-out"),
        None,
    );
    assert_all_pass("intact copy", &o, &r, 1);
}

// ---- run options the experiments need ---------------------------------------

#[test]
fn prompt_file_tokens_and_trace_steps() {
    let m = model("smollm2-q4km");
    let d = scratch("analyze-run-options");
    // --tokens: ids fed as they are.
    let toks = d.path().join("ids.txt");
    std::fs::write(&toks, "1, 504 2683\n 28 4157 29,\n").unwrap();
    let t = d.path().join("tokens");
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "--tokens",
        toks.to_str().unwrap(),
        "-n",
        "12",
        "-t",
        "2",
        "--ignore-eos",
        "--trace-steps",
        "3..7",
        "--trace",
        t.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["prompt_tokens"],
        serde_json::json!([1, 504, 2683, 28, 4157, 29])
    );
    assert_eq!(meta["traced_steps"], serde_json::json!([3, 7]));
    let steps = meta["step_tokens"].as_array().unwrap().len() as u64;
    assert_eq!(meta["untraced_steps"].as_u64().unwrap(), steps - 5);
    let (o, r) = analyze(&[&t], &d.path().join("out"), None);
    assert_all_pass("--tokens --trace-steps 3..7", &o, &r, 1);
    let traced: Vec<u64> = experiment(&r, "traffic")["data"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(traced, [3, 4, 5, 6, 7]);

    // --prompt-file: the file's text is the prompt.
    let pf = d.path().join("prompt.txt");
    std::fs::write(
        &pf,
        "The history of the printing press, in a few sentences:",
    )
    .unwrap();
    let t2 = d.path().join("prompt-file");
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "--prompt-file",
        pf.to_str().unwrap(),
        "-n",
        "4",
        "-t",
        "2",
        "--raw",
        "--trace",
        t2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(t2.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["prompt"],
        "The history of the printing press, in a few sentences:"
    );
    assert!(meta["prompt_tokens"].as_array().unwrap().len() > 8);

    // Bad inputs: one line, exit 1.
    std::fs::write(&toks, "1 2 999999").unwrap();
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "--tokens",
        toks.to_str().unwrap(),
        "-n",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("outside the vocabulary"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "--trace-steps",
        "5..2",
        "--trace",
        t2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("before the first"), "{}", stderr(&o));
}

#[test]
fn only_and_bad_names() {
    let p = smollm2_pair();
    let d = scratch("analyze-only");
    let (o, r) = analyze(&[&p.on], &d.path().join("out"), Some("paths"));
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<&str> = r["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["paths"]);
    let o = run(&["analyze", p.on.to_str().unwrap(), "--only", "traffik"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown experiment 'traffik'"),
        "{}",
        stderr(&o)
    );
}
