"""The Repository protocol: hosted, proxy and group repositories all answer it, so HTTP
handlers never branch on a repository's kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from portway.config import RepositoryConfig
from portway.db.store import ManifestRow as Manifest  # digest, media type, body
from portway.oci.digest import Digest
from portway.storage.body import BlobBody

__all__ = ["BlobBody", "Manifest", "Repository"]

if TYPE_CHECKING:
    from portway.repos.hosted import HostedRepository


class Repository(Protocol):
    name: str
    config: RepositoryConfig

    @property
    def kind(self) -> str: ...
    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest: ...
    async def stat_blob(self, image: str, digest: Digest) -> int: ...
    async def open_blob(self, image: str, digest: Digest) -> BlobBody: ...
    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]: ...
    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]: ...
    async def catalog(self, last: str | None, n: int | None) -> list[str]: ...
    async def has_blob(self, image: str, digest: Digest) -> bool: ...
    async def serves_blob(self, image: str, digest: Digest) -> bool:
        """Holds the blob, or knows its upstream has it (a manifest it served names it)."""
        ...

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None: ...
    def writable(self) -> HostedRepository: ...
