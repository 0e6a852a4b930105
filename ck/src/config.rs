//! Hyperparameters of a model, read from its architecture's GGUF keys
//! (`{arch}.embedding_length`, `{arch}.attention.head_count_kv`, ...) with
//! the defaults llama.cpp applies when a key is optional
//! (`llama_model::load_hparams` in the vendored tree). A missing required key
//! or a value the engine cannot use is an error that names the key.

use std::path::Path;

use serde::Serialize;

use crate::error::{CkError, Result};
use crate::gguf::{GgufError, GgufFile};

/// The architectures the ck engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Gemma3,
}

impl Arch {
    /// Names as in `general.architecture`, for the error message.
    pub const SUPPORTED: &'static str = "llama, gemma3";

    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// How RoPE pairs dimensions (ggml's `GGML_ROPE_TYPE_NORMAL` / `NEOX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeKind {
    /// Adjacent pairs (2i, 2i+1): llama.
    Normal,
    /// Halves (i, i + n_dims/2): gemma, qwen, ...
    Neox,
}

/// The parameters of ggml's `ggml_rope_ext` as llama.cpp passes them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RopeParams {
    pub kind: RopeKind,
    /// Rotated dimensions per head (`{arch}.rope.dimension_count`).
    pub n_dims: usize,
    pub freq_base: f32,
    /// 1 / `{arch}.rope.scaling.factor` for linear scaling, else 1.
    pub freq_scale: f32,
    /// YaRN extrapolation mix: 0 unless the scaling type is yarn.
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Training context the YaRN correction dims are computed from.
    pub n_ctx_orig: usize,
}

/// Everything the layout and the forward pass need to know about a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub arch: Arch,
    /// `general.name` (empty if absent).
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Key (and query) head size.
    pub head_dim: usize,
    /// Value head size.
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    /// Scale of the attention scores (1/sqrt(head_dim) unless the model sets
    /// `{arch}.attention.scale`).
    pub kq_scale: f32,
    pub rope: RopeParams,
    /// No `output.weight`: the logits reuse `token_embd.weight`.
    pub tied_output: bool,
    /// Gemma-3's own hyperparameters (absent, and not written to
    /// layout.json, for llama).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemma3: Option<Gemma3Params>,
}

/// What Gemma-3 adds (`llama_model_gemma3::load_arch_hparams` and the
/// generic `load_hparams` in the vendored tree).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gemma3Params {
    /// `{arch}.attention.sliding_window`: a query at position `p` of a
    /// sliding-window layer sees the keys at `p - n_swa < p0 <= p`
    /// (`is_masked_swa`, LLAMA_SWA_TYPE_STANDARD: masked when `p - p0 >=
    /// n_swa`). 0: no layer has a window.
    pub n_swa: usize,
    /// Per layer, whether it has the sliding window (`hparams.is_swa`):
    /// `{arch}.attention.sliding_window_pattern` as a per-layer array, or
    /// as a period `n` (default 6) with the last layer of every `n` global
    /// (`set_swa_pattern(n, false)`: SWA iff `il % n < n - 1`).
    pub swa_layers: Vec<bool>,
    /// RoPE of the sliding-window layers: `{arch}.rope.freq_base_swa`
    /// (default 10000) and scale 1; the global layers use `rope`.
    pub rope_swa: RopeParams,
    /// `f_attention_scale`: the queries are multiplied by it after RoPE
    /// (`ggml_scale`) and the scores are not scaled again (`kq_scale` is 1).
    /// `1/sqrt(head_dim)`, except for the 27B (62 layers):
    /// `1/sqrt(n_embd / n_head)`.
    pub q_scale: f32,
    /// The token embeddings are multiplied by `sqrtf(n_embd)`, in f32.
    pub embd_scale: f32,
    /// `{arch}.final_logit_softcapping`: logits = cap * tanh(logits / cap);
    /// 0 for none.
    pub final_logit_softcap: f32,
}

impl Config {
    /// Query width (`n_head * head_dim`).
    pub fn n_embd_q(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Key width of one token in the cache (`n_head_kv * head_dim`).
    pub fn n_embd_k_gqa(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    /// Value width of one token in the cache.
    pub fn n_embd_v_gqa(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }

    /// Whether layer `il` attends through a sliding window.
    pub fn is_swa(&self, il: usize) -> bool {
        self.gemma3
            .as_ref()
            .is_some_and(|g| g.n_swa > 0 && g.swa_layers[il])
    }

    /// The RoPE parameters of layer `il`.
    pub fn rope_for(&self, il: usize) -> &RopeParams {
        match &self.gemma3 {
            Some(g) if self.is_swa(il) => &g.rope_swa,
            _ => &self.rope,
        }
    }

    /// Reads the hyperparameters of `g`'s architecture.
    pub fn from_gguf(g: &GgufFile) -> Result<Config> {
        let path = g.path();
        let arch_name = g.arch()?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| CkError::UnsupportedArch {
            path: path.to_path_buf(),
            arch: arch_name.to_string(),
            supported: Arch::SUPPORTED,
        })?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let req = |key: &str| -> Result<usize> { Ok(g.get_u64(&k(key))? as usize) };
        let opt = |key: &str, default: usize| -> Result<usize> {
            match g.get(&k(key)) {
                None => Ok(default),
                Some(_) => req(key),
            }
        };
        let opt_f32 = |key: &str, default: f32| -> Result<f32> {
            match g.get(&k(key)) {
                None => Ok(default),
                Some(_) => Ok(g.get_f32(&k(key))?),
            }
        };

        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv", n_head)?;
        let n_ctx_train = req("context_length")?;
        let rms_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))?;
        let positive = |key: &str, v: usize| -> Result<()> {
            if v == 0 {
                return Err(bad(path, &k(key), "0", "must be positive"));
            }
            Ok(())
        };
        positive("embedding_length", n_embd)?;
        positive("block_count", n_layer)?;
        positive("feed_forward_length", n_ff)?;
        positive("attention.head_count", n_head)?;
        positive("attention.head_count_kv", n_head_kv)?;
        if n_embd % n_head != 0 && g.get(&k("attention.key_length")).is_none() {
            return Err(bad(
                path,
                &k("embedding_length"),
                &n_embd.to_string(),
                &format!("not a multiple of attention.head_count {n_head}"),
            ));
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(
                path,
                &k("attention.head_count_kv"),
                &n_head_kv.to_string(),
                &format!("does not divide attention.head_count {n_head}"),
            ));
        }
        let head_dim = opt("attention.key_length", n_embd / n_head)?;
        let head_dim_v = opt("attention.value_length", n_embd / n_head)?;
        positive("attention.key_length", head_dim)?;
        positive("attention.value_length", head_dim_v)?;
        let n_rot = opt("rope.dimension_count", head_dim)?;
        if arch == Arch::Llama && n_rot != head_dim {
            // llama.cpp refuses this for llama too ("invalid n_rot").
            return Err(bad(
                path,
                &k("rope.dimension_count"),
                &n_rot.to_string(),
                &format!("llama needs it equal to the head size {head_dim}"),
            ));
        }
        if n_rot % 2 != 0 || n_rot > head_dim {
            return Err(bad(
                path,
                &k("rope.dimension_count"),
                &n_rot.to_string(),
                "must be even and at most the head size",
            ));
        }
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(bad(
                path,
                &k("attention.layer_norm_rms_epsilon"),
                &rms_eps.to_string(),
                "must be finite and non-negative",
            ));
        }

        let freq_base = opt_f32("rope.freq_base", 10000.0)?;
        let scaling = match g.get(&k("rope.scaling.type")) {
            None => "linear",
            Some(_) => g.get_str(&k("rope.scaling.type"))?,
        };
        let factor = match g.get(&k("rope.scaling.factor")) {
            Some(_) => g.get_f32(&k("rope.scaling.factor"))?,
            None => opt_f32("rope.scale_linear", 0.0)?,
        };
        let freq_scale = match scaling {
            "none" => 1.0,
            "linear" => {
                if factor == 0.0 {
                    1.0
                } else {
                    1.0 / factor
                }
            }
            other => {
                return Err(bad(
                    path,
                    &k("rope.scaling.type"),
                    other,
                    "the ck engine supports rope scaling none and linear",
                ))
            }
        };
        if !(freq_base.is_finite() && freq_base > 0.0 && freq_scale.is_finite()) {
            return Err(bad(
                path,
                &k("rope.freq_base"),
                &freq_base.to_string(),
                "must be finite and positive",
            ));
        }
        let n_ctx_orig = opt("rope.scaling.original_context_length", n_ctx_train)?;
        let kq_scale = match opt_f32("attention.scale", 0.0)? {
            s if s == 0.0 => 1.0 / (head_dim as f32).sqrt(),
            s => s,
        };
        let rope = RopeParams {
            kind: match arch {
                Arch::Llama => RopeKind::Normal,
                Arch::Gemma3 => RopeKind::Neox,
            },
            n_dims: n_rot,
            freq_base,
            freq_scale,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig,
        };
        let gemma3 = match arch {
            Arch::Llama => None,
            Arch::Gemma3 => Some(gemma3_params(g, n_layer, n_embd, n_head, head_dim, &rope)?),
        };
        // Gemma-3 scales the queries instead (Gemma3Params::q_scale).
        let kq_scale = if gemma3.is_some() { 1.0 } else { kq_scale };

        let embd = g.require_tensor("token_embd.weight")?;
        let n_vocab = match g.get(&k("vocab_size")) {
            Some(_) => req("vocab_size")?,
            None => match g.get("tokenizer.ggml.tokens") {
                Some(_) => g.get_arr("tokenizer.ggml.tokens")?.len(),
                None => embd.dims.get(1).copied().unwrap_or(0) as usize,
            },
        };
        positive("vocab_size", n_vocab)?;

        Ok(Config {
            arch,
            name: match g.get("general.name") {
                Some(_) => g.get_str("general.name")?.to_string(),
                None => String::new(),
            },
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_ff,
            n_ctx_train,
            rms_eps,
            kq_scale,
            rope,
            tied_output: g.tensor("output.weight").is_none(),
            gemma3,
        })
    }
}

/// Gemma-3's keys, read as `llama_model_gemma3::load_arch_hparams` reads
/// them.
fn gemma3_params(
    g: &GgufFile,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    head_dim: usize,
    rope: &RopeParams,
) -> Result<Gemma3Params> {
    let path = g.path();
    let arch = "gemma3";
    let k = |s: &str| format!("{arch}.{s}");
    // Per-layer head sizes (the *_swa keys) are not something Gemma-3
    // files have; refuse rather than compute with the wrong one.
    for (key, same_as) in [
        ("attention.key_length_swa", head_dim),
        ("attention.value_length_swa", head_dim),
        ("rope.dimension_count_swa", rope.n_dims),
    ] {
        if g.get(&k(key)).is_some() {
            let v = g.get_u64(&k(key))? as usize;
            if v != same_as {
                return Err(bad(
                    path,
                    &k(key),
                    &v.to_string(),
                    &format!("the ck engine needs it equal to the global layers' {same_as}"),
                ));
            }
        }
    }
    let n_swa = match g.get(&k("attention.sliding_window")) {
        None => 0,
        Some(_) => g.get_u64(&k("attention.sliding_window"))? as usize,
    };
    let pattern_key = k("attention.sliding_window_pattern");
    let swa_layers: Vec<bool> = if n_swa == 0 {
        vec![false; n_layer]
    } else {
        match g.get(&pattern_key) {
            Some(crate::gguf::GgufValue::Array(a)) => {
                use crate::gguf::GgufArray as A;
                let v: Vec<bool> = match a {
                    // The element types llama.cpp's get_arr takes here.
                    A::Bool(v) => v.clone(),
                    A::U32(v) => v.iter().map(|&x| x != 0).collect(),
                    A::I32(v) => v.iter().map(|&x| x != 0).collect(),
                    _ => {
                        return Err(bad(
                            path,
                            &pattern_key,
                            "an array of that type",
                            "must be per-layer bool, u32 or i32",
                        ))
                    }
                };
                if v.len() != n_layer {
                    return Err(bad(
                        path,
                        &pattern_key,
                        &format!("an array of {}", v.len()),
                        &format!("must have one entry per layer ({n_layer})"),
                    ));
                }
                v
            }
            found => {
                let n = match found {
                    None => 6,
                    Some(_) => g.get_u64(&pattern_key)? as usize,
                };
                swa_pattern(n, n_layer)
            }
        }
    };
    let opt_f32 = |key: &str, default: f32| -> Result<f32> {
        match g.get(&k(key)) {
            None => Ok(default),
            Some(_) => Ok(g.get_f32(&k(key))?),
        }
    };
    let freq_base_swa = opt_f32("rope.freq_base_swa", 10000.0)?;
    if !(freq_base_swa.is_finite() && freq_base_swa > 0.0) {
        return Err(bad(
            path,
            &k("rope.freq_base_swa"),
            &freq_base_swa.to_string(),
            "must be finite and positive",
        ));
    }
    let final_logit_softcap = opt_f32("final_logit_softcapping", 0.0)?;
    if !final_logit_softcap.is_finite() {
        return Err(bad(
            path,
            &k("final_logit_softcapping"),
            &final_logit_softcap.to_string(),
            "must be finite",
        ));
    }
    // llama.cpp: LLM_TYPE_27B (62 layers) scales by the model width per
    // head, every other size by the key head size.
    let q_scale = if n_layer == 62 {
        1.0f32 / ((n_embd / n_head) as f32).sqrt()
    } else {
        1.0f32 / (head_dim as f32).sqrt()
    };
    Ok(Gemma3Params {
        n_swa,
        swa_layers,
        rope_swa: RopeParams {
            freq_base: freq_base_swa,
            freq_scale: 1.0,
            ..*rope
        },
        q_scale,
        embd_scale: (n_embd as f32).sqrt(),
        final_logit_softcap,
    })
}

/// `llama_hparams::set_swa_pattern(n, dense_first = false)`: layer `il`
/// has the window iff `il % n < n - 1` (the last of every `n` is global);
/// `n = 0` puts every layer in the window.
fn swa_pattern(n: usize, n_layer: usize) -> Vec<bool> {
    (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
}

fn bad(path: &Path, key: &str, value: &str, why: &str) -> CkError {
    CkError::BadValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// A missing key as the reader reports it (used by tests).
pub fn is_missing_key(e: &CkError, key: &str) -> bool {
    matches!(e, CkError::Gguf(GgufError::MissingKey { key: k, .. }) if k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swa_pattern_is_llama_cpps() {
        let globals = |n, l| -> Vec<usize> {
            let p = swa_pattern(n, l);
            (0..l).filter(|&i| !p[i]).collect()
        };
        assert_eq!(globals(6, 18), vec![5, 11, 17]);
        assert_eq!(globals(6, 26), vec![5, 11, 17, 23]);
        assert_eq!(globals(1, 4), vec![0, 1, 2, 3]);
        assert_eq!(globals(0, 4), Vec::<usize>::new());
    }
}
