"""What handlers need, built once by the composition root (no module-level state)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from portway.config import Settings
from portway.http.forwarded import TrustedProxies
from portway.http.routing import RouteTable
from portway.repos.base import Repository
from portway.repos.registry import RepositoryRegistry, Snapshot
from portway.repos.services import SharedCatalog

if TYPE_CHECKING:
    from portway.api.services import AdminServices

ACTIONS = ("pull", "push", "delete")


class Authorizer(Protocol):
    """Decides whether a request may act on a repository; raises RegistryError to refuse."""

    async def authorize(
        self,
        request: web.Request,
        repository: str | None,
        image: str | None,
        actions: tuple[str, ...],
    ) -> None: ...

    async def identify(self, request: web.Request, repository: str | None) -> None:
        """Find out who is asking (before `visible` is asked without `authorize`)."""
        ...

    def visible(self, request: web.Request, repository: str) -> bool: ...

    def audit(
        self, request: web.Request, event: str, repository: str, detail: dict[str, str]
    ) -> None: ...


class AllowAll:
    """Open access: what the embedded default does until security is configured."""

    async def authorize(
        self,
        request: web.Request,
        repository: str | None,
        image: str | None,
        actions: tuple[str, ...],
    ) -> None:
        return None

    async def identify(self, request: web.Request, repository: str | None) -> None:
        return None

    def visible(self, request: web.Request, repository: str) -> bool:
        return True

    def audit(
        self, request: web.Request, event: str, repository: str, detail: dict[str, str]
    ) -> None:
        return None


@dataclass
class AppContext:
    """`settings` are the file's (server, security, listeners); the repositories and the
    route table are those of the registry's current snapshot, read at each use, so that a
    rebuild (repos/registry.py) takes effect for the next request without a restart."""

    settings: Settings
    registry: RepositoryRegistry[RouteTable]
    trusted: TrustedProxies
    catalog: SharedCatalog  # what a shared host's `_catalog` lists
    authorizer: Authorizer = field(default_factory=AllowAll)
    admin: AdminServices | None = None  # the admin API's services (api/, issue 13)

    @property
    def snapshot(self) -> Snapshot[RouteTable]:
        return self.registry.current

    @property
    def repos(self) -> Mapping[str, Repository]:
        return self.registry.current.repos

    @property
    def routes(self) -> RouteTable:
        return self.registry.current.routes

    async def settle(self) -> bool:
        """A request named what the snapshot lacks: has another worker or node just changed
        the set? True when the snapshot changed (look the name up again)."""
        miss = self.registry.on_miss
        return miss is not None and await miss()

    async def repository(self, name: str) -> Repository | None:
        found = self.repos.get(name)
        if found is None and await self.settle():
            found = self.repos.get(name)
        return found


CONTEXT_KEY = web.AppKey("portway", AppContext)
