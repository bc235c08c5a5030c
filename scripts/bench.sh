#!/usr/bin/env bash
# scripts/bench.sh - compare rawfs against tmpfs and libfuse's passthrough_ll.
#
# The benchmark is the Rust program in scripts/bench/ (its own cargo package); this wrapper
# builds it and runs it with the arguments given. What it measures, its options and its
# output are documented in scripts/bench/src/about.md, printed by `scripts/bench.sh --help`.
#
# Usage (as root: it mounts file systems):
#   scripts/bench.sh [--quick] [--only LIST] [--rawfs-args "ARGS"] ...
#   RAWFS=/path/to/rawfs scripts/bench.sh     # use this binary instead of building rawfs
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bench"
cargo build --release --quiet --manifest-path "$dir/Cargo.toml" --target-dir "$dir/target" ||
    { echo "bench.sh: building $dir failed" >&2; exit 1; }
exec "$dir/target/release/rawfs-bench" "$@"
