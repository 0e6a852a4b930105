//! The layout planner: the address book of a ck run. Every weight,
//! activation, KV-cache slot and scratch buffer gets an offset computed from
//! the model (its config and tensor table) and the [`LayoutOptions`] alone,
//! so the same model and options give the same addresses on every run and
//! on every machine; `layout.json` ([`Layout::to_json`]) writes them down,
//! grouped per layer. The schema is docs/layout-format.md.
//!
//! Arena regions are 64-byte aligned; right after each region (at its end
//! rounded up to 8 bytes) sits an 8-byte canary word, so that a write one
//! element past a region is caught by the next canary check. Weights either
//! stay in the mapped file (their offset is their GGUF file offset) or are
//! copied to arena regions of their own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arena::{ARENA_ALIGN, CANARY};
use crate::config::Config;
use crate::error::{CkError, Result};

/// Version of the layout.json schema (docs/layout-format.md).
pub const LAYOUT_VERSION: u32 = 3;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
    pub fn ggml(self) -> crate::gguf::GgmlType {
        match self {
            KvType::F16 => crate::gguf::GgmlType::F16,
            KvType::F32 => crate::gguf::GgmlType::F32,
        }
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => Err(format!("unknown KV type {s:?} (known: f16, f32)")),
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        })
    }
}

/// Where the weights live during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightPlacement {
    /// Read in place from the mapped file.
    Map,
    /// Copied into the arena at planned offsets when the engine starts.
    Copy,
}

impl FromStr for WeightPlacement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "map" => Ok(WeightPlacement::Map),
            "copy" => Ok(WeightPlacement::Copy),
            _ => Err(format!("unknown weight placement {s:?} (known: map, copy)")),
        }
    }
}

impl fmt::Display for WeightPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightPlacement::Map => "map",
            WeightPlacement::Copy => "copy",
        })
    }
}

/// How a weight matrix the packed kernels cover is laid out: the output
/// head when it is Q8_0 (`quant::q8_0_x16`), and the layer matrices that
/// are Q5_0 (`quant::q5_0_x16`), each with a multiple of 16 rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightLayout {
    /// A copy in the arena, sixteen rows interleaved per block (the same
    /// bytes, permuted): read at memory speed by 512-bit kernels. A tied
    /// head keeps `token_embd.weight` where `weights` puts it for the
    /// embedding lookup, as ggml keeps two buffers when it repacks.
    #[default]
    Packed,
    /// The matrix is read in the GGUF layout, from where `weights` puts it.
    Plain,
}

/// What layouts written before `options.layers` existed had.
fn plain() -> WeightLayout {
    WeightLayout::Plain
}

impl FromStr for WeightLayout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "packed" => Ok(WeightLayout::Packed),
            "plain" => Ok(WeightLayout::Plain),
            _ => Err(format!(
                "unknown weight layout {s:?} (known: packed, plain)"
            )),
        }
    }
}

impl fmt::Display for WeightLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightLayout::Packed => "packed",
            WeightLayout::Plain => "plain",
        })
    }
}

/// The run options the layout depends on (and nothing else does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutOptions {
    /// Context length: KV-cache slots per layer.
    pub ctx: usize,
    /// Most tokens one forward pass computes at once (prompt chunks).
    pub batch: usize,
    /// Threads of the pool (per-thread scratch).
    pub threads: usize,
    pub kv_type: KvType,
    pub weights: WeightPlacement,
    /// The output head's layout (absent in layouts written before it).
    #[serde(default)]
    pub head: WeightLayout,
    /// The layer matrices' layout (absent, and plain, in layouts written
    /// before it).
    #[serde(default = "plain")]
    pub layers: WeightLayout,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        LayoutOptions {
            ctx: 2048,
            batch: 64,
            threads: 2,
            kv_type: KvType::F16,
            weights: WeightPlacement::Map,
            head: WeightLayout::Packed,
            layers: WeightLayout::Packed,
        }
    }
}

/// Largest context and batch the planner accepts.
pub const MAX_CTX: usize = 1 << 20;
/// Most threads a pool may have.
pub const MAX_THREADS: usize = 256;

impl LayoutOptions {
    pub fn validate(&self) -> Result<()> {
        let opt = |option, why: String| Err(CkError::Options { option, why });
        if self.ctx == 0 || self.ctx > MAX_CTX {
            return opt("ctx", format!("{} is not in 1..={MAX_CTX}", self.ctx));
        }
        if self.batch == 0 || self.batch > self.ctx {
            return opt(
                "batch",
                format!("{} is not in 1..=ctx ({})", self.batch, self.ctx),
            );
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return opt(
                "threads",
                format!("{} is not in 1..={MAX_THREADS}", self.threads),
            );
        }
        Ok(())
    }
}

/// What a region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Weight,
    Activation,
    KvCache,
    Scratch,
}

/// Where an entry's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Memory {
    /// The mapped model file: `offset` is a file offset.
    File,
    /// The arena: `offset` is from the arena's first byte.
    Arena,
}

/// One tensor or buffer of the layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// GGUF name for weights, llama.cpp graph name for activations
    /// (`attn_norm-0`), `cache_k_l0` / `cache_v_l0`, or a scratch name.
    pub name: String,
    pub kind: Kind,
    /// Transformer layer, or none.
    pub layer: Option<u32>,
    /// ggml type name (`f32`, `f16`, `q4_K`, ...); `u8` for raw scratch.
    pub dtype: String,
    /// ggml `ne`: elements per dimension, innermost first.
    pub shape: Vec<u64>,
    pub memory: Memory,
    pub offset: u64,
    pub size: u64,
    /// Offset of the canary word after an arena region.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub canary: Option<u64>,
    /// A weight's offset in the GGUF file (equal to `offset` when mapped).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file_offset: Option<u64>,
    /// A weight copied in a packed order (`q8_0_x16`): the same bytes as
    /// the GGUF tensor, permuted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub packing: Option<String>,
}

impl Entry {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.size) as usize
    }
}

/// Handle of an entry in a [`Plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId(pub usize);

/// Builds a plan: arena regions in request order, each 64-byte aligned and
/// followed by a canary.
#[derive(Debug, Default)]
pub struct Planner {
    entries: Vec<Entry>,
    cursor: u64,
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

fn overflow(what: &str) -> CkError {
    CkError::TooLarge {
        what: what.to_string(),
    }
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// A region of the arena.
    pub fn arena(
        &mut self,
        name: impl Into<String>,
        kind: Kind,
        layer: Option<u32>,
        dtype: &str,
        shape: Vec<u64>,
        size: u64,
    ) -> Result<RegionId> {
        let name = name.into();
        let offset = align_up(self.cursor, ARENA_ALIGN as u64).ok_or_else(|| overflow(&name))?;
        let end = offset.checked_add(size).ok_or_else(|| overflow(&name))?;
        let canary = align_up(end, 8).ok_or_else(|| overflow(&name))?;
        self.cursor = canary.checked_add(8).ok_or_else(|| overflow(&name))?;
        if self.cursor > isize::MAX as u64 {
            return Err(overflow(&name));
        }
        self.entries.push(Entry {
            name,
            kind,
            layer,
            dtype: dtype.to_string(),
            shape,
            memory: Memory::Arena,
            offset,
            size,
            canary: Some(canary),
            file_offset: None,
            packing: None,
        });
        Ok(RegionId(self.entries.len() - 1))
    }

    /// An `f32` activation region of `shape` (innermost first).
    pub fn f32_region(
        &mut self,
        name: impl Into<String>,
        kind: Kind,
        layer: Option<u32>,
        shape: Vec<u64>,
    ) -> Result<RegionId> {
        let name = name.into();
        let n = shape
            .iter()
            .try_fold(4u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| overflow(&name))?;
        self.arena(name, kind, layer, "f32", shape, n)
    }

    /// A weight that stays in the mapped file at `file_offset`.
    pub fn file_weight(
        &mut self,
        name: impl Into<String>,
        layer: Option<u32>,
        dtype: &str,
        shape: Vec<u64>,
        file_offset: u64,
        size: u64,
    ) -> RegionId {
        self.entries.push(Entry {
            name: name.into(),
            kind: Kind::Weight,
            layer,
            dtype: dtype.to_string(),
            shape,
            memory: Memory::File,
            offset: file_offset,
            size,
            canary: None,
            file_offset: Some(file_offset),
            packing: None,
        });
        RegionId(self.entries.len() - 1)
    }

    /// A weight copied into the arena.
    pub fn arena_weight(
        &mut self,
        name: impl Into<String>,
        layer: Option<u32>,
        dtype: &str,
        shape: Vec<u64>,
        file_offset: u64,
        size: u64,
    ) -> Result<RegionId> {
        let id = self.arena(name, Kind::Weight, layer, dtype, shape, size)?;
        self.entries[id.0].file_offset = Some(file_offset);
        Ok(id)
    }

    /// A weight copied into the arena in the order `packing` names.
    #[allow(clippy::too_many_arguments)]
    pub fn packed_weight(
        &mut self,
        name: impl Into<String>,
        layer: Option<u32>,
        dtype: &str,
        shape: Vec<u64>,
        file_offset: u64,
        size: u64,
        packing: &str,
    ) -> Result<RegionId> {
        let id = self.arena_weight(name, layer, dtype, shape, file_offset, size)?;
        self.entries[id.0].packing = Some(packing.to_string());
        Ok(id)
    }

    pub fn finish(self, model: ModelFacts, options: LayoutOptions, config: &Config) -> Plan {
        let arena_size = align_up(self.cursor, ARENA_ALIGN as u64).unwrap_or(self.cursor);
        Plan {
            entries: self.entries,
            arena_size: arena_size as usize,
            model,
            options,
            config: config.clone(),
        }
    }
}

/// Facts of the model file a layout was planned for: no path, nothing that
/// depends on where or when the file was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// `general.name`.
    pub name: String,
    /// `general.architecture`.
    pub arch: String,
    /// Size of the GGUF file in bytes.
    pub file_size: u64,
    /// Absolute offset of the tensor-data section.
    pub data_offset: u64,
    pub n_tensors: u64,
    /// The logits reuse `token_embd.weight` (no `output.weight`).
    pub tied_output: bool,
}

/// A finished plan: every entry with its offset.
#[derive(Clone, Debug)]
pub struct Plan {
    /// In request order: arena entries have increasing offsets.
    pub entries: Vec<Entry>,
    pub arena_size: usize,
    pub model: ModelFacts,
    pub options: LayoutOptions,
    pub config: Config,
}

impl Plan {
    pub fn entry(&self, id: RegionId) -> &Entry {
        &self.entries[id.0]
    }

    /// The arena entries' ids and byte ranges, in offset order.
    pub fn arena_regions(&self) -> Vec<(RegionId, std::ops::Range<usize>)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.memory == Memory::Arena)
            .map(|(i, e)| (RegionId(i), e.range()))
            .collect()
    }

    /// Offsets of every canary word, in arena order, with the region each
    /// one follows.
    pub fn canaries(&self) -> Vec<(usize, RegionId)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.canary.map(|c| (c as usize, RegionId(i))))
            .collect()
    }

    /// The entry named `name`.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The serializable address book.
    pub fn layout(&self) -> Layout {
        let mut input = Vec::new();
        let mut output = Vec::new();
        let mut scratch = Vec::new();
        let mut layers: Vec<LayerGroup> = (0..self.config.n_layer as u32)
            .map(|layer| LayerGroup {
                layer,
                entries: Vec::new(),
            })
            .collect();
        for e in &self.entries {
            match (e.kind, e.layer) {
                (Kind::Scratch, _) => scratch.push(e.clone()),
                (_, Some(l)) if (l as usize) < layers.len() => {
                    layers[l as usize].entries.push(e.clone())
                }
                _ if is_output_name(&e.name) || e.packing.is_some() => output.push(e.clone()),
                _ => input.push(e.clone()),
            }
        }
        Layout {
            format: "cktrace-layout".into(),
            version: LAYOUT_VERSION,
            model: self.model.clone(),
            options: self.options,
            config: self.config.clone(),
            arena: ArenaFacts {
                size: self.arena_size as u64,
                align: ARENA_ALIGN as u64,
                canary: format!("{CANARY:#018x}"),
                n_regions: self
                    .entries
                    .iter()
                    .filter(|e| e.memory == Memory::Arena)
                    .count() as u64,
            },
            input,
            layers,
            output,
            scratch,
        }
    }
}

fn is_output_name(name: &str) -> bool {
    name.starts_with("output") || name.starts_with("result_")
}

/// Facts of the arena.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaFacts {
    pub size: u64,
    pub align: u64,
    /// The canary word, as hex.
    pub canary: String,
    pub n_regions: u64,
}

/// One layer's entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerGroup {
    pub layer: u32,
    pub entries: Vec<Entry>,
}

/// layout.json.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layout {
    /// Always "cktrace-layout".
    pub format: String,
    pub version: u32,
    pub model: ModelFacts,
    pub options: LayoutOptions,
    pub config: Config,
    pub arena: ArenaFacts,
    /// Before the first layer: the embedding table, the embedded input.
    pub input: Vec<Entry>,
    pub layers: Vec<LayerGroup>,
    /// After the last layer: the output norm and head, the logits.
    pub output: Vec<Entry>,
    pub scratch: Vec<Entry>,
}

impl Layout {
    /// Pretty JSON with a final newline; byte-identical for equal layouts.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("layout serializes");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_and_followed_by_canaries() {
        let mut p = Planner::new();
        let a = p.f32_region("a", Kind::Activation, None, vec![3]).unwrap();
        let b = p
            .f32_region("b", Kind::Activation, Some(0), vec![16, 2])
            .unwrap();
        let (ea, eb) = (p.entries[a.0].clone(), p.entries[b.0].clone());
        assert_eq!((ea.offset, ea.size, ea.canary), (0, 12, Some(16)));
        assert_eq!(eb.offset, 64);
        assert_eq!(eb.canary, Some(64 + 128));
        assert!(eb.offset >= ea.canary.unwrap() + 8);
    }

    #[test]
    fn options_are_checked() {
        let mut o = LayoutOptions::default();
        assert!(o.validate().is_ok());
        o.batch = o.ctx + 1;
        assert!(o.validate().is_err());
        o = LayoutOptions {
            threads: 0,
            ..Default::default()
        };
        assert!(o.validate().is_err());
    }

    #[test]
    fn huge_shapes_overflow_cleanly() {
        let mut p = Planner::new();
        assert!(p
            .f32_region("x", Kind::Activation, None, vec![u64::MAX / 2, 4])
            .is_err());
    }
}
