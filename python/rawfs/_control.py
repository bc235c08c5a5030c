"""The daemon's control socket: where it is and how to talk to it (protocol version 1,
one JSON object per line; docs/control.md)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any, Callable

from ._errors import RawfsError

PROTOCOL_VERSION = 1

# A name longer than this is replaced by a hash: a Unix socket path holds at most 107 bytes.
_MAX_NAME = 64


def runtime_dir() -> str:
    """Where daemons keep their sockets, pid files and logs (as src/registry.rs decides)."""
    if os.environ.get("RAWFS_RUNTIME_DIR"):
        return os.environ["RAWFS_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "rawfs")
    uid = os.getuid()
    return "/run/rawfs" if uid == 0 else f"/tmp/rawfs-{uid}"


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def socket_path(mountpoint: os.PathLike | str) -> str:
    """The control socket of the mount on `mountpoint`: the absolute mount point, symbolic
    links in its parent resolved, `%` written `%25` and `/` written `%2F`, plus `.sock`."""
    parent, name = os.path.split(os.path.abspath(os.fspath(mountpoint)))
    absolute = os.path.join(os.path.realpath(parent), name)
    escaped = absolute.replace("%", "%25").replace("/", "%2F")
    if len(escaped.encode()) > _MAX_NAME:
        escaped = f"hash-{_fnv1a(os.fsencode(absolute)):016x}"
    return os.path.join(runtime_dir(), escaped + ".sock")


class Connection:
    """One connection to a daemon; requests on it are answered in order."""

    def __init__(self, path: str, timeout: float | None):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise RawfsError(f"no rawfs daemon answers on {path}: {e.strerror or e}") from None
        self._reader = self._sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> dict[str, Any]:
        try:
            line = self._reader.readline()
        except socket.timeout:
            raise RawfsError("the rawfs daemon did not answer in time") from None
        if not line:
            raise RawfsError("the rawfs daemon closed the connection")
        return json.loads(line)

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Sends one command; returns its answer, or raises RawfsError with the daemon's
        message when the answer says `"ok": false`."""
        msg = {"v": PROTOCOL_VERSION, "cmd": cmd}
        msg.update({k: v for k, v in fields.items() if v is not None})
        self._sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        answer = self._line()
        if answer.get("ok") is not True:
            raise RawfsError(answer.get("error", f"the daemon refused {cmd}: {answer}"))
        return answer

    def trace(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """The buffered events after `since`, as JSON objects in `seq` order. The daemon
        answers with every request answered before the command arrived."""
        self.request("trace", since=since)
        while True:
            line = self._line()
            if "event" in line:
                yield line["event"]
            elif line.get("end"):
                return


def call(path: str, timeout: float | None, do: Callable[[Connection], Any]) -> Any:
    """Runs `do` on a fresh connection. One connection per call keeps a Mount usable from
    several threads at once (a thread blocked in wait_holds holds only its own)."""
    with Connection(path, timeout) as conn:
        return do(conn)


def events(path: str, timeout: float | None) -> list[dict[str, Any]]:
    return call(path, timeout, lambda c: list(c.trace()))
