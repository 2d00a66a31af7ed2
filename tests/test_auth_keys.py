"""The key ring with damaged key files: an unusable key is skipped and reported, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from portway.auth.keys import KeyFolderError, KeyRing
from support.smallfs import SmallDisk

A_KID = "A" * 43  # a well-formed kid naming no real key


def test_half_written_key_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing(tmp_path / "keys")
    good = ring.current.kid
    (ring.directory / f"{A_KID}.pem").write_bytes(b"")  # what a full disk used to leave
    (ring.directory / "current").write_text(A_KID + "\n")
    caplog.set_level(logging.ERROR, "portway.auth")
    again = KeyRing(ring.directory)
    assert again.current.kid == good
    assert again.kids() == [good]
    assert [r for r in caplog.records if A_KID in r.getMessage()]
    caplog.clear()
    again.load()
    assert not [r for r in caplog.records if A_KID in r.getMessage()]  # reported once


def test_only_a_broken_key_gets_a_new_one(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / f"{A_KID}.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\ncut")
    ring = KeyRing(folder)
    kid = ring.current.kid
    assert kid != A_KID
    assert (folder / "current").read_text().strip() == kid
    assert KeyRing(folder).current.kid == kid


def test_no_temporary_files_left(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    assert ring.current.kid != ring.rotate()
    names = sorted(p.name for p in ring.directory.iterdir())
    assert len(names) == 3 and "current" in names
    assert not [n for n in names if n.startswith(".")]


def test_failed_rotation_leaves_the_ring_as_it_was(tmp_path: Path) -> None:
    """On a real full file system (a tmpfs of a few pages, filled)."""
    folder = tmp_path / "keys"
    disk = SmallDisk(folder, "32k")
    disk.mount()
    try:
        ring = KeyRing(folder)
        kid = ring.current.kid
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        disk.fill()
        with pytest.raises(KeyFolderError, match="No space left"):
            ring.rotate()
        assert ring.current.kid == kid and ring.kids() == [kid]
        after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "filler"}
        assert after == before
        disk.free()
        assert ring.rotate() != kid  # with space again, a rotation works
    finally:
        disk.unmount()
