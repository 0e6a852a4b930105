//! The ck engine held to the ggml engine (llama.cpp on its default path on
//! this machine), teacher-forced: both get the same token ids at every step
//! (the prompt, then the ggml engine's greedy choice, fed to both), and at
//! every step the two logit vectors must agree: the same top-1 token on at
//! least 99% of steps, and NMSE (test-backend-ops' definition,
//! sum((a-b)^2) / sum(a^2), with a = ggml) of at most 1e-4 at every step.
//!
//! The ck engine follows the kernel ggml picks for each weight on this CPU
//! (cktrace_ck::profile: repacked Q4_0/Q4_K GEMV and GEMM, the tiled
//! K-quant prompt matmul, vec_dot), and is told when the ggml side runs
//! with repack off. AMX is hidden from ggml for the whole process (see
//! [`ggml_without_amx`]).
//!
//! Models: the SmolLM2 catalogue files (Q4_1, Q4_K_M, Q8_0) and SmolLM2
//! quantized here with `cktrace quantize` to Q4_0, Q5_K_M, F16 and BF16, so
//! every weight type's kernels run end to end. Also here: engine-level
//! hostile inputs (wrong shape, missing tensor, unsupported type or
//! architecture) and the layout's agreement with ggml's tensor map.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cktrace::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use cktrace::llama::{self, Context, ContextParams, FlashAttn, Model, ModelParams};
use cktrace_ck::layout::{KvType, LayoutOptions, Memory, WeightLayout, WeightPlacement};
use cktrace_ck::profile::GgmlProfile;
use cktrace_ck::{Engine, EngineOptions};

mod common;
use common::{argmax, ggml_without_amx, model, nmse};

/// Teacher-forced steps per model (step 0 is the prompt).
const STEPS: usize = 256;
const PROMPT: &str = "The history of the printing press begins in";
const MAX_NMSE: f64 = 1e-4;
const MIN_TOP1: f64 = 0.99;

struct Report {
    steps: usize,
    top1_agree: usize,
    max_nmse: f64,
    worst_step: usize,
}

/// One ggml run at a time: llama.cpp's backend is process-wide and the
/// machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn parity(path: &Path, mut options: EngineOptions, repack: bool) -> Report {
    ggml_without_amx();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !repack && options.ggml_paths.is_none() {
        // The ck engine follows the paths of the ggml run it is held to.
        options.ggml_paths = Some(GgmlProfile::detect().without_repack());
    }
    let ggml_model = Model::load(path, ModelParams { mmap: true, repack }).expect("ggml load");
    let mut ctx = Context::new(
        &ggml_model,
        ContextParams {
            n_ctx: 512,
            n_batch: 512,
            threads: 2,
            // the ck engine follows ggml's attention as matmuls over the
            // KV cache (its float order), not the fused FLASH_ATTN_EXT
            flash_attn: FlashAttn::Off,
        },
        None,
    )
    .expect("ggml context");
    let prompt = ggml_model.tokenize(PROMPT, true).expect("tokenize");
    let mut ck = Engine::new(path, options).expect("ck engine");

    let mut rep = Report {
        steps: 0,
        top1_agree: 0,
        max_nmse: 0.0,
        worst_step: 0,
    };
    let mut feed: Vec<i32> = prompt.clone();
    let mut pos = 0usize;
    for step in 0..STEPS {
        ctx.decode(&feed, pos as i32).expect("ggml decode");
        let ids: Vec<u32> = feed.iter().map(|&t| t as u32).collect();
        let b = ck.forward(&ids, pos).expect("ck forward");
        let a = ctx.logits();
        assert_eq!(a.len(), b.len(), "vocab sizes");
        let e = nmse(a, b);
        let (ta, tb) = (argmax(a), argmax(b));
        rep.steps += 1;
        rep.top1_agree += (ta == tb) as usize;
        if e > rep.max_nmse {
            rep.max_nmse = e;
            rep.worst_step = step;
        }
        pos += feed.len();
        feed = vec![ta as i32];
    }
    rep
}

/// What a model must reach. `Acceptance` is issue 12's bound; `Gap` is a
/// looser bound for the one pair where the two engines compute different
/// things on purpose: the ck engine's f32 KV cache (`--kv-type f32`)
/// against ggml's f16 one. Tiny differences are amplified, layer after
/// layer, by the rounding of the quantized activations (ggml with repack
/// against ggml without it differs by NMSE 1e-3..2e-2 per step on these
/// models), so that pair is held to "the same model" and its figures are
/// printed; every other pair computes ggml's arithmetic and is held to the
/// acceptance bound.
#[derive(Clone, Copy)]
enum Bound {
    Acceptance,
    Gap { min_top1: f64, max_nmse: f64 },
}

const GAP: Bound = Bound::Gap {
    min_top1: 0.90,
    max_nmse: 0.1,
};

fn check(name: &str, path: &Path, options: EngineOptions, repack: bool, bound: Bound) {
    let r = parity(path, options, repack);
    let top1 = r.top1_agree as f64 / r.steps as f64;
    eprintln!(
        "ck parity {name} (ggml {}): {} steps, top-1 agreement {:.4} ({}/{}), max NMSE {:.3e} at step {}",
        if repack { "default path" } else { "without repack" },
        r.steps, top1, r.top1_agree, r.steps, r.max_nmse, r.worst_step
    );
    let (min_top1, max_nmse) = match bound {
        Bound::Acceptance => (MIN_TOP1, MAX_NMSE),
        Bound::Gap { min_top1, max_nmse } => (min_top1, max_nmse),
    };
    assert!(
        top1 >= min_top1,
        "{name}: top-1 agreement {top1:.4} < {min_top1}"
    );
    assert!(
        r.max_nmse <= max_nmse,
        "{name}: max NMSE {:.3e} at step {} > {max_nmse:e}",
        r.max_nmse,
        r.worst_step
    );
}

fn opts() -> EngineOptions {
    EngineOptions {
        layout: LayoutOptions {
            ctx: 512,
            batch: 64,
            threads: 2,
            kv_type: KvType::F16,
            weights: WeightPlacement::Map,
            head: WeightLayout::Packed,
            layers: WeightLayout::Packed,
        },
        kernels: None,
        check_canaries: true,
        ggml_paths: None,
    }
}

/// SmolLM2 quantized from the catalogue's Q4_1 file to `ftype`, cached
/// beside the catalogue models for later runs.
fn derived(ftype: &str) -> PathBuf {
    ggml_without_amx();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = model("smollm2");
    let out = src.with_file_name(format!("SmolLM2-135M-Instruct.ck-{ftype}.gguf"));
    if !out.exists() {
        let tmp = out.with_extension("gguf.tmp");
        llama::quantize(&src, &tmp, ftype, 2).expect("quantize");
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

#[test]
fn parity_smollm2_q4_1() {
    check(
        "SmolLM2 Q4_1",
        &model("smollm2"),
        opts(),
        true,
        Bound::Acceptance,
    );
}

#[test]
fn parity_smollm2_q8_0() {
    check(
        "SmolLM2 Q8_0",
        &model("smollm2-q8"),
        opts(),
        true,
        Bound::Acceptance,
    );
}

#[test]
fn parity_smollm2_q4_0() {
    let path = derived("Q4_0");
    // ggml's default path repacks every Q4_0 matrix (CPU_REPACK,
    // q4_0_8x8_q8_0 GEMV/GEMM); the ck engine computes that arithmetic.
    check("SmolLM2 Q4_0", &path, opts(), true, Bound::Acceptance);
    // ggml's plain Q4_0 path (vec_dot, tinyBLAS), which the ck engine
    // follows when told that ggml runs without repack.
    check("SmolLM2 Q4_0", &path, opts(), false, Bound::Acceptance);
}

/// Q4_K_M: the Q4_K matrices go through ggml's repacked GEMM (groups of 4
/// prompt tokens) and GEMV (the rest, and every decode step), the Q6_K
/// ones through the tiled kernel for the prompt and vec_dot after it, Q5_0
/// and Q8_0 through tinyBLAS and vec_dot. Without repack, the Q4_K
/// matrices take the tiled kernel for the prompt too.
#[test]
fn parity_smollm2_q4_k_m() {
    let path = model("smollm2-q4km");
    check("SmolLM2 Q4_K_M", &path, opts(), true, Bound::Acceptance);
    check("SmolLM2 Q4_K_M", &path, opts(), false, Bound::Acceptance);
}

#[test]
fn parity_smollm2_f16() {
    check(
        "SmolLM2 F16",
        &derived("F16"),
        opts(),
        true,
        Bound::Acceptance,
    );
}

#[test]
fn parity_smollm2_bf16() {
    check(
        "SmolLM2 BF16",
        &derived("BF16"),
        opts(),
        true,
        Bound::Acceptance,
    );
}

/// SmolLM2's widths (576) are not multiples of 256, so Q5_K_M falls back
/// to Q5_1 for most tensors (with Q5_K/Q6_K for ffn_down, Q8_0 for some
/// attn_v and the embeddings). ggml computes Q5_1 with `vec_dot` for the
/// prompt too (tinyBLAS has no Q5_1), which the ck kernels follow.
#[test]
fn parity_smollm2_q5_k_m() {
    check(
        "SmolLM2 Q5_K_M",
        &derived("Q5_K_M"),
        opts(),
        true,
        Bound::Acceptance,
    );
}

/// The other run options compute the same thing: copied weights, one
/// thread, a small batch (the prompt in several chunks) agree with ggml as
/// the defaults do; the f32 KV cache stays close.
#[test]
fn parity_holds_across_run_options() {
    let path = model("smollm2-q8");
    let mut o = opts();
    o.layout.weights = WeightPlacement::Copy;
    o.layout.threads = 1;
    o.layout.batch = 3;
    check(
        "SmolLM2 Q8_0 (copy, 1 thread, batch 3)",
        &path,
        o,
        true,
        Bound::Acceptance,
    );
    // The f32 cache rounds differently from ggml's f16 one.
    let mut o = opts();
    o.layout.kv_type = KvType::F32;
    check("SmolLM2 Q8_0 (f32 KV)", &path, o, true, GAP);
}

/// The logits do not depend on the thread count, the placement of the
/// weights or their layout (packed or plain head and Q5_0 layer
/// matrices): bit for bit. SmolLM2 Q4_K_M has Q5_0 layer matrices; the
/// nine-token prompt takes the packed kernels' token pairs and a single
/// token.
#[test]
fn logits_are_bitwise_identical_across_threads_and_placement() {
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 260, 4889, 3110, 4089, 281];
    for name in ["smollm2", "smollm2-q4km"] {
        let path = model(name);
        let mut runs = Vec::new();
        for (threads, weights, head, layers) in [
            (
                1,
                WeightPlacement::Map,
                WeightLayout::Packed,
                WeightLayout::Packed,
            ),
            (
                2,
                WeightPlacement::Map,
                WeightLayout::Packed,
                WeightLayout::Packed,
            ),
            (
                3,
                WeightPlacement::Copy,
                WeightLayout::Packed,
                WeightLayout::Packed,
            ),
            (
                2,
                WeightPlacement::Map,
                WeightLayout::Plain,
                WeightLayout::Packed,
            ),
            (
                2,
                WeightPlacement::Map,
                WeightLayout::Packed,
                WeightLayout::Plain,
            ),
        ] {
            let mut o = opts();
            o.layout.threads = threads;
            o.layout.weights = weights;
            o.layout.head = head;
            o.layout.layers = layers;
            let mut e = Engine::new(&path, o).unwrap();
            let mut all = e.forward(&prompt, 0).unwrap().to_vec();
            let next = argmax(&all) as u32;
            all.extend_from_slice(e.forward(&[next], prompt.len()).unwrap());
            runs.push(all);
        }
        for (i, r) in runs.iter().enumerate().skip(1) {
            assert!(*r == runs[0], "{name}: run {i} differs from run 0");
        }
    }
}

/// layout.json's weight entries are where ggml's own GGUF reader says the
/// tensors are.
#[test]
fn layout_weights_match_ggml_tensor_map() {
    ggml_without_amx();
    for name in ["smollm2", "smollm2-q4km"] {
        let path = model(name);
        // Plain layer matrices: every one of them is then its file range
        // (packed ones are checked in ck_run's layout test).
        let o = LayoutOptions {
            layers: WeightLayout::Plain,
            ..LayoutOptions::default()
        };
        let plan = cktrace_ck::engine::plan(&path, &o).unwrap();
        let ggml = llama::gguf_tensors(&path).unwrap();
        let mut n = 0;
        for t in &ggml {
            let e = plan
                .find(&t.name)
                .unwrap_or_else(|| panic!("{name}: {} not in the layout", t.name));
            assert_eq!(e.memory, Memory::File);
            assert_eq!((e.offset, e.size), (t.file_offset, t.bytes), "{}", t.name);
            assert_eq!(e.dtype, t.dtype, "{}", t.name);
            n += 1;
        }
        assert_eq!(
            n,
            plan.entries
                .iter()
                .filter(|e| e.memory == Memory::File)
                .count()
        );
    }
}

// ---- hostile models: one clear error, never a panic ----

/// Rewrites the SmolLM2 Q8_0 file with `edit` applied to its tensors and
/// metadata (data copied), and returns the engine's error.
fn engine_error(
    tag: &str,
    edit: impl Fn(&mut Vec<(String, GgufValue)>, &mut Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>),
) -> String {
    let src = model("smollm2-q8");
    let g = GgufFile::open(&src).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let mut meta: Vec<(String, GgufValue)> = g.metadata().to_vec();
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> = g
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dims.clone(),
                t.ggml_type,
                bytes[t.file_offset as usize..t.file_end() as usize].to_vec(),
            )
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        if k != "general.alignment" {
            w.add_metadata(&k, v);
        }
    }
    for (name, dims, ty, data) in tensors {
        w.add_tensor(&name, &dims, ty, data).unwrap();
    }
    let dir = common::scratch(tag);
    let path = dir.path().join("bad.gguf");
    w.write(&path).unwrap();
    let err = match Engine::new(&path, opts()) {
        Ok(_) => panic!("{tag}: the engine accepted the file"),
        Err(e) => e,
    };
    let plan_err = cktrace_ck::engine::plan(&path, &LayoutOptions::default())
        .err()
        .map(|e| e.to_string());
    assert_eq!(plan_err.as_deref(), Some(err.to_string().as_str()));
    err.to_string()
}

#[test]
fn hostile_models_give_one_clear_error() {
    let e = engine_error("shape", |_, t| {
        let q = t.iter_mut().find(|t| t.0 == "blk.3.attn_q.weight").unwrap();
        // Same bytes, rows reinterpreted: 576x576 as 1152x288.
        q.1 = vec![1152, 288];
    });
    assert!(
        e.contains("blk.3.attn_q.weight")
            && e.contains("shape [1152, 288]")
            && e.contains("expected [576, 576]"),
        "{e}"
    );

    let e = engine_error("missing", |_, t| {
        t.retain(|t| t.0 != "blk.7.ffn_down.weight")
    });
    assert!(e.contains("no tensor named blk.7.ffn_down.weight"), "{e}");

    let e = engine_error("type", |_, t| {
        let n = t
            .iter_mut()
            .find(|t| t.0 == "blk.0.ffn_norm.weight")
            .unwrap();
        n.2 = GgmlType::I32;
    });
    assert!(
        e.contains("blk.0.ffn_norm.weight") && e.contains("type i32"),
        "{e}"
    );

    let e = engine_error("qtype", |_, t| {
        let n = t.iter_mut().find(|t| t.0 == "blk.2.attn_v.weight").unwrap();
        // IQ4_NL (18-byte blocks of 32): ggml has it, the ck engine does not.
        let rows = n.1[1];
        n.2 = GgmlType::IQ4_NL;
        n.3 = vec![0; (rows * 576 / 32 * 18) as usize];
    });
    assert!(
        e.contains("blk.2.attn_v.weight") && e.contains("type iq4_nl"),
        "{e}"
    );

    let e = engine_error("arch", |m, _| {
        for (k, v) in m.iter_mut() {
            if k == "general.architecture" {
                *v = GgufValue::String("mamba".into());
            }
        }
    });
    assert!(e.contains("architecture mamba is not supported"), "{e}");

    let e = engine_error("key", |m, _| {
        m.retain(|(k, _)| k != "llama.attention.head_count")
    });
    assert!(e.contains("llama.attention.head_count is missing"), "{e}");

    let e = engine_error("extra", |_, t| {
        t.push((
            "blk.0.attn_q.bias".into(),
            vec![576],
            GgmlType::F32,
            vec![0; 576 * 4],
        ))
    });
    assert!(e.contains("blk.0.attn_q.bias"), "{e}");
}

#[test]
fn bad_run_options_and_tokens_are_errors() {
    let path = model("smollm2-q8");
    let mut o = opts();
    o.layout.batch = 0;
    let err = Engine::new(&path, o).err().expect("batch 0 is refused");
    assert!(err.to_string().contains("batch"), "{err}");
    let mut o = opts();
    o.layout.ctx = 8;
    o.layout.batch = 8;
    let mut e = Engine::new(&path, o).unwrap();
    assert!(e
        .forward(&[1; 9], 0)
        .unwrap_err()
        .to_string()
        .contains("context full"));
    assert!(e
        .forward(&[49152], 0)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert!(e.forward(&[1], 3).is_err(), "a gap in the cache");
    assert!(e.forward(&[], 0).is_err());
    e.forward(&[1, 2], 0).unwrap();
    e.clobber_canary_for_test(5);
    let err = e.verify_canaries().unwrap_err().to_string();
    assert!(
        err.contains("canary") && err.contains("overwritten"),
        "{err}"
    );
}

// ---- the repacked kernels, held to ggml's own at the kernel level ----

extern "C" {
    fn ggml_gemv_q4_0_8x8_q8_0(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const u8,
        vy: *const u8,
        nr: i32,
        nc: i32,
    );
    fn ggml_gemm_q4_0_8x8_q8_0(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const u8,
        vy: *const u8,
        nr: i32,
        nc: i32,
    );
    fn ggml_gemv_q4_K_8x8_q8_K(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const u8,
        vy: *const u8,
        nr: i32,
        nc: i32,
    );
    fn ggml_gemm_q4_K_8x8_q8_K(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const u8,
        vy: *const u8,
        nr: i32,
        nc: i32,
    );
    fn ggml_cpu_init();
    fn ggml_quantize_mat_q8_0_4x8(x: *const f32, vy: *mut u8, k: i64);
    fn ggml_quantize_mat_q8_K_4x8(x: *const f32, vy: *mut u8, k: i64);
}

/// Deterministic test values: activations in (-1, 1) with a few larger
/// ones, as the model's are.
fn test_values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 37 == 0 {
                u * 6.0
            } else {
                u
            }
        })
        .collect()
}

/// ggml's `make_block_q4_0x8` (interleave 8) over rows of Q4_0 blocks:
/// for each group of 8 rows, each block index, 8 f16 scales then 128
/// bytes, 8 at a time from the rows in turn, XORed with 0x88.
fn repack_q4_0x8(rows: &[u8], n_rows: usize, nb: usize) -> Vec<u8> {
    let blk = |r: usize, b: usize| &rows[(r * nb + b) * 18..(r * nb + b + 1) * 18];
    let mut out = Vec::new();
    for g in 0..n_rows / 8 {
        for b in 0..nb {
            for i in 0..8 {
                out.extend_from_slice(&blk(8 * g + i, b)[..2]);
            }
            for i in 0..16 {
                let (src, off) = (i % 8, (i / 8) * 8);
                let q = &blk(8 * g + src, b)[2 + off..2 + off + 8];
                out.extend(q.iter().map(|&x| x ^ 0x88));
            }
        }
    }
    out
}

/// ggml's `make_block_q4_Kx8` (interleave 8).
fn repack_q4_kx8(rows: &[u8], n_rows: usize, nb: usize) -> Vec<u8> {
    let blk = |r: usize, b: usize| &rows[(r * nb + b) * 144..(r * nb + b + 1) * 144];
    let mut out = Vec::new();
    for g in 0..n_rows / 8 {
        for b in 0..nb {
            let ins: Vec<&[u8]> = (0..8).map(|i| blk(8 * g + i, b)).collect();
            for x in &ins {
                out.extend_from_slice(&x[0..2]);
            }
            for x in &ins {
                out.extend_from_slice(&x[2..4]);
            }
            let sc = |j: usize| &ins[j][4..16];
            let mut scales = [0u8; 96];
            for half in 0..2 {
                for i in 0..4 {
                    let (mut s, mut m) = ([0u8; 8], [0u8; 8]);
                    for j in 0..8 {
                        if half == 0 {
                            s[j] = sc(j)[i] & 63;
                            m[j] = sc(j)[i + 4] & 63;
                        } else {
                            s[j] = ((sc(j)[i] & 192) >> 2) | (sc(j)[i + 8] & 15);
                            m[j] = ((sc(j)[i + 4] & 192) >> 2) | ((sc(j)[i + 8] & 240) >> 4);
                        }
                    }
                    let o = &mut scales[half * 48 + i * 12..half * 48 + i * 12 + 12];
                    for j in 0..4 {
                        o[j] = (s[j] & 63) + ((s[j + 4] & 48) << 2);
                        o[j + 4] = (m[j] & 63) + ((m[j + 4] & 48) << 2);
                        o[j + 8] = (s[j + 4] & 15) + ((m[j + 4] & 15) << 4);
                    }
                }
            }
            out.extend_from_slice(&scales);
            for i in 0..128 {
                let (src, off) = (i % 8, (i / 8) * 8);
                out.extend_from_slice(&ins[src][16 + off..16 + off + 8]);
            }
        }
    }
    out
}

/// ggml's repacked GEMV and GEMM on random weights and activations (24
/// rows: one pair of 8-row groups for the AVX-512 code and one group for
/// its AVX2 tail; 20 tokens: a group of 16 and one of 4), against the ck
/// engine's `mat_vec_as` at every kernel level the CPU has, bit for bit.
#[test]
fn repacked_kernels_equal_ggml_bit_for_bit() {
    use cktrace_ck::quant::{self, KernelLevel, Kernels, MatArith};
    if !std::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: ggml does not repack on this CPU");
        return;
    }
    ggml_without_amx();
    // SAFETY: ggml's CPU initialisation (its f16 table, which the GEMV
    // reads the activation scales through), idempotent.
    unsafe { ggml_cpu_init() };
    let (n_rows, n_tok) = (24usize, 20usize);
    for (ty, k) in [(GgmlType::Q4_0, 576usize), (GgmlType::Q4_K, 1536)] {
        let vdt = quant::vec_dot_type(ty);
        let scalar = Kernels::scalar();
        let wb = quant::row_bytes(ty, k).unwrap();
        let xb = quant::row_bytes(vdt, k).unwrap();
        let mut rows = vec![0u8; n_rows * wb];
        let wf = test_values(1, n_rows * k);
        for r in 0..n_rows {
            scalar
                .quantize_row(ty, &wf[r * k..(r + 1) * k], &mut rows[r * wb..(r + 1) * wb])
                .unwrap();
        }
        let x = test_values(2, n_tok * k);
        let mut xq = vec![0u8; n_tok * xb];
        for t in 0..n_tok {
            scalar
                .quantize_row(vdt, &x[t * k..(t + 1) * k], &mut xq[t * xb..(t + 1) * xb])
                .unwrap();
        }
        let nb = k / ty.block_size() as usize;
        let packed = if ty == GgmlType::Q4_0 {
            repack_q4_0x8(&rows, n_rows, nb)
        } else {
            repack_q4_kx8(&rows, n_rows, nb)
        };
        // ggml: GEMV per token, and GEMM over the tokens in groups of 4
        // (activations quantized by ggml's 4x8 quantizer).
        let mut gemv = vec![0f32; n_tok * n_rows];
        let mut gemm = vec![0f32; n_tok * n_rows];
        let x4b = 4 * xb;
        let mut x4 = vec![0u8; n_tok / 4 * x4b];
        for t in 0..n_tok {
            // SAFETY: n_rows outputs, the packed weights of n_rows rows of
            // k, one activation row of xb bytes; nr = 1.
            unsafe {
                let f = if ty == GgmlType::Q4_0 {
                    ggml_gemv_q4_0_8x8_q8_0
                } else {
                    ggml_gemv_q4_K_8x8_q8_K
                };
                f(
                    k as i32,
                    gemv[t * n_rows..].as_mut_ptr(),
                    n_rows,
                    packed.as_ptr(),
                    xq[t * xb..].as_ptr(),
                    1,
                    n_rows as i32,
                );
            }
        }
        for g in 0..n_tok / 4 {
            // SAFETY: 4 rows of k floats in, 4 * xb bytes out.
            unsafe {
                let q = if ty == GgmlType::Q4_0 {
                    ggml_quantize_mat_q8_0_4x8
                } else {
                    ggml_quantize_mat_q8_K_4x8
                };
                q(
                    x[4 * g * k..].as_ptr(),
                    x4[g * x4b..].as_mut_ptr(),
                    k as i64,
                );
            }
        }
        // SAFETY: n_tok x n_rows outputs with row stride n_rows, the
        // packed weights, n_tok / 4 groups of interleaved activations.
        unsafe {
            let f = if ty == GgmlType::Q4_0 {
                ggml_gemm_q4_0_8x8_q8_0
            } else {
                ggml_gemm_q4_K_8x8_q8_K
            };
            f(
                k as i32,
                gemm.as_mut_ptr(),
                n_rows,
                packed.as_ptr(),
                x4.as_ptr(),
                n_tok as i32,
                n_rows as i32,
            );
        }
        let (a_gemv, a_gemm) = if ty == GgmlType::Q4_0 {
            (MatArith::RepackQ4_0, MatArith::RepackQ4_0)
        } else {
            (MatArith::RepackQ4KGemv, MatArith::RepackQ4KGemm)
        };
        let mut differs_from_vec_dot = 0;
        for level in KernelLevel::ALL.into_iter().filter(|l| l.available()) {
            let kern = Kernels::new(level).unwrap();
            for t in 0..n_tok {
                let xt = &xq[t * xb..(t + 1) * xb];
                for (arith, want) in [(a_gemv, &gemv), (a_gemm, &gemm)] {
                    let mut got = vec![0f32; n_rows];
                    kern.mat_vec_as(arith, ty, k, &rows, xt, &mut got).unwrap();
                    let want = &want[t * n_rows..(t + 1) * n_rows];
                    for r in 0..n_rows {
                        assert_eq!(
                            got[r].to_bits(),
                            want[r].to_bits(),
                            "{ty} {arith} at {level}: row {r} token {t}: ck {} ggml {}",
                            got[r],
                            want[r]
                        );
                    }
                }
                let mut vd = vec![0f32; n_rows];
                kern.mat_vec(ty, k, &rows, xt, &mut vd).unwrap();
                let g = &gemv[t * n_rows..(t + 1) * n_rows];
                differs_from_vec_dot += vd.iter().zip(g).filter(|(a, b)| a != b).count();
            }
        }
        // The test data tells the paths apart: vec_dot's float order gives
        // other bits on some rows.
        assert!(differs_from_vec_dot > 0, "{ty}: vec_dot equals the GEMV");
    }
}

/// One ggml MUL_MAT of a `ty` weight (`rows` rows of `k`, the bytes in
/// `w`) with `n_tok` f32 activations, computed by ggml's CPU backend on
/// plain (not repacked) memory with 2 threads: tiled from 8 tokens,
/// vec_dot below. Returns `[n_tok][rows]`.
fn ggml_mul_mat_plain(ty: GgmlType, k: usize, rows: usize, w: &[u8], x: &[f32]) -> Vec<f32> {
    use cktrace::ffi;
    let n_tok = x.len() / k;
    // SAFETY: a ggml context of its own, tensors allocated in it and
    // filled within their sizes (ggml_nbytes equals the lengths checked
    // here), the graph computed, the result copied out, the context freed.
    unsafe {
        let ctx = ffi::ggml_init(ffi::ggml_init_params {
            mem_size: 64 << 20,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: false,
        });
        assert!(!ctx.is_null());
        let wt = ffi::ggml_new_tensor_2d(ctx, ty as u32 as ffi::ggml_type, k as i64, rows as i64);
        assert_eq!(ffi::ggml_nbytes(wt), w.len());
        std::ptr::copy_nonoverlapping(w.as_ptr(), (*wt).data.cast::<u8>(), w.len());
        let xt = ffi::ggml_new_tensor_2d(ctx, ffi::GGML_TYPE_F32, k as i64, n_tok as i64);
        std::ptr::copy_nonoverlapping(x.as_ptr(), (*xt).data.cast::<f32>(), x.len());
        let yt = ffi::ggml_mul_mat(ctx, wt, xt);
        let gf = ffi::ggml_new_graph(ctx);
        ffi::ggml_build_forward_expand(gf, yt);
        let st = ffi::ggml_graph_compute_with_ctx(ctx, gf, 2);
        assert_eq!(st, ffi::GGML_STATUS_SUCCESS);
        let y = std::slice::from_raw_parts((*yt).data.cast::<f32>(), rows * n_tok).to_vec();
        ffi::ggml_free(ctx);
        y
    }
}

/// The tiled K-quant matmul (ggml-cpu/tiled, what ggml runs for a prompt
/// of 8 or more tokens with a K-quant weight it does not repack), on its
/// narrow (up to 16 tokens per window) and standard paths (256 rows and
/// 32 tokens make ggml's chunks 32 x 32), against the ck engine's
/// `MatArith::Tiled` at every level, bit for bit; and below 8 tokens,
/// ggml's vec_dot against the ck SIMD levels' `mat_vec`.
#[test]
fn tiled_kernels_equal_ggml_bit_for_bit() {
    use cktrace_ck::profile::TILED_MIN_TOKENS;
    use cktrace_ck::quant::{self, KernelLevel, Kernels, MatArith};
    ggml_without_amx();
    let profile = GgmlProfile::detect();
    if !profile.tiled {
        eprintln!("ggml has no tiled path on this CPU");
        return;
    }
    let (k, rows) = (1536usize, 256usize);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let scalar = Kernels::scalar();
        let wb = quant::row_bytes(ty, k).unwrap();
        let xb = quant::row_bytes(GgmlType::Q8_K, k).unwrap();
        let wf = test_values(3, rows * k);
        let mut w = vec![0u8; rows * wb];
        for r in 0..rows {
            scalar
                .quantize_row(ty, &wf[r * k..(r + 1) * k], &mut w[r * wb..(r + 1) * wb])
                .unwrap();
        }
        for n_tok in [4usize, TILED_MIN_TOKENS, 32] {
            let x = test_values(4 + n_tok as u64, n_tok * k);
            let want = ggml_mul_mat_plain(ty, k, rows, &w, &x);
            let arith = if n_tok >= TILED_MIN_TOKENS {
                MatArith::Tiled
            } else {
                MatArith::VecDot
            };
            for level in KernelLevel::ALL.into_iter().filter(|l| l.available()) {
                if arith == MatArith::VecDot && level == KernelLevel::Scalar {
                    continue; // the scalar vec_dot adds in ggml's generic order
                }
                let kern = Kernels::new(level).unwrap();
                for t in 0..n_tok {
                    let mut xq = vec![0u8; xb];
                    kern.quantize_row(GgmlType::Q8_K, &x[t * k..(t + 1) * k], &mut xq)
                        .unwrap();
                    let mut got = vec![0f32; rows];
                    kern.mat_vec_as(arith, ty, k, &w, &xq, &mut got).unwrap();
                    for r in 0..rows {
                        let e = want[t * rows + r];
                        assert_eq!(
                            got[r].to_bits(),
                            e.to_bits(),
                            "{ty} {arith} {n_tok} tokens at {level}: row {r} token {t}: ck {} ggml {e}",
                            got[r]
                        );
                    }
                }
            }
        }
    }
}
