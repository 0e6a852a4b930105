//! `scripts/setup.sh` decides whether to install libclang-dev by asking
//! `scripts/check-libclang.py`, which loads each candidate libclang and
//! compiles `#include <stddef.h>` with it, as bindgen will. The machines that
//! run this suite have libclang installed (setup put it there), so the
//! detection is tested against fake roots that lack what a fresh Debian
//! machine lacks:
//!
//! - only `libclang-cpp.so.14` (Debian's base image has it; it is not
//!   libclang): missing;
//! - a real libclang but no clang headers (libclang1-N without
//!   libclang-common-N-dev): missing, naming stddef.h;
//! - both: found.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn check(root: Option<&Path>) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-libclang.py");
    let mut c = Command::new("python3");
    c.arg(&script);
    if let Some(r) = root {
        c.arg("--root").arg(r);
    }
    let o = c.output().expect("run python3 scripts/check-libclang.py");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(text.trim().lines().count(), 1, "one line expected: {text}");
    (o.status.success(), text)
}

/// The libclang and header directory this machine's check found (setup ran,
/// so the real root passes).
fn real_libclang() -> (PathBuf, PathBuf) {
    let (ok, text) = check(None);
    assert!(
        ok,
        "this machine has no working libclang after setup: {text}"
    );
    let lib = text
        .trim()
        .strip_prefix("ok: ")
        .and_then(|s| s.split(" (").next())
        .map(PathBuf::from)
        .unwrap();
    let lib = std::fs::canonicalize(lib).unwrap();
    let headers = glob_one("/usr/lib", "llvm-", "lib/clang")
        .and_then(|d| {
            std::fs::read_dir(&d)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("include/stddef.h").is_file())
        })
        .map(|d| d.join("include"))
        .expect("clang's stddef.h under /usr/lib/llvm-*/lib/clang/*/include");
    (lib, headers)
}

/// `base/<prefix>*/<rest>`, the first that exists.
fn glob_one(base: &str, prefix: &str, rest: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(base)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(rest))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v.pop()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let dst = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let d = common::scratch("root-cpp");
    let lib = d.path().join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    // A real libclang-cpp if this machine has one, else a stand-in file of
    // that name: either way the glob the old setup used would have matched.
    let real = Path::new("/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    if real.is_file() {
        std::fs::copy(real, lib.join("libclang-cpp.so.14")).unwrap();
    } else {
        std::fs::write(lib.join("libclang-cpp.so.14"), b"not a library").unwrap();
    }
    let (ok, text) = check(Some(d.path()));
    assert!(!ok, "{text}");
    assert!(
        text.starts_with("missing: no libclang.so or libclang-N.so"),
        "{text}"
    );
}

#[test]
fn libclang_without_its_headers_is_missing() {
    let (lib, _) = real_libclang();
    let d = common::scratch("root-noheaders");
    let dir = d.path().join("usr/lib/llvm-14/lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&lib, dir.join("libclang.so.1")).unwrap();
    let (ok, text) = check(Some(d.path()));
    assert!(!ok, "{text}");
    assert!(
        text.contains("stddef.h") && text.contains("libclang-common"),
        "{text}"
    );
}

#[test]
fn libclang_with_its_headers_is_found() {
    let (lib, headers) = real_libclang();
    let d = common::scratch("root-ok");
    let dir = d.path().join("usr/lib/llvm-14/lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&lib, dir.join("libclang.so.1")).unwrap();
    // Beside it a libclang-cpp that must be skipped, not tried first.
    std::fs::write(dir.join("libclang-cpp.so.14"), b"not a library").unwrap();
    copy_dir(&headers, &dir.join("clang/14.0.6/include"));
    let (ok, text) = check(Some(d.path()));
    assert!(ok, "{text}");
    assert!(
        text.starts_with("ok: ") && text.contains(&d.path().display().to_string()),
        "{text}"
    );
}
