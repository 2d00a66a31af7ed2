"""Early writeback: every batch written to an upload starts its way to disk at once
(sync_file_range), so the fsync that publishes the blob has little left to do."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from portway.storage import filesystem
from portway.storage.filesystem import FileWriter


def test_the_system_call_is_bound_and_real(tmp_path: Path) -> None:
    start = filesystem._start_writeback
    assert start is not None, "sync_file_range not found in libc (Linux is required)"
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_WRONLY)
    try:
        assert start(fd, 0, 1 << 20) == 0
    finally:
        os.close(fd)
    # A closed descriptor reaches the kernel, which refuses it: the call is not a no-op.
    assert start(fd, 0, 1) == -1
    assert ctypes.get_errno() == errno.EBADF


def test_writer_starts_writeback_of_each_batch_and_keeps_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = filesystem._start_writeback
    assert real is not None
    started: list[tuple[int, int]] = []

    def recording(fd: int, offset: int, length: int) -> object:
        started.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(filesystem, "_start_writeback", recording)
    # Where whole blocks go around the page cache (O_DIRECT, test_storage_direct.py) there is
    # nothing to write back early; this is the writer of a filesystem that takes no direct
    # writes, as tmpfs.
    monkeypatch.setattr(filesystem.DirectAppender, "open", classmethod(lambda cls, path: None))
    path = tmp_path / "upload"
    path.write_bytes(b"head")  # an appending writer starts where the file ends
    chunks = [os.urandom(n) for n in (1, 4096, 1 << 20, 3, 5 << 20)]
    writer = FileWriter(path, append=True)
    try:
        writer.writev_sync(chunks[:2])
        writer.writev_sync(chunks[2:])
        writer.writev_sync([])  # nothing written, nothing to start
        assert writer.size == 4 + sum(len(c) for c in chunks)
    finally:
        os.close(writer.fileno())
    first = 1 + 4096
    assert started == [(4, first), (4 + first, writer.size - 4 - first)]
    assert path.read_bytes() == b"head" + b"".join(chunks)
