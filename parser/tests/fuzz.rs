//! Damaged traces never panic the parser: a valid synthetic bundle is
//! mutated at random (bytes flipped, header counts changed, record fields
//! set to extremes, the file cut, the registry garbled) and every entry
//! point must return, with an error or a result, but never unwind.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use cktrace_parser::export::{self, chrome, Format};
use cktrace_parser::synth::{self, SynthSpec};
use cktrace_parser::{Filter, Stats, Trace, Validation};

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A value that is often an edge case.
    fn extreme(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => u32::MAX as u64,
            3 => 1 << self.below(64),
            4 => self.below(64),
            _ => self.next(),
        }
    }
}

/// Every public entry point over the bundle in `dir`.
fn exercise(dir: &Path) {
    let Ok(t) = Trace::open(dir) else { return };
    let _ = Stats::compute(&t, &Filter::default());
    let _ = Stats::compute_with_threads(&t, &Filter::default(), 2);
    let f = Filter {
        tensor: Some(regex::Regex::new("attn|cache").unwrap()),
        ..Default::default()
    };
    let s = Stats::compute(&t, &f);
    s.write_text(&mut io::sink()).unwrap();
    let v = Validation::run(&t);
    v.write_text(&mut io::sink()).unwrap();
    serde_json::to_vec(&v).unwrap();
    for format in [Format::Table, Format::Csv, Format::Jsonl, Format::Json] {
        export::write_records(&t, &Filter::default(), format, None, &mut io::sink()).unwrap();
    }
    chrome::write_chrome(&t, &Filter::default(), &mut io::sink()).unwrap();
}

#[test]
fn mutated_traces_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        n_layer: 1,
        decode_steps: 1,
        ..SynthSpec::small_moe()
    };
    let n = synth::write_synthetic(dir.path(), &spec).unwrap();
    assert!(n > 50);
    let bin_path = dir.path().join("trace.bin");
    let reg_path = dir.path().join("registry.json");
    let good_bin = std::fs::read(&bin_path).unwrap();
    let good_reg = std::fs::read(&reg_path).unwrap();
    exercise(dir.path());

    // CKTRACE_FUZZ_SEED / CKTRACE_FUZZ_ITERS explore further by hand.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = Rng(env("CKTRACE_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15) | 1);
    let iters = env("CKTRACE_FUZZ_ITERS", 2000);
    let (mut opened, mut refused) = (0, 0);
    for it in 0..iters {
        let mut bin = good_bin.clone();
        let mut reg = good_reg.clone();
        match rng.below(8) {
            0 | 1 => {
                for _ in 0..1 + rng.below(16) {
                    let i = rng.below(bin.len() as u64) as usize;
                    bin[i] ^= 1 << rng.below(8);
                }
            }
            2 => {
                // Header counts: records/complete/capacity/dropped, kept
                // consistent half of the time so that reading goes on.
                let v = rng.extreme();
                let field = [24, 32, 40, 48][rng.below(4) as usize];
                bin[field..field + 8].copy_from_slice(&v.to_le_bytes());
                if rng.below(2) == 0 {
                    bin[24..32].copy_from_slice(&v.to_le_bytes());
                    bin[32..40].copy_from_slice(&v.to_le_bytes());
                    bin[40..48].copy_from_slice(&0u64.to_le_bytes());
                }
            }
            3 => {
                let len = rng.below(bin.len() as u64 + 1) as usize;
                bin.truncate(len);
            }
            4..=6 => {
                // Record fields set to extremes (flags kept VALID mostly).
                for _ in 0..1 + rng.below(8) {
                    let slot = rng.below(n) as usize;
                    let at = 256 + slot * 128;
                    let (off, size) = [
                        (0, 8),
                        (8, 4),
                        (12, 4),
                        (16, 4),
                        (20, 2),
                        (22, 1),
                        (24, 1),
                        (25, 1),
                        (26, 2),
                        (28, 2),
                        (30, 2),
                        (32, 4),
                        (36, 4),
                        (40, 8),
                        (48, 8),
                        (56, 4),
                        (60, 4),
                        (64, 4),
                        (68, 4),
                        (72, 4),
                        (76, 4),
                        (80, 8),
                        (88, 8),
                        (96, 32),
                    ][rng.below(24) as usize];
                    let v = rng.extreme().to_le_bytes();
                    for k in 0..size {
                        bin[at + off + k] = v[k % 8];
                    }
                    if rng.below(4) != 0 {
                        bin[at + 79] |= 0x80;
                    }
                }
            }
            _ => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(reg.len() as u64) as usize;
                    reg[i] = b"0123456789{}[]\",:-e."[rng.below(20) as usize];
                }
            }
        }
        // Fresh files, not truncated ones: ext4 flushes a truncated-and-
        // rewritten file to disk on close, which would make this slow.
        for (p, bytes) in [(&bin_path, &bin), (&reg_path, &reg)] {
            std::fs::remove_file(p).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        match Trace::open(dir.path()) {
            Ok(_) => opened += 1,
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
            }
        }
        let r = catch_unwind(AssertUnwindSafe(|| exercise(dir.path())));
        if r.is_err() {
            let keep = std::env::temp_dir().join(format!("cktrace-fuzz-failure-{it}"));
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join("trace.bin"), &bin);
            let _ = std::fs::write(keep.join("registry.json"), &reg);
            panic!("iteration {it} panicked; input kept in {}", keep.display());
        }
    }
    // Both outcomes were exercised.
    assert!(
        opened > 500 && refused > 50,
        "opened {opened}, refused {refused}"
    );
}
