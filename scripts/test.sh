#!/usr/bin/env bash
# Runs every rawfs test on this machine:
#   1. installs the Debian packages the tests need (scripts/install-test-deps.sh);
#   2. formatting and lint checks (when rustfmt/clippy are installed);
#   3. unit and integration tests (`cargo test`), mounted tests included;
#   4. the Python package (python/, docs/python.md): scripts/python-env.sh installs it with
#      `pip install .` into target/venv (reusing the release build), then ruff and pytest;
#   5. pjdfstest, the POSIX file system test suite, against a rawfs mount in the default mode
#      and in --cache mode (where rawfs guards the names the kernel keeps);
#   6. fsx, a data-integrity exerciser, 100k operations in the default (direct I/O)
#      mode and in --cache mode.
# Mounting needs root (or fusermount3) and /dev/fuse. With CI=true, a mounted test
# that cannot mount fails instead of being skipped.
#
# Usage: scripts/test.sh [--quick]   (--quick: only steps 1-3)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ ${1:-} == --quick ]] && quick=1

step() { printf '\n==== %s\n' "$*" >&2; }

step "test dependencies"
scripts/install-test-deps.sh

if cargo fmt --version >/dev/null 2>&1; then
    step "cargo fmt --check"
    cargo fmt --check
fi
if cargo clippy --version >/dev/null 2>&1; then
    step "cargo clippy"
    cargo clippy --locked --all-targets -- -D warnings
fi

step "cargo test"
cargo test --locked

[[ $quick == 1 ]] && exit 0

step "release build"
cargo build --locked --release
export RAWFS="$PWD/target/release/rawfs"

step "python package: install, ruff, pytest"
py=$(scripts/python-env.sh)
"${py%/python}/ruff" format --check python
"${py%/python}/ruff" check python
# Without RAWFS, so the tests use the binary installed with the package. pytest exits 5 when
# it collected no test: that fails here like any other non-zero status.
env -u RAWFS "$py" -m pytest -p no:cacheprovider python/tests

step "pjdfstest"
scripts/pjdfstest.sh

step "pjdfstest, --cache mode"
scripts/pjdfstest.sh --cache

step "fsx, direct I/O mode"
scripts/fsx.sh --ops 100000

step "fsx, --cache mode"
scripts/fsx.sh --cache --ops 100000

step "all tests passed"
