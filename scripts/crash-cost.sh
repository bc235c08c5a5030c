#!/usr/bin/env bash
# scripts/crash-cost.sh - what a power cut costs on a large tree: the time `rawfs crash` takes
# and the daemon's memory, for 100,000 small files made durable (file and directory fsyncs)
# and then 1 GiB written and never synced.
#
# Usage: RAWFS=target/release/rawfs scripts/crash-cost.sh   (root, or fusermount3)
set -euo pipefail
cd "$(dirname "$0")/.."
RAWFS=${RAWFS:-target/release/rawfs}
[[ -x $RAWFS ]] || { echo "crash-cost: build first (cargo build --release) or set RAWFS" >&2; exit 1; }
work=$(mktemp -d)
export RAWFS_RUNTIME_DIR="$work/run"
mkdir -m 700 "$RAWFS_RUNTIME_DIR"
mnt="$work/mnt"
mkdir "$mnt"
trap '"$RAWFS" umount --lazy "$mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
"$RAWFS" mount --daemon --trace-capacity 0 "$mnt"
pid=$("$RAWFS" status "$mnt" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$pid/status"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
echo "daemon RSS at start: $(rss)"
t0=$(now)
python3 - "$mnt" <<'PY'
import os, sys
m = sys.argv[1]
def fsync_path(p):
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
for d in range(100):
    os.mkdir(f"{m}/d{d}")
    for i in range(1000):
        fd = os.open(f"{m}/d{d}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 100)
        os.fsync(fd)
        os.close(fd)
    fsync_path(f"{m}/d{d}")
fsync_path(m)
PY
t1=$(now)
echo "100,000 files made durable in $(since "$t0" "$t1") s; daemon RSS $(rss)"
dd if=/dev/zero of="$mnt/big" bs=1M count=1024 status=none
echo "1 GiB written, never synced; daemon RSS $(rss)"
t2=$(now)
"$RAWFS" crash "$mnt" --dry-run > /dev/null
t3=$(now)
"$RAWFS" crash "$mnt"
t4=$(now)
echo "dry run $(since "$t2" "$t3") s; crash $(since "$t3" "$t4") s (CLI round trips included); daemon RSS $(rss)"
echo "names left at the top: $(ls "$mnt" | wc -l)"
