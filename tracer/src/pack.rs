//! Packed records: how trace format version 2 stores records on disk.
//!
//! A 128-byte record repeats most of the record before it: consecutive
//! records of a thread are mostly chunks of one node, with the same tensor,
//! name, step, ids and flags, and only the clock, the byte range and the
//! rows moving. Version 2 stores each record as the bytes that differ from
//! the record before it in the same chunk, about 16 bytes instead of 128.
//! Why it matters: on the virtual machines cktrace is measured on, the
//! host's cost of a disk write is proportional to its bytes and is taken
//! from the guest's CPUs (steal), 85-107 ns per 128-byte record on a busy
//! 2-vCPU VM; that alone was twice the tracer's budget.
//!
//! A chunk is what one write puts in the file: a 32-byte chunk header, the
//! packed records, zeros up to the next [`CHUNK_ALIGN`] boundary. Chunks
//! start on [`CHUNK_ALIGN`] boundaries from [`DATA_START`] on, so a reader
//! finds every chunk by looking at each boundary, and a chunk lost to a
//! failed or interrupted write (zeros, or bytes that fail their hash) costs
//! only its own records.
//!
//! Chunk header (little-endian):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | [u8; 4] | magic `CKPK` |
//! | 4 | u32 | payload bytes after the 32-byte header |
//! | 8 | u64 | slot of the first record |
//! | 16 | u32 | records in the chunk (slots `slot..slot + n`) |
//! | 20 | u32 | [`hash`] of the payload |
//! | 24 | u32 | zero |
//! | 28 | u32 | [`hash`] of bytes 0..28 |
//!
//! A packed record, against the previous record of the chunk (all zeros for
//! the first): a u16 word mask, bit `i` set when the record's u64 word `i`
//! (bytes `8i..8i+8`) differs; for each set bit, in increasing order, a byte
//! mask (nonzero) of the word's bytes that differ, then those bytes, lowest
//! first. Every byte not given is the previous record's.

use crate::format::{flags, RecordWords, RECORD_SIZE, RECORD_WORDS};

/// Chunks start on multiples of this (a page: the unit of a direct write).
pub const CHUNK_ALIGN: usize = 4096;
/// The file offset of the first chunk (the header's page comes before it).
pub const DATA_START: u64 = CHUNK_ALIGN as u64;
/// Bytes of a chunk header.
pub const CHUNK_HEADER: usize = 32;
/// A chunk header starts with these bytes.
pub const CHUNK_MAGIC: [u8; 4] = *b"CKPK";
/// Most bytes one record takes packed: the word mask and, for all 16
/// words, a byte mask and 8 bytes.
pub const MAX_PACKED: usize = 2 + 16 * 9;
/// Fewest bytes one record takes packed (its word mask).
pub const MIN_PACKED: usize = 2;

const WORDS: usize = RECORD_WORDS;

/// Bytes a chunk of `n` records can take at most, aligned.
pub fn chunk_bound(n: usize) -> usize {
    (CHUNK_HEADER + n * MAX_PACKED + PACK_SLACK).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN
}

/// A 32-bit hash for telling a chunk intact from a damaged one (not for
/// adversaries): a multiply-rotate over 8-byte words.
pub fn hash(bytes: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = K ^ (bytes.len() as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut words = bytes.chunks_exact(8);
    for w in words.by_ref() {
        let w = u64::from_le_bytes(w.try_into().expect("chunks_exact yields 8"));
        h = (h ^ w).wrapping_mul(K).rotate_left(31);
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h ^ (h >> 32)) as u32
}

#[inline]
fn word(rec: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(rec[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

/// The mask of the nonzero bytes of `x` (bit `j` for byte `j`).
#[inline]
fn nonzero_bytes(x: u64) -> u8 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // High bit of each byte set where the byte is nonzero.
    let hi = ((x & LOW7).wrapping_add(LOW7) | x) & !LOW7;
    // Gather the eight high bits into one byte.
    ((hi >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Bytes `pack` may write past what it returns (the SIMD path stores 8
/// bytes at a time); `out` must have them too.
pub const PACK_SLACK: usize = 8;

/// Pack whole records (`recs`, a multiple of 128 bytes) into `out`, which
/// must hold [`MAX_PACKED`] bytes per record plus [`PACK_SLACK`]; returns
/// the bytes written. Each record goes through [`pack_words`], the packer
/// the hook uses.
///
/// # Panics
/// If `recs` is not whole records or `out` is too small (a caller's bug).
pub fn pack(recs: &[u8], out: &mut [u8]) -> usize {
    pack_with(recs, out, pack_words)
}

/// [`pack`] with a packer of one record.
fn pack_with(
    recs: &[u8],
    out: &mut [u8],
    one: impl Fn(&RecordWords, &mut RecordWords, &mut [u8]) -> usize,
) -> usize {
    assert!(recs.len() % RECORD_SIZE == 0, "whole records");
    assert!(
        out.len() >= recs.len() / RECORD_SIZE * MAX_PACKED + PACK_SLACK,
        "room for the worst case"
    );
    let mut prev = [0u64; WORDS];
    let mut o = 0;
    for rec in recs.chunks_exact(RECORD_SIZE) {
        let w: RecordWords = std::array::from_fn(|i| word(rec, i));
        o += one(&w, &mut prev, &mut out[o..]);
    }
    o
}

/// Pack the record whose words are `rec` against the words `prev` (which
/// then become it) into the start of `out`, which must hold [`MAX_PACKED`]
/// + [`PACK_SLACK`] bytes; returns the bytes written. The hook builds its
/// records as words in registers and packs them from there.
///
/// # Panics
/// If `out` is too small (a caller's bug).
#[inline]
pub fn pack_words(rec: &RecordWords, prev: &mut RecordWords, out: &mut [u8]) -> usize {
    assert!(
        out.len() >= MAX_PACKED + PACK_SLACK,
        "room for the worst case"
    );
    #[cfg(target_arch = "x86_64")]
    if simd_words() {
        // SAFETY: the CPU has SSSE3 and POPCNT (simd_words); `out` holds
        // the worst case plus the slack (asserted).
        return unsafe { simd::pack_words(rec, prev, out.as_mut_ptr()) };
    }
    pack_words_scalar(rec, prev, out)
}

/// Whether the CPU has what `simd::pack_words` needs (SSSE3 and POPCNT),
/// detected once: one load per record instead of two feature tests (which
/// measured 20% of the packer's time).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn simd_words() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: not yet known, 1: no, 2: yes
    static HAVE: AtomicU8 = AtomicU8::new(0);
    match HAVE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let have = std::arch::is_x86_feature_detected!("ssse3")
                && std::arch::is_x86_feature_detected!("popcnt");
            HAVE.store(if have { 2 } else { 1 }, Ordering::Relaxed);
            have
        }
    }
}

/// [`pack_words`] without SSSE3.
fn pack_words_scalar(rec: &RecordWords, prev: &mut RecordWords, out: &mut [u8]) -> usize {
    let mut o = 2;
    let mut mask = 0u16;
    for (i, p) in prev.iter_mut().enumerate() {
        let w = rec[i];
        let x = w ^ *p;
        if x != 0 {
            mask |= 1 << i;
            o += put_word(w, nonzero_bytes(x), &mut out[o..]);
            *p = w;
        }
    }
    out[..2].copy_from_slice(&mask.to_le_bytes());
    o
}

/// Write word `w`'s byte mask `m` and the bytes it selects, lowest first,
/// at the start of `out`; returns the bytes written.
#[inline]
fn put_word(w: u64, mut m: u8, out: &mut [u8]) -> usize {
    out[0] = m;
    let mut o = 1;
    while m != 0 {
        let j = m.trailing_zeros();
        out[o] = (w >> (8 * j)) as u8;
        o += 1;
        m &= m - 1;
    }
    o
}

/// The portable packer: what [`pack`] does without SSSE3 (tested equal).
pub fn pack_scalar(recs: &[u8], out: &mut [u8]) -> usize {
    pack_with(recs, out, pack_words_scalar)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{nonzero_bytes, RecordWords, WORDS};

    use std::arch::x86_64::*;

    /// For each byte mask, the `pshufb` control that moves the selected
    /// bytes of a word to its front, in order (the rest zero).
    const LEFT_PACK: [u64; 256] = {
        let mut t = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let mut ctl = [0x80u8; 8];
            let (mut j, mut k) = (0, 0);
            while j < 8 {
                if m & (1 << j) != 0 {
                    ctl[k] = j as u8;
                    k += 1;
                }
                j += 1;
            }
            t[m] = u64::from_le_bytes(ctl);
            m += 1;
        }
        t
    };

    /// [`super::pack_words`]: words compared in registers, each changed
    /// word's bytes moved into place by one shuffle.
    ///
    /// # Safety
    /// The CPU must have SSSE3 and POPCNT; `dst` must be valid for
    /// [`super::MAX_PACKED`] + [`super::PACK_SLACK`] bytes of writes.
    #[target_feature(enable = "ssse3,popcnt")]
    #[inline]
    pub(super) unsafe fn pack_words(
        rec: &RecordWords,
        prev: &mut RecordWords,
        dst: *mut u8,
    ) -> usize {
        let mut o = 2usize;
        let mut mask = 0u16;
        for i in 0..WORDS {
            let w = rec[i];
            let x = w ^ prev[i];
            if x == 0 {
                continue;
            }
            prev[i] = w;
            mask |= 1 << i;
            let m = nonzero_bytes(x);
            // SAFETY: at most 2 + 9 bytes per changed word are kept, within
            // MAX_PACKED; the 8-byte store ends at most 8 bytes past them,
            // within the slack; `dst` is valid for both (caller).
            unsafe {
                *dst.add(o) = m;
                let v = _mm_cvtsi64_si128(w as i64);
                let ctl = _mm_cvtsi64_si128(LEFT_PACK[m as usize] as i64);
                _mm_storel_epi64(dst.add(o + 1) as *mut __m128i, _mm_shuffle_epi8(v, ctl));
            }
            o += 1 + m.count_ones() as usize;
        }
        // SAFETY: the first two bytes of the room the caller gave.
        unsafe { std::ptr::write_unaligned(dst as *mut u16, mask.to_le()) };
        o
    }
}

/// Why a chunk's payload could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    /// The payload ended inside record `0`-based `.0`.
    Short(usize),
    /// Record `.0` names a word as changed with an empty byte mask.
    EmptyMask(usize),
    /// Record `.0` decoded without the VALID flag (or as padding).
    NotValid(usize),
    /// Bytes were left after the last record.
    Trailing(usize),
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::Short(i) => write!(f, "payload ends inside record {i}"),
            UnpackError::EmptyMask(i) => write!(f, "record {i} has an empty byte mask"),
            UnpackError::NotValid(i) => write!(f, "record {i} lacks the VALID flag"),
            UnpackError::Trailing(n) => write!(f, "{n} bytes after the last record"),
        }
    }
}

/// Unpack `out.len() / 128` records from `payload` into `out`, checking
/// that the payload holds exactly those records and that each is VALID.
/// On error `out` holds garbage for the caller to discard.
pub fn unpack(payload: &[u8], out: &mut [u8]) -> Result<(), UnpackError> {
    let mut prev = [0u64; WORDS];
    let mut o = 0;
    let take = |o: &mut usize, i: usize| -> Result<u8, UnpackError> {
        let b = *payload.get(*o).ok_or(UnpackError::Short(i))?;
        *o += 1;
        Ok(b)
    };
    for (i, rec) in out.chunks_exact_mut(RECORD_SIZE).enumerate() {
        let lo = take(&mut o, i)?;
        let hi = take(&mut o, i)?;
        let mut mask = u16::from_le_bytes([lo, hi]);
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let mut m = take(&mut o, i)?;
            if m == 0 {
                return Err(UnpackError::EmptyMask(i));
            }
            let mut v = prev[w];
            while m != 0 {
                let j = m.trailing_zeros();
                let b = take(&mut o, i)?;
                v = (v & !(0xFFu64 << (8 * j))) | (u64::from(b) << (8 * j));
                m &= m - 1;
            }
            prev[w] = v;
        }
        for (k, w) in prev.iter().enumerate() {
            rec[8 * k..8 * k + 8].copy_from_slice(&w.to_le_bytes());
        }
        let f = u32::from_le_bytes(rec[76..80].try_into().expect("4 bytes"));
        if f & flags::VALID == 0 || f & flags::PAD != 0 {
            return Err(UnpackError::NotValid(i));
        }
    }
    if o != payload.len() {
        return Err(UnpackError::Trailing(payload.len() - o));
    }
    Ok(())
}

/// Bytes the first `k` packed records of `payload` take (to cut a packed
/// stream after record `k`), or `None` if the payload is shorter.
pub fn skip(payload: &[u8], k: usize) -> Option<usize> {
    let mut o = 0;
    for _ in 0..k {
        let mask = u16::from_le_bytes([*payload.get(o)?, *payload.get(o + 1)?]);
        o += 2;
        for _ in 0..mask.count_ones() {
            o += 1 + payload.get(o)?.count_ones() as usize;
        }
    }
    (o <= payload.len()).then_some(o)
}

/// A chunk header, as read from or written to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub payload_len: u32,
    pub slot: u64,
    pub n: u32,
    pub payload_hash: u32,
}

impl ChunkHeader {
    pub fn to_bytes(&self) -> [u8; CHUNK_HEADER] {
        let mut b = [0u8; CHUNK_HEADER];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.slot.to_le_bytes());
        b[16..20].copy_from_slice(&self.n.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_hash.to_le_bytes());
        let h = hash(&b[..28]);
        b[28..32].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// The header at the start of `b`: `None` if there is no chunk magic
    /// there, `Some(Err)` if there is one but the header's hash or fields
    /// are wrong.
    pub fn parse(b: &[u8]) -> Option<Result<ChunkHeader, String>> {
        let b = b.get(..CHUNK_HEADER)?;
        if b[0..4] != CHUNK_MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if hash(&b[..28]) != u32_at(28) || u32_at(24) != 0 {
            return Some(Err("chunk header fails its hash".into()));
        }
        let h = ChunkHeader {
            payload_len: u32_at(4),
            slot: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            n: u32_at(16),
            payload_hash: u32_at(20),
        };
        if (h.n as usize).saturating_mul(MIN_PACKED) > h.payload_len as usize
            || (h.n as usize).saturating_mul(MAX_PACKED) < h.payload_len as usize
        {
            return Some(Err(format!(
                "chunk header claims {} records in {} bytes",
                h.n, h.payload_len
            )));
        }
        Some(Ok(h))
    }

    /// Bytes the whole chunk takes in the file, aligned.
    pub fn span(&self) -> u64 {
        (CHUNK_HEADER as u64 + u64::from(self.payload_len)).div_ceil(CHUNK_ALIGN as u64)
            * CHUNK_ALIGN as u64
    }
}

/// Make `out` a chunk: its first [`CHUNK_HEADER`] bytes the header of the
/// `n` records (the first at `slot`) packed in the `payload` bytes after
/// it, then zeros up to the alignment. Returns the chunk's aligned length.
pub fn seal(out: &mut [u8], slot: u64, n: u32, payload: usize) -> usize {
    let end = CHUNK_HEADER + payload;
    let h = ChunkHeader {
        payload_len: u32::try_from(payload).expect("a chunk is at most a block"),
        slot,
        n,
        payload_hash: hash(&out[CHUNK_HEADER..end]),
    };
    out[..CHUNK_HEADER].copy_from_slice(&h.to_bytes());
    let span = h.span() as usize;
    out[end..span].fill(0);
    span
}

/// Write a chunk of the records `recs` (whole records, first at `slot`)
/// into `out` (at least [`chunk_bound`] bytes): header, payload, zeros to
/// the alignment. Returns the chunk's aligned length.
pub fn write_chunk(recs: &[u8], slot: u64, out: &mut [u8]) -> usize {
    let n = recs.len() / RECORD_SIZE;
    let len = pack(recs, &mut out[CHUNK_HEADER..]);
    seal(out, slot, n as u32, len)
}

/// A chunk found in a file: where it starts, and its header.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub at: u64,
    pub header: ChunkHeader,
}

/// What a scan of a packed file found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Chunks whose header is intact, in file order.
    pub chunks: Vec<Chunk>,
    /// One line per damaged place (at most [`MAX_PROBLEMS`], then a count).
    pub problems: Vec<String>,
    /// One past the last slot an intact chunk header claims.
    pub end_slot: u64,
}

/// Problems reported one by one before the rest are only counted.
pub const MAX_PROBLEMS: usize = 8;

fn note(problems: &mut Vec<String>, extra: &mut u64, msg: impl FnOnce() -> String) {
    if problems.len() < MAX_PROBLEMS {
        problems.push(msg());
    } else {
        *extra += 1;
    }
}

fn close_notes(problems: &mut Vec<String>, extra: u64) {
    if extra > 0 {
        problems.push(format!("and {extra} more damaged places"));
    }
}

/// Find the chunks of a packed file (`file` is all of it, header
/// included): look at every [`CHUNK_ALIGN`] boundary from [`DATA_START`].
/// Zero pages (a write that never happened, space allocated ahead) are
/// skipped silently; anything else that is not an intact chunk is a
/// problem.
pub fn scan(file: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut extra = 0;
    let len = file.len() as u64;
    let mut off = DATA_START;
    while off < len {
        let at = off as usize;
        let page = &file[at..(at + CHUNK_ALIGN).min(file.len())];
        match ChunkHeader::parse(page) {
            None => {
                if page.iter().any(|&b| b != 0) {
                    note(&mut s.problems, &mut extra, || {
                        format!("byte {off}: a page that is neither a chunk nor zeros; skipped")
                    });
                }
                off += CHUNK_ALIGN as u64;
            }
            Some(Err(e)) => {
                note(&mut s.problems, &mut extra, || {
                    format!("byte {off}: {e}; skipped")
                });
                off += CHUNK_ALIGN as u64;
            }
            Some(Ok(h)) => {
                if off + CHUNK_HEADER as u64 + u64::from(h.payload_len) > len {
                    note(&mut s.problems, &mut extra, || {
                        format!(
                            "byte {off}: the chunk of slots {}..{} is cut by the end of the file; its records are missing",
                            h.slot,
                            h.slot.saturating_add(u64::from(h.n))
                        )
                    });
                    off += CHUNK_ALIGN as u64;
                } else {
                    s.end_slot = s.end_slot.max(h.slot.saturating_add(u64::from(h.n)));
                    s.chunks.push(Chunk { at: off, header: h });
                    off += h.span();
                }
            }
        }
    }
    close_notes(&mut s.problems, extra);
    s
}

/// Unpack the `chunks` of `file` into `slots` (128 bytes per slot, all
/// zero on entry): each record goes to its slot. A chunk whose payload
/// fails its hash or does not unpack, that claims slots past `slots`, or
/// that overlaps a chunk unpacked before it, is left out (its slots stay
/// zero, i.e. reserved but not written) and reported. Returns the records
/// unpacked and the problems.
pub fn unpack_into(file: &[u8], chunks: &[Chunk], slots: &mut [u8]) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    let mut extra = 0;
    let mut records = 0;
    let n_slots = (slots.len() / RECORD_SIZE) as u64;
    for c in chunks {
        let h = &c.header;
        let at = c.at;
        let start = at as usize + CHUNK_HEADER;
        let Some(payload) = file.get(start..start + h.payload_len as usize) else {
            note(&mut problems, &mut extra, || {
                format!("byte {at}: chunk outside the file")
            });
            continue;
        };
        let end = h.slot.saturating_add(u64::from(h.n));
        if end > n_slots {
            note(&mut problems, &mut extra, || {
                format!(
                    "byte {at}: the chunk claims slots {}..{end}, past the {n_slots} the header reserves; skipped",
                    h.slot
                )
            });
            continue;
        }
        if hash(payload) != h.payload_hash {
            note(&mut problems, &mut extra, || {
                format!(
                    "byte {at}: the chunk of slots {}..{end} fails its hash; its records are missing",
                    h.slot
                )
            });
            continue;
        }
        let dst = &mut slots[h.slot as usize * RECORD_SIZE..end as usize * RECORD_SIZE];
        if dst.chunks_exact(RECORD_SIZE).any(|r| r[76..80] != [0; 4]) {
            note(&mut problems, &mut extra, || {
                format!(
                    "byte {at}: the chunk of slots {}..{end} overlaps an earlier chunk; skipped",
                    h.slot
                )
            });
            continue;
        }
        match unpack(payload, dst) {
            Ok(()) => records += u64::from(h.n),
            Err(e) => {
                dst.fill(0);
                note(&mut problems, &mut extra, || {
                    format!(
                        "byte {at}: the chunk of slots {}..{end} does not unpack ({e}); its records are missing",
                        h.slot
                    )
                });
            }
        }
    }
    close_notes(&mut problems, extra);
    (records, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TraceRecord;

    fn recs(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n as u64 {
            let mut r = TraceRecord::EMPTY;
            r.t_ns = 1_000_000 + i * 1733;
            r.dur_ns = 900 + (i % 7) as u32 * 13;
            r.step = (i / 50) as u32;
            r.offset = (i % 16) * 4608;
            r.len = 4608;
            r.row0 = (i % 16) as u32 * 16;
            r.row1 = r.row0 + 16;
            r.node = 0x7f00_1234_0000 + (i / 16) * 0x150;
            r.flags = flags::VALID;
            r.tensor_id = (i / 16) as u32;
            r.set_name(format!("blk.{}.ffn_up.weight", i / 16).as_bytes());
            v.extend_from_slice(r.as_bytes());
        }
        v
    }

    #[test]
    fn round_trip_and_size() {
        let r = recs(1000);
        let mut out = vec![0u8; chunk_bound(1000)];
        let span = write_chunk(&r, 77, &mut out);
        let h = ChunkHeader::parse(&out).unwrap().unwrap();
        assert_eq!((h.slot, h.n), (77, 1000));
        assert_eq!(span as u64, h.span());
        let payload = &out[CHUNK_HEADER..CHUNK_HEADER + h.payload_len as usize];
        assert_eq!(hash(payload), h.payload_hash);
        let mut back = vec![0u8; r.len()];
        unpack(payload, &mut back).unwrap();
        assert_eq!(back, r);
        // Most records move only a few fields.
        assert!(h.payload_len < 1000 * 24, "{} bytes", h.payload_len);
    }

    #[test]
    fn every_byte_pattern_round_trips() {
        // Records whose words differ in every possible byte subset.
        let mut v = Vec::new();
        for i in 0..300u64 {
            let mut b = [0u8; RECORD_SIZE];
            for (k, x) in b.iter_mut().enumerate() {
                let k = k as u64;
                *x = if (i * 31 + k * 7) % (1 + i % 5) == 0 {
                    (i ^ k) as u8
                } else {
                    0
                };
            }
            b[76..80].copy_from_slice(&flags::VALID.to_le_bytes());
            v.extend_from_slice(&b);
        }
        let mut out = vec![0u8; 300 * MAX_PACKED + PACK_SLACK];
        let len = pack(&v, &mut out);
        let mut back = vec![0u8; v.len()];
        unpack(&out[..len], &mut back).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn simd_and_scalar_packers_agree() {
        let mut v = recs(500);
        // And records differing in arbitrary bytes.
        for i in 0..200u64 {
            let mut b = [0u8; RECORD_SIZE];
            for (k, x) in b.iter_mut().enumerate() {
                *x = ((i * 131 + k as u64 * 17) % 251 % (1 + i % 3)) as u8;
            }
            v.extend_from_slice(&b);
        }
        let n = v.len() / RECORD_SIZE;
        let mut a = vec![0u8; n * MAX_PACKED + PACK_SLACK];
        let mut b = a.clone();
        let la = pack(&v, &mut a);
        let lb = pack_scalar(&v, &mut b);
        assert_eq!(a[..la], b[..lb]);
        // Records packed from words, with and without SSSE3.
        for packer in [pack_words, pack_words_scalar] {
            let mut c = vec![0u8; n * MAX_PACKED + PACK_SLACK];
            let (mut prev, mut o) = ([0u64; WORDS], 0);
            for rec in v.chunks_exact(RECORD_SIZE) {
                let rec = TraceRecord::from_bytes(rec.try_into().unwrap());
                o += packer(&rec.words(), &mut prev, &mut c[o..]);
            }
            assert_eq!(c[..o], a[..la]);
        }
    }

    #[test]
    fn skip_finds_record_boundaries() {
        let r = recs(50);
        let mut out = vec![0u8; 50 * MAX_PACKED + PACK_SLACK];
        let len = pack(&r, &mut out);
        assert_eq!(skip(&out[..len], 50), Some(len));
        assert_eq!(skip(&out[..len], 51), None);
        let k = skip(&out[..len], 20).unwrap();
        let mut back = vec![0u8; 20 * RECORD_SIZE];
        unpack(&out[..k], &mut back).unwrap();
        assert_eq!(back, r[..20 * RECORD_SIZE]);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let r = recs(64);
        let mut out = vec![0u8; 64 * MAX_PACKED + PACK_SLACK];
        let len = pack(&r, &mut out);
        let mut back = vec![0u8; r.len()];
        assert_eq!(
            unpack(&out[..len - 1], &mut back),
            Err(UnpackError::Short(63))
        );
        let mut more = out[..len].to_vec();
        more.push(0);
        assert!(matches!(
            unpack(&more, &mut back),
            Err(UnpackError::Trailing(1))
        ));
        // Every truncation and every single-byte change is either an error
        // or a different, still VALID set of records: never a panic.
        for cut in 0..len {
            let _ = unpack(&out[..cut], &mut back);
        }
        for at in 0..len {
            let mut bad = out[..len].to_vec();
            bad[at] ^= 0x5A;
            let _ = unpack(&bad, &mut back);
        }
        let zeros = vec![0u8; 2 * 64];
        assert_eq!(unpack(&zeros, &mut back), Err(UnpackError::NotValid(0)));
    }

    #[test]
    fn chunk_header_rejects_damage() {
        let r = recs(10);
        let mut out = vec![0u8; chunk_bound(10)];
        write_chunk(&r, 5, &mut out);
        assert!(ChunkHeader::parse(&[0u8; 64]).is_none());
        for at in 4..CHUNK_HEADER {
            let mut bad = out.clone();
            bad[at] ^= 1;
            assert!(
                matches!(ChunkHeader::parse(&bad), Some(Err(_))),
                "byte {at}"
            );
        }
    }

    #[test]
    fn nonzero_bytes_matches_a_loop() {
        for x in [
            0u64,
            1,
            0xFF00,
            0x8000_0000_0000_0000,
            u64::MAX,
            0x0100_0000_0080_0001,
        ] {
            let want = (0..8).fold(0u8, |m, j| m | (u8::from((x >> (8 * j)) as u8 != 0) << j));
            assert_eq!(nonzero_bytes(x), want, "{x:#x}");
        }
    }
}
