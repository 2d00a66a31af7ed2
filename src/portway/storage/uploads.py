"""Upload sessions: the protocol BlobStore delegates to, one implementation per kind of
backend (ADR 20).

- `FileUploads` (fs_uploads.py): the filesystem's own, one appending file per session,
  flocked while a request writes it, renamed into the blob tree at the closing PUT.
- `PartUploads` (part_uploads.py): any backend with resumable multipart writes (S3): the
  session's state (size, multipart upload id and parts, the tail below the part minimum
  stored as an object) is in the metadata store and the bucket, never in one process.

Either way a node keeps the running sha256 of the sessions it served; a node that did not
see every byte (another node appended, or it restarted) hashes the stored bytes again at the
closing PUT. A blob is visible at its content address only after its digest verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from portway.oci.digest import Digest

HASH_CACHE_LIMIT = 4096  # sessions whose running hash a node keeps


class UploadSessions(Protocol):
    async def new_upload(self) -> str: ...
    async def upload_size(self, upload_id: str) -> int | None: ...
    async def upload_mtime(self, upload_id: str) -> float | None: ...
    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_length: int | None = None,
        expected_offset: int | None = None,
    ) -> int: ...
    async def commit(self, upload_id: str, digest: Digest, size: int | None = None) -> int: ...
    async def abort(self, upload_id: str) -> None: ...
    async def ingest(
        self, chunks: AsyncIterator[bytes], digest: Digest, expected_length: int | None = None
    ) -> int: ...
    async def purge_pending(self, max_age: float) -> int:
        """Remove writes a killed node left unfinished; returns how many went."""
        ...


class RunningHashes:
    """upload id -> (offset the hash covers, running sha256), for the sessions this node
    served. sha512 uploads are rare: they are hashed from the stored bytes at the end instead
    of doubling every upload's CPU cost."""

    def __init__(self, limit: int = HASH_CACHE_LIMIT) -> None:
        self._hashes: dict[str, tuple[int, Any]] = {}
        self._limit = limit

    def start(self, upload_id: str) -> None:
        self._hashes[upload_id] = (0, hashlib.sha256())
        while len(self._hashes) > self._limit:
            self._hashes.pop(next(iter(self._hashes)))

    def at(self, upload_id: str, offset: int) -> Any | None:
        """The hasher covering exactly the first `offset` bytes, or None. Nothing needs to be
        seen to cover none: a session opened by another worker is hashed from its first byte."""
        cached = self._hashes.get(upload_id)
        if cached is None and offset == 0:
            return hashlib.sha256()
        return cached[1] if cached is not None and cached[0] == offset else None

    def advance(self, upload_id: str, offset: int, hasher: Any | None) -> None:
        if hasher is None:
            self._hashes.pop(upload_id, None)
        else:
            self._hashes[upload_id] = (offset, hasher)

    def take(self, upload_id: str, offset: int, digest: Digest) -> str | None:
        """The hex digest of the first `offset` bytes when this node saw them all (sha256),
        else None: the caller hashes the stored bytes. Forgets the session either way."""
        cached = self._hashes.pop(upload_id, None)
        if cached is None or cached[0] != offset or digest.algorithm != "sha256":
            return None
        return str(cached[1].hexdigest())

    def forget(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
