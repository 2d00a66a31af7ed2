"""A small tmpfs mounted for a test (tests run as root), and filling it up for real."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MiB = 1024 * 1024


def mount_tmpfs(path: Path, size: str, *, mode: str | None = None) -> None:
    """Mount a tmpfs of `size` (mount's words: 64k, 1m) at `path` (created), its root folder
    with `mode` (tmpfs's own 1777 when None)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",mode={mode}" if mode is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


@contextmanager
def small_fs(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `path` (created); unmounted afterwards."""
    mount_tmpfs(path, f"{size_mib}m", mode="0755")
    try:
        yield path
    finally:
        # Lazy: a process still holding a file there (a server being stopped) cannot keep
        # the mount alive past the test.
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def resize(path: Path, size_mib: int) -> None:
    """Grow (or shrink) the tmpfs mounted at `path`, live."""
    subprocess.run(["mount", "-o", f"remount,size={size_mib}m", str(path)], check=True)


def shrink_to_used(path: Path, headroom_mib: int, attempts: int = 10) -> int:
    """Shrink the tmpfs at `path` to what it holds plus `headroom_mib` MiB while writers keep
    writing to it; returns the new size in MiB. tmpfs refuses a size below what is in use,
    so when the writers outgrew the figure before the remount, measure again and retry."""
    for _ in range(attempts):
        size = -(-used_bytes(path) // MiB) + headroom_mib
        done = subprocess.run(
            ["mount", "-o", f"remount,size={size}m", str(path)], capture_output=True, text=True
        )
        if done.returncode == 0:
            return size
    raise AssertionError(f"could not shrink {path}: {done.stderr.strip()}")


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


class SmallDisk:
    """A tmpfs of `size` on `path` that a test mounts, fills, frees and unmounts at the
    moments it chooses (a server started on it before the fault, stopped before unmount)."""

    def __init__(self, path: Path, size: str, *, mode: str | None = None) -> None:
        self.path = path
        self.size = size
        self.mode = mode
        self.filler = path / "filler"

    def mount(self) -> None:
        mount_tmpfs(self.path, self.size, mode=self.mode)

    def fill(self) -> None:
        """Take every free byte (checked: a new file cannot be written), with `filler`."""
        fill(self.path, self.filler.name)
        probe = self.path / "probe"
        try:
            probe.write_bytes(b"x" * 64)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        else:
            raise AssertionError(f"{self.path} still has room after filling it")
        finally:
            probe.unlink(missing_ok=True)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        """Unmount; lazily when a process still holds a file there."""
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
