"""The pytest plugin, run as a user's test suite would run it (pytester, in a subprocess with
the plugin loaded from its entry point): the fixture, the marker, the trace in a failed
test's report, and the skip where FUSE is unavailable that CI=true and --rawfs-require turn
into a failure."""

from __future__ import annotations

import pytest

PIDFILE_TEST = """
import os

def test_pidfile(rawfs_mount):
    fd = os.open(rawfs_mount / "app.pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    (create,) = rawfs_mount.events(op="create", path="/app.pid")
    assert "O_EXCL" in create.flags
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose runs see neither CI nor a RAWFS binary from the outside."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RAWFS_FUSE_DEVICE", raising=False)
    return pytester


def test_the_fixture_mounts_and_the_pidfile_test_passes(suite, fuse):
    suite.makepyfile(PIDFILE_TEST)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_marker_configures_the_mount_and_the_faults_are_in_force_from_the_start(suite, fuse):
    suite.makepyfile(
        """
        import os
        import pytest

        RULE = {"match": {"ops": ["read"], "path": "/data"}, "action": {"short": 1}}

        @pytest.mark.rawfs(size="1M", faults=[RULE], cache=False)
        def test_marked(rawfs_mount):
            st = os.statvfs(rawfs_mount.path)
            assert st.f_blocks * st.f_frsize == 1 << 20
            (rawfs_mount / "data").write_bytes(b"abc")
            fd = os.open(rawfs_mount / "data", os.O_RDONLY)
            assert os.read(fd, 10) == b"a"
            os.close(fd)
            assert rawfs_mount.rules()[0]["hits"] == 1

        def test_unmarked(rawfs_mount):
            st = os.statvfs(rawfs_mount.path)
            assert st.f_blocks * st.f_frsize != 1 << 20
            assert rawfs_mount.rules() == []

        @pytest.mark.rawfs("positional")
        def test_bad_marker(rawfs_mount):
            pass
        """
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.rawfs takes keyword arguments only*"])
    # The marker is registered: --strict-markers accepts it.
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--strict-markers", "-k", "test_unmarked"
    )
    result.assert_outcomes(passed=1)


def test_a_failed_test_shows_the_last_50_requests_of_its_mount(suite, fuse):
    suite.makepyfile(
        """
        import os

        def test_fails(rawfs_mount):
            for i in range(60):
                (rawfs_mount / f"file{i}").write_text("x")
            fd = os.open(rawfs_mount / "app.pid", os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            (create,) = rawfs_mount.events(op="create", path="/app.pid")
            assert "O_EXCL" in create.flags

        def test_passes(rawfs_mount):
            (rawfs_mount / "quiet").write_text("x")
        """
    )
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    section = out.split("rawfs trace of ", 1)[1]
    # The title, then the newest 50 requests of the failed test's mount, as text.
    title, _, rest = section.partition("\n")
    assert title.split()[1:] == ["(last", "50", "requests)", "-" * len(title.split()[-1])]
    lines = [ln for ln in rest.splitlines() if ln.startswith("#")]
    assert len(lines) == 50
    assert 'create("/app.pid", O_WRONLY|O_CREAT|O_LARGEFILE, 0644)' in section
    # The newest ones: oldest first, and the 60 files' earlier requests cut. (The last line
    # may be the pidfile's flush or its release, which the kernel sends after close returns.)
    seqs = [int(ln[1:].split()[0]) for ln in lines]
    assert seqs == sorted(seqs)
    assert seqs[0] > 60
    assert "/quiet" not in out
    # A passing test's report has no trace section.
    assert out.count("rawfs trace of ") == 1


def _run_without_fuse(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Runs the suite with the plugin looking for FUSE at a device that does not exist."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAWFS_FUSE_DEVICE", str(suite.path / "no-fuse-device"))
        return suite.runpytest_subprocess("-p", "no:cacheprovider", "-rsf", *args)


def test_without_fuse_the_fixture_skips_with_the_reason(suite):
    suite.makepyfile(PIDFILE_TEST)
    result = _run_without_fuse(suite)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*FUSE is unavailable: */no-fuse-device does not exist"])


def test_without_fuse_ci_true_fails_instead_of_skipping(suite, monkeypatch):
    suite.makepyfile(PIDFILE_TEST)
    monkeypatch.setenv("CI", "true")
    result = _run_without_fuse(suite)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*FUSE is unavailable (*/no-fuse-device does not exist), and CI=true forbids skipping*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_without_fuse_rawfs_require_fails_instead_of_skipping(suite):
    suite.makepyfile(PIDFILE_TEST)
    result = _run_without_fuse(suite, "--rawfs-require")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*and --rawfs-require forbids skipping*"])
