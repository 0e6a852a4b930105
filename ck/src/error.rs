//! The ck engine's error type. Every message is one line that names what was
//! wrong: the file, the key, the tensor, the option and the value.

use std::path::PathBuf;

use crate::gguf::{GgmlType, GgufError};

/// What went wrong building or running a ck engine.
#[derive(Debug, thiserror::Error)]
pub enum CkError {
    #[error(transparent)]
    Gguf(#[from] GgufError),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: architecture {arch} is not supported by the ck engine (supported: {supported})", path.display())]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },

    #[error("{}: tensor {name} has type {ty}, which the ck engine does not support for {role} (supported: {supported})", path.display())]
    UnsupportedType {
        path: PathBuf,
        name: String,
        ty: GgmlType,
        role: &'static str,
        supported: String,
    },

    #[error("{}: tensor {name} has shape {found:?}, expected {expected:?}", path.display())]
    WrongShape {
        path: PathBuf,
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },

    #[error("{}: tensor {name} is not supported by the ck engine's {arch} model ({why})", path.display())]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        arch: &'static str,
        why: &'static str,
    },

    #[error("{}: {key} is {value}: {why}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        value: String,
        why: String,
    },

    #[error("{}: tensor {name} data at byte {offset} is not {align}-byte aligned in the file", path.display())]
    Misaligned {
        path: PathBuf,
        name: String,
        offset: u64,
        align: u64,
    },

    #[error("{}: tensors {a} (bytes {a_start}..{a_end}) and {b} (from byte {b_start}) overlap", path.display())]
    Overlap {
        path: PathBuf,
        a: String,
        a_start: u64,
        a_end: u64,
        b: String,
        b_start: u64,
    },

    #[error("{}: the file is {now} bytes now but was {then} bytes when its header was read (changed while opening)", path.display())]
    FileChanged { path: PathBuf, then: u64, now: u64 },

    #[error("invalid option {option}: {why}")]
    Options { option: &'static str, why: String },

    #[error("the layout needs {what}, which overflows the address space")]
    TooLarge { what: String },

    #[error("could not allocate the {bytes}-byte arena")]
    Alloc { bytes: usize },

    #[error("kernels: {0}")]
    Kernels(String),

    #[error("token id {id} at index {index} is out of range (vocabulary of {n_vocab})")]
    Token {
        id: i64,
        index: usize,
        n_vocab: usize,
    },

    #[error("context full: {n} tokens at position {pos} do not fit in a context of {ctx}")]
    ContextFull { pos: usize, n: usize, ctx: usize },

    #[error("position {pos} is past the {n_past} positions the KV cache holds")]
    CacheGap { pos: usize, n_past: usize },

    #[error("no tokens given")]
    NoTokens,

    #[error(
        "arena canary after region {region} (at offset {offset}) was overwritten: {found:#018x}"
    )]
    Canary {
        region: String,
        offset: usize,
        found: u64,
    },

    #[error("{what}: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CkError>;
