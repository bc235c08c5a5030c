"""The pytest plugin (entry point `pytest11`): the `rawfs_mount` fixture, the `rawfs`
marker that configures it, and the trace of a failed test's mount in its report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import rawfs

# Requests of a failed test's mount shown in its report.
REPORT_EVENTS = 50

_MOUNT = pytest.StashKey["rawfs.Mount"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rawfs")
    group.addoption(
        "--rawfs-require",
        action="store_true",
        default=False,
        help="fail tests that use rawfs_mount where FUSE is unavailable, instead of "
        "skipping them (also when CI=true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rawfs(cache=False, size=None, faults=(), model=None, trace_capacity=None): "
        "how the rawfs_mount fixture mounts (the arguments of rawfs.mount)",
    )


def _must_run(config: pytest.Config) -> str | None:
    """Why skipping is forbidden here, if it is."""
    if config.getoption("rawfs_require"):
        return "--rawfs-require"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return "CI=true"
    return None


@pytest.fixture
def rawfs_mount(request: pytest.FixtureRequest) -> Iterator[rawfs.Mount]:
    """A rawfs mount on a fresh temporary directory, unmounted after the test. Configure it
    with `@pytest.mark.rawfs(...)`. Where FUSE is unavailable the test is skipped, or fails
    under CI=true or --rawfs-require."""
    marker = request.node.get_closest_marker("rawfs")
    kwargs: dict[str, Any] = {}
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(
                f"@pytest.mark.rawfs takes keyword arguments only, not {marker.args!r}"
            )
        kwargs = dict(marker.kwargs)
    why = rawfs.fuse_unavailable()
    if why is not None:
        forced = _must_run(request.config)
        if forced:
            pytest.fail(
                f"FUSE is unavailable ({why}), and {forced} forbids skipping", pytrace=False
            )
        pytest.skip(f"FUSE is unavailable: {why}")
    with rawfs.mount(**kwargs) as m:
        request.node.stash[_MOUNT] = m
        try:
            yield m
        finally:
            del request.node.stash[_MOUNT]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when != "call":
        return
    m = item.stash.get(_MOUNT, None)
    if m is None or not m.mounted:
        return
    try:
        text = m.text(last=REPORT_EVENTS)
    except rawfs.RawfsError as e:
        text = f"(the trace could not be read: {e})\n"
    title = f"rawfs trace of {m.path} (last {REPORT_EVENTS} requests)"
    report.sections.append((title, text or "(no requests)\n"))
