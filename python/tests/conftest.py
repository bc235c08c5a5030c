"""Shared set-up of the Python package's tests: pytester for the plugin's own tests, and
`mounted`, a mount made with rawfs.mount() directly (the plugin's fixture is tested too, but
the API tests must not depend on it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import rawfs

pytest_plugins = ["pytester"]


@pytest.fixture
def fuse() -> None:
    """Skips the test where FUSE is unavailable, printing why; fails it instead under
    CI=true."""
    why = rawfs.fuse_unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but FUSE is unavailable: {why}")
        pytest.skip(f"FUSE is unavailable: {why}")


@pytest.fixture
def mounted(fuse: None) -> Iterator[rawfs.Mount]:
    """A default mount on its own temporary directory."""
    with rawfs.mount() as m:
        yield m
