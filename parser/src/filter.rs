//! Selecting records: by layer, op, thread, step, phase, kernel path and a
//! regex on the tensor name.
//!
//! A [`Filter`] is the user's request (it doubles as the clap arguments of
//! the `parse` and `export` commands); [`Filter::matcher`] turns it into a
//! [`Matcher`] against one registry, resolving the tensor regex once per
//! registry tensor so that matching a record is a handful of comparisons.
//! Every criterion left empty matches everything; given criteria must all
//! match; a criterion with several values matches any of them.

use std::fmt;
use std::str::FromStr;

use cktrace_tracer::format::NAME_LEN;
use cktrace_tracer::{KernelPath, Op, Phase, Registry, TraceRecord};
use regex::Regex;

/// An inclusive range of integers, written `N`, `A..B` (B excluded) or
/// `A..=B` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntRange {
    pub lo: i64,
    pub hi: i64,
}

impl IntRange {
    pub fn one(v: i64) -> IntRange {
        IntRange { lo: v, hi: v }
    }

    pub fn contains(&self, v: i64) -> bool {
        self.lo <= v && v <= self.hi
    }
}

impl FromStr for IntRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IntRange, String> {
        let s = s.trim();
        let num = |t: &str| -> Result<i64, String> {
            t.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{t}' is not an integer (expected N, A..B or A..=B)"))
        };
        if let Some((a, b)) = s.split_once("..=") {
            let (lo, hi) = (num(a)?, num(b)?);
            return if lo <= hi {
                Ok(IntRange { lo, hi })
            } else {
                Err(format!("empty range '{s}'"))
            };
        }
        if let Some((a, b)) = s.split_once("..") {
            let (lo, hi) = (num(a)?, num(b)?);
            return if lo < hi {
                Ok(IntRange { lo, hi: hi - 1 })
            } else {
                Err(format!("empty range '{s}'"))
            };
        }
        num(s).map(IntRange::one)
    }
}

impl fmt::Display for IntRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}..={}", self.lo, self.hi)
        }
    }
}

fn parse_op(s: &str) -> Result<Op, String> {
    Op::parse(s.trim()).ok_or_else(|| {
        format!(
            "unknown op '{s}' (one of {})",
            names(Op::ALL.iter().map(|o| o.as_str()))
        )
    })
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    Phase::parse(s.trim()).ok_or_else(|| {
        format!(
            "unknown phase '{s}' (one of {})",
            names(Phase::ALL.iter().map(|o| o.as_str()))
        )
    })
}

fn parse_path(s: &str) -> Result<KernelPath, String> {
    KernelPath::parse(s.trim()).ok_or_else(|| {
        format!(
            "unknown kernel path '{s}' (one of {})",
            names(KernelPath::ALL.iter().map(|o| o.as_str()))
        )
    })
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("bad tensor regex: {e}"))
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// Which records to keep. Values of one flag may be repeated or separated
/// by commas (`--op mul_mat,get_rows`, `--layer 0..4,31`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Filter {
    /// Transformer layer(s): N, A..B, A..=B; -1 is "no layer" (token_embd, output).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "LAYERS"
    )]
    pub layer: Vec<IntRange>,
    /// Op(s): mul_mat, mul_mat_id, get_rows, other.
    #[arg(long, value_delimiter = ',', value_parser = parse_op, value_name = "OPS")]
    pub op: Vec<Op>,
    /// Thread index(es) within the op's thread pool.
    #[arg(long, value_delimiter = ',', value_name = "THREADS")]
    pub thread: Vec<IntRange>,
    /// Decode step(s): 0 is the prompt, n the n-th generated token.
    #[arg(long, value_delimiter = ',', value_name = "STEPS")]
    pub step: Vec<IntRange>,
    /// Phase(s): prefill, decode, other.
    #[arg(long, value_delimiter = ',', value_parser = parse_phase, value_name = "PHASES")]
    pub phase: Vec<Phase>,
    /// Kernel path(s): vec_dot, llamafile, repack_gemv, repack_gemm, amx, ...
    #[arg(long, value_delimiter = ',', value_parser = parse_path, value_name = "PATHS")]
    pub path: Vec<KernelPath>,
    /// Regex searched in the tensor's registry name (or the record's own
    /// truncated name when its tensor_id does not resolve).
    #[arg(long, value_parser = parse_regex, value_name = "REGEX")]
    pub tensor: Option<Regex>,
}

impl Filter {
    /// True when the filter keeps every record.
    pub fn is_empty(&self) -> bool {
        self.layer.is_empty()
            && self.op.is_empty()
            && self.thread.is_empty()
            && self.step.is_empty()
            && self.phase.is_empty()
            && self.path.is_empty()
            && self.tensor.is_none()
    }

    /// Compile against a registry for fast matching.
    pub fn matcher<'a>(&'a self, registry: &Registry) -> Matcher<'a> {
        let mut op = [0u64; 4];
        let mut phase = [0u64; 4];
        let mut path = [0u64; 4];
        for o in &self.op {
            set(&mut op, *o as u8);
        }
        for p in &self.phase {
            set(&mut phase, *p as u8);
        }
        for p in &self.path {
            set(&mut path, *p as u8);
        }
        let tensor_ok = match &self.tensor {
            Some(re) => registry
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if t.id as usize == i {
                        Some(re.is_match(&t.name))
                    } else {
                        None
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        Matcher {
            filter: self,
            all: self.is_empty(),
            op,
            phase,
            path,
            tensor_ok,
        }
    }

    /// A short description for report headers, `None` when empty.
    pub fn describe(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        let join = |v: Vec<String>| v.join(",");
        if !self.layer.is_empty() {
            parts.push(format!(
                "layer={}",
                join(self.layer.iter().map(|r| r.to_string()).collect())
            ));
        }
        if !self.op.is_empty() {
            parts.push(format!(
                "op={}",
                join(self.op.iter().map(|r| r.to_string()).collect())
            ));
        }
        if !self.thread.is_empty() {
            parts.push(format!(
                "thread={}",
                join(self.thread.iter().map(|r| r.to_string()).collect())
            ));
        }
        if !self.step.is_empty() {
            parts.push(format!(
                "step={}",
                join(self.step.iter().map(|r| r.to_string()).collect())
            ));
        }
        if !self.phase.is_empty() {
            parts.push(format!(
                "phase={}",
                join(self.phase.iter().map(|r| r.to_string()).collect())
            ));
        }
        if !self.path.is_empty() {
            parts.push(format!(
                "path={}",
                join(self.path.iter().map(|r| r.to_string()).collect())
            ));
        }
        if let Some(re) = &self.tensor {
            parts.push(format!("tensor=/{}/", re.as_str()));
        }
        Some(parts.join(" "))
    }
}

fn set(mask: &mut [u64; 4], code: u8) {
    mask[(code >> 6) as usize] |= 1 << (code & 63);
}

fn has(mask: &[u64; 4], code: u8) -> bool {
    mask[(code >> 6) as usize] & (1 << (code & 63)) != 0
}

fn in_ranges(ranges: &[IntRange], v: i64) -> bool {
    ranges.is_empty() || ranges.iter().any(|r| r.contains(v))
}

/// A [`Filter`] compiled against one registry.
#[derive(Clone, Debug)]
pub struct Matcher<'a> {
    filter: &'a Filter,
    all: bool,
    op: [u64; 4],
    phase: [u64; 4],
    path: [u64; 4],
    /// Per registry index: whether the tensor regex matches its name
    /// (`None`: the entry's id is not its index, so ids never resolve to it).
    tensor_ok: Vec<Option<bool>>,
}

impl Matcher<'_> {
    /// True when every record matches.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether `r` passes the filter.
    #[inline]
    pub fn matches(&self, r: &TraceRecord) -> bool {
        if self.all {
            return true;
        }
        let f = self.filter;
        if !f.op.is_empty() && !has(&self.op, r.op) {
            return false;
        }
        if !f.phase.is_empty() && !has(&self.phase, r.phase) {
            return false;
        }
        if !f.path.is_empty() && !has(&self.path, r.path) {
            return false;
        }
        if !in_ranges(&f.layer, r.layer as i64)
            || !in_ranges(&f.thread, r.thread as i64)
            || !in_ranges(&f.step, r.step as i64)
        {
            return false;
        }
        if let Some(re) = &f.tensor {
            return match self.tensor_ok.get(r.tensor_id as usize).copied().flatten() {
                Some(ok) => ok,
                None => {
                    let end = r.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
                    re.is_match(&String::from_utf8_lossy(&r.name[..end]))
                }
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cktrace_tracer::{MemorySource, TensorInfo, TensorKind};

    fn reg() -> Registry {
        let mut r = Registry::new();
        for (i, n) in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "cache_k_l0"]
            .iter()
            .enumerate()
        {
            r.tensors.push(TensorInfo {
                id: i as u32,
                name: n.to_string(),
                kind: TensorKind::Weight,
                dtype: "q4_K".into(),
                shape: vec![256, 16],
                n_rows: 16,
                row_bytes: 144,
                bytes: 16 * 144,
                layer: Some(0),
                gguf_offset: None,
                source: MemorySource::Mmap,
                buffer_type: "CPU".into(),
                data_ptrs: vec![],
                buffer_bytes: None,
            });
        }
        r
    }

    #[test]
    fn int_ranges_parse() {
        assert_eq!("3".parse::<IntRange>().unwrap(), IntRange::one(3));
        assert_eq!("-1".parse::<IntRange>().unwrap(), IntRange::one(-1));
        assert_eq!(
            "2..5".parse::<IntRange>().unwrap(),
            IntRange { lo: 2, hi: 4 }
        );
        assert_eq!(
            "2..=5".parse::<IntRange>().unwrap(),
            IntRange { lo: 2, hi: 5 }
        );
        assert!("5..2".parse::<IntRange>().is_err());
        assert!("x".parse::<IntRange>().is_err());
    }

    #[test]
    fn matches_each_criterion() {
        let registry = reg();
        let mut r = TraceRecord {
            op: Op::MulMat as u8,
            layer: 0,
            thread: 1,
            step: 2,
            tensor_id: 1,
            ..Default::default()
        };
        r.set_name(b"blk.0.ffn_down.weight");
        let f = Filter::default();
        assert!(f.matcher(&registry).matches(&r));

        let f = Filter {
            tensor: Some(Regex::new("ffn_").unwrap()),
            ..Default::default()
        };
        assert!(f.matcher(&registry).matches(&r));
        let f = Filter {
            tensor: Some(Regex::new("attn_q").unwrap()),
            ..Default::default()
        };
        assert!(!f.matcher(&registry).matches(&r));
        // Unresolved id: falls back to the record's name.
        let mut u = r;
        u.tensor_id = 77;
        let f = Filter {
            tensor: Some(Regex::new("ffn_down").unwrap()),
            ..Default::default()
        };
        assert!(f.matcher(&registry).matches(&u));

        let f = Filter {
            op: vec![Op::GetRows],
            ..Default::default()
        };
        assert!(!f.matcher(&registry).matches(&r));
        let f = Filter {
            op: vec![Op::GetRows, Op::MulMat],
            layer: vec![IntRange::one(0)],
            ..Default::default()
        };
        assert!(f.matcher(&registry).matches(&r));
        let f = Filter {
            step: vec!["0..2".parse().unwrap()],
            ..Default::default()
        };
        assert!(!f.matcher(&registry).matches(&r));
        let f = Filter {
            thread: vec![IntRange::one(1)],
            phase: vec![Phase::Prefill],
            ..Default::default()
        };
        assert!(f.matcher(&registry).matches(&r));
        let f = Filter {
            path: vec![KernelPath::Amx],
            ..Default::default()
        };
        assert!(!f.matcher(&registry).matches(&r));
        assert!(f.describe().unwrap().contains("path=amx"));
    }
}
