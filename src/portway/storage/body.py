"""BlobBody: what a repository hands the HTTP layer for a blob GET, never a path.

One of: bytes to stream (`stream`), an opaque local file the HTTP layer may send with
sendfile (`local`; only the filesystem backend makes one), a file still being written (a
proxy's cache fill, `growing`). Where the backend can sign URLs, `presign` makes a
time-limited one the client may fetch directly (the HTTP layer decides whether to redirect).
Where the backend can hand over the socket its GET answer arrives on (S3 over plain HTTP),
`raw` opens it and the HTTP layer splices the body to the client instead of streaming it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from portway.oci.digest import Digest

if TYPE_CHECKING:
    from portway.storage.s3raw import RawBody
    from portway.upstream.singleflight import SpoolReader


class LocalFile:
    """A blob's bytes in a file on this host: a capability for sendfile, not a path to use.

    Only the HTTP edge calls `sendfile_path` (aiohttp's file response opens it); `read_small`
    reads a small blob whole on the event loop (one read beats a thread-pool round trip)."""

    __slots__ = ("_path",)

    def __init__(self, path: Path) -> None:
        self._path = path

    def sendfile_path(self) -> Path:
        return self._path

    def read_small(self, limit: int) -> bytes:
        """Up to `limit + 1` bytes; FileNotFoundError when the file went away."""
        fd = os.open(self._path, os.O_RDONLY)  # no buffered file object: 8 us less
        try:
            return os.read(fd, limit + 1)
        finally:
            os.close(fd)


Presigner = Callable[[float], Awaitable[str | None]]
RawOpener = Callable[[], Awaitable["RawBody | None"]]


@dataclass(frozen=True, slots=True)
class BlobBody:
    digest: Digest
    size: int
    stream: AsyncIterator[bytes] | None = None
    local: LocalFile | None = None
    growing: SpoolReader | None = None
    presign: Presigner | None = None  # seconds of validity -> URL (None: cannot sign)
    raw: RawOpener | None = None  # the object's socket to splice from (S3 over plain HTTP)
