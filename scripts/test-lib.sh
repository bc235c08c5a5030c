# shellcheck shell=bash
# Shared helpers for scripts/pjdfstest.sh and scripts/fsx.sh.
# Source it; it is not meant to be run directly.
#
# Provides:
#   log/die                  messages prefixed with the calling script's name
#   ensure_test_deps         run scripts/install-test-deps.sh (idempotent)
#   build_tool CRATE VER     cargo install CRATE@VER into target/tools (cached)
#   resolve_rawfs            set $RAWFS (env, or cargo build --release)
#   make_workdir NAME        fresh world-readable temp dir in $WORKDIR
#   mount_fs MNT             mount rawfs (or tmpfs when USE_TMPFS=1) on MNT
#   teardown                 unmount and remove $WORKDIR (also run by the
#                            EXIT trap that install_cleanup_trap sets)
#
# The sourcing script sets USE_TMPFS=1 for a tmpfs comparison run and may
# append to the RAWFS_MOUNT_ARGS array. Environment: RAWFS (binary to use),
# RAWFS_EXTRA_ARGS (extra `rawfs mount` arguments, split on whitespace).

export LC_ALL=C  # stable sort/comm order and tool messages

SCRIPT_NAME=$(basename "$0")
SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPTS_DIR/.." && pwd)
TOOLS_ROOT="$REPO_ROOT/target/tools"

USE_TMPFS=0
RAWFS_MOUNT_ARGS=()
# Extra `rawfs mount` arguments from the environment, e.g. "--threads 4".
read -r -a RAWFS_EXTRA_ARGS <<<"${RAWFS_EXTRA_ARGS:-}"
WORKDIR=""
MOUNTPOINT=""

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it mounts file systems)"
}

ensure_test_deps() {
    "$SCRIPTS_DIR/install-test-deps.sh"
}

# build_tool CRATE VERSION: install the crate's binary from crates.io into
# target/tools/bin unless that version is already there. Prints its path.
build_tool() {
    local crate=$1 version=$2 bin="$TOOLS_ROOT/bin/$1" start
    if [[ -x $bin && $("$bin" --version 2>/dev/null) == "$crate $version" ]]; then
        log "using cached $crate $version: $bin"
    else
        log "building $crate $version from crates.io into $TOOLS_ROOT"
        start=$SECONDS
        # Its closing advice to add target/tools/bin to PATH is not for this script's user:
        # the scripts run the tool by its full path.
        if ! cargo install --locked --force --root "$TOOLS_ROOT" --version "=$version" "$crate" \
            2>&1 | { grep -v -e 'be sure to add .* to your PATH' || true; } >&2; then
            die "cargo install $crate $version failed"
        fi
        log "built $crate $version in $((SECONDS - start))s"
    fi
    printf '%s\n' "$bin"
}

# resolve_rawfs: honour $RAWFS, otherwise build the release binary.
resolve_rawfs() {
    if [[ -n ${RAWFS:-} ]]; then
        [[ -x $RAWFS ]] || die "RAWFS=$RAWFS is not an executable file"
    else
        log "building rawfs (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
        RAWFS="$REPO_ROOT/target/release/rawfs"
        [[ -x $RAWFS ]] || die "$RAWFS not found after build"
    fi
    log "rawfs binary: $RAWFS"
}

# make_workdir NAME: fresh temp dir, searchable by everyone so that tests
# which switch to unprivileged users can reach the mount point below it.
make_workdir() {
    WORKDIR=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")")
    chmod 0755 "$WORKDIR"
}

# is_mounted DIR: read the mount table rather than stat DIR, so that a FUSE
# mount whose daemon died (ENOTCONN) still counts as mounted.
is_mounted() {
    awk -v dir="$1" '$5 == dir { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# mount_fs MNT: mount tmpfs or rawfs on MNT and remember it for cleanup.
mount_fs() {
    local mnt=$1
    mkdir -p "$mnt"
    MOUNTPOINT=$mnt  # set first, so that cleanup also undoes a half-done mount
    if [[ $USE_TMPFS == 1 ]]; then
        log "mounting tmpfs on $mnt"
        mount -t tmpfs tmpfs "$mnt" || die "mount -t tmpfs failed"
    else
        local args=(mount "$mnt" --daemon "${RAWFS_MOUNT_ARGS[@]}" "${RAWFS_EXTRA_ARGS[@]}")
        log "mounting rawfs: $RAWFS ${args[*]}"
        "$RAWFS" "${args[@]}" || die "rawfs mount failed"
    fi
    is_mounted "$mnt" || die "$mnt is not a mount point after mounting"
    log "mounted: $(findmnt -n -o FSTYPE,OPTIONS --target "$mnt")"
}

# unmount_fs MNT: polite unmount first, lazy unmount as the fallback.
unmount_fs() {
    local mnt=$1
    is_mounted "$mnt" || return 0
    if [[ $USE_TMPFS == 1 ]]; then
        umount "$mnt" 2>/dev/null || true
    else
        timeout 60 "$RAWFS" umount "$mnt" || log "rawfs umount failed (status $?)"
    fi
    if is_mounted "$mnt"; then
        log "falling back to umount -l $mnt"
        umount -l "$mnt" || log "umount -l $mnt failed"
    fi
}

# teardown: unmount and remove the work dir. Never removes the work dir
# while something is still mounted below it. Safe to call more than once.
teardown() {
    if [[ -n $MOUNTPOINT ]]; then
        unmount_fs "$MOUNTPOINT"
        if is_mounted "$MOUNTPOINT"; then
            log "warning: $MOUNTPOINT is still mounted; leaving $WORKDIR in place"
            return 1
        fi
        MOUNTPOINT=""
    fi
    if [[ -n $WORKDIR && -d $WORKDIR ]]; then
        rm -rf --one-file-system "$WORKDIR" || log "warning: could not remove $WORKDIR"
    fi
    WORKDIR=""
}

# cleanup: EXIT trap; keeps the script's exit status.
cleanup() {
    local status=$?
    trap - EXIT
    teardown || true
    exit "$status"
}

install_cleanup_trap() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
