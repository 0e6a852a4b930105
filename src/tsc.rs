//! The trace points' clock, and how its readings become nanoseconds.
//!
//! Every record carries a start time and a duration, and the trace points
//! read a clock once per work chunk. `clock_gettime(CLOCK_MONOTONIC)` costs
//! 20-40 ns on these VMs (a vDSO call that reads the TSC and scales it);
//! reading the TSC directly costs a third of that. Where the TSC is
//! invariant (the CPU says `constant_tsc` and `nonstop_tsc`, and the kernel
//! itself keeps time with it), the tracer asks the patched ggml for raw TSC
//! ticks (`ggml_cpu_set_trace_tsc`, patch 0005) and converts them here, at
//! record-building time, to nanoseconds on the CLOCK_MONOTONIC timeline of
//! the trace header.
//!
//! The conversion is affine: `ns = base_ns + (tick - base_tick) * mult / 2^32`.
//! It is calibrated at trace start against CLOCK_MONOTONIC (a 2 ms spin) and
//! re-anchored before every step from the whole span since the start, so
//! the slope gets more precise as the trace runs. Within a step a time is
//! off by at most the slope's error times its distance from the step's
//! start: each anchor is a TSC read between two clock reads ~25 ns apart,
//! so after the 2 ms calibration the error is about 2.5e-5 (25 µs a second
//! into a long first prompt step), and well under a microsecond in decode
//! steps of milliseconds once the baseline is long.
//! `CKTRACE_TRACE_CLOCK=monotonic` keeps clock_gettime.

use std::sync::atomic::{AtomicU64, Ordering};

use cktrace_tracer::sink::monotonic_ns;

/// Which clock the trace points read; meta.json's `trace_clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockKind {
    /// Raw TSC ticks, converted by [`Clock`].
    Tsc,
    /// CLOCK_MONOTONIC nanoseconds.
    Monotonic,
}

impl ClockKind {
    /// Read this clock as the trace points do: TSC ticks or ns.
    pub fn read(self) -> u64 {
        match self {
            ClockKind::Tsc => rdtsc(),
            ClockKind::Monotonic => monotonic_ns(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClockKind::Tsc => "tsc",
            ClockKind::Monotonic => "monotonic",
        }
    }
}

/// Read the TSC (0 where there is none; never called there, see `choose`).
#[inline]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    {
        // SAFETY: rdtsc exists on every x86-64 CPU and has no preconditions
        // (CR4.TSD, which would make it fault in user mode, is never set
        // by Linux).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Whether this machine's TSC can serve as the trace clock, and why not.
/// `cpuinfo` is /proc/cpuinfo; `clocksource` the kernel's current one.
pub fn tsc_usable(cpuinfo: &str, clocksource: Option<&str>) -> Result<(), String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("not x86-64".into());
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    for need in ["constant_tsc", "nonstop_tsc"] {
        if !flags.contains(&need) {
            return Err(format!("the CPU does not report {need}"));
        }
    }
    match clocksource.map(str::trim) {
        Some("tsc") | None => Ok(()),
        Some(other) => Err(format!("the kernel keeps time with {other}, not the TSC")),
    }
}

/// The clock to trace with on this machine: the TSC where it is usable,
/// unless `CKTRACE_TRACE_CLOCK=monotonic` says otherwise.
pub fn choose() -> ClockKind {
    if std::env::var("CKTRACE_TRACE_CLOCK").as_deref() == Ok("monotonic") {
        return ClockKind::Monotonic;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cs =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok();
    match tsc_usable(&cpuinfo, cs.as_deref()) {
        Ok(()) => ClockKind::Tsc,
        Err(_) => ClockKind::Monotonic,
    }
}

/// A snapshot of the conversion, taken once per batch of events.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_tick: u64,
    base_ns: u64,
    /// ns per tick, 32.32 fixed point.
    mult: u64,
}

impl Clock {
    /// The identity on CLOCK_MONOTONIC readings, relative to `start_ns`.
    pub fn monotonic(start_ns: u64) -> Clock {
        Clock {
            base_tick: start_ns,
            base_ns: 0,
            mult: 1 << 32,
        }
    }

    /// Nanoseconds since the trace started of a clock reading.
    #[inline(always)]
    pub fn ns(&self, tick: u64) -> u64 {
        let d = tick.wrapping_sub(self.base_tick) as i64 as i128;
        let ns = self.base_ns as i128 + ((d * self.mult as i128) >> 32);
        ns.clamp(0, u64::MAX as i128) as u64
    }

    /// Nanoseconds between two readings (0 if they run backwards).
    #[inline(always)]
    pub fn dur(&self, t0: u64, t1: u64) -> u64 {
        ((t1.saturating_sub(t0) as u128 * self.mult as u128) >> 32) as u64
    }
}

/// One (tick, CLOCK_MONOTONIC) pair read as close together as possible:
/// the best of a few tries, the tick taken between two clock reads.
fn anchor() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..5 {
        let a = monotonic_ns();
        let t = rdtsc();
        let b = monotonic_ns();
        if b - a < best.0 {
            best = (b - a, t, a + (b - a) / 2);
        }
    }
    (best.1, best.2)
}

/// The live conversion of one trace session: written between steps by the
/// thread that drives the decode, read by the hook on the workers.
pub struct Calibration {
    kind: ClockKind,
    start_ns: u64,
    first: (u64, u64),
    base_tick: AtomicU64,
    base_ns: AtomicU64,
    mult: AtomicU64,
}

impl Calibration {
    /// Start converting for a trace whose times count from `start_ns`
    /// (CLOCK_MONOTONIC). For the TSC this spins for 2 ms to measure the
    /// first slope.
    pub fn new(kind: ClockKind, start_ns: u64) -> Calibration {
        let c = Calibration {
            kind,
            start_ns,
            first: (0, 0),
            base_tick: AtomicU64::new(start_ns),
            base_ns: AtomicU64::new(0),
            mult: AtomicU64::new(1 << 32),
        };
        if kind == ClockKind::Monotonic {
            return c;
        }
        let first = anchor();
        while monotonic_ns() < first.1 + 2_000_000 {
            std::hint::spin_loop();
        }
        let c = Calibration { first, ..c };
        c.reanchor();
        c
    }

    pub fn kind(&self) -> ClockKind {
        self.kind
    }

    /// Re-measure the slope over everything since the start and move the
    /// base to now. Call between steps, while no worker is in the hook.
    pub fn reanchor(&self) {
        if self.kind == ClockKind::Monotonic {
            return;
        }
        let (t, ns) = anchor();
        let (t0, ns0) = self.first;
        let dt = t.wrapping_sub(t0);
        if dt == 0 || ns <= ns0 {
            return;
        }
        let mult = (((ns - ns0) as u128) << 32) / dt as u128;
        self.mult
            .store(mult.min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.base_tick.store(t, Ordering::Relaxed);
        self.base_ns
            .store(ns.saturating_sub(self.start_ns), Ordering::Relaxed);
    }

    /// The conversion as it stands.
    #[inline]
    pub fn clock(&self) -> Clock {
        Clock {
            base_tick: self.base_tick.load(Ordering::Relaxed),
            base_ns: self.base_ns.load(Ordering::Relaxed),
            mult: self.mult.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_is_the_identity_from_the_start() {
        let c = Clock::monotonic(1_000);
        assert_eq!(c.ns(1_000), 0);
        assert_eq!(c.ns(6_000_000_123), 5_999_999_123);
        assert_eq!(c.ns(999), 0, "before the start clamps to 0");
        assert_eq!(c.dur(10, 60), 50);
        assert_eq!(c.dur(60, 10), 0);
        assert_eq!(c.dur(0, 10_000_000_000), 10_000_000_000);
    }

    #[test]
    fn usable_needs_both_flags_and_a_tsc_clocksource() {
        let both = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc rdtscp nonstop_tsc\n";
        assert!(tsc_usable(both, Some("tsc\n")).is_ok() || !cfg!(target_arch = "x86_64"));
        assert!(tsc_usable(both, Some("hpet")).is_err());
        assert!(tsc_usable("flags\t: fpu tsc constant_tsc\n", None).is_err());
        assert!(tsc_usable("flags\t: fpu tsc nonstop_tsc\n", None).is_err());
        assert!(tsc_usable("", None).is_err());
    }

    /// The converted TSC keeps time with CLOCK_MONOTONIC: a reading taken
    /// between two clock reads converts to a time between them (allowing
    /// 20 µs for the slope measured over 2 ms and a preemption).
    #[test]
    fn tsc_conversion_agrees_with_the_monotonic_clock() {
        if choose() != ClockKind::Tsc {
            // Not a skip: the monotonic path is then what traces use, and
            // the identity test above covers it; say so.
            eprintln!("no invariant TSC here: checking the monotonic calibration");
        }
        let kind = choose();
        let start = monotonic_ns();
        let cal = Calibration::new(kind, start);
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            cal.reanchor();
            let a = monotonic_ns();
            let t = kind.read();
            let b = monotonic_ns();
            let ns = cal.clock().ns(t);
            assert!(
                ns + 20_000 >= a - start && ns <= b - start + 20_000,
                "{kind:?}: converted {ns} ns, clock said {}..{}",
                a - start,
                b - start
            );
        }
        // A span of 50 ms converts to 50 ms within 0.1%.
        let c = cal.clock();
        let (t0, n0) = (kind.read(), monotonic_ns());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (t1, n1) = (kind.read(), monotonic_ns());
        let (d, want) = (c.dur(t0, t1) as f64, (n1 - n0) as f64);
        assert!(
            (d - want).abs() < want * 1e-3 + 20_000.0,
            "{d} ns vs {want} ns"
        );
    }
}
