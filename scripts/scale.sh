#!/usr/bin/env bash
# scripts/scale.sh - metadata cost per file from 10k to 1M files in one directory, rawfs
# against tmpfs.
#
# For each count N, on a fresh mount: create N files in one directory (open O_CREAT|O_EXCL +
# close), stat each, list the directory (getdents64 with a 32 KiB buffer, then `ls -f | wc -l`
# and `ls -U >/dev/null`), unlink each; then create N files again and time `rm -rf` of their
# directory. Each line gives the total seconds, µs per file and, for the passes of
# scripts/scale.c (target/scale), the median, 99th percentile and largest latency of one call.
# The daemon's VmRSS is read at N files and after the unlinks (pid from `rawfs status`), and
# the system's slab memory (dentries, inodes) at N files, as growth over the empty mount.
#
# Usage (root: it mounts tmpfs and rawfs):
#   scripts/scale.sh [--counts 10000,100000,1000000] [--cache] [--no-tmpfs] [--rawfs-args "..."]
# --cache passes --cache to `rawfs mount`; rawfs runs in its default mode otherwise, recording
# on. RAWFS=path uses that binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=10000,100000,1000000 RAWFS_ARGS="" TMPFS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --counts) COUNTS=${2:?--counts needs a list}; shift ;;
        --cache) RAWFS_ARGS+=" --cache" ;;
        --no-tmpfs) TMPFS=0 ;;
        --rawfs-args) RAWFS_ARGS+=" ${2?--rawfs-args needs a value}"; shift ;;
        *) echo "scale.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
[[ $COUNTS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "scale.sh: --counts wants N,N,..." >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "scale.sh: run as root (it mounts file systems)" >&2; exit 1; }
if [[ -z ${RAWFS:-} ]]; then
    nice cargo build --release --quiet
    RAWFS=target/release/rawfs
fi
mkdir -p target
gcc -O2 -Wall -o target/scale scripts/scale.c

work=$(mktemp -d)
export RAWFS_RUNTIME_DIR=$work/run
mkdir -m 700 "$RAWFS_RUNTIME_DIR" "$work/mnt"
cleanup() {
    if mountpoint -q "$work/mnt"; then
        "$RAWFS" umount "$work/mnt" 2>/dev/null || umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
slab_kib() { awk '/^(SReclaimable|SUnreclaim):/ {s += $2} END {print s}' /proc/meminfo; }
rss_kib() { [[ -n $pid ]] && awk '/^VmRSS/ {print $2}' "/proc/$pid/status" || echo -; }
cpu_ticks() { [[ -n $pid ]] && awk '{print $14 + $15}' "/proc/$pid/stat" || echo 0; }
# report C0 LINE...: prints a result line and, for rawfs, the daemon's CPU per file since C0.
report() {
    local c=$(($(cpu_ticks) - $1))
    shift
    awk -v c="$c" -v hz="$(getconf CLK_TCK)" -v rawfs="$pid" '{
        printf "  %-8s %8d %9.3f s %9.2f us/file", $2, $3, $4, $5
        if (rawfs != "") printf "  daemon cpu %6.2f us/file", c / hz / $3 * 1e6
        if (NF > 5) printf "   call p50 %7.1f p99 %8.1f max %9.1f us (call %d of %d)", $6, $7, $8, $1 + 1, $9
        printf "\n" }' <<<"$*"
}
# timed LABEL N COMMAND...: one line for a command timed as a whole.
timed() {
    local label=$1 n=$2 c0 t0 t1
    shift 2
    c0=$(cpu_ticks) t0=$(now)
    "$@"
    t1=$(now)
    report "$c0" "- $label $n $(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { print b - a, (b - a) / n * 1e6 }')"
}
pass() { # OP N
    local c0 out
    c0=$(cpu_ticks)
    out=$(target/scale "$1" "$work/mnt/d" "$2")
    report "$c0" "$out"
}
listing() { # N: the directory is listed by ls as well
    local n=$1 got
    got=$(ls -f "$work/mnt/d" | wc -l)
    [[ $got -eq $((n + 2)) ]] || { echo "scale.sh: ls -f listed $got entries, expected $((n + 2))" >&2; exit 1; }
}

run() { # TARGET N
    local target=$1 n=$2 slab0 rss0
    pid=""
    if [[ $target == tmpfs ]]; then
        mount -t tmpfs -o size=1G,nr_inodes=0 scale "$work/mnt"
    else
        # shellcheck disable=SC2086
        "$RAWFS" mount "$work/mnt" --daemon $RAWFS_ARGS
        pid=$("$RAWFS" status "$work/mnt" --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
    fi
    echo "$target, $n files, load $(cut -d' ' -f1-3 /proc/loadavg)"
    mkdir "$work/mnt/d"
    slab0=$(slab_kib) rss0=$(rss_kib)
    pass create "$n"
    echo "  memory at $n files: daemon VmRSS $(rss_kib) KiB (empty mount $rss0 KiB), slab +$(($(slab_kib) - slab0)) KiB"
    pass stat "$n"
    pass list "$n"
    timed ls-f "$n" listing "$n"
    timed ls-U "$n" sh -c 'ls -U "$1" >/dev/null' sh "$work/mnt/d"
    pass unlink "$n"
    echo "  after the unlinks: daemon VmRSS $(rss_kib) KiB"
    target/scale create "$work/mnt/d" "$n" >/dev/null
    timed rm-rf "$n" rm -rf "$work/mnt/d"
    if [[ $target == tmpfs ]]; then umount "$work/mnt"; else "$RAWFS" umount "$work/mnt"; fi
}

IFS=, read -r -a counts <<<"$COUNTS"
for n in "${counts[@]}"; do
    if ((TMPFS)); then run tmpfs "$n"; fi
    run "rawfs$RAWFS_ARGS" "$n"
done
