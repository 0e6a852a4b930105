//! The ck engine through the real `cktrace` binary: `run --engine ck` is
//! deterministic (across runs, thread counts and every kernel level this
//! CPU has), `layout` writes a byte-identical address book whose weights
//! are the GGUF file's ranges, the dump writes what its index says, and
//! bad input is one line on stderr.

use cktrace::gguf::GgufFile;
use cktrace_ck::quant::KernelLevel;

mod common;
use common::{ck_text, model, run, scratch, stderr, stdout};

#[test]
fn ck_run_is_deterministic_across_runs_threads_and_kernel_levels() {
    for name in ["smollm2", "smollm2-q8", "smollm2-q4km"] {
        let base = ck_text(name, &["-t", "2"]);
        assert!(base.split_whitespace().count() >= 10, "{name}: {base:?}");
        assert_eq!(ck_text(name, &["-t", "2"]), base, "{name}: second run");
        assert_eq!(ck_text(name, &["-t", "1"]), base, "{name}: -t 1");
        for level in KernelLevel::ALL {
            if !level.available() {
                continue;
            }
            // Every level, scalar included, computes the same float order
            // (ck/src/quant/order.rs), so the text is the same.
            let t = ck_text(name, &["-t", "2", "--kernels", level.name()]);
            assert_eq!(t, base, "{name}: --kernels {level}");
        }
        let t = ck_text(name, &["--weights", "copy", "--check-canaries"]);
        assert_eq!(t, base, "{name}: --weights copy");
    }
}

#[test]
fn ck_and_ggml_print_the_same_text_on_q8_0() {
    // ggml on the arithmetic the ck engine computes: this CPU's kernel
    // paths with AMX hidden (the ck engine does not reproduce AMX's
    // kernels) and attention as matmuls (not flash attention). The logits
    // are then bit-identical (tests/ck_parity.rs), so the text must be.
    let m = model("smollm2-q8");
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "32",
        "--ignore-eos",
        "--no-amx",
        "--flash-attn",
        "off",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ggml = stdout(&o);
    let ggml = ggml.trim_end().rsplit_once('\n').unwrap().0.to_string();
    assert_eq!(ck_text("smollm2-q8", &[]), ggml);
}

fn layout(model_name: &str, args: &[&str]) -> Vec<u8> {
    let dir = scratch("layout");
    let out = dir.path().join("layout.json");
    let m = model(model_name);
    let mut a = vec!["layout", m.to_str().unwrap(), "-o", out.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = run(&a);
    assert!(o.status.success(), "layout {args:?}: {}", stderr(&o));
    std::fs::read(&out).unwrap()
}

#[test]
fn layout_json_is_byte_identical_and_its_weights_are_the_file_ranges() {
    for threads in ["1", "2"] {
        let a = layout("smollm2-q4km", &["-t", threads]);
        let b = layout("smollm2-q4km", &["-t", threads]);
        assert_eq!(a, b, "two runs at -t {threads}");
    }
    let j: serde_json::Value = serde_json::from_slice(&layout("smollm2-q4km", &[])).unwrap();
    assert_eq!(j["format"], "cktrace-layout");
    assert_eq!(j["version"], 3);
    let text = j.to_string();
    assert!(
        !text.contains("/root") && !text.contains(".gguf"),
        "no paths"
    );
    let g = GgufFile::open(model("smollm2-q4km")).unwrap();
    let mut entries: Vec<&serde_json::Value> = Vec::new();
    for group in ["input", "output", "scratch"] {
        entries.extend(j[group].as_array().unwrap());
    }
    for l in j["layers"].as_array().unwrap() {
        entries.extend(l["entries"].as_array().unwrap());
    }
    let mut weights = 0;
    let mut packed_head = 0;
    let mut packed_layers = 0;
    for e in &entries {
        if e["kind"] == "weight" && e.get("packing").is_some() {
            // A packed copy (the Q8_0 head, or a Q5_0 layer matrix with
            // whole groups of 16 rows): the tensor's bytes, permuted, in
            // the arena.
            let t = g.tensor(e["name"].as_str().unwrap()).unwrap();
            if e["layer"].is_null() {
                assert_eq!(e["packing"], "q8_0_x16");
                packed_head += 1;
            } else {
                assert_eq!(e["packing"], "q5_0_x16", "{}", t.name);
                assert_eq!(t.ggml_type.name(), "q5_0");
                assert_eq!(t.dims[1] % 16, 0);
                packed_layers += 1;
            }
            assert_eq!(e["memory"], "arena");
            assert_eq!(e["size"].as_u64(), Some(t.size), "{}", t.name);
            assert_eq!(e["file_offset"].as_u64(), Some(t.file_offset));
        } else if e["kind"] == "weight" {
            let t = g.tensor(e["name"].as_str().unwrap()).unwrap();
            assert_eq!(e["memory"], "file");
            assert_eq!(e["offset"].as_u64(), Some(t.file_offset), "{}", t.name);
            assert_eq!(e["size"].as_u64(), Some(t.size), "{}", t.name);
            assert_eq!(e["dtype"], t.ggml_type.name());
            weights += 1;
        } else {
            assert_eq!(e["memory"], "arena");
            assert_eq!(e["offset"].as_u64().unwrap() % 64, 0, "{}", e["name"]);
        }
    }
    let q5_layer_mats = g
        .tensors()
        .iter()
        .filter(|t| {
            t.name.starts_with("blk.") && t.ggml_type.name() == "q5_0" && t.dims[1] % 16 == 0
        })
        .count();
    assert!(q5_layer_mats > 0, "SmolLM2 Q4_K_M has Q5_0 layer matrices");
    assert_eq!(
        packed_layers, q5_layer_mats,
        "Q5_0 layer matrices are packed by default"
    );
    assert_eq!(weights + packed_layers, g.tensors().len());
    assert_eq!(packed_head, 1, "the Q8_0 head is packed by default");
    // --layers plain --head plain: every weight is its file range.
    let j2: serde_json::Value = serde_json::from_slice(&layout(
        "smollm2-q4km",
        &["--layers", "plain", "--head", "plain"],
    ))
    .unwrap();
    assert!(!j2.to_string().contains("packing\":\"q"), "nothing packed");
    assert_eq!(j2["options"]["layers"], "plain");
    for name in [
        "attn_norm-0",
        "Qcur-0",
        "kqv_out-29",
        "l_out-29",
        "cache_k_l0",
        "result_output",
    ] {
        assert!(
            entries.iter().any(|e| e["name"] == name),
            "{name} in layout.json"
        );
    }
    // --weights copy moves every weight into the arena.
    let j: serde_json::Value =
        serde_json::from_slice(&layout("smollm2-q4km", &["--weights", "copy"])).unwrap();
    let l0 = j["layers"][0]["entries"].as_array().unwrap();
    let q = l0
        .iter()
        .find(|e| e["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["memory"], "arena");
    assert_eq!(
        q["file_offset"].as_u64(),
        Some(g.tensor("blk.0.attn_q.weight").unwrap().file_offset)
    );
}

#[test]
fn dump_step_writes_the_named_intermediates() {
    let dir = scratch("dump");
    let d = dir.path().join("dump");
    ck_text(
        "smollm2",
        &["--dump-step", "2", "--dump", d.to_str().unwrap()],
    );
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["step"], 2);
    assert_eq!(idx["n_tokens"], 1);
    let ts = idx["tensors"].as_array().unwrap();
    assert!(ts.len() >= 30 * 13);
    for t in ts {
        let n: u64 = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .product();
        let len = std::fs::metadata(d.join(t["file"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(len, n * 4, "{}", t["name"]);
    }
    let logits = std::fs::read(d.join("result_output.f32")).unwrap();
    assert_eq!(logits.len(), 49152 * 4);
}

#[test]
fn ck_flags_and_bad_models_are_one_line_errors() {
    let m = model("smollm2");
    let m = m.to_str().unwrap();
    let o = run(&["run", m, "--kernels", "avx2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--kernels applies to the ck engine only"),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", m, "--engine", "ck", "--kernels", "sse9"]);
    assert!(!o.status.success());
    let o = run(&["run", m, "--engine", "ck", "--kv-type", "q8"]);
    assert!(!o.status.success());
    let o = run(&["layout", m, "--batch", "0"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.starts_with("cktrace: ") && e.contains("batch") && e.lines().count() == 1,
        "{e}"
    );

    let dir = scratch("ck-bad");
    let bad = dir.path().join("trunc.gguf");
    let bytes = std::fs::read(model("smollm2")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    for args in [
        vec!["layout", bad.to_str().unwrap()],
        vec!["run", bad.to_str().unwrap(), "--engine", "ck", "-n", "2"],
    ] {
        let o = run(&args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.starts_with("cktrace: ") && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
}
