#!/usr/bin/env bash
# scripts/bench.sh - compare rawfs against tmpfs and libfuse's passthrough_ll.
#
# What it measures, in one run, on each target:
#   create   open(O_CREAT|O_EXCL|O_WRONLY) + close of N files in one directory  [ops/s]
#   stat     fstatat() of each of those N files                                 [ops/s]
#   unlink   unlinkat() of each of those N files                                [ops/s]
#   randread 4 KiB random reads on a 64 MiB file, fio psync, 1 job, time based  [IOPS]
#   seqwrite 1 MiB sequential writes, fio psync, 1 job, time based              [MB/s]
#   seqread  1 MiB sequential reads, fio psync, 1 job, time based               [MB/s]
# (MB = 10^6 bytes.) The metadata figures come from a small C program that the
# script compiles into target/bench/mdbench; each op is timed over the whole
# pass with CLOCK_MONOTONIC and the median over several rounds is reported.
#
# Targets:
#   tmpfs        a fresh `mount -t tmpfs` directory
#   passthrough  libfuse's low-level example passthrough_ll (built from the
#                libfuse3-dev example sources into target/bench/) exporting a
#                fresh tmpfs directory
#   rawfs        `rawfs mount MNT --daemon [RAWFS ARGS]`, removed with `rawfs umount MNT`
#
# Output: a table with absolute figures and the ratios rawfs/tmpfs,
# rawfs/passthrough_ll (and passthrough_ll/tmpfs for reference) on stdout, and
# every figure plus the run configuration in target/bench/results.json.
#
# Usage (as root: it mounts file systems):
#   scripts/bench.sh                          # full run, ~1 min with all three targets
#   scripts/bench.sh --quick                  # smaller counts, ~35 s
#   scripts/bench.sh --rawfs-args "--cache"   # extra arguments for `rawfs mount`
#   scripts/bench.sh --only rawfs             # comma list of tmpfs,passthrough,rawfs
#   scripts/bench.sh --only tmpfs,passthrough
#   RAWFS=/path/to/rawfs scripts/bench.sh     # use this binary instead of building
# Further options:
#   --files N               number of files for the metadata workloads (default 10000, quick 5000)
#   --runtime SEC           seconds per fio workload (default 5, quick 3)
#   --passthrough-opts STR  options for passthrough_ll instead of the automatic choice
#                           (e.g. "-o cache=auto"); the default is explained in the
#                           "passthrough_ll configuration" comment in this script
#
# Without RAWFS, `cargo build --release` is run in the repository root and
# target/release/rawfs is used (only when rawfs is among the targets).
# Missing packages (fio, gcc, libc6-dev, pkg-config, fuse3, libfuse3-dev) are
# installed with apt-get; `apt-get update` runs only if the install fails
# without it.
#
# Every mount made by the script is removed on exit, including on failure and
# on Ctrl-C (falling back to `umount -l`).

set -euo pipefail

# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }

QUICK=0
RAWFS_ARGS=""
ONLY="tmpfs,passthrough,rawfs"
NFILES=""
RUNTIME=""
PT_OPTS_USER=""
PT_OPTS_SET=0

need_arg() { [[ $# -ge 2 ]] || { echo "bench.sh: option $1 needs an argument" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rawfs-args) need_arg "$@"; RAWFS_ARGS="$2"; shift ;;
        --rawfs-args=*) RAWFS_ARGS="${1#*=}" ;;
        --only) need_arg "$@"; ONLY="$2"; shift ;;
        --only=*) ONLY="${1#*=}" ;;
        --files) need_arg "$@"; NFILES="$2"; shift ;;
        --files=*) NFILES="${1#*=}" ;;
        --runtime) need_arg "$@"; RUNTIME="$2"; shift ;;
        --runtime=*) RUNTIME="${1#*=}" ;;
        --passthrough-opts) need_arg "$@"; PT_OPTS_USER="$2"; PT_OPTS_SET=1; shift ;;
        --passthrough-opts=*) PT_OPTS_USER="${1#*=}"; PT_OPTS_SET=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

DO_TMPFS=0 DO_PT=0 DO_RAWFS=0
IFS=',' read -r -a _only <<<"$ONLY"
for t in "${_only[@]}"; do
    case "${t// /}" in
        tmpfs) DO_TMPFS=1 ;;
        passthrough|passthrough_ll|pt) DO_PT=1 ;;
        rawfs) DO_RAWFS=1 ;;
        "") ;;
        *) echo "bench.sh: unknown target in --only: '$t' (use tmpfs,passthrough,rawfs)" >&2; exit 2 ;;
    esac
done
if (( DO_TMPFS + DO_PT + DO_RAWFS == 0 )); then
    echo "bench.sh: --only selects no target" >&2; exit 2
fi

if (( QUICK )); then
    MODE=quick
    : "${NFILES:=5000}" "${RUNTIME:=3}"
    MD_ROUNDS=1
    SEQ_SIZE_MIB=256
else
    MODE=default
    : "${NFILES:=10000}" "${RUNTIME:=5}"
    MD_ROUNDS=3
    SEQ_SIZE_MIB=1024
fi
RR_SIZE_MIB=64
[[ "$NFILES" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --files wants a positive integer" >&2; exit 2; }
[[ "$RUNTIME" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runtime wants a positive integer" >&2; exit 2; }
# Room for both fio files plus the metadata files and some slack.
FS_SIZE_BYTES=$(( (SEQ_SIZE_MIB + RR_SIZE_MIB + 256) * 1024 * 1024 ))

# ----------------------------------------------------------------------------
# passthrough_ll configuration
# ----------------------------------------------------------------------------
# Options given to passthrough_ll (besides -f and -o source=DIR):
#  * Multi-threaded session loop (its default) and no writeback cache, flock
#    or xattr support (its defaults): the plain configuration of the example.
#  * No -o allow_other: the script runs as root, which owns the mount, so the
#    benchmark processes may access it anyway.
#  * Kernel caching follows rawfs's own mode so the two FUSE servers are
#    compared under the same kernel behaviour: rawfs serves without kernel
#    caching unless `--cache` is among the rawfs arguments, so by default
#    passthrough_ll runs with `-o cache=never` (direct I/O on every open file,
#    entry and attribute timeouts 0: every read, write and lookup reaches the
#    daemon). With `--cache` in --rawfs-args it runs with its built-in
#    default `-o cache=auto` (page cache kept while a file is open, 1 s entry
#    and attribute timeouts). --passthrough-opts replaces this choice.
if (( PT_OPTS_SET )); then
    PT_OPTS="$PT_OPTS_USER"
    PT_OPTS_WHY="given with --passthrough-opts"
elif [[ " $RAWFS_ARGS " == *" --cache "* ]]; then
    PT_OPTS="-o cache=auto"
    PT_OPTS_WHY="matches rawfs --cache: kernel page/attr caching on"
else
    PT_OPTS="-o cache=never"
    PT_OPTS_WHY="matches rawfs without --cache: no kernel caching"
fi

# rawfs gets a capacity large enough for the workloads unless one is given.
RAWFS_ARGS_EFF="$RAWFS_ARGS"
if [[ " $RAWFS_ARGS " != *" --size "* && " $RAWFS_ARGS " != *" --size="* ]]; then
    RAWFS_ARGS_EFF="${RAWFS_ARGS:+$RAWFS_ARGS }--size $FS_SIZE_BYTES"
fi

# ----------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
OUT_DIR="$REPO_ROOT/target/bench"
RESULTS_JSON="$OUT_DIR/results.json"
START_TS=$(date +%s)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it mounts tmpfs and FUSE file systems)"
[[ -c /dev/fuse ]] || (( DO_PT + DO_RAWFS == 0 )) || die "/dev/fuse is missing"

ensure_packages() {
    local pkgs=(fio gcc libc6-dev pkg-config fuse3 libfuse3-dev) missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    (( ${#missing[@]} )) || return 0
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        log "install failed, running apt-get update and retrying"
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}
ensure_packages

mkdir -p "$OUT_DIR"

# ----------------------------------------------------------------------------
# Mount bookkeeping and cleanup
# ----------------------------------------------------------------------------
# MOUNTS holds "kind|dir|pid" entries, newest last; cleanup unmounts them in
# reverse order. Kinds: tmpfs, pt (passthrough_ll, pid = daemon), rawfs.
MOUNTS=()
WORK=""

wait_pid_gone() { # pid timeout_s
    local pid=$1 i
    for (( i = 0; i < $2 * 10; i++ )); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

unmount_entry() { # "kind|dir|pid"
    local kind dir pid
    IFS='|' read -r kind dir pid <<<"$1"
    case "$kind" in
        rawfs)
            if mountpoint -q "$dir" 2>/dev/null; then
                timeout 30 "$RAWFS" umount "$dir" >&2 || true
            fi
            ;;
        pt)
            if mountpoint -q "$dir" 2>/dev/null; then
                fusermount3 -u "$dir" 2>/dev/null || umount "$dir" 2>/dev/null || true
            fi
            if [[ -n "$pid" ]] && ! wait_pid_gone "$pid" 5; then
                kill -TERM "$pid" 2>/dev/null || true
                wait_pid_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
            fi
            ;;
        tmpfs)
            if mountpoint -q "$dir" 2>/dev/null; then
                umount "$dir" 2>/dev/null || true
            fi
            ;;
    esac
    # Still mounted (busy, dead daemon, ...): detach it lazily.
    if grep -q " $dir " /proc/self/mounts 2>/dev/null; then
        log "lazy unmount of $dir"
        umount -l "$dir" 2>/dev/null || true
    fi
    if [[ -n "$pid" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

unmount_all() {
    local i
    for (( i = ${#MOUNTS[@]} - 1; i >= 0; i-- )); do
        unmount_entry "${MOUNTS[$i]}"
    done
    MOUNTS=()
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    unmount_all
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        local d
        for d in "$WORK"/*/; do
            [[ -d "$d" ]] || continue
            mountpoint -q "$d" 2>/dev/null || rmdir "$d" 2>/dev/null
        done
        rmdir "$WORK" 2>/dev/null || log "left $WORK behind (not empty)"
    fi
    (( rc == 0 )) || log "aborted (exit $rc); mounts cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK="$(mktemp -d /tmp/rawfs-bench.XXXXXX)"

# ----------------------------------------------------------------------------
# Helper programs
# ----------------------------------------------------------------------------
MDBENCH="$OUT_DIR/mdbench"
cat >"$OUT_DIR/mdbench.c" <<'EOF'
/* mdbench DIR COUNT ROUNDS
 * Per round: create COUNT files in DIR (openat O_CREAT|O_EXCL|O_WRONLY + close),
 * fstatat each, unlinkat each. Prints the median ops/s of each phase:
 *   create <ops/s>\nstat <ops/s>\nunlink <ops/s>
 * Any failing call aborts with a message and exit status 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void fail(const char *what, const char *name) {
    fprintf(stderr, "mdbench: %s %s: %s\n", what, name, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: mdbench DIR COUNT ROUNDS\n");
        return 2;
    }
    long count = atol(argv[2]);
    int rounds = atoi(argv[3]);
    if (count <= 0 || rounds <= 0) {
        fprintf(stderr, "mdbench: COUNT and ROUNDS must be positive\n");
        return 2;
    }
    int dfd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (dfd < 0) fail("open", argv[1]);

    char (*names)[32] = malloc(count * sizeof *names);
    double *cr = malloc(rounds * sizeof(double));
    double *st = malloc(rounds * sizeof(double));
    double *ul = malloc(rounds * sizeof(double));
    if (!names || !cr || !st || !ul) { perror("malloc"); return 1; }
    for (long i = 0; i < count; i++) snprintf(names[i], sizeof names[i], "f%08ld", i);

    for (int r = 0; r < rounds; r++) {
        struct stat sb;
        double t0 = now();
        for (long i = 0; i < count; i++) {
            int fd = openat(dfd, names[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0) fail("create", names[i]);
            if (close(fd) != 0) fail("close", names[i]);
        }
        double t1 = now();
        for (long i = 0; i < count; i++)
            if (fstatat(dfd, names[i], &sb, 0) != 0) fail("stat", names[i]);
        double t2 = now();
        for (long i = 0; i < count; i++)
            if (unlinkat(dfd, names[i], 0) != 0) fail("unlink", names[i]);
        double t3 = now();
        cr[r] = count / (t1 - t0);
        st[r] = count / (t2 - t1);
        ul[r] = count / (t3 - t2);
    }
    printf("create %.1f\nstat %.1f\nunlink %.1f\n",
           median(cr, rounds), median(st, rounds), median(ul, rounds));
    return 0;
}
EOF
log "compiling $MDBENCH"
gcc -O2 -Wall -o "$MDBENCH" "$OUT_DIR/mdbench.c"

PT_BIN="$OUT_DIR/passthrough_ll"
build_passthrough() {
    local ex=/usr/share/doc/libfuse3-dev/examples src="$OUT_DIR/passthrough_ll-src" f found
    mkdir -p "$src"
    if [[ ! -e "$ex/passthrough_ll.c" && ! -e "$ex/passthrough_ll.c.gz" ]]; then
        found="$(dpkg -L libfuse3-dev 2>/dev/null | grep -E '/passthrough_ll\.c(\.gz)?$' | head -n1 || true)"
        [[ -n "$found" ]] || die "passthrough_ll.c not found in libfuse3-dev"
        ex="$(dirname "$found")"
    fi
    for f in passthrough_ll.c passthrough_helpers.h; do
        if [[ -e "$ex/$f" ]]; then
            cp "$ex/$f" "$src/$f"
        elif [[ -e "$ex/$f.gz" ]]; then
            gzip -dc "$ex/$f.gz" >"$src/$f"
        else
            die "$ex/$f not found"
        fi
    done
    log "compiling $PT_BIN from $ex/passthrough_ll.c"
    # shellcheck disable=SC2046
    gcc -O2 -o "$PT_BIN" "$src/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
}
(( DO_PT )) && build_passthrough

if (( DO_RAWFS )); then
    if [[ -n "${RAWFS:-}" ]]; then
        [[ -x "$RAWFS" ]] || die "RAWFS=$RAWFS is not an executable file"
    else
        log "cargo build --release (in $REPO_ROOT)"
        (cd "$REPO_ROOT" && cargo build --release >&2)
        RAWFS="$REPO_ROOT/target/release/rawfs"
        [[ -x "$RAWFS" ]] || die "$RAWFS was not built"
    fi
fi

# passthrough_ll keeps one O_PATH descriptor per inode the kernel knows of, so
# the metadata workload needs at least NFILES descriptors; raise the limit.
if (( DO_PT )); then
    want=$(( NFILES + 4096 ))
    if (( $(ulimit -n) < want )); then
        ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    fi
    (( $(ulimit -n) > NFILES + 64 )) || die "open file limit $(ulimit -n) too low for --files $NFILES"
fi

# ----------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------
mount_tmpfs() { # dir
    mkdir -p "$1"
    mount -t tmpfs -o "size=$FS_SIZE_BYTES,mode=0755" tmpfs "$1"
    MOUNTS+=("tmpfs|$1|")
}

start_passthrough() { # src mnt
    local src=$1 mnt=$2 pid i
    mount_tmpfs "$src"
    mkdir -p "$mnt"
    # shellcheck disable=SC2086
    "$PT_BIN" -f -o "source=$src" $PT_OPTS "$mnt" >"$OUT_DIR/passthrough_ll.log" 2>&1 &
    pid=$!
    MOUNTS+=("pt|$mnt|$pid")
    for (( i = 0; i < 100; i++ )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$OUT_DIR/passthrough_ll.log" >&2
            die "passthrough_ll exited during startup"
        fi
        grep -q " $mnt fuse" /proc/self/mounts && mountpoint -q "$mnt" && return 0
        sleep 0.1
    done
    die "passthrough_ll did not mount $mnt within 10 s"
}

mount_rawfs() { # mnt
    local mnt=$1
    mkdir -p "$mnt"
    MOUNTS+=("rawfs|$mnt|")
    # shellcheck disable=SC2086
    "$RAWFS" mount "$mnt" --daemon $RAWFS_ARGS_EFF >&2 || die "rawfs mount failed"
    mountpoint -q "$mnt" || die "rawfs mount returned but $mnt is not a mount point"
}

# ----------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------
# Results: R[target.metric] = value. Metrics below, in table order.
declare -A R=()
METRICS=(create stat unlink randread seqwrite seqread)
declare -A M_LABEL=(
    [create]="create (open+close)" [stat]="stat" [unlink]="unlink"
    [randread]="4k randread" [seqwrite]="1M seq write" [seqread]="1M seq read")
declare -A M_UNIT=(
    [create]="ops/s" [stat]="ops/s" [unlink]="ops/s"
    [randread]="IOPS" [seqwrite]="MB/s" [seqread]="MB/s")
declare -A M_JSON=(
    [create]="create_ops_per_s" [stat]="stat_ops_per_s" [unlink]="unlink_ops_per_s"
    [randread]="randread_4k_iops" [seqwrite]="seqwrite_1m_mb_per_s" [seqread]="seqread_1m_mb_per_s")

# run_fio target rw bs size_mib file -> prints "iops bw_kib_per_s"
# Terse v3 fields: 7/8 read bandwidth KiB/s / IOPS, 48/49 the same for writes.
run_fio() {
    local rw=$1 bs=$2 size=$3 file=$4 out
    out="$(fio --name="bench-$rw" --filename="$file" --rw="$rw" --bs="$bs" \
        --size="${size}m" --ioengine=psync --numjobs=1 --iodepth=1 \
        --time_based --runtime="$RUNTIME" --fallocate=none --end_fsync=0 \
        --output-format=terse --terse-version=3)" || die "fio $rw on $file failed"
    out="$(grep -m1 '^3;' <<<"$out")" || die "fio $rw: no terse output"
    case "$rw" in
        write|randwrite) awk -F';' '{print $49, $48}' <<<"$out" ;;
        *) awk -F';' '{print $8, $7}' <<<"$out" ;;
    esac
}

kib_to_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; }

bench_dir() { # target dir
    local t=$1 d=$2 k v iops bw res
    log "$t: metadata ($NFILES files x $MD_ROUNDS round(s))"
    mkdir "$d/md"
    while read -r k v; do
        R[$t.$k]=$v
    done < <("$MDBENCH" "$d/md" "$NFILES" "$MD_ROUNDS" || echo "FAIL x")
    [[ -n "${R[$t.unlink]:-}" ]] || die "mdbench failed on $t"
    rmdir "$d/md"

    log "$t: 4k randread on ${RR_SIZE_MIB} MiB (${RUNTIME} s)"
    res=$(run_fio randread 4k "$RR_SIZE_MIB" "$d/randread.dat")
    read -r iops bw <<<"$res"
    R[$t.randread]=$(awk -v x="$iops" 'BEGIN { printf "%.0f", x }')
    rm -f "$d/randread.dat"

    log "$t: 1M seq write on ${SEQ_SIZE_MIB} MiB (${RUNTIME} s)"
    res=$(run_fio write 1m "$SEQ_SIZE_MIB" "$d/seq.dat")
    read -r iops bw <<<"$res"
    R[$t.seqwrite]=$(kib_to_mb "$bw")

    log "$t: 1M seq read on ${SEQ_SIZE_MIB} MiB (${RUNTIME} s)"
    res=$(run_fio read 1m "$SEQ_SIZE_MIB" "$d/seq.dat")
    read -r iops bw <<<"$res"
    R[$t.seqread]=$(kib_to_mb "$bw")
    rm -f "$d/seq.dat"
}

# ----------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------
if (( DO_TMPFS )); then
    log "== tmpfs"
    mount_tmpfs "$WORK/tmpfs"
    bench_dir tmpfs "$WORK/tmpfs"
    unmount_all
fi
if (( DO_PT )); then
    log "== passthrough_ll ($PT_OPTS)"
    start_passthrough "$WORK/pt-src" "$WORK/pt"
    bench_dir passthrough "$WORK/pt"
    unmount_all
fi
if (( DO_RAWFS )); then
    log "== rawfs ($RAWFS mount MNT --daemon $RAWFS_ARGS_EFF)"
    mount_rawfs "$WORK/rawfs"
    bench_dir rawfs "$WORK/rawfs"
    unmount_all
fi

ELAPSED=$(( $(date +%s) - START_TS ))

# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
ratio() { # a b -> a/b with 2 decimals, or empty
    [[ -n "$1" && -n "$2" ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'
}
val() { printf '%s' "${R[$1.$2]:-}"; }
or_dash() { printf '%s' "${1:--}"; }

FIO_VERSION="$(fio --version)"
FUSE_VERSION="$(pkg-config --modversion fuse3 2>/dev/null || echo unknown)"
KERNEL="$(uname -r)"
CPU="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
NCPU="$(nproc)"

{
    echo "rawfs benchmark ($MODE mode), $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $KERNEL, $NCPU x ${CPU:-cpu}"
    echo "  metadata: $NFILES files in one directory, median of $MD_ROUNDS round(s) (target/bench/mdbench)"
    echo "  fio $FIO_VERSION, psync, 1 job, ${RUNTIME} s time based: 4k randread on ${RR_SIZE_MIB} MiB; 1M seq write/read on ${SEQ_SIZE_MIB} MiB; MB = 10^6 B"
    (( DO_TMPFS )) && echo "  tmpfs:          mount -t tmpfs -o size=$FS_SIZE_BYTES"
    (( DO_PT )) && echo "  passthrough_ll: libfuse $FUSE_VERSION example, -f -o source=<fresh tmpfs> $PT_OPTS, multi-threaded, no writeback ($PT_OPTS_WHY)"
    (( DO_RAWFS )) && echo "  rawfs:          $RAWFS mount MNT --daemon $RAWFS_ARGS_EFF"
    echo
    printf '%-20s %-6s %12s %15s %12s %12s %12s %12s\n' \
        workload unit tmpfs passthrough_ll rawfs rawfs/tmpfs rawfs/pt pt/tmpfs
    for m in "${METRICS[@]}"; do
        a=$(val tmpfs "$m"); p=$(val passthrough "$m"); r=$(val rawfs "$m")
        printf '%-20s %-6s %12s %15s %12s %12s %12s %12s\n' \
            "${M_LABEL[$m]}" "${M_UNIT[$m]}" "$(or_dash "$a")" "$(or_dash "$p")" "$(or_dash "$r")" \
            "$(or_dash "$(ratio "$r" "$a")")" "$(or_dash "$(ratio "$r" "$p")")" "$(or_dash "$(ratio "$p" "$a")")"
    done
    echo
    echo "total run time: ${ELAPSED} s; results: $RESULTS_JSON"
}

# JSON output -----------------------------------------------------------------
json_str() { # escape for a JSON string literal
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}
json_num() { if [[ -n "$1" ]]; then printf '%s' "$1"; else printf 'null'; fi; }
json_target() { # target enabled
    local t=$1 first=1 m
    if (( ! $2 )); then printf 'null'; return; fi
    printf '{'
    for m in "${METRICS[@]}"; do
        (( first )) || printf ', '
        first=0
        printf '"%s": %s' "${M_JSON[$m]}" "$(json_num "$(val "$t" "$m")")"
    done
    printf '}'
}
json_ratio() { # num_target den_target
    local first=1 m
    printf '{'
    for m in "${METRICS[@]}"; do
        (( first )) || printf ', '
        first=0
        printf '"%s": %s' "${M_JSON[$m]}" "$(json_num "$(ratio "$(val "$1" "$m")" "$(val "$2" "$m")")")"
    done
    printf '}'
}

{
    printf '{\n'
    printf '  "mode": %s,\n' "$(json_str "$MODE")"
    printf '  "date_utc": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '  "elapsed_s": %s,\n' "$ELAPSED"
    printf '  "host": {"kernel": %s, "cpu": %s, "ncpu": %s, "fio": %s, "libfuse": %s},\n' \
        "$(json_str "$KERNEL")" "$(json_str "$CPU")" "$NCPU" "$(json_str "$FIO_VERSION")" "$(json_str "$FUSE_VERSION")"
    printf '  "config": {\n'
    printf '    "metadata_files": %s,\n' "$NFILES"
    printf '    "metadata_rounds": %s,\n' "$MD_ROUNDS"
    printf '    "fio_runtime_s": %s,\n' "$RUNTIME"
    printf '    "randread_file_mib": %s,\n' "$RR_SIZE_MIB"
    printf '    "seq_file_mib": %s,\n' "$SEQ_SIZE_MIB"
    printf '    "tmpfs_size_bytes": %s,\n' "$FS_SIZE_BYTES"
    printf '    "passthrough_ll_options": %s,\n' "$(json_str "-f -o source=DIR $PT_OPTS")"
    printf '    "rawfs_binary": %s,\n' "$( ((DO_RAWFS)) && json_str "$RAWFS" || printf 'null')"
    printf '    "rawfs_args": %s\n' "$(json_str "$RAWFS_ARGS_EFF")"
    printf '  },\n'
    printf '  "units": {"create_ops_per_s": "ops/s", "stat_ops_per_s": "ops/s", "unlink_ops_per_s": "ops/s", "randread_4k_iops": "IOPS", "seqwrite_1m_mb_per_s": "MB/s (10^6 B/s)", "seqread_1m_mb_per_s": "MB/s (10^6 B/s)"},\n'
    printf '  "targets": {\n'
    printf '    "tmpfs": %s,\n' "$(json_target tmpfs "$DO_TMPFS")"
    printf '    "passthrough_ll": %s,\n' "$(json_target passthrough "$DO_PT")"
    printf '    "rawfs": %s\n' "$(json_target rawfs "$DO_RAWFS")"
    printf '  },\n'
    printf '  "ratios": {\n'
    printf '    "rawfs/tmpfs": %s,\n' "$(json_ratio rawfs tmpfs)"
    printf '    "rawfs/passthrough_ll": %s,\n' "$(json_ratio rawfs passthrough)"
    printf '    "passthrough_ll/tmpfs": %s\n' "$(json_ratio passthrough tmpfs)"
    printf '  }\n'
    printf '}\n'
} >"$RESULTS_JSON"
