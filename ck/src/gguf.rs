//! A safe, bounds-checked reader and a small writer for GGUF (v2/v3) files.
//!
//! The tracer needs to know, for every weight tensor of a model, where its
//! bytes sit in the file and how many there are, so that a memory access can
//! be attributed to a tensor. This module reads that map (metadata, tensor
//! infos, the data section and each tensor's absolute file range) without
//! going through llama.cpp, and refuses a damaged file with one line that
//! names the file and what is wrong.
//!
//! Every length and count read from the file is checked against the bytes
//! that remain before anything is allocated from it, so a corrupt or hostile
//! header cannot make the reader allocate more than a small multiple of the
//! file's own size.
//!
//! [`GgufWriter`] writes GGUF v3 files (used by [`crate::testmodel`] to build
//! tiny models for tests).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version [`GgufWriter`] writes.
pub const GGUF_VERSION: u32 = 3;
/// Data-section alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const GGML_MAX_DIMS: usize = 4;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this.
pub const GGML_MAX_NAME: usize = 64;

/// What went wrong opening or reading a GGUF file. Each message is one line
/// that starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: not a GGUF file (starts with bytes {found:02x?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: Vec<u8> },

    #[error("{}: unsupported GGUF version {version}{hint} (supported: 2, 3)", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },

    #[error("{}: truncated: {what} at byte {offset} needs {needed} bytes but the file has {file_len} bytes", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },

    #[error("{}: truncated: tensor {name} data ends at byte {end} but the file has {file_len} bytes", path.display())]
    TensorPastEnd {
        path: PathBuf,
        name: String,
        end: u64,
        file_len: u64,
    },

    #[error("{}: {what} is {count}, more than the remaining {remaining} bytes of the file can hold (truncated or corrupt)", path.display())]
    AbsurdCount {
        path: PathBuf,
        what: String,
        count: u64,
        remaining: u64,
    },

    #[error("{}: tensor {name} has unknown ggml type id {type_id}", path.display())]
    UnknownTensorType {
        path: PathBuf,
        name: String,
        type_id: u32,
    },

    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    #[error("{}: metadata key {key} is missing", path.display())]
    MissingKey { path: PathBuf, key: String },

    #[error("{}: metadata key {key} is {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("{}: no tensor named {name}", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("gguf writer: {0}")]
    Writer(String),
}

/// A ggml tensor element type, with the block layout needed to size its data.
///
/// The discriminants are ggml's `enum ggml_type` ids as stored in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

impl GgmlType {
    /// Every type this module can size, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// The type with ggml id `id`, if this module knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// ggml's type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        self.layout().0
    }

    /// Elements per block (`ggml_blck_size`).
    pub fn block_size(self) -> u64 {
        self.layout().1
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn type_size(self) -> u64 {
        self.layout().2
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not
    /// a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        if n_elements % self.block_size() != 0 {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }

    /// (name, block size, type size), from the block structs and their size
    /// assertions in ggml/src/ggml-common.h (QK_K = 256).
    fn layout(self) -> (&'static str, u64, u64) {
        use GgmlType::*;
        match self {
            F32 => ("f32", 1, 4),
            F16 => ("f16", 1, 2),
            Q4_0 => ("q4_0", 32, 2 + 16),
            Q4_1 => ("q4_1", 32, 2 * 2 + 16),
            Q5_0 => ("q5_0", 32, 2 + 4 + 16),
            Q5_1 => ("q5_1", 32, 2 * 2 + 4 + 16),
            Q8_0 => ("q8_0", 32, 2 + 32),
            Q8_1 => ("q8_1", 32, 2 * 2 + 32),
            Q2_K => ("q2_K", 256, 2 * 2 + 256 / 16 + 256 / 4),
            Q3_K => ("q3_K", 256, 2 + 256 / 4 + 256 / 8 + 12),
            Q4_K => ("q4_K", 256, 2 * 2 + 12 + 256 / 2),
            Q5_K => ("q5_K", 256, 2 * 2 + 12 + 256 / 2 + 256 / 8),
            Q6_K => ("q6_K", 256, 2 + 256 / 16 + 3 * 256 / 4),
            Q8_K => ("q8_K", 256, 4 + 256 + 256 / 16 * 2),
            IQ2_XXS => ("iq2_xxs", 256, 2 + 256 / 8 * 2),
            IQ2_XS => ("iq2_xs", 256, 2 + 256 / 8 * 2 + 256 / 32),
            IQ3_XXS => ("iq3_xxs", 256, 2 + 3 * (256 / 8)),
            IQ1_S => ("iq1_s", 256, 2 + 256 / 8 + 256 / 16),
            IQ4_NL => ("iq4_nl", 32, 2 + 16),
            IQ3_S => ("iq3_s", 256, 2 + 13 * (256 / 32) + 256 / 64),
            IQ2_S => ("iq2_s", 256, 2 + 256 / 4 + 256 / 16),
            IQ4_XS => ("iq4_xs", 256, 2 + 2 + 256 / 64 + 256 / 2),
            I8 => ("i8", 1, 1),
            I16 => ("i16", 1, 2),
            I32 => ("i32", 1, 4),
            I64 => ("i64", 1, 8),
            F64 => ("f64", 1, 8),
            IQ1_M => ("iq1_m", 256, 256 / 8 + 256 / 16 + 256 / 32),
            BF16 => ("bf16", 1, 2),
            TQ1_0 => ("tq1_0", 256, 2 + 256 / 64 + (256 - 4 * 256 / 64) / 5),
            TQ2_0 => ("tq2_0", 256, 2 + 256 / 4),
            MXFP4 => ("mxfp4", 32, 1 + 16),
            NVFP4 => ("nvfp4", 64, 4 + 32),
            Q1_0 => ("q1_0", 128, 2 + 128 / 8),
            Q2_0 => ("q2_0", 64, 2 + 64 / 4),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type tag of a GGUF metadata value (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The gguf name of the type (`gguf_type_name`).
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Encoded size of one value, or the smallest possible size for a string
    /// (its 8-byte length) or an array (type tag + count).
    fn min_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value. Strings that are not valid UTF-8 are stored with the
/// invalid bytes replaced by U+FFFD.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array. GGUF allows nested arrays, but ggml's reader rejects
/// them, and so does this one.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// The value as an integer, whatever its integer width.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A short description for error messages: `u32`, `arr[str; 262144]`.
    pub fn describe(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("arr[{}; {}]", a.elem_type().name(), a.len()),
            v => v.value_type().name().to_string(),
        }
    }
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for GgufValue {
            fn from(x: $t) -> Self { GgufValue::$v(x) }
        }
        impl From<Vec<$t>> for GgufValue {
            fn from(x: Vec<$t>) -> Self { GgufValue::Array(GgufArray::$v(x)) }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
            bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for GgufValue {
    fn from(x: &str) -> Self {
        GgufValue::String(x.to_string())
    }
}

/// One tensor's entry in the header, with its place in the file resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Extent of each dimension, innermost first (ggml's `ne`), `n_dims` long.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// One past the last byte of the data, as an absolute file offset.
    pub fn file_end(&self) -> u64 {
        self.file_offset + self.size
    }
}

/// A parsed GGUF header: metadata, tensor infos and the data section's place.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    file_len: u64,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Reads and validates the header of the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut r = Reader {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len: file_len,
            path,
        };
        parse(&mut r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Size of the file in bytes when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// `general.alignment`, or 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the (aligned) data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All key/value pairs, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`GgufFile::tensor`], but a missing tensor is an error that names
    /// the file.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `general.architecture`.
    pub fn arch(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.describe(),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T, GgufError> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, expected, v))
    }

    /// An integer value of any width that fits in a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_int(key, "an integer that fits in u32")
    }

    /// An integer value of any width that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_int(key, "an integer that fits in u64")
    }

    /// An integer value of any width that fits in an `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.get_int(key, "an integer that fits in i64")
    }

    /// An `f32` value (an `f64` is narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.require(key)? {
            GgufValue::F32(v) => Ok(*v),
            GgufValue::F64(v) => Ok(*v as f32),
            v => Err(self.wrong_type(key, "f32", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            GgufValue::Bool(v) => Ok(*v),
            v => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            GgufValue::String(s) => Ok(s),
            v => Err(self.wrong_type(key, "str", v)),
        }
    }

    /// An array of any element type.
    pub fn get_arr(&self, key: &str) -> Result<&GgufArray, GgufError> {
        match self.require(key)? {
            GgufValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, "arr", v)),
        }
    }

    /// An array of strings, e.g. `tokenizer.ggml.tokens`.
    pub fn get_str_arr(&self, key: &str) -> Result<&[String], GgufError> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::String(a)) => Ok(a),
            v => Err(self.wrong_type(key, "arr[str]", v)),
        }
    }

    pub fn get_f32_arr(&self, key: &str) -> Result<&[f32], GgufError> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::F32(a)) => Ok(a),
            v => Err(self.wrong_type(key, "arr[f32]", v)),
        }
    }

    pub fn get_i32_arr(&self, key: &str) -> Result<&[i32], GgufError> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::I32(a)) => Ok(a),
            v => Err(self.wrong_type(key, "arr[i32]", v)),
        }
    }

    pub fn get_u32_arr(&self, key: &str) -> Result<&[u32], GgufError> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::U32(a)) => Ok(a),
            v => Err(self.wrong_type(key, "arr[u32]", v)),
        }
    }

    /// Number of tensors of each type, sorted by type id.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ggml_type, 1)),
            }
        }
        counts.sort();
        counts
    }
}

/// Most entries to preallocate for a count read from the file.
const PREALLOC_MAX: u64 = 1 << 16;

/// A buffered file reader that knows its position and the file's length, so
/// that every read is checked against the end of the file first.
struct Reader<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Reader<'_> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn invalid(&self, msg: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    /// Errors unless `n` more bytes exist.
    fn need(&self, n: u64, what: impl FnOnce() -> String) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos,
                needed: n,
                file_len: self.len,
            });
        }
        Ok(())
    }

    /// Errors unless `count` items of at least `min_size` bytes each fit in
    /// the rest of the file.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::AbsurdCount {
                path: self.path.to_path_buf(),
                what: what(),
                count,
                remaining: self.remaining(),
            }),
        }
    }

    /// Reads exactly `buf.len()` bytes, which the caller has checked exist.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|source| GgufError::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// `n` raw bytes; `n` is checked against the file before allocating.
    fn bytes(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<Vec<u8>, GgufError> {
        self.need(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v)?;
        Ok(v)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(|| format!("length of {}", what()))?;
        let bytes = self.bytes(n, &what)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value_type(&mut self, what: impl Fn() -> String) -> Result<GgufValueType, GgufError> {
        let id = self.u32(&what)?;
        GgufValueType::from_id(id)
            .ok_or_else(|| self.invalid(format!("{} has invalid GGUF value type {id}", what())))
    }

    fn value(&mut self, ty: GgufValueType, key: &str) -> Result<GgufValue, GgufError> {
        let what = || format!("value of metadata key {key}");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => GgufValue::Bool(u8::from_le_bytes(self.array(what)?) != 0),
            GgufValueType::String => GgufValue::String(self.string(what)?),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            GgufValueType::Array => {
                let what_ty = || format!("array element type of metadata key {key}");
                let elem = self.value_type(what_ty)?;
                let n = self.u64(|| format!("array length of metadata key {key}"))?;
                GgufValue::Array(self.array_value(elem, n, key)?)
            }
        })
    }

    fn array_value(
        &mut self,
        elem: GgufValueType,
        n: u64,
        key: &str,
    ) -> Result<GgufArray, GgufError> {
        if elem == GgufValueType::Array {
            return Err(self.invalid(format!(
                "metadata key {key} is a nested array, which ggml does not support"
            )));
        }
        // Bound the allocation by the file size before making it.
        self.check_count(n, elem.min_size(), || {
            format!("array length of metadata key {key}")
        })?;
        let what = || format!("array data of metadata key {key}");
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const SZ: usize = std::mem::size_of::<$t>();
                let raw = self.bytes(n * SZ as u64, what)?;
                GgufArray::$variant(
                    raw.chunks_exact(SZ)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            GgufValueType::U8 => GgufArray::U8(self.bytes(n, what)?),
            GgufValueType::I8 => fixed!(I8, i8),
            GgufValueType::U16 => fixed!(U16, u16),
            GgufValueType::I16 => fixed!(I16, i16),
            GgufValueType::U32 => fixed!(U32, u32),
            GgufValueType::I32 => fixed!(I32, i32),
            GgufValueType::F32 => fixed!(F32, f32),
            GgufValueType::U64 => fixed!(U64, u64),
            GgufValueType::I64 => fixed!(I64, i64),
            GgufValueType::F64 => fixed!(F64, f64),
            GgufValueType::Bool => {
                GgufArray::Bool(self.bytes(n, what)?.into_iter().map(|b| b != 0).collect())
            }
            GgufValueType::String => {
                let mut v = Vec::with_capacity(n.min(PREALLOC_MAX) as usize);
                for i in 0..n {
                    v.push(self.string(|| format!("string {i} of metadata key {key}"))?);
                }
                GgufArray::String(v)
            }
            GgufValueType::Array => unreachable!("rejected above"),
        })
    }
}

fn parse(r: &mut Reader<'_>) -> Result<GgufFile, GgufError> {
    let path = r.path.to_path_buf();

    // Magic: show what is there instead, even if the file is shorter than 4 bytes.
    let n_magic = r.len.min(4);
    let magic = r.bytes(n_magic, || "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { path, found: magic });
    }

    let version = r.u32(|| "version".into())?;
    if version != 2 && version != 3 {
        let hint = if version != 0 && version & 0xFFFF == 0 {
            " (a big-endian file?)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion {
            path,
            version,
            hint,
        });
    }
    let n_tensors = r.u64(|| "tensor count".into())?;
    let n_kv = r.u64(|| "metadata key/value count".into())?;
    // Smallest encodings: a key/value is an 8-byte key length, a 4-byte type
    // and a 1-byte value; a tensor info is an 8-byte name length, 4-byte
    // n_dims, 4-byte type and 8-byte offset.
    r.check_count(n_kv, 8 + 4 + 1, || "metadata key/value count".into())?;
    r.check_count(n_tensors, 8 + 4 + 4 + 8, || "tensor count".into())?;

    // Counts are bounded by the file size, but the in-memory entries are
    // larger than their smallest encoding: preallocate only a little.
    let mut metadata = Vec::with_capacity(n_kv.min(PREALLOC_MAX) as usize);
    let mut key_index = HashMap::with_capacity(n_kv.min(PREALLOC_MAX) as usize);
    for i in 0..n_kv {
        let key = r.string(|| format!("key of metadata entry {i}"))?;
        let key_s = shown(&key);
        if key.is_empty() {
            return Err(r.invalid(format!("metadata entry {i} has an empty key")));
        }
        let ty = r.value_type(|| format!("type of metadata key {key_s}"))?;
        let value = r.value(ty, &key_s)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(r.invalid(format!("duplicate metadata key {key_s}")));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(GgufValue::U32(a)) => {
            return Err(r.invalid(format!("general.alignment {a} is not a power of 2")))
        }
        Some(v) => {
            return Err(r.invalid(format!(
                "general.alignment is {}, expected u32",
                v.describe()
            )))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors.min(PREALLOC_MAX) as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(PREALLOC_MAX) as usize);
    for i in 0..n_tensors {
        let name = r.string(|| format!("name of tensor {i}"))?;
        let name_s = shown(&name);
        if name.len() >= GGML_MAX_NAME {
            return Err(r.invalid(format!(
                "tensor {i} name {name_s} is {} bytes, ggml allows {}",
                name.len(),
                GGML_MAX_NAME - 1
            )));
        }
        let n_dims = r.u32(|| format!("n_dims of tensor {name_s}"))?;
        if n_dims as usize > GGML_MAX_DIMS {
            return Err(r.invalid(format!(
                "tensor {name_s} has {n_dims} dimensions, ggml allows {GGML_MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let ne = r.u64(|| format!("dimension {d} of tensor {name_s}"))?;
            if ne > i64::MAX as u64 {
                return Err(r.invalid(format!(
                    "tensor {name_s} dimension {d} is {ne}, more than i64::MAX"
                )));
            }
            dims.push(ne);
        }
        let type_id = r.u32(|| format!("type of tensor {name_s}"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            path: path.clone(),
            name: name_s.clone(),
            type_id,
        })?;
        let offset = r.u64(|| format!("data offset of tensor {name_s}"))?;

        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| {
                acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
            })
            .ok_or_else(|| r.invalid(format!("tensor {name_s} shape {dims:?} overflows")))?;
        // A tensor with no dims is a scalar: one row of one element.
        let row = dims.first().copied().unwrap_or(1);
        if row % ggml_type.block_size() != 0 {
            return Err(r.invalid(format!(
                "tensor {name_s} of type {ggml_type} has rows of {row} elements, not a multiple of the block size {}",
                ggml_type.block_size()
            )));
        }
        let size = ggml_type
            .bytes_for(n_elements)
            .ok_or_else(|| r.invalid(format!("tensor {name_s} shape {dims:?} overflows")))?;
        if offset % alignment != 0 {
            return Err(r.invalid(format!(
                "tensor {name_s} data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(r.invalid(format!("duplicate tensor name {name_s}")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            file_offset: 0,
            size,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let header_end = r.pos;
    let data_offset = if tensors.is_empty() {
        header_end
    } else {
        header_end.next_multiple_of(alignment)
    };
    if data_offset > r.len {
        return Err(GgufError::Truncated {
            path,
            what: "padding before the tensor data".into(),
            offset: header_end,
            needed: data_offset - header_end,
            file_len: r.len,
        });
    }
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(start), Some(end)) if end <= r.len => t.file_offset = start,
            _ => {
                return Err(GgufError::TensorPastEnd {
                    path,
                    name: shown(&t.name),
                    end: end.unwrap_or(u64::MAX),
                    file_len: r.len,
                })
            }
        }
    }

    // No two tensors may share bytes (ggml's own reader goes further and
    // wants them back to back, in order).
    let mut by_start: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_start.sort_by_key(|t| (t.offset, t.size));
    for w in by_start.windows(2) {
        if w[1].offset < w[0].offset + w[0].size {
            return Err(GgufError::Invalid {
                path,
                msg: format!(
                    "tensor {} (data bytes {}..{}) overlaps tensor {} (bytes {}..{})",
                    shown(&w[1].name),
                    w[1].offset,
                    w[1].offset + w[1].size,
                    shown(&w[0].name),
                    w[0].offset,
                    w[0].offset + w[0].size
                ),
            });
        }
    }

    Ok(GgufFile {
        path,
        version,
        file_len: r.len,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// A name read from the file, fit for a one-line message: control
/// characters escaped, and cut to 80 characters (a hostile key can be
/// megabytes of anything).
fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 80 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes a GGUF v3 file: metadata in insertion order, then tensor infos,
/// then the tensor data, each tensor padded to the alignment (32, or
/// `general.alignment` if set as a `u32`).
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<WriterTensor>,
}

#[derive(Debug, Clone)]
struct WriterTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds (or replaces) a metadata entry.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<GgufValue>,
    ) -> &mut GgufWriter {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor. `dims` is innermost first (ggml's `ne`); `data` must be
    /// exactly the encoded size of that many elements of `ggml_type`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut GgufWriter, GgufError> {
        let name = name.into();
        if name.is_empty() || name.len() >= GGML_MAX_NAME {
            return Err(GgufError::Writer(format!(
                "tensor name {name:?} must be 1 to {} bytes",
                GGML_MAX_NAME - 1
            )));
        }
        if dims.is_empty() || dims.len() > GGML_MAX_DIMS {
            return Err(GgufError::Writer(format!(
                "tensor {name} has {} dimensions, expected 1 to {GGML_MAX_DIMS}",
                dims.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::Writer(format!("duplicate tensor name {name}")));
        }
        if dims[0] % ggml_type.block_size() != 0 {
            return Err(GgufError::Writer(format!(
                "tensor {name}: row of {} elements is not a multiple of the {ggml_type} block size {}",
                dims[0],
                ggml_type.block_size()
            )));
        }
        let expected = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| ggml_type.bytes_for(n));
        if expected != Some(data.len() as u64) {
            return Err(GgufError::Writer(format!(
                "tensor {name}: {} bytes of data, but {dims:?} {ggml_type} takes {expected:?}",
                data.len()
            )));
        }
        self.tensors.push(WriterTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(GGUF_DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some((_, v)) => Err(GgufError::Writer(format!(
                "general.alignment must be a power-of-2 u32, got {v:?}"
            ))),
        }
    }

    /// Writes the file to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let alignment = self
            .alignment()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        if !self.tensors.is_empty() {
            header.resize(
                (header.len() as u64).next_multiple_of(alignment) as usize,
                0,
            );
        }
        w.write_all(&header)?;
        let mut written = 0u64;
        for (t, off) in self.tensors.iter().zip(offsets) {
            w.write_all(&vec![0u8; (off - written) as usize])?;
            w.write_all(&t.data)?;
            written = off + t.data.len() as u64;
        }
        // Pad the last tensor too, as ggml's writer does.
        w.write_all(&vec![0u8; (offset - written) as usize])
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut w = BufWriter::new(File::create(path).map_err(io_err)?);
        self.write_to(&mut w).map_err(io_err)?;
        w.flush().map_err(io_err)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
    match v {
        GgufValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(a) => {
            out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            macro_rules! each {
                ($v:expr) => {
                    for x in $v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                };
            }
            match a {
                GgufArray::U8(v) => out.extend_from_slice(v),
                GgufArray::I8(v) => each!(v),
                GgufArray::U16(v) => each!(v),
                GgufArray::I16(v) => each!(v),
                GgufArray::U32(v) => each!(v),
                GgufArray::I32(v) => each!(v),
                GgufArray::F32(v) => each!(v),
                GgufArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
                GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
                GgufArray::U64(v) => each!(v),
                GgufArray::I64(v) => each!(v),
                GgufArray::F64(v) => each!(v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file with every metadata type and three tensors.
    fn sample_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "test")
            .add_metadata("a.u8", 7u8)
            .add_metadata("a.i8", -7i8)
            .add_metadata("a.u16", 700u16)
            .add_metadata("a.i16", -700i16)
            .add_metadata("a.u32", 70_000u32)
            .add_metadata("a.i32", -70_000i32)
            .add_metadata("a.f32", 0.5f32)
            .add_metadata("a.bool", true)
            .add_metadata("a.u64", 1u64 << 40)
            .add_metadata("a.i64", -(1i64 << 40))
            .add_metadata("a.f64", 0.25f64)
            .add_metadata(
                "a.strs",
                vec!["x".to_string(), String::new(), "zz".to_string()],
            )
            .add_metadata("a.f32s", vec![1.0f32, 2.0])
            .add_metadata("a.i32s", vec![1i32, -2, 3])
            .add_metadata("a.bools", vec![true, false]);
        w.add_tensor("f32.weight", &[3], GgmlType::F32, vec![1; 12])
            .unwrap();
        w.add_tensor("q8.weight", &[32, 2], GgmlType::Q8_0, vec![2; 68])
            .unwrap();
        w.add_tensor("q4k.weight", &[256, 1, 2], GgmlType::Q4_K, vec![3; 288])
            .unwrap();
        w
    }

    #[test]
    fn round_trip_all_value_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let w = sample_writer();
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.arch().unwrap(), "test");
        assert_eq!(f.metadata(), &w.metadata[..]);
        assert_eq!(f.get_u32("a.u8").unwrap(), 7);
        assert_eq!(f.get_i64("a.i64").unwrap(), -(1 << 40));
        assert_eq!(f.get_u64("a.u64").unwrap(), 1 << 40);
        assert_eq!(f.get_f32("a.f64").unwrap(), 0.25);
        assert!(f.get_bool("a.bool").unwrap());
        assert_eq!(f.get_str_arr("a.strs").unwrap(), ["x", "", "zz"]);
        assert_eq!(f.get_i32_arr("a.i32s").unwrap(), [1, -2, 3]);
        assert_eq!(
            f.get_arr("a.bools").unwrap(),
            &GgufArray::Bool(vec![true, false])
        );

        let msg = f.get_u32("a.i8").unwrap_err().to_string();
        assert!(
            msg.ends_with("metadata key a.i8 is i8, expected an integer that fits in u32"),
            "{msg}"
        );
        let msg = f.get_str("a.strs").unwrap_err().to_string();
        assert!(
            msg.ends_with("metadata key a.strs is arr[str; 3], expected str"),
            "{msg}"
        );
        let msg = f.get_u32("nope").unwrap_err().to_string();
        assert!(
            msg.ends_with("t.gguf: metadata key nope is missing"),
            "{msg}"
        );

        // Data section and tensors aligned to 32, laid out back to back.
        assert_eq!(f.data_offset() % 32, 0);
        let t: Vec<_> = f
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.offset, t.size))
            .collect();
        assert_eq!(
            t,
            [
                ("f32.weight", 0, 12),
                ("q8.weight", 32, 68),
                ("q4k.weight", 128, 288)
            ]
        );
        let q4k = f.tensor("q4k.weight").unwrap();
        assert_eq!(
            (q4k.dims.as_slice(), q4k.n_elements()),
            (&[256, 1, 2][..], 512)
        );
        assert_eq!(q4k.file_end(), f.file_len());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            &bytes[f.tensor("q8.weight").unwrap().file_offset as usize..][..68],
            &[2; 68]
        );
        assert!(f.tensor("missing").is_none());
    }

    #[test]
    fn truncated_tensor_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        sample_writer().write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let len = f.file_len();
        let cut = len - 10;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let msg = GgufFile::open(&path).unwrap_err().to_string();
        let want = format!(
            "truncated: tensor q4k.weight data ends at byte {len} but the file has {cut} bytes"
        );
        assert!(
            msg.starts_with(&path.display().to_string()) && msg.ends_with(&want),
            "{msg}"
        );
    }

    /// Cutting the file anywhere in the header gives a truncation error, never
    /// a panic or a huge allocation.
    #[test]
    fn every_header_cut_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        sample_writer().write(&path).unwrap();
        let full = std::fs::read(&path).unwrap();
        let data_offset = GgufFile::open(&path).unwrap().data_offset() as usize;
        for cut in 0..data_offset {
            std::fs::write(&path, &full[..cut]).unwrap();
            let err = GgufFile::open(&path).unwrap_err();
            match (&err, cut) {
                (GgufError::BadMagic { .. }, 0..=3) => {}
                (
                    GgufError::Truncated { .. }
                    | GgufError::TensorPastEnd { .. }
                    | GgufError::AbsurdCount { .. },
                    _,
                ) => {}
                _ => panic!("cut at {cut}: unexpected error {err}"),
            }
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn bad_magic_shows_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.bin");
        let mut state = 0x1234_5678u64;
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(&path, &junk).unwrap();
        let msg = GgufFile::open(&path).unwrap_err().to_string();
        let want = format!(
            "not a GGUF file (starts with bytes {:02x?}, expected \"GGUF\")",
            &junk[..4]
        );
        assert!(msg.ends_with(&want), "{msg}");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            GgufFile::open(&path),
            Err(GgufError::BadMagic { .. })
        ));
    }

    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    #[test]
    fn bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.gguf");
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            GgufFile::open(&path).unwrap_err().to_string()
        };
        assert!(open(&header(1, 0, 0)).ends_with("unsupported GGUF version 1 (supported: 2, 3)"));
        assert!(open(&header(3 << 24, 0, 0)).contains("(a big-endian file?)"));
        let msg = open(&header(3, u64::MAX, 0));
        assert!(msg.ends_with(&format!(
            "tensor count is {}, more than the remaining 0 bytes of the file can hold (truncated or corrupt)",
            u64::MAX
        )));
        assert!(open(&header(3, 0, 1 << 40)).contains("metadata key/value count is 1099511627776"));
        // A key/value whose string array claims 2^40 entries.
        let mut b = header(3, 0, 1);
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(b"big");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(open(&b).contains("array length of metadata key big is 1099511627776"));
        // A string longer than the file.
        let mut b = header(3, 0, 1);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert!(open(&b).contains(
            "truncated: key of metadata entry 0 at byte 32 needs 18446744073709551615 bytes"
        ));
        // A tensor of an unknown type.
        let mut b = header(3, 1, 0);
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"w.bad");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(open(&b).ends_with("tensor w.bad has unknown ggml type id 4"));
        // Version 2 has the same layout and is accepted.
        std::fs::write(&path, header(2, 0, 0)).unwrap();
        assert_eq!(GgufFile::open(&path).unwrap().version(), 2);
    }

    #[test]
    fn writer_rejects_bad_tensors() {
        let mut w = GgufWriter::new();
        assert!(w
            .add_tensor("a", &[33], GgmlType::Q8_0, vec![0; 34])
            .is_err());
        assert!(w
            .add_tensor("a", &[32], GgmlType::Q8_0, vec![0; 33])
            .is_err());
        assert!(w
            .add_tensor("a", &[32], GgmlType::Q8_0, vec![0; 34])
            .is_ok());
        assert!(w
            .add_tensor("a", &[32], GgmlType::Q8_0, vec![0; 34])
            .is_err());
        assert!(w
            .add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0; 4])
            .is_err());
    }
}
