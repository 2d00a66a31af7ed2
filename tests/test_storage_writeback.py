"""Early writeback: every batch written to an upload starts its way to disk at once
(sync_file_range), so the fsync that publishes the blob has little left to do."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

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


def test_writer_keeps_every_byte_in_order(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"")
    chunks = [os.urandom(n) for n in (1, 4096, 1 << 20, 3, 5 << 20)]
    writer = FileWriter(path, append=True)
    try:
        writer.writev_sync(chunks[:2])
        writer.writev_sync(chunks[2:])
        assert writer.size == sum(len(c) for c in chunks)
    finally:
        os.close(writer.fileno())
    assert path.read_bytes() == b"".join(chunks)
