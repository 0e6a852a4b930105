//! The two kinds of memory the ck engine reads: the arena it owns (one
//! 64-byte-aligned allocation holding every activation, the KV cache, the
//! scratch and, with `--weights copy`, the weights) and the read-only map of
//! the model file. This module and the thread pool (and the SIMD kernels)
//! are the only places with `unsafe`.
//!
//! The arena never hands out pointers: [`Arena::carve`] splits it into the
//! disjoint byte slices of the planned regions (safe `split_at_mut`), and
//! [`f32s`] / [`f32s_mut`] view a 4-byte-aligned byte slice as `f32`s.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use crate::error::{CkError, Result};

/// Alignment of the arena and of every region in it.
pub const ARENA_ALIGN: usize = 64;

/// The word written between regions ("CKCANARY" in ASCII, little-endian).
pub const CANARY: u64 = u64::from_le_bytes(*b"CKCANARY");

/// Arenas at least this large are placed on a 2 MiB boundary and asked
/// for transparent huge pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// One zeroed, page-aligned anonymous mapping, unmapped on drop. An arena
/// of [`HUGE_PAGE`] or more starts on a 2 MiB boundary and is advised
/// `MADV_HUGEPAGE`: the decode step streams the whole arena (with
/// `--weights copy`, every weight), and with 4 KiB pages each 4 KiB of it
/// costs a TLB miss; on this machine kind that was a tenth of Gemma-3's
/// decode time. Where the kernel gives no huge pages (THP `never`, other
/// systems) the advice is a no-op and the arena is an ordinary mapping.
pub struct Arena {
    map: memmap2::MmapMut,
    /// Offset of byte 0 in `map` (to the 2 MiB boundary).
    start: usize,
    size: usize,
}

impl Arena {
    /// Maps `size` zeroed bytes (at least one page, so the pointer is real).
    pub fn new(size: usize) -> Result<Arena> {
        let huge = size >= HUGE_PAGE;
        let slack = if huge { HUGE_PAGE } else { 0 };
        let len = size
            .max(1)
            .checked_add(slack)
            .ok_or(CkError::Alloc { bytes: size })?;
        let map = memmap2::MmapMut::map_anon(len).map_err(|_| CkError::Alloc { bytes: size })?;
        let addr = map.as_ptr() as usize;
        let start = if huge {
            addr.next_multiple_of(HUGE_PAGE) - addr
        } else {
            0
        };
        if huge {
            // Only a hint: failure (no THP in this kernel) leaves 4 KiB pages.
            #[cfg(target_os = "linux")]
            let _ = map.advise_range(memmap2::Advice::HugePage, start, size);
        }
        Ok(Arena { map, start, size })
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The address of byte 0 (for reports; never dereferenced outside).
    pub fn base_addr(&self) -> usize {
        self.map.as_ptr() as usize + self.start
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.size]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.size]
    }

    /// Splits the arena into the byte slices of `ranges`, which must be
    /// sorted, disjoint and inside the arena (the planner's regions are).
    pub fn carve(&mut self, ranges: &[Range<usize>]) -> Vec<&mut [u8]> {
        let mut out = Vec::with_capacity(ranges.len());
        let mut rest: &mut [u8] = self.bytes_mut();
        let mut at = 0usize;
        for r in ranges {
            assert!(
                r.start >= at && r.end >= r.start,
                "arena regions must be sorted and disjoint"
            );
            let (_, tail) = rest.split_at_mut(r.start - at);
            let (mid, tail) = tail.split_at_mut(r.end - r.start);
            out.push(mid);
            rest = tail;
            at = r.end;
        }
        out
    }

    /// Writes the canary word at each offset.
    pub fn write_canaries(&mut self, offsets: &[usize]) {
        let b = self.bytes_mut();
        for &o in offsets {
            b[o..o + 8].copy_from_slice(&CANARY.to_le_bytes());
        }
    }

    /// The first canary (index into `offsets`) that no longer holds the word,
    /// with what it holds instead.
    pub fn first_bad_canary(&self, offsets: &[usize]) -> Option<(usize, u64)> {
        let b = self.bytes();
        offsets.iter().enumerate().find_map(|(i, &o)| {
            let w = u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
            (w != CANARY).then_some((i, w))
        })
    }
}

/// `b` as `f32`s. Panics if `b` is not 4-byte aligned or not a whole number
/// of `f32`s: the planner only makes regions that are both.
pub fn f32s(b: &[u8]) -> &[f32] {
    // SAFETY: every bit pattern is a valid f32; align_to keeps the lifetime.
    let (head, mid, tail) = unsafe { b.align_to::<f32>() };
    assert!(head.is_empty() && tail.is_empty(), "misaligned f32 view");
    mid
}

/// `b` as mutable `f32`s; see [`f32s`].
pub fn f32s_mut(b: &mut [u8]) -> &mut [f32] {
    // SAFETY: every bit pattern is a valid f32 and every f32 is valid bytes.
    let (head, mid, tail) = unsafe { b.align_to_mut::<f32>() };
    assert!(head.is_empty() && tail.is_empty(), "misaligned f32 view");
    mid
}

/// `b` as little-endian `f16`s (the KV cache); panics if `b` is not 2-byte
/// aligned or has an odd length.
pub fn f16s(b: &[u8]) -> &[half::f16] {
    // SAFETY: f16 is a 2-byte plain-old-data type (repr(transparent) over
    // u16); every bit pattern is a valid f16; align_to keeps the lifetime.
    let (head, mid, tail) = unsafe { b.align_to::<half::f16>() };
    assert!(head.is_empty() && tail.is_empty(), "misaligned f16 view");
    mid
}

/// A read-only map of a whole file.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `file` (opened from `path`) read-only.
    pub fn map(path: &Path, file: &File) -> Result<MappedFile> {
        // SAFETY: the map is read-only and private to this process. Like
        // every program that maps its model (llama.cpp included), we rely on
        // nobody truncating the file while it is mapped: the length is
        // checked against the parsed header right after mapping, and a later
        // truncation would fault (SIGBUS) rather than read out of bounds.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|source| CkError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MappedFile { map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Address of the first byte of the map (page aligned).
    pub fn base_addr(&self) -> usize {
        self.map.as_ptr() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_is_aligned_zeroed_and_carves_disjoint_slices() {
        let mut a = Arena::new(1000).unwrap();
        assert_eq!(a.base_addr() % ARENA_ALIGN, 0);
        assert!(a.bytes().iter().all(|&b| b == 0));
        let parts = a.carve(&[0..64, 128..192, 192..200]);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [64, 64, 8]
        );
        let f = f32s_mut(parts.into_iter().next().unwrap());
        assert_eq!(f.len(), 16);
        f[0] = 1.5;
        assert_eq!(f32s(&a.bytes()[0..4])[0], 1.5);
    }

    #[test]
    fn canaries_detect_a_write() {
        let mut a = Arena::new(256).unwrap();
        a.write_canaries(&[64, 192]);
        assert_eq!(a.first_bad_canary(&[64, 192]), None);
        a.bytes_mut()[193] = 0;
        assert_eq!(a.first_bad_canary(&[64, 192]).map(|x| x.0), Some(1));
    }
}
