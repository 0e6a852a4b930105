#!/usr/bin/env bash
# Fetch the pinned llama.cpp source into vendor/llama.cpp (ignored by git).
#
# The source comes from the crates.io package named in vendor/llama.cpp.pin.
# `cargo fetch` on a throw-away manifest downloads the .crate into cargo's
# cache without compiling anything; we check its sha256 against the pin and
# unpack only the llama.cpp/ subtree. Our patch series is applied by build.rs
# to a copy in its OUT_DIR, so this tree stays pristine.
#
# Usage: vendor/fetch.sh            (idempotent; does nothing if already there)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pin="$here/llama.cpp.pin"
get() { sed -n "s/^$1=//p" "$pin"; }
pkg=$(get package); ver=$(get version); sum=$(get sha256); sub=$(get subdir)
dest="$here/llama.cpp"
stamp="$dest/.cktrace-pin"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkg-$ver $sum" ]; then
  echo "vendor/fetch.sh: $pkg $ver already unpacked in vendor/llama.cpp"
  exit 0
fi

cargo_home=${CARGO_HOME:-$HOME/.cargo}
find_crate() { ls "$cargo_home"/registry/cache/*/"$pkg-$ver.crate" 2>/dev/null | head -n 1; }
crate=$(find_crate || true)
if [ -z "$crate" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/src"
  printf '[package]\nname = "cktrace-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' "$pkg" "$ver" > "$tmp/Cargo.toml"
  echo 'fn main() {}' > "$tmp/src/main.rs"
  echo "vendor/fetch.sh: downloading $pkg $ver with cargo fetch"
  (cd "$tmp" && cargo fetch --quiet)
  crate=$(find_crate || true)
fi
[ -n "$crate" ] || { echo "vendor/fetch.sh: $pkg-$ver.crate not found in $cargo_home/registry/cache after cargo fetch" >&2; exit 1; }

got=$(sha256sum "$crate" | cut -d' ' -f1)
if [ "$got" != "$sum" ]; then
  echo "vendor/fetch.sh: checksum mismatch for $crate: expected $sum, got $got" >&2
  exit 1
fi

rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
tar -xzf "$crate" -C "$dest.tmp" --strip-components=2 "$pkg-$ver/$sub"
echo "$pkg-$ver $sum" > "$dest.tmp/.cktrace-pin"
mv "$dest.tmp" "$dest"
echo "vendor/fetch.sh: unpacked $pkg $ver (sha256 ok) into vendor/llama.cpp"
