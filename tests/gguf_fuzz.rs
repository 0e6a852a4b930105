//! The GGUF reader against hostile input: mutated real headers and crafted
//! files. Every case must give either a parsed file or one error line that
//! starts with the file's path, and never a panic.
//!
//! The seeds are the real SmolLM2 header (2 MB: the 49152-token vocabulary)
//! and the same header with its vocabulary arrays cut to 64 entries (so the
//! mutation loop is fast). Mutations: a cut at every offset of the small
//! header and at sampled offsets of the full one; random byte flips; 8- and
//! 4-byte words overwritten with edge values (huge counts and lengths, bad
//! type ids, dims whose product overflows). The number of mutated cases is
//! `CKTRACE_FUZZ_CASES` (default 20000, bounded to about a minute in CI);
//! the reported figures in the notes come from a 100000-case run.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use cktrace::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};

mod common;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Open `bytes` as a GGUF file; panics (failing the test, naming the case)
/// only if the reader panicked or gave a multi-line or unnamed error.
fn try_case(path: &Path, bytes: &[u8], case: &str) -> bool {
    std::fs::write(path, bytes).unwrap();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| GgufFile::open(path)));
    match r {
        Err(_) => panic!("GGUF reader panicked on {case} ({} bytes)", bytes.len()),
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                !msg.contains('\n') && msg.starts_with(&path.display().to_string()),
                "{case}: error is not one line naming the file: {msg:?}"
            );
            false
        }
    }
}

/// The real header with every array of more than 64 entries cut to 64, and
/// its tensor infos, written back with our writer (tensor data left empty:
/// zero-filled to its size).
fn small_real_header(real: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in real.metadata() {
        let v = match v {
            GgufValue::Array(a) if a.len() > 64 => match a {
                cktrace::gguf::GgufArray::String(s) => GgufValue::from(s[..64].to_vec()),
                cktrace::gguf::GgufArray::U32(s) => GgufValue::from(s[..64].to_vec()),
                cktrace::gguf::GgufArray::F32(s) => GgufValue::from(s[..64].to_vec()),
                cktrace::gguf::GgufArray::I32(s) => GgufValue::from(s[..64].to_vec()),
                _ => v.clone(),
            },
            _ => v.clone(),
        };
        w.add_metadata(k.as_str(), v);
    }
    // A handful of real tensors (names, shapes and types) that are small
    // (the norms, a few KiB) keeps the file small; each gets zeroed data of
    // its size.
    for t in real
        .tensors()
        .iter()
        .filter(|t| t.size <= 16 << 10)
        .take(12)
    {
        let dims: Vec<u64> = t.dims.clone();
        let n = dims.iter().product::<u64>();
        let size = t.ggml_type.bytes_for(n).unwrap() as usize;
        w.add_tensor(t.name.clone(), &dims, t.ggml_type, vec![0; size])
            .unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

const EDGE64: [u64; 8] = [
    0,
    1,
    u64::MAX,
    u64::MAX - 1,
    i64::MAX as u64,
    1 << 32,
    1 << 40,
    (1 << 63) + 7,
];
const EDGE32: [u32; 8] = [0, 4, 5, 13, 31, 39, 1000, u32::MAX];

fn mutate(rng: &mut Rng, seed: &[u8]) -> (Vec<u8>, String) {
    let mut b = seed.to_vec();
    let kind = rng.below(5);
    let desc;
    match kind {
        0 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            desc = format!("{n} bit flips");
        }
        1 => {
            let i = rng.below(b.len().saturating_sub(8));
            let v = EDGE64[rng.below(EDGE64.len())];
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            desc = format!("u64 {v:#x} at {i}");
        }
        2 => {
            let i = rng.below(b.len().saturating_sub(4));
            let v = EDGE32[rng.below(EDGE32.len())];
            b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            desc = format!("u32 {v} at {i}");
        }
        3 => {
            let cut = rng.below(b.len());
            b.truncate(cut);
            desc = format!("cut at {cut}");
        }
        _ => {
            // Several word overwrites then a cut: compound damage.
            for _ in 0..3 {
                let i = rng.below(b.len().saturating_sub(8));
                let v = EDGE64[rng.below(EDGE64.len())];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            let cut = b.len() - rng.below(b.len() / 4 + 1);
            b.truncate(cut);
            desc = format!("3 words and a cut at {cut}");
        }
    }
    (b, desc)
}

#[test]
fn mutated_real_headers_never_panic() {
    let real_path = common::model("smollm2");
    let real = GgufFile::open(&real_path).unwrap();
    let dir = common::scratch("gguf-fuzz");
    let path = dir.path().join("m.gguf");

    // The full real header: cuts at sampled offsets.
    let header_len = real.data_offset() as usize;
    let full = {
        use std::io::Read;
        let mut b = vec![0; header_len + 4096];
        std::fs::File::open(&real_path)
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        b
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let cut = rng.below(header_len);
        assert!(!try_case(
            &path,
            &full[..cut],
            &format!("full header cut at {cut}")
        ));
    }

    // The small real header: a cut at every offset, then random mutations.
    let small = small_real_header(&real);
    assert!(try_case(&path, &small, "unmutated small header"));
    let data_offset = GgufFile::open(&path).unwrap().data_offset() as usize;
    for cut in 0..data_offset {
        assert!(!try_case(
            &path,
            &small[..cut],
            &format!("small header cut at {cut}")
        ));
    }
    let cases: usize = std::env::var("CKTRACE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let t0 = std::time::Instant::now();
    let (mut ok, mut err) = (0usize, 0usize);
    for i in 0..cases {
        let (b, desc) = mutate(&mut rng, &small);
        if try_case(&path, &b, &format!("case {i}: {desc}")) {
            ok += 1;
        } else {
            err += 1;
        }
    }
    eprintln!(
        "gguf fuzz: {} cuts of the small header, 300 of the full one, {cases} mutations ({ok} still parse, {err} rejected) in {:.1} s",
        data_offset,
        t0.elapsed().as_secs_f64()
    );
    // The mutations must reach the reader's checks, not only its magic.
    assert!(
        err > cases / 4,
        "only {err} of {cases} mutations were rejected"
    );
}

/// Crafted files, one per defect the reader must name.
#[test]
fn crafted_hostile_files_give_one_clear_error() {
    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }
    fn tensor(b: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }
    fn pad(b: &mut Vec<u8>, data: usize) {
        b.resize(b.len().next_multiple_of(32) + data, 0);
    }
    let dir = common::scratch("gguf-crafted");
    let path = dir.path().join("c.gguf");
    let q8 = GgmlType::Q8_0.id();
    let f32t = GgmlType::F32.id();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "n_dims = 0 with a block type",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.zero", &[], q8, 0);
                pad(&mut b, 64);
                b
            },
            "rows of 1 elements, not a multiple of the block size 32",
        ),
        (
            "5 dims",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.five", &[1, 1, 1, 1, 1], f32t, 0);
                pad(&mut b, 64);
                b
            },
            "w.five",
        ),
        (
            "dims whose product overflows",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.big", &[1 << 32, 1 << 32, 1 << 32], f32t, 0);
                pad(&mut b, 64);
                b
            },
            "overflows",
        ),
        (
            "offset past the end",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.far", &[8], f32t, 1 << 20);
                pad(&mut b, 32);
                b
            },
            "w.far",
        ),
        (
            "misaligned offset",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.odd", &[8], f32t, 4);
                pad(&mut b, 64);
                b
            },
            "not a multiple of the alignment",
        ),
        (
            "overlapping tensors",
            {
                let mut b = header(2, 0);
                tensor(&mut b, "w.a", &[16], f32t, 0);
                tensor(&mut b, "w.b", &[16], f32t, 32);
                pad(&mut b, 128);
                b
            },
            "overlaps tensor w.a",
        ),
        (
            "unknown type",
            {
                let mut b = header(1, 0);
                tensor(&mut b, "w.t", &[32], 4, 0);
                pad(&mut b, 64);
                b
            },
            "unknown ggml type id 4",
        ),
        (
            "duplicate name",
            {
                let mut b = header(2, 0);
                tensor(&mut b, "w.d", &[8], f32t, 0);
                tensor(&mut b, "w.d", &[8], f32t, 32);
                pad(&mut b, 64);
                b
            },
            "duplicate tensor name",
        ),
        ("huge tensor count", header(1 << 60, 0), "tensor count"),
        ("huge key count", header(0, 1 << 60), "key/value count"),
        (
            "string past the end",
            {
                let mut b = header(0, 1);
                b.extend_from_slice(&(1u64 << 40).to_le_bytes());
                b.extend_from_slice(b"k");
                b
            },
            "truncated",
        ),
    ];
    for (what, bytes, want) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| GgufFile::open(&path));
        let msg = match r {
            Err(_) => panic!("{what}: the reader panicked"),
            Ok(Ok(_)) => panic!("{what}: accepted"),
            Ok(Err(e)) => e.to_string(),
        };
        assert!(
            !msg.contains('\n')
                && msg.starts_with(&path.display().to_string())
                && msg.contains(want),
            "{what}: {msg:?} should name {want:?}"
        );
    }
    // The CLI says the same in one line and exits 1, for the file the issue
    // named (n_dims = 0).
    let mut b = header(1, 0);
    tensor(&mut b, "w.zero", &[], q8, 0);
    pad(&mut b, 64);
    std::fs::write(&path, &b).unwrap();
    let o = common::run(&["run", path.to_str().unwrap(), "-n", "1"]);
    let e = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("cktrace: ") && e.contains("w.zero"), "{e}");
}
