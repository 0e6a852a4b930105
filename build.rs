//! Builds the pinned llama.cpp (ggml CPU backend + llama, static) with our
//! patch series applied, and generates Rust bindings for its C API.
//!
//! Source: `vendor/llama.cpp` (unpacked by `vendor/fetch.sh` from the package
//! pinned in `vendor/llama.cpp.pin`), or the checkout named by
//! `CKTRACE_LLAMA_CPP_DIR`. Either tree is treated as read-only: it is copied
//! into `OUT_DIR`, patched there, and synced file by file so that an unchanged
//! file keeps its timestamp and cmake rebuilds only what a patch touched.
//!
//! Environment:
//! - `CKTRACE_LLAMA_CPP_DIR`: build against this llama.cpp checkout instead.
//! - `CKTRACE_PORTABLE=1`: no `-march=native` (a binary for other machines).
//! - `CKTRACE_NO_PATCHES=1`: build llama.cpp unpatched (no trace hooks); used
//!   only to measure what the compiled-in hook costs.
//! - `CKTRACE_CMAKE_JOBS`: parallel compile jobs (default: all cores).
//! - `CKTRACE_OPENMP=1|0`: ggml's threads from OpenMP (llama.cpp's default)
//!   or from ggml's own pool (default: see `OPENMP_DEFAULT`).

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether ggml's threads come from OpenMP unless `CKTRACE_OPENMP` says.
const OPENMP_DEFAULT: bool = false;

/// The parts of a llama.cpp tree that the library build needs.
const TREE_PARTS: &[&str] = &[
    "CMakeLists.txt",
    "LICENSE",
    "cmake",
    "ggml",
    "src",
    "include",
    "vendor",
];

fn main() {
    if let Err(msg) = run() {
        // One line that says what to do; cargo prints it as `error: ...`.
        println!("cargo::error={msg}");
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for var in [
        "CKTRACE_LLAMA_CPP_DIR",
        "CKTRACE_PORTABLE",
        "CKTRACE_NO_PATCHES",
        "CKTRACE_CMAKE_JOBS",
        "CKTRACE_OPENMP",
        "LIBCLANG_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=vendor/llama.cpp.pin");
    println!("cargo:rerun-if-changed=vendor/patches");

    // 1. Which source.
    let (src, source_desc) = match env::var_os("CKTRACE_LLAMA_CPP_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !dir.join("ggml/src/ggml-cpu/ggml-cpu.c").is_file() {
                return Err(format!(
                    "CKTRACE_LLAMA_CPP_DIR={} is not a llama.cpp checkout (no ggml/src/ggml-cpu/ggml-cpu.c)",
                    dir.display()
                ));
            }
            let desc = format!("user checkout {}{}", dir.display(), git_describe(&dir));
            println!("cargo:warning=cktrace: building llama.cpp from {desc}");
            (dir, desc)
        }
        None => {
            let dir = manifest.join("vendor/llama.cpp");
            let pin = fs::read_to_string(manifest.join("vendor/llama.cpp.pin"))
                .map_err(|e| format!("cannot read vendor/llama.cpp.pin: {e}"))?;
            let stamp = fs::read_to_string(dir.join(".cktrace-pin")).unwrap_or_default();
            let want = format!(
                "{}-{} {}",
                pin_get(&pin, "package"),
                pin_get(&pin, "version"),
                pin_get(&pin, "sha256")
            );
            if stamp.trim() != want {
                return Err(format!(
                    "llama.cpp source missing or not the pinned one in {}: run `vendor/fetch.sh` (or set CKTRACE_LLAMA_CPP_DIR to your llama.cpp checkout)",
                    dir.display()
                ));
            }
            println!("cargo:rerun-if-changed=vendor/llama.cpp/.cktrace-pin");
            (
                dir,
                format!(
                    "{} {} (crates.io, sha256 {})",
                    pin_get(&pin, "package"),
                    pin_get(&pin, "version"),
                    pin_get(&pin, "sha256")
                ),
            )
        }
    };

    // 2. System tools, checked up front so the failure names the fix.
    if Command::new("cmake").arg("--version").output().is_err() {
        return Err("cmake not found: run `apt-get install -y cmake`".into());
    }
    if Command::new("patch").arg("--version").output().is_err() {
        return Err("patch not found: run `apt-get install -y patch`".into());
    }

    // 3. Copy, patch, sync.
    let no_patches = env::var("CKTRACE_NO_PATCHES")
        .map(|v| v == "1")
        .unwrap_or(false);
    let patches = if no_patches {
        Vec::new()
    } else {
        patch_series(&manifest.join("vendor/patches"))?
    };
    let stage = out.join("llama-stage");
    let tree = out.join("llama.cpp");
    let _ = fs::remove_dir_all(&stage);
    for part in TREE_PARTS {
        let from = src.join(part);
        if from.exists() {
            copy_tree(&from, &stage.join(part))
                .map_err(|e| format!("copy {}: {e}", from.display()))?;
        }
    }
    for p in &patches {
        apply_patch(p, &stage, &source_desc)?;
    }
    sync_tree(&stage, &tree).map_err(|e| format!("sync patched tree: {e}"))?;
    let _ = fs::remove_dir_all(&stage);

    // 4. cmake.
    let portable = env::var("CKTRACE_PORTABLE")
        .map(|v| v == "1")
        .unwrap_or(false);
    let openmp = env::var("CKTRACE_OPENMP")
        .map(|v| v == "1")
        .unwrap_or(OPENMP_DEFAULT);
    let mut cfg = cmake::Config::new(&tree);
    cfg.profile("Release")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("LLAMA_BUILD_COMMON", "OFF")
        .define("LLAMA_BUILD_TESTS", "OFF")
        .define("LLAMA_BUILD_EXAMPLES", "OFF")
        .define("LLAMA_BUILD_TOOLS", "OFF")
        .define("LLAMA_BUILD_SERVER", "OFF")
        .define("LLAMA_BUILD_APP", "OFF")
        .define("LLAMA_CURL", "OFF")
        .define("LLAMA_OPENSSL", "OFF")
        .define("LLAMA_ALL_WARNINGS", "OFF")
        .define("GGML_OPENMP", if openmp { "ON" } else { "OFF" })
        .define("GGML_BLAS", "OFF")
        .define("GGML_CPU_REPACK", "ON")
        .define("GGML_LLAMAFILE", "ON")
        .define("GGML_NATIVE", if portable { "OFF" } else { "ON" })
        .define("LLAMA_BUILD_COMMIT", "cktrace")
        .define("CMAKE_POSITION_INDEPENDENT_CODE", "ON")
        .define("CMAKE_INSTALL_LIBDIR", "lib")
        .very_verbose(false);
    if let Ok(jobs) = env::var("CKTRACE_CMAKE_JOBS") {
        cfg.env("CMAKE_BUILD_PARALLEL_LEVEL", jobs);
    }
    let dst = cfg.build();

    // 5. Link.
    let lib = dst.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["llama", "ggml", "ggml-cpu", "ggml-base"] {
        println!("cargo:rustc-link-lib=static={l}");
    }
    println!("cargo:rustc-link-lib=dylib=stdc++");
    if openmp {
        println!("cargo:rustc-link-lib=dylib=gomp");
    }
    println!("cargo:rustc-link-lib=dylib=m");
    println!("cargo:rustc-link-lib=dylib=pthread");

    // 6. Bindings.
    let include = dst.join("include");
    let bindings = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(format!("-I{}", tree.join("ggml/include").display()))
        .clang_arg(format!("-I{}", tree.join("include").display()))
        .allowlist_function("llama_.*")
        .allowlist_function("ggml_.*")
        .allowlist_function("gguf_.*")
        .allowlist_type("llama_.*")
        .allowlist_type("ggml_.*")
        .allowlist_type("gguf_.*")
        .allowlist_var("LLAMA_.*")
        .allowlist_var("GGML_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .map_err(|e| {
            format!("bindgen failed ({e}); if libclang is missing run `apt-get install -y libclang-dev`")
        })?;
    bindings
        .write_to_file(out.join("bindings.rs"))
        .map_err(|e| format!("write bindings: {e}"))?;

    // 7. What the binary reports about its llama.cpp.
    let series: Vec<String> = patches
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    println!("cargo:rustc-env=CKTRACE_LLAMA_SOURCE={source_desc}");
    // The unpatched tree, for `cktrace bench stock`'s own build of it.
    println!("cargo:rustc-env=CKTRACE_LLAMA_SRC_DIR={}", src.display());
    println!(
        "cargo:rustc-env=CKTRACE_LLAMA_PATCHES={}",
        if no_patches {
            "none (CKTRACE_NO_PATCHES=1)".to_string()
        } else {
            series.join(",")
        }
    );
    println!(
        "cargo:rustc-env=CKTRACE_LLAMA_NATIVE={}",
        if portable { "portable" } else { "native" }
    );
    if no_patches {
        println!("cargo:rustc-cfg=cktrace_no_hook");
    }
    println!("cargo::rustc-check-cfg=cfg(cktrace_no_hook)");
    Ok(())
}

fn pin_get<'a>(pin: &'a str, key: &str) -> &'a str {
    pin.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .next()
        .unwrap_or("")
        .trim()
}

fn git_describe(dir: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["describe", "--always", "--dirty", "--tags"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!(" ({})", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default()
}

/// Apply one patch with no fuzz: every hunk's context must match exactly
/// (a hunk may move, and the build then says where it landed). A hunk that
/// does not apply fails the build with the patch, the file and the hunk.
fn apply_patch(p: &Path, stage: &Path, source_desc: &str) -> Result<(), String> {
    let output = Command::new("patch")
        .args([
            "-p1",
            "--forward",
            "--batch",
            "--fuzz=0",
            "--no-backup-if-mismatch",
            "-d",
        ])
        .arg(stage)
        .arg("-i")
        .arg(p)
        .output()
        .map_err(|e| format!("running patch: {e}"))?;
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    // patch prints "patching file F", then one line per hunk that did not
    // apply cleanly where it was written.
    let mut file = String::new();
    let mut failed = Vec::new();
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("patching file ") {
            file = f.trim_matches(|c| c == '\'' || c == '`').to_string();
        } else if line.starts_with("Hunk #") {
            if line.contains("FAILED") {
                failed.push(format!("{file}: {line}"));
            } else {
                println!("cargo:warning=patch {name}: {file}: {line}");
            }
        }
    }
    if !output.status.success() {
        let why = if failed.is_empty() {
            text.lines().collect::<Vec<_>>().join(" | ")
        } else {
            failed.join("; ")
        };
        return Err(format!(
            "patch {name} does not apply to {source_desc} (no fuzz allowed): {why}"
        ));
    }
    Ok(())
}

/// The patch series, in file-name order (`0001-...patch`, `0002-...`).
fn patch_series(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().map(|x| x == "patch").unwrap_or(false) {
                println!("cargo:rerun-if-changed={}", p.display());
                v.push(p);
            }
        }
    }
    v.sort();
    Ok(v)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::metadata(from)?;
    if meta.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else {
        if let Some(p) = to.parent() {
            fs::create_dir_all(p)?;
        }
        fs::copy(from, to)?;
    }
    Ok(())
}

/// Make `to` equal to `from`, rewriting only files whose bytes differ and
/// deleting files that are gone, so unchanged files keep their mtime.
fn sync_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    let mut seen = BTreeSet::new();
    for e in fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        seen.insert(name.clone());
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type()?.is_dir() {
            if dst.is_file() {
                fs::remove_file(&dst)?;
            }
            sync_tree(&src, &dst)?;
        } else {
            let new = fs::read(&src)?;
            if fs::read(&dst).map(|old| old != new).unwrap_or(true) {
                if dst.is_dir() {
                    fs::remove_dir_all(&dst)?;
                }
                fs::write(&dst, new)?;
            }
        }
    }
    for e in fs::read_dir(to)? {
        let e = e?;
        if !seen.contains(&e.file_name()) {
            if e.file_type()?.is_dir() {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}
