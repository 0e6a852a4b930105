#!/usr/bin/env python3
"""Does this machine have what bindgen needs? Ask libclang itself.

build.rs runs bindgen, which loads libclang at run time (clang-sys's
`runtime` feature) and parses wrapper.h, which includes <stddef.h> and
friends from clang's own resource directory. A file glob cannot tell whether
that will work: Debian's base image carries libclang-cpp.so.14, which is not
libclang, and libclang1-N without libclang-common-N-dev has no stddef.h. So
this script finds the candidate libraries where clang-sys looks, loads each
one, calls clang_getClangVersion, and parses a translation unit that
includes <stddef.h>, the way bindgen will.

Usage: check-libclang.py [--root DIR] [--quiet]
  --root DIR  look under DIR instead of / (tests point it at a fake root;
              clang's own headers are then looked for under DIR only)
Exit status: 0 and "ok: <library> (<clang version>)" when a libclang loads
and finds its headers; 1 and one line saying what is missing otherwise.
"""

import ctypes
import glob
import os
import sys

# Where clang-sys searches on Linux (build/common.rs), below the root.
SEARCH_DIRS = [
    "usr/local/lib*",
    "usr/local/llvm*/lib*",
    "usr/lib*",
    "usr/lib*/*",
    "usr/lib*/*/*",
    "usr/lib/llvm*/lib*",
]
# The file names clang-sys accepts with the runtime feature.
NAMES = ["libclang.so", "libclang-*.so", "libclang.so.*", "libclang-*.so.*"]


def candidates(root):
    seen, out = set(), []
    env = os.environ.get("LIBCLANG_PATH")
    dirs = [env] if env and root == "/" else []
    for pat in SEARCH_DIRS:
        dirs.extend(sorted(glob.glob(os.path.join(root, pat))))
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in NAMES:
            for f in sorted(glob.glob(os.path.join(d, name))):
                base = os.path.basename(f)
                # libclang-cpp is clang's C++ library, not the C API.
                if base.startswith("libclang-cpp") or not os.path.isfile(f):
                    continue
                key = os.path.realpath(f) if root == "/" else f
                if key not in seen:
                    seen.add(key)
                    out.append(f)
    return out


class CXUnsavedFile(ctypes.Structure):
    _fields_ = [
        ("Filename", ctypes.c_char_p),
        ("Contents", ctypes.c_char_p),
        ("Length", ctypes.c_ulong),
    ]


def header_args(root):
    """Compiler arguments for the probe. For the real root none: libclang
    finds clang's headers (its resource directory, and on Debian
    /usr/include/clang/N/include) as it will for bindgen. For a fake root,
    clang's headers must come from the root being checked: the system
    include path is dropped and the root's clang header directories added."""
    if root == "/":
        return []
    args = [b"-nostdinc"]
    for pat in ("usr/lib/llvm-*/lib/clang/*/include", "usr/include/clang/*/include"):
        for d in sorted(glob.glob(os.path.join(root, pat))):
            args += [b"-isystem", d.encode()]
    return args


def probe(path, root="/"):
    """(version, None) when `path` is a working libclang with its headers,
    else (version or None, reason)."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return None, f"cannot be loaded ({e})"
    try:
        get_version = lib.clang_getClangVersion
        get_cstring = lib.clang_getCString
        create_index = lib.clang_createIndex
        parse = lib.clang_parseTranslationUnit
        n_diags = lib.clang_getNumDiagnostics
        get_diag = lib.clang_getDiagnostic
        severity = lib.clang_getDiagnosticSeverity
        spelling = lib.clang_getDiagnosticSpelling
    except AttributeError as e:
        return None, f"is not libclang's C API ({e})"

    class CXString(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("flags", ctypes.c_uint)]

    get_version.restype = CXString
    get_cstring.argtypes = [CXString]
    get_cstring.restype = ctypes.c_char_p
    version = get_cstring(get_version()).decode(errors="replace")

    create_index.restype = ctypes.c_void_p
    create_index.argtypes = [ctypes.c_int, ctypes.c_int]
    parse.restype = ctypes.c_void_p
    parse.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_int,
        ctypes.POINTER(CXUnsavedFile),
        ctypes.c_uint,
        ctypes.c_uint,
    ]
    n_diags.argtypes = [ctypes.c_void_p]
    get_diag.restype = ctypes.c_void_p
    get_diag.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    severity.argtypes = [ctypes.c_void_p]
    spelling.restype = CXString
    spelling.argtypes = [ctypes.c_void_p]

    if root == "/":
        src = b"#include <stddef.h>\n#include <stdint.h>\nsize_t n; int64_t m;\n"
    else:
        src = b"#include <stddef.h>\nsize_t n;\n"
    unsaved = CXUnsavedFile(b"cktrace_probe.c", src, len(src))
    argv = [b"-xc"] + header_args(root)
    args = (ctypes.c_char_p * len(argv))(*argv)
    index = create_index(0, 0)
    tu = parse(index, b"cktrace_probe.c", args, len(argv), ctypes.byref(unsaved), 1, 0)
    if not tu:
        return version, "could not parse a one-line C file"
    for i in range(n_diags(tu)):
        d = get_diag(tu, i)
        if severity(d) >= 3:  # CXDiagnostic_Error or Fatal
            msg = get_cstring(spelling(d)).decode(errors="replace")
            return version, (
                f"cannot compile #include <stddef.h> ({msg}): clang's own "
                "headers are missing (Debian: libclang-common-N-dev)"
            )
    return version, None


def main():
    root, quiet = "/", False
    argv = sys.argv[1:]
    while argv:
        a = argv.pop(0)
        if a == "--root" and argv:
            root = argv.pop(0)
        elif a == "--quiet":
            quiet = True
        else:
            print(f"check-libclang: unknown argument {a!r}", file=sys.stderr)
            return 2
    found = candidates(root)
    if not found:
        print(
            f"missing: no libclang.so or libclang-N.so under {root} "
            "(Debian: libclang-dev)"
        )
        return 1
    reasons = []
    for path in found:
        version, why = probe(path, root)
        if why is None:
            if not quiet:
                print(f"ok: {path} ({version})")
            return 0
        reasons.append(f"{path} {why}")
    print("missing: no working libclang: " + "; ".join(reasons))
    return 1


if __name__ == "__main__":
    sys.exit(main())
