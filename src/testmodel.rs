//! Tiny random-weight models written from scratch, for tests.
//!
//! The real models the tracer targets are dense; to exercise llama.cpp's
//! mixture-of-experts path (`MUL_MAT_ID` over 3-D expert tensors) without
//! downloading a multi-gigabyte MoE model, [`write_tiny_moe`] writes a
//! Mixtral-style `llama` model of a few hundred kilobytes whose expert
//! tensors are quantized (Q4_0 and Q8_0), so that `MUL_MAT_ID` reads
//! quantized blocks just as it would in a real model.
//!
//! The weights come from a seeded PRNG, so the same seed gives the same file
//! byte for byte. The model computes nothing meaningful, but llama.cpp loads
//! it, tokenizes text with it (a byte-fallback SentencePiece vocabulary) and
//! decodes with finite logits.

use std::path::Path;

use half::f16;

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, TensorInfo};

/// The shape of the tiny MoE model.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyMoeConfig {
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// Hidden size of each expert's feed-forward network.
    pub n_ff: u32,
    pub n_ctx: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub vocab: TinyVocab,
}

/// The vocabulary written into the tiny model.
#[derive(Debug, Clone, PartialEq)]
pub enum TinyVocab {
    /// A SentencePiece ("llama") vocabulary of `<unk>`, `<s>`, `</s>` and the
    /// 256 byte tokens `<0x00>`..`<0xFF>` (259 tokens): any text tokenizes,
    /// byte by byte.
    SpmBytes,
    /// No tokenizer (`tokenizer.ggml.model = "none"`), only `n_vocab` token
    /// ids; llama.cpp aborts if asked to tokenize or detokenize.
    None { n_vocab: u32 },
}

impl TinyVocab {
    pub fn n_vocab(&self) -> u32 {
        match self {
            TinyVocab::SpmBytes => 3 + 256,
            TinyVocab::None { n_vocab } => *n_vocab,
        }
    }
}

impl Default for TinyMoeConfig {
    fn default() -> Self {
        TinyMoeConfig {
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_ctx: 256,
            n_expert: 4,
            n_expert_used: 2,
            vocab: TinyVocab::SpmBytes,
        }
    }
}

/// What [`write_tiny_moe`] wrote.
#[derive(Debug, Clone)]
pub struct TinyMoeInfo {
    pub config: TinyMoeConfig,
    pub n_vocab: u32,
    pub n_layer: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    /// The tensors as read back from the written file, with their offsets.
    pub tensors: Vec<TensorInfo>,
}

/// Writes the default tiny MoE model (see [`TinyMoeConfig::default`]) with
/// weights drawn from `seed`.
pub fn write_tiny_moe(path: &Path, seed: u64) -> Result<TinyMoeInfo, GgufError> {
    write_tiny_moe_with(path, seed, &TinyMoeConfig::default())
}

/// Writes a tiny Mixtral-style MoE model of shape `cfg` to `path`.
///
/// Tensor types: expert gate/up Q4_0, expert down Q8_0, attention, token
/// embedding and output Q8_0, norms and the router (`ffn_gate_inp`) F32.
pub fn write_tiny_moe_with(
    path: &Path,
    seed: u64,
    cfg: &TinyMoeConfig,
) -> Result<TinyMoeInfo, GgufError> {
    let bad = |msg: String| GgufError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    if cfg.n_head == 0
        || cfg.n_embd % cfg.n_head != 0
        || cfg.n_head_kv == 0
        || cfg.n_head % cfg.n_head_kv != 0
    {
        return Err(bad(format!("tiny model: bad head counts in {cfg:?}")));
    }
    if cfg.n_embd % 32 != 0 || cfg.n_ff % 32 != 0 {
        return Err(bad(format!("tiny model: n_embd and n_ff must be multiples of 32 (the Q4_0/Q8_0 block), got {cfg:?}")));
    }
    if cfg.n_expert == 0
        || cfg.n_expert_used == 0
        || cfg.n_expert_used > cfg.n_expert
        || cfg.n_layer == 0
    {
        return Err(bad(format!(
            "tiny model: bad layer or expert counts in {cfg:?}"
        )));
    }

    let n_vocab = cfg.vocab.n_vocab();
    let head_dim = cfg.n_embd / cfg.n_head;
    let (embd, ff, vocab, nexp) = (
        cfg.n_embd as u64,
        cfg.n_ff as u64,
        n_vocab as u64,
        cfg.n_expert as u64,
    );
    let kv_dim = (head_dim * cfg.n_head_kv) as u64;

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("general.name", "cktrace tiny moe")
        .add_metadata("llama.vocab_size", n_vocab)
        .add_metadata("llama.context_length", cfg.n_ctx)
        .add_metadata("llama.embedding_length", cfg.n_embd)
        .add_metadata("llama.block_count", cfg.n_layer)
        .add_metadata("llama.feed_forward_length", cfg.n_ff)
        .add_metadata("llama.attention.head_count", cfg.n_head)
        .add_metadata("llama.attention.head_count_kv", cfg.n_head_kv)
        .add_metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_metadata("llama.rope.dimension_count", head_dim)
        .add_metadata("llama.rope.freq_base", 10000.0f32)
        .add_metadata("llama.expert_count", cfg.n_expert)
        .add_metadata("llama.expert_used_count", cfg.n_expert_used);
    match cfg.vocab {
        TinyVocab::SpmBytes => {
            // Token types (llama_token_type): 2 unknown, 3 control, 6 byte.
            let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
            let mut types: Vec<i32> = vec![2, 3, 3];
            for b in 0..=255u8 {
                tokens.push(format!("<0x{b:02X}>"));
                types.push(6);
            }
            let scores = vec![0.0f32; tokens.len()];
            w.add_metadata("tokenizer.ggml.model", "llama")
                .add_metadata("tokenizer.ggml.tokens", tokens)
                .add_metadata("tokenizer.ggml.scores", scores)
                .add_metadata("tokenizer.ggml.token_type", types)
                .add_metadata("tokenizer.ggml.unknown_token_id", 0u32)
                .add_metadata("tokenizer.ggml.bos_token_id", 1u32)
                .add_metadata("tokenizer.ggml.eos_token_id", 2u32)
                .add_metadata("tokenizer.ggml.add_bos_token", true);
        }
        TinyVocab::None { .. } => {
            w.add_metadata("tokenizer.ggml.model", "none");
        }
    }

    let mut rng = SplitMix64(seed);
    const STD: f32 = 0.02;
    // The router gets a larger spread so that different tokens pick
    // different experts.
    const ROUTER_STD: f32 = 0.1;
    let ones = |n: u64| f32_bytes(&vec![1.0; n as usize]);

    w.add_tensor(
        "token_embd.weight",
        &[embd, vocab],
        GgmlType::Q8_0,
        rng.quantized(GgmlType::Q8_0, embd * vocab, STD),
    )?;
    w.add_tensor("output_norm.weight", &[embd], GgmlType::F32, ones(embd))?;
    w.add_tensor(
        "output.weight",
        &[embd, vocab],
        GgmlType::Q8_0,
        rng.quantized(GgmlType::Q8_0, embd * vocab, STD),
    )?;
    for il in 0..cfg.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}.weight");
        w.add_tensor(name("attn_norm"), &[embd], GgmlType::F32, ones(embd))?;
        w.add_tensor(
            name("attn_q"),
            &[embd, embd],
            GgmlType::Q8_0,
            rng.quantized(GgmlType::Q8_0, embd * embd, STD),
        )?;
        w.add_tensor(
            name("attn_k"),
            &[embd, kv_dim],
            GgmlType::Q8_0,
            rng.quantized(GgmlType::Q8_0, embd * kv_dim, STD),
        )?;
        w.add_tensor(
            name("attn_v"),
            &[embd, kv_dim],
            GgmlType::Q8_0,
            rng.quantized(GgmlType::Q8_0, embd * kv_dim, STD),
        )?;
        w.add_tensor(
            name("attn_output"),
            &[embd, embd],
            GgmlType::Q8_0,
            rng.quantized(GgmlType::Q8_0, embd * embd, STD),
        )?;
        w.add_tensor(name("ffn_norm"), &[embd], GgmlType::F32, ones(embd))?;
        w.add_tensor(
            name("ffn_gate_inp"),
            &[embd, nexp],
            GgmlType::F32,
            f32_bytes(&rng.normals(embd * nexp, ROUTER_STD)),
        )?;
        let n = embd * ff * nexp;
        w.add_tensor(
            name("ffn_gate_exps"),
            &[embd, ff, nexp],
            GgmlType::Q4_0,
            rng.quantized(GgmlType::Q4_0, n, STD),
        )?;
        w.add_tensor(
            name("ffn_down_exps"),
            &[ff, embd, nexp],
            GgmlType::Q8_0,
            rng.quantized(GgmlType::Q8_0, n, STD),
        )?;
        w.add_tensor(
            name("ffn_up_exps"),
            &[embd, ff, nexp],
            GgmlType::Q4_0,
            rng.quantized(GgmlType::Q4_0, n, STD),
        )?;
    }
    w.write(path)?;

    let written = GgufFile::open(path)?;
    Ok(TinyMoeInfo {
        config: cfg.clone(),
        n_vocab,
        n_layer: cfg.n_layer,
        n_expert: cfg.n_expert,
        n_expert_used: cfg.n_expert_used,
        tensors: written.tensors().to_vec(),
    })
}

/// The shapes of a real model that [`write_like`] can imitate.
#[derive(Debug, Clone, PartialEq)]
pub struct LikeConfig {
    /// The `--like` name.
    pub name: &'static str,
    /// The model whose shapes these are.
    pub original: &'static str,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ctx: u32,
    pub rope_base: f32,
    pub rms_eps: f32,
}

/// TinyLlama-1.1B (the model the seed thesis traced): 22 layers, width
/// 2048, FFN 5632, 32 heads, 4 KV heads, RoPE base 10000.
pub const TINYLLAMA_1_1B: LikeConfig = LikeConfig {
    name: "tinyllama-1.1b",
    original: "TinyLlama-1.1B",
    n_layer: 22,
    n_embd: 2048,
    n_ff: 5632,
    n_head: 32,
    n_head_kv: 4,
    n_ctx: 2048,
    rope_base: 10000.0,
    rms_eps: 1e-5,
};

/// The `--like` names.
pub const LIKE: &[LikeConfig] = &[TINYLLAMA_1_1B];

/// Writes a `llama` model with the shapes of `like` (see [`LIKE`]), the
/// tokenizer of the GGUF model `tokenizer_from` (every `tokenizer.*` key
/// copied, so its vocabulary size is that model's, not the original's), and
/// random weights in F16: matrices N(0, 0.02²), norms 1. `cktrace quantize`
/// then applies llama.cpp's own type rules to it. Returns a one-line
/// description.
pub fn write_like(
    like: &str,
    tokenizer_from: &Path,
    path: &Path,
    seed: u64,
) -> Result<String, GgufError> {
    let cfg = LIKE
        .iter()
        .find(|c| c.name == like)
        .ok_or_else(|| GgufError::Invalid {
            path: path.to_path_buf(),
            msg: format!(
                "--like {like}: unknown model (known: {})",
                LIKE.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            ),
        })?;
    let tok = GgufFile::open(tokenizer_from)?;
    let n_vocab = tok.get_str_arr("tokenizer.ggml.tokens")?.len() as u64;
    // `SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`.
    let tok_name = tokenizer_from
        .file_name()
        .map(|f| {
            f.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| tokenizer_from.display().to_string());
    let name = format!(
        "cktrace random {} shapes, {} tokenizer (vocab {n_vocab})",
        cfg.original, tok_name
    );
    let head_dim = cfg.n_embd / cfg.n_head;
    let (embd, ff, vocab) = (cfg.n_embd as u64, cfg.n_ff as u64, n_vocab);
    let kv_dim = (head_dim * cfg.n_head_kv) as u64;

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("general.name", name.as_str())
        .add_metadata(
            "general.description",
            format!(
                "Random weights with the tensor shapes of {} ({} layers, width {}, FFN {}, {} heads, {} KV heads), but the tokenizer of {}: vocabulary {n_vocab}, not the original's. Written by cktrace test-model --like {} for memory-access experiments; the text it generates means nothing.",
                cfg.original, cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv, tok_name, cfg.name
            )
            .as_str(),
        )
        .add_metadata("general.file_type", 1u32)
        .add_metadata("llama.vocab_size", n_vocab as u32)
        .add_metadata("llama.context_length", cfg.n_ctx)
        .add_metadata("llama.embedding_length", cfg.n_embd)
        .add_metadata("llama.block_count", cfg.n_layer)
        .add_metadata("llama.feed_forward_length", cfg.n_ff)
        .add_metadata("llama.attention.head_count", cfg.n_head)
        .add_metadata("llama.attention.head_count_kv", cfg.n_head_kv)
        .add_metadata("llama.attention.layer_norm_rms_epsilon", cfg.rms_eps)
        .add_metadata("llama.rope.dimension_count", head_dim)
        .add_metadata("llama.rope.freq_base", cfg.rope_base);
    for (k, v) in tok.metadata() {
        if k.starts_with("tokenizer.") {
            w.add_metadata(k.clone(), v.clone());
        }
    }

    let mut rng = SplitMix64(seed);
    const STD: f32 = 0.02;
    let ones = |n: u64| f32_bytes(&vec![1.0; n as usize]);
    let mut f16s = |n: u64| -> Vec<u8> {
        let mut out = Vec::with_capacity(n as usize * 2);
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 20);
            for v in rng.normals(k, STD) {
                out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
            }
            left -= k;
        }
        out
    };
    w.add_tensor(
        "token_embd.weight",
        &[embd, vocab],
        GgmlType::F16,
        f16s(embd * vocab),
    )?;
    for il in 0..cfg.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}.weight");
        w.add_tensor(name("attn_norm"), &[embd], GgmlType::F32, ones(embd))?;
        w.add_tensor(
            name("attn_q"),
            &[embd, embd],
            GgmlType::F16,
            f16s(embd * embd),
        )?;
        w.add_tensor(
            name("attn_k"),
            &[embd, kv_dim],
            GgmlType::F16,
            f16s(embd * kv_dim),
        )?;
        w.add_tensor(
            name("attn_v"),
            &[embd, kv_dim],
            GgmlType::F16,
            f16s(embd * kv_dim),
        )?;
        w.add_tensor(
            name("attn_output"),
            &[embd, embd],
            GgmlType::F16,
            f16s(embd * embd),
        )?;
        w.add_tensor(name("ffn_norm"), &[embd], GgmlType::F32, ones(embd))?;
        w.add_tensor(
            name("ffn_gate"),
            &[embd, ff],
            GgmlType::F16,
            f16s(embd * ff),
        )?;
        w.add_tensor(name("ffn_up"), &[embd, ff], GgmlType::F16, f16s(embd * ff))?;
        w.add_tensor(
            name("ffn_down"),
            &[ff, embd],
            GgmlType::F16,
            f16s(ff * embd),
        )?;
    }
    w.add_tensor("output_norm.weight", &[embd], GgmlType::F32, ones(embd))?;
    w.add_tensor(
        "output.weight",
        &[embd, vocab],
        GgmlType::F16,
        f16s(embd * vocab),
    )?;
    w.write(path)?;
    Ok(format!(
        "{name}: llama, {} layers, width {}, FFN {}, {}/{} heads, F16",
        cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv
    ))
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small, fast, seedable PRNG
/// whose every seed (including 0) gives a good stream.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1], from the top 53 bits.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// `n` samples of N(0, std²) by the Box-Muller transform.
    fn normals(&mut self, n: u64, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2) = (self.unit(), self.unit());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (z * std as f64) as f32
            })
            .collect()
    }

    /// `n` samples of N(0, std²), quantized to `ty` (Q4_0 or Q8_0).
    fn quantized(&mut self, ty: GgmlType, n: u64, std: f32) -> Vec<u8> {
        let x = self.normals(n, std);
        match ty {
            GgmlType::Q4_0 => quantize_q4_0(&x),
            GgmlType::Q8_0 => quantize_q8_0(&x),
            _ => unreachable!("the tiny model only quantizes to Q4_0 and Q8_0"),
        }
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// ggml's Q8_0 block: an f16 scale `d` and 32 signed 8-bit quants;
/// element j is `d * qs[j]`.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// ggml's Q4_0 block: an f16 scale `d` and 32 4-bit quants packed two per
/// byte (element j in the low nibble of `qs[j]`, element j+16 in the high
/// nibble); element value is `d * (q - 8)`.
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Quantizes `x` (a multiple of 32 long) to Q8_0 exactly as ggml's
/// `quantize_row_q8_0_ref` does, returning the encoded blocks.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len() % 32 == 0,
        "Q8_0 needs a multiple of 32 values, got {}",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        // `as i8` saturates; |v * id| <= 127 by construction anyway.
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Quantizes `x` (a multiple of 32 long) to Q4_0 exactly as ggml's
/// `quantize_row_q4_0_ref` does, returning the encoded blocks.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len() % 32 == 0,
        "Q4_0 needs a multiple of 32 values, got {}",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for block in x.chunks_exact(32) {
        // The value of largest magnitude, with its sign, maps to -8.
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi;

    /// Our quantizers must produce ggml's bytes exactly.
    fn assert_matches_ggml(ty: GgmlType, ours: fn(&[f32]) -> Vec<u8>) {
        let mut rng = SplitMix64(7);
        let mut x = rng.normals(32 * 64, 0.02);
        // Edge cases: an all-zero block, a block with one spike, exact ties.
        x[..32].fill(0.0);
        x[32..64].fill(0.001);
        x[40] = -0.5;
        x[64..96]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 16.0) / 16.0);
        let mut theirs = vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
        let ggml_type = ty.id() as ffi::ggml_type;
        // SAFETY: `x` holds 64 rows of 32 f32s and `theirs` is exactly the
        // encoded size of that many elements of `ty`; no importance matrix
        // is needed for Q4_0/Q8_0, so NULL is allowed.
        let n = unsafe {
            ffi::ggml_quantize_chunk(
                ggml_type,
                x.as_ptr(),
                theirs.as_mut_ptr().cast(),
                0,
                64,
                32,
                std::ptr::null(),
            )
        };
        assert_eq!(n, theirs.len());
        assert_eq!(ours(&x), theirs, "{ty} quantization differs from ggml");
    }

    #[test]
    fn q8_0_matches_ggml() {
        assert_matches_ggml(GgmlType::Q8_0, quantize_q8_0);
    }

    #[test]
    fn q4_0_matches_ggml() {
        assert_matches_ggml(GgmlType::Q4_0, quantize_q4_0);
    }

    #[test]
    fn same_seed_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.gguf"),
            dir.path().join("b.gguf"),
            dir.path().join("c.gguf"),
        );
        write_tiny_moe(&a, 42).unwrap();
        write_tiny_moe(&b, 42).unwrap();
        write_tiny_moe(&c, 43).unwrap();
        let (a, b, c) = (
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            std::fs::read(c).unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn tiny_moe_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moe.gguf");
        let info = write_tiny_moe(&path, 1).unwrap();
        assert_eq!(
            (
                info.n_vocab,
                info.n_layer,
                info.n_expert,
                info.n_expert_used
            ),
            (259, 2, 4, 2)
        );
        assert_eq!(info.tensors.len(), 3 + 10 * 2);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.arch().unwrap(), "llama");
        assert_eq!(f.get_u32("llama.expert_count").unwrap(), 4);
        let up = f.tensor("blk.1.ffn_up_exps.weight").unwrap();
        assert_eq!(
            (up.dims.as_slice(), up.ggml_type),
            (&[64, 128, 4][..], GgmlType::Q4_0)
        );
        assert_eq!(up.size, 64 * 128 * 4 / 32 * 18);
        let down = f.tensor("blk.0.ffn_down_exps.weight").unwrap();
        assert_eq!(
            (down.dims.as_slice(), down.ggml_type),
            (&[128, 64, 4][..], GgmlType::Q8_0)
        );
        assert_eq!(
            f.get_str_arr("tokenizer.ggml.tokens").unwrap()[3 + 0x41],
            "<0x41>"
        );
    }

    #[test]
    fn normals_have_the_requested_spread() {
        let x = SplitMix64(3).normals(100_000, 0.02);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.001, "std {}", var.sqrt());
    }
}
