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

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapMut;

use crate::format::{flags, Engine, TraceHeader, TraceRecord, HEADER_SIZE, RECORD_SIZE};

/// Records a thread buffers before it copies them into the file.
pub const LOCAL_CAPACITY: usize = 4096;

/// Header byte offsets of the counters updated while tracing.
const OFF_RECORDS: usize = 32;
const OFF_COMPLETE: usize = 40;
const OFF_DROPPED: usize = 48;
const OFF_FINISHED: usize = 72;

/// Counts reported at the end of a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records handed to [`record`] (or [`TraceSink::write`]).
    pub emitted: u64,
    /// Records in the file.
    pub written: u64,
    /// Records that did not fit.
    pub dropped: u64,
    pub capacity: u64,
}

/// The trace file, mapped shared so that what is copied into it survives the
/// process being killed.
pub struct TraceSink {
    path: PathBuf,
    file: File,
    map: Mutex<Option<MmapMut>>,
    base: *mut u8,
    capacity: u64,
    emitted: AtomicU64,
    start_mono_ns: u64,
}

// SAFETY: `base` points into the mapping owned by `map`, which lives as long
// as the sink (it is only taken out in `finish`, after which no writer may
// run — `finish` takes `&self` but the engine calls it only once all hooks
// are uninstalled and every buffer is flushed). Slot writes go to disjoint
// reserved ranges; shared header counters are accessed atomically.
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let len = HEADER_SIZE as u64 + capacity * RECORD_SIZE as u64;
        file.set_len(len)?;
        // SAFETY: we just created and sized the file; nobody else maps it.
        // Concurrent external modification of the file would be a misuse we
        // cannot prevent (as with any mmap).
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        let start_mono_ns = monotonic_ns();
        let start_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let h = TraceHeader::new(capacity, engine, n_threads, start_unix_ns, start_mono_ns);
        map[..HEADER_SIZE].copy_from_slice(&h.to_bytes());
        let base = map.as_mut_ptr();
        Ok(Arc::new(TraceSink {
            path: path.to_path_buf(),
            file,
            map: Mutex::new(Some(map)),
            base,
            capacity,
            emitted: AtomicU64::new(0),
            start_mono_ns,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CLOCK_MONOTONIC at trace start; records store time relative to it.
    pub fn start_mono_ns(&self) -> u64 {
        self.start_mono_ns
    }

    fn counter(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is one of the 8-aligned header counter offsets, inside
        // the mapping (which is page aligned and outlives &self).
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    /// Copy `recs` into the file: reserve slots, copy, then publish. Returns
    /// how many fitted.
    pub fn write(&self, recs: &[TraceRecord]) -> usize {
        if recs.is_empty() {
            return 0;
        }
        self.emitted.fetch_add(recs.len() as u64, Ordering::Relaxed);
        let cursor = self.counter(OFF_RECORDS);
        let mut cur = cursor.load(Ordering::Relaxed);
        let take = loop {
            let take = (self.capacity - cur).min(recs.len() as u64);
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
            use std::os::unix::fs::FileExt;
            match self
                .file
                .write_all_at(bytes, (HEADER_SIZE + cur as usize * RECORD_SIZE) as u64)
            {
                Ok(()) => {
                    self.counter(OFF_COMPLETE)
                        .fetch_add(take, Ordering::Release);
                }
                Err(_) => {
                    // The slots stay reserved but never become complete; the
                    // records count as dropped so the loss is visible.
                    self.counter(OFF_DROPPED).fetch_add(take, Ordering::Relaxed);
                    return 0;
                }
            }
        }
        take as usize
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            emitted: self.emitted.load(Ordering::Relaxed),
            written: self.counter(OFF_COMPLETE).load(Ordering::Acquire),
            dropped: self.counter(OFF_DROPPED).load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }

    /// Mark the trace finished, unmap it and cut the file to the records
    /// written. Call once, after the last [`flush_all`].
    pub fn finish(&self) -> io::Result<SinkStats> {
        let stats = self.stats();
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.take() {
            // SAFETY: offset 72 is the 4-aligned `finished` field in the header.
            unsafe {
                (*(self.base.add(OFF_FINISHED) as *const AtomicU32)).store(1, Ordering::Release)
            };
            map.flush()?;
            drop(map);
            let records = stats.written.min(self.capacity);
            self.file
                .set_len(HEADER_SIZE as u64 + records * RECORD_SIZE as u64)?;
            // The header's capacity now equals the file's slots.
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(&records.to_le_bytes(), 24)?;
            self.file.sync_all()?;
        }
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
/// The buffer of every live thread that has recorded, so a flush can reach
/// them all (a thread removes its own when it exits).
static BUFFERS: Mutex<Vec<Arc<Mutex<LocalBuf>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Direct records to `sink` (replacing any previous one).
pub fn install(sink: Arc<TraceSink>) {
    let p = Arc::into_raw(sink) as *mut TraceSink;
    let old = ACTIVE.swap(p, Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: `old` came from Arc::into_raw in a previous install.
        drop(unsafe { Arc::from_raw(old) });
    }
}

/// Stop recording: flush every buffer into the current sink and detach it.
/// Returns the sink so the caller can [`TraceSink::finish`] it.
pub fn uninstall() -> Option<Arc<TraceSink>> {
    flush_all();
    let p = ACTIVE.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if p.is_null() {
        None
    } else {
        // SAFETY: `p` came from Arc::into_raw in install; we take back the
        // strong count that ACTIVE held.
        Some(unsafe { Arc::from_raw(p) })
    }
}

fn with_active<R>(f: impl FnOnce(&TraceSink) -> R) -> Option<R> {
    let p = ACTIVE.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: while installed, ACTIVE holds a strong count; `uninstall` is
    // only called when no hook is running (between decodes, workers idle), so
    // the sink outlives this borrow.
    Some(f(unsafe { &*p }))
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
        if recs.len() >= LOCAL_CAPACITY {
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

    // The thread-local API uses process-global state: one test drives it.
    #[test]
    fn records_from_threads_all_arrive_and_overflow_is_counted() {
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
}
