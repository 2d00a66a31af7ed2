"""BlobBackend: bytes by key. Knows nothing of digests, manifests or repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class BackendWriter(Protocol):
    """An open object being written; `write` may be called many times, then `close`."""

    @property
    def size(self) -> int: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self, *, sync: bool = True) -> None: ...


class BlobBackend(Protocol):
    async def stat(self, key: str) -> ObjectInfo | None: ...
    def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]: ...
    def local_path(self, key: str) -> Path | None: ...
    async def writer(self, key: str, append: bool = False) -> BackendWriter: ...
    async def move(self, src: str, dst: str) -> None: ...
    async def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...
