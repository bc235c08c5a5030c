"""Finding the rawfs binary, and telling whether FUSE can be mounted here."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

from ._errors import RawfsError

# CAP_SYS_ADMIN, the capability mount(2) needs, is bit 21 of CapEff in /proc/self/status.
_CAP_SYS_ADMIN = 21


def bundled_binary() -> str | None:
    """The rawfs binary installed with this package (`pip install .` puts it in the
    environment's scripts directory), or None when the package was installed without it."""
    try:
        files = importlib.metadata.distribution("rawfs").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        # The wheel's .data/scripts/rawfs lands as <prefix>/bin/rawfs; RECORD lists it
        # relative to site-packages, so locate() gives its absolute path.
        if f.name == "rawfs" and f.parent.name == "bin":
            path = Path(f.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def binary() -> str:
    """The rawfs binary this package runs: `$RAWFS` if set, else the one installed with the
    package, else `rawfs` on PATH."""
    env = os.environ.get("RAWFS")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise RawfsError(f"RAWFS={env} is not an executable file")
        return env
    found = bundled_binary() or shutil.which("rawfs")
    if found is None:
        raise RawfsError(
            "cannot find the rawfs binary: install this package with `pip install .` from "
            "the rawfs repository, put rawfs on PATH, or set RAWFS to its path"
        )
    return found


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot be made here, or None if it can.

    Looks at the device (`$RAWFS_FUSE_DEVICE`, default /dev/fuse: the variable exists so
    that the plugin's skip can be tested against a missing device) and at the permission to
    mount: CAP_SYS_ADMIN, or fusermount3 on PATH for other users.
    """
    device = os.environ.get("RAWFS_FUSE_DEVICE") or "/dev/fuse"
    if not os.path.exists(device):
        return f"{device} does not exist"
    try:
        # Opening the device starts no mount: the connection is dropped when it closes.
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"cannot open {device}: {e.strerror}"
    if not _has_cap_sys_admin() and shutil.which("fusermount3") is None:
        return (
            "no permission to mount: not root (no CAP_SYS_ADMIN) and fusermount3 is not "
            "on PATH (Debian package fuse3)"
        )
    return None
