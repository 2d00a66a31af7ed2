"""What handlers need, built once by the composition root (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from portway.config import Settings
from portway.http.forwarded import TrustedProxies
from portway.http.routing import RouteTable
from portway.repos.base import Repository

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

    def visible(self, request: web.Request, repository: str) -> bool:
        return True

    def audit(
        self, request: web.Request, event: str, repository: str, detail: dict[str, str]
    ) -> None:
        return None


@dataclass
class AppContext:
    settings: Settings
    repos: dict[str, Repository]
    routes: RouteTable
    trusted: TrustedProxies
    authorizer: Authorizer = field(default_factory=AllowAll)


CONTEXT_KEY = web.AppKey("portway", AppContext)
