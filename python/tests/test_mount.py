"""The rawfs package's API against real mounts: the trace, faults, held requests, checks,
and clean-up, with real system calls from this process, its threads and child processes."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import rawfs

PIDFILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def test_the_pidfile_is_created_with_o_excl_and_its_create_carries_the_flags(mounted):
    fd = os.open(mounted / "app.pid", PIDFILE_FLAGS, 0o644)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)

    (create,) = mounted.events(op="create", path="/app.pid")
    assert {"O_WRONLY", "O_CREAT", "O_EXCL"} <= create.flags
    assert create.pid == os.getpid()
    assert create.errno is None and not create.failed
    assert create.mode == 0o100644
    assert create.raw["op"] == "create"
    # A second start finds the pidfile: the kernel refuses O_EXCL after a lookup, and rawfs
    # sees that lookup succeed, never a second create.
    with pytest.raises(FileExistsError):
        os.open(mounted / "app.pid", PIDFILE_FLAGS, 0o644)
    assert len(mounted.events(op="create")) == 1
    assert mounted.events(op="lookup", path="/app.pid")[-1].errno is None


def test_a_create_without_o_excl_has_no_o_excl_in_its_flags(mounted):
    (mounted / "plain").write_text("x")
    (create,) = mounted.events(op="create", path="*plain")
    assert "O_CREAT" in create.flags and "O_EXCL" not in create.flags
    assert "O_TRUNC" in create.flags


def test_every_request_answered_before_the_call_is_included_without_waiting(mounted):
    # A child process does the I/O: once it has exited, every one of its requests has been
    # answered, and events() must show them all on the first call.
    script = "import sys\nfor i in range(200):\n    open(f'{sys.argv[1]}/f{i}', 'w').close()\n"
    child = subprocess.Popen([sys.executable, "-c", script, str(mounted.path)])
    assert child.wait(60) == 0
    creates = mounted.events(op="create", pid=child.pid)
    assert sorted(e.path for e in creates) == sorted(f"/f{i}" for i in range(200))
    # The same for this process's own last request.
    os.mkdir(mounted / "last")
    assert mounted.events()[-1].op == "mkdir"
    assert mounted.events()[-1].path == "/last"


def test_filters_select_by_op_path_glob_pid_comm_and_failure(mounted):
    os.mkdir(mounted / "logs")
    (mounted / "logs" / "a.log").write_text("a")
    (mounted / "logs" / "b.txt").write_text("b")
    assert not (mounted / "missing").exists()
    cat = subprocess.Popen(["cat", str(mounted / "logs" / "a.log")], stdout=subprocess.PIPE)
    assert cat.communicate(timeout=30)[0] == b"a"

    paths = {e.path for e in mounted.events(op="create", path="/logs/*.log")}
    assert paths == {"/logs/a.log"}
    assert {e.path for e in mounted.events(op="create,mkdir", path="/logs/**")} == {
        "/logs/a.log",
        "/logs/b.txt",
    }
    assert {e.op for e in mounted.events(op=["mkdir"])} == {"mkdir"}
    assert {e.path for e in mounted.events(op="create", path="*.{txt,pid}")} == {"/logs/b.txt"}
    failed = mounted.events(failed=True)
    assert [(e.op, e.path, e.errno) for e in failed if e.path == "/missing"] == [
        ("lookup", "/missing", "ENOENT")
    ]
    assert all(e.errno is None for e in mounted.events(failed=False))
    opens = mounted.events(comm="cat", op="open")
    assert [(e.path, e.pid) for e in opens] == [("/logs/a.log", cat.pid)]
    assert mounted.events(pid=cat.pid, op="open") == opens
    assert not mounted.events(pid=cat.pid, op="create")
    with pytest.raises(ValueError, match="whole path component"):
        mounted.events(path="/logs/a**")


def test_clear_forgets_what_was_answered_and_later_events_start_after_it(mounted):
    (mounted / "before").write_text("1")
    assert mounted.clear() > 0
    assert mounted.events(path="/before") == []
    (mounted / "after").write_text("2")
    paths = {e.path for e in mounted.events()}
    assert "/after" in paths and "/before" not in paths
    assert mounted.events()[0].seq > 1


def test_text_is_the_strace_like_trace_of_the_selected_events(mounted):
    fd = os.open(mounted / "app.pid", PIDFILE_FLAGS, 0o600)
    os.close(fd)
    text = mounted.text(op="create")
    (line,) = text.splitlines()
    assert line.startswith("#")
    assert f"[{os.getpid()} " in line
    assert 'create("/app.pid", O_WRONLY|O_CREAT|O_EXCL' in line
    assert ", 0600) = ino " in line
    assert len(mounted.text(last=3).splitlines()) == 3
    assert mounted.text(last=0) == ""
    assert rawfs.format_text(mounted.events(op="create")) == text


def test_a_reader_that_retries_after_a_one_byte_short_read_gets_everything(mounted):
    (mounted / "greeting").write_bytes(b"hello, world\n")
    with mounted.fault(match={"ops": ["read"], "path": "/greeting"}, action={"short": 1}) as rule:
        fd = os.open(mounted / "greeting", os.O_RDONLY)
        try:
            first = os.read(fd, 100)
            data = first
            while chunk := os.read(fd, 100):
                data += chunk
        finally:
            os.close(fd)
        assert first == b"h"
        assert data == b"hello, world\n"
        assert rule.hits == 14  # 13 one-byte reads and the read at the end of the file
        reads = mounted.events(op="read", path="/greeting")
        assert [(e.offset, e.size, e.returned) for e in reads[:2]] == [(0, 100, 1), (1, 100, 1)]
        assert all(e.rule == rule.id and e.raw["fault"] == "short 1" for e in reads)
        assert [e.short for e in reads] == [True] * 12 + [False, False]


def test_a_reader_that_takes_a_short_read_for_the_whole_file_loses_data(mounted):
    (mounted / "record").write_bytes(b"0123456789")
    mounted.fault(match={"ops": ["read"], "path": "/record"}, action={"short": 4})
    out = subprocess.run(
        ["dd", f"if={mounted / 'record'}", "bs=10", "count=1", "status=none"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert out.stdout == b"0123"
    (read,) = mounted.events(op="read", comm="dd")
    assert read.short and read.size == 10 and read.returned == 4 and read.file_size == 10


def test_the_rule_context_manager_removes_the_rule_and_remove_is_idempotent(mounted):
    (mounted / "f").write_text("data")
    with mounted.fault(
        {"match": {"ops": ["open"], "path": "/f"}, "action": {"errno": "EACCES"}}
    ) as rule:
        assert isinstance(rule, rawfs.Rule) and rule.id == 1
        assert [r["id"] for r in mounted.rules()] == [1]
        with pytest.raises(PermissionError):
            open(mounted / "f")
        assert rule.hits == 1 and rule.matched == 1
    assert mounted.rules() == []
    assert (mounted / "f").read_text() == "data"
    with pytest.raises(rawfs.RawfsError, match="rule 1 is no longer in force"):
        _ = rule.hits
    rule.remove()
    (failed,) = mounted.events(op="open", failed=True)
    assert failed.errno == "EACCES" and failed.rule == 1


def test_a_bad_rule_raises_rawfs_error_with_the_daemons_message(mounted):
    with pytest.raises(rawfs.RawfsError, match=r'unknown errno "EBOGUS" in action.errno'):
        mounted.fault(action={"errno": "EBOGUS"})
    with pytest.raises(rawfs.RawfsError, match="short"):
        mounted.fault(match={"ops": ["open"]}, action={"short": 1})
    with pytest.raises(rawfs.RawfsError, match="no rule with id"):
        mounted._request("fault_remove", ids=[42])
    # A refused rule uses no id.
    assert mounted.fault(action={"delay": {"ms": 1}}, when={"nth": 1000}).id == 1
    with pytest.raises(TypeError):
        mounted.fault({"action": "hold"}, action="hold")


def test_held_writes_of_two_threads_complete_in_the_order_the_test_releases_them(mounted):
    mounted.fault(match={"ops": ["write"], "path": "/{a,b}"}, action="hold")
    finished: list[str] = []
    done = {name: threading.Event() for name in "ab"}

    def write(name: str) -> None:
        with open(mounted / name, "wb", buffering=0) as f:
            f.write(name.encode())
        finished.append(name)
        done[name].set()

    threads = [threading.Thread(target=write, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    try:
        held = mounted.wait_holds(2, timeout=10)
        assert sorted(h.path for h in held) == ["/a", "/b"]
        assert all(h.op == "write" and h.pid == os.getpid() for h in held)
        assert finished == []
        by_path = {h.path: h for h in held}
        # b first, although a may have arrived first.
        assert mounted.release(by_path["/b"]) == [by_path["/b"].hold]
        assert done["b"].wait(10)
        assert finished == ["b"]
        assert [h.path for h in mounted.holds()] == ["/a"]
        mounted.release(by_path["/a"].hold)
        assert done["a"].wait(10)
    finally:
        mounted.release()
        for t in threads:
            t.join(10)
    assert finished == ["b", "a"]
    assert (mounted / "a").read_bytes() == b"a" and (mounted / "b").read_bytes() == b"b"
    writes = {e.path: e for e in mounted.events(op="write", path="/{a,b}")}
    assert all(e.raw["fault"].startswith("held ") for e in writes.values())


def test_wait_holds_raises_when_fewer_requests_are_held_in_time(mounted):
    with pytest.raises(rawfs.RawfsError, match=r"0 of 1 requests held after 0\.2 s: none"):
        mounted.wait_holds(1, timeout=0.2)
    assert mounted.release() == []


def test_a_release_of_a_request_not_held_raises(mounted):
    with pytest.raises(rawfs.RawfsError, match="no request is held with hold id 7"):
        mounted.release(7)


def test_status_reports_the_daemon_and_its_tree(mounted):
    (mounted / "f").write_bytes(b"x" * 5000)
    status = mounted.status()
    assert status["mountpoint"] == str(mounted.path)
    assert status["inodes"] == 2
    assert status["bytes_used"] == 8192
    assert status["requests"] >= len(mounted.events())
    assert "ok" not in status and "v" not in status


def test_mount_options_reach_the_daemon(fuse):
    with rawfs.mount(size="1M", trace_capacity=10) as m:
        st = os.statvfs(m.path)
        assert st.f_blocks * st.f_frsize == 1 << 20
        with pytest.raises(OSError, match="No space left"):
            (m / "big").write_bytes(b"\0" * (2 << 20))
        for i in range(20):
            (m / f"f{i}").touch()
        assert len(m.events()) == 10
    with rawfs.mount(trace_capacity=0) as m:
        with pytest.raises(rawfs.RawfsError, match="recording is off"):
            m.events()
    rules = [{"match": {"ops": ["create"], "path": "/app.pid"}, "action": {"errno": "EROFS"}}]
    with rawfs.mount(faults=rules, cache=True) as m:
        with pytest.raises(OSError, match="Read-only file system"):
            (m / "app.pid").write_text("1")
        assert m.rules()[0]["hits"] == 1


def test_a_refused_mount_raises_the_commands_message_and_leaves_no_directory(fuse):
    before = set(Path(tempfile.gettempdir()).glob("rawfs-py-*"))
    with pytest.raises(rawfs.RawfsError, match="size"):
        rawfs.mount(size="lots")
    with pytest.raises(rawfs.RawfsError, match="EBOGUS"):
        rawfs.mount(faults={"action": {"errno": "EBOGUS"}})
    after = set(Path(tempfile.gettempdir()).glob("rawfs-py-*"))
    assert after <= before


def test_the_mount_is_gone_after_the_with_block_even_when_the_body_raises(fuse):
    with pytest.raises(RuntimeError, match="boom"), rawfs.mount() as m:
        path = m.path
        (m / "f").write_text("x")
        raise RuntimeError("boom")
    assert not path.exists()
    assert str(path) not in Path("/proc/mounts").read_text()
    with pytest.raises(rawfs.RawfsError, match="not mounted any more"):
        m.events()


def test_a_mount_still_in_use_is_detached_lazily_on_exit(fuse):
    with rawfs.mount() as m:
        path = m.path
        f = open(m / "busy", "w")
    try:
        assert str(path) not in Path("/proc/mounts").read_text()
        assert not path.exists()
    finally:
        f.close()


def test_the_package_needs_only_the_standard_library_and_imports_no_pytest():
    assert not importlib.metadata.requires("rawfs")
    probe = "import sys, rawfs; print(sorted(m for m in sys.modules if 'pytest' in m))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_package_runs_its_bundled_binary_unless_rawfs_names_another(monkeypatch):
    monkeypatch.delenv("RAWFS", raising=False)
    bundled = rawfs.binary()
    assert Path(bundled).parent == Path(sys.executable).parent, bundled
    out = subprocess.run([bundled, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("rawfs ")
    monkeypatch.setenv("RAWFS", "/nonexistent/rawfs")
    with pytest.raises(rawfs.RawfsError, match="RAWFS=/nonexistent/rawfs"):
        rawfs.binary()


def test_the_model_reaches_the_daemon_and_an_unknown_one_is_its_error(fuse):
    with rawfs.mount(model="ext4-ordered") as m:
        assert m._request("unsynced")["model"] == "ext4-ordered"
    with rawfs.mount() as m:
        assert m._request("unsynced")["model"] == "strict"
    with pytest.raises(rawfs.RawfsError, match='unknown persistence model "no-such-model"'):
        rawfs.mount(model="no-such-model")


def test_two_mounts_at_once_keep_their_own_trees_traces_and_rules(fuse):
    with rawfs.mount() as one, rawfs.mount() as two:
        assert one.path != two.path
        one.fault(match={"ops": ["create"]}, action={"errno": "EROFS"})
        with pytest.raises(OSError, match="Read-only file system"):
            (one / "f").write_text("1")
        (two / "f").write_text("2")
        assert [e.errno for e in one.events(op="create")] == ["EROFS"]
        assert [e.errno for e in two.events(op="create")] == [None]
        assert two.rules() == []
        assert not (one / "f").exists()
