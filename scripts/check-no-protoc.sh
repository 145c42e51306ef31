#!/usr/bin/env bash
# Checks that the workspace builds with nothing but the Rust toolchain: every
# build script (ours and our dependencies') runs with `protoc` made
# unrunnable (/dev/null bind-mounted over it in a private mount namespace)
# and PROTOC pointing nowhere. It uses its own target dir, only ever used
# this way, so a build script that once succeeded there did so without
# protoc; reusing it keeps later runs to a `cargo check` of what changed.
# Needs root (unshare -m). Usage: scripts/check-no-protoc.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-target/no-protoc}

exec unshare -m bash -euo pipefail -c '
  mount --make-rprivate /
  for dir in ${PATH//:/ } /usr/bin /usr/local/bin /bin; do
    if [ -e "$dir/protoc" ]; then mount --bind /dev/null "$dir/protoc"; fi
  done
  if protoc --version >/dev/null 2>&1; then echo "check-no-protoc: could not hide protoc" >&2; exit 1; fi
  export PROTOC=/nonexistent/protoc-hidden-by-check-no-protoc
  unset PROTOC_INCLUDE
  CARGO_TARGET_DIR="$1" cargo check --workspace --all-targets --quiet
' check-no-protoc "$target"
