"""A repository that does not exist, answered like one the caller may not see.

With security on, a name that names no repository (`/repository/<name>/...`, the label of a
wildcard host, the first segment of a repository path) still routes, to a
`MissingRepository`. Handlers authorize before they touch a repository, so whoever could not
read a repository of that name gets exactly the refusal an existing one gives them (the login
challenge, or NAME_UNKNOWN with the same message); whoever could (an administrator, a role
whose pattern covers the name) learns that it does not exist. Nothing else is served from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from portway.config import REPO_NAME_RE, RepositoryConfig
from portway.http.context import AppContext
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.repos.base import BlobBody, Manifest, Repository

if TYPE_CHECKING:
    from portway.repos.hosted import HostedRepository


def concealable(name: str) -> bool:
    """Could `name` be a repository's name (so a refusal for it must not tell)?"""
    return REPO_NAME_RE.match(name) is not None


async def repository_named(ctx: AppContext, name: str) -> Repository:
    """The repository a route names; a `MissingRepository` when the route table routed a
    name that names none (it does so only when concealing)."""
    found = await ctx.repository(name)
    return found if found is not None else MissingRepository(name, f"no repository {name!r}")


class MissingRepository:
    """Every operation answers NAME_UNKNOWN with `message`; it is reached only once the
    caller was authorized for the name."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.config = RepositoryConfig(name=name, type="hosted", path_routing=True)
        self.message = message

    @property
    def kind(self) -> str:
        return "missing"

    def _unknown(self) -> NoReturn:
        raise RegistryError("NAME_UNKNOWN", self.message)

    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest:
        self._unknown()

    async def stat_blob(self, image: str, digest: Digest) -> int:
        self._unknown()

    async def open_blob(self, image: str, digest: Digest) -> BlobBody:
        self._unknown()

    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]:
        self._unknown()

    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        self._unknown()

    async def catalog(self, last: str | None, n: int | None) -> list[str]:
        self._unknown()

    async def has_blob(self, image: str, digest: Digest) -> bool:
        return False

    async def serves_blob(self, image: str, digest: Digest) -> bool:
        return False

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None:
        self._unknown()

    def writable(self) -> HostedRepository:
        self._unknown()
