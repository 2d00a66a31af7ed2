"""BlobBackend: bytes by key. Knows nothing of digests, manifests or repositories.

The protocol is what both a local folder and an S3 bucket can do well:

- an object is written once, through an `ObjectWriter`, and appears at its key only when the
  writer commits (a crash or an abort leaves nothing visible); there is no append, so a
  chunked upload is one writer kept open, or parts the caller publishes by `copy`;
- `copy` is server-side (a rename-free link on disk, CopyObject on S3), so publishing an
  upload under its content address moves no bytes through the node;
- `presign_get` hands a time-limited URL a client may fetch directly (None where the backend
  cannot: the filesystem);
- a resumable multipart write (`begin_parts`, `put_part`, `complete_parts`) whose state is
  the token and the parts, which the caller keeps where every node sees it: any node goes on
  with it (S3 multipart uploads; every part but the last at least `part_minimum` bytes);
- `pending_writes`/`abort_pending` find and remove writes that never committed (a node that
  died mid-upload, a multipart write never completed), for the upload purge.

Missing objects raise `ObjectMissing`, a `FileNotFoundError`, from `read` and `copy`;
`stat` answers None and `delete` does nothing.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A write begun and never committed: `token` names it to `abort_pending`."""

    key: str | None  # the key it was meant for, where the backend records it
    token: str
    started: float  # Unix time


@dataclass(frozen=True, slots=True)
class Part:
    """One stored part of a multipart write."""

    number: int  # from 1
    etag: str
    size: int


# A part's bytes for `put_part`. A BytesIO the caller filled is sent as it is; bytes on S3
# are copied once more on the way (botocore wraps them in a BytesIO, and aiohttp copies
# a BytesIO that shares its buffer with a bytes object before sending it).
PartBody = bytes | io.BytesIO


def body_size(data: PartBody) -> int:
    if isinstance(data, bytes):
        return len(data)
    with data.getbuffer() as view:
        return view.nbytes


class ObjectMissing(FileNotFoundError):
    """No object at the key."""


class BackendWriter(Protocol):
    """The filesystem backend's appending writer (today's upload sessions use it)."""

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self, *, sync: bool = True) -> None: ...


class ObjectWriter(Protocol):
    """One new object being written. Nothing is visible at the key before `commit`."""

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    async def commit(self) -> ObjectInfo: ...
    async def abort(self) -> None: ...


class BlobBackend(Protocol):
    @property
    def part_minimum(self) -> int:
        """The smallest part a multipart write takes (all but its last part)."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None: ...
    def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]: ...
    def local_path(self, key: str) -> Path | None: ...
    async def create(self, key: str) -> ObjectWriter: ...
    async def copy(self, src: str, dst: str) -> None: ...
    async def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...
    async def presign_get(self, key: str, expires_in: float) -> str | None: ...
    async def begin_parts(self, key: str) -> str: ...
    async def put_part(self, key: str, token: str, number: int, data: PartBody) -> Part: ...
    async def complete_parts(self, key: str, token: str, parts: Sequence[Part]) -> ObjectInfo: ...
    async def pending_writes(self, older_than: float) -> Sequence[PendingWrite]: ...
    async def abort_pending(self, pending: PendingWrite) -> None: ...
