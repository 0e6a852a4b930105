//! A persistent thread pool owned by one engine (nothing process-global, so
//! two engines can live in one process), with a deterministic split of work:
//! thread `t` of `n` always gets rows `split(rows, n, t)`, so the same thread
//! computes the same rows on every run and every step. One op is one
//! fork-join: the caller (thread 0) publishes the job, computes its own
//! share, and waits for the others: one synchronization per op.
//!
//! Workers spin briefly for the next job (ops follow each other within
//! microseconds) and then sleep on a condition variable, so an idle engine
//! costs no CPU.

use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Rows `[n*t/threads, n*(t+1)/threads)`: contiguous, disjoint, covering
/// `0..n`, and a function of (n, threads, t) only.
pub fn split(n: usize, threads: usize, t: usize) -> Range<usize> {
    let lo = (n as u128 * t as u128 / threads as u128) as usize;
    let hi = (n as u128 * (t as u128 + 1) / threads as u128) as usize;
    lo..hi
}

/// Iterations a worker spins for the next job before sleeping.
const SPIN: u32 = 1 << 14;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job; valid while `remaining > 0` for the epoch it was
    /// published with (see `Pool::run`).
    job: Mutex<Option<JobPtr>>,
    epoch: AtomicUsize,
    remaining: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A job reference with its lifetime erased.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is Sync (Job: Sync) and Pool::run keeps it alive until
// every worker has finished with it.
unsafe impl Send for JobPtr {}

/// The pool: `threads - 1` workers plus the calling thread as thread 0.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads - 1` workers (`threads` >= 1).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            epoch: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for t in 1..threads {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("ck-worker-{t}"))
                .spawn(move || worker(s, t));
            match h {
                Ok(h) => workers.push(h),
                Err(e) => {
                    let p = Pool {
                        threads: workers.len() + 1,
                        shared,
                        workers,
                    };
                    drop(p);
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            threads,
            shared,
            workers,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(t)` for every thread `t` (0 on the caller) and returns when
    /// all have finished. Panics if `f` panicked on any thread.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync + '_) = &f;
        // SAFETY (lifetime erasure): the pointer is only dereferenced by
        // workers between the epoch bump below and their decrement of
        // `remaining`; we do not return (or unwind) before `remaining` is 0.
        let ptr =
            JobPtr(
                unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) }
                    as *const Job,
            );
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(ptr);
        s.remaining.store(self.threads - 1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while s.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if mine.is_err() || s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a ck pool job panicked");
        }
    }

    /// Runs `f` on every thread with that thread's rows of `out`, a
    /// `[n_tok][n_rows][width]` array: thread `t` owns rows
    /// `split(n_rows, threads, t)` of every token.
    pub fn par_rows<T: Send, F>(
        &self,
        out: &mut [T],
        n_tok: usize,
        n_rows: usize,
        width: usize,
        f: F,
    ) where
        F: Fn(&mut RowsMut<'_, T>) + Sync,
    {
        self.par_rows_scratch(out, n_tok, n_rows, width, &mut [], |r, _| f(r))
    }

    /// Like [`Pool::par_rows`], also handing thread `t` the `t`-th of
    /// `threads` equal parts of `scratch`.
    pub fn par_rows_scratch<T: Send, F>(
        &self,
        out: &mut [T],
        n_tok: usize,
        n_rows: usize,
        width: usize,
        scratch: &mut [u8],
        f: F,
    ) where
        F: Fn(&mut RowsMut<'_, T>, &mut [u8]) + Sync,
    {
        assert_eq!(out.len(), n_tok * n_rows * width, "par_rows: output size");
        let threads = self.threads;
        let part = scratch.len() / threads;
        let base = SendPtr(out.as_mut_ptr());
        let sbase = SendPtr(scratch.as_mut_ptr());
        self.run(|t| {
            let mut rows = RowsMut {
                base: base.get(),
                n_tok,
                n_rows,
                width,
                rows: split(n_rows, threads, t),
                _out: PhantomData,
            };
            // SAFETY: thread t's part [t*part, (t+1)*part) of scratch is
            // disjoint from every other thread's, inside `scratch`, which is
            // mutably borrowed for the whole run.
            let mine = unsafe { std::slice::from_raw_parts_mut(sbase.get().add(t * part), part) };
            f(&mut rows, mine)
        });
    }
}

impl Pool {
    /// Runs `f(i, chunk)` for every `chunk_len`-element chunk `i` of `out`
    /// (the last may be shorter), the threads taking the next chunk as
    /// they finish one. Which thread computes a chunk then depends on
    /// timing, so `f` must compute a chunk's values from `i` alone: the
    /// result is the same bits on every run. For a long op whose halves
    /// run at different speeds (the output head: one thread's half took
    /// 10-15% longer on this machine kind), where a fixed split would
    /// leave a thread waiting. ggml hands out its matmul chunks the same
    /// way.
    pub fn par_chunks_dynamic<T: Send, F>(&self, out: &mut [T], chunk_len: usize, f: F)
    where
        F: Fn(usize, &mut [T]) + Sync,
    {
        let chunk_len = chunk_len.max(1);
        let n_chunks = out.len().div_ceil(chunk_len);
        let len = out.len();
        let base = SendPtr(out.as_mut_ptr());
        let next = AtomicUsize::new(0);
        self.run(|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n_chunks {
                break;
            }
            let start = i * chunk_len;
            let end = (start + chunk_len).min(len);
            // SAFETY: each index i is taken by exactly one thread (the
            // atomic counter), so the chunks [start, end) handed out are
            // disjoint and inside `out`, which is mutably borrowed for
            // the whole run.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, chunk)
        });
    }
}

/// A raw pointer that may cross to the workers (its users uphold the
/// disjointness that makes that sound).
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used by par_rows*, whose threads touch disjoint elements.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// One thread's rows of a `[n_tok][n_rows][width]` output.
pub struct RowsMut<'a, T> {
    base: *mut T,
    n_tok: usize,
    n_rows: usize,
    width: usize,
    rows: Range<usize>,
    _out: PhantomData<&'a mut [T]>,
}

impl<T> RowsMut<'_, T> {
    /// This thread's rows.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    pub fn n_tok(&self) -> usize {
        self.n_tok
    }

    /// This thread's rows of token `tok`: `(rows.len() * width)` elements.
    pub fn token(&mut self, tok: usize) -> &mut [T] {
        assert!(tok < self.n_tok, "token {tok} of {}", self.n_tok);
        let start = (tok * self.n_rows + self.rows.start) * self.width;
        let len = self.rows.len() * self.width;
        // SAFETY: [start, start+len) lies inside the output (tok < n_tok,
        // rows inside 0..n_rows); the threads' row ranges are disjoint
        // (split), so no other thread aliases it; &mut self makes this the
        // only live slice of this thread's rows.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(start), len) }
    }
}

fn worker(s: Arc<Shared>, t: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::SeqCst);
            if e != seen {
                seen = e;
                break;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            let _g = if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst)
            {
                s.wake.wait(g).unwrap_or_else(|e| e.into_inner())
            } else {
                g
            };
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(p)) = job {
            // SAFETY: Pool::run keeps the job alive until remaining hits 0,
            // which happens only after this call returns.
            let f = unsafe { &*p };
            if catch_unwind(AssertUnwindSafe(|| f(t))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element is written once, by the chunk that holds it, for
    /// lengths that are and are not multiples of the chunk.
    #[test]
    fn dynamic_chunks_cover_every_element_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            for (len, chunk) in [(0, 4), (1, 4), (1000, 64), (1024, 64), (7, 1)] {
                let mut out = vec![usize::MAX; len];
                let calls = AtomicUsize::new(0);
                pool.par_chunks_dynamic(&mut out, chunk, |i, c| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    for (j, v) in c.iter_mut().enumerate() {
                        assert_eq!(*v, usize::MAX, "written twice");
                        *v = i * chunk + j;
                    }
                });
                assert_eq!(out, (0..len).collect::<Vec<_>>());
                assert_eq!(calls.load(Ordering::Relaxed), len.div_ceil(chunk));
            }
        }
    }

    #[test]
    fn split_covers_and_is_disjoint() {
        for n in [0, 1, 5, 9, 576, 49152] {
            for th in 1..6 {
                let mut next = 0;
                for t in 0..th {
                    let r = split(n, th, t);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn par_rows_writes_every_row_once_on_its_thread() {
        for threads in 1..4 {
            let pool = Pool::new(threads).unwrap();
            let (n_tok, n_rows, width) = (3, 10, 2);
            let mut out = vec![usize::MAX; n_tok * n_rows * width];
            for _ in 0..50 {
                pool.par_rows(&mut out, n_tok, n_rows, width, |r| {
                    let rows = r.rows();
                    for tok in 0..r.n_tok() {
                        for (i, v) in r.token(tok).iter_mut().enumerate() {
                            *v = tok * 1000 + (rows.start + i / width) * 10 + i % width;
                        }
                    }
                });
            }
            for tok in 0..n_tok {
                for row in 0..n_rows {
                    for c in 0..width {
                        assert_eq!(
                            out[(tok * n_rows + row) * width + c],
                            tok * 1000 + row * 10 + c
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn two_pools_live_side_by_side_and_sleep() {
        let a = Pool::new(2).unwrap();
        let b = Pool::new(3).unwrap();
        let hits = AtomicUsize::new(0);
        a.run(|_| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        b.run(|_| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        a.run(|_| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let p = Pool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            p.run(|t| {
                if t == 1 {
                    panic!("boom")
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        p.run(|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
