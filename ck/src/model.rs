//! A GGUF model file opened for the engine: the parsed header
//! ([`GgufFile`], which checked every count, length and offset against the
//! file) plus a read-only map of the whole file, so that a weight's address
//! is the map's base plus its file offset.
//!
//! On top of the reader's checks this adds what the engine relies on when it
//! reads tensor data in place: the map has the length the header was parsed
//! against, no two tensors overlap, and every tensor starts at a multiple of
//! [`TENSOR_ALIGN`] bytes (the GGUF default alignment, which every writer we
//! know uses), so an `f32` or `f16` tensor can be read where it lies.

use std::fs::File;
use std::path::Path;

use crate::arena::MappedFile;
use crate::error::{CkError, Result};
use crate::gguf::{GgufFile, TensorInfo};

/// Alignment the engine requires of every tensor's data in the file.
pub const TENSOR_ALIGN: u64 = 32;

/// A mapped, validated GGUF file.
pub struct ModelFile {
    gguf: GgufFile,
    map: MappedFile,
}

impl ModelFile {
    /// Parses the header of `path`, maps the file and checks the tensor data
    /// ranges (in bounds, aligned, not overlapping).
    pub fn open(path: &Path) -> Result<ModelFile> {
        let gguf = GgufFile::open(path)?;
        let io = |source| CkError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = MappedFile::map(path, &file)?;
        let now = map.bytes().len() as u64;
        if now != gguf.file_len() {
            return Err(CkError::FileChanged {
                path: path.to_path_buf(),
                then: gguf.file_len(),
                now,
            });
        }
        check_tensor_ranges(path, &gguf)?;
        Ok(ModelFile { gguf, map })
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn path(&self) -> &Path {
        self.gguf.path()
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// Address of file byte 0 in this process.
    pub fn base_addr(&self) -> usize {
        self.map.base_addr()
    }

    /// The data of tensor `t`, which must come from this file's header
    /// (`open` checked its range; a foreign `TensorInfo` is re-checked and
    /// refused with an error rather than read out of bounds).
    pub fn data(&self, t: &TensorInfo) -> Result<&[u8]> {
        let start = usize::try_from(t.file_offset).ok();
        let end = usize::try_from(t.file_end()).ok();
        match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= self.bytes().len() => Ok(&self.bytes()[s..e]),
            _ => Err(CkError::Gguf(crate::gguf::GgufError::TensorPastEnd {
                path: self.path().to_path_buf(),
                name: t.name.clone(),
                end: t.file_end(),
                file_len: self.bytes().len() as u64,
            })),
        }
    }
}

/// In bounds (the reader checked), aligned, and pairwise disjoint.
fn check_tensor_ranges(path: &Path, g: &GgufFile) -> Result<()> {
    let mut order: Vec<&TensorInfo> = g.tensors().iter().collect();
    for t in &order {
        if t.file_offset % TENSOR_ALIGN != 0 {
            return Err(CkError::Misaligned {
                path: path.to_path_buf(),
                name: t.name.clone(),
                offset: t.file_offset,
                align: TENSOR_ALIGN,
            });
        }
        if t.file_end() > g.file_len() {
            return Err(CkError::Gguf(crate::gguf::GgufError::TensorPastEnd {
                path: path.to_path_buf(),
                name: t.name.clone(),
                end: t.file_end(),
                file_len: g.file_len(),
            }));
        }
    }
    order.retain(|t| t.size > 0);
    order.sort_by_key(|t| (t.file_offset, t.size));
    for w in order.windows(2) {
        if w[1].file_offset < w[0].file_end() {
            return Err(CkError::Overlap {
                path: path.to_path_buf(),
                a: w[0].name.clone(),
                a_start: w[0].file_offset,
                a_end: w[0].file_end(),
                b: w[1].name.clone(),
                b_start: w[1].file_offset,
            });
        }
    }
    Ok(())
}
