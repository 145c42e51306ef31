#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the
# tests need (scripts/setup-host.sh, idempotent), checks formatting and
# lints, then runs every test against the real kernel and real runtimes.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

scripts/setup-host.sh

echo "== eBPF objects are current with their C sources"
scripts/build-ebpf.sh --check
echo "== builds without protoc (every build script run with protoc hidden)"
scripts/check-no-protoc.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo bench --no-run (benchmarks build)"
cargo bench --workspace --no-run --quiet
echo "== cargo test"
cargo test --workspace
