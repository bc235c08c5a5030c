#!/usr/bin/env bash
# Creates (or brings up to date) the Python virtual environment the Python tests run in:
# target/venv, holding the rawfs package installed from this repository with `pip install .`
# (which builds the rawfs binary in target/release, shared with `cargo build --release`, and
# puts it in target/venv/bin), plus pytest, ruff and maturin (the build backend)
# at the versions below.
#
# Usage: scripts/python-env.sh        (prints the venv's python on stdout)
#
# Idempotent: the venv is created once; later runs reinstall the package (cargo rebuilds only
# what changed) and leave the tools alone when they are at the pinned versions.
# Needs python3 >= 3.9 with the venv module (Debian: python3-venv) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(realpath -m "${RAWFS_VENV:-target/venv}")
# The tools' versions: pinned, so a new release cannot change a lint verdict under us.
TOOLS=(pytest==9.2.0 ruff==0.17.6 maturin==1.16.0)

log() { printf 'python-env: %s\n' "$*" >&2; }

if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        log "python3 -m venv failed: on Debian, install python3-venv"
        exit 1
    fi
fi
py=$VENV/bin/python

if ! "$py" -m pip install -q --disable-pip-version-check "${TOOLS[@]}" >&2; then
    log "cannot install ${TOOLS[*]}"
    exit 1
fi
log "installing the rawfs package (pip install .)"
# --force-reinstall: same version number, new code. --no-deps: it has none.
# --no-build-isolation: build with the maturin installed above rather than fetching one into
# a fresh build environment each time.
PATH="$VENV/bin:$PATH" "$py" -m pip install -q --disable-pip-version-check \
    --force-reinstall --no-deps --no-build-isolation . >&2
echo "$py"
