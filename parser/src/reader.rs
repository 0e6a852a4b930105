//! Opening a trace bundle: `trace.bin` memory-mapped and read in place,
//! `registry.json` and (optionally) `meta.json` parsed.
//!
//! Records are decoded one at a time straight from the mapping, so iterating
//! over a multi-GiB trace allocates nothing. Everything the header claims is
//! checked against the file before use: the number of readable slots is
//! `min(header.records, (file_len - HEADER_SIZE) / RECORD_SIZE)`, a file cut
//! in the middle of a record loses only that record (with a warning), and a
//! slot without [`flags::VALID`] (reserved by a writer that never finished
//! it) is skipped by [`Trace::records`].

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cktrace_tracer::format::{flags, HEADER_SIZE, RECORD_SIZE};
use cktrace_tracer::{Meta, Registry, TensorInfo, TraceHeader, TraceRecord};
use memmap2::{Mmap, MmapOptions};

/// The file names inside a trace bundle directory.
pub const TRACE_FILE: &str = "trace.bin";
pub const REGISTRY_FILE: &str = "registry.json";
pub const META_FILE: &str = "meta.json";

/// Why a trace bundle could not be opened. Each message is one line that
/// names the file and what is wrong with it, including the underlying I/O or
/// JSON error (which is therefore not also chained as a `source`, so that
/// `{:#}` printing does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{}: {what}: {err}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        err: io::Error,
    },
    #[error("{}: not a trace bundle directory (no {TRACE_FILE} in it)", path.display())]
    NotABundle { path: PathBuf },
    #[error("{}: file is {len} bytes, shorter than the {HEADER_SIZE}-byte trace header", path.display())]
    ShortFile { path: PathBuf, len: u64 },
    #[error("{}: {msg}", path.display())]
    BadHeader { path: PathBuf, msg: String },
    #[error("{}: missing: every trace bundle has a {REGISTRY_FILE} next to {TRACE_FILE}", path.display())]
    MissingRegistry { path: PathBuf },
    #[error("{}: invalid JSON: {err}", path.display())]
    Json {
        path: PathBuf,
        err: serde_json::Error,
    },
}

/// An open trace bundle. Cheap to share across threads (`&Trace` is `Sync`).
pub struct Trace {
    dir: PathBuf,
    map: Mmap,
    header: TraceHeader,
    registry: Registry,
    meta: Option<Meta>,
    /// Slots readable: min(header.records, whole slots in the file).
    slots: usize,
    file_len: u64,
    /// `map` is anonymous memory holding a version 2 file's records
    /// unpacked, not the file.
    unpacked: bool,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("dir", &self.dir)
            .field("header", &self.header)
            .field("slots", &self.slots)
            .field("tensors", &self.registry.tensors.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Trace {
    /// Open the bundle in `dir` (a path to `trace.bin` itself is accepted
    /// too and means its directory).
    pub fn open(dir: &Path) -> Result<Trace, ParseError> {
        let dir = if dir.is_file() {
            dir.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            dir.to_path_buf()
        };
        let bin = dir.join(TRACE_FILE);
        let file = match File::open(&bin) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if dir.is_dir() {
                    ParseError::NotABundle { path: dir }
                } else {
                    ParseError::Io {
                        path: dir,
                        what: "cannot open trace directory",
                        err: e,
                    }
                });
            }
            Err(e) => {
                return Err(ParseError::Io {
                    path: bin,
                    what: "cannot open",
                    err: e,
                })
            }
        };
        let file_len = file
            .metadata()
            .map_err(|e| ParseError::Io {
                path: bin.clone(),
                what: "cannot stat",
                err: e,
            })?
            .len();
        if file_len < HEADER_SIZE as u64 {
            return Err(ParseError::ShortFile {
                path: bin,
                len: file_len,
            });
        }
        // SAFETY: the mapping is read-only and only ever viewed as `[u8]`,
        // for which every bit pattern is valid; records are copied out of it
        // before any field is interpreted. A writer still appending to the
        // file can change bytes under us (we then read a torn record, which
        // is at worst invalid data, never UB for u8); truncating the file
        // while it is mapped would fault, which is the documented limit of
        // reading a live trace through mmap.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| ParseError::Io {
            path: bin.clone(),
            what: "cannot mmap",
            err: e,
        })?;
        // The mapping may be shorter than the metadata said if the file
        // shrank in between; trust the mapping.
        let file_len = (map.len() as u64).min(file_len);
        if file_len < HEADER_SIZE as u64 {
            return Err(ParseError::ShortFile {
                path: bin,
                len: file_len,
            });
        }
        let head: &[u8; HEADER_SIZE] = map[..HEADER_SIZE].try_into().expect("length checked above");
        let header = TraceHeader::from_bytes(head);
        header.check().map_err(|msg| ParseError::BadHeader {
            path: bin.clone(),
            msg,
        })?;

        let mut warnings = Vec::new();
        if header.is_packed() {
            let (map, slots) = unpack(&bin, &map, &header, &mut warnings)?;
            return finish_open(dir, bin, map, header, slots, file_len, true, warnings);
        }
        let body = file_len - HEADER_SIZE as u64;
        let whole = body / RECORD_SIZE as u64;
        let tail = body % RECORD_SIZE as u64;
        if tail != 0 {
            warnings.push(format!(
                "{}: file ends with a partial record ({tail} of {RECORD_SIZE} bytes) after slot {whole}; ignored",
                bin.display()
            ));
        }
        if header.records > whole {
            warnings.push(format!(
                "{}: header reserves {} slots but the file holds only {whole}; the file is cut, reading {whole}",
                bin.display(),
                header.records
            ));
        }
        // `whole` is bounded by the file size, so this fits in usize on any
        // machine that could map the file.
        let slots = usize::try_from(header.records.min(whole)).unwrap_or(usize::MAX);
        finish_open(dir, bin, map, header, slots, file_len, false, warnings)
    }
}

/// Slots past the last chunk a packed trace may reserve before a reader
/// stops believing its header (16 M: 2 GiB of zero pages, never touched).
const MAX_UNWRITTEN_TAIL: u64 = 1 << 24;

/// Unpack a version 2 file (`file`, all of it) into an image laid out as
/// version 1 (the header's bytes, then 128-byte slots), so that every
/// reader sees slots whatever the version. Damaged chunks become warnings
/// and empty slots.
fn unpack(
    bin: &Path,
    file: &[u8],
    header: &TraceHeader,
    warnings: &mut Vec<String>,
) -> Result<(Mmap, usize), ParseError> {
    use cktrace_tracer::pack;
    let scan = pack::scan(file);
    let mut slots = header.records;
    let bound = scan.end_slot.saturating_add(MAX_UNWRITTEN_TAIL);
    if slots > bound {
        warnings.push(format!(
            "{}: header reserves {slots} slots but its chunks end at slot {}; reading {bound}",
            bin.display(),
            scan.end_slot
        ));
        slots = bound;
    }
    let bytes = usize::try_from(slots)
        .ok()
        .and_then(|s| s.checked_mul(RECORD_SIZE))
        .and_then(|b| b.checked_add(HEADER_SIZE));
    let mut image = bytes
        .ok_or_else(|| io::Error::other(format!("{slots} slots do not fit in memory")))
        .and_then(|len| MmapOptions::new().len(len).map_anon())
        .map_err(|e| ParseError::Io {
            path: bin.to_path_buf(),
            what: "cannot allocate memory to unpack the records",
            err: e,
        })?;
    image[..HEADER_SIZE].copy_from_slice(&file[..HEADER_SIZE]);
    let (_, problems) = pack::unpack_into(file, &scan.chunks, &mut image[HEADER_SIZE..]);
    for p in scan.problems.iter().chain(&problems) {
        warnings.push(format!("{}: {p}", bin.display()));
    }
    let map = image.make_read_only().map_err(|e| ParseError::Io {
        path: bin.to_path_buf(),
        what: "cannot protect the unpacked records",
        err: e,
    })?;
    Ok((map, slots as usize))
}

/// The checks and files common to both versions.
#[allow(clippy::too_many_arguments)]
fn finish_open(
    dir: PathBuf,
    bin: PathBuf,
    map: Mmap,
    header: TraceHeader,
    slots: usize,
    file_len: u64,
    unpacked: bool,
    mut warnings: Vec<String>,
) -> Result<Trace, ParseError> {
    if header.dropped != 0 {
        warnings.push(format!(
            "{}: the writer dropped {} records (trace capacity {} exhausted)",
            bin.display(),
            header.dropped,
            header.capacity
        ));
    }
    if header.finished == 0 {
        warnings.push(format!(
                "{}: the trace was not closed cleanly (writer killed or still running); unfinished slots are skipped",
                bin.display()
            ));
    }

    let reg_path = dir.join(REGISTRY_FILE);
    let registry: Registry = match std::fs::read(&reg_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ParseError::Json {
            path: reg_path.clone(),
            err: e,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ParseError::MissingRegistry { path: reg_path });
        }
        Err(e) => {
            return Err(ParseError::Io {
                path: reg_path,
                what: "cannot read",
                err: e,
            })
        }
    };
    let misplaced = registry
        .tensors
        .iter()
        .enumerate()
        .filter(|(i, t)| t.id as usize != *i)
        .count();
    if misplaced != 0 {
        warnings.push(format!(
                "{}: {misplaced} tensors have an id different from their index; records naming them do not resolve",
                reg_path.display()
            ));
    }

    let meta_path = dir.join(META_FILE);
    let meta = match std::fs::read(&meta_path) {
        Ok(bytes) => match serde_json::from_slice::<Meta>(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                warnings.push(format!(
                    "{}: invalid JSON, ignored: {e}",
                    meta_path.display()
                ));
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            warnings.push(format!(
                "{}: missing; run facts (model, prompt) unavailable",
                meta_path.display()
            ));
            None
        }
        Err(e) => {
            warnings.push(format!(
                "{}: cannot read, ignored: {e}",
                meta_path.display()
            ));
            None
        }
    };

    Ok(Trace {
        dir,
        map,
        header,
        registry,
        meta,
        slots,
        file_len,
        unpacked,
        warnings,
    })
}

impl Trace {
    /// For a trace that was not finished (its writer was killed, or is still
    /// running): the first slot of its unfinished step. Slots below it hold
    /// exactly the records of the steps the header marks done; slots from it
    /// on belong to the step in flight. `None` for a finished trace.
    pub fn partial_from(&self) -> Option<usize> {
        (self.header.finished == 0).then(|| {
            usize::try_from(self.header.steps_done_slots)
                .unwrap_or(usize::MAX)
                .min(self.slots)
        })
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checked header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The tensor a record's `tensor_id` / `act_id` names, if it resolves.
    pub fn tensor(&self, id: u32) -> Option<&TensorInfo> {
        self.registry.get(id)
    }

    /// `meta.json`, if it was present and valid.
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// Problems found while opening that do not prevent reading: a cut
    /// file, a partial last record, dropped records, an unclean close, a
    /// missing `meta.json`. One line each, naming the file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Slots that can be read (complete or not).
    pub fn slot_count(&self) -> usize {
        self.slots
    }

    /// Length of `trace.bin` in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Slots in the file after the header, whether reserved or not (for a
    /// packed trace, the slots unpacked).
    pub fn file_slots(&self) -> u64 {
        if self.unpacked {
            return self.slots as u64;
        }
        (self.file_len - HEADER_SIZE as u64) / RECORD_SIZE as u64
    }

    /// Whether `trace.bin` is version 2 (packed records, unpacked on open).
    pub fn is_packed(&self) -> bool {
        self.unpacked
    }

    /// Bytes of the readable slots (what a full scan touches).
    pub fn data_len(&self) -> u64 {
        self.slots as u64 * RECORD_SIZE as u64
    }

    /// The raw bytes of slot `i`, if it is readable.
    pub fn slot_bytes(&self, i: usize) -> Option<&[u8; RECORD_SIZE]> {
        if i >= self.slots {
            return None;
        }
        let start = HEADER_SIZE + i * RECORD_SIZE;
        self.map.get(start..start + RECORD_SIZE)?.try_into().ok()
    }

    /// Slot `i` decoded, complete or not.
    pub fn slot(&self, i: usize) -> Option<TraceRecord> {
        self.slot_bytes(i).map(TraceRecord::from_bytes)
    }

    /// Every complete record, in file order.
    pub fn records(&self) -> Records<'_> {
        self.records_in(0..self.slots)
    }

    /// The complete records among slots `range` (clamped to the readable
    /// slots), in file order. Splitting `0..slot_count()` into ranges is how
    /// scans run in parallel.
    pub fn records_in(&self, range: Range<usize>) -> Records<'_> {
        let end = range.end.min(self.slots);
        let start = range.start.min(end);
        let bytes = &self.map[HEADER_SIZE + start * RECORD_SIZE..HEADER_SIZE + end * RECORD_SIZE];
        Records {
            chunks: bytes.chunks_exact(RECORD_SIZE),
            next_slot: start,
        }
    }

    /// Drop this process's mapping of the pages that hold slots `range` (the
    /// page cache keeps them), so that a streaming pass over a trace larger
    /// than memory keeps a flat resident set. Reading those slots again just
    /// maps the pages back in.
    pub fn release(&self, range: Range<usize>) {
        const PAGE: usize = 4096;
        if self.unpacked {
            // Anonymous memory: dropping its pages would lose the records.
            return;
        }
        let end = range.end.min(self.slots);
        let start = range.start.min(end);
        let a = (HEADER_SIZE + start * RECORD_SIZE).div_ceil(PAGE) * PAGE;
        let b = (HEADER_SIZE + end * RECORD_SIZE) / PAGE * PAGE;
        if b > a && b <= self.map.len() {
            // SAFETY: a read-only shared mapping of a regular file: MADV_DONTNEED
            // only unmaps the pages; their contents (the file's) are unchanged and
            // are mapped back on the next access, so outstanding borrows stay valid.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
    }

    /// Number of readable slots without [`flags::VALID`] (reserved but never
    /// completed), padding ([`flags::PAD`]) not counted. Scans the file.
    pub fn incomplete_slots(&self) -> u64 {
        let bytes = &self.map[HEADER_SIZE..HEADER_SIZE + self.slots * RECORD_SIZE];
        bytes
            .chunks_exact(RECORD_SIZE)
            .filter(|c| !is_valid(c) && !is_padding(c))
            .count() as u64
    }
}

/// Whether a slot's flags word has [`flags::VALID`].
#[inline]
pub(crate) fn is_valid(slot: &[u8]) -> bool {
    let f = u32::from_le_bytes([slot[76], slot[77], slot[78], slot[79]]);
    f & flags::VALID != 0
}

/// Whether a slot is padding: flags exactly [`flags::PAD`].
#[inline]
pub(crate) fn is_padding(slot: &[u8]) -> bool {
    u32::from_le_bytes([slot[76], slot[77], slot[78], slot[79]]) == flags::PAD
}

/// Iterator over the complete records of a range of slots.
#[derive(Clone)]
pub struct Records<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
    next_slot: usize,
}

impl<'a> Records<'a> {
    /// Yield `(slot index, record)` instead of the record alone.
    pub fn with_slots(self) -> SlotRecords<'a> {
        SlotRecords(self)
    }

    #[inline]
    fn next_valid(&mut self) -> Option<(usize, TraceRecord)> {
        for c in self.chunks.by_ref() {
            let slot = self.next_slot;
            self.next_slot += 1;
            if is_valid(c) {
                let b: &[u8; RECORD_SIZE] = c.try_into().expect("chunks_exact yields RECORD_SIZE");
                return Some((slot, TraceRecord::from_bytes(b)));
            }
        }
        None
    }
}

impl Iterator for Records<'_> {
    type Item = TraceRecord;

    #[inline]
    fn next(&mut self) -> Option<TraceRecord> {
        self.next_valid().map(|(_, r)| r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.chunks.len()))
    }
}

/// Iterator over `(slot index, record)`; see [`Records::with_slots`].
#[derive(Clone)]
pub struct SlotRecords<'a>(Records<'a>);

impl Iterator for SlotRecords<'_> {
    type Item = (usize, TraceRecord);

    #[inline]
    fn next(&mut self) -> Option<(usize, TraceRecord)> {
        self.0.next_valid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Bundle;
    use cktrace_tracer::format::FORMAT_VERSION;

    fn err(dir: &Path) -> String {
        Trace::open(dir).expect_err("open should fail").to_string()
    }

    #[test]
    fn opens_a_good_bundle() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
        assert_eq!(t.slot_count(), b.recs.len());
        assert_eq!(t.records().collect::<Vec<_>>(), b.recs);
        assert_eq!(t.incomplete_slots(), 0);
        assert!(t.meta().is_some());
        assert_eq!(t.registry(), &b.reg);
        // Ranges clamp and keep slot numbers.
        let tail: Vec<_> = t.records_in(5..usize::MAX).with_slots().collect();
        assert_eq!(tail.len(), b.recs.len() - 5);
        assert_eq!(tail[0], (5, b.recs[5]));
        assert_eq!(t.records_in(usize::MAX - 1..usize::MAX).count(), 0);
        // A path to trace.bin means its directory.
        assert_eq!(Trace::open(&b.bin()).unwrap().slot_count(), b.recs.len());
    }

    /// A packed (version 2) bundle reads back as the same records, slot for
    /// slot.
    #[test]
    fn packed_bundle_reads_the_same_records() {
        let b = Bundle::small();
        b.write_packed(7);
        let t = Trace::open(b.path()).unwrap();
        assert!(t.is_packed());
        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
        assert_eq!(t.slot_count(), b.recs.len());
        let want: Vec<TraceRecord> = b
            .recs
            .iter()
            .map(|r| TraceRecord {
                flags: r.flags | flags::VALID,
                ..*r
            })
            .collect();
        assert_eq!(t.records().collect::<Vec<_>>(), want);
        assert_eq!(t.incomplete_slots(), 0);
        // Releasing pages of unpacked records must not lose them.
        t.release(0..t.slot_count());
        assert_eq!(t.records().count(), want.len());
    }

    /// Hostile packed files: random byte changes, cuts, and payloads
    /// changed with their hashes made to agree (so the unpacker itself
    /// sees them). Opening never panics; what opens reads, every record
    /// it yields is VALID, and the records never exceed the header's.
    #[test]
    fn mutated_packed_files_never_panic() {
        let b = Bundle::small();
        let good = b.write_packed(5);
        let chunks = cktrace_tracer::pack::scan(&good).chunks;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..3000 {
            let mut f = good.clone();
            match case % 4 {
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let i = next() as usize % f.len();
                        f[i] ^= 1 << (next() % 8);
                    }
                }
                1 => f.truncate(next() as usize % f.len()),
                _ => {
                    // Change payload bytes of a chunk, then fix its hashes.
                    use cktrace_tracer::pack::{hash, CHUNK_HEADER};
                    let c = chunks[next() as usize % chunks.len()];
                    let at = c.at as usize;
                    let len = c.header.payload_len as usize;
                    for _ in 0..1 + next() % 3 {
                        let i = at + CHUNK_HEADER + next() as usize % len;
                        f[i] = next() as u8;
                    }
                    let mut h = c.header;
                    if case % 4 == 3 {
                        h.n = (next() % 2 * 100 + u64::from(h.n)) as u32;
                        h.slot = next() % 64;
                    }
                    h.payload_hash = hash(&f[at + CHUNK_HEADER..at + CHUNK_HEADER + len]);
                    f[at..at + CHUNK_HEADER].copy_from_slice(&h.to_bytes());
                }
            }
            std::fs::write(b.bin(), &f).unwrap();
            if let Ok(t) = Trace::open(b.path()) {
                let n = t.records().count() as u64;
                assert!(n <= t.header().records, "case {case}");
                assert!(t.records().all(|r| r.flags & flags::VALID != 0));
                let _ = t.incomplete_slots();
            }
        }
    }

    #[test]
    fn empty_file() {
        let b = Bundle::small();
        std::fs::write(b.bin(), b"").unwrap();
        let e = err(b.path());
        assert!(e.contains("trace.bin") && e.contains("0 bytes"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn random_bytes() {
        let b = Bundle::small();
        let mut x = 0x1234_5678_9abc_def0u64;
        let bytes: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(b.bin(), bytes).unwrap();
        let e = err(b.path());
        assert!(e.contains("trace.bin: not a cktrace trace"), "{e}");
    }

    #[test]
    fn short_header() {
        let b = Bundle::small();
        let h = crate::synth::header_for(3, 2).to_bytes();
        std::fs::write(b.bin(), &h[..100]).unwrap();
        let e = err(b.path());
        assert!(
            e.contains("100 bytes, shorter than the 256-byte trace header"),
            "{e}"
        );
    }

    #[test]
    fn a_later_version_is_refused() {
        let b = Bundle::small();
        let mut h = crate::synth::header_for(b.recs.len() as u64, 2);
        h.version = FORMAT_VERSION + 1;
        crate::synth::write_bundle(b.path(), &h, &b.reg, None, &b.recs).unwrap();
        let e = err(b.path());
        assert!(
            e.contains("trace.bin: trace format version 3 is not supported"),
            "{e}"
        );
    }

    #[test]
    fn huge_counts_are_bounded_by_the_file() {
        let b = Bundle::small();
        let mut h = crate::synth::header_for(u64::MAX / 2, 2);
        h.complete = 0;
        crate::synth::write_bundle(b.path(), &h, &b.reg, None, &b.recs[..3]).unwrap();
        let t = Trace::open(b.path()).unwrap();
        assert_eq!(t.slot_count(), 3);
        assert_eq!(t.records().count(), 3);
        assert!(
            t.warnings()
                .iter()
                .any(|w| w.contains("the file is cut, reading 3")),
            "{:?}",
            t.warnings()
        );
    }

    #[test]
    fn cut_mid_record_reads_the_complete_ones() {
        let b = Bundle::small();
        let len = std::fs::metadata(b.bin()).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(b.bin())
            .unwrap();
        f.set_len(len - 50).unwrap();
        let t = Trace::open(b.path()).unwrap();
        assert_eq!(t.records().count(), b.recs.len() - 1);
        assert!(
            t.warnings()
                .iter()
                .any(|w| w.contains("partial record (78 of 128 bytes)")),
            "{:?}",
            t.warnings()
        );
        assert!(t.warnings().iter().any(|w| w.contains("the file is cut")));
    }

    #[test]
    fn missing_registry() {
        let b = Bundle::small();
        std::fs::remove_file(b.path().join(REGISTRY_FILE)).unwrap();
        let e = err(b.path());
        assert!(e.contains("registry.json: missing"), "{e}");
    }

    #[test]
    fn bad_registry_json() {
        let b = Bundle::small();
        std::fs::write(b.path().join(REGISTRY_FILE), b"{\"version\":1,").unwrap();
        let e = err(b.path());
        assert!(e.contains("registry.json: invalid JSON"), "{e}");
    }

    #[test]
    fn missing_meta_is_a_warning() {
        let b = Bundle::small();
        std::fs::remove_file(b.path().join(META_FILE)).unwrap();
        let t = Trace::open(b.path()).unwrap();
        assert!(t.meta().is_none());
        assert!(t
            .warnings()
            .iter()
            .any(|w| w.contains("meta.json: missing")));
    }

    #[test]
    fn not_a_bundle() {
        let d = tempfile::tempdir().unwrap();
        assert!(err(d.path()).contains("not a trace bundle directory"));
        assert!(err(&d.path().join("nope")).contains("cannot open trace directory"));
    }

    #[test]
    fn incomplete_slots_are_skipped() {
        let mut b = Bundle::small();
        b.recs[3].flags &= !flags::VALID;
        b.write();
        let t = Trace::open(b.path()).unwrap();
        assert_eq!(t.records().count(), b.recs.len() - 1);
        assert_eq!(t.incomplete_slots(), 1);
        assert!(t.records().with_slots().all(|(s, _)| s != 3));
        assert_eq!(t.slot(3).unwrap().flags & flags::VALID, 0);
    }
}
