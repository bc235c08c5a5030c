"""Shared set-up of the Python package's tests: pytester for the plugin's own tests, and
`mounted`, a mount made with rawfs.mount() directly (the plugin's fixture is tested too, but
the API tests must not depend on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import rawfs
from rawfs.pytest_plugin import _must_run

pytest_plugins = ["pytester"]


@pytest.fixture
def fuse(request: pytest.FixtureRequest) -> None:
    """Skips the test where FUSE is unavailable, printing why; fails it instead under
    CI=true or --rawfs-require, as the plugin's fixture does."""
    why = rawfs.fuse_unavailable()
    if why is not None:
        forced = _must_run(request.config)
        if forced:
            pytest.fail(f"FUSE is unavailable ({why}), and {forced} forbids skipping")
        pytest.skip(f"FUSE is unavailable: {why}")


@pytest.fixture
def mounted(fuse: None) -> Iterator[rawfs.Mount]:
    """A default mount on its own temporary directory."""
    with rawfs.mount() as m:
        yield m
