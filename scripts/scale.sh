#!/usr/bin/env bash
# scripts/scale.sh - metadata cost per file from 10k to 1M files in one directory, rawfs
# against tmpfs.
#
# The `scale` subcommand of the benchmark program in scripts/bench/ (its own cargo package);
# this wrapper builds it and runs it with the arguments given. What it measures and its
# options are documented in scripts/bench/src/scale.md, printed by `scripts/scale.sh --help`.
#
# Usage (root: it mounts tmpfs and rawfs):
#   scripts/scale.sh [--counts 10000,100000,1000000] [--cache] [--no-tmpfs] [--rawfs-args "..."]
#   RAWFS=path scripts/scale.sh ...     # use that binary instead of `cargo build --release`
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bench"
cargo build --release --quiet --manifest-path "$dir/Cargo.toml" --target-dir "$dir/target" ||
    { echo "scale.sh: building $dir failed" >&2; exit 1; }
exec "$dir/target/release/rawfs-bench" scale "$@"
