//! Every kernel level this CPU has (scalar, AVX2, AVX-512) gives the same
//! logits, bit for bit, on the real models: the scalar level follows the
//! SIMD kernels' float order, and the float types' orders follow the CPU,
//! not the level. The models are the SmolLM2 catalogue files and the ones
//! `tests/ck_parity.rs` derives with `cktrace quantize`; a missing model
//! fails the test, naming it.

use std::path::PathBuf;

use cktrace_ck::layout::{KvType, LayoutOptions, WeightLayout, WeightPlacement};
use cktrace_ck::quant::KernelLevel;
use cktrace_ck::{Engine, EngineOptions};

/// The model cache, as cktrace's catalogue finds it.
fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CKTRACE_MODELS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("cktrace/models");
    }
    let home = std::env::var_os("HOME").expect("no HOME to find the model cache in");
    PathBuf::from(home).join(".cache/cktrace/models")
}

fn model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "model {} is missing: run `cktrace models fetch smollm2 smollm2-q4km smollm2-q8`, \
         and `cargo test --release --test ck_parity` for the derived ck-* files",
        p.display()
    );
    p
}

/// A prompt pass (several tokens) and two one-token steps at `level`:
/// every logit of the three.
fn logits(file: &str, level: KernelLevel) -> Vec<f32> {
    let options = EngineOptions {
        layout: LayoutOptions {
            ctx: 64,
            batch: 16,
            threads: 2,
            kv_type: KvType::F16,
            weights: WeightPlacement::Map,
            head: WeightLayout::Packed,
            layers: WeightLayout::Packed,
        },
        kernels: Some(level),
        check_canaries: true,
        ggml_paths: None,
    };
    let mut e = Engine::new(&model(file), options).unwrap_or_else(|err| panic!("{file}: {err}"));
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 260, 4889, 3110, 4089, 281];
    let mut all = e.forward(&prompt, 0).unwrap().to_vec();
    for pos in prompt.len()..prompt.len() + 2 {
        let next = all[all.len() - e.n_vocab()..]
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as u32;
        all.extend_from_slice(e.forward(&[next], pos).unwrap());
    }
    all
}

fn same_bits_at_every_level(file: &str) {
    let levels: Vec<KernelLevel> = KernelLevel::ALL
        .into_iter()
        .filter(|l| l.available())
        .collect();
    let want = logits(file, KernelLevel::Scalar);
    assert!(
        want.iter().all(|v| v.is_finite()),
        "{file}: non-finite logits"
    );
    for &level in &levels[1..] {
        let got = logits(file, level);
        let diff = want
            .iter()
            .zip(&got)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            diff.is_none(),
            "{file}: {level} differs from scalar at logit {} ({} vs {})",
            diff.unwrap(),
            got[diff.unwrap()],
            want[diff.unwrap()]
        );
    }
    eprintln!("{file}: {} logits identical at {levels:?}", want.len());
}

#[test]
fn q4_k_m_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.Q4_K_M.gguf");
}

#[test]
fn q4_1_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn q8_0_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.Q8_0.gguf");
}

#[test]
fn q4_0_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.ck-Q4_0.gguf");
}

#[test]
fn q5_k_m_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.ck-Q5_K_M.gguf");
}

#[test]
fn f16_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.ck-F16.gguf");
}

#[test]
fn bf16_logits_are_identical_at_every_level() {
    same_bits_at_every_level("SmolLM2-135M-Instruct.ck-BF16.gguf");
}
