//! Architecture `llama` (SmolLM2, Llama 2/3 without rope factors): RMSNorm,
//! GQA attention with RoPE (normal pairs), SwiGLU feed-forward, optional
//! tied output. Read from the vendored llama.cpp: `src/models/llama.cpp`
//! (tensors and graph), `llm_graph_context::build_qkv`, `build_attn_mha`
//! (the non-flash path: KQ = K x Q with Q converted to the cache type,
//! softmax of `KQ * kq_scale + mask`, KQV = V^T x softmax with the
//! probabilities converted to the cache type) and `build_ffn` (LLM_FFN_SILU,
//! LLM_FFN_PAR: `swiglu(gate(x), up(x))`).
//!
//! Per layer `L`, the intermediates and what each holds (llama.cpp's graph
//! names; docs/layout-format.md has the table):
//!
//! ```text
//! attn_norm-L  [n_embd, B]        rmsnorm(l_out-(L-1)) * attn_norm.weight
//! Qcur-L       [head_dim, n_head, B]     wq x attn_norm, AFTER RoPE
//! Kcur-L       [head_dim, n_head_kv, B]  wk x attn_norm, AFTER RoPE
//! Vcur-L       [head_dim, n_head_kv, B]  wv x attn_norm
//! kqv_out-L    [n_head*head_dim, B]      attention output, heads merged
//! attn_out-L   [n_embd, B]        wo x kqv_out
//! ffn_inp-L    [n_embd, B]        attn_out + layer input
//! ffn_norm-L   [n_embd, B]        rmsnorm(ffn_inp) * ffn_norm.weight
//! ffn_gate-L   [n_ff, B]          w_gate x ffn_norm
//! ffn_up-L     [n_ff, B]          w_up x ffn_norm
//! ffn_swiglu-L [n_ff, B]          silu(ffn_gate) * ffn_up
//! ffn_out-L    [n_embd, B]        w_down x ffn_swiglu (before the residual)
//! l_out-L      [n_embd, B]        ffn_out + ffn_inp
//! cache_k_lL   [n_embd_k_gqa, ctx]  K cache, one row per position
//! cache_v_lL   [ctx, n_embd_v_gqa]  V cache, transposed (one row per channel)
//! ```
//!
//! plus `inp_embd` [n_embd, B], `result_norm` [n_embd, 1] and
//! `result_output` [n_vocab, 1] (the last token's logits only, as llama.cpp
//! computes them for a decode that asks for the last token).

use std::collections::HashSet;
use std::sync::OnceLock;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::arena::{f16s, f32s, f32s_mut};
use crate::config::Config;
use crate::error::{CkError, Result};
use crate::gguf::{GgmlType, TensorInfo};
use crate::layout::{
    Kind, LayoutOptions, ModelFacts, Plan, Planner, RegionId, WeightLayout, WeightPlacement,
};
use crate::model::ModelFile;
use crate::ops;
use crate::pool::Pool;
use crate::profile::WeightBuffer;
use crate::quant::{self, Kernels, MatArith};

use super::super::engine::Regions;

/// A weight matrix: `rows` rows of `k` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub id: RegionId,
    pub ty: GgmlType,
    pub k: usize,
    pub rows: usize,
    pub row_bytes: usize,
    /// Packed sixteen rows per block, in the arena: `quant::q8_0_x16` for
    /// a Q8_0 head, `quant::q5_0_x16` for Q5_0 layer matrices.
    pub packed: bool,
}

/// One layer's regions.
#[derive(Clone, Debug)]
pub struct Layer {
    // Weights.
    pub attn_norm_w: RegionId,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub wo: Mat,
    pub ffn_norm_w: RegionId,
    pub w_gate: Mat,
    pub w_up: Mat,
    pub w_down: Mat,
    // Activations.
    pub attn_norm: RegionId,
    pub q: RegionId,
    pub k: RegionId,
    pub v: RegionId,
    pub kqv_out: RegionId,
    pub attn_out: RegionId,
    pub ffn_inp: RegionId,
    pub ffn_norm: RegionId,
    pub ffn_gate: RegionId,
    pub ffn_up: RegionId,
    pub ffn_swiglu: RegionId,
    pub ffn_out: RegionId,
    pub l_out: RegionId,
    // KV cache.
    pub cache_k: RegionId,
    pub cache_v: RegionId,
}

/// The planned llama model.
#[derive(Clone, Debug)]
pub struct Llama {
    pub token_embd: Mat,
    pub output_norm_w: RegionId,
    /// `output.weight`, or `token_embd.weight` when tied.
    pub output: Mat,
    pub inp_embd: RegionId,
    pub layers: Vec<Layer>,
    pub result_norm: RegionId,
    pub result_output: RegionId,
    /// Activations quantized for the dot products: `[B][row_bytes]`.
    pub act_q: RegionId,
    /// Attention scratch, `threads` equal parts.
    pub attn_scratch: RegionId,
}

/// Per-thread attention scratch, each part 64-byte aligned: scores and
/// probabilities `[ctx]`, one KV group's V channels widened to f32
/// `[head_dim_v][ctx]` and its K rows `[ctx][head_dim]` (widened once per
/// head, not once per token), and the query head (as the cache type rounds
/// it) `[head_dim]`, all f32.
pub(crate) fn attn_scratch_parts(c: &Config, o: &LayoutOptions) -> [usize; 5] {
    let a = |x: usize| x.div_ceil(64) * 64;
    let n = o.ctx.div_ceil(64) * 64;
    [
        a(n * 4),
        a(n * 4),
        a(c.head_dim_v * n * 4),
        a(n * c.head_dim * 4),
        a(c.head_dim * 4),
    ]
}

/// One KV group's cache widened to f32 for the attention of a pass: K rows
/// `0..n_kv` (`kf[j * hd..]`), and V channels (`vf[d * stride..]`, stride
/// the context rounded up to 64) for positions `0..n_kv`, zero from there
/// to the next multiple of 64 (the padded positions llama.cpp's cache
/// holds as zeros).
#[allow(clippy::too_many_arguments)]
pub(crate) fn widen_group(
    f16_cache: bool,
    kc: &[u8],
    vc: &[u8],
    (kd, hd, hdv, ctx): (usize, usize, usize, usize),
    g: usize,
    n_kv: usize,
    kf: &mut [f32],
    vf: &mut [f32],
) {
    let widen = |cache: &[u8], at: usize, dst: &mut [f32]| {
        if f16_cache {
            f16s(&cache[at * 2..(at + dst.len()) * 2]).convert_to_f32_slice(dst);
        } else {
            dst.copy_from_slice(f32s(&cache[at * 4..(at + dst.len()) * 4]));
        }
    };
    for j in 0..n_kv {
        widen(kc, j * kd + g * hd, &mut kf[j * hd..(j + 1) * hd]);
    }
    let stride = ctx.div_ceil(64) * 64;
    let n_pad = n_kv.div_ceil(64) * 64;
    for d in 0..hdv {
        let row = &mut vf[d * stride..d * stride + n_pad];
        widen(vc, (g * hdv + d) * ctx, &mut row[..n_kv]);
        row[n_kv..].fill(0.0);
    }
}

pub(crate) struct Tensors<'f> {
    pub(crate) file: &'f ModelFile,
    pub(crate) used: HashSet<String>,
}

impl<'f> Tensors<'f> {
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<&'f TensorInfo> {
        let t = self.file.gguf().require_tensor(name)?;
        let expected: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.dims != expected {
            return Err(CkError::WrongShape {
                path: self.file.path().to_path_buf(),
                name: name.to_string(),
                found: t.dims.clone(),
                expected,
            });
        }
        self.used.insert(name.to_string());
        Ok(t)
    }

    /// A 1-D f32 weight (norms).
    pub(crate) fn vector(&mut self, name: &str, n: usize) -> Result<&'f TensorInfo> {
        let t = self.get(name, &[n])?;
        if t.ggml_type != GgmlType::F32 {
            return Err(self.unsupported(t, "a norm weight", "f32".into()));
        }
        Ok(t)
    }

    /// A matrix of `rows` rows of `k`, of a type the kernels multiply
    /// (`for_rows`: only dequantized row by row, as the embedding table).
    pub(crate) fn matrix(
        &mut self,
        name: &str,
        k: usize,
        rows: usize,
        role: &'static str,
    ) -> Result<&'f TensorInfo> {
        let t = self.get(name, &[k, rows])?;
        if !quant::supported(t.ggml_type) {
            return Err(self.unsupported(
                t,
                role,
                "f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_K, q5_K, q6_K".into(),
            ));
        }
        Ok(t)
    }

    pub(crate) fn unsupported(
        &self,
        t: &TensorInfo,
        role: &'static str,
        supported: String,
    ) -> CkError {
        CkError::UnsupportedType {
            path: self.file.path().to_path_buf(),
            name: t.name.clone(),
            ty: t.ggml_type,
            role,
            supported,
        }
    }
}

/// Places a weight: in the file, or copied into the arena.
pub(crate) fn place(
    p: &mut Planner,
    o: &LayoutOptions,
    t: &TensorInfo,
    layer: Option<u32>,
) -> Result<RegionId> {
    match o.weights {
        WeightPlacement::Map => Ok(p.file_weight(
            &t.name,
            layer,
            t.ggml_type.name(),
            t.dims.clone(),
            t.file_offset,
            t.size,
        )),
        WeightPlacement::Copy => p.arena_weight(
            &t.name,
            layer,
            t.ggml_type.name(),
            t.dims.clone(),
            t.file_offset,
            t.size,
        ),
    }
}

/// A weight matrix where `o.weights` puts it; a layer's Q5_0 matrix with
/// whole groups of 16 rows is packed into the arena instead
/// (`quant::q5_0_x16`) when `o.layers` asks for it.
pub(crate) fn mat(
    p: &mut Planner,
    o: &LayoutOptions,
    t: &TensorInfo,
    layer: Option<u32>,
) -> Result<Mat> {
    let k = t.dims[0] as usize;
    let rows = t.dims[1] as usize;
    let packed = layer.is_some()
        && o.layers == WeightLayout::Packed
        && t.ggml_type == GgmlType::Q5_0
        && rows.is_multiple_of(quant::q5_0_x16::PACK_ROWS);
    let id = if packed {
        packed_copy(p, t, layer, "q5_0_x16")?
    } else {
        place(p, o, t, layer)?
    };
    Ok(Mat {
        id,
        ty: t.ggml_type,
        k,
        rows,
        row_bytes: quant::row_bytes(t.ggml_type, k).map_err(|e| CkError::Kernels(e.to_string()))?,
        packed,
    })
}

/// An arena copy of tensor `t` in the order `packing` names.
fn packed_copy(
    p: &mut Planner,
    t: &TensorInfo,
    layer: Option<u32>,
    packing: &str,
) -> Result<RegionId> {
    p.packed_weight(
        &t.name,
        layer,
        t.ggml_type.name(),
        t.dims.clone(),
        t.file_offset,
        t.size,
        packing,
    )
}

/// The output head `plain` (tensor `t`), or a packed copy of it when the
/// options ask for one and it qualifies: Q8_0 with whole groups of 16 rows.
pub(crate) fn head(p: &mut Planner, o: &LayoutOptions, t: &TensorInfo, plain: Mat) -> Result<Mat> {
    if o.head != WeightLayout::Packed
        || t.ggml_type != GgmlType::Q8_0
        || !plain.rows.is_multiple_of(quant::q8_0_x16::PACK_ROWS)
    {
        return Ok(plain);
    }
    let id = packed_copy(p, t, None, "q8_0_x16")?;
    Ok(Mat {
        id,
        packed: true,
        ..plain
    })
}

/// Checks every tensor llama needs (name, shape, type), refuses tensors it
/// would ignore, and plans the layout.
pub fn plan(file: &ModelFile, c: &Config, o: &LayoutOptions) -> Result<(Plan, Llama)> {
    o.validate()?;
    let mut ts = Tensors {
        file,
        used: HashSet::new(),
    };
    let (e, v) = (c.n_embd, c.n_vocab);
    let token_embd_t = ts.get("token_embd.weight", &[e, v])?;
    if !quant::row_supported(token_embd_t.ggml_type) {
        return Err(ts.unsupported(
            token_embd_t,
            "the embedding table",
            "f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_K, q5_K, q6_K".into(),
        ));
    }
    let output_norm_t = ts.vector("output_norm.weight", e)?;
    let output_t = if c.tied_output {
        ts.matrix("token_embd.weight", e, v, "the output head (tied)")?
    } else {
        ts.matrix("output.weight", e, v, "the output head")?
    };
    struct LayerT<'f> {
        w: [&'f TensorInfo; 9],
    }
    let mut layer_ts = Vec::with_capacity(c.n_layer);
    for l in 0..c.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layer_ts.push(LayerT {
            w: [
                ts.vector(&n("attn_norm"), e)?,
                ts.matrix(&n("attn_q"), e, c.n_embd_q(), "attention")?,
                ts.matrix(&n("attn_k"), e, c.n_embd_k_gqa(), "attention")?,
                ts.matrix(&n("attn_v"), e, c.n_embd_v_gqa(), "attention")?,
                ts.matrix(&n("attn_output"), c.n_head * c.head_dim_v, e, "attention")?,
                ts.vector(&n("ffn_norm"), e)?,
                ts.matrix(&n("ffn_gate"), e, c.n_ff, "the feed-forward")?,
                ts.matrix(&n("ffn_up"), e, c.n_ff, "the feed-forward")?,
                ts.matrix(&n("ffn_down"), c.n_ff, e, "the feed-forward")?,
            ],
        });
    }
    // A tensor llama.cpp would use and we would not (biases, rope factors,
    // experts) changes the result: refuse the file instead.
    for t in file.gguf().tensors() {
        if !ts.used.contains(&t.name) {
            return Err(CkError::UnexpectedTensor {
                path: file.path().to_path_buf(),
                name: t.name.clone(),
                arch: "llama",
                why: "the ck engine would ignore it and compute something else",
            });
        }
    }

    let mut p = Planner::new();
    let token_embd = mat(&mut p, o, token_embd_t, None)?;
    let mut layer_w = Vec::with_capacity(c.n_layer);
    for (l, lt) in layer_ts.iter().enumerate() {
        let ly = Some(l as u32);
        let w = &lt.w;
        layer_w.push((
            place(&mut p, o, w[0], ly)?,
            mat(&mut p, o, w[1], ly)?,
            mat(&mut p, o, w[2], ly)?,
            mat(&mut p, o, w[3], ly)?,
            mat(&mut p, o, w[4], ly)?,
            place(&mut p, o, w[5], ly)?,
            mat(&mut p, o, w[6], ly)?,
            mat(&mut p, o, w[7], ly)?,
            mat(&mut p, o, w[8], ly)?,
        ));
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
    let (hd, hdv) = (c.head_dim as u64, c.head_dim_v as u64);
    let act = Kind::Activation;
    let inp_embd = p.f32_region("inp_embd", act, None, vec![e64, b])?;
    let mut layers = Vec::with_capacity(c.n_layer);
    for (l, w) in layer_w.into_iter().enumerate() {
        let ly = Some(l as u32);
        let mut r =
            |name: &str, shape: Vec<u64>| p.f32_region(format!("{name}-{l}"), act, ly, shape);
        let attn_norm = r("attn_norm", vec![e64, b])?;
        let q = r("Qcur", vec![hd, c.n_head as u64, b])?;
        let k = r("Kcur", vec![hd, c.n_head_kv as u64, b])?;
        let v = r("Vcur", vec![hdv, c.n_head_kv as u64, b])?;
        let kqv_out = r("kqv_out", vec![hdv * c.n_head as u64, b])?;
        let attn_out = r("attn_out", vec![e64, b])?;
        let ffn_inp = r("ffn_inp", vec![e64, b])?;
        let ffn_norm = r("ffn_norm", vec![e64, b])?;
        let ffn_gate = r("ffn_gate", vec![ff, b])?;
        let ffn_up = r("ffn_up", vec![ff, b])?;
        let ffn_swiglu = r("ffn_swiglu", vec![ff, b])?;
        let ffn_out = r("ffn_out", vec![e64, b])?;
        let l_out = r("l_out", vec![e64, b])?;
        layers.push(Layer {
            attn_norm_w: w.0,
            wq: w.1,
            wk: w.2,
            wv: w.3,
            wo: w.4,
            ffn_norm_w: w.5,
            w_gate: w.6,
            w_up: w.7,
            w_down: w.8,
            attn_norm,
            q,
            k,
            v,
            kqv_out,
            attn_out,
            ffn_inp,
            ffn_norm,
            ffn_gate,
            ffn_up,
            ffn_swiglu,
            ffn_out,
            l_out,
            cache_k: RegionId(0),
            cache_v: RegionId(0),
        });
    }
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
        let qb = quant::row_bytes(quant::vec_dot_type(m.ty), m.k)
            .map_err(|e| CkError::Kernels(e.to_string()))?;
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
        Llama {
            token_embd,
            output_norm_w,
            output,
            inp_embd,
            layers,
            result_norm,
            result_output,
            act_q,
            attn_scratch,
        },
    ))
}

/// What a forward pass runs with.
pub struct Cx<'e> {
    pub pool: &'e Pool,
    pub kernels: &'e Kernels,
    pub config: &'e Config,
    pub options: &'e LayoutOptions,
    pub lanes: ops::GgmlLanes,
}

/// The first error a pool job hit (kernels check lengths; with the shapes
/// checked at load none should fire).
#[derive(Default)]
pub(crate) struct FirstErr(OnceLock<String>);

impl FirstErr {
    pub(crate) fn set(&self, e: impl ToString) {
        let _ = self.0.set(e.to_string());
    }
    pub(crate) fn check(self) -> Result<()> {
        match self.0.into_inner() {
            Some(e) => Err(CkError::Kernels(e)),
            None => Ok(()),
        }
    }
}

pub(crate) fn kerr(e: quant::QuantError) -> CkError {
    CkError::Kernels(e.to_string())
}

/// The activation buffer quantized for the dot products, remembering what
/// it holds so that Q/K/V (and gate/up) quantize their shared input once.
pub(crate) struct ActQ<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) holds: Option<(usize, usize, GgmlType)>,
}

impl<'a> ActQ<'a> {
    /// An empty cache over `buf` (the plan's `act_q` scratch).
    pub(crate) fn new(buf: &'a mut [u8]) -> ActQ<'a> {
        ActQ { buf, holds: None }
    }

    /// Quantizes `n` rows of `k` of `x` to `ty`; returns the row stride.
    pub(crate) fn prepare(
        &mut self,
        kernels: &Kernels,
        ty: GgmlType,
        x: &[f32],
        k: usize,
        n: usize,
    ) -> Result<usize> {
        let qb = quant::row_bytes(ty, k).map_err(kerr)?;
        let key = (x.as_ptr() as usize, n, ty);
        if self.holds != Some(key) {
            for t in 0..n {
                kernels
                    .quantize_row(
                        ty,
                        &x[t * k..(t + 1) * k],
                        &mut self.buf[t * qb..(t + 1) * qb],
                    )
                    .map_err(kerr)?;
            }
            self.holds = Some(key);
        }
        Ok(qb)
    }
}

/// `out[t] = w x[t]` for the `n` tokens, rows split over the pool, for a
/// weight ggml keeps as a matmul weight (see [`matmul_in`]).
pub(crate) fn matmul(
    cx: &Cx,
    w: &Mat,
    wdata: &[u8],
    x: &[f32],
    n: usize,
    aq: &mut ActQ,
    out: &mut [f32],
) -> Result<()> {
    matmul_in(cx, w, wdata, x, n, aq, out, WeightBuffer::Matmul)
}

/// `out[t] = w x[t]` for the `n` tokens, rows split over the pool, each
/// token with the float arithmetic of the kernel ggml runs for it on this
/// machine (`cx.lanes.paths`, decided by the weight's type, shape and
/// `buffer`, the token count and the token's place in it). ggml's kernels
/// compute every output element on its own, so splitting the rows over
/// threads does not change a bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_in(
    cx: &Cx,
    w: &Mat,
    wdata: &[u8],
    x: &[f32],
    n: usize,
    aq: &mut ActQ,
    out: &mut [f32],
    buffer: WeightBuffer,
) -> Result<()> {
    let vdt = quant::vec_dot_type(w.ty);
    let qb = aq.prepare(cx.kernels, vdt, x, w.k, n)?;
    let xq: &[u8] = aq.buf;
    if w.packed && w.ty == GgmlType::Q5_0 {
        return matmul_packed_q5_0(cx, w, wdata, &xq[..n * qb], n, out);
    }
    if w.packed {
        return matmul_packed(cx, w, wdata, &xq[..n * qb], qb, n, out);
    }
    let paths = cx.lanes.paths;
    let err = FirstErr::default();
    cx.pool.par_rows(&mut out[..n * w.rows], n, w.rows, 1, |r| {
        let rows = r.rows();
        if rows.is_empty() {
            return;
        }
        let wr = &wdata[rows.start * w.row_bytes..rows.end * w.row_bytes];
        // The leading tokens that share one arithmetic, as one GEMM over
        // the band: `mat_mat_as` gives every (row, token) the bits of
        // `mat_vec_as` (and `mat_vec`), reading each weight block once per
        // tile of tokens instead of once per token. The float types follow
        // tinyBLAS's pass order per token below.
        let mut done = 0;
        if n >= 2 && !matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            let first = paths.arith(w.ty, w.rows, w.k, buffer, n, 0);
            while done < n && paths.arith(w.ty, w.rows, w.k, buffer, n, done) == first {
                done += 1;
            }
            if done >= 2 {
                let res = band_gemm(
                    cx.kernels,
                    first,
                    w,
                    wr,
                    rows.len(),
                    &xq[..done * qb],
                    done,
                    r,
                );
                if let Err(e) = res {
                    err.set(e);
                }
            } else {
                done = 0;
            }
        }
        for t in done..n {
            // Which arithmetic ggml computes for this weight and token
            // (crate::profile); vec_dot's order also covers the pass-size
            // orders of the float types (tinyBLAS) in mat_vec_in_pass.
            let arith = paths.arith(w.ty, w.rows, w.k, buffer, n, t);
            let x_t = &xq[t * qb..(t + 1) * qb];
            let res = if arith == MatArith::VecDot {
                cx.kernels
                    .mat_vec_in_pass(w.ty, w.k, wr, x_t, n, r.token(t))
            } else {
                cx.kernels.mat_vec_as(arith, w.ty, w.k, wr, x_t, r.token(t))
            };
            if let Err(e) = res {
                err.set(e);
            }
        }
    });
    err.check()
}

/// A packed Q8_0 matrix (`quant::q8_0_x16`) times `n` quantized tokens,
/// one pass per token (the head computes one): the threads take chunks of
/// rows as they go (`Pool::par_chunks_dynamic`), each chunk's values a
/// function of its rows only, so the bits are those of the plain kernels
/// on every run.
fn matmul_packed(
    cx: &Cx,
    w: &Mat,
    wdata: &[u8],
    xq: &[u8],
    qb: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    let g = quant::q8_0_x16::PACK_ROWS;
    // Chunks of 64 groups (1024 rows; 696 KB of Gemma-3's head): small
    // enough to even out the threads, large enough for the prefetch to
    // run ahead within one.
    let rows_per_chunk = 64 * g;
    let err = FirstErr::default();
    for t in 0..n {
        let x = &xq[t * qb..(t + 1) * qb];
        let o = &mut out[t * w.rows..(t + 1) * w.rows];
        cx.pool.par_chunks_dynamic(o, rows_per_chunk, |i, chunk| {
            let r0 = i * rows_per_chunk;
            let wr = &wdata[r0 * w.row_bytes..(r0 + chunk.len()) * w.row_bytes];
            if let Err(e) = cx.kernels.mat_vec_q8_0_x16(w.k, wr, x, chunk) {
                err.set(e);
            }
        });
    }
    err.check()
}

/// A packed Q5_0 matrix (`quant::q5_0_x16`) times `n` quantized tokens in
/// one pass over the weights: each thread takes a fixed band of whole
/// 16-row groups (the same band on every step, so its rows stay in that
/// core's caches), computed for all tokens by `mat_mat_q5_0_x16`. Q5_0
/// has `vec_dot`'s arithmetic in ggml for every pass size, which the
/// packed kernels give bit for bit.
fn matmul_packed_q5_0(
    cx: &Cx,
    w: &Mat,
    wdata: &[u8],
    xq: &[u8],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    let g = quant::q5_0_x16::PACK_ROWS;
    let err = FirstErr::default();
    cx.pool
        .par_rows(&mut out[..n * w.rows], n, w.rows / g, g, |r| {
            let groups = r.rows();
            if groups.is_empty() {
                return;
            }
            let rows = groups.start * g..groups.end * g;
            let wr = &wdata[rows.start * w.row_bytes..rows.end * w.row_bytes];
            if n == 1 {
                if let Err(e) = cx.kernels.mat_vec_q5_0_x16(w.k, wr, xq, r.token(0)) {
                    err.set(e);
                }
                return;
            }
            let res = with_scratch(rows.len() * n, |s| {
                cx.kernels.mat_mat_q5_0_x16(w.k, wr, rows.len(), xq, n, s)?;
                for (t, col) in s.chunks_exact(rows.len()).enumerate() {
                    r.token(t).copy_from_slice(col);
                }
                Ok::<(), quant::QuantError>(())
            });
            if let Err(e) = res {
                err.set(e);
            }
        });
    err.check()
}

/// Runs `f` on this thread's scratch of `len` floats.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// `r.token(t) = w_band x[t]` for tokens `0..n_cols` by `Kernels::mat_mat_as`
/// into this thread's scratch (column-major, one column per token), then
/// copied to each token's rows.
#[allow(clippy::too_many_arguments)]
fn band_gemm(
    kernels: &Kernels,
    arith: MatArith,
    w: &Mat,
    band: &[u8],
    n_rows: usize,
    xs: &[u8],
    n_cols: usize,
    r: &mut crate::pool::RowsMut<'_, f32>,
) -> std::result::Result<(), quant::QuantError> {
    with_scratch(n_rows * n_cols, |out| {
        kernels.mat_mat_as(arith, w.ty, w.k, band, n_rows, xs, n_cols, out)?;
        for (t, col) in out.chunks_exact(n_rows).enumerate() {
            r.token(t).copy_from_slice(col);
        }
        Ok(())
    })
}

pub(crate) fn rms_rows(x: &[f32], w: &[f32], eps: f32, n: usize, out: &mut [f32]) {
    let e = w.len();
    for t in 0..n {
        ops::rms_norm(&x[t * e..(t + 1) * e], w, eps, &mut out[t * e..(t + 1) * e]);
    }
}

/// One forward pass over `tokens` (at most `batch`) at positions
/// `pos..pos + tokens.len()`; the KV cache must hold positions `0..pos`.
pub fn forward(m: &Llama, r: &mut Regions<'_>, cx: &Cx, tokens: &[u32], pos: usize) -> Result<()> {
    let c = cx.config;
    let n = tokens.len();
    let e = c.n_embd;
    let (hd, hdv) = (c.head_dim, c.head_dim_v);
    let (qd, kd, vd) = (c.n_embd_q(), c.n_embd_k_gqa(), c.n_embd_v_gqa());
    let kvb = cx.options.kv_type.bytes();
    let ctx = cx.options.ctx;
    let eps = c.rms_eps;

    // inp_embd: get_rows (dequantize the tokens' rows of token_embd).
    let embd = r.bytes(m.token_embd.id);
    let inp = r.f32_mut(m.inp_embd);
    for (t, &id) in tokens.iter().enumerate() {
        let rb = m.token_embd.row_bytes;
        let row = &embd[id as usize * rb..(id as usize + 1) * rb];
        quant::dequantize_row(m.token_embd.ty, row, &mut inp[t * e..(t + 1) * e]).map_err(kerr)?;
    }
    let mut x: &[f32] = inp;
    let mut aq = ActQ::new(r.bytes_mut(m.act_q));
    let scratch = r.bytes_mut(m.attn_scratch);
    let mut rope = vec![0f32; c.rope.n_dims];

    for ly in &m.layers {
        // Attention block.
        let an = r.f32_mut(ly.attn_norm);
        rms_rows(x, f32s(r.bytes(ly.attn_norm_w)), eps, n, an);
        let an: &[f32] = an;
        let q = r.f32_mut(ly.q);
        matmul(cx, &ly.wq, r.bytes(ly.wq.id), an, n, &mut aq, q)?;
        let k = r.f32_mut(ly.k);
        matmul(cx, &ly.wk, r.bytes(ly.wk.id), an, n, &mut aq, k)?;
        let v = r.f32_mut(ly.v);
        matmul(cx, &ly.wv, r.bytes(ly.wv.id), an, n, &mut aq, v)?;

        // RoPE on Q and K, in place (Qcur/Kcur name the rotated values).
        for t in 0..n {
            ops::rope_cache(&c.rope, pos + t, &mut rope);
            for h in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                ops::rope_apply(c.rope.kind, c.rope.n_dims, &rope, h);
            }
            for h in k[t * kd..(t + 1) * kd].chunks_exact_mut(hd) {
                ops::rope_apply(c.rope.kind, c.rope.n_dims, &rope, h);
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
                crate::layout::KvType::F16 => ops::store_f16(src, dst),
                crate::layout::KvType::F32 => ops::store_f32(src, dst),
            }
            for ch in 0..vd {
                let at = (ch * ctx + slot) * kvb;
                let val = [v[t * vd + ch]];
                match cx.options.kv_type {
                    crate::layout::KvType::F16 => ops::store_f16(&val, &mut vc[at..at + 2]),
                    crate::layout::KvType::F32 => ops::store_f32(&val, &mut vc[at..at + 4]),
                }
            }
        }
        let (kc, vc): (&[u8], &[u8]) = (kc, vc);
        let q: &[f32] = q;

        // kqv_out: per head, scores against the cache, softmax, values,
        // in ggml's order of float operations (see ops::GgmlLanes).
        let kqv = r.f32_mut(ly.kqv_out);
        let gqa = c.n_head / c.n_head_kv;
        let parts = attn_scratch_parts(c, cx.options);
        let lanes = cx.lanes;
        let kq_scale = c.kq_scale;
        let f16_cache = cx.options.kv_type == crate::layout::KvType::F16;
        // ggml: tinyBLAS for a pass of two or more tokens, ggml_vec_dot_f16
        // for one.
        let dot = |a: &[f32], b: &[f32]| {
            if n >= 2 {
                ops::dot_ggml(lanes.dot_lanes, a, b)
            } else {
                ops::dot_ggml_vec(lanes.dot_lanes, a, b)
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
                        let n_kv = pos + t + 1;
                        // Q converted to the cache type (ggml's vec_dot_type
                        // for an F16 K is F16).
                        let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                        for (d, &x) in qf.iter_mut().zip(qh) {
                            *d = if f16_cache {
                                f16::from_f32(x).to_f32()
                            } else {
                                x
                            };
                        }
                        for (j, s) in sc[..n_kv].iter_mut().enumerate() {
                            *s = dot(&kf[j * hd..(j + 1) * hd], qf) * kq_scale;
                        }
                        ops::softmax_ggml(lanes.softmax_lanes, &mut sc[..n_kv]);
                        for (p, &x) in pr[..n_kv].iter_mut().zip(&sc[..n_kv]) {
                            *p = if f16_cache {
                                f16::from_f32(x).to_f32()
                            } else {
                                x
                            };
                        }
                        // The masked positions up to a multiple of 64 take
                        // part as zeros (probability 0), as in llama.cpp's
                        // padded n_kv; V there is the pass's later tokens or
                        // the zeros widen_group wrote, and a zero product
                        // leaves every sum as it is.
                        let n_pad = n_kv.div_ceil(64) * 64;
                        pr[n_kv..n_pad].fill(0.0);
                        let o = rows.token(t);
                        for (d, out) in o[i * hdv..(i + 1) * hdv].iter_mut().enumerate() {
                            let v = &vf[d * stride..d * stride + n_pad];
                            *out = dot(v, &pr[..n_pad]);
                        }
                    }
                }
            },
        );
        let kqv: &[f32] = kqv;

        let attn_out = r.f32_mut(ly.attn_out);
        matmul(cx, &ly.wo, r.bytes(ly.wo.id), kqv, n, &mut aq, attn_out)?;
        let ffn_inp = r.f32_mut(ly.ffn_inp);
        ops::add(&attn_out[..n * e], &x[..n * e], &mut ffn_inp[..n * e]);
        let ffn_inp: &[f32] = ffn_inp;

        // Feed-forward block.
        let fnm = r.f32_mut(ly.ffn_norm);
        rms_rows(ffn_inp, f32s(r.bytes(ly.ffn_norm_w)), eps, n, fnm);
        let fnm: &[f32] = fnm;
        let gate = r.f32_mut(ly.ffn_gate);
        matmul(cx, &ly.w_gate, r.bytes(ly.w_gate.id), fnm, n, &mut aq, gate)?;
        let up = r.f32_mut(ly.ffn_up);
        matmul(cx, &ly.w_up, r.bytes(ly.w_up.id), fnm, n, &mut aq, up)?;
        let sw = r.f32_mut(ly.ffn_swiglu);
        let nf = n * c.n_ff;
        ops::swiglu_ggml(
            cx.lanes.softmax_lanes,
            &gate[..nf],
            &up[..nf],
            &mut sw[..nf],
        );
        let sw: &[f32] = sw;
        let ffn_out = r.f32_mut(ly.ffn_out);
        matmul(
            cx,
            &ly.w_down,
            r.bytes(ly.w_down.id),
            sw,
            n,
            &mut aq,
            ffn_out,
        )?;
        let l_out = r.f32_mut(ly.l_out);
        ops::add(&ffn_out[..n * e], ffn_inp, &mut l_out[..n * e]);
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
    Ok(())
}
