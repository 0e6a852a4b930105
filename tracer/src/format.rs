//! The on-disk trace format: a fixed header followed by fixed-size records.
//!
//! This module is the single definition of `trace.bin`; `docs/trace-format.md`
//! describes the same bytes in prose and must change together with it (and
//! [`FORMAT_VERSION`] must be bumped on any incompatible change).
//!
//! Everything is little-endian. The file is `HEADER_SIZE` bytes of header,
//! then `capacity` slots of `RECORD_SIZE` bytes. Writers reserve slots with an
//! atomic cursor and write each record whole, with [`flags::VALID`] set; a
//! reserved slot that was never written stays zero. A 4 KiB page holds exactly
//! 32 slots, so a writer killed mid-write leaves whole records only, and a
//! reader can tell complete slots from reserved-but-unwritten ones.

/// `trace.bin` starts with these 8 bytes.
pub const MAGIC: [u8; 8] = *b"CKTRACE\0";
/// Bumped on every incompatible change of header or record layout: the
/// newest version, the one cktrace writes by default.
pub const FORMAT_VERSION: u32 = VERSION_PACKED;
/// Version 1: fixed 128-byte slots after the header (`--trace-format raw`).
pub const VERSION_RAW: u32 = 1;
/// Version 2: records packed in chunks (see [`crate::pack`]); the header
/// is version 1's plus `data_end`.
pub const VERSION_PACKED: u32 = 2;
/// Bytes before the first record.
pub const HEADER_SIZE: usize = 256;
/// Bytes per record.
pub const RECORD_SIZE: usize = 128;
/// Bytes of the truncated tensor name in a record (NUL-padded, not terminated
/// when exactly this long).
pub const NAME_LEN: usize = 32;
/// `tensor_id` / `act_id` of a record whose tensor is not in the registry.
pub const NO_ID: u32 = u32::MAX;

/// `clock` field of the header: timestamps are CLOCK_MONOTONIC nanoseconds
/// minus the monotonic time at trace start.
pub const CLOCK_MONOTONIC_REL: u32 = 1;

/// The trace header. Byte offsets are given per field; all fields are
/// little-endian. `header.records` is the number of slots reserved so far;
/// `header.complete` is updated after each batch of records has been copied
/// into place, so after a crash `complete <= records` and slots without
/// [`flags::VALID`] are to be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TraceHeader {
    /// 0: [`MAGIC`].
    pub magic: [u8; 8],
    /// 8: [`VERSION_RAW`] or [`VERSION_PACKED`].
    pub version: u32,
    /// 12: [`HEADER_SIZE`].
    pub header_size: u32,
    /// 16: [`RECORD_SIZE`].
    pub record_size: u32,
    /// 20: [`CLOCK_MONOTONIC_REL`].
    pub clock: u32,
    /// 24: slots the trace can hold (version 1: slots in the file after
    /// the header).
    pub capacity: u64,
    /// 32: slots reserved by writers (the cursor); never above `capacity`.
    pub records: u64,
    /// 40: slots known to be completely written.
    pub complete: u64,
    /// 48: records that did not fit (capacity exhausted) and were dropped.
    pub dropped: u64,
    /// 56: wall-clock time of trace start, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// 64: CLOCK_MONOTONIC at trace start, ns (records are relative to it).
    pub start_mono_ns: u64,
    /// 72: 1 once the writer closed the trace cleanly.
    pub finished: u32,
    /// 76: engine that produced the trace ([`Engine`]).
    pub engine: u32,
    /// 80: worker threads the engine was configured with.
    pub n_threads: u32,
    /// 84: process id of the writer.
    pub pid: u32,
    /// 88: steps whose records are all in the file (and whose tensors are
    /// all in registry.json): steps `0..steps_done` are complete.
    pub steps_done: u32,
    /// 92: zero.
    pub pad: u32,
    /// 96: slots reserved when `steps_done` was last advanced: slots below
    /// it hold exactly the records of steps `0..steps_done`; a trace that
    /// was not finished has its unfinished step at and above it.
    pub steps_done_slots: u64,
    /// 104: slots written as padding ([`flags::PAD`], no VALID): a writer
    /// that writes whole 4 KiB pages straight to the disk fills the rest of
    /// its last page with them. `records == complete + padding` once a
    /// trace is finished without drops.
    pub padding: u64,
    /// 112: version 2: bytes of the file reserved for chunks so far (the
    /// writers' byte cursor, from [`crate::pack::DATA_START`]); zero in
    /// version 1.
    pub data_end: u64,
    /// 120..256: zero.
    pub reserved: [u8; 136],
}

const _: () = assert!(std::mem::size_of::<TraceHeader>() == HEADER_SIZE);

/// One memory access of one thread: the byte range `[offset, offset+len)` of
/// tensor `tensor_id` (as laid out in the buffer it was read from) that thread
/// `thread` read while computing rows `[row0, row1)` x columns `[col0, col1)`
/// of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TraceRecord {
    /// 0: start, ns since trace start.
    pub t_ns: u64,
    /// 8: duration in ns (saturated at u32::MAX).
    pub dur_ns: u32,
    /// 12: decode step: 0 is the prompt (prefill), n the n-th generated token.
    pub step: u32,
    /// 16: position of the first token of the batch being evaluated.
    pub pos: i32,
    /// 20: tokens in the batch.
    pub n_tokens: u16,
    /// 22: [`Phase`].
    pub phase: u8,
    /// 23: [`Engine`].
    pub engine: u8,
    /// 24: [`Op`].
    pub op: u8,
    /// 25: [`KernelPath`].
    pub path: u8,
    /// 26: index of the thread that did this work.
    pub thread: u16,
    /// 28: threads working on this op.
    pub n_threads: u16,
    /// 30: transformer layer, -1 when none (token_embd, output).
    pub layer: i16,
    /// 32: registry id of the tensor read ([`NO_ID`] if unregistered).
    pub tensor_id: u32,
    /// 36: registry id of the activation operand ([`NO_ID`] if none).
    pub act_id: u32,
    /// 40: first byte read, relative to the tensor's data.
    pub offset: u64,
    /// 48: bytes read; with [`flags::STRIDED`] they are rows spread at the
    /// tensor's row stride starting at `offset`, not one contiguous range.
    pub len: u64,
    /// 56: first row of the weight (= output feature) computed / copied.
    pub row0: u32,
    /// 60: one past the last row.
    pub row1: u32,
    /// 64: first output column (token, flattened over dims 1..3); for
    /// GET_ROWS the index into the ids tensor.
    pub col0: u32,
    /// 68: one past the last column.
    pub col1: u32,
    /// 72: expert id for MUL_MAT_ID, -1 otherwise.
    pub expert: i32,
    /// 76: [`flags`].
    pub flags: u32,
    /// 80: identity of the graph node (its address; unique within a step).
    pub node: u64,
    /// 88: bytes of the activation operand read.
    pub act_bytes: u64,
    /// 96: tensor name, truncated to [`NAME_LEN`] bytes ("Path A").
    pub name: [u8; NAME_LEN],
}

const _: () = assert!(std::mem::size_of::<TraceRecord>() == RECORD_SIZE);

/// A record as sixteen u64 words: word `i` is bytes `8i..8i + 8`,
/// little-endian (the crate targets little-endian machines only). Word by
/// word: 0 `t_ns`; 1 `dur_ns`, `step`; 2 `pos`, `n_tokens`, `phase`,
/// `engine`; 3 `op`, `path`, `thread`, `n_threads`, `layer`; 4 `tensor_id`,
/// `act_id`; 5 `offset`; 6 `len`; 7 `row0`, `row1`; 8 `col0`, `col1`;
/// 9 `expert`, `flags`; 10 `node`; 11 `act_bytes`; 12-15 `name`. The packed
/// format (`pack`) compares records word by word, and a hook that builds a
/// record in registers hands it over as words.
pub type RecordWords = [u64; RECORD_WORDS];

/// Words of a record ([`RecordWords`]).
pub const RECORD_WORDS: usize = RECORD_SIZE / 8;

impl Default for TraceRecord {
    fn default() -> Self {
        TraceRecord::EMPTY
    }
}

impl TraceRecord {
    /// A record with no tensor, layer, expert or name (the `Default`).
    pub const EMPTY: TraceRecord = TraceRecord {
        t_ns: 0,
        dur_ns: 0,
        step: 0,
        pos: 0,
        n_tokens: 0,
        phase: 0,
        engine: 0,
        op: 0,
        path: 0,
        thread: 0,
        n_threads: 0,
        layer: -1,
        tensor_id: NO_ID,
        act_id: NO_ID,
        offset: 0,
        len: 0,
        row0: 0,
        row1: 0,
        col0: 0,
        col1: 0,
        expert: -1,
        flags: 0,
        node: 0,
        act_bytes: 0,
        name: [0; NAME_LEN],
    };

    /// The name as a string, up to the first NUL.
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..end]).unwrap_or("<non-utf8>")
    }

    /// Set the name, truncating to [`NAME_LEN`] bytes.
    pub fn set_name(&mut self, name: &[u8]) {
        let n = name.len().min(NAME_LEN);
        self.name = [0; NAME_LEN];
        self.name[..n].copy_from_slice(&name[..n]);
    }

    /// The record as its 128 on-disk bytes (the struct is `repr(C)` with no
    /// padding and this crate only targets little-endian machines).
    pub fn as_bytes(&self) -> &[u8; RECORD_SIZE] {
        // SAFETY: TraceRecord is repr(C), exactly RECORD_SIZE bytes (asserted
        // above), has no padding (fields are laid out at naturally aligned
        // offsets that sum to 128) and every bit pattern is a valid u8.
        unsafe { &*(self as *const TraceRecord as *const [u8; RECORD_SIZE]) }
    }

    /// The record as its sixteen words (see [`RecordWords`]).
    #[inline(always)]
    pub fn words(&self) -> RecordWords {
        // SAFETY: TraceRecord is repr(C), RECORD_SIZE bytes without padding
        // (see `as_bytes`), so its bytes are sixteen initialised u64s, and
        // every bit pattern is a valid u64.
        unsafe { std::mem::transmute::<TraceRecord, RecordWords>(*self) }
    }

    /// The record whose words are `w` (see [`RecordWords`]).
    #[inline(always)]
    pub fn from_words(w: RecordWords) -> TraceRecord {
        // SAFETY: the same size and no padding (see `as_bytes`); every field
        // is an integer or a byte array, for which every bit pattern is valid.
        unsafe { std::mem::transmute::<RecordWords, TraceRecord>(w) }
    }

    /// Decode a record from its on-disk bytes.
    pub fn from_bytes(b: &[u8; RECORD_SIZE]) -> TraceRecord {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[96..128]);
        TraceRecord {
            t_ns: u64_at(0),
            dur_ns: u32_at(8),
            step: u32_at(12),
            pos: u32_at(16) as i32,
            n_tokens: u16_at(20),
            phase: b[22],
            engine: b[23],
            op: b[24],
            path: b[25],
            thread: u16_at(26),
            n_threads: u16_at(28),
            layer: u16_at(30) as i16,
            tensor_id: u32_at(32),
            act_id: u32_at(36),
            offset: u64_at(40),
            len: u64_at(48),
            row0: u32_at(56),
            row1: u32_at(60),
            col0: u32_at(64),
            col1: u32_at(68),
            expert: u32_at(72) as i32,
            flags: u32_at(76),
            node: u64_at(80),
            act_bytes: u64_at(88),
            name,
        }
    }
}

impl TraceHeader {
    /// A fresh header for a trace of `capacity` slots.
    pub fn new(
        capacity: u64,
        engine: Engine,
        n_threads: u32,
        start_unix_ns: u64,
        start_mono_ns: u64,
    ) -> Self {
        TraceHeader {
            magic: MAGIC,
            version: VERSION_RAW,
            header_size: HEADER_SIZE as u32,
            record_size: RECORD_SIZE as u32,
            clock: CLOCK_MONOTONIC_REL,
            capacity,
            records: 0,
            complete: 0,
            dropped: 0,
            start_unix_ns,
            start_mono_ns,
            finished: 0,
            engine: engine as u32,
            n_threads,
            pid: std::process::id(),
            steps_done: 0,
            pad: 0,
            steps_done_slots: 0,
            padding: 0,
            data_end: 0,
            reserved: [0; 136],
        }
    }

    /// The header as its on-disk bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.record_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.clock.to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        b[32..40].copy_from_slice(&self.records.to_le_bytes());
        b[40..48].copy_from_slice(&self.complete.to_le_bytes());
        b[48..56].copy_from_slice(&self.dropped.to_le_bytes());
        b[56..64].copy_from_slice(&self.start_unix_ns.to_le_bytes());
        b[64..72].copy_from_slice(&self.start_mono_ns.to_le_bytes());
        b[72..76].copy_from_slice(&self.finished.to_le_bytes());
        b[76..80].copy_from_slice(&self.engine.to_le_bytes());
        b[80..84].copy_from_slice(&self.n_threads.to_le_bytes());
        b[84..88].copy_from_slice(&self.pid.to_le_bytes());
        b[88..92].copy_from_slice(&self.steps_done.to_le_bytes());
        b[92..96].copy_from_slice(&self.pad.to_le_bytes());
        b[96..104].copy_from_slice(&self.steps_done_slots.to_le_bytes());
        b[104..112].copy_from_slice(&self.padding.to_le_bytes());
        b[112..120].copy_from_slice(&self.data_end.to_le_bytes());
        b[120..256].copy_from_slice(&self.reserved);
        b
    }

    /// Decode a header. Checks nothing; see [`TraceHeader::check`].
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> TraceHeader {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        let mut reserved = [0u8; 136];
        reserved.copy_from_slice(&b[120..256]);
        TraceHeader {
            magic,
            version: u32_at(8),
            header_size: u32_at(12),
            record_size: u32_at(16),
            clock: u32_at(20),
            capacity: u64_at(24),
            records: u64_at(32),
            complete: u64_at(40),
            dropped: u64_at(48),
            start_unix_ns: u64_at(56),
            start_mono_ns: u64_at(64),
            finished: u32_at(72),
            engine: u32_at(76),
            n_threads: u32_at(80),
            pid: u32_at(84),
            steps_done: u32_at(88),
            pad: u32_at(92),
            steps_done_slots: u64_at(96),
            padding: u64_at(104),
            data_end: u64_at(112),
            reserved,
        }
    }

    /// Whether records are packed in chunks (version 2) rather than stored
    /// in fixed slots (version 1).
    pub fn is_packed(&self) -> bool {
        self.version == VERSION_PACKED
    }

    /// Check magic, version and sizes; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            return Err(format!(
                "not a cktrace trace (magic {:02x?}, expected {:02x?})",
                self.magic, MAGIC
            ));
        }
        if self.version != VERSION_RAW && self.version != VERSION_PACKED {
            return Err(format!(
                "trace format version {} is not supported (this build reads versions {VERSION_RAW} and {VERSION_PACKED})",
                self.version
            ));
        }
        if self.is_packed() && (self.padding != 0 || self.data_end < crate::pack::DATA_START) {
            return Err(format!(
                "corrupt header: a version 2 trace with padding {} and data_end {}",
                self.padding, self.data_end
            ));
        }
        if self.header_size as usize != HEADER_SIZE || self.record_size as usize != RECORD_SIZE {
            return Err(format!(
                "corrupt header: header_size {} record_size {} (expected {} and {})",
                self.header_size, self.record_size, HEADER_SIZE, RECORD_SIZE
            ));
        }
        if self.records > self.capacity
            || self.complete > self.records
            || self.padding > self.records - self.complete
        {
            return Err(format!(
                "corrupt header: records {} complete {} padding {} capacity {}",
                self.records, self.complete, self.padding, self.capacity
            ));
        }
        Ok(())
    }
}

/// Record flag bits.
pub mod flags {
    /// Set on every record written: the slot holds a complete record (a
    /// reserved slot that was never written is all zero).
    pub const VALID: u32 = 1 << 31;
    /// The `len` bytes were read as rows at the tensor's row stride (e.g. a
    /// view of one KV head, or several heads' planes), starting at `offset`.
    pub const STRIDED: u32 = 1 << 0;
    /// The tensor was read from a repacked (extra buffer type) copy; rows
    /// still count in the original tensor's row numbering.
    pub const REPACKED: u32 = 1 << 1;
    /// The record was emitted at op level (one per op and thread), not per
    /// chunk of a weight read.
    pub const OP_LEVEL: u32 = 1 << 2;
    /// A padding slot (never together with VALID): it holds no record and
    /// fills the rest of a 4 KiB page that a writer wrote whole.
    pub const PAD: u32 = 1 << 30;
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr => $s:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $n),* }
        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// Decode; `None` for an unknown code.
            pub fn from_u8(c: u8) -> Option<$name> { match c { $($n => Some($name::$v),)* _ => None } }
            /// The stable lower-case name used in tables, CSV and JSON.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),* } }
            /// Parse the stable name.
            pub fn parse(s: &str) -> Option<$name> { match s { $($s => Some($name::$v),)* _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

code_enum!(
    /// Whether the batch was the prompt or a generated token.
    Phase { Prefill = 0 => "prefill", Decode = 1 => "decode", Other = 2 => "other" }
);

code_enum!(
    /// Which engine produced a record.
    Engine { Ggml = 0 => "ggml", Ck = 1 => "ck" }
);

code_enum!(
    /// The operation a record belongs to.
    Op {
        MulMat = 1 => "mul_mat",
        MulMatId = 2 => "mul_mat_id",
        GetRows = 3 => "get_rows",
        /// FLASH_ATTN_EXT: K and V rows of the KV cache read by fused
        /// attention (added within version 1; older readers show it as
        /// `unknown(4)`).
        FlashAttnExt = 4 => "flash_attn_ext",
        /// Any other op, traced at op level (optional).
        Other = 255 => "other",
    }
);

code_enum!(
    /// The kernel path that did the read: the thing the naive hook misses.
    KernelPath {
        /// Generic `ggml_compute_forward_mul_mat` chunk loop (vec_dot).
        VecDot = 1 => "vec_dot",
        /// llamafile tinyBLAS sgemm (prompt batches only).
        Llamafile = 2 => "llamafile",
        /// CPU_REPACK extra buffer type, matrix-vector kernel.
        RepackGemv = 3 => "repack_gemv",
        /// CPU_REPACK extra buffer type, matrix-matrix kernel.
        RepackGemm = 4 => "repack_gemm",
        /// AMX extra buffer type (Intel AMX tiles).
        Amx = 5 => "amx",
        /// KleidiAI extra buffer type (Arm).
        Kleidiai = 6 => "kleidiai",
        /// GET_ROWS: rows copied/dequantized from an embedding-like table.
        GetRows = 7 => "get_rows",
        /// Generic MUL_MAT_ID chunk loop.
        MulMatId = 8 => "mul_mat_id",
        /// CPU_REPACK MUL_MAT_ID.
        RepackMulMatId = 9 => "repack_mul_mat_id",
        /// ggml-cpu "tiled" mul_mat kernels.
        Tiled = 10 => "tiled",
        /// Op-level record of any other op.
        OpLevel = 11 => "op",
        /// FLASH_ATTN_EXT one query row at a time (`one_chunk`: decode and
        /// short prompts).
        FlashAttn = 12 => "flash_attn",
        /// FLASH_ATTN_EXT tiled kernel (a query tile x KV tiles; prompts of
        /// 64 tokens or more).
        FlashAttnTiled = 13 => "flash_attn_tiled",
        /// FLASH_ATTN_EXT decode path split over KV chunks (one token, 512
        /// KV cells or more, F16/F32 cache).
        FlashAttnSplit = 14 => "flash_attn_split",
        /// The ck engine's scalar reference kernels.
        CkScalar = 32 => "ck_scalar",
        /// The ck engine's SIMD kernels.
        CkSimd = 33 => "ck_simd",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_is_byte_exact() {
        let mut r = TraceRecord {
            t_ns: 0x0102_0304_0506_0708,
            dur_ns: 77,
            step: 3,
            pos: 12,
            n_tokens: 1,
            phase: Phase::Decode as u8,
            engine: Engine::Ggml as u8,
            op: Op::MulMat as u8,
            path: KernelPath::RepackGemv as u8,
            thread: 1,
            n_threads: 2,
            layer: 29,
            tensor_id: 42,
            act_id: NO_ID,
            offset: 4096,
            len: 8192,
            row0: 32,
            row1: 64,
            col0: 0,
            col1: 1,
            expert: -1,
            flags: flags::VALID | flags::REPACKED,
            node: 0xdead_beef,
            act_bytes: 2304,
            name: [0; NAME_LEN],
        };
        r.set_name(b"blk.29.ffn_down.weight");
        let b = *r.as_bytes();
        assert_eq!(TraceRecord::from_bytes(&b), r);
        assert_eq!(&b[96..118], b"blk.29.ffn_down.weight");
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 42);
        assert_eq!(r.name_str(), "blk.29.ffn_down.weight");
    }

    #[test]
    fn long_names_truncate() {
        let mut r = TraceRecord::default();
        r.set_name(&[b'x'; 40]);
        assert_eq!(r.name_str().len(), NAME_LEN);
    }

    #[test]
    fn header_roundtrip_and_checks() {
        let h = TraceHeader::new(1000, Engine::Ggml, 2, 5, 6);
        let b = h.to_bytes();
        let back = TraceHeader::from_bytes(&b);
        assert_eq!(back, h);
        assert!(back.check().is_ok());
        let mut bad = back;
        bad.version = 99;
        assert!(bad.check().unwrap_err().contains("version 99"));
        let mut bad = back;
        bad.magic = *b"NOTTRACE";
        assert!(bad.check().unwrap_err().contains("not a cktrace trace"));
        let mut bad = back;
        bad.records = 2000;
        assert!(bad.check().is_err());
        // Padding: its own bytes, and never more than the slots that are
        // not records.
        let mut h = back;
        (h.records, h.complete, h.padding) = (100, 90, 10);
        let b = TraceHeader::from_bytes(&h.to_bytes());
        assert_eq!((b.padding, b.check()), (10, Ok(())));
        assert_eq!(
            u64::from_le_bytes(h.to_bytes()[104..112].try_into().unwrap()),
            10
        );
        h.padding = 11;
        assert!(h.check().unwrap_err().contains("padding 11"));
        // Version 2: data_end has its own bytes and starts past the header
        // page; padding is never used.
        let mut p = back;
        p.version = VERSION_PACKED;
        assert!(p.check().unwrap_err().contains("data_end 0"));
        p.data_end = 8192;
        let b = TraceHeader::from_bytes(&p.to_bytes());
        assert_eq!((b.data_end, b.check()), (8192, Ok(())));
        p.padding = 1;
        assert!(p.check().is_err());
    }

    #[test]
    fn enums_roundtrip() {
        for p in KernelPath::ALL {
            assert_eq!(KernelPath::from_u8(*p as u8), Some(*p));
            assert_eq!(KernelPath::parse(p.as_str()), Some(*p));
        }
        assert_eq!(Op::from_u8(0), None);
    }
}
