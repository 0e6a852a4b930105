//! Architecture `gemma3` (Gemma-3 270M .. 27B, text): RMSNorm before and
//! after both the attention and the feed-forward, QK-norm (RMSNorm of every
//! query and key head before RoPE), RoPE on halves (neox), GQA attention in
//! which five layers of six see a sliding window of the last `n_swa`
//! positions and use their own RoPE base, GeGLU feed-forward, the token
//! embeddings multiplied by `sqrt(n_embd)`, tied output, optional final
//! logit soft-capping. Read from the vendored llama.cpp:
//! `src/models/gemma3.cpp` (hparams, tensors, graph), `llama-hparams.cpp`
//! (`set_swa_pattern`, `is_masked_swa`), `llama-model.cpp`
//! (`get_rope_freq_base`: the SWA layers use `rope_freq_base_train_swa`),
//! `llama-graph.cpp` (`build_inp_embd`, `build_attn_mha`, `build_ffn` with
//! LLM_FFN_GELU + LLM_FFN_PAR = `ggml_geglu_split`) and
//! `llama-kv-cache-iswa.cpp` (two caches; llama_context_default_params
//! sets `swa_full`, so the SWA cache has as many cells as the other and a
//! position's cell is its position, as here).
//!
//! Per layer `L`, the intermediates and what each holds (llama.cpp's graph
//! names; docs/layout-format.md has the table):
//!
//! ```text
//! attn_norm-L      [n_embd, B]             rmsnorm(l_out-(L-1)) * attn_norm.weight
//! Qcur_normed-L    [head_dim, n_head, B]   rmsnorm per head of wq x attn_norm, * attn_q_norm
//! Kcur_normed-L    [head_dim, n_head_kv, B] the same for wk, attn_k_norm
//! Qcur-L           [head_dim, n_head, B]   Qcur_normed AFTER RoPE (the layer's base)
//! Kcur-L           [head_dim, n_head_kv, B] Kcur_normed after RoPE (what the cache holds)
//! Vcur-L           [head_dim, n_head_kv, B] wv x attn_norm
//! kqv_out-L        [n_head*head_dim, B]    attention of Qcur * q_scale, heads merged
//! attn_out-L       [n_embd, B]             wo x kqv_out
//! attn_post_norm-L [n_embd, B]             rmsnorm(attn_out) * post_attention_norm.weight
//! sa_out-L         [n_embd, B]             attn_post_norm + layer input
//! ffn_norm-L       [n_embd, B]             rmsnorm(sa_out) * ffn_norm.weight
//! ffn_gate-L       [n_ff, B]               w_gate x ffn_norm
//! ffn_up-L         [n_ff, B]               w_up x ffn_norm
//! ffn_geglu-L      [n_ff, B]               gelu(ffn_gate) * ffn_up
//! ffn_out-L        [n_embd, B]             w_down x ffn_geglu
//! ffn_post_norm-L  [n_embd, B]             rmsnorm(ffn_out) * post_ffw_norm.weight
//! l_out-L          [n_embd, B]             ffn_post_norm + sa_out
//! cache_k_lL       [n_embd_k_gqa, ctx]     K cache, one row per position
//! cache_v_lL       [ctx, n_embd_v_gqa]     V cache, transposed
//! ```
//!
//! plus `inp_embd` [n_embd, B] (the embedding rows), `inp_scaled` [n_embd,
//! B] (times `sqrtf(n_embd)`), `result_norm` [n_embd, 1] and
//! `result_output` [n_vocab, 1] (the last token's logits, soft-capped when
//! the model asks for it).

use std::collections::HashSet;

use half::f16;

use crate::arena::{f32s, f32s_mut};
use crate::config::Config;
use crate::error::{CkError, Result};
use crate::gguf::TensorInfo;
use crate::layout::{Kind, KvType, LayoutOptions, ModelFacts, Plan, Planner, RegionId};
use crate::model::ModelFile;
use crate::ops;
use crate::quant;

use super::super::engine::Regions;
use crate::profile::WeightBuffer;

use super::llama::{
    attn_scratch_parts, head, kerr, mat, matmul, matmul_in, place, rms_rows, widen_group, ActQ, Cx,
    Mat, Tensors,
};

/// One layer's regions.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Whether the layer attends through the sliding window.
    pub swa: bool,
    // Weights.
    pub attn_norm_w: RegionId,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub q_norm_w: RegionId,
    pub k_norm_w: RegionId,
    pub wo: Mat,
    pub attn_post_norm_w: RegionId,
    pub ffn_norm_w: RegionId,
    pub w_gate: Mat,
    pub w_up: Mat,
    pub w_down: Mat,
    pub ffn_post_norm_w: RegionId,
    // Activations.
    pub attn_norm: RegionId,
    pub q_normed: RegionId,
    pub k_normed: RegionId,
    pub q: RegionId,
    pub k: RegionId,
    pub v: RegionId,
    pub kqv_out: RegionId,
    pub attn_out: RegionId,
    pub attn_post_norm: RegionId,
    pub sa_out: RegionId,
    pub ffn_norm: RegionId,
    pub ffn_gate: RegionId,
    pub ffn_up: RegionId,
    pub ffn_geglu: RegionId,
    pub ffn_out: RegionId,
    pub ffn_post_norm: RegionId,
    pub l_out: RegionId,
    // KV cache.
    pub cache_k: RegionId,
    pub cache_v: RegionId,
}

/// The planned Gemma-3 model.
#[derive(Clone, Debug)]
pub struct Gemma3 {
    pub token_embd: Mat,
    pub output_norm_w: RegionId,
    /// `output.weight`, or `token_embd.weight` when tied.
    pub output: Mat,
    pub inp_embd: RegionId,
    pub inp_scaled: RegionId,
    pub layers: Vec<Layer>,
    pub result_norm: RegionId,
    pub result_output: RegionId,
    /// Activations quantized for the dot products: `[B][row_bytes]`.
    pub act_q: RegionId,
    /// Attention scratch, `threads` equal parts.
    pub attn_scratch: RegionId,
}

/// Per-layer weight names (after `blk.L.`), in the order they are planned.
const LAYER_WEIGHTS: [&str; 13] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
];

/// Checks every tensor Gemma-3 needs (name, shape, type), refuses tensors
/// it would ignore, and plans the layout.
pub fn plan(file: &ModelFile, c: &Config, o: &LayoutOptions) -> Result<(Plan, Gemma3)> {
    o.validate()?;
    let mut ts = Tensors {
        file,
        used: HashSet::new(),
    };
    let (e, v) = (c.n_embd, c.n_vocab);
    let supported = "f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_K, q5_K, q6_K";
    let token_embd_t = ts.get("token_embd.weight", &[e, v])?;
    if !quant::row_supported(token_embd_t.ggml_type) {
        return Err(ts.unsupported(token_embd_t, "the embedding table", supported.into()));
    }
    let output_norm_t = ts.vector("output_norm.weight", e)?;
    let output_t = if c.tied_output {
        ts.matrix("token_embd.weight", e, v, "the output head (tied)")?
    } else {
        ts.matrix("output.weight", e, v, "the output head")?
    };
    let (hd, hdv) = (c.head_dim, c.head_dim_v);
    let mut layer_ts: Vec<[&TensorInfo; 13]> = Vec::with_capacity(c.n_layer);
    for l in 0..c.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layer_ts.push([
            ts.vector(&n("attn_norm"), e)?,
            ts.matrix(&n("attn_q"), e, c.n_embd_q(), "attention")?,
            ts.matrix(&n("attn_k"), e, c.n_embd_k_gqa(), "attention")?,
            ts.matrix(&n("attn_v"), e, c.n_embd_v_gqa(), "attention")?,
            ts.vector(&n("attn_q_norm"), hd)?,
            ts.vector(&n("attn_k_norm"), hd)?,
            ts.matrix(&n("attn_output"), c.n_head * hdv, e, "attention")?,
            ts.vector(&n("post_attention_norm"), e)?,
            ts.vector(&n("ffn_norm"), e)?,
            ts.matrix(&n("ffn_gate"), e, c.n_ff, "the feed-forward")?,
            ts.matrix(&n("ffn_up"), e, c.n_ff, "the feed-forward")?,
            ts.matrix(&n("ffn_down"), c.n_ff, e, "the feed-forward")?,
            ts.vector(&n("post_ffw_norm"), e)?,
        ]);
    }
    debug_assert_eq!(LAYER_WEIGHTS.len(), layer_ts[0].len());
    // A tensor llama.cpp would use and we would not (biases, the embedding
    // model's dense layers) changes the result: refuse the file instead.
    for t in file.gguf().tensors() {
        if !ts.used.contains(&t.name) {
            return Err(CkError::UnexpectedTensor {
                path: file.path().to_path_buf(),
                name: t.name.clone(),
                arch: "gemma3",
                why: "the ck engine would ignore it and compute something else",
            });
        }
    }

    let mut p = Planner::new();
    let token_embd = mat(&mut p, o, token_embd_t, None)?;
    struct LayerW {
        norms: [RegionId; 6],
        mats: [Mat; 7],
    }
    let mut layer_w = Vec::with_capacity(c.n_layer);
    for (l, w) in layer_ts.iter().enumerate() {
        let ly = Some(l as u32);
        let attn_norm = place(&mut p, o, w[0], ly)?;
        let wq = mat(&mut p, o, w[1], ly)?;
        let wk = mat(&mut p, o, w[2], ly)?;
        let wv = mat(&mut p, o, w[3], ly)?;
        let q_norm = place(&mut p, o, w[4], ly)?;
        let k_norm = place(&mut p, o, w[5], ly)?;
        let wo = mat(&mut p, o, w[6], ly)?;
        let attn_post = place(&mut p, o, w[7], ly)?;
        let ffn_norm = place(&mut p, o, w[8], ly)?;
        let gate = mat(&mut p, o, w[9], ly)?;
        let up = mat(&mut p, o, w[10], ly)?;
        let down = mat(&mut p, o, w[11], ly)?;
        let ffn_post = place(&mut p, o, w[12], ly)?;
        layer_w.push(LayerW {
            norms: [attn_norm, q_norm, k_norm, attn_post, ffn_norm, ffn_post],
            mats: [wq, wk, wv, wo, gate, up, down],
        });
    }
    let output_norm_w = place(&mut p, o, output_norm_t, None)?;
    let output = if c.tied_output {
        token_embd
    } else {
        mat(&mut p, o, output_t, None)?
    };
    let output = head(&mut p, o, output_t, output)?;

    let b = o.batch as u64;
    let (e64, ff) = (e as u64, c.n_ff as u64);
    let (hd64, hdv64) = (hd as u64, hdv as u64);
    let (nh, nkv) = (c.n_head as u64, c.n_head_kv as u64);
    let act = Kind::Activation;
    let inp_embd = p.f32_region("inp_embd", act, None, vec![e64, b])?;
    let inp_scaled = p.f32_region("inp_scaled", act, None, vec![e64, b])?;
    let mut layers = Vec::with_capacity(c.n_layer);
    for (l, w) in layer_w.into_iter().enumerate() {
        let ly = Some(l as u32);
        let mut r =
            |name: &str, shape: Vec<u64>| p.f32_region(format!("{name}-{l}"), act, ly, shape);
        let attn_norm = r("attn_norm", vec![e64, b])?;
        let q_normed = r("Qcur_normed", vec![hd64, nh, b])?;
        let k_normed = r("Kcur_normed", vec![hd64, nkv, b])?;
        let q = r("Qcur", vec![hd64, nh, b])?;
        let k = r("Kcur", vec![hd64, nkv, b])?;
        let v = r("Vcur", vec![hdv64, nkv, b])?;
        let kqv_out = r("kqv_out", vec![hdv64 * nh, b])?;
        let attn_out = r("attn_out", vec![e64, b])?;
        let attn_post_norm = r("attn_post_norm", vec![e64, b])?;
        let sa_out = r("sa_out", vec![e64, b])?;
        let ffn_norm = r("ffn_norm", vec![e64, b])?;
        let ffn_gate = r("ffn_gate", vec![ff, b])?;
        let ffn_up = r("ffn_up", vec![ff, b])?;
        let ffn_geglu = r("ffn_geglu", vec![ff, b])?;
        let ffn_out = r("ffn_out", vec![e64, b])?;
        let ffn_post_norm = r("ffn_post_norm", vec![e64, b])?;
        let l_out = r("l_out", vec![e64, b])?;
        let [attn_norm_w, q_norm_w, k_norm_w, attn_post_norm_w, ffn_norm_w, ffn_post_norm_w] =
            w.norms;
        let [wq, wk, wv, wo, w_gate, w_up, w_down] = w.mats;
        layers.push(Layer {
            swa: c.is_swa(l),
            attn_norm_w,
            wq,
            wk,
            wv,
            q_norm_w,
            k_norm_w,
            wo,
            attn_post_norm_w,
            ffn_norm_w,
            w_gate,
            w_up,
            w_down,
            ffn_post_norm_w,
            attn_norm,
            q_normed,
            k_normed,
            q,
            k,
            v,
            kqv_out,
            attn_out,
            attn_post_norm,
            sa_out,
            ffn_norm,
            ffn_gate,
            ffn_up,
            ffn_geglu,
            ffn_out,
            ffn_post_norm,
            l_out,
            cache_k: RegionId(0),
            cache_v: RegionId(0),
        });
    }
    // Every layer keeps all `ctx` positions, the sliding-window ones too:
    // llama.cpp's SWA cache is full size by default (`swa_full`), so a
    // position sits in the cell of its index in both engines and the
    // attention adds in the same order.
    let kv = o.kv_type;
    let ctx = o.ctx as u64;
    let kvt = kv.ggml().name();
    let too_large = |what: &str| CkError::TooLarge {
        what: what.to_string(),
    };
    for (l, layer) in layers.iter_mut().enumerate() {
        let ly = Some(l as u32);
        let nk = c.n_embd_k_gqa() as u64;
        let nv = c.n_embd_v_gqa() as u64;
        let kb = nk
            .checked_mul(ctx)
            .and_then(|x| x.checked_mul(kv.bytes() as u64))
            .ok_or_else(|| too_large("the K cache"))?;
        let vb = nv
            .checked_mul(ctx)
            .and_then(|x| x.checked_mul(kv.bytes() as u64))
            .ok_or_else(|| too_large("the V cache"))?;
        layer.cache_k = p.arena(
            format!("cache_k_l{l}"),
            Kind::KvCache,
            ly,
            kvt,
            vec![nk, ctx],
            kb,
        )?;
        layer.cache_v = p.arena(
            format!("cache_v_l{l}"),
            Kind::KvCache,
            ly,
            kvt,
            vec![ctx, nv],
            vb,
        )?;
    }
    let result_norm = p.f32_region("result_norm", act, None, vec![e64, 1])?;
    let result_output = p.f32_region("result_output", act, None, vec![v as u64, 1])?;

    // Scratch: the widest quantized activation row of any matmul, B times.
    let mut max_q = 0usize;
    let all_mats = layers
        .iter()
        .flat_map(|l| [l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down])
        .chain([output]);
    for m in all_mats {
        let qb = quant::row_bytes(quant::vec_dot_type(m.ty), m.k).map_err(kerr)?;
        max_q = max_q.max(qb);
    }
    let act_q_bytes = (max_q as u64)
        .checked_mul(b)
        .ok_or_else(|| too_large("the quantized activations"))?;
    let act_q = p.arena(
        "act_q",
        Kind::Scratch,
        None,
        "u8",
        vec![act_q_bytes],
        act_q_bytes,
    )?;
    let per_thread = attn_scratch_parts(c, o).iter().sum::<usize>() as u64;
    let scratch_bytes = per_thread
        .checked_mul(o.threads as u64)
        .ok_or_else(|| too_large("the attention scratch"))?;
    let attn_scratch = p.arena(
        "attn_scratch",
        Kind::Scratch,
        None,
        "u8",
        vec![per_thread, o.threads as u64],
        scratch_bytes,
    )?;

    let g = file.gguf();
    let facts = ModelFacts {
        name: c.name.clone(),
        arch: c.arch.name().to_string(),
        file_size: g.file_len(),
        data_offset: g.data_offset(),
        n_tensors: g.tensors().len() as u64,
        tied_output: c.tied_output,
    };
    let plan = p.finish(facts, *o, c);
    Ok((
        plan,
        Gemma3 {
            token_embd,
            output_norm_w,
            output,
            inp_embd,
            inp_scaled,
            layers,
            result_norm,
            result_output,
            act_q,
            attn_scratch,
        },
    ))
}

/// RMSNorm of every `hd`-wide head of `n` tokens' rows of `x` (QK-norm).
fn rms_heads(x: &[f32], w: &[f32], eps: f32, width: usize, n: usize, out: &mut [f32]) {
    let hd = w.len();
    for (xh, oh) in x[..n * width]
        .chunks_exact(hd)
        .zip(out[..n * width].chunks_exact_mut(hd))
    {
        ops::rms_norm(xh, w, eps, oh);
    }
}

/// One forward pass over `tokens` (at most `batch`) at positions
/// `pos..pos + tokens.len()`; the KV cache must hold positions `0..pos`.
pub fn forward(m: &Gemma3, r: &mut Regions<'_>, cx: &Cx, tokens: &[u32], pos: usize) -> Result<()> {
    let c = cx.config;
    let g3 = c
        .gemma3
        .as_ref()
        .expect("a gemma3 config has its Gemma-3 parameters");
    let n = tokens.len();
    let e = c.n_embd;
    let hd = c.head_dim;
    let (qd, kd, vd) = (c.n_embd_q(), c.n_embd_k_gqa(), c.n_embd_v_gqa());
    let kvb = cx.options.kv_type.bytes();
    let ctx = cx.options.ctx;
    let eps = c.rms_eps;

    // inp_embd: get_rows (dequantize the tokens' rows of token_embd);
    // inp_scaled: times sqrtf(n_embd), in f32 (ggml_mul by the row scales).
    let embd = r.bytes(m.token_embd.id);
    let inp = r.f32_mut(m.inp_embd);
    for (t, &id) in tokens.iter().enumerate() {
        let rb = m.token_embd.row_bytes;
        let row = &embd[id as usize * rb..(id as usize + 1) * rb];
        quant::dequantize_row(m.token_embd.ty, row, &mut inp[t * e..(t + 1) * e]).map_err(kerr)?;
    }
    let scaled = r.f32_mut(m.inp_scaled);
    ops::scale(&inp[..n * e], g3.embd_scale, &mut scaled[..n * e]);
    let mut x: &[f32] = scaled;
    let mut aq = ActQ {
        buf: r.bytes_mut(m.act_q),
        holds: None,
    };
    let scratch = r.bytes_mut(m.attn_scratch);
    let mut rope = vec![0f32; c.rope.n_dims.max(g3.rope_swa.n_dims)];

    for (il, ly) in m.layers.iter().enumerate() {
        // Attention block.
        let an = r.f32_mut(ly.attn_norm);
        rms_rows(x, f32s(r.bytes(ly.attn_norm_w)), eps, n, an);
        let an: &[f32] = an;
        // The projections land in Qcur/Kcur, which then receive the
        // normed, rotated heads (the names llama.cpp gives the result).
        let q = r.f32_mut(ly.q);
        matmul(cx, &ly.wq, r.bytes(ly.wq.id), an, n, &mut aq, q)?;
        let k = r.f32_mut(ly.k);
        matmul(cx, &ly.wk, r.bytes(ly.wk.id), an, n, &mut aq, k)?;
        let v = r.f32_mut(ly.v);
        matmul(cx, &ly.wv, r.bytes(ly.wv.id), an, n, &mut aq, v)?;

        // QK-norm, then RoPE with the layer's base.
        let qn = r.f32_mut(ly.q_normed);
        rms_heads(q, f32s(r.bytes(ly.q_norm_w)), eps, qd, n, qn);
        let kn = r.f32_mut(ly.k_normed);
        rms_heads(k, f32s(r.bytes(ly.k_norm_w)), eps, kd, n, kn);
        q[..n * qd].copy_from_slice(&qn[..n * qd]);
        k[..n * kd].copy_from_slice(&kn[..n * kd]);
        let rp = c.rope_for(il);
        for t in 0..n {
            ops::rope_cache(rp, pos + t, &mut rope);
            for h in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                ops::rope_apply(rp.kind, rp.n_dims, &rope, h);
            }
            for h in k[t * kd..(t + 1) * kd].chunks_exact_mut(hd) {
                ops::rope_apply(rp.kind, rp.n_dims, &rope, h);
            }
        }

        // Store K and V in the cache (V transposed, as llama.cpp keeps it
        // without flash attention).
        let kc = r.bytes_mut(ly.cache_k);
        let vc = r.bytes_mut(ly.cache_v);
        for t in 0..n {
            let slot = pos + t;
            let dst = &mut kc[slot * kd * kvb..(slot + 1) * kd * kvb];
            let src = &k[t * kd..(t + 1) * kd];
            match cx.options.kv_type {
                KvType::F16 => ops::store_f16(src, dst),
                KvType::F32 => ops::store_f32(src, dst),
            }
            for ch in 0..vd {
                let at = (ch * ctx + slot) * kvb;
                let val = [v[t * vd + ch]];
                match cx.options.kv_type {
                    KvType::F16 => ops::store_f16(&val, &mut vc[at..at + 2]),
                    KvType::F32 => ops::store_f32(&val, &mut vc[at..at + 4]),
                }
            }
        }
        let (kc, vc): (&[u8], &[u8]) = (kc, vc);
        let q: &[f32] = q;

        let kqv = r.f32_mut(ly.kqv_out);
        let window = if ly.swa { Some(g3.n_swa) } else { None };
        attention(cx, q, kc, vc, n, pos, window, g3.q_scale, scratch, kqv);
        let kqv: &[f32] = kqv;

        let attn_out = r.f32_mut(ly.attn_out);
        matmul(cx, &ly.wo, r.bytes(ly.wo.id), kqv, n, &mut aq, attn_out)?;
        let apn = r.f32_mut(ly.attn_post_norm);
        rms_rows(attn_out, f32s(r.bytes(ly.attn_post_norm_w)), eps, n, apn);
        let sa_out = r.f32_mut(ly.sa_out);
        ops::add(&apn[..n * e], &x[..n * e], &mut sa_out[..n * e]);
        let sa_out: &[f32] = sa_out;

        // Feed-forward block.
        let fnm = r.f32_mut(ly.ffn_norm);
        rms_rows(sa_out, f32s(r.bytes(ly.ffn_norm_w)), eps, n, fnm);
        let fnm: &[f32] = fnm;
        let gate = r.f32_mut(ly.ffn_gate);
        matmul(cx, &ly.w_gate, r.bytes(ly.w_gate.id), fnm, n, &mut aq, gate)?;
        let up = r.f32_mut(ly.ffn_up);
        matmul(cx, &ly.w_up, r.bytes(ly.w_up.id), fnm, n, &mut aq, up)?;
        let gg = r.f32_mut(ly.ffn_geglu);
        let nf = n * c.n_ff;
        ops::geglu_ggml(&gate[..nf], &up[..nf], &mut gg[..nf]);
        let gg: &[f32] = gg;
        let ffn_out = r.f32_mut(ly.ffn_out);
        matmul(
            cx,
            &ly.w_down,
            r.bytes(ly.w_down.id),
            gg,
            n,
            &mut aq,
            ffn_out,
        )?;
        let fpn = r.f32_mut(ly.ffn_post_norm);
        rms_rows(ffn_out, f32s(r.bytes(ly.ffn_post_norm_w)), eps, n, fpn);
        let l_out = r.f32_mut(ly.l_out);
        ops::add(&fpn[..n * e], sa_out, &mut l_out[..n * e]);
        x = l_out;
    }

    // Output head, last token only.
    let last = &x[(n - 1) * e..n * e];
    let rn = r.f32_mut(m.result_norm);
    ops::rms_norm(last, f32s(r.bytes(m.output_norm_w)), eps, rn);
    let rn: &[f32] = rn;
    let logits = r.f32_mut(m.result_output);
    // A tied head is the embedding table, which ggml keeps out of the
    // repack buffer (its first use is GET_ROWS).
    let head = if c.tied_output {
        WeightBuffer::Embedding
    } else {
        WeightBuffer::Matmul
    };
    matmul_in(
        cx,
        &m.output,
        r.bytes(m.output.id),
        rn,
        1,
        &mut aq,
        logits,
        head,
    )?;
    if g3.final_logit_softcap != 0.0 {
        ops::softcap(g3.final_logit_softcap, logits);
    }
    Ok(())
}

/// `kqv_out` of the `n` tokens at positions `pos..`: per head, scores of
/// the query (times `q_scale`, then rounded as the cache type) against the
/// cached keys, ggml's softmax, the values; with `window = Some(w)` a query
/// at position `p` sees positions `p - w < p0 <= p` only (`is_masked_swa`:
/// masked when `p - p0 >= w`), else `0..=p`. In ggml's order of float
/// operations (see ops::GgmlLanes): the masked positions of ggml's padded
/// row add exact zeros, so the work starts at the last multiple of 64 at
/// or below the window's first position, which keeps every lane's order.
#[allow(clippy::too_many_arguments)]
fn attention(
    cx: &Cx,
    q: &[f32],
    kc: &[u8],
    vc: &[u8],
    n: usize,
    pos: usize,
    window: Option<usize>,
    q_scale: f32,
    scratch: &mut [u8],
    kqv: &mut [f32],
) {
    let c = cx.config;
    let (hd, hdv) = (c.head_dim, c.head_dim_v);
    let (qd, kd) = (c.n_embd_q(), c.n_embd_k_gqa());
    let ctx = cx.options.ctx;
    let gqa = c.n_head / c.n_head_kv;
    let parts = attn_scratch_parts(c, cx.options);
    let lanes = cx.lanes;
    let kq_scale = c.kq_scale;
    let f16_cache = cx.options.kv_type == KvType::F16;
    // ggml: tinyBLAS for a pass of two or more tokens, ggml_vec_dot_f16
    // for one.
    let dot = |a: &[f32], b: &[f32]| {
        if n >= 2 {
            ops::dot_ggml(lanes.dot_lanes, a, b)
        } else {
            ops::dot_ggml_vec(lanes.dot_lanes, a, b)
        }
    };
    let round = |x: f32| {
        if f16_cache {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let dims = (kd, hd, hdv, ctx);
    let stride = ctx.div_ceil(64) * 64;
    cx.pool.par_rows_scratch(
        &mut kqv[..n * c.n_head * hdv],
        n,
        c.n_head,
        hdv,
        scratch,
        |rows, s| {
            let (sc, s) = s.split_at_mut(parts[0]);
            let (pr, s) = s.split_at_mut(parts[1]);
            let (vf, s) = s.split_at_mut(parts[2]);
            let (kf, qf) = s.split_at_mut(parts[3]);
            let (sc, pr, vf) = (f32s_mut(sc), f32s_mut(pr), f32s_mut(vf));
            let (kf, qf) = (f32s_mut(kf), &mut f32s_mut(qf)[..hd]);
            let mut widened = None;
            for (i, h) in rows.rows().enumerate() {
                let g = h / gqa;
                if widened != Some(g) {
                    widen_group(f16_cache, kc, vc, dims, g, pos + n, kf, vf);
                    widened = Some(g);
                }
                for t in 0..n {
                    let p = pos + t;
                    let n_kv = p + 1;
                    let lo = match window {
                        Some(w) => (p + 1).saturating_sub(w),
                        None => 0,
                    };
                    let start = lo / 64 * 64;
                    let n_pad = n_kv.div_ceil(64) * 64;
                    // Q scaled (ggml_scale), then converted to the cache
                    // type (ggml's vec_dot_type for an F16 K is F16).
                    let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                    for (d, &x) in qf.iter_mut().zip(qh) {
                        *d = round(x * q_scale);
                    }
                    sc[start..lo].fill(f32::NEG_INFINITY);
                    for (j, s) in (lo..n_kv).zip(&mut sc[lo..n_kv]) {
                        *s = dot(&kf[j * hd..(j + 1) * hd], qf) * kq_scale;
                    }
                    ops::softmax_ggml(lanes.softmax_lanes, &mut sc[start..n_kv]);
                    for (p, &x) in pr[start..n_kv].iter_mut().zip(&sc[start..n_kv]) {
                        *p = round(x);
                    }
                    // Masked positions take part with probability 0 (see
                    // the llama attention).
                    pr[n_kv..n_pad].fill(0.0);
                    let o = rows.token(t);
                    for (d, out) in o[i * hdv..(i + 1) * hdv].iter_mut().enumerate() {
                        let v = &vf[d * stride + start..d * stride + n_pad];
                        *out = dot(v, &pr[start..n_pad]);
                    }
                }
            }
        },
    );
}
