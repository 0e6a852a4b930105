//! Display names of the raw codes stored in records. A code this build does
//! not know (a newer writer, or a corrupt record) prints as `unknown(N)`
//! instead of failing, so every report can show every record.

use std::borrow::Cow;

use cktrace_tracer::{KernelPath, MemorySource, Op, Phase, TensorKind};

pub(crate) fn op(code: u8) -> Cow<'static, str> {
    match Op::from_u8(code) {
        Some(o) => Cow::Borrowed(o.as_str()),
        None => Cow::Owned(format!("unknown({code})")),
    }
}

pub(crate) fn path(code: u8) -> Cow<'static, str> {
    match KernelPath::from_u8(code) {
        Some(p) => Cow::Borrowed(p.as_str()),
        None => Cow::Owned(format!("unknown({code})")),
    }
}

pub(crate) fn phase(code: u8) -> Cow<'static, str> {
    match Phase::from_u8(code) {
        Some(p) => Cow::Borrowed(p.as_str()),
        None => Cow::Owned(format!("unknown({code})")),
    }
}

pub(crate) fn kind(k: TensorKind) -> &'static str {
    match k {
        TensorKind::Weight => "weight",
        TensorKind::KvCache => "kv_cache",
        TensorKind::Activation => "activation",
    }
}

pub(crate) fn source(s: MemorySource) -> &'static str {
    match s {
        MemorySource::Mmap => "mmap",
        MemorySource::Anon => "anon",
        MemorySource::Repacked => "repacked",
        MemorySource::Runtime => "runtime",
    }
}

/// `1536` -> `1.50 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// Nanoseconds as milliseconds with 3 decimals, from integers (exact).
pub(crate) fn ms(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000_000, (ns / 1000) % 1000)
}
