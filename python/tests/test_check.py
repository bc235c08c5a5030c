"""Mount.check(): the findings of `rawfs check` over a live mount's requests, for the
risky version of a pattern and not for its correct version."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

import rawfs

RACE_CHECKS = ["check-then-create", "lost-race"]


def create_pidfile_after_checking(path):
    """The check-then-create routine: another process can create the name in between."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")


def create_pidfile_exclusively(path):
    with open(path, "x") as f:
        f.write(f"{os.getpid()}\n")


def test_a_check_then_create_pidfile_is_found_with_the_requests_that_show_it(mounted):
    create_pidfile_after_checking(mounted / "app.pid")
    (finding,) = mounted.check(only=RACE_CHECKS)
    assert isinstance(finding, rawfs.Finding)
    assert finding.check == "check-then-create"
    assert finding.severity == "warning"
    assert "/app.pid" in finding.message
    lookups = mounted.events(op="lookup", path="/app.pid", failed=True, pid=os.getpid())
    (create,) = mounted.events(op="create", path="/app.pid")
    assert create.seq in finding.seqs
    assert any(e.seq in finding.seqs for e in lookups)
    assert str(finding).startswith("warning[check-then-create] #")


def test_a_competitor_rule_makes_the_race_happen_and_check_finds_it(mounted):
    mounted.fault(
        match={"ops": ["create"], "path": "/app.pid"},
        action={"competitor": {"content": "999\n"}},
    )
    create_pidfile_after_checking(mounted / "app.pid")
    # The competitor's file appeared just before the create, which truncated and took it.
    (create,) = mounted.events(op="create", path="/app.pid")
    assert create.raw["fault"] == "competitor"
    assert (mounted / "app.pid").read_text() == f"{os.getpid()}\n"
    (finding,) = mounted.check(only=RACE_CHECKS)
    assert finding.check == "check-then-create"
    assert create.seq in finding.seqs


def test_a_race_lost_to_another_process_is_found_as_lost_race(mounted):
    # The test pauses the routine between its check and its create (a held create would not
    # do: the kernel keeps the directory locked while a create is answered, so the other
    # process could not create the name until it was released).
    checked, go = threading.Event(), threading.Event()

    def racer():
        path = mounted / "app.pid"
        if not os.path.exists(path):
            checked.set()
            go.wait(10)
            with open(path, "w") as f:
                f.write(f"{os.getpid()}\n")

    t = threading.Thread(target=racer)
    t.start()
    try:
        assert checked.wait(10)
        other = subprocess.Popen(["sh", "-c", "echo 999 > app.pid"], cwd=mounted.path)
        assert other.wait(10) == 0
    finally:
        go.set()
        t.join(10)
    assert (mounted / "app.pid").read_text() == f"{os.getpid()}\n"
    found = {f.check: f for f in mounted.check(only=RACE_CHECKS)}
    assert set(found) == {"check-then-create", "lost-race"}
    (theirs,) = mounted.events(op="create", path="/app.pid", pid=other.pid)
    assert theirs.seq in found["lost-race"].seqs


def test_the_exclusive_pidfile_gets_no_race_finding(mounted):
    create_pidfile_exclusively(mounted / "app.pid")
    assert mounted.check(only=RACE_CHECKS) == []
    (info,) = mounted.check(only=["exclusive-create"])
    assert info.severity == "info"
    assert mounted.check(only=["exclusive-create"], ignore=["exclusive-create"]) == []


def test_a_short_read_not_retried_is_found_in_the_reader_that_did_not_retry(mounted):
    (mounted / "record").write_bytes(b"0123456789")
    mounted.fault(match={"ops": ["read"], "path": "/record"}, action={"short": 4})
    dd = subprocess.Popen(
        ["dd", f"if={mounted / 'record'}", "bs=10", "count=1", "status=none"],
        stdout=subprocess.PIPE,
    )
    assert dd.communicate(timeout=30)[0] == b"0123"
    (finding,) = mounted.check(only="short-read-not-retried")
    (read,) = mounted.events(op="read", pid=dd.pid)
    assert read.seq in finding.seqs


def test_an_unknown_check_name_is_the_daemons_error(mounted):
    with pytest.raises(rawfs.RawfsError, match='unknown check "no-such-check"'):
        mounted.check(only=["no-such-check"])
    with pytest.raises(rawfs.RawfsError, match="valid: "):
        mounted.check(ignore=["lost-races"])
