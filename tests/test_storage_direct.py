"""Upload sessions write whole blocks around the page cache (O_DIRECT, ADR 33): every byte
lands in order at any offset, the direct descriptor only ever writes aligned blocks, and a
filesystem that refuses direct writes (at open, or later on) gets the bytes through
the page cache instead. A full ext4 filesystem refuses a direct append as it refuses any."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.storage import direct
from portway.storage.direct import ALIGN
from portway.storage.faults import is_full
from portway.storage.filesystem import FileWriter

O_DIRECT = os.O_DIRECT


def _flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no flags in fdinfo of {fd}")


def _close(writer: FileWriter) -> None:
    asyncio.run(writer.close(sync=False))


def _record_pwrite(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(fd, length, offset) of each direct write, which still reaches the kernel."""
    calls: list[tuple[int, int, int]] = []
    real = os.pwrite

    def recording(fd: int, data: memoryview, offset: int) -> int:
        calls.append((fd, len(data), offset))
        return real(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", recording)
    return calls


def test_an_appending_writer_holds_a_real_direct_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"")
    writer = FileWriter(path, append=True)
    try:
        appender = writer._direct
        assert appender is not None, f"{tmp_path} refused O_DIRECT: tests need ext4 or xfs"
        assert _flags(appender._fd) & O_DIRECT
        assert not _flags(writer.fileno()) & O_DIRECT  # heads and tails: the page cache
    finally:
        _close(writer)
    assert FileWriter(tmp_path / "new", append=False)._direct is None  # not an upload


def test_appends_at_any_offset_keep_every_byte_and_write_only_whole_blocks_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_pwrite(monkeypatch)
    path = tmp_path / "upload"
    path.write_bytes(b"x" * 100)  # a session that starts off a block boundary
    expected = bytearray(b"x" * 100)
    rnd = random.Random(7)
    sizes = (1, 100, ALIGN - 1, ALIGN, 70_000, 1 << 20, (1 << 20) + 3, 3 << 20)
    for _ in range(12):  # one request per round, as each PATCH opens the session again
        writer = FileWriter(path, append=True)
        try:
            for _ in range(rnd.randint(1, 3)):  # a few batches per request
                chunks = [os.urandom(rnd.choice(sizes)) for _ in range(rnd.randint(1, 4))]
                writer.writev_sync(chunks)
                for chunk in chunks:
                    expected += chunk
                assert writer.size == len(expected)
        finally:
            _close(writer)
    assert path.read_bytes() == bytes(expected)
    assert calls, "no direct write was made"
    assert all(length % ALIGN == 0 and offset % ALIGN == 0 for _, length, offset in calls)
    direct_bytes = sum(length for _, length, _ in calls)
    assert direct_bytes > 0.9 * len(expected), (direct_bytes, len(expected))


def test_small_appends_stay_in_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_pwrite(monkeypatch)
    path = tmp_path / "upload"
    path.write_bytes(b"")
    writer = FileWriter(path, append=True)
    try:
        writer.writev_sync([os.urandom(direct.MIN_DIRECT - 1)])
    finally:
        _close(writer)
    assert calls == []
    assert path.stat().st_size == direct.MIN_DIRECT - 1


def test_a_refused_direct_write_goes_through_the_page_cache_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake: a filesystem that opens O_DIRECT but refuses the write cannot be had on demand.
    refused: list[int] = []

    def refusing(fd: int, data: memoryview, offset: int) -> int:
        refused.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(direct.os, "pwrite", refusing)
    path = tmp_path / "upload"
    path.write_bytes(b"")
    chunks = [os.urandom(n) for n in (3 << 20, 5, 2 << 20)]
    writer = FileWriter(path, append=True)
    try:
        writer.writev_sync(chunks[:1])
        appender = writer._direct
        assert appender is not None and not appender.active
        writer.writev_sync(chunks[1:])
    finally:
        _close(writer)
    assert refused == [0]  # asked once, then never again
    assert path.read_bytes() == b"".join(chunks)


def test_where_the_filesystem_refuses_o_direct_the_writer_still_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake: older tmpfs and some network filesystems refuse O_DIRECT at open; this kernel's
    # filesystems here all take it.
    real = os.open

    def refusing(path: str, flags: int, *args: int) -> int:
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    monkeypatch.setattr(direct.os, "open", refusing)
    path = tmp_path / "upload"
    path.write_bytes(b"")
    data = os.urandom(3 << 20)
    writer = FileWriter(path, append=True)
    try:
        assert writer._direct is None
        writer.writev_sync([data])
    finally:
        _close(writer)
    assert path.read_bytes() == data


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB ext4 filesystem on a loop device, to fill up."""
    image, folder = tmp_path / "ext4.img", tmp_path / "ext4"
    folder.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_filesystem_refuses_a_direct_append_and_the_session_is_cut_back(
    small_ext4: Path,
) -> None:
    path = small_ext4 / "upload"
    start = os.urandom(1 << 20)
    path.write_bytes(start)
    writer = FileWriter(path, append=True)
    try:
        assert writer._direct is not None
        with pytest.raises(OSError) as refused:
            writer.writev_sync([os.urandom(1 << 20) for _ in range(32)])  # twice the disk
        assert is_full(refused.value), refused.value
        writer.truncate_sync(len(start))  # what an append does when its body fails
        writer.writev_sync([b"more"])  # room again: the session goes on
    finally:
        _close(writer)
    assert path.read_bytes() == start + b"more"


def test_a_failed_fsync_still_closes_the_session_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that fails a sync cannot be had on demand: os.fsync is made to fail.
    path = tmp_path / "session"
    path.write_bytes(b"")
    writer = FileWriter(path, append=True)
    fd = writer.fileno()

    def failing(_fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        asyncio.run(writer.close(sync=True))
    with pytest.raises(OSError) as gone:
        os.fstat(fd)
    assert gone.value.errno == errno.EBADF
