//! Synthetic trace bundles with the structure of a real one, for tests and
//! the parse benchmark.
//!
//! The model is a llama-like stack: `token_embd` read by `get_rows`, per
//! layer q/k/v/output and gate/up/down matmuls over weights (or, with
//! experts, `mul_mat_id` over `*_exps` weights), two KV-cache matmuls whose
//! row count grows with the position, one op-level record per thread, and
//! the `output` matmul. Each matmul's output is cut into row chunks (and,
//! for prompt batches, two column halves) dealt round-robin to the threads,
//! so the chunks of every node tile it exactly. Threads keep their own
//! clocks and meet at a barrier after every node; each thread buffers its
//! records and flushes them in batches, so the file interleaves threads the
//! way the real writer does. Everything is deterministic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use cktrace_tracer::format::{flags, NO_ID};
use cktrace_tracer::{
    Engine, KernelPath, MemorySource, Meta, Op, Phase, Registry, TensorInfo, TensorKind,
    TraceHeader, TraceRecord,
};

use crate::reader::{META_FILE, REGISTRY_FILE, TRACE_FILE};

/// Shape of the synthetic model and run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    pub n_layer: u32,
    /// Row length (elements) of the attention weights; also their rows.
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub prompt_tokens: u32,
    /// Generated tokens after the prompt (the trace has `1 + decode_steps`
    /// steps).
    pub decode_steps: u32,
    pub threads: u16,
    /// Weight rows per chunk record.
    pub chunk_rows: u32,
    /// Records a thread buffers before flushing them to the file.
    pub batch: usize,
    /// Experts per MoE layer (0: dense FFN).
    pub n_expert: u32,
    /// Experts used per token.
    pub n_expert_used: u32,
}

impl SynthSpec {
    /// A few hundred records: 2 layers, 2 threads, prompt + 2 steps.
    pub fn small() -> SynthSpec {
        SynthSpec {
            n_layer: 2,
            n_embd: 64,
            n_ff: 128,
            n_vocab: 96,
            n_ctx: 64,
            prompt_tokens: 4,
            decode_steps: 2,
            threads: 2,
            chunk_rows: 16,
            batch: 7,
            n_expert: 0,
            n_expert_used: 0,
        }
    }

    /// As [`SynthSpec::small`] with a mixture-of-experts FFN.
    pub fn small_moe() -> SynthSpec {
        SynthSpec {
            n_expert: 4,
            n_expert_used: 2,
            ..SynthSpec::small()
        }
    }

    /// A 7B-like model with enough decode steps that the trace is at least
    /// `bytes` long.
    pub fn for_bytes(bytes: u64) -> SynthSpec {
        let mut spec = SynthSpec {
            n_layer: 32,
            n_embd: 4096,
            n_ff: 11008,
            n_vocab: 32000,
            n_ctx: 1 << 20,
            prompt_tokens: 32,
            decode_steps: 1,
            threads: 4,
            chunk_rows: 64,
            batch: 1024,
            n_expert: 0,
            n_expert_used: 0,
        };
        let per_step = count_records(&SynthSpec {
            decode_steps: 1,
            ..spec.clone()
        }) - count_records(&SynthSpec {
            decode_steps: 0,
            ..spec.clone()
        });
        let want = bytes.div_ceil(128);
        spec.decode_steps = (want.div_ceil(per_step.max(1)) as u32).max(1);
        spec
    }
}

/// Registry of the synthetic model; ids are indices.
pub fn registry(spec: &SynthSpec) -> Registry {
    let mut reg = Registry::new();
    let mut gguf = 1u64 << 20;
    let mut add = |name: String, kind: TensorKind, k: u64, rows: u64, layer: Option<i32>| {
        let (dtype, row_bytes) = match kind {
            TensorKind::Weight => ("q8_0", k / 32 * 34),
            TensorKind::KvCache => ("f16", k * 2),
            TensorKind::Activation => ("f32", k * 4),
        };
        let id = reg.tensors.len() as u32;
        let weight = kind == TensorKind::Weight;
        reg.tensors.push(TensorInfo {
            id,
            name,
            kind,
            dtype: dtype.to_string(),
            shape: vec![k, rows],
            n_rows: rows,
            row_bytes,
            bytes: rows * row_bytes,
            layer,
            gguf_offset: weight.then_some(gguf),
            source: if weight {
                MemorySource::Mmap
            } else {
                MemorySource::Runtime
            },
            buffer_type: if weight { "CPU_Mapped" } else { "CPU" }.to_string(),
            data_ptrs: vec![0x7f00_0000_0000 + gguf],
            buffer_bytes: None,
        });
        if weight {
            gguf += rows * row_bytes;
        }
        id
    };
    add(
        "token_embd.weight".into(),
        TensorKind::Weight,
        spec.n_embd,
        spec.n_vocab,
        None,
    );
    add(
        "inp_tokens".into(),
        TensorKind::Activation,
        1,
        spec.n_ctx,
        None,
    );
    for l in 0..spec.n_layer as i32 {
        let e = spec.n_expert.max(1) as u64;
        add(
            format!("blk.{l}.attn_q.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_embd,
            Some(l),
        );
        add(
            format!("blk.{l}.attn_k.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_embd,
            Some(l),
        );
        add(
            format!("blk.{l}.attn_v.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_embd,
            Some(l),
        );
        add(
            format!("blk.{l}.attn_output.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_embd,
            Some(l),
        );
        let sfx = if spec.n_expert > 0 { "_exps" } else { "" };
        add(
            format!("blk.{l}.ffn_gate{sfx}.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_ff * e,
            Some(l),
        );
        add(
            format!("blk.{l}.ffn_up{sfx}.weight"),
            TensorKind::Weight,
            spec.n_embd,
            spec.n_ff * e,
            Some(l),
        );
        add(
            format!("blk.{l}.ffn_down{sfx}.weight"),
            TensorKind::Weight,
            spec.n_ff,
            spec.n_embd * e,
            Some(l),
        );
        // A view name longer than a record's 32 name bytes, as ggml makes.
        add(
            format!("cache_k_l{l} (view) (permuted) (cont)"),
            TensorKind::KvCache,
            spec.n_embd,
            spec.n_ctx,
            Some(l),
        );
        add(
            format!("cache_v_l{l} (view) (permuted) (cont)"),
            TensorKind::KvCache,
            spec.n_embd,
            spec.n_ctx,
            Some(l),
        );
        add(
            format!("attn_norm-{l}"),
            TensorKind::Activation,
            spec.n_embd,
            spec.n_ctx,
            Some(l),
        );
        add(
            format!("ffn_norm-{l}"),
            TensorKind::Activation,
            spec.n_embd,
            spec.n_ctx,
            Some(l),
        );
        add(
            format!("ffn_out-{l}"),
            TensorKind::Activation,
            spec.n_ff,
            spec.n_ctx,
            Some(l),
        );
    }
    add(
        "output.weight".into(),
        TensorKind::Weight,
        spec.n_embd,
        spec.n_vocab,
        None,
    );
    add(
        "result_norm".into(),
        TensorKind::Activation,
        spec.n_embd,
        spec.n_ctx,
        None,
    );
    reg
}

/// Per-thread state of the generator.
struct Gen<'a, F: FnMut(&TraceRecord) -> io::Result<()>> {
    spec: &'a SynthSpec,
    reg: &'a Registry,
    ids: HashMap<&'a str, u32>,
    clocks: Vec<u64>,
    bufs: Vec<Vec<TraceRecord>>,
    sink: F,
    node: u64,
    /// Current batch.
    step: u32,
    pos: i32,
    n_tokens: u32,
}

/// One chunk of work within a node.
struct Chunk {
    row0: u32,
    row1: u32,
    col0: u32,
    col1: u32,
    offset: u64,
    len: u64,
    act_bytes: u64,
}

impl<F: FnMut(&TraceRecord) -> io::Result<()>> Gen<'_, F> {
    fn id(&self, name: &str) -> u32 {
        self.ids.get(name).copied().unwrap_or(NO_ID)
    }

    fn emit(&mut self, thread: usize, rec: TraceRecord) -> io::Result<()> {
        self.bufs[thread].push(rec);
        if self.bufs[thread].len() >= self.spec.batch {
            for r in self.bufs[thread].drain(..) {
                (self.sink)(&r)?;
            }
        }
        Ok(())
    }

    fn flush_all(&mut self) -> io::Result<()> {
        for t in 0..self.bufs.len() {
            for r in self.bufs[t].drain(..) {
                (self.sink)(&r)?;
            }
        }
        Ok(())
    }

    /// Run one node: chunks dealt round-robin, then a barrier.
    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        op: Op,
        path: KernelPath,
        tensor: u32,
        act: u32,
        layer: i16,
        expert: i32,
        extra_flags: u32,
        chunks: &[Chunk],
    ) -> io::Result<()> {
        let nth = self.spec.threads as usize;
        let start = self.clocks.iter().copied().max().unwrap_or(0) + 100;
        self.clocks.iter_mut().for_each(|c| *c = start);
        let name = self
            .reg
            .tensors
            .get(tensor as usize)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        for (i, c) in chunks.iter().enumerate() {
            let th = i % nth;
            let dur = 40 + c.len / 16 + c.act_bytes / 64;
            let mut r = TraceRecord {
                t_ns: self.clocks[th],
                dur_ns: dur as u32,
                step: self.step,
                pos: self.pos,
                n_tokens: self.n_tokens as u16,
                phase: if self.step == 0 {
                    Phase::Prefill
                } else {
                    Phase::Decode
                } as u8,
                engine: Engine::Ggml as u8,
                op: op as u8,
                path: path as u8,
                thread: th as u16,
                n_threads: nth as u16,
                layer,
                tensor_id: tensor,
                act_id: act,
                offset: c.offset,
                len: c.len,
                row0: c.row0,
                row1: c.row1,
                col0: c.col0,
                col1: c.col1,
                expert,
                flags: flags::VALID | extra_flags,
                node: self.node,
                act_bytes: c.act_bytes,
                name: [0; 32],
            };
            r.set_name(name.as_bytes());
            self.clocks[th] += dur + 5;
            self.emit(th, r)?;
        }
        self.node += 0x100;
        Ok(())
    }

    /// Chunks covering rows `[0,rows)` (of a tensor whose rows start at
    /// `base_row`) x columns `cols`, split in column halves when wide.
    fn matmul_chunks(
        &self,
        rows: u64,
        base_row: u64,
        row_bytes: u64,
        k: u64,
        cols: (u32, u32),
    ) -> Vec<Chunk> {
        let cr = self.spec.chunk_rows.max(1) as u64;
        let (c0, c1) = cols;
        let halves: Vec<(u32, u32)> = if c1 - c0 >= 2 {
            vec![(c0, c0 + (c1 - c0) / 2), (c0 + (c1 - c0) / 2, c1)]
        } else {
            vec![(c0, c1)]
        };
        let mut out = Vec::new();
        let mut r = 0;
        while r < rows {
            let r1 = (r + cr).min(rows);
            for &(a, b) in &halves {
                out.push(Chunk {
                    row0: r as u32,
                    row1: r1 as u32,
                    col0: a,
                    col1: b,
                    offset: (base_row + r) * row_bytes,
                    len: (r1 - r) * row_bytes,
                    act_bytes: (b - a) as u64 * k * 4,
                });
            }
            r = r1;
        }
        out
    }

    fn weight_matmul(
        &mut self,
        name: &str,
        act: &str,
        layer: i16,
        path: KernelPath,
        cols: (u32, u32),
    ) -> io::Result<()> {
        let id = self.id(name);
        let act = self.id(act);
        let t = &self.reg.tensors[id as usize];
        let (rows, rb, k) = (t.n_rows, t.row_bytes, t.shape[0]);
        let chunks = self.matmul_chunks(rows, 0, rb, k, cols);
        let fl = if path == KernelPath::RepackGemv {
            flags::REPACKED
        } else {
            0
        };
        self.node(Op::MulMat, path, id, act, layer, -1, fl, &chunks)
    }

    fn step(&mut self, step: u32) -> io::Result<()> {
        let spec = self.spec;
        self.step = step;
        self.n_tokens = if step == 0 {
            spec.prompt_tokens.max(1)
        } else {
            1
        };
        self.pos = if step == 0 {
            0
        } else {
            (spec.prompt_tokens + step - 1) as i32
        };
        self.node = 0x5555_0000_1000;
        let nt = self.n_tokens;
        let all = (0, nt);

        // Token embeddings: one row per token.
        let embd = self.id("token_embd.weight");
        let rb = self.reg.tensors[embd as usize].row_bytes;
        let chunks: Vec<Chunk> = (0..nt)
            .map(|j| {
                let tok = ((self.pos as u64 + j as u64) * 7919 + 13) % spec.n_vocab;
                Chunk {
                    row0: tok as u32,
                    row1: tok as u32 + 1,
                    col0: j,
                    col1: j + 1,
                    offset: tok * rb,
                    len: rb,
                    act_bytes: 4,
                }
            })
            .collect();
        let inp = self.id("inp_tokens");
        self.node(
            Op::GetRows,
            KernelPath::GetRows,
            embd,
            inp,
            -1,
            -1,
            0,
            &chunks,
        )?;

        for l in 0..spec.n_layer {
            let li = l as i16;
            let path = if step == 0 {
                KernelPath::Llamafile
            } else if l % 2 == 0 {
                KernelPath::RepackGemv
            } else {
                KernelPath::VecDot
            };
            let norm = format!("attn_norm-{l}");
            for w in ["attn_q", "attn_k", "attn_v"] {
                self.weight_matmul(&format!("blk.{l}.{w}.weight"), &norm, li, path, all)?;
            }
            // KV-cache matmuls over the n_kv rows seen so far.
            let n_kv = (self.pos as u64 + nt as u64).min(spec.n_ctx);
            for cache in ["cache_k", "cache_v"] {
                let id = self.id(&format!("{cache}_l{l} (view) (permuted) (cont)"));
                let rb = self.reg.tensors[id as usize].row_bytes;
                let chunks = self.matmul_chunks(n_kv, 0, rb, spec.n_embd, all);
                let q = self.id(&norm);
                self.node(
                    Op::MulMat,
                    KernelPath::VecDot,
                    id,
                    q,
                    li,
                    -1,
                    flags::STRIDED,
                    &chunks,
                )?;
            }
            self.weight_matmul(&format!("blk.{l}.attn_output.weight"), &norm, li, path, all)?;

            // One op-level record per thread (a norm).
            let fnorm = self.id(&format!("ffn_norm-{l}"));
            let nth = spec.threads as usize;
            let per = nt as u64 * spec.n_embd * 4 / nth as u64;
            let chunks: Vec<Chunk> = (0..nth)
                .map(|t| Chunk {
                    row0: 0,
                    row1: 0,
                    col0: 0,
                    col1: 0,
                    offset: t as u64 * per,
                    len: per,
                    act_bytes: 0,
                })
                .collect();
            self.node(
                Op::Other,
                KernelPath::OpLevel,
                fnorm,
                NO_ID,
                li,
                -1,
                flags::OP_LEVEL,
                &chunks,
            )?;

            let fnorm_name = format!("ffn_norm-{l}");
            if spec.n_expert == 0 {
                self.weight_matmul(
                    &format!("blk.{l}.ffn_gate.weight"),
                    &fnorm_name,
                    li,
                    path,
                    all,
                )?;
                self.weight_matmul(
                    &format!("blk.{l}.ffn_up.weight"),
                    &fnorm_name,
                    li,
                    path,
                    all,
                )?;
                self.weight_matmul(
                    &format!("blk.{l}.ffn_down.weight"),
                    &format!("ffn_out-{l}"),
                    li,
                    path,
                    all,
                )?;
            } else {
                for (w, act, rows) in [
                    ("ffn_gate_exps", fnorm_name.clone(), spec.n_ff),
                    ("ffn_up_exps", fnorm_name.clone(), spec.n_ff),
                    ("ffn_down_exps", format!("ffn_out-{l}"), spec.n_embd),
                ] {
                    let id = self.id(&format!("blk.{l}.{w}.weight"));
                    let act = self.id(&act);
                    let t = &self.reg.tensors[id as usize];
                    let (rb, k) = (t.row_bytes, t.shape[0]);
                    let node = self.node;
                    for u in 0..spec.n_expert_used {
                        let e = (step + l + u * 3) % spec.n_expert;
                        // An expert computes only the tokens routed to it.
                        let cols = if nt >= 2 && e % 2 == 1 {
                            (nt / 2, nt)
                        } else if nt >= 2 {
                            (0, nt / 2)
                        } else {
                            all
                        };
                        let chunks = self.matmul_chunks(rows, e as u64 * rows, rb, k, cols);
                        self.node = node;
                        self.node(
                            Op::MulMatId,
                            KernelPath::MulMatId,
                            id,
                            act,
                            li,
                            e as i32,
                            0,
                            &chunks,
                        )?;
                    }
                }
            }
        }
        // Logits of the last token only.
        self.weight_matmul(
            "output.weight",
            "result_norm",
            -1,
            KernelPath::VecDot,
            (0, 1),
        )?;
        self.flush_all()
    }
}

/// Feed every record of the synthetic run, in file order, to `sink`.
pub fn generate(
    spec: &SynthSpec,
    reg: &Registry,
    sink: impl FnMut(&TraceRecord) -> io::Result<()>,
) -> io::Result<()> {
    let n = spec.threads.max(1) as usize;
    let mut g = Gen {
        spec,
        reg,
        ids: reg
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.id))
            .collect(),
        clocks: vec![1000; n],
        bufs: vec![Vec::with_capacity(spec.batch); n],
        sink,
        node: 0,
        step: 0,
        pos: 0,
        n_tokens: 0,
    };
    for s in 0..=spec.decode_steps {
        g.step(s)?;
    }
    Ok(())
}

/// Number of records [`generate`] produces.
pub fn count_records(spec: &SynthSpec) -> u64 {
    let reg = registry(spec);
    let mut n = 0u64;
    let _ = generate(spec, &reg, |_| {
        n += 1;
        Ok(())
    });
    n
}

/// The registry and every record of the synthetic run, in memory (for
/// small specs).
pub fn synthetic(spec: &SynthSpec) -> (Registry, Vec<TraceRecord>) {
    let reg = registry(spec);
    let mut recs = Vec::new();
    generate(spec, &reg, |r| {
        recs.push(*r);
        Ok(())
    })
    .expect("collecting into a Vec cannot fail");
    (reg, recs)
}

/// A finished header for `records` complete records.
pub fn header_for(records: u64, threads: u16) -> TraceHeader {
    let mut h = TraceHeader::new(
        records,
        Engine::Ggml,
        threads as u32,
        1_700_000_000_000_000_000,
        5_000_000,
    );
    h.records = records;
    h.complete = records;
    h.finished = 1;
    h
}

/// The `meta.json` of a synthetic run.
pub fn meta_for(spec: &SynthSpec, records: u64) -> Meta {
    Meta {
        version: 1,
        engine: "ggml".into(),
        model_path: "synthetic.gguf".into(),
        arch: "llama".into(),
        n_layer: spec.n_layer,
        prompt: "synthetic".into(),
        threads: spec.threads as u32,
        mmap: true,
        records,
        ..Meta::default()
    }
}

/// Write a bundle (trace.bin, registry.json and, if given, meta.json) with
/// exactly these header and records.
pub fn write_bundle(
    dir: &Path,
    header: &TraceHeader,
    registry: &Registry,
    meta: Option<&Meta>,
    records: &[TraceRecord],
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut w = BufWriter::new(File::create(dir.join(TRACE_FILE))?);
    w.write_all(&header.to_bytes())?;
    for r in records {
        w.write_all(r.as_bytes())?;
    }
    w.flush()?;
    std::fs::write(dir.join(REGISTRY_FILE), serde_json::to_vec(registry)?)?;
    match meta {
        Some(m) => std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(m)?)?,
        None => match std::fs::remove_file(dir.join(META_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    Ok(())
}

/// Stream the synthetic run of `spec` into a bundle in `dir` (any size;
/// memory stays flat). Returns the number of records.
pub fn write_synthetic(dir: &Path, spec: &SynthSpec) -> io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let reg = registry(spec);
    let file = File::create(dir.join(TRACE_FILE))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&[0u8; cktrace_tracer::format::HEADER_SIZE])?;
    let mut n = 0u64;
    generate(spec, &reg, |r| {
        n += 1;
        w.write_all(r.as_bytes())
    })?;
    let mut file = w.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header_for(n, spec.threads).to_bytes())?;
    file.sync_all()?;
    std::fs::write(dir.join(REGISTRY_FILE), serde_json::to_vec(&reg)?)?;
    std::fs::write(
        dir.join(META_FILE),
        serde_json::to_vec_pretty(&meta_for(spec, n))?,
    )?;
    Ok(n)
}
