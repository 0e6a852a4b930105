//! Flash attention traced end to end: `cktrace run --trace` in both
//! `--flash-attn` modes on the real models, checked against the counts that
//! docs/trace-format.md documents for each mode ("How KV bytes count in each
//! mode"), computed here from the GGUF file's own hyper-parameters; and the
//! census with flash attention on, over prompts that take every
//! FLASH_ATTN_EXT kernel path.

mod common;

use std::path::{Path, PathBuf};

use common::{bin, model, scratch, stderr, stdout};

/// Attention shapes from the GGUF metadata (an independent route: not the
/// trace, not llama.cpp).
struct Attn {
    layers: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    /// Sliding window of the SWA layers, if the model has one.
    window: Option<u64>,
    /// Which layers use the window (gemma3: all but every 6th).
    swa_pattern: u64,
}

fn attn(name: &str) -> Attn {
    let g = cktrace::gguf::GgufFile::open(model(name)).unwrap();
    let arch = g.arch().unwrap().to_string();
    let k = |s: &str| g.get_u64(&format!("{arch}.{s}")).unwrap();
    let n_head = k("attention.head_count");
    let head_dim = g
        .get_u64(&format!("{arch}.attention.key_length"))
        .unwrap_or_else(|_| k("embedding_length") / n_head);
    let window = g.get_u64(&format!("{arch}.attention.sliding_window")).ok();
    Attn {
        layers: k("block_count"),
        n_head,
        n_head_kv: k("attention.head_count_kv"),
        head_dim,
        window,
        swa_pattern: if arch == "gemma3" { 6 } else { 1 },
    }
}

impl Attn {
    /// Cells a query at position `p` attends in layer `il` (flash attention
    /// on: only the cells the mask lets through are read).
    fn attended(&self, il: u64, p: u64) -> u64 {
        let swa = self.window.is_some() && (il + 1) % self.swa_pattern != 0;
        match self.window {
            Some(w) if swa => (p + 1).min(w),
            _ => p + 1,
        }
    }
}

/// F16 cache (llama.cpp's default K/V type).
const KV_ELT: u64 = 2;

fn traced(tag: &str, name: &str, fa: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let d = scratch(tag);
    let dir = d.path().join("t");
    let o = bin()
        .arg("run")
        .arg(model(name))
        .args([
            "-p",
            "Hello world, this is",
            "--raw",
            "-n",
            "4",
            "--ignore-eos",
        ])
        .args(["--flash-attn", fa])
        .args(extra)
        .arg("--trace")
        .arg(&dir)
        .env("CKTRACE_TRACE_ROOT", d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "run --flash-attn {fa}: {}", stderr(&o));
    let v = bin()
        .args(["parse", dir.to_str().unwrap(), "--validate"])
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "validate --flash-attn {fa}: {}{}",
        stdout(&v),
        stderr(&v)
    );
    (d, dir)
}

fn stats(dir: &Path) -> serde_json::Value {
    let o = bin()
        .args([
            "parse",
            dir.to_str().unwrap(),
            "--stats",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if v.get("stats").is_some() {
        v["stats"].clone()
    } else {
        v
    }
}

fn paths(st: &serde_json::Value) -> Vec<String> {
    st["by_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect()
}

/// Flash attention on: every step reads, per layer, K and V rows of
/// `n_head x attended cells` (step 0: query token i attends i + 1 cells).
fn check_fa_on(name: &str, tag: &str) {
    let a = attn(name);
    let (_d, dir) = traced(tag, name, "on", &[]);
    let st = stats(&dir);
    assert!(
        paths(&st).iter().any(|p| p == "flash_attn"),
        "{:?}",
        paths(&st)
    );
    for s in st["steps"].as_array().unwrap() {
        let step = s["step"].as_u64().unwrap();
        let pos = s["pos"].as_u64().unwrap();
        let n_tok = s["n_tokens"].as_u64().unwrap();
        let cells: u64 = (0..a.layers)
            .map(|il| (pos..pos + n_tok).map(|p| a.attended(il, p)).sum::<u64>())
            .sum();
        let want = 2 * a.n_head * cells * a.head_dim * KV_ELT;
        assert_eq!(
            s["split"]["kv_cache"].as_u64().unwrap(),
            want,
            "{name} step {step} (pos {pos}, {n_tok} tokens): KV bytes with flash attention on"
        );
    }
}

#[test]
fn flash_attn_on_smollm2_kv_bytes_are_heads_times_attended_cells() {
    check_fa_on("smollm2-q4km", "fa-on-smol");
}

#[test]
fn flash_attn_on_gemma3_kv_bytes_are_heads_times_attended_cells() {
    check_fa_on("gemma3", "fa-on-gemma");
}

/// Flash attention off: each decode step's KQ and KQV matmuls read the whole
/// padded KV length (cells in use rounded up to 256) of every KV head.
#[test]
fn flash_attn_off_kv_bytes_are_the_padded_length_of_every_kv_head() {
    let a = attn("smollm2-q4km");
    let (_d, dir) = traced("fa-off", "smollm2-q4km", "off", &[]);
    let st = stats(&dir);
    assert!(
        !paths(&st).iter().any(|p| p.starts_with("flash_attn")),
        "{:?}",
        paths(&st)
    );
    for s in st["steps"].as_array().unwrap() {
        let step = s["step"].as_u64().unwrap();
        if step == 0 {
            continue; // the prompt's KQ chunks split the heads: see the docs
        }
        let pos = s["pos"].as_u64().unwrap();
        let n_kv = (pos + 1).div_ceil(256) * 256;
        let want = a.layers * 2 * n_kv * a.n_head_kv * a.head_dim * KV_ELT;
        assert_eq!(
            s["split"]["kv_cache"].as_u64().unwrap(),
            want,
            "step {step} (pos {pos}): KV bytes with flash attention off"
        );
    }
}

fn census(tag: &str, prompt: &str) -> (tempfile::TempDir, PathBuf) {
    let d = scratch(tag);
    let dir = d.path().join("t");
    let o = bin()
        .arg("census")
        .arg(model("smollm2-q4km"))
        .args(["-p", prompt, "-n", "3", "--flash-attn", "on", "--dir"])
        .arg(&dir)
        .env("CKTRACE_TRACE_ROOT", d.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "census --flash-attn on: {}{}",
        stdout(&o),
        stderr(&o)
    );
    (d, dir)
}

/// A short prompt takes the one-row kernel for the prompt and the decode; a
/// prompt of more than 256 tokens takes the tiled kernel for the prompt and,
/// with 512 cells in use, the decode path split over KV chunks.
#[test]
fn census_with_flash_attn_covers_every_kernel_path() {
    let (_d, dir) = census(
        "fa-census-short",
        "The quick brown fox jumps over the lazy dog",
    );
    assert!(paths(&stats(&dir)).iter().any(|p| p == "flash_attn"));
    let long = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(24);
    let (_d2, dir2) = census("fa-census-long", &long);
    let p = paths(&stats(&dir2));
    assert!(p.iter().any(|p| p == "flash_attn_tiled"), "{p:?}");
    assert!(p.iter().any(|p| p == "flash_attn_split"), "{p:?}");
}
