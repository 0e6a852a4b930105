//! The ck engine: a model file, its plan, the arena the plan lays out, the
//! kernels and the thread pool, all owned by one [`Engine`] value (nothing
//! process-global, so two engines live side by side in one process).
//!
//! ```text
//! Engine::new(path, options)   open + check the GGUF, read the config,
//!                              plan the layout, allocate the arena once,
//!                              copy weights if asked, start the pool
//! engine.forward(tokens, pos)  tokens at positions pos.., in chunks of at
//!                              most `batch`; returns the last token's logits
//! engine.dump(dir, step)       the named intermediates of the last chunk
//! ```

use std::path::Path;

use serde::Serialize;

use crate::arch;
use crate::arena::{f32s, Arena};
use crate::config::Config;
use crate::error::{CkError, Result};
use crate::layout::{Kind, Layout, LayoutOptions, Memory, Plan, RegionId};
use crate::model::ModelFile;
use crate::pool::Pool;
use crate::quant::{KernelLevel, Kernels};

/// Options of a run: the layout's, plus what does not change addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineOptions {
    pub layout: LayoutOptions,
    /// Force a kernel level; `None` picks the best this CPU has.
    pub kernels: Option<KernelLevel>,
    /// Check the arena's canaries after every step (always on in debug
    /// builds).
    pub check_canaries: bool,
    /// Which of ggml's matmul paths to follow (see [`crate::profile`]);
    /// `None` follows ggml's default on this CPU. Set it to match a ggml
    /// run with other settings, e.g. repack off.
    pub ggml_paths: Option<crate::profile::GgmlProfile>,
}

/// The plan of `path` under `options`, without allocating anything: what
/// `cktrace layout` writes.
pub fn plan(path: &Path, options: &LayoutOptions) -> Result<Plan> {
    options.validate()?;
    let file = ModelFile::open(path)?;
    let config = Config::from_gguf(file.gguf())?;
    Ok(arch::plan(&file, &config, options)?.0)
}

/// A running ck engine.
pub struct Engine {
    file: ModelFile,
    config: Config,
    plan: Plan,
    model: arch::Model,
    arena: Arena,
    pool: Pool,
    kernels: Kernels,
    lanes: crate::ops::GgmlLanes,
    /// Arena entries in offset order, for carving.
    arena_ids: Vec<RegionId>,
    arena_ranges: Vec<std::ops::Range<usize>>,
    canaries: Vec<(usize, RegionId)>,
    canary_offsets: Vec<usize>,
    check_canaries: bool,
    /// Positions `0..n_past` of the KV cache hold valid entries.
    n_past: usize,
    /// Position and length of the last chunk computed.
    last: Option<(usize, usize)>,
}

impl Engine {
    pub fn new(path: &Path, options: EngineOptions) -> Result<Engine> {
        let o = options.layout;
        o.validate()?;
        let kernels = match options.kernels {
            Some(level) => Kernels::new(level).map_err(|e| CkError::Kernels(e.to_string()))?,
            None => Kernels::detect(),
        };
        let file = ModelFile::open(path)?;
        let config = Config::from_gguf(file.gguf())?;
        let (plan, model) = arch::plan(&file, &config, &o)?;
        let mut arena = Arena::new(plan.arena_size)?;
        // --weights copy: weights move to their planned arena offsets; packed
        // matrices (the head, Q5_0 layer matrices) are permuted on the way.
        for e in &plan.entries {
            if e.kind == Kind::Weight && e.memory == Memory::Arena {
                let src = e.file_offset.expect("arena weights keep their file offset") as usize;
                let src = &file.bytes()[src..src + e.size as usize];
                let dst = &mut arena.bytes_mut()[e.range()];
                match e.packing.as_deref() {
                    None => dst.copy_from_slice(src),
                    Some("q8_0_x16") => kernels
                        .pack_q8_0_x16(e.shape[0] as usize, src, dst)
                        .map_err(|err| CkError::Kernels(format!("{}: {err}", e.name)))?,
                    Some("q5_0_x16") => kernels
                        .pack_q5_0_x16(e.shape[0] as usize, src, dst)
                        .map_err(|err| CkError::Kernels(format!("{}: {err}", e.name)))?,
                    Some(other) => {
                        return Err(CkError::Kernels(format!(
                            "{}: unknown packing {other:?}",
                            e.name
                        )))
                    }
                }
            }
        }
        let canaries = plan.canaries();
        let canary_offsets: Vec<usize> = canaries.iter().map(|c| c.0).collect();
        arena.write_canaries(&canary_offsets);
        let (arena_ids, arena_ranges) = plan.arena_regions().into_iter().unzip();
        let pool = Pool::new(o.threads).map_err(|source| CkError::Io {
            path: "thread pool".into(),
            source,
        })?;
        Ok(Engine {
            file,
            config,
            plan,
            model,
            arena,
            pool,
            kernels,
            lanes: crate::ops::GgmlLanes {
                paths: options
                    .ggml_paths
                    .unwrap_or_else(crate::profile::GgmlProfile::detect),
                ..crate::ops::GgmlLanes::detect()
            },
            arena_ids,
            arena_ranges,
            canaries,
            canary_offsets,
            check_canaries: options.check_canaries,
            n_past: 0,
            last: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn layout(&self) -> Layout {
        self.plan.layout()
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn n_vocab(&self) -> usize {
        self.config.n_vocab
    }

    /// Positions the KV cache holds.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forget the KV cache (positions restart at 0).
    pub fn clear(&mut self) {
        self.n_past = 0;
        self.last = None;
    }

    /// Address of the arena's first byte and of the mapped file's, in this
    /// process (what a tracer adds to the layout's offsets).
    pub fn base_addrs(&self) -> (usize, usize) {
        (self.arena.base_addr(), self.file.base_addr())
    }

    /// Computes `tokens` at positions `pos..pos + tokens.len()` (in chunks
    /// of at most `batch`) and returns the last token's logits. The cache
    /// must hold positions `0..pos` (`pos <= n_past`).
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(CkError::NoTokens);
        }
        let ctx = self.plan.options.ctx;
        if pos > self.n_past {
            return Err(CkError::CacheGap {
                pos,
                n_past: self.n_past,
            });
        }
        if pos + tokens.len() > ctx {
            return Err(CkError::ContextFull {
                pos,
                n: tokens.len(),
                ctx,
            });
        }
        if let Some((index, &id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.config.n_vocab)
        {
            return Err(CkError::Token {
                id: id as i64,
                index,
                n_vocab: self.config.n_vocab,
            });
        }
        let batch = self.plan.options.batch;
        let mut at = pos;
        for chunk in tokens.chunks(batch) {
            self.step(chunk, at)?;
            at += chunk.len();
            self.n_past = at;
            self.last = Some((at - chunk.len(), chunk.len()));
        }
        Ok(self.logits())
    }

    /// The last token's logits of the last forward pass.
    pub fn logits(&self) -> &[f32] {
        let id = match &self.model {
            arch::Model::Llama(m) => m.result_output,
            arch::Model::Gemma3(m) => m.result_output,
        };
        f32s(&self.arena.bytes()[self.plan.entry(id).range()])
    }

    fn step(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let cx = arch::llama::Cx {
            pool: &self.pool,
            kernels: &self.kernels,
            config: &self.config,
            options: &self.plan.options,
            lanes: self.lanes,
        };
        let mut slots: Vec<Option<&mut [u8]>> =
            (0..self.plan.entries.len()).map(|_| None).collect();
        for (id, part) in self
            .arena_ids
            .iter()
            .zip(self.arena.carve(&self.arena_ranges))
        {
            slots[id.0] = Some(part);
        }
        let mut regions = Regions {
            file: self.file.bytes(),
            plan: &self.plan,
            slots,
            shared: (0..self.plan.entries.len()).map(|_| None).collect(),
        };
        match &self.model {
            arch::Model::Llama(m) => arch::llama::forward(m, &mut regions, &cx, tokens, pos)?,
            arch::Model::Gemma3(m) => arch::gemma3::forward(m, &mut regions, &cx, tokens, pos)?,
        }
        drop(regions);
        if cfg!(debug_assertions) || self.check_canaries {
            self.verify_canaries()?;
        }
        Ok(())
    }

    /// Errors if any canary word of the arena was overwritten.
    pub fn verify_canaries(&self) -> Result<()> {
        match self.arena.first_bad_canary(&self.canary_offsets) {
            None => Ok(()),
            Some((i, found)) => {
                let (offset, id) = self.canaries[i];
                Err(CkError::Canary {
                    region: self.plan.entry(id).name.clone(),
                    offset,
                    found,
                })
            }
        }
    }

    /// Overwrites one canary (tests of the canary check).
    #[doc(hidden)]
    pub fn clobber_canary_for_test(&mut self, i: usize) {
        let o = self.canary_offsets[i];
        self.arena.bytes_mut()[o] ^= 0xff;
    }

    /// Writes every named intermediate of the last chunk to `dir` as raw
    /// little-endian f32 (`NAME.f32`, tokens outermost) with `index.json`.
    pub fn dump(&self, dir: &Path, step: u64) -> Result<DumpIndex> {
        let (pos, n) = self.last.ok_or(CkError::NoTokens)?;
        let werr = |what: String| move |source| CkError::Write { what, source };
        std::fs::create_dir_all(dir).map_err(werr(dir.display().to_string()))?;
        let mut tensors = Vec::new();
        for e in &self.plan.entries {
            if e.kind != Kind::Activation {
                continue;
            }
            let (inner, outer) = e.shape.split_at(e.shape.len() - 1);
            let width: u64 = inner.iter().product();
            let rows = if outer[0] == 1 { 1 } else { n as u64 };
            let bytes =
                &self.arena.bytes()[e.offset as usize..(e.offset + rows * width * 4) as usize];
            let file = format!("{}.f32", e.name);
            let path = dir.join(&file);
            std::fs::write(&path, bytes).map_err(werr(path.display().to_string()))?;
            let mut shape = inner.to_vec();
            shape.push(rows);
            tensors.push(DumpTensor {
                name: e.name.clone(),
                file,
                dtype: "f32".into(),
                shape,
                layer: e.layer,
            });
        }
        let index = DumpIndex {
            format: "cktrace-ck-dump".into(),
            version: 1,
            step,
            pos: pos as u64,
            n_tokens: n as u64,
            tensors,
        };
        let path = dir.join("index.json");
        let mut s = serde_json::to_string_pretty(&index).expect("dump index serializes");
        s.push('\n');
        std::fs::write(&path, s).map_err(werr(path.display().to_string()))?;
        Ok(index)
    }
}

/// `index.json` of a dump.
#[derive(Clone, Debug, Serialize)]
pub struct DumpIndex {
    pub format: String,
    pub version: u32,
    /// Step number given by the caller (0 = the prompt).
    pub step: u64,
    /// Position of the chunk's first token.
    pub pos: u64,
    /// Tokens in the chunk (rows of each tensor, except the 1-row output).
    pub n_tokens: u64,
    pub tensors: Vec<DumpTensor>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DumpTensor {
    pub name: String,
    pub file: String,
    pub dtype: String,
    /// ggml `ne`, innermost first; the last is the number of rows written.
    pub shape: Vec<u64>,
    pub layer: Option<u32>,
}

/// The regions of one step: the mapped file and the carved arena, handed
/// out by id. Weights (shared) may be asked for any number of times; every
/// mutable region exactly once per step.
pub struct Regions<'a> {
    file: &'a [u8],
    plan: &'a Plan,
    slots: Vec<Option<&'a mut [u8]>>,
    shared: Vec<Option<&'a [u8]>>,
}

impl<'a> Regions<'a> {
    /// A read-only region (a weight), from the file or the arena.
    pub fn bytes(&mut self, id: RegionId) -> &'a [u8] {
        if let Some(b) = self.shared[id.0] {
            return b;
        }
        let e = self.plan.entry(id);
        let b: &'a [u8] = match e.memory {
            Memory::File => &self.file[e.range()],
            Memory::Arena => self.slots[id.0]
                .take()
                .unwrap_or_else(|| panic!("region {} already taken mutably", e.name)),
        };
        self.shared[id.0] = Some(b);
        b
    }

    /// A writable arena region, once per step.
    pub fn bytes_mut(&mut self, id: RegionId) -> &'a mut [u8] {
        let name = &self.plan.entry(id).name;
        self.slots[id.0]
            .take()
            .unwrap_or_else(|| panic!("region {name} taken twice in one step"))
    }

    /// A writable f32 region, once per step.
    pub fn f32_mut(&mut self, id: RegionId) -> &'a mut [f32] {
        crate::arena::f32s_mut(self.bytes_mut(id))
    }
}
