//! Stand-in for `trace.rs` in a build of llama.cpp without our patch series
//! (`CKTRACE_NO_PATCHES=1`), which exists only to measure what the compiled-in
//! hook costs (`cktrace bench hook`). Tracing is unavailable in such a build.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use cktrace_tracer::sink::SinkStats;
use cktrace_tracer::Meta;

use crate::generate::StepHook;
use crate::llama::Model;

pub struct TraceSession {
    dir: PathBuf,
}

impl TraceSession {
    pub fn start(
        _dir: &Path,
        _model: &Model,
        _threads: u32,
        _capacity: u64,
        _ops: bool,
    ) -> Result<TraceSession> {
        bail!("this binary was built with CKTRACE_NO_PATCHES=1: llama.cpp has no trace hooks")
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn n_weights(&self) -> usize {
        0
    }
    pub fn set_recording(&mut self, _on: bool) {}
    pub fn finish(&mut self, _meta: Meta) -> Result<SinkStats> {
        bail!("no trace hooks in this build")
    }
}

impl StepHook for TraceSession {}
