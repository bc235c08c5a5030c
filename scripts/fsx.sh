#!/usr/bin/env bash
# Run the fsx file system exerciser (the `fsx` crate from crates.io) on a
# file in a fresh rawfs mount: a reproducible pseudo-random mix of reads,
# writes, mmap reads/writes, truncates, syncs, copy_file_range, sendfile and
# posix_fallocate, with every read checked against the expected contents.
#
# Usage: scripts/fsx.sh [--tmpfs] [--cache] [--ops N] [--seed N]
#                       [--config FILE] [--no-mmap]
#
#   --tmpfs        test a fresh tmpfs instead of rawfs (for comparison)
#   --cache        pass --cache to `rawfs mount`
#   --ops N        number of operations (default 100000)
#   --seed N       RNG seed (default 1); the same seed replays the same run
#   --config FILE  fsx TOML configuration (default scripts/fsx.toml)
#   --no-mmap      disable the mmap-based operations
#
# Environment: RAWFS (rawfs binary; default: cargo build --release),
# RAWFS_EXTRA_ARGS (extra `rawfs mount` arguments), FSX_TIMEOUT (seconds,
# default 3600).
#
# Exit status: fsx's (0 when all operations completed). On a failure fsx's
# operation log and expected file contents are kept in target/fsx/.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=test-lib.sh
source "$(dirname "$0")/test-lib.sh"

# Version of the crate to build.
FSX_VERSION=0.3.2
OPS=100000
SEED=1
CONFIG="$SCRIPTS_DIR/fsx.toml"
NO_MMAP=0
TIMEOUT=${FSX_TIMEOUT:-3600}

usage() {
    local status=${1:-0}
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&$(( status == 0 ? 1 : 2 ))
    exit "$status"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --tmpfs) USE_TMPFS=1 ;;
            --cache) RAWFS_MOUNT_ARGS+=(--cache) ;;
            --ops) OPS=${2:?--ops needs a number}; shift ;;
            --seed) SEED=${2:?--seed needs a number}; shift ;;
            --config) CONFIG=${2:?--config needs a file}; shift ;;
            --no-mmap) NO_MMAP=1 ;;
            -h|--help) usage 0 ;;
            *) log "unknown argument: $1"; usage 2 ;;
        esac
        shift
    done
    [[ $OPS =~ ^[1-9][0-9]*$ ]] || die "--ops must be a positive integer, got '$OPS'"
    [[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$SEED'"
    [[ -f $CONFIG ]] || die "config file $CONFIG not found"
}

# prepare_config OUT: the configuration, with mmap operations zeroed when
# --no-mmap was given.
prepare_config() {
    local out=$1 key
    cp "$CONFIG" "$out"
    [[ $NO_MMAP == 1 ]] || return 0
    for key in mapread mapwrite invalidate; do
        grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$out" \
            || die "--no-mmap: $CONFIG has no '$key' line under [weights]"
        sed -Ei "s/^([[:space:]]*${key}[[:space:]]*=).*/\1 0/" "$out"
    done
}

target_name() {
    if [[ $USE_TMPFS == 1 ]]; then
        echo tmpfs
    else
        echo "rawfs${RAWFS_MOUNT_ARGS[*]:+ ${RAWFS_MOUNT_ARGS[*]}}"
    fi
}

# run_fsx BIN CONFIG FILE ARTIFACTS: run fsx; sets FSX_STATUS and FSX_SECONDS.
run_fsx() {
    local bin=$1 config=$2 file=$3 artifacts=$4 start end
    log "running: $bin -N $OPS -S $SEED -f $config -P $artifacts $file"
    echo "fsx seed: $SEED (rerun with --seed $SEED to replay)"
    FSX_STATUS=0
    start=$(date +%s.%N)
    timeout --foreground -k 30 "$TIMEOUT" \
        "$bin" -N "$OPS" -S "$SEED" -f "$config" -P "$artifacts" "$file" || FSX_STATUS=$?
    end=$(date +%s.%N)
    FSX_SECONDS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    [[ $FSX_STATUS -ne 124 ]] || log "fsx timed out after ${TIMEOUT}s"
}

report() {
    local artifacts=$1
    if [[ $FSX_STATUS -ne 0 ]]; then
        log "FAILED (status $FSX_STATUS); the operation log is above"
        if [[ -f $artifacts/fsx.data.fsxgood ]]; then
            log "expected file contents: $artifacts/fsx.data.fsxgood"
        fi
    fi
    echo "fsx on $(target_name): $OPS ops, seed $SEED, ${FSX_SECONDS}s, exit status $FSX_STATUS"
}

main() {
    parse_args "$@"
    require_root
    ensure_test_deps
    local bin artifacts
    bin=$(build_tool fsx "$FSX_VERSION")
    [[ $USE_TMPFS == 1 ]] || resolve_rawfs

    artifacts="$REPO_ROOT/target/fsx"
    mkdir -p "$artifacts"
    rm -f "$artifacts"/fsx.data.fsx*

    install_cleanup_trap
    make_workdir rawfs-fsx
    prepare_config "$WORKDIR/fsx.toml"
    mount_fs "$WORKDIR/mnt"

    run_fsx "$bin" "$WORKDIR/fsx.toml" "$WORKDIR/mnt/fsx.data" "$artifacts"
    teardown
    report "$artifacts"
    exit "$FSX_STATUS"
}

main "$@"
