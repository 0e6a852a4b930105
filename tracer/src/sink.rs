//! The mmap'd trace file and the thread-local record buffers that feed it.
//!
//! Hot path: a hook takes the thread's buffer with [`with_writer`] once per
//! batch of events and appends records with [`Writer::push_with`] (a copy of
//! a template plus the fields that differ), or calls [`record`] for a single
//! one. The buffer is pre-sized (no allocation after the first record), and
//! its lock is only ever contended by a flush at a decode boundary, when the
//! engine's workers are idle. A buffer goes into the file in one go: a
//! lock-free reservation of slots on the atomic cursor that lives in the
//! shared mapping of the header, one positioned write of the records (each
//! already marked VALID) into those slots, then the header's `complete`
//! counter. Records that do not fit are counted in `dropped`, never silently
//! lost. Buffers are written when full, by [`flush_local`] (an engine calls
//! it on each worker when the worker has finished its part of a graph), when
//! their thread exits, and by [`flush_all`] after every decode step and at
//! exit, so a process killed mid-decode leaves a file whose header says how
//! many records are complete.
//!
//! Why a positioned write and not a copy into the mapping: the file is sparse,
//! and every fresh page touched through a mapping must first be zero-filled by
//! the kernel; a write of whole pages skips that. Measured on SmolLM2 Q4_K_M
//! (2705 records per decode step) the boundary flush went from 0.23-0.5 ms to
//! 0.16 ms per step. Records never straddle a page (the 256-byte header and
//! the 128-byte records divide 4 KiB), so a write cut short by a kill ends
//! between records, and a reader after a crash sees only complete ones.
//! Disk blocks are allocated (`fallocate`) a 32 MiB window ahead of the
//! cursor, so a write only copies into the page cache: 19 instead of 29 ns
//! per record on ext4 here. A killed run leaves at most that window
//! allocated past its records; it reads as zeros, i.e. as empty slots.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapMut;

use crate::format::{flags, Engine, TraceHeader, TraceRecord, HEADER_SIZE, RECORD_SIZE};

/// Records a thread buffers before it copies them into the file.
pub const LOCAL_CAPACITY: usize = 4096;

/// Records a thread buffers before it writes them mid-graph (at most
/// [`LOCAL_CAPACITY`]; `CKTRACE_TRACE_BUFFER`, a diagnostic, lowers it).
static FLUSH_AT: AtomicUsize = AtomicUsize::new(LOCAL_CAPACITY);

/// Write a thread's buffer once it holds `n` records (1..=LOCAL_CAPACITY;
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

/// Bytes of the file that are mapped: the header's page. Records go in by
/// positioned writes, so the mapping never reaches a page the file may
/// lose when it is cut to its records, and reading a counter can never
/// fault.
const MAP_LEN: usize = 4096;

/// Slots whose disk blocks are allocated ahead of the cursor (32 MiB). A
/// positioned write into a hole of a sparse file makes ext4 reserve and
/// allocate blocks page by page; into blocks already allocated (unwritten
/// extents, which read as zeros) it only copies into the page cache.
/// Measured here on ext4: 29 ns per 128-byte record into a hole, 19 ns
/// into allocated blocks, and 0.2 ns per record for the `fallocate` itself.
const PREALLOC_SLOTS: u64 = (32 << 20) / RECORD_SIZE as u64;

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

/// The trace file. Its header page is mapped shared, so the counters that
/// writers advance survive the process being killed; records are written
/// with positioned writes into slots reserved on the header's cursor.
pub struct TraceSink {
    path: PathBuf,
    file: File,
    /// The header page; lives (mapped) as long as the sink.
    map: MmapMut,
    capacity: u64,
    emitted: AtomicU64,
    start_mono_ns: u64,
    /// Set by [`TraceSink::finish`]: later writes are counted as dropped.
    closed: AtomicBool,
    /// Slots `0..allocated` have disk blocks (see [`PREALLOC_SLOTS`]);
    /// `extending` is held by the one writer extending it; `prealloc` is
    /// cleared if the file system refuses.
    allocated: AtomicU64,
    extending: AtomicBool,
    prealloc: AtomicBool,
    /// Serializes `finish` with itself.
    finish_lock: Mutex<Option<SinkStats>>,
    /// Tests make the next positioned write fail.
    #[cfg(test)]
    fail_next_write: AtomicBool,
}

// SAFETY: the only field that is not Send/Sync by itself is the mapping,
// which is plain shared memory owned by the sink for its whole life (it is
// unmapped only when the sink is dropped, i.e. when no reference to it
// exists). Through `&TraceSink` the mapping is only accessed as atomics at
// 8-aligned header offsets (`counter`, `counter32`), so concurrent access
// from any number of threads is data-race free.
unsafe impl Send for TraceSink {}
// SAFETY: as above.
unsafe impl Sync for TraceSink {}

/// Monotonic clock in ns (CLOCK_MONOTONIC, the clock the ggml hooks use).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        let h = TraceHeader::new(capacity, engine, n_threads, start_unix_ns, start_mono_ns);
        map[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
        let sink = Arc::new(TraceSink {
            path: path.to_path_buf(),
            file,
            map,
            capacity,
            emitted: AtomicU64::new(0),
            start_mono_ns,
            closed: AtomicBool::new(false),
            allocated: AtomicU64::new(0),
            extending: AtomicBool::new(false),
            prealloc: AtomicBool::new(true),
            finish_lock: Mutex::new(None),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
        });
        sink.allocate_ahead(0);
        Ok(sink)
    }

    /// Keep disk blocks allocated at least half a window past slot `end`
    /// (one writer extends at a time; the others go on without waiting).
    /// A file system that cannot (no `fallocate`, or no space to reserve)
    /// is left sparse: writes then allocate as they go, as before.
    fn allocate_ahead(&self, end: u64) {
        if !self.prealloc.load(Ordering::Relaxed)
            || end + PREALLOC_SLOTS / 2 <= self.allocated.load(Ordering::Acquire)
            || self.extending.swap(true, Ordering::Acquire)
        {
            return;
        }
        let have = self.allocated.load(Ordering::Acquire);
        let to = (end + PREALLOC_SLOTS)
            .max(have + PREALLOC_SLOTS)
            .min(self.capacity);
        if to > have {
            use std::os::fd::AsRawFd;
            let off = HEADER_SIZE as u64 + have * RECORD_SIZE as u64;
            let len = (to - have) * RECORD_SIZE as u64;
            // SAFETY: fallocate on our own open descriptor, within the
            // file's size (mode 0 allocates blocks, data reads as zeros).
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    0,
                    off as libc::off_t,
                    len as libc::off_t,
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CLOCK_MONOTONIC at trace start; records store time relative to it.
    pub fn start_mono_ns(&self) -> u64 {
        self.start_mono_ns
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

    /// Copy `recs` into the file: reserve slots, copy, then publish. Returns
    /// how many were written. Records that do not fit, that arrive after
    /// [`TraceSink::finish`], or whose write fails are counted as dropped;
    /// a failed write leaves its slots without VALID and costs nothing else.
    pub fn write(&self, recs: &[TraceRecord]) -> usize {
        if recs.is_empty() {
            return 0;
        }
        self.emitted.fetch_add(recs.len() as u64, Ordering::Relaxed);
        if self.closed.load(Ordering::Acquire) {
            self.counter(OFF_DROPPED)
                .fetch_add(recs.len() as u64, Ordering::Relaxed);
            return 0;
        }
        let cursor = self.counter(OFF_RECORDS);
        let mut cur = cursor.load(Ordering::Relaxed);
        let take = loop {
            let take = self.capacity.saturating_sub(cur).min(recs.len() as u64);
            if take == 0 {
                break 0;
            }
            match cursor.compare_exchange_weak(cur, cur + take, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break take,
                Err(now) => cur = now,
            }
        };
        let lost = recs.len() as u64 - take;
        if lost > 0 {
            self.counter(OFF_DROPPED).fetch_add(lost, Ordering::Relaxed);
        }
        if take > 0 {
            // Records carry VALID from `record`; a 4 KiB page holds exactly 32
            // slots (the 256-byte header is a multiple of 128), so a write cut
            // short by a kill can only end between records.
            // SAFETY: TraceRecord is repr(C), 128 bytes, no padding: the
            // slice is `take * 128` initialised bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(recs.as_ptr() as *const u8, take as usize * RECORD_SIZE)
            };
            let t = if profiling() { monotonic_ns() } else { 0 };
            self.allocate_ahead(cur + take);
            let res = self.write_slots(bytes, cur);
            if t != 0 {
                let d = monotonic_ns() - t;
                let _ = THREAD_WRITE_NS.try_with(|c| c.set(c.get() + d));
                COST_WRITE_NS.fetch_add(d, Ordering::Relaxed);
                COST_WRITE_RECS.fetch_add(take, Ordering::Relaxed);
            }
            match res {
                Ok(()) => {
                    self.counter(OFF_COMPLETE)
                        .fetch_add(take, Ordering::Release);
                }
                Err(_) => {
                    // The slots stay reserved but hold no VALID record; the
                    // records count as dropped so the loss is visible, and
                    // every other record stays in the file.
                    self.counter(OFF_DROPPED).fetch_add(take, Ordering::Relaxed);
                    return 0;
                }
            }
        }
        take as usize
    }

    /// The positioned write of whole records into slots from `slot` on.
    fn write_slots(&self, bytes: &[u8], slot: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(bytes, HEADER_SIZE as u64 + slot * RECORD_SIZE as u64)
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            emitted: self.emitted.load(Ordering::Relaxed),
            written: self.counter(OFF_COMPLETE).load(Ordering::Acquire),
            dropped: self.counter(OFF_DROPPED).load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }

    /// Steps `0..steps` are complete: their records are all in the file
    /// (call after [`flush_all`], with the engine's workers idle, and after
    /// the registry of those steps is on disk). A reader of a trace that was
    /// not finished checks those steps and reports the rest as partial.
    pub fn mark_steps_done(&self, steps: u32) {
        let slots = self.counter(OFF_RECORDS).load(Ordering::Acquire);
        self.counter(OFF_STEPS_DONE_SLOTS)
            .store(slots, Ordering::Release);
        self.counter32(OFF_STEPS_DONE)
            .store(steps, Ordering::Release);
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
        self.closed.store(true, Ordering::Release);
        let slots = self.counter(OFF_RECORDS).load(Ordering::Acquire);
        self.counter(OFF_CAPACITY).store(slots, Ordering::Release);
        self.counter32(OFF_FINISHED).store(1, Ordering::Release);
        self.map.flush()?;
        self.file
            .set_len(HEADER_SIZE as u64 + slots * RECORD_SIZE as u64)?;
        self.file.sync_all()?;
        let stats = self.stats();
        *done = Some(stats);
        Ok(stats)
    }
}

/// One thread's pending records.
struct LocalBuf {
    recs: Vec<TraceRecord>,
}

/// The sink records currently go to (null when tracing is off). Holds one
/// strong count of the Arc it was made from.
static ACTIVE: AtomicPtr<TraceSink> = AtomicPtr::new(std::ptr::null_mut());

/// Where the tracer's time goes, measured in place (`cktrace bench trace`
/// turns it on for one run): nanoseconds spent building records in a hook,
/// writing them into the file, and the records each covers. Off, it costs one
/// relaxed load per batch.
static PROFILING: AtomicBool = AtomicBool::new(false);
static COST_BUILD_NS: AtomicU64 = AtomicU64::new(0);
static COST_BUILD_RECS: AtomicU64 = AtomicU64::new(0);
static COST_WRITE_NS: AtomicU64 = AtomicU64::new(0);
static COST_WRITE_RECS: AtomicU64 = AtomicU64::new(0);

/// In-place costs since profiling was turned on (see [`set_profiling`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    /// ns inside the engine's hook building records (clock readings of the
    /// hook's entry and exit, per batch), and the records built.
    pub build_ns: u64,
    pub build_recs: u64,
    /// ns inside the positioned writes, and the records written.
    pub write_ns: u64,
    pub write_recs: u64,
}

/// Turn in-place cost measurement on or off; turning it on zeroes the counts.
pub fn set_profiling(on: bool) {
    if on {
        for c in [
            &COST_BUILD_NS,
            &COST_BUILD_RECS,
            &COST_WRITE_NS,
            &COST_WRITE_RECS,
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

fn with_active<R>(f: impl FnOnce(&TraceSink) -> R) -> Option<R> {
    READERS.fetch_add(1, Ordering::SeqCst);
    let p = ACTIVE.load(Ordering::SeqCst);
    let r = if p.is_null() {
        None
    } else {
        // SAFETY: ACTIVE held a strong count on `p` when we loaded it, and
        // `retire` does not drop that count while READERS (which we raised
        // before the load) is non-zero.
        Some(f(unsafe { &*p }))
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
pub fn record(rec: TraceRecord) {
    record_with(&rec, |_| {});
}

/// Append a record built in place: the thread's next slot starts as a copy of
/// `template` and `fill` sets the fields that differ. Otherwise as [`record`].
#[inline]
pub fn record_with(template: &TraceRecord, fill: impl FnOnce(&mut TraceRecord)) {
    if with_writer(|w| w.push_with(template, fill)).is_none() {
        count_dropped(1);
    }
}

/// The calling thread's buffer, held for a batch of records (the hot path of
/// the hooks: one lock per batch, one 128-byte copy per record).
pub struct Writer<'a> {
    g: MutexGuard<'a, LocalBuf>,
}

impl Writer<'_> {
    /// Append a record: a copy of `template` that `fill` completes.
    #[inline]
    pub fn push_with(&mut self, template: &TraceRecord, fill: impl FnOnce(&mut TraceRecord)) {
        let recs = &mut self.g.recs;
        recs.push(*template);
        if let Some(r) = recs.last_mut() {
            fill(r);
            r.flags |= flags::VALID;
        }
        if recs.len() >= FLUSH_AT.load(Ordering::Relaxed) {
            self.flush();
        }
    }

    /// Write the buffered records into the file now.
    pub fn flush(&mut self) {
        let recs = &mut self.g.recs;
        if !recs.is_empty() {
            with_active(|s| s.write(recs));
            recs.clear();
        }
    }
}

/// Write the calling thread's buffered records into the file. An engine
/// calls this on each of its workers when the worker has finished its part
/// of a graph, so each buffer is written by the thread (and core) that fills
/// it, and the records of a graph are in the file when the decode returns.
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
        s.emitted.fetch_add(n, Ordering::Relaxed);
        s.counter(OFF_DROPPED).fetch_add(n, Ordering::Relaxed);
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
            if !g.recs.is_empty() {
                with_active(|s| s.write(&g.recs));
                g.recs.clear();
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
    let b = Arc::new(Mutex::new(LocalBuf {
        recs: Vec::with_capacity(LOCAL_CAPACITY),
    }));
    BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(b.clone());
    Local(b)
}

/// Copy every thread's pending records into the sink. Call when the engine's
/// workers are idle (after each decode step, and at exit).
pub fn flush_all() {
    let bufs: Vec<_> = BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for b in bufs {
        let mut g = b.lock().unwrap_or_else(|e| e.into_inner());
        if !g.recs.is_empty() {
            with_active(|s| s.write(&g.recs));
            g.recs.clear();
        }
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
        with_active(|s| s.stats()).unwrap()
    }

    fn header(path: &Path) -> TraceHeader {
        let b = std::fs::read(path).unwrap();
        TraceHeader::from_bytes(b[..HEADER_SIZE].try_into().unwrap())
    }

    /// Tests of the process-global install state take this lock.
    static GLOBAL: Mutex<()> = Mutex::new(());

    // The thread-local API uses process-global state: one test drives it.
    #[test]
    fn records_from_threads_all_arrive_and_overflow_is_counted() {
        let _g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("cktrace-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        // 1. Two threads, more records than one local buffer, all arrive.
        let p = dir.join("a.bin");
        install(TraceSink::create(&p, 100_000, Engine::Ggml, 2).unwrap());
        std::thread::scope(|s| {
            for t in 0..2u64 {
                s.spawn(move || {
                    for i in 0..10_000 {
                        record(rec(t * 1_000_000 + i));
                    }
                });
            }
        });
        // When the threads have exited (their thread-local destructors run
        // just after `scope` sees them finish) their records have gone out
        // with them, and their buffers have left the flush list.
        let t = std::time::Instant::now();
        while !BUFFERS.lock().unwrap().is_empty() && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(BUFFERS.lock().unwrap().len(), 0);
        assert_eq!(sink_stats().written, 20_000);
        let sink = uninstall().unwrap();
        let st = sink.finish().unwrap();
        assert_eq!(
            st,
            SinkStats {
                emitted: 20_000,
                written: 20_000,
                dropped: 0,
                capacity: 100_000
            }
        );
        let h = header(&p);
        assert_eq!(
            (h.records, h.complete, h.dropped, h.finished, h.capacity),
            (20_000, 20_000, 0, 1, 20_000)
        );
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), HEADER_SIZE + 20_000 * RECORD_SIZE);
        let mut seen: Vec<u64> = bytes[HEADER_SIZE..]
            .chunks_exact(RECORD_SIZE)
            .map(|c| {
                let r = TraceRecord::from_bytes(c.try_into().unwrap());
                assert!(r.flags & flags::VALID != 0);
                r.t_ns
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20_000);

        // 2. A tiny capacity: the overflow is counted, not lost silently.
        let p = dir.join("b.bin");
        install(TraceSink::create(&p, 1000, Engine::Ggml, 1).unwrap());
        for i in 0..5000 {
            record(rec(i));
        }
        let st = uninstall().unwrap().finish().unwrap();
        assert_eq!((st.emitted, st.written, st.dropped), (5000, 1000, 4000));
        let h = header(&p);
        assert_eq!((h.records, h.complete, h.dropped), (1000, 1000, 4000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn read_slots(path: &Path) -> Vec<Option<TraceRecord>> {
        let b = std::fs::read(path).unwrap();
        b[HEADER_SIZE..]
            .chunks_exact(RECORD_SIZE)
            .map(|c| {
                let r = TraceRecord::from_bytes(c.try_into().unwrap());
                (r.flags & flags::VALID != 0).then_some(r)
            })
            .collect()
    }

    fn valid(recs: std::ops::Range<u64>) -> Vec<TraceRecord> {
        recs.map(|i| TraceRecord {
            flags: flags::VALID,
            ..rec(i)
        })
        .collect()
    }

    /// Blocks are allocated ahead of the records (so a write does not have
    /// to), the slots past the records still read as empty, and finishing
    /// cuts the file, and its blocks, to the records.
    #[test]
    fn blocks_are_allocated_ahead_and_released_at_finish() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile_dir("prealloc");
        let p = dir.join("t.bin");
        let cap = 4 * PREALLOC_SLOTS;
        let s = TraceSink::create(&p, cap, Engine::Ggml, 1).unwrap();
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        let window = PREALLOC_SLOTS * RECORD_SIZE as u64;
        assert!(
            blocks(&p) >= window,
            "{} bytes allocated at start",
            blocks(&p)
        );
        // Writing past half the window extends it.
        let recs = valid(0..(PREALLOC_SLOTS * 3 / 4));
        assert_eq!(s.write(&recs), recs.len());
        assert!(blocks(&p) >= window + recs.len() as u64 * RECORD_SIZE as u64);
        let slots = read_slots(&p);
        assert_eq!(slots.len() as u64, cap);
        assert!(slots[..recs.len()].iter().all(|r| r.is_some()));
        assert!(
            slots[recs.len()..].iter().all(|r| r.is_none()),
            "allocated slots read as empty"
        );
        s.finish().unwrap();
        let len = HEADER_SIZE as u64 + recs.len() as u64 * RECORD_SIZE as u64;
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        assert!(
            blocks(&p) <= len + (1 << 20),
            "{} bytes left allocated",
            blocks(&p)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One failed write costs only its own records: they are counted as
    /// dropped, their slots stay without VALID, and every record written
    /// before and after it stays readable in the finished file.
    #[test]
    fn a_failed_write_loses_only_itself() {
        let dir = tempfile_dir("fail");
        let p = dir.join("t.bin");
        let s = TraceSink::create(&p, 1000, Engine::Ggml, 1).unwrap();
        assert_eq!(s.write(&valid(0..10)), 10);
        s.fail_next_write.store(true, Ordering::Relaxed);
        assert_eq!(s.write(&valid(10..15)), 0);
        assert_eq!(s.write(&valid(15..30)), 15);
        let st = s.finish().unwrap();
        assert_eq!((st.emitted, st.written, st.dropped), (30, 25, 5));
        let h = header(&p);
        assert_eq!(h.check(), Ok(()));
        assert_eq!(
            (h.records, h.complete, h.dropped, h.capacity),
            (30, 25, 5, 30)
        );
        let slots = read_slots(&p);
        assert_eq!(slots.len(), 30);
        let got: Vec<u64> = slots.iter().flatten().map(|r| r.t_ns).collect();
        let want: Vec<u64> = (0..10).chain(15..30).collect();
        assert_eq!(got, want);
        assert!(slots[10..15].iter().all(|s| s.is_none()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `finish` twice returns the same figures; a write after it is counted
    /// as dropped, and the sink's counters stay readable (the header page
    /// stays mapped as long as the sink lives).
    #[test]
    fn finish_is_idempotent_and_later_writes_are_dropped() {
        let dir = tempfile_dir("twice");
        let p = dir.join("t.bin");
        let s = TraceSink::create(&p, 100, Engine::Ggml, 1).unwrap();
        s.write(&valid(0..7));
        s.mark_steps_done(1);
        let a = s.finish().unwrap();
        let b = s.finish().unwrap();
        assert_eq!(a, b);
        assert_eq!(s.write(&valid(7..9)), 0);
        let st = s.stats();
        assert_eq!((st.emitted, st.written, st.dropped), (9, 7, 2));
        let h = header(&p);
        assert_eq!((h.finished, h.records, h.capacity), (1, 7, 7));
        assert_eq!((h.steps_done, h.steps_done_slots), (1, 7));
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            (HEADER_SIZE + 7 * RECORD_SIZE) as u64
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
