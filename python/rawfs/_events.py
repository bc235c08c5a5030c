"""Trace events, check findings and held requests as Python objects, and the event filters
of `Mount.events` (the same as `rawfs trace`'s: docs/trace.md)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Union

# One trace event of the JSON Lines format: the attribute and the field it comes from.
_FIELDS = (
    ("seq", "seq"),
    ("op", "op"),
    ("path", "path"),
    ("path2", "path2"),
    ("pid", "pid"),
    ("tid", "tid"),
    ("comm", "comm"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("mode", "mode"),
    ("offset", "offset"),
    ("size", "size"),
    ("returned", "returned"),
    ("errno", "errno"),
    ("rule", "rule"),
    ("fault", "fault"),
    ("duration_ns", "dur_ns"),
    ("ts_ns", "ts_ns"),
    ("ino", "ino"),
    ("fh", "fh"),
    ("file_size", "file_size"),
)


class Event:
    """One request as rawfs answered it. A field the operation does not have is None;
    `flags` is the set of decoded flag names (`{"O_WRONLY", "O_CREAT", "O_EXCL", ...}`, empty
    when the request carries none) and `raw` the event's JSON object."""

    __slots__ = (*tuple(a for a, _ in _FIELDS), "flags", "short", "raw")

    seq: int
    op: str
    path: str | None
    path2: str | None
    pid: int
    tid: int
    comm: str
    uid: int
    gid: int
    mode: int | None
    offset: int | None
    size: int | None
    returned: int | None
    errno: str | None
    rule: int | None
    fault: str | None
    duration_ns: int
    ts_ns: int
    ino: int | None
    fh: int | None
    file_size: int | None
    flags: frozenset[str]
    short: bool
    raw: dict[str, Any]

    def __init__(self, raw: dict[str, Any]):
        for attr, field in _FIELDS:
            setattr(self, attr, raw.get(field))
        names = raw.get("flags_str")
        self.flags = frozenset(n for n in names.split("|") if n != "0") if names else frozenset()
        self.short = bool(raw.get("short", False))
        self.raw = raw

    @property
    def failed(self) -> bool:
        """True if the request failed (it has an errno)."""
        return self.errno is not None

    def __repr__(self) -> str:
        parts = [f"#{self.seq}", self.op]
        if self.path is not None:
            parts.append(repr(self.path))
        if self.path2 is not None:
            parts.append(f"-> {self.path2!r}")
        if self.errno is not None:
            parts.append(self.errno)
        return f"<Event {' '.join(parts)}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]


class Finding:
    """One finding of a check: its name (`check`), `severity` (`"warning"` or `"info"`), the
    sequence numbers of the requests that show it (`seqs`) and what happened (`message`)."""

    __slots__ = ("check", "message", "raw", "seqs", "severity")

    def __init__(self, raw: dict[str, Any]):
        self.check: str = raw["check"]
        self.severity: str = raw.get("severity", "warning")
        self.seqs: tuple[int, ...] = tuple(raw.get("seqs", ()))
        self.message: str = raw.get("message", "")
        self.raw = raw

    def __str__(self) -> str:
        seqs = " ".join(f"#{s}" for s in self.seqs)
        return f"{self.severity}[{self.check}] {seqs}: {self.message}"

    def __repr__(self) -> str:
        return f"<Finding {self}>"


class Losses:
    """What a crash lost, or would lose now (`Mount.crash()`, `Mount.unsynced()`).

    `files`: a dict per file whose contents or attributes lose changes (`path`, `size`,
    `size_after`, `lost` byte ranges as `[offset, length]`, `torn` writes as
    `[offset, kept, length]`, `attrs`); `names`: a dict per directory entry that changes
    (`path`, `live` and `after`: the kind the name has, `"file"`, `"dir"`..., or None).
    False when nothing is lost: `assert not m.unsynced()` says everything is durable."""

    __slots__ = ("files", "model", "names", "raw")

    def __init__(self, raw: dict[str, Any], model: str):
        self.files: list[dict[str, Any]] = raw.get("files", [])
        self.names: list[dict[str, Any]] = raw.get("names", [])
        self.model = model
        self.raw = raw

    def __bool__(self) -> bool:
        return bool(self.files or self.names)

    def paths(self) -> set[str]:
        """Every path that loses something: files and names."""
        return {f["path"] for f in self.files if f.get("path")} | {n["path"] for n in self.names}

    def __str__(self) -> str:
        lines = []
        for f in self.files:
            what = []
            if f.get("lost"):
                ranges = " ".join(f"{o}..{o + n}" for o, n in f["lost"])
                what.append(f"{sum(n for _, n in f['lost'])} bytes lost at {ranges}")
            for o, kept, n in f.get("torn", []):
                what.append(f"write {o}..{o + n} torn after {kept} bytes")
            if f.get("size") != f.get("size_after"):
                what.append(f"size {f.get('size')} -> {f.get('size_after')}")
            if f.get("attrs"):
                what.append("attribute changes lost")
            lines.append(f"{f.get('path') or '(no name)'}: {', '.join(what)}")
        for n in self.names:
            lines.append(f"{n['path']}: {n.get('live') or 'none'} -> {n.get('after') or 'none'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Losses ({self.model}) {len(self.files)} files, {len(self.names)} names>"


class Hold:
    """A request a `hold` rule keeps waiting: `hold` (its id, for `Mount.release`), `rule`,
    `seq`, `op`, `path`, `pid`, `comm`, `waited_ms`."""

    __slots__ = ("comm", "hold", "op", "path", "pid", "raw", "rule", "seq", "waited_ms")

    def __init__(self, raw: dict[str, Any]):
        self.hold: int = raw["hold"]
        self.rule: int = raw["rule"]
        self.seq: int = raw.get("seq", 0)
        self.op: str = raw["op"]
        self.path: str | None = raw.get("path")
        self.pid: int = raw.get("pid", 0)
        self.comm: str = raw.get("comm", "")
        self.waited_ms: int = raw.get("waited_ms", 0)
        self.raw = raw

    def __repr__(self) -> str:
        return f"<Hold {self.hold}: #{self.seq} {self.op} {self.path!r} by {self.pid} {self.comm}>"


def glob_regex(glob: str) -> re.Pattern[str]:
    """A path glob as `rawfs trace --path` reads it (src/trace/filter.rs): `*` and `?`
    within one component, `**` as a whole component across them, `[...]`, `{a,b}`, `\\`
    escapes, and a glob not starting with `/` matching at any depth."""
    if not glob.startswith("/") and not glob.startswith("**"):
        glob = "**/" + glob
    out = []
    braces = 0
    i = 0
    n = len(glob)
    while i < n:
        c = glob[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError(f"glob {glob!r} ends with a lone backslash")
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        if c == "*" and glob.startswith("**", i):
            start_ok = i == 0 or glob[i - 1] == "/"
            end = i + 2
            if not start_ok or (end < n and glob[end] != "/"):
                raise ValueError(f"glob {glob!r}: ** must be a whole path component")
            if end == n:
                out.append(".*")
                i = end
            else:
                out.append("(?:.*/)?")
                i = end + 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            close = glob.find("]", i + 2)
            if close < 0:
                raise ValueError(f"glob {glob!r}: unclosed [")
            body = glob[i + 1 : close]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = close + 1
            continue
        elif c == "{":
            braces += 1
            out.append("(?:")
        elif c == "," and braces:
            out.append("|")
        elif c == "}" and braces:
            braces -= 1
            out.append(")")
        else:
            out.append(re.escape(c))
        i += 1
    if braces:
        raise ValueError(f"glob {glob!r}: unclosed {{")
    return re.compile("".join(out) + r"\Z", re.DOTALL)


Ops = Union[str, Iterable[str], None]


class Selection:
    """The filters of `Mount.events`: every one given must hold."""

    def __init__(
        self,
        op: Ops = None,
        path: str | None = None,
        pid: int | None = None,
        comm: str | None = None,
        failed: bool | None = None,
    ):
        if isinstance(op, str):
            op = [o.strip() for o in op.split(",")]
        self.ops = frozenset(op) if op is not None else None
        self.path = glob_regex(path) if path is not None else None
        self.pid = pid
        self.comm = comm
        self.failed = failed

    def matches(self, e: Event) -> bool:
        if self.ops is not None and e.op not in self.ops:
            return False
        if self.pid is not None and e.pid != self.pid:
            return False
        if self.comm is not None and not _comm_matches(self.comm, e.comm):
            return False
        if self.failed is not None and e.failed != self.failed:
            return False
        if self.path is not None:
            return any(p is not None and self.path.match(p) for p in (e.path, e.path2))
        return True


def _comm_matches(wanted: str, comm: str) -> bool:
    # The kernel keeps the first 15 bytes of a command name.
    if wanted == comm:
        return True
    c = comm.encode()
    return len(c) == 15 and wanted.encode().startswith(c)
