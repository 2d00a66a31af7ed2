"""Temporary `/etc/hosts` entries for host-mapping tests (the tests run as root).

    with etc_hosts("project.example.com", "project-push.example.com"):
        ...  # docker, podman, skopeo and curl resolve both names to 127.0.0.1

On entry the file's exact bytes are kept and `127.0.0.1 NAME` lines are appended, each tagged
with a comment naming this block alone (`# portway-test <pid>-<n>-<random>`); on exit the saved
bytes are written back. If someone else changed the file in the meantime, only this block's
lines are taken out, so their change survives, including an identical-looking line for the same
name from another test run on the machine (its tag differs). An exclusive `flock` on a lock
file serialises editors in concurrent test processes; entering twice in one thread nests (the
inner block adds only names the outer one did not).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

HOSTS = Path("/etc/hosts")
LOCK = Path("/tmp/portway-tests-etc-hosts.lock")
TAG = "# portway-test"
_blocks = itertools.count(1)
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_local = threading.local()


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(path: Path, data: bytes) -> None:
    """Rewrite in place (keeps the inode, owner and mode; /etc/hosts may be a bind mount)."""
    with open(path, "r+b") as fh:
        fh.seek(0)
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())


def resolves_locally(name: str, path: Path = HOSTS) -> bool:
    """Whether `path` maps `name` to 127.0.0.1."""
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "127.0.0.1" and name in fields[1:]:
            return True
    return False


@contextlib.contextmanager
def etc_hosts(*names: str, path: Path = HOSTS, lock: Path = LOCK) -> Iterator[list[str]]:
    """Map each name to 127.0.0.1 for the duration of the block; yields the names added."""
    for name in names:
        if not _NAME_RE.match(name):
            raise ValueError(f"not a host name: {name!r}")
    active: set[str] = getattr(_local, "active", set())
    wanted = [n for n in dict.fromkeys(names) if n not in active]
    if not wanted:
        yield []
        return
    tag = f"{TAG} {os.getpid()}-{next(_blocks)}-{secrets.token_hex(4)}"
    lines = [f"127.0.0.1 {name} {tag}\n" for name in wanted]
    with _locked(lock):
        original = path.read_bytes()
        separator = b"" if not original or original.endswith(b"\n") else b"\n"
        edited = original + separator + "".join(lines).encode()
        _write(path, edited)
    _local.active = active | set(wanted)
    try:
        yield wanted
    finally:
        _local.active = active
        with _locked(lock):
            current = path.read_bytes()
            if current == edited:
                _write(path, original)
            else:
                # Another editor changed the file meanwhile: take out only this block's lines
                # (their tag is unique, so another run's line for the same name stays).
                ours = {line.rstrip("\n").encode() for line in lines}
                kept = [
                    ln for ln in current.splitlines(keepends=True) if ln.rstrip(b"\r\n") not in ours
                ]
                _write(path, b"".join(kept))
