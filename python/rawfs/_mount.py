"""A rawfs mount on a fresh temporary directory, and everything a test asks of it: the trace,
fault rules, held requests, checks."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _control
from ._binary import binary
from ._errors import RawfsError
from ._events import Event, Finding, Hold, Losses, Ops, Selection

# How long one control request may take before the daemon counts as hung (wait_holds adds
# its own timeout to this).
_TIMEOUT = 30.0

RuleSpec = Mapping[str, Any]


def _run(args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def _message(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    lines = [line.removeprefix("rawfs: ") for line in text.splitlines() if line.strip()]
    return "\n".join(lines) or f"rawfs exited with status {proc.returncode}"


def _rules(faults: RuleSpec | Iterable[RuleSpec]) -> list[dict[str, Any]]:
    if isinstance(faults, Mapping):
        return [dict(faults)]
    return [dict(r) for r in faults]


class Rule:
    """A fault rule in force on a mount: `id`, `hits` (times it fired), `matched`; `remove()`
    takes it out, and so does leaving a `with` block on it."""

    def __init__(self, mount: Mount, rule_id: int, spec: dict[str, Any]):
        self.id = rule_id
        self.spec = spec
        self._mount = mount
        self._removed = False

    def _status(self) -> dict[str, Any]:
        for r in self._mount._request("fault_list")["rules"]:
            if r.get("id") == self.id:
                return r
        raise RawfsError(f"rule {self.id} is no longer in force")

    @property
    def hits(self) -> int:
        """How many requests the rule changed so far."""
        return self._status()["hits"]

    @property
    def matched(self) -> int:
        """How many requests matched the rule (fired or not)."""
        return self._status()["matched"]

    def remove(self) -> None:
        """Takes the rule out of force, releasing the requests it holds. Removing it twice
        is harmless."""
        if not self._removed:
            self._mount._request("fault_remove", ids=[self.id])
            self._removed = True

    def __enter__(self) -> Rule:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mount.mounted:
            self.remove()

    def __repr__(self) -> str:
        return f"<Rule {self.id}: {json.dumps(self.spec, sort_keys=True)}>"


class Mount:
    """A rawfs mount on its own temporary directory, from `rawfs.mount()` until `unmount()`
    or the end of its `with` block.

    `path` is the mount point; `mount / "name"` is a path inside it.
    """

    def __init__(
        self,
        *,
        cache: bool = False,
        size: int | str | None = None,
        faults: RuleSpec | Iterable[RuleSpec] = (),
        model: str | None = None,
        trace_capacity: int | None = None,
    ):
        self._binary = binary()
        args = [self._binary, "mount", "--daemon"]
        if cache:
            args.append("--cache")
        if size is not None:
            args += ["--size", str(size)]
        if trace_capacity is not None:
            args += ["--trace-capacity", str(trace_capacity)]
        if model is not None:
            args += ["--model", str(model)]
        rules = _rules(faults)
        self.path = Path(tempfile.mkdtemp(prefix="rawfs-py-"))
        self.mounted = False
        rules_file = None
        try:
            if rules:
                # `--faults FILE` puts the rules in force before the first request; the
                # daemon has read the file by the time `mount --daemon` returns.
                fd, rules_file = tempfile.mkstemp(prefix="rawfs-rules-", suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump(rules, f)
                args += ["--faults", rules_file]
            proc = _run([*args, str(self.path)])
            if proc.returncode != 0:
                raise RawfsError(_message(proc))
            self.mounted = True
        except BaseException:
            os.rmdir(self.path)
            raise
        finally:
            if rules_file is not None:
                os.unlink(rules_file)
        self._socket = _control.socket_path(self.path)

    # --- mounting -------------------------------------------------------------------------

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.unmount()
            return
        # The body's exception is what the caller must see; a failure to clean up after it
        # is reported as a warning.
        try:
            self.unmount()
        except Exception as e:
            warnings.warn(f"rawfs: unmounting {self.path} after an error: {e}", stacklevel=2)

    def unmount(self) -> None:
        """Unmounts (lazily if a process still uses the mount) and removes the directory.
        Held requests are released first. Calling it again does nothing."""
        if self.mounted:
            proc = _run([self._binary, "umount", str(self.path)])
            if proc.returncode != 0 and "busy" in proc.stderr:
                proc = _run([self._binary, "umount", "--lazy", str(self.path)])
            if proc.returncode != 0:
                raise RawfsError(_message(proc))
            self.mounted = False
        if self.path.exists():
            os.rmdir(self.path)

    def __truediv__(self, name: str | os.PathLike) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        state = "mounted" if self.mounted else "unmounted"
        return f"<rawfs.Mount {str(self.path)!r} {state}>"

    def _request(self, cmd: str, timeout: float = _TIMEOUT, **fields: Any) -> dict[str, Any]:
        if not self.mounted:
            raise RawfsError(f"{self.path} is not mounted any more")
        return _control.call(self._socket, timeout, lambda c: c.request(cmd, **fields))

    # --- the trace ------------------------------------------------------------------------

    def events(
        self,
        op: Ops = None,
        path: str | None = None,
        pid: int | None = None,
        comm: str | None = None,
        failed: bool | None = None,
    ) -> list[Event]:
        """The requests answered so far, oldest first, that match every filter given: `op`
        (a name, a comma-separated list or an iterable of names), `path` (a glob as in
        `rawfs trace --path`, matched against `path` and `path2`), `pid`, `comm`, `failed`
        (True: only failed requests, False: only successful ones).

        Every request answered before the call is included: the daemon waits for them to
        reach its trace buffer before it answers.
        """
        sel = Selection(op, path, pid, comm, failed)
        if not self.mounted:
            raise RawfsError(f"{self.path} is not mounted any more")
        raw = _control.events(self._socket, _TIMEOUT)
        return [e for e in map(Event, raw) if sel.matches(e)]

    def clear(self) -> int:
        """Forgets the requests answered so far: later `events()` start after them. Returns
        how many events were removed."""
        return self._request("trace_clear")["cleared"]

    def text(self, last: int | None = None, **filters: Any) -> str:
        """The selected events (the filters of `events()`; `last=N` keeps the newest N) as
        `rawfs trace` prints them, one strace-like line each."""
        events = self.events(**filters)
        if last is not None:
            events = events[-last:] if last > 0 else []
        return format_text(events, self._binary)

    def status(self) -> dict[str, Any]:
        """The daemon's status: `requests`, `buffered`, `inodes`, `bytes_used`, `rules`,
        `held`, ... (docs/control.md)."""
        answer = self._request("status")
        for k in ("v", "ok"):
            answer.pop(k, None)
        return answer

    # --- faults ---------------------------------------------------------------------------

    def fault(self, rule: RuleSpec | None = None, **fields: Any) -> Rule:
        """Puts a fault rule in force (docs/faults.md), given as the rule's JSON object or
        as its fields: `m.fault(match={"ops": ["read"]}, action={"short": 1})`. A rule the
        daemon refuses raises RawfsError with its reason."""
        if rule is not None and fields:
            raise TypeError("fault() takes a rule or its fields, not both")
        spec = dict(rule) if rule is not None else dict(fields)
        ids = self._request("fault_add", rules=[spec])["ids"]
        return Rule(self, ids[0], spec)

    def rules(self) -> list[dict[str, Any]]:
        """The rules in force, each with `id`, `matched` and `hits`."""
        return self._request("fault_list")["rules"]

    def holds(self) -> list[Hold]:
        """The requests held now by `hold` rules."""
        return [Hold(h) for h in self._request("holds")["holds"]]

    def wait_holds(self, n: int, timeout: float = 10.0) -> list[Hold]:
        """Waits until at least `n` requests are held, up to `timeout` seconds; returns them,
        oldest first. Raises RawfsError if fewer are held by then."""
        held = self._request(
            "holds", timeout=_TIMEOUT + timeout, wait_for=n, timeout_ms=int(timeout * 1000)
        )["holds"]
        if len(held) < n:
            raise RawfsError(
                f"{len(held)} of {n} requests held after {timeout:g} s: "
                + (", ".join(repr(Hold(h)) for h in held) or "none")
            )
        return sorted((Hold(h) for h in held), key=lambda h: h.hold)

    def release(
        self, hold: int | Hold | None = None, *, rule: int | Rule | None = None
    ) -> list[int]:
        """Lets held requests go on: one (`hold`, an id or a Hold), every request of a rule
        (`rule=`), or, with neither, every held request. Returns the hold ids released."""
        if hold is not None and rule is not None:
            raise TypeError("release() takes a hold or a rule, not both")
        if isinstance(hold, Hold):
            hold = hold.hold
        if isinstance(rule, Rule):
            rule = rule.id
        if hold is not None:
            answer = self._request("release", hold=hold)
        elif rule is not None:
            answer = self._request("release", rule=rule)
        else:
            answer = self._request("release", all=True)
        return answer["released"]

    # --- checks ---------------------------------------------------------------------------

    def check(
        self, only: Iterable[str] | None = None, ignore: Iterable[str] | None = None
    ) -> list[Finding]:
        """The findings of `rawfs check` on the requests answered so far (docs/trace.md):
        only the checks named in `only`, none of those in `ignore`."""
        if isinstance(only, str):
            only = [only]
        if isinstance(ignore, str):
            ignore = [ignore]
        answer = self._request(
            "check",
            only=list(only) if only is not None else None,
            ignore=list(ignore) if ignore is not None else None,
        )
        return [Finding(f) for f in answer["findings"]]

    # --- power loss (docs/crash.md) ---------------------------------------------------------

    def crash(
        self,
        *,
        keep: str = "none",
        seed: int = 0,
        torn: int | None = None,
        kill: bool = False,
        to: str | os.PathLike | None = None,
    ) -> Losses:
        """Cuts the power: the tree becomes what a disk would hold under the mount's model,
        files opened before fail with EIO, and the mount goes on serving. `keep="random"`
        keeps each unsynced change by a draw from `seed`; `torn=BYTES` lets a lost write
        survive as a prefix ending on a multiple of BYTES; `kill=True` SIGKILLs every process
        with a file open on the mount first. With `to=DIR`, nothing is cut: the tree the crash
        would leave is written into DIR (missing or empty). Returns what was lost."""
        answer = self._request(
            "crash",
            timeout=_TIMEOUT + 30,
            keep=keep,
            seed=seed,
            torn=torn,
            kill=kill,
            to=os.path.abspath(to) if to is not None else None,
        )
        return Losses(answer["lost"], answer["model"])

    def unsynced(self) -> Losses:
        """What a crash now would lose; empty (false) once everything is durable."""
        answer = self._request("unsynced")
        return Losses(answer["unsynced"], answer["model"])


def format_text(events: Iterable[Event], rawfs: str | None = None) -> str:
    """Events as `rawfs trace` prints them. The rawfs binary formats them (from their JSON,
    through `rawfs trace --file`), so the text is exactly the command's."""
    jsonl = "".join(json.dumps(e.raw, separators=(",", ":")) + "\n" for e in events)
    if not jsonl:
        return ""
    proc = _run([rawfs or binary(), "trace", "--file", "/dev/stdin"], input=jsonl)
    if proc.returncode != 0:
        raise RawfsError(_message(proc))
    return proc.stdout


def mount(
    *,
    cache: bool = False,
    size: int | str | None = None,
    faults: RuleSpec | Iterable[RuleSpec] = (),
    model: str | None = None,
    trace_capacity: int | None = None,
) -> Mount:
    """Mounts rawfs on a fresh temporary directory; use it as a context manager
    (`with rawfs.mount() as m:`), which unmounts and removes the directory on exit, also
    when the body raises.

    `cache`: let the kernel cache (`--cache`); `size`: most bytes of file data (`--size`,
    an int or "1M"); `faults`: a rule or rules in force from the first request;
    `model`: the durability model (`--model`); `trace_capacity`: events kept
    (`--trace-capacity`, 0 turns recording off). Raises RawfsError if it cannot mount.
    """
    return Mount(cache=cache, size=size, faults=faults, model=model, trace_capacity=trace_capacity)
