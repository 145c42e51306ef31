#!/usr/bin/env bash
# Rebuilds ctwatch's eBPF objects from their C sources with Debian's clang.
# The objects are committed (crates/ctwatch-ebpf/bpf/*.o) so that `cargo
# build` needs no clang; `scripts/build-ebpf.sh --check` fails when a
# committed object is not what its source compiles to (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/../crates/ctwatch-ebpf"
CLANG=${CLANG:-clang-14}
command -v "$CLANG" >/dev/null || CLANG=clang
arch=$(uname -m)
case "$arch" in x86_64) target_arch=x86 ;; aarch64) target_arch=arm64 ;; *) target_arch=$arch ;; esac
mkdir -p bpf
status=0
for src in src/bpf/*.bpf.c; do
  name=$(basename "$src" .c)
  out=$(mktemp)
  "$CLANG" -O2 -g -target bpf -D__TARGET_ARCH_"$target_arch" \
    -I/usr/include/"$arch"-linux-gnu -Isrc/bpf -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -ffile-prefix-map="$PWD"=. \
    -c "$src" -o "$out"
  # Keep the object reproducible: drop the DWARF that names build paths, keep BTF.
  llvm-strip -g "$out" 2>/dev/null || llvm-strip-14 -g "$out"
  if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$out" "bpf/$name.o"; then
      echo "build-ebpf: bpf/$name.o is not current with $src: run scripts/build-ebpf.sh and commit" >&2
      status=1
    fi
    rm -f "$out"
  else
    mv "$out" "bpf/$name.o"
    echo "build-ebpf: bpf/$name.o"
  fi
done
exit $status
