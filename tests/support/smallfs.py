"""A small tmpfs mounted for a test (tests run as root), and filling it up for real."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MiB = 1024 * 1024


@contextmanager
def small_fs(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `path` (created); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        # Lazy: a process still holding a file there (a server being stopped) cannot keep
        # the mount alive past the test.
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def resize(path: Path, size_mib: int) -> None:
    """Grow (or shrink) the tmpfs mounted at `path`, live."""
    subprocess.run(["mount", "-o", f"remount,size={size_mib}m", str(path)], check=True)


def fill(path: Path, name: str = "filler") -> Path:
    """Write a file under `path` until the file system has no byte left; returns the file."""
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MiB, 4096, 1):
            block = b"\xa5" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
