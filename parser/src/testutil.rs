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

    /// Rewrite `trace.bin` as version 2: the records packed in chunks of
    /// `per_chunk`. Returns the file's bytes.
    pub fn write_packed(&self, per_chunk: usize) -> Vec<u8> {
        use cktrace_tracer::format::VERSION_PACKED;
        use cktrace_tracer::pack;
        let mut h = synth::header_for(self.recs.len() as u64, self.spec.threads);
        h.version = VERSION_PACKED;
        let mut body = vec![0u8; pack::DATA_START as usize];
        let mut slot = 0u64;
        for c in self.recs.chunks(per_chunk.max(1)) {
            let raw: Vec<u8> = c
                .iter()
                .flat_map(|r| {
                    let mut r = *r;
                    r.flags |= cktrace_tracer::format::flags::VALID;
                    *r.as_bytes()
                })
                .collect();
            let mut out = vec![0u8; pack::chunk_bound(c.len())];
            let span = pack::write_chunk(&raw, slot, &mut out);
            body.extend_from_slice(&out[..span]);
            slot += c.len() as u64;
        }
        h.data_end = body.len() as u64;
        body[..cktrace_tracer::format::HEADER_SIZE].copy_from_slice(&h.to_bytes());
        std::fs::write(self.bin(), &body).unwrap();
        body
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn bin(&self) -> std::path::PathBuf {
        self.dir.path().join("trace.bin")
    }
}
