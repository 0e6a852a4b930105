//! The GGUF reader (`cktrace_ck::gguf`) held to ggml's own: its type table,
//! and the tensor map it reads from our writer's files and from the real
//! models. These tests need the llama.cpp build, so they live here rather
//! than beside the reader.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use cktrace::ffi;
use cktrace::gguf::{GgmlType, GgufError, GgufFile, GgufWriter};

mod common;
use common::model;

/// A file with a float, a block-quantized and a K-quant tensor.
fn small_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "test")
        .add_metadata("a.u32", 70_000u32);
    w.add_tensor("f32.weight", &[3], GgmlType::F32, vec![1; 12])
        .unwrap();
    w.add_tensor("q8.weight", &[32, 2], GgmlType::Q8_0, vec![2; 68])
        .unwrap();
    w.add_tensor("q4k.weight", &[256, 1, 2], GgmlType::Q4_K, vec![3; 288])
        .unwrap();
    w
}

fn counts(f: &GgufFile) -> Vec<(&'static str, usize)> {
    f.type_counts()
        .into_iter()
        .map(|(t, n)| (t.name(), n))
        .collect()
}

fn ours_offsets(f: &GgufFile) -> Vec<(String, u64, u64)> {
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), t.file_offset, t.size))
        .collect()
}

/// (name, absolute offset, size) of every tensor according to ggml's
/// gguf reader.
fn ggml_offsets(path: &Path) -> Vec<(String, u64, u64)> {
    cktrace::llama::gguf_tensors(path)
        .unwrap_or_else(|e| panic!("ggml could not read {}: {e}", path.display()))
        .into_iter()
        .map(|t| (t.name, t.file_offset, t.bytes))
        .collect()
}

#[test]
fn type_table_matches_ggml() {
    for id in 0..ffi::GGML_TYPE_COUNT {
        // SAFETY: ids below GGML_TYPE_COUNT index ggml's type-traits
        // table; removed types have block size 0 there.
        let (blck, size, name) = unsafe {
            (
                ffi::ggml_blck_size(id),
                ffi::ggml_type_size(id),
                CStr::from_ptr(ffi::ggml_type_name(id)),
            )
        };
        match GgmlType::from_id(id) {
            None => assert_eq!(
                blck, 0,
                "ggml type {id} ({name:?}) is missing from GgmlType"
            ),
            Some(t) => {
                assert_eq!(
                    (t.block_size(), t.type_size()),
                    (blck as u64, size as u64),
                    "{t}"
                );
                assert_eq!(t.name(), name.to_str().unwrap());
            }
        }
    }
}

/// ggml's own reader agrees with ours on a file we wrote.
#[test]
fn ggml_reads_our_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    small_writer().write(&path).unwrap();
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(ggml_offsets(&path), ours_offsets(&ours));
}

#[test]
fn smollm2_tensor_types_and_offsets() {
    let path = model("smollm2");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.arch().unwrap(), "llama");
    assert_eq!(counts(&f), [("f32", 61), ("q4_1", 210), ("q8_0", 1)]);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_str_arr("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(ggml_offsets(&path), ours_offsets(&f));
}

#[test]
fn gemma3_tensor_types_and_offsets() {
    let path = model("gemma3");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.arch().unwrap(), "gemma3");
    assert_eq!(
        counts(&f),
        [
            ("f32", 109),
            ("q5_0", 81),
            ("q8_0", 10),
            ("q4_K", 27),
            ("q6_K", 9)
        ]
    );
    assert_eq!(
        f.get_str_arr("tokenizer.ggml.tokens").unwrap().len(),
        262144
    );
    assert_eq!(ggml_offsets(&path), ours_offsets(&f));
}

/// A real model cut in half: the header is intact, the data is not.
#[test]
fn real_model_truncated_at_half() {
    let src = model("smollm2");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.gguf");
    let len = std::fs::metadata(&src).unwrap().len();
    let mut from = File::open(&src).unwrap();
    let mut to = File::create(&path).unwrap();
    io::copy(&mut (&mut from).take(len / 2), &mut to).unwrap();
    drop(to);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, GgufError::TensorPastEnd { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("but the file has {} bytes", len / 2)),
        "{msg}"
    );
    eprintln!("{msg}");
}
