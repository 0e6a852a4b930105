//! Reading cktrace trace bundles after the fact: a zero-copy reader over the
//! memory-mapped `trace.bin`, record filters, statistics, consistency checks
//! and exports (table, CSV, JSON lines, JSON, Chrome trace events, Parquet).
//!
//! The crate is a library; the `cktrace` binary wires [`cli::ParseArgs`] and
//! [`cli::ExportArgs`] into its `parse` and `export` subcommands. Nothing here
//! panics on a malformed trace: every count read from a file is checked
//! against the file's size, and problems come back as a [`ParseError`], as a
//! warning on the opened [`Trace`], or as a failed [`validate`] check.

pub mod analyze;
pub mod bench;
pub mod cli;
pub mod export;
pub mod filter;
pub mod reader;
pub mod stats;
pub mod synth;
pub mod tiling;
pub mod validate;

mod names;

pub use filter::{Filter, IntRange, Matcher};
pub use reader::{ParseError, Records, SlotRecords, Trace};
pub use stats::Stats;
pub use validate::{Check, CheckId, Validation};

#[cfg(test)]
mod testutil;
