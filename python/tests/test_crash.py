"""Power loss from Python: Mount.unsynced() and Mount.crash() on real mounts, under both
persistence models."""

from __future__ import annotations

import errno
import os

import pytest

import rawfs


def fsync_dir(path: os.PathLike | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_names_what_a_crash_would_lose_until_file_and_directory_are_fsynced(mounted):
    with open(mounted / "data", "wb") as f:
        f.write(b"x" * 5000)
        assert mounted.unsynced().paths() == {"/data"}
        f.flush()
        os.fsync(f.fileno())
    # The data is durable, the name is not: the directory was never fsynced.
    lost = mounted.unsynced()
    assert lost and [n["path"] for n in lost.names] == ["/data"] and not lost.files
    fsync_dir(mounted.path)
    assert not mounted.unsynced(), str(mounted.unsynced())


def test_a_crash_loses_what_was_never_made_durable_and_old_descriptors_fail_with_eio(mounted):
    (mounted / "kept").write_bytes(b"durable")
    fd = os.open(mounted / "kept", os.O_RDONLY)
    os.fsync(fd)
    fsync_dir(mounted.path)
    (mounted / "kept").write_bytes(b"rewritten, never synced")
    (mounted / "new").write_text("never synced")

    lost = mounted.crash()
    assert lost.paths() == {"/kept", "/new"}
    assert "/kept: 23 bytes lost at 0..23, size 23 -> 7" in str(lost)
    assert (mounted / "kept").read_bytes() == b"durable"
    assert not (mounted / "new").exists()
    with pytest.raises(OSError) as e:
        os.read(fd, 10)
    assert e.value.errno == errno.EIO
    # Closing it closes it, and reports EIO too: the flush before the close fails.
    with pytest.raises(OSError):
        os.close(fd)
    (crash,) = mounted.events(op="crash")
    assert "lost /kept" in crash.raw["fault"]


@pytest.mark.parametrize(("model", "after"), [("strict", b""), ("ext4-ordered", b"new content")])
def test_rename_made_durable_before_the_data_leaves_an_empty_file_under_strict_only(
    fuse, model, after
):
    with rawfs.mount(model=model) as m:
        (m / "f").write_bytes(b"old")
        fd = os.open(m / "f", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        (m / "f.tmp").write_bytes(b"new content")
        os.rename(m / "f.tmp", m / "f")
        fsync_dir(m.path)
        m.crash()
        assert (m / "f").read_bytes() == after


def test_random_crashes_repeat_by_seed_and_images_go_to_a_directory(fuse, tmp_path):
    runs = iter(range(100))

    def run(seed: int) -> dict[str, bytes]:
        image_dir = tmp_path / f"image-{next(runs)}"
        with rawfs.mount() as m:
            for i in range(30):
                (m / f"f{i}").write_bytes(b"x" * (10 + i))
            m.crash(keep="random", seed=seed, to=image_dir)
            m.crash(keep="random", seed=seed)
            tree = {p.name: p.read_bytes() for p in m.path.iterdir()}
        image = {p.name: p.read_bytes() for p in image_dir.iterdir()}
        assert image == tree
        return tree

    first = run(3)
    assert run(3) == first
    assert 0 < len(first) < 30


def test_bad_crash_options_raise_the_daemons_message(mounted):
    with pytest.raises(rawfs.RawfsError, match='keep must be "none" or "random", not "some"'):
        mounted.crash(keep="some")
    with pytest.raises(rawfs.RawfsError, match="torn must be at least 1 byte"):
        mounted.crash(torn=0)
