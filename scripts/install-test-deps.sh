#!/usr/bin/env bash
# Install the Debian packages needed to build and run the external file system
# test suites (scripts/pjdfstest.sh and scripts/fsx.sh), and python3-venv where the
# python3 on PATH lacks venv (scripts/python-env.sh).
#
# Usage: scripts/install-test-deps.sh
#
# Idempotent: packages that are already installed are left alone, and
# `apt-get update` only runs when the package lists are missing or an install
# from the existing lists fails. Must run as root (or with sudo available).
set -euo pipefail

# The one place where the package list lives.
PACKAGES=(
    libacl1-dev      # pjdfstest: links against libacl (exacl crate)
    acl              # getfacl/setfacl, handy when looking at ACL failures
    attr             # getfattr/setfattr for xattr checks
    fuse3            # fusermount3, /etc/fuse.conf
    pkg-config       # build scripts that look up system libraries
    gcc              # C toolchain / linker used by cargo
    libc6-dev        # C headers and crt files for linking
    ca-certificates  # cargo talking to crates.io over TLS
    mount            # mount, umount
    util-linux       # findmnt, mountpoint
    sqlite3          # the sqlite3 shell, for checkers in crash-exploration tests
)

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        is_installed "$pkg" || printf '%s\n' "$pkg"
    done
    # scripts/python-env.sh needs `python3 -m venv` with pip: Debian's python3 has them only
    # with python3-venv (another python3 first on PATH, such as a pyenv build, has its own).
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        is_installed python3-venv || printf '%s\n' python3-venv
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*"
        exit 1
    fi
}

apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

# How long to wait for another process (unattended-upgrades, another apt) to let go of the
# package manager's lock before giving up.
LOCK_WAIT_SECONDS=${LOCK_WAIT_SECONDS:-900}
LOCK_RETRY_SECONDS=${LOCK_RETRY_SECONDS:-5}

# with_apt_lock CMD...: runs an apt-get command; while it fails only because another process
# holds the package manager's lock, says so and tries again, up to LOCK_WAIT_SECONDS.
# (DPkg::Lock::Timeout covers the dpkg lock of an install, not the lists lock of an update.)
with_apt_lock() {
    local out start=$SECONDS status
    out=$(mktemp)
    while true; do
        status=0
        "$@" 2>&1 | tee "$out" >&2 || status=${PIPESTATUS[0]}
        if [[ $status -eq 0 ]] || ! grep -qE 'Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock' "$out"; then
            rm -f "$out"
            return "$status"
        fi
        if ((SECONDS - start >= LOCK_WAIT_SECONDS)); then
            log "the package manager's lock was still held after ${LOCK_WAIT_SECONDS}s; giving up"
            rm -f "$out"
            return "$status"
        fi
        log "another process holds the package manager's lock (above); waiting for it"
        sleep "$LOCK_RETRY_SECONDS"
    done
}

apt_update() {
    log "running apt-get update"
    with_apt_lock as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=60 update -q
}

apt_install() {
    with_apt_lock as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=60 install -y -q --no-install-recommends "$@"
}

main() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "all packages already installed"
        return 0
    fi
    log "installing: ${missing[*]}"
    apt_lists_present || apt_update
    if ! apt_install "${missing[@]}"; then
        log "install failed with the current package lists; refreshing them"
        apt_update
        apt_install "${missing[@]}"
    fi
    log "done"
}

main "$@"
