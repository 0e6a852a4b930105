//! Helpers for the unit tests: synthetic bundles in temporary directories.

use cktrace_tracer::{Registry, TraceRecord};
use tempfile::TempDir;

use crate::synth::{self, SynthSpec};

/// A synthetic bundle written to a fresh temporary directory, with the
/// registry and records it holds.
pub(crate) struct Bundle {
    pub dir: TempDir,
    pub spec: SynthSpec,
    pub reg: Registry,
    pub recs: Vec<TraceRecord>,
}

impl Bundle {
    pub fn new(spec: SynthSpec) -> Bundle {
        let (reg, recs) = synth::synthetic(&spec);
        let b = Bundle {
            dir: tempfile::tempdir().unwrap(),
            spec,
            reg,
            recs,
        };
        b.write();
        b
    }

    pub fn small() -> Bundle {
        Bundle::new(SynthSpec::small())
    }

    /// Rewrite the files from `reg` and `recs` (after a test changed them).
    pub fn write(&self) {
        let h = synth::header_for(self.recs.len() as u64, self.spec.threads);
        let meta = synth::meta_for(&self.spec, self.recs.len() as u64);
        synth::write_bundle(self.dir.path(), &h, &self.reg, Some(&meta), &self.recs).unwrap();
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn bin(&self) -> std::path::PathBuf {
        self.dir.path().join("trace.bin")
    }
}
