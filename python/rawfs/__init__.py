"""Mount rawfs from Python and assert on what a program asked of the file system.

    import os, rawfs

    with rawfs.mount() as m:
        fd = os.open(m / "app.pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        (create,) = m.events(op="create", path="/app.pid")
        assert "O_EXCL" in create.flags

The package runs the rawfs binary installed with it to mount and unmount, and talks to the
mount's daemon over its control socket for everything else. docs/python.md has the whole API
and the pytest plugin (the `rawfs_mount` fixture).
"""

from ._binary import binary, fuse_unavailable
from ._errors import RawfsError
from ._events import Event, Finding, Hold, Losses
from ._mount import Mount, Rule, format_text, mount

__all__ = [
    "Event",
    "Finding",
    "Hold",
    "Losses",
    "Mount",
    "RawfsError",
    "Rule",
    "binary",
    "format_text",
    "fuse_unavailable",
    "mount",
]
