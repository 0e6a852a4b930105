//! The trace file and the thread-local record blocks that feed it.
//!
//! Hot path: a hook takes the thread's block with [`with_writer`] once per
//! batch of events and appends records with [`Writer::push_words`] (a
//! record built as its sixteen words, in registers, as ggml's hook does),
//! or calls [`record`] for a single one. For a packed sink (format version
//! 2, the default) the record is packed word by word against the thread's
//! previous record into the block ([`crate::pack`]: about 19 bytes), whose
//! bytes after the chunk header's room are then the chunk's payload as it
//! goes to the disk; for a raw sink (version 1) it is stored whole into slot `len` with
//! non-temporal stores, so appending reads nothing from memory (the block,
//! 2 MiB and reused, would otherwise be fetched line by line, because the
//! weights the kernels stream evict it between records). A packed block is
//! one chunk: the writer seals it (header, hash, zeros to the page) and
//! writes it at bytes reserved on the header's `data_end`. The block's lock is
//! only ever contended by a flush at a decode boundary, when the engine's
//! workers are idle.
//!
//! A block goes into the file in one go: a lock-free reservation of slots on
//! the atomic cursor that lives in the shared mapping of the header, one
//! write of the records (each already marked VALID) into those slots, then
//! the header's `complete` counter. Records that do not fit are counted in
//! `dropped`, never silently lost. Blocks are handed over when full, by
//! [`flush_local`] (an engine calls it on each worker when the worker has
//! finished its part of a graph), when their thread exits, and by
//! [`flush_all`] after every decode step and at exit.
//!
//! Where the file system allows it (`O_DIRECT`: ext4, xfs, btrfs; not
//! tmpfs), the write is done by one writer thread per sink, straight from
//! the block to the disk, and the block comes back for reuse. Why: on the
//! VMs cktrace runs on, a write through the page cache costs a fresh page of
//! memory per 32 records, and a page the guest never touched before costs
//! the host several microseconds to back (measured: 18 ns per record
//! writing into recycled pages, 260-340 ns into fresh ones; a direct write
//! costs 9-15 ns per record of the writer's CPU and no page cache). Direct
//! writes must cover whole 4 KiB pages, so each reservation ends on a page
//! boundary and the rest of its last page is filled with padding slots
//! ([`flags::PAD`], counted in the header's `padding`). Where `O_DIRECT` is
//! not available (or `CKTRACE_TRACE_WRITE=buffered`), the flushing thread
//! writes through the page cache itself, with no padding.
//!
//! Steps are marked complete (`steps_done`) by the writer, after the records
//! of the step are in the file, so a process killed mid-decode leaves a file
//! whose header says how many records and steps are complete. Records never
//! straddle a page (the 256-byte header and the 128-byte records divide 4
//! KiB), so a write cut short by a kill ends between records, and a reader
//! after a crash sees only complete ones. Disk blocks are allocated
//! (`fallocate`) a 32 MiB window ahead of the cursor. A killed run leaves at
//! most that window allocated past its records; it reads as zeros, i.e. as
//! empty slots.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use memmap2::MmapMut;

use crate::format::{
    flags, Engine, RecordWords, TraceHeader, TraceRecord, HEADER_SIZE, RECORD_SIZE, RECORD_WORDS,
    VERSION_PACKED,
};
use crate::pack;

/// Records a thread buffers before it hands them to the file.
pub const LOCAL_CAPACITY: usize = 16384;

/// Records a thread buffers before it hands them over mid-graph (at most
/// [`LOCAL_CAPACITY`]; `CKTRACE_TRACE_BUFFER`, a diagnostic, lowers it).
static FLUSH_AT: AtomicUsize = AtomicUsize::new(LOCAL_CAPACITY);

/// Hand a thread's block over once it holds `n` records (1..=LOCAL_CAPACITY;
/// other values are clamped), instead of at LOCAL_CAPACITY.
pub fn set_flush_at(n: usize) {
    FLUSH_AT.store(n.clamp(1, LOCAL_CAPACITY), Ordering::Relaxed);
}

/// Header byte offsets of the counters updated while tracing.
const OFF_CAPACITY: usize = 24;
const OFF_RECORDS: usize = 32;
const OFF_COMPLETE: usize = 40;
const OFF_DROPPED: usize = 48;
const OFF_FINISHED: usize = 72;
const OFF_STEPS_DONE: usize = 88;
const OFF_STEPS_DONE_SLOTS: usize = 96;
const OFF_PADDING: usize = 104;
const OFF_DATA_END: usize = 112;

/// Whether new sinks pack their records (format version 2, the default)
/// or write fixed 128-byte slots (version 1).
static PACKED: AtomicBool = AtomicBool::new(true);

/// Make new sinks write packed records (version 2) or fixed slots
/// (version 1, `--trace-format raw`).
pub fn set_packed(on: bool) {
    PACKED.store(on, Ordering::Relaxed);
}

/// Bytes of the file that are mapped: the header's page. Records go in by
/// positioned writes, so the mapping never reaches a page the file may
/// lose when it is cut to its records, and reading a counter can never
/// fault.
const MAP_LEN: usize = 4096;

/// Bytes of a file page: the unit of a direct write.
const PAGE: usize = 4096;
/// Slots per page.
const PAGE_SLOTS: u64 = (PAGE / RECORD_SIZE) as u64;
/// The slot page 1 starts at (page 0 holds the header and slots 0..30);
/// every later page starts at a slot that is this modulo [`PAGE_SLOTS`].
const PAGE_PHASE: u64 = ((PAGE - HEADER_SIZE) / RECORD_SIZE) as u64;

/// Slots of a block: a full thread buffer plus room for a page of padding.
const BLOCK_SLOTS: usize = LOCAL_CAPACITY + PAGE_SLOTS as usize;
/// Blocks are aligned (and sized) for transparent huge pages; a direct
/// write needs 512 bytes.
const BLOCK_ALIGN: usize = 2 << 20;

/// Writes queued for the writer thread before a flushing thread waits.
const MAX_QUEUED: usize = 8;
/// Free blocks kept for reuse.
const MAX_FREE_BLOCKS: usize = 16;

/// The first slot at or after `slot` where a page starts.
fn page_start_at_or_after(slot: u64) -> u64 {
    if slot <= PAGE_PHASE {
        PAGE_PHASE
    } else {
        PAGE_PHASE + (slot - PAGE_PHASE).div_ceil(PAGE_SLOTS) * PAGE_SLOTS
    }
}

/// Slots whose disk blocks are allocated ahead of the cursor (32 MiB). A
/// positioned write into a hole of a sparse file makes ext4 reserve and
/// allocate blocks page by page; into blocks already allocated (unwritten
/// extents, which read as zeros) it only copies into the page cache.
/// Measured here on ext4: 29 ns per 128-byte record into a hole, 19 ns
/// into allocated blocks, and 0.2 ns per record for the `fallocate` itself.
const PREALLOC_BYTES: u64 = 32 << 20;

/// Counts reported at the end of a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records handed to [`record`] (or [`TraceSink::write`]).
    pub emitted: u64,
    /// Records in the file.
    pub written: u64,
    /// Records that did not fit, or whose write failed.
    pub dropped: u64,
    pub capacity: u64,
}

/// A thread's record buffer: [`BLOCK_SLOTS`] slots of zero-initialised,
/// 2 MiB-aligned memory, owned by one thread (or by the queue) at a time.
struct Block {
    ptr: NonNull<u8>,
}

const BLOCK_BYTES: usize = BLOCK_SLOTS * RECORD_SIZE;

/// Packed bytes a block holds before it is handed over: room is left for
/// the chunk header, one more record in the worst case and the zeros up to
/// the alignment.
const PACKED_CAP: usize =
    BLOCK_BYTES - pack::CHUNK_HEADER - pack::CHUNK_ALIGN - pack::MAX_PACKED - pack::PACK_SLACK;

fn block_layout() -> std::alloc::Layout {
    // BLOCK_ALIGN is a power of two and BLOCK_BYTES far below isize::MAX.
    std::alloc::Layout::from_size_align(BLOCK_BYTES, BLOCK_ALIGN).expect("block layout")
}

impl Block {
    fn new() -> Block {
        let layout = block_layout();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        // Best effort: huge pages make the direct write's page pinning
        // cheaper (measured 10.5 against 15 ns per record).
        // SAFETY: advice on memory we own; it changes no contents.
        unsafe { libc::madvise(p as *mut libc::c_void, BLOCK_BYTES, libc::MADV_HUGEPAGE) };
        Block { ptr }
    }

    /// Store `r` in slot `i` (a no-op past the block) with non-temporal
    /// stores: they go to memory without first reading the line. Call
    /// [`store_fence`] before anyone else reads the block.
    #[inline(always)]
    fn put(&mut self, i: usize, r: &TraceRecord) {
        // Callers hand a block over before it fills (LOCAL_CAPACITY plus a
        // page of padding fit), so this never drops a record.
        debug_assert!(i < BLOCK_SLOTS);
        if i >= BLOCK_SLOTS {
            return;
        }
        // SAFETY: slot i is inside the block (checked), 128-byte aligned
        // (the block is 2 MiB aligned), and `&mut self` is the only access.
        unsafe { stream_record(self.ptr.as_ptr().add(i * RECORD_SIZE), r) }
    }

    /// Pack `r` against `prev` at byte `at` of the block's chunk payload
    /// (which starts after the chunk header's room); returns its bytes.
    /// The caller keeps `at` at most [`PACKED_CAP`].
    #[inline(always)]
    fn pack(&mut self, at: usize, r: &RecordWords, prev: &mut RecordWords) -> usize {
        let start = (pack::CHUNK_HEADER + at).min(BLOCK_BYTES);
        pack::pack_words(r, prev, &mut self.bytes_mut()[start..])
    }

    /// All of the block, writable.
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the block is BLOCK_BYTES of initialised memory (zeroed at
        // allocation, then only ever overwritten), and `&mut self` is the
        // only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BLOCK_BYTES) }
    }

    /// Make the block's first `payload` packed bytes of `n` records (the
    /// first at `slot`) a chunk: write its header and zero it up to the
    /// alignment. Returns the chunk's length.
    fn seal(&mut self, slot: u64, n: u64, payload: usize) -> usize {
        pack::seal(self.bytes_mut(), slot, n as u32, payload)
    }

    /// The bytes of slots `0..n` (at most the whole block).
    fn bytes(&self, n: usize) -> &[u8] {
        let n = n.min(BLOCK_SLOTS);
        // SAFETY: the block is BLOCK_BYTES of initialised (zeroed at
        // allocation, then only ever overwritten with records) memory.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), n * RECORD_SIZE) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `Block::new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), block_layout()) }
    }
}

// SAFETY: a Block owns its memory exclusively (no aliases are handed out
// beyond borrows of the Block itself), so it can move between threads.
unsafe impl Send for Block {}

/// Copy one record to `dst` without reading `dst`'s cache lines.
///
/// # Safety
/// `dst` must be valid for writes of RECORD_SIZE bytes and 16-byte aligned.
#[inline(always)]
unsafe fn stream_record(dst: *mut u8, r: &TraceRecord) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let s = r as *const TraceRecord as *const __m128i;
        let d = dst as *mut __m128i;
        for k in 0..RECORD_SIZE / 16 {
            // SAFETY: SSE2 is part of x86-64; `s` points at the 128-byte
            // record, `d` at 128 writable, 16-aligned bytes (caller).
            unsafe { _mm_stream_si128(d.add(k), _mm_loadu_si128(s.add(k))) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: as above; the record is 128 plain bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(r as *const TraceRecord as *const u8, dst, RECORD_SIZE)
        };
    }
}

/// Order this thread's non-temporal stores before its later stores (the
/// unlock that hands a block to another thread).
#[inline(always)]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions (SSE is part of x86-64).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Free blocks, reused so that their pages stay backed and warm.
static FREE_BLOCKS: Mutex<Vec<Block>> = Mutex::new(Vec::new());

fn take_block() -> Block {
    let b = FREE_BLOCKS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    b.unwrap_or_else(Block::new)
}

/// Have `n` free blocks (at most [`MAX_FREE_BLOCKS`]) with their pages
/// touched, so that the first records of a trace do not pay for the memory.
fn prepare_blocks(n: usize) {
    let n = n.min(MAX_FREE_BLOCKS);
    let mut f = FREE_BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    while f.len() < n {
        let mut b = Block::new();
        for i in (0..BLOCK_SLOTS).step_by(PAGE_SLOTS as usize) {
            b.put(i, &TraceRecord::EMPTY);
        }
        f.push(b);
    }
    store_fence();
}

fn give_block(b: Block) {
    let mut f = FREE_BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if f.len() < MAX_FREE_BLOCKS {
        f.push(b);
    }
}

/// The record that fills a padding slot: zero but for the PAD flag.
const PAD_RECORD: TraceRecord = TraceRecord {
    flags: flags::PAD,
    // SAFETY: TraceRecord is plain integers and bytes; all zero is valid.
    ..unsafe { std::mem::zeroed() }
};

/// Work for the writer thread, done in order.
enum Job {
    /// Write slots `slot..slot + slots` from `block`; the first `n` are
    /// records, the rest padding. Packed: `payload` bytes of `n` packed
    /// records (`slots == n`), written as one chunk.
    Write {
        block: Block,
        slot: u64,
        n: u64,
        slots: u64,
        payload: Option<usize>,
    },
    /// Every write queued before this one is done: mark steps `0..steps`
    /// complete, their records being the slots below `slots`.
    Steps { steps: u32, slots: u64 },
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Set by `finish`: the writer drains the queue and exits; later jobs
    /// are refused.
    stopped: bool,
    /// The writer is doing a job it took off the queue.
    busy: bool,
}

/// The writer thread's queue.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job arrives or the queue stops.
    work: Condvar,
    /// Signalled when the writer finishes a job.
    done: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `job`, waiting while the queue is full; a stopped queue hands
    /// the job back.
    fn push(&self, job: Job) -> Result<(), Job> {
        let mut q = self.lock();
        while q.jobs.len() >= MAX_QUEUED && !q.stopped {
            q = self.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if q.stopped {
            return Err(job);
        }
        q.jobs.push_back(job);
        drop(q);
        self.work.notify_one();
        Ok(())
    }

    /// Wait until every job queued so far is done.
    fn drain(&self) {
        let mut q = self.lock();
        while !q.jobs.is_empty() || q.busy {
            q = self.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the sink and its writer thread share: the file, its header page,
/// and the counters that are not in the header.
struct Core {
    path: PathBuf,
    file: File,
    /// The same file opened with O_DIRECT, when the file system allows it.
    direct: Option<File>,
    /// Cleared if a direct write fails: the writes go through the page
    /// cache from then on.
    direct_ok: AtomicBool,
    /// The header page; lives (mapped) as long as the sink.
    map: MmapMut,
    capacity: u64,
    emitted: AtomicU64,
    start_mono_ns: u64,
    /// Set by [`TraceSink::finish`]: later writes are counted as dropped.
    closed: AtomicBool,
    /// Records are packed in chunks (format version 2).
    packed: bool,
    /// File bytes `0..allocated` have disk blocks (see [`PREALLOC_BYTES`]);
    /// `extending` is held by the one writer extending it; `prealloc` is
    /// cleared if the file system refuses.
    allocated: AtomicU64,
    extending: AtomicBool,
    prealloc: AtomicBool,
    /// The writer thread's queue, when writes are direct.
    queue: Option<Queue>,
    /// Tests make the next positioned write fail.
    #[cfg(test)]
    fail_next_write: AtomicBool,
}

/// The trace file. Its header page is mapped shared, so the counters that
/// writers advance survive the process being killed; records are written
/// with positioned writes into slots reserved on the header's cursor, by a
/// writer thread when writes are direct.
pub struct TraceSink {
    core: Arc<Core>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serializes `finish` with itself.
    finish_lock: Mutex<Option<SinkStats>>,
}

// SAFETY: the only field of Core that is not Send/Sync by itself is the
// mapping, which is plain shared memory owned by the core for its whole
// life (it is unmapped only when the last Arc of the core is dropped, i.e.
// when no reference to it exists). Through `&Core` the mapping is only
// accessed as atomics at 8-aligned header offsets (`counter`, `counter32`),
// so concurrent access from any number of threads is data-race free.
unsafe impl Send for Core {}
// SAFETY: as above.
unsafe impl Sync for Core {}

/// Monotonic clock in ns (CLOCK_MONOTONIC, the clock the ggml hooks use).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, ns (the writer thread's cost is CPU
/// taken from the engine's threads, not the time it waits for the disk).
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether to try direct writes (`CKTRACE_TRACE_WRITE=buffered` turns them
/// off; a diagnostic, and the path for file systems without O_DIRECT).
fn want_direct() -> bool {
    !matches!(
        std::env::var("CKTRACE_TRACE_WRITE").as_deref(),
        Ok("buffered")
    )
}

impl TraceSink {
    /// Create `path` with room for `capacity` records (a sparse file: space is
    /// only used as records are written).
    pub fn create(
        path: &Path,
        capacity: u64,
        engine: Engine,
        n_threads: u32,
    ) -> io::Result<Arc<TraceSink>> {
        Self::create_with(
            path,
            capacity,
            engine,
            n_threads,
            want_direct(),
            PACKED.load(Ordering::Relaxed),
        )
    }

    /// [`TraceSink::create`], saying whether to try direct writes and
    /// whether to pack the records (format version 2) or not (version 1).
    pub fn create_with(
        path: &Path,
        capacity: u64,
        engine: Engine,
        n_threads: u32,
        try_direct: bool,
        packed: bool,
    ) -> io::Result<Arc<TraceSink>> {
        let len = capacity
            .checked_mul(RECORD_SIZE as u64)
            .and_then(|b| b.checked_add(HEADER_SIZE as u64))
            .filter(|&l| l <= i64::MAX as u64)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a trace of {capacity} records does not fit in a file"),
                )
            })?;
        // A packed file grows with its chunks; a raw one is sized (sparse)
        // to its capacity.
        let len = if packed { pack::DATA_START } else { len };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(len)?;
        // SAFETY: we just created and sized the file (at least HEADER_SIZE
        // bytes; the page past its end, if any, reads as zero and is never
        // written through the map); nobody else maps it. Concurrent external
        // modification of the file would be a misuse we cannot prevent (as
        // with any mmap).
        let mut map = unsafe { memmap2::MmapOptions::new().len(MAP_LEN).map_mut(&file)? };
        let start_mono_ns = monotonic_ns();
        let start_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut h = TraceHeader::new(capacity, engine, n_threads, start_unix_ns, start_mono_ns);
        if packed {
            h.version = VERSION_PACKED;
            h.data_end = pack::DATA_START;
        }
        map[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
        let direct = if try_direct {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        let queue = direct.as_ref().map(|_| Queue::default());
        let core = Arc::new(Core {
            path: path.to_path_buf(),
            file,
            direct,
            direct_ok: AtomicBool::new(true),
            map,
            capacity,
            emitted: AtomicU64::new(0),
            start_mono_ns,
            closed: AtomicBool::new(false),
            packed,
            allocated: AtomicU64::new(if packed {
                pack::DATA_START
            } else {
                HEADER_SIZE as u64
            }),
            extending: AtomicBool::new(false),
            prealloc: AtomicBool::new(true),
            queue,
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
        });
        core.allocate_ahead(len.min(HEADER_SIZE as u64));
        prepare_blocks(n_threads as usize + 2);
        let writer = if core.queue.is_some() {
            let c = core.clone();
            Some(
                std::thread::Builder::new()
                    .name("cktrace-writer".into())
                    .spawn(move || c.writer_loop())?,
            )
        } else {
            None
        };
        Ok(Arc::new(TraceSink {
            core,
            writer: Mutex::new(writer),
            finish_lock: Mutex::new(None),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// CLOCK_MONOTONIC at trace start; records store time relative to it.
    pub fn start_mono_ns(&self) -> u64 {
        self.core.start_mono_ns
    }

    /// Whether records go to the disk directly, by the writer thread (with
    /// padding to whole pages), rather than through the page cache.
    pub fn is_direct(&self) -> bool {
        self.core.queue.is_some()
    }

    /// Copy `recs` into the file now: reserve slots, write, then publish.
    /// Returns how many were written. Records that do not fit, that arrive
    /// after [`TraceSink::finish`], or whose write fails are counted as
    /// dropped; a failed write leaves its slots without VALID and costs
    /// nothing else.
    pub fn write(&self, recs: &[TraceRecord]) -> usize {
        let mut written = 0;
        let packed = self.core.packed;
        for chunk in recs.chunks(LOCAL_CAPACITY) {
            let mut b = take_block();
            let mut bytes = 0;
            let mut prev = [0; RECORD_WORDS];
            for (i, r) in chunk.iter().enumerate() {
                if packed {
                    // LOCAL_CAPACITY records fit in a block packed too.
                    bytes += b.pack(bytes, &r.words(), &mut prev);
                } else {
                    b.put(i, r);
                }
            }
            store_fence();
            let payload = packed.then_some(bytes);
            let (n, b) = self.core.hand_over(b, chunk.len(), payload, false);
            written += n;
            if let Some(b) = b {
                give_block(b);
            }
        }
        written
    }

    pub fn stats(&self) -> SinkStats {
        self.core.stats()
    }

    /// Wait until the records handed over so far are in the file (with a
    /// writer thread; otherwise they already are).
    pub fn sync(&self) {
        if let Some(q) = &self.core.queue {
            q.drain();
        }
    }

    /// Steps `0..steps` are complete: their records are all in the file
    /// (call after [`flush_all`], with the engine's workers idle, and after
    /// the registry of those steps is on disk). A reader of a trace that was
    /// not finished checks those steps and reports the rest as partial.
    /// With a writer thread the header says so once the writes queued
    /// before have been done.
    pub fn mark_steps_done(&self, steps: u32) {
        let c = &self.core;
        let slots = c.counter(OFF_RECORDS).load(Ordering::Acquire);
        let refused = match &c.queue {
            Some(q) => q.push(Job::Steps { steps, slots }).is_err(),
            None => true,
        };
        if refused {
            c.set_steps_done(steps, slots);
        }
    }

    /// Mark the trace finished and cut the file to the slots reserved (every
    /// record written stays; a slot whose write failed stays, without
    /// VALID, and is counted in `dropped`). Idempotent: a second call
    /// returns the same stats. Writes after it are counted as dropped.
    pub fn finish(&self) -> io::Result<SinkStats> {
        let mut done = self.finish_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = *done {
            return Ok(st);
        }
        let c = &self.core;
        c.closed.store(true, Ordering::Release);
        self.stop_writer();
        let slots = c.counter(OFF_RECORDS).load(Ordering::Acquire);
        c.counter(OFF_CAPACITY).store(slots, Ordering::Release);
        c.counter32(OFF_FINISHED).store(1, Ordering::Release);
        c.map.flush()?;
        c.file.set_len(if c.packed {
            c.counter(OFF_DATA_END).load(Ordering::Acquire)
        } else {
            HEADER_SIZE as u64 + slots * RECORD_SIZE as u64
        })?;
        c.file.sync_all()?;
        let stats = c.stats();
        *done = Some(stats);
        Ok(stats)
    }

    /// Let the writer thread finish the queued writes, then stop it.
    fn stop_writer(&self) {
        if let Some(q) = &self.core.queue {
            q.lock().stopped = true;
            q.work.notify_all();
            q.done.notify_all();
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for TraceSink {
    /// A sink dropped without `finish` still writes what was queued (the
    /// trace then reads as unfinished, like one of a killed process).
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl Core {
    /// Keep disk blocks allocated at least half a window past file byte
    /// `end` (one writer extends at a time; the others go on without
    /// waiting). A file system that cannot (no `fallocate`, or no space to
    /// reserve) is left sparse: writes then allocate as they go, as before.
    /// A raw file is allocated within its size; a packed one past its end,
    /// keeping the size, so that the file's length is what was written.
    fn allocate_ahead(&self, end: u64) {
        if !self.prealloc.load(Ordering::Relaxed)
            || end + PREALLOC_BYTES / 2 <= self.allocated.load(Ordering::Acquire)
            || self.extending.swap(true, Ordering::Acquire)
        {
            return;
        }
        let have = self.allocated.load(Ordering::Acquire);
        let mut to = (end + PREALLOC_BYTES).max(have + PREALLOC_BYTES);
        if !self.packed {
            to = to.min(HEADER_SIZE as u64 + self.capacity * RECORD_SIZE as u64);
        }
        if to > have {
            use std::os::fd::AsRawFd;
            let mode = if self.packed {
                libc::FALLOC_FL_KEEP_SIZE
            } else {
                0
            };
            // SAFETY: fallocate on our own open descriptor (mode 0 within
            // the file's size, KEEP_SIZE past it: blocks are allocated,
            // the data reads as zeros, the size is unchanged).
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode,
                    have as libc::off_t,
                    (to - have) as libc::off_t,
                )
            };
            if r == 0 {
                self.allocated.store(to, Ordering::Release);
            } else {
                self.prealloc.store(false, Ordering::Relaxed);
            }
        }
        self.extending.store(false, Ordering::Release);
    }

    fn counter(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= HEADER_SIZE);
        // SAFETY: `off` is one of the 8-aligned header counter offsets, inside
        // the mapping (page aligned), which lives as long as `self`.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    fn counter32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= HEADER_SIZE);
        // SAFETY: as in `counter`, for a 4-aligned u32 field.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            emitted: self.emitted.load(Ordering::Relaxed),
            written: self.counter(OFF_COMPLETE).load(Ordering::Acquire),
            dropped: self.counter(OFF_DROPPED).load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }

    fn set_steps_done(&self, steps: u32, slots: u64) {
        self.counter(OFF_STEPS_DONE_SLOTS)
            .store(slots, Ordering::Release);
        self.counter32(OFF_STEPS_DONE)
            .store(steps, Ordering::Release);
    }

    fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.counter(OFF_DROPPED).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Hand over the first `n` records of `block` (its non-temporal stores
    /// fenced): reserve slots and write them, or queue them for the writer
    /// thread when `queue` allows. Returns the records written (or queued)
    /// and the block, unless the queue took it.
    /// `payload` is the packed bytes when the block holds packed records.
    fn hand_over(
        &self,
        mut block: Block,
        n: usize,
        mut payload: Option<usize>,
        queue: bool,
    ) -> (usize, Option<Block>) {
        if n == 0 {
            return (0, Some(block));
        }
        let n = n.min(LOCAL_CAPACITY) as u64;
        self.emitted.fetch_add(n, Ordering::Relaxed);
        if self.closed.load(Ordering::Acquire) || payload.is_some() != self.packed {
            // (Records packed for another kind of sink cannot happen: the
            // buffers are flushed before a sink is replaced.)
            self.count_dropped(n);
            return (0, Some(block));
        }
        let direct = self.queue.is_some();
        let cursor = self.counter(OFF_RECORDS);
        let mut cur = cursor.load(Ordering::Relaxed);
        let (take, end) = loop {
            let take = self.capacity.saturating_sub(cur).min(n);
            if take == 0 {
                break (0, cur);
            }
            // Direct raw writes end on a page boundary (or at the capacity);
            // packed chunks are aligned in the file instead.
            let end = if direct && !self.packed {
                page_start_at_or_after(cur + take).min(self.capacity)
            } else {
                cur + take
            };
            match cursor.compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break (take, end),
                Err(now) => cur = now,
            }
        };
        self.count_dropped(n - take);
        if take == 0 {
            return (0, Some(block));
        }
        if let Some(p) = payload.as_mut().filter(|_| take < n) {
            // Only the first `take` records fit: cut the packed stream.
            let b = block.bytes_mut();
            let bytes = &b[pack::CHUNK_HEADER..pack::CHUNK_HEADER + *p];
            *p = pack::skip(bytes, take as usize).unwrap_or(*p);
        }
        for i in take..end - cur {
            block.put(i as usize, &PAD_RECORD);
        }
        store_fence();
        if !self.packed {
            self.allocate_ahead(HEADER_SIZE as u64 + end * RECORD_SIZE as u64);
        }
        let slots = end - cur;
        if queue {
            if let Some(q) = &self.queue {
                let job = Job::Write {
                    block,
                    slot: cur,
                    n: take,
                    slots,
                    payload,
                };
                let r = timed_handover(take, || q.push(job));
                return match r {
                    Ok(()) => (take as usize, None),
                    Err(Job::Write { block, .. }) => {
                        // Stopped meanwhile: the slots stay without VALID.
                        self.count_dropped(take);
                        (0, Some(block))
                    }
                    Err(Job::Steps { .. }) => unreachable!("a write was pushed"),
                };
            }
        }
        let ok = timed_handover(take, || {
            self.write_job(&mut block, cur, take, slots, payload)
        });
        (if ok { take as usize } else { 0 }, Some(block))
    }

    /// Write slots `slot..slot + slots` from `block` (`n` records, then
    /// padding) and publish them. Whole pages go to the disk directly when
    /// the file system allows it; the rest (the header's page, a page cut
    /// by the capacity) through the page cache. A failed write counts its
    /// records as dropped and leaves its slots without VALID.
    fn write_job(
        &self,
        block: &mut Block,
        slot: u64,
        n: u64,
        slots: u64,
        payload: Option<usize>,
    ) -> bool {
        if let Some(p) = payload {
            return self.write_packed(&mut [(block, slot, n, p)]);
        }
        let bytes = block.bytes(slots as usize);
        let off = HEADER_SIZE as u64 + slot * RECORD_SIZE as u64;
        let res = self.write_at(bytes, off);
        match res {
            Ok(()) => {
                self.publish(n, slots - n);
                true
            }
            Err(_) => {
                // The slots stay reserved but hold no VALID record; the
                // records count as dropped so the loss is visible, and
                // every other record stays in the file.
                self.count_dropped(n);
                false
            }
        }
    }

    fn write_at(&self, bytes: &[u8], off: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        use std::os::unix::fs::FileExt;
        let whole = if off % PAGE as u64 == 0 && (bytes.as_ptr() as usize) % 512 == 0 {
            bytes.len() / PAGE * PAGE
        } else {
            0
        };
        if whole > 0 && self.direct_ok.load(Ordering::Relaxed) {
            if let Some(d) = &self.direct {
                match d.write_all_at(&bytes[..whole], off) {
                    Ok(()) => {
                        return if whole < bytes.len() {
                            self.file.write_all_at(&bytes[whole..], off + whole as u64)
                        } else {
                            Ok(())
                        };
                    }
                    // A direct write the file system refuses is done through
                    // the page cache, and so are the later ones.
                    Err(_) => self.direct_ok.store(false, Ordering::Relaxed),
                }
            }
        }
        self.file.write_all_at(bytes, off)
    }

    /// The writer thread: does the queued jobs in order until the queue is
    /// stopped and empty.
    fn writer_loop(&self) {
        let Some(q) = &self.queue else {
            return;
        };
        loop {
            // The next job, and the writes queued right behind it that
            // continue it in the file (the blocks of one handover): they go
            // to the disk in one call.
            let mut run: Vec<Job> = Vec::new();
            {
                let mut s = q.lock();
                loop {
                    if let Some(j) = s.jobs.pop_front() {
                        s.busy = true;
                        run.push(j);
                        break;
                    }
                    if s.stopped {
                        return;
                    }
                    s = q.work.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                while run.len() < MAX_QUEUED {
                    let end = match run.last() {
                        Some(Job::Write { slot, slots, .. }) => slot + slots,
                        _ => break,
                    };
                    // Packed chunks follow each other in the file whatever
                    // their slots.
                    match s.jobs.front() {
                        Some(Job::Write { slot, .. }) if *slot == end || self.packed => {}
                        _ => break,
                    }
                    if let Some(j) = s.jobs.pop_front() {
                        run.push(j);
                    }
                }
            }
            let t = if profiling() { thread_cpu_ns() } else { 0 };
            let mut recs = 0;
            if run.len() > 1 && self.write_run(&mut run) {
                for j in &run {
                    if let Job::Write { n, .. } = j {
                        recs += n;
                    }
                }
            } else {
                for j in &mut run {
                    match j {
                        Job::Write {
                            block,
                            slot,
                            n,
                            slots,
                            payload,
                        } => {
                            self.write_job(block, *slot, *n, *slots, *payload);
                            recs += *n;
                        }
                        Job::Steps { steps, slots } => self.set_steps_done(*steps, *slots),
                    }
                }
            }
            if t != 0 {
                COST_WRITER_NS.fetch_add(thread_cpu_ns() - t, Ordering::Relaxed);
                COST_WRITER_RECS.fetch_add(recs, Ordering::Relaxed);
            }
            for j in run {
                if let Job::Write { block, .. } = j {
                    give_block(block);
                }
            }
            q.lock().busy = false;
            q.done.notify_all();
        }
    }

    /// Write consecutive jobs (each continuing the previous one in the
    /// file) with one direct `pwritev`, and publish them. False, having
    /// written nothing, if they cannot go that way (then each is written by
    /// itself).
    fn write_run(&self, run: &mut [Job]) -> bool {
        if self.packed {
            let mut jobs: Vec<(&mut Block, u64, u64, usize)> = Vec::with_capacity(run.len());
            for j in run.iter_mut() {
                match j {
                    Job::Write {
                        block,
                        slot,
                        n,
                        payload: Some(p),
                        ..
                    } => jobs.push((block, *slot, *n, *p)),
                    _ => return false,
                }
            }
            self.write_packed(&mut jobs);
            return true;
        }
        let Some(d) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_ok.load(Ordering::Relaxed))
        else {
            return false;
        };
        let mut iov = Vec::with_capacity(run.len());
        let mut first = None;
        let (mut n_recs, mut n_pad) = (0, 0);
        for j in run.iter() {
            let Job::Write {
                block,
                slot,
                n,
                slots,
                ..
            } = j
            else {
                return false;
            };
            let bytes = block.bytes(*slots as usize);
            let off = HEADER_SIZE as u64 + slot * RECORD_SIZE as u64;
            if off % PAGE as u64 != 0 || bytes.len() % PAGE != 0 {
                return false;
            }
            first.get_or_insert(off);
            iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            n_recs += n;
            n_pad += slots - n;
        }
        let Some(mut off) = first else {
            return false;
        };
        #[cfg(test)]
        if self.fail_next_write.load(Ordering::Relaxed) {
            return false;
        }
        // Write all of it, resuming after a short write.
        let (mut i, mut skip) = (0usize, 0usize);
        while i < iov.len() {
            let mut part: Vec<libc::iovec> = iov[i..].to_vec();
            part[0].iov_base = (part[0].iov_base as usize + skip) as *mut libc::c_void;
            part[0].iov_len -= skip;
            let r = pwritev(d, &part, off);
            if r <= 0 {
                if i == 0 && skip == 0 {
                    // Nothing written: each job goes by itself.
                    return false;
                }
                // Part written: write the rest job by job through the page
                // cache (a short write ends on a page, so no record is cut).
                self.direct_ok.store(false, Ordering::Relaxed);
                let rest: Vec<u8> = part
                    .iter()
                    // SAFETY: as above.
                    .flat_map(|v| unsafe {
                        std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                    })
                    .copied()
                    .collect();
                use std::os::unix::fs::FileExt;
                if self.file.write_all_at(&rest, off).is_err() {
                    // Count the run as failed: nothing of it is published.
                    self.count_dropped(n_recs);
                    return true;
                }
                break;
            }
            let mut w = r as usize;
            off += w as u64;
            while w > 0 && i < iov.len() {
                let left = iov[i].iov_len - skip;
                if w >= left {
                    w -= left;
                    i += 1;
                    skip = 0;
                } else {
                    skip += w;
                    w = 0;
                }
            }
        }
        self.publish(n_recs, n_pad);
        true
    }

    /// Write the packed records of `jobs` (a block, the slot of its first
    /// record, its records, their packed bytes), each block sealed as one
    /// chunk, back to back with one positioned write at bytes reserved on
    /// the header's data cursor; then publish them. A failed write counts
    /// its records as dropped (their slots stay empty) and leaves zeros or
    /// damaged chunks, which readers skip.
    fn write_packed(&self, jobs: &mut [(&mut Block, u64, u64, usize)]) -> bool {
        let mut spans = Vec::with_capacity(jobs.len());
        let mut recs = 0;
        for (b, slot, n, p) in jobs.iter_mut() {
            spans.push(b.seal(*slot, *n, *p));
            recs += *n;
        }
        let len: usize = spans.iter().sum();
        let off = self
            .counter(OFF_DATA_END)
            .fetch_add(len as u64, Ordering::AcqRel);
        self.allocate_ahead(off + len as u64);
        let parts: Vec<&[u8]> = jobs
            .iter()
            .zip(&spans)
            .map(|((b, ..), &span)| &b.bytes(BLOCK_SLOTS)[..span])
            .collect();
        match self.write_parts(&parts, off) {
            Ok(()) => {
                self.publish(recs, 0);
                true
            }
            Err(_) => {
                self.count_dropped(recs);
                false
            }
        }
    }

    /// Write `parts` (whole pages, page-aligned memory) one after another
    /// at `off`: one direct `pwritev` where the file system allows it, else
    /// part by part through the page cache.
    fn write_parts(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        if let [one] = parts {
            return self.write_at(one, off);
        }
        if let Some(d) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_ok.load(Ordering::Relaxed))
        {
            let iov: Vec<libc::iovec> = parts
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect();
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let r = pwritev(d, &iov, off);
            if r >= 0 && r as usize == total {
                return Ok(());
            }
            // Refused or short: the parts go through the page cache (a
            // chunk rewritten whole is the same bytes).
            self.direct_ok.store(false, Ordering::Relaxed);
        }
        let mut at = off;
        for p in parts {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(p, at)?;
            at += p.len() as u64;
        }
        Ok(())
    }

    /// `recs` records and `pad` padding slots are in the file.
    fn publish(&self, recs: u64, pad: u64) {
        self.counter(OFF_COMPLETE)
            .fetch_add(recs, Ordering::Release);
        if pad > 0 {
            self.counter(OFF_PADDING).fetch_add(pad, Ordering::Relaxed);
        }
    }
}

/// One `pwritev` of `iov` at `off` (its result: bytes written, or < 0).
/// Every iovec must point into memory borrowed for the call (the blocks of
/// the jobs being written), which the callers' types guarantee.
fn pwritev(f: &File, iov: &[libc::iovec], off: u64) -> isize {
    use std::os::fd::AsRawFd;
    // SAFETY: every iovec points into a block borrowed by the caller for
    // this call (its bytes are initialised); the fd is our own.
    unsafe {
        libc::pwritev(
            f.as_raw_fd(),
            iov.as_ptr(),
            iov.len().min(libc::c_int::MAX as usize) as libc::c_int,
            off as libc::off_t,
        )
    }
}

/// One thread's pending records: `len` records in its block, as slots
/// `0..len` or, when `packed`, as `bytes` packed bytes after the room for
/// the chunk header (`prev` is the last record packed).
struct LocalBuf {
    block: Option<Block>,
    len: usize,
    packed: bool,
    bytes: usize,
    prev: RecordWords,
}

impl LocalBuf {
    fn new() -> LocalBuf {
        LocalBuf {
            block: None,
            len: 0,
            packed: false,
            bytes: 0,
            prev: [0; RECORD_WORDS],
        }
    }

    /// Append `r` (complete, VALID); true when the block should be handed
    /// over now.
    #[inline(always)]
    fn push(&mut self, r: &RecordWords) -> bool {
        let b = self.block.get_or_insert_with(take_block);
        if self.len == 0 {
            // A new chunk: packed as the active sink wants, against zeros.
            self.packed = ACTIVE_PACKED.load(Ordering::Relaxed);
            self.bytes = 0;
            self.prev = [0; RECORD_WORDS];
        }
        if self.packed {
            self.bytes += b.pack(self.bytes, r, &mut self.prev);
            self.len += 1;
            self.bytes > PACKED_CAP || self.len >= FLUSH_AT.load(Ordering::Relaxed)
        } else {
            b.put(self.len, &TraceRecord::from_words(*r));
            self.len += 1;
            self.len >= FLUSH_AT.load(Ordering::Relaxed)
        }
    }

    /// The packed bytes, if the block holds packed records.
    fn payload(&self) -> Option<usize> {
        self.packed.then_some(self.bytes)
    }
}

impl LocalBuf {
    /// Hand the buffered records to `sink` (dropped, uncounted, if there is
    /// none: no trace is being written).
    fn flush_into(&mut self, sink: Option<&TraceSink>) {
        if self.len == 0 {
            return;
        }
        let payload = self.payload();
        let n = std::mem::take(&mut self.len);
        let Some(b) = self.block.take() else {
            return;
        };
        store_fence();
        self.block = match sink {
            Some(s) => s.core.hand_over(b, n, payload, true).1,
            None => Some(b),
        };
    }
}

/// The sink records currently go to (null when tracing is off). Holds one
/// strong count of the Arc it was made from.
static ACTIVE: AtomicPtr<TraceSink> = AtomicPtr::new(std::ptr::null_mut());
/// Whether the active sink packs its records (see [`LocalBuf::push`]).
static ACTIVE_PACKED: AtomicBool = AtomicBool::new(false);

/// Where the tracer's time goes, measured in place (`cktrace bench trace`
/// turns it on for one run): nanoseconds spent building records in a hook,
/// handing them over (or writing them) on the engine's threads, writing
/// them on the writer thread, and the records each covers. Off, it costs
/// one relaxed load per batch.
static PROFILING: AtomicBool = AtomicBool::new(false);
static COST_BUILD_NS: AtomicU64 = AtomicU64::new(0);
static COST_BUILD_RECS: AtomicU64 = AtomicU64::new(0);
static COST_WRITE_NS: AtomicU64 = AtomicU64::new(0);
static COST_WRITE_RECS: AtomicU64 = AtomicU64::new(0);
static COST_WRITER_NS: AtomicU64 = AtomicU64::new(0);
static COST_WRITER_RECS: AtomicU64 = AtomicU64::new(0);

/// In-place costs since profiling was turned on (see [`set_profiling`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    /// ns inside the engine's hook building records (clock readings of the
    /// hook's entry and exit, per batch), and the records built.
    pub build_ns: u64,
    pub build_recs: u64,
    /// ns the engine's threads spent handing records over: queueing them
    /// for the writer thread, or (without one) the positioned writes.
    pub write_ns: u64,
    pub write_recs: u64,
    /// CPU ns the writer thread spent writing, and the records it wrote.
    pub writer_ns: u64,
    pub writer_recs: u64,
}

/// Turn in-place cost measurement on or off; turning it on zeroes the counts.
pub fn set_profiling(on: bool) {
    if on {
        for c in [
            &COST_BUILD_NS,
            &COST_BUILD_RECS,
            &COST_WRITE_NS,
            &COST_WRITE_RECS,
            &COST_WRITER_NS,
            &COST_WRITER_RECS,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
    PROFILING.store(on, Ordering::Relaxed);
}

/// Whether in-place costs are being measured.
#[inline]
pub fn profiling() -> bool {
    PROFILING.load(Ordering::Relaxed)
}

thread_local! {
    /// This thread's write time while profiling, so that a hook can take
    /// the writes it triggered out of its building time.
    static THREAD_WRITE_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `f`, a handover of `recs` records on an engine's thread, counting
/// its time while profiling.
fn timed_handover<R>(recs: u64, f: impl FnOnce() -> R) -> R {
    if !profiling() {
        return f();
    }
    let t = monotonic_ns();
    let r = f();
    let d = monotonic_ns() - t;
    let _ = THREAD_WRITE_NS.try_with(|c| c.set(c.get() + d));
    COST_WRITE_NS.fetch_add(d, Ordering::Relaxed);
    COST_WRITE_RECS.fetch_add(recs, Ordering::Relaxed);
    r
}

/// This thread's time in positioned writes while profiling.
pub fn thread_write_ns() -> u64 {
    THREAD_WRITE_NS.try_with(|c| c.get()).unwrap_or(0)
}

/// Add a hook's building time (an engine calls this when profiling).
pub fn add_build_cost(ns: u64, recs: u64) {
    COST_BUILD_NS.fetch_add(ns, Ordering::Relaxed);
    COST_BUILD_RECS.fetch_add(recs, Ordering::Relaxed);
}

/// The costs measured since [`set_profiling`] turned measurement on.
pub fn costs() -> Costs {
    Costs {
        build_ns: COST_BUILD_NS.load(Ordering::Relaxed),
        build_recs: COST_BUILD_RECS.load(Ordering::Relaxed),
        write_ns: COST_WRITE_NS.load(Ordering::Relaxed),
        write_recs: COST_WRITE_RECS.load(Ordering::Relaxed),
        writer_ns: COST_WRITER_NS.load(Ordering::Relaxed),
        writer_recs: COST_WRITER_RECS.load(Ordering::Relaxed),
    }
}
/// The buffer of every live thread that has recorded, so a flush can reach
/// them all (a thread removes its own when it exits).
static BUFFERS: Mutex<Vec<Arc<Mutex<LocalBuf>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Threads inside [`with_active`] right now. `uninstall` waits for it to
/// reach zero after detaching the sink, so it never hands back (to be
/// dropped) a sink that a thread is still using.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// Direct records to `sink`, replacing (and returning) any previous one.
pub fn install(sink: Arc<TraceSink>) -> Option<Arc<TraceSink>> {
    ACTIVE_PACKED.store(sink.core.packed, Ordering::Relaxed);
    let p = Arc::into_raw(sink) as *mut TraceSink;
    let old = ACTIVE.swap(p, Ordering::SeqCst);
    retire(old)
}

/// Stop recording: flush every buffer into the current sink and detach it.
/// Returns the sink so the caller can [`TraceSink::finish`] it. When this
/// returns, no thread is using the sink through the hooks any more.
pub fn uninstall() -> Option<Arc<TraceSink>> {
    flush_all();
    let p = ACTIVE.swap(std::ptr::null_mut(), Ordering::SeqCst);
    retire(p)
}

/// Take back the strong count `ACTIVE` held on `p`, once no thread can be
/// using it.
fn retire(p: *mut TraceSink) -> Option<Arc<TraceSink>> {
    if p.is_null() {
        return None;
    }
    // A reader that loaded `p` incremented READERS first (SeqCst on both
    // sides), so once READERS is seen at zero after the swap, no borrow of
    // `p` is live and none can start.
    while READERS.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
        std::thread::yield_now();
    }
    // SAFETY: `p` came from Arc::into_raw in `install` and was removed from
    // ACTIVE by the swap above, so this is the one place that takes its
    // strong count back.
    Some(unsafe { Arc::from_raw(p) })
}

fn with_active<R>(f: impl FnOnce(Option<&TraceSink>) -> R) -> R {
    READERS.fetch_add(1, Ordering::SeqCst);
    let p = ACTIVE.load(Ordering::SeqCst);
    let r = if p.is_null() {
        f(None)
    } else {
        // SAFETY: ACTIVE held a strong count on `p` when we loaded it, and
        // `retire` does not drop that count while READERS (which we raised
        // before the load) is non-zero.
        f(Some(unsafe { &*p }))
    };
    READERS.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Whether a sink is installed.
pub fn active() -> bool {
    !ACTIVE.load(Ordering::Relaxed).is_null()
}

/// Append one record to the calling thread's buffer. Never allocates after
/// the thread's first record; never panics (a call during thread teardown is
/// counted as emitted and dropped).
pub fn record(mut rec: TraceRecord) {
    rec.flags |= flags::VALID;
    record_words(&rec.words());
}

/// Append a complete record given as its words (VALID set). Otherwise as
/// [`record`].
#[inline]
pub fn record_words(r: &RecordWords) {
    if with_writer(|w| w.push_words(r)).is_none() {
        count_dropped(1);
    }
}

/// The calling thread's buffer, held for a batch of records (the hot path of
/// the hooks: one lock per batch, one packed record per push).
pub struct Writer<'a> {
    g: MutexGuard<'a, LocalBuf>,
}

impl Writer<'_> {
    /// Append a complete record given as its words (VALID set by the
    /// caller): for a record built in registers, which goes into the block
    /// without passing through memory first.
    #[inline]
    pub fn push_words(&mut self, r: &RecordWords) {
        if self.g.push(r) {
            self.flush();
        }
    }

    /// Hand the buffered records over to the file now.
    pub fn flush(&mut self) {
        let g = &mut *self.g;
        with_active(|s| g.flush_into(s));
    }
}

impl Drop for Writer<'_> {
    /// The block's non-temporal stores are fenced before the lock is
    /// released, so whoever takes the lock next (a flush at a decode
    /// boundary) sees them.
    fn drop(&mut self) {
        store_fence();
    }
}

/// Hand the calling thread's buffered records over to the file. An engine
/// calls this on each of its workers when the worker has finished its part
/// of a graph, so the records of a graph are on their way to the file when
/// the decode returns.
pub fn flush_local() {
    with_writer(|w| w.flush());
}

/// Run `f` with this thread's buffer. `None` during thread teardown, when the
/// buffer is gone: the caller must then count its records with
/// [`count_dropped`].
///
/// The buffer (and the lock on it) cannot outlive the call: a writer that
/// tries to keep it does not compile.
///
/// ```compile_fail
/// let kept = cktrace_tracer::sink::with_writer(|w| w);
/// ```
///
/// Nor can a sink be used after it was finished or detached: the API hands
/// out only `Arc`s, `finish` keeps the header mapped for the sink's life,
/// and a late write is counted, not performed.
///
/// ```
/// use cktrace_tracer::{sink, Engine, TraceRecord};
/// let dir = std::env::temp_dir().join(format!("cktrace-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let s = sink::TraceSink::create(&dir.join("t.bin"), 10, Engine::Ggml, 1).unwrap();
/// let first = s.finish().unwrap();
/// assert_eq!(s.finish().unwrap(), first); // a second finish changes nothing
/// assert_eq!(s.write(&[TraceRecord::default()]), 0); // a late write is dropped...
/// assert_eq!(s.stats().dropped, 1); // ...and counted
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[inline]
pub fn with_writer<R>(f: impl FnOnce(&mut Writer) -> R) -> Option<R> {
    LOCAL
        .try_with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            let buf = slot.get_or_insert_with(new_local);
            let mut w = Writer {
                g: buf.lock().unwrap_or_else(|e| e.into_inner()),
            };
            Some(f(&mut w))
        })
        .ok()
        .flatten()
}

/// Count `n` records as emitted and dropped (they could not be buffered).
pub fn count_dropped(n: u64) {
    with_active(|s| {
        if let Some(s) = s {
            s.core.emitted.fetch_add(n, Ordering::Relaxed);
            s.core.count_dropped(n);
        }
    });
}

/// A thread's handle on its buffer. When the thread exits, its records go
/// into the file and the buffer leaves [`BUFFERS`] (an engine that starts
/// threads per computation would otherwise leave one buffer per thread
/// behind, and every flush would walk them all).
struct Local(Arc<Mutex<LocalBuf>>);

impl std::ops::Deref for Local {
    type Target = Mutex<LocalBuf>;
    fn deref(&self) -> &Mutex<LocalBuf> {
        &self.0
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            with_active(|s| g.flush_into(s));
            if let Some(b) = g.block.take() {
                give_block(b);
            }
        }
        BUFFERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

/// A new thread buffer, registered so that [`flush_all`] reaches it.
#[cold]
fn new_local() -> Local {
    let b = Arc::new(Mutex::new(LocalBuf::new()));
    BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(b.clone());
    Local(b)
}

/// How long records may wait in the threads' blocks between handovers
/// at step boundaries ([`handover_due`]).
pub const HANDOVER_INTERVAL_NS: u64 = 50_000_000;

/// CLOCK_MONOTONIC of the last [`flush_all`].
static LAST_FLUSH_NS: AtomicU64 = AtomicU64::new(0);

/// Whether an engine, at a step boundary, should hand every block over
/// ([`flush_all`]) and mark the steps so far complete: once
/// [`HANDOVER_INTERVAL_NS`] have passed since the last time. In between,
/// records stay in the blocks (a block that fills is handed over by its
/// thread at once), so each write to the disk is large: a direct write
/// costs the writer thread about 40 us of CPU whatever its size, as much
/// as writing 2,000 records. A process killed between handovers loses at
/// most the records of that interval and of the writes still queued.
/// Without a writer thread (writes through the page cache, by the thread
/// that hands records over) it is always due: each thread writes its own
/// records at the end of each graph ([`flush_local`]) and the rest goes at
/// every step boundary, so no thread writes a long interval's worth alone.
pub fn handover_due() -> bool {
    !direct_active()
        || monotonic_ns().saturating_sub(LAST_FLUSH_NS.load(Ordering::Relaxed))
            >= HANDOVER_INTERVAL_NS
}

/// Whether the installed sink writes by its writer thread (see
/// [`TraceSink::is_direct`]); false when none is installed.
pub fn direct_active() -> bool {
    with_active(|s| s.is_some_and(|s| s.is_direct()))
}

/// Hand every thread's pending records over to the sink. Call when the
/// engine's workers are idle (at a step boundary, and at exit).
pub fn flush_all() {
    LAST_FLUSH_NS.store(monotonic_ns(), Ordering::Relaxed);
    let bufs: Vec<_> = BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for b in bufs {
        let mut g = b.lock().unwrap_or_else(|e| e.into_inner());
        with_active(|s| g.flush_into(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TraceHeader;

    fn rec(i: u64) -> TraceRecord {
        TraceRecord {
            t_ns: i,
            row0: i as u32,
            row1: i as u32 + 1,
            ..Default::default()
        }
    }

    fn sink_stats() -> SinkStats {
        with_active(|s| {
            let s = s.unwrap();
            s.sync();
            s.stats()
        })
    }

    fn header(path: &Path) -> TraceHeader {
        let b = std::fs::read(path).unwrap();
        TraceHeader::from_bytes(b[..HEADER_SIZE].try_into().unwrap())
    }

    /// Tests of the process-global install state take this lock.
    static GLOBAL: Mutex<()> = Mutex::new(());

    /// How a test sink writes: through the page cache or direct (where the
    /// test's file system allows it; the test says which it got), packed
    /// (version 2) or in fixed slots (version 1).
    #[derive(Clone, Copy, Debug)]
    struct Mode {
        direct: bool,
        packed: bool,
    }

    /// Every way of writing.
    const MODES: [Mode; 4] = [
        Mode {
            direct: false,
            packed: true,
        },
        Mode {
            direct: true,
            packed: true,
        },
        Mode {
            direct: false,
            packed: false,
        },
        Mode {
            direct: true,
            packed: false,
        },
    ];

    fn create(p: &Path, cap: u64, threads: u32, m: Mode) -> Arc<TraceSink> {
        let direct = m.direct;
        let s = TraceSink::create_with(p, cap, Engine::Ggml, threads, direct, m.packed).unwrap();
        if direct && !s.is_direct() {
            eprintln!(
                "note: no O_DIRECT on {}: both runs write through the page cache",
                p.display()
            );
        }
        s
    }

    /// Every slot of the file: a record, padding, or empty.
    #[derive(Debug, PartialEq)]
    enum Slot {
        Rec(TraceRecord),
        Pad,
        Empty,
    }

    /// The slots of a file, unpacked if it is packed (then as many as the
    /// header reserves; damaged chunks fail the test).
    fn read_slots(path: &Path) -> Vec<Slot> {
        let mut b = std::fs::read(path).unwrap();
        let h = TraceHeader::from_bytes(b[..HEADER_SIZE].try_into().unwrap());
        if h.is_packed() {
            assert_eq!(h.data_end, b.len() as u64, "a packed file ends at data_end");
            let scan = pack::scan(&b);
            assert_eq!(scan.problems, Vec::<String>::new());
            let mut img = vec![0u8; HEADER_SIZE + h.records as usize * RECORD_SIZE];
            let (_, problems) = pack::unpack_into(&b, &scan.chunks, &mut img[HEADER_SIZE..]);
            assert_eq!(problems, Vec::<String>::new());
            b = img;
        }
        b[HEADER_SIZE..]
            .chunks_exact(RECORD_SIZE)
            .map(|c| {
                let r = TraceRecord::from_bytes(c.try_into().unwrap());
                if r.flags & flags::VALID != 0 {
                    assert_eq!(r.flags & flags::PAD, 0, "a record flagged as padding");
                    Slot::Rec(r)
                } else if r == PAD_RECORD {
                    Slot::Pad
                } else {
                    assert!(
                        c.iter().all(|&b| b == 0),
                        "a slot that is neither record, padding nor empty: {r:?}"
                    );
                    Slot::Empty
                }
            })
            .collect()
    }

    fn records_in(slots: &[Slot]) -> Vec<TraceRecord> {
        slots
            .iter()
            .filter_map(|s| match s {
                Slot::Rec(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// The header's counts agree with the slots: records + padding fill the
    /// reserved slots but for `lost` (failed writes), padding only where
    /// writes are direct, and each direct write ends on a page boundary.
    fn check_accounting(p: &Path, m: Mode, lost: u64) {
        let h = header(p);
        assert_eq!(h.check(), Ok(()));
        let slots = read_slots(p);
        let recs = slots.iter().filter(|s| matches!(s, Slot::Rec(_))).count() as u64;
        let pads = slots.iter().filter(|s| matches!(s, Slot::Pad)).count() as u64;
        assert_eq!((h.complete, h.padding), (recs, pads));
        assert_eq!(h.records, h.complete + h.padding + lost);
        if !m.direct || m.packed {
            assert_eq!(h.padding, 0);
        }
        assert_eq!(h.is_packed(), m.packed);
    }

    /// The length of a finished file of `slots` slots.
    fn finished_len(p: &Path, slots: u64) -> u64 {
        let h = header(p);
        if h.is_packed() {
            h.data_end
        } else {
            HEADER_SIZE as u64 + slots * RECORD_SIZE as u64
        }
    }

    // The thread-local API uses process-global state: one test drives it.
    #[test]
    fn records_from_threads_all_arrive_and_overflow_is_counted() {
        let _g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile_dir("threads");
        for direct in MODES {
            // 1. Two threads, more records than one local buffer, all arrive.
            let p = dir.join("a.bin");
            install(create(&p, 100_000, 2, direct));
            let buffers_before = BUFFERS.lock().unwrap().len();
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    s.spawn(move || {
                        for i in 0..20_000 {
                            record(rec(t * 1_000_000 + i));
                        }
                    });
                }
            });
            // When the threads have exited (their thread-local destructors run
            // just after `scope` sees them finish) their records have gone out
            // with them, and their buffers have left the flush list.
            let t = std::time::Instant::now();
            while BUFFERS.lock().unwrap().len() > buffers_before && t.elapsed().as_secs() < 10 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(BUFFERS.lock().unwrap().len(), buffers_before);
            assert_eq!(sink_stats().written, 40_000);
            let sink = uninstall().unwrap();
            let st = sink.finish().unwrap();
            assert_eq!(
                st,
                SinkStats {
                    emitted: 40_000,
                    written: 40_000,
                    dropped: 0,
                    capacity: 100_000
                }
            );
            let h = header(&p);
            assert_eq!((h.complete, h.dropped, h.finished), (40_000, 0, 1));
            assert_eq!(h.capacity, h.records);
            check_accounting(&p, direct, 0);
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len() as u64, finished_len(&p, h.records));
            let mut seen: Vec<u64> = records_in(&read_slots(&p)).iter().map(|r| r.t_ns).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 40_000);

            // 2. A tiny capacity: the overflow is counted, not lost silently.
            let p = dir.join("b.bin");
            install(create(&p, 1000, 1, direct));
            for i in 0..5000 {
                record(rec(i));
            }
            let st = uninstall().unwrap().finish().unwrap();
            assert_eq!((st.emitted, st.written, st.dropped), (5000, 1000, 4000));
            let h = header(&p);
            assert_eq!((h.records, h.complete, h.dropped), (1000, 1000, 4000));
            check_accounting(&p, direct, 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn valid(recs: std::ops::Range<u64>) -> Vec<TraceRecord> {
        recs.map(|i| TraceRecord {
            flags: flags::VALID,
            ..rec(i)
        })
        .collect()
    }

    /// Direct writes: every write after the first starts on a page, the
    /// rest of each write's last page is padding, and steps are marked done
    /// by the writer only after the writes queued before the mark.
    #[test]
    fn direct_writes_fill_whole_pages_and_mark_steps_after_them() {
        let dir = tempfile_dir("direct");
        let p = dir.join("t.bin");
        let s = create(
            &p,
            10_000,
            1,
            Mode {
                direct: true,
                packed: false,
            },
        );
        if !s.is_direct() {
            eprintln!("skipped: no O_DIRECT here");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        assert_eq!(s.write(&valid(0..5)), 5);
        // The header's page: 30 slots.
        assert_eq!(s.stats().written, 5);
        assert_eq!(header(&p).records, PAGE_PHASE);
        assert_eq!(s.write(&valid(5..45)), 40);
        assert_eq!(header(&p).records, PAGE_PHASE + 2 * PAGE_SLOTS);
        s.mark_steps_done(1);
        s.sync();
        let h = header(&p);
        assert_eq!(
            (h.steps_done, h.steps_done_slots),
            (1, PAGE_PHASE + 2 * PAGE_SLOTS)
        );
        let st = s.finish().unwrap();
        assert_eq!((st.written, st.dropped), (45, 0));
        check_accounting(
            &p,
            Mode {
                direct: true,
                packed: false,
            },
            0,
        );
        let slots = read_slots(&p);
        assert!(slots[5..30].iter().all(|x| *x == Slot::Pad));
        assert!(slots[70..94].iter().all(|x| *x == Slot::Pad));
        let got: Vec<u64> = records_in(&slots).iter().map(|r| r.t_ns).collect();
        assert_eq!(got, (0..45).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Blocks are allocated ahead of the records (so a write does not have
    /// to), the slots past the records still read as empty, and finishing
    /// cuts the file, and its blocks, to the records.
    #[test]
    fn blocks_are_allocated_ahead_and_released_at_finish() {
        use std::os::unix::fs::MetadataExt;
        for direct in MODES {
            let dir = tempfile_dir(&format!("prealloc{}{}", direct.direct, direct.packed));
            let p = dir.join("t.bin");
            let cap = 4 * (PREALLOC_BYTES / RECORD_SIZE as u64);
            let s = create(&p, cap, 1, direct);
            let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
            let window = PREALLOC_BYTES;
            assert!(
                blocks(&p) >= window,
                "{} bytes allocated at start",
                blocks(&p)
            );
            // Writing past half the window extends it.
            let recs = valid(0..((PREALLOC_BYTES / RECORD_SIZE as u64) * 3 / 4));
            assert_eq!(s.write(&recs), recs.len());
            let used = header(&p).records;
            // (Packed, the records take a small part of the window.)
            let written = if direct.packed {
                0
            } else {
                used * RECORD_SIZE as u64
            };
            assert!(blocks(&p) >= window + written);
            if !direct.packed {
                let slots = read_slots(&p);
                assert_eq!(slots.len() as u64, cap);
                assert_eq!(records_in(&slots[..used as usize]).len(), recs.len());
                assert!(
                    slots[used as usize..].iter().all(|r| *r == Slot::Empty),
                    "allocated slots read as empty"
                );
            }
            s.finish().unwrap();
            check_accounting(&p, direct, 0);
            assert_eq!(records_in(&read_slots(&p)).len(), recs.len());
            let len = finished_len(&p, used);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
            assert!(
                blocks(&p) <= len + (1 << 20),
                "{} bytes left allocated",
                blocks(&p)
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// One failed write costs only its own records: they are counted as
    /// dropped, their slots stay without VALID, and every record written
    /// before and after it stays readable in the finished file.
    #[test]
    fn a_failed_write_loses_only_itself() {
        for direct in MODES {
            let dir = tempfile_dir(&format!("fail{}{}", direct.direct, direct.packed));
            let p = dir.join("t.bin");
            let s = create(&p, 1000, 1, direct);
            assert_eq!(s.write(&valid(0..10)), 10);
            let before = header(&p).records as usize;
            s.core.fail_next_write.store(true, Ordering::Relaxed);
            assert_eq!(s.write(&valid(10..15)), 0);
            let after = header(&p).records as usize;
            assert_eq!(s.write(&valid(15..30)), 15);
            let st = s.finish().unwrap();
            assert_eq!((st.emitted, st.written, st.dropped), (30, 25, 5));
            let h = header(&p);
            assert_eq!(h.check(), Ok(()));
            assert_eq!((h.complete, h.dropped, h.capacity), (25, 5, h.records));
            let slots = read_slots(&p);
            assert_eq!(slots.len() as u64, h.records);
            let got: Vec<u64> = records_in(&slots).iter().map(|r| r.t_ns).collect();
            let want: Vec<u64> = (0..10).chain(15..30).collect();
            assert_eq!(got, want);
            // The failed write's slots (and its padding) are empty.
            assert!(slots[before..after].iter().all(|s| *s == Slot::Empty));
            check_accounting(&p, direct, (after - before) as u64);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// `finish` twice returns the same figures; a write after it is counted
    /// as dropped, and the sink's counters stay readable (the header page
    /// stays mapped as long as the sink lives).
    #[test]
    fn finish_is_idempotent_and_later_writes_are_dropped() {
        for direct in MODES {
            let dir = tempfile_dir(&format!("twice{}{}", direct.direct, direct.packed));
            let p = dir.join("t.bin");
            let s = create(&p, 100, 1, direct);
            s.write(&valid(0..7));
            s.mark_steps_done(1);
            let a = s.finish().unwrap();
            let b = s.finish().unwrap();
            assert_eq!(a, b);
            assert_eq!(s.write(&valid(7..9)), 0);
            let st = s.stats();
            assert_eq!((st.emitted, st.written, st.dropped), (9, 7, 2));
            let h = header(&p);
            let slots = if s.is_direct() && !direct.packed {
                PAGE_PHASE
            } else {
                7
            };
            assert_eq!((h.finished, h.records, h.capacity), (1, slots, slots));
            assert_eq!((h.steps_done, h.steps_done_slots), (1, slots));
            assert_eq!(
                std::fs::metadata(&p).unwrap().len(),
                finished_len(&p, slots)
            );
            check_accounting(&p, direct, 0);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// An install that replaces a sink hands the old one back, and an
    /// uninstall returns the installed one: neither frees a sink.
    #[test]
    fn install_returns_what_it_replaces() {
        let _g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile_dir("inst");
        let a = TraceSink::create(&dir.join("a.bin"), 10, Engine::Ggml, 1).unwrap();
        let b = TraceSink::create(&dir.join("b.bin"), 10, Engine::Ggml, 1).unwrap();
        assert!(install(a.clone()).is_none());
        let old = install(b.clone()).unwrap();
        assert!(Arc::ptr_eq(&old, &a));
        let cur = uninstall().unwrap();
        assert!(Arc::ptr_eq(&cur, &b));
        assert!(uninstall().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cktrace-sink-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
