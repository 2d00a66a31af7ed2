"""The repositories in service, as one immutable snapshot that a rebuild replaces (ADR 17).

A snapshot holds the repository definitions (data: `RepositoryConfig`s), the repository
objects built from them and the route table built from the same definitions. A rebuild makes a
whole new snapshot from new definitions and swaps it in with one assignment, so a request sees
either the old set or the new one, never a mix. Repository objects whose definition did not
change are carried over (a proxy keeps its upstream connections, breaker and caches); the ones
that are no longer used are handed back to the caller to close once requests on them are done.

The route table type is left open (`R`): it belongs to the HTTP layer, which this module does
not import; the composition root passes the function that builds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from portway.config import ConnectorConfig, HostConfig, RepositoryConfig, Settings
from portway.repos.base import Repository

R = TypeVar("R")

# (settings with the new definitions, objects of the previous snapshot to reuse) -> objects
RepositoryBuilder = Callable[[Settings, Mapping[str, Repository]], dict[str, Repository]]


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[R]):
    generation: int  # 1 for what the configuration file declared, +1 per rebuild
    definitions: tuple[RepositoryConfig, ...]
    repos: Mapping[str, Repository]  # read-only
    routes: R

    def config(self, name: str) -> RepositoryConfig | None:
        return next((d for d in self.definitions if d.name == name), None)


class RepositoryRegistry(Generic[R]):
    def __init__(
        self,
        settings: Settings,
        build: RepositoryBuilder,
        routes: Callable[[Settings], R],
    ) -> None:
        self._settings = settings
        self._build = build
        self._routes = routes
        self._current: Snapshot[R] = self._snapshot(settings, 1, {})
        # Called at each read of the current snapshot: the admin service's cheap look at
        # whether another worker or node changed the repositories (repos/admin.py).
        self.on_read: Callable[[], None] | None = None
        # Called when a request names what the snapshot lacks: look again now, True when
        # the snapshot changed (repos/admin.py `settle`).
        self.on_miss: Callable[[], Awaitable[bool]] | None = None

    @property
    def current(self) -> Snapshot[R]:
        if self.on_read is not None:
            self.on_read()
        return self._current

    @property
    def settings(self) -> Settings:
        """The settings the current snapshot was built from (its definitions included)."""
        return self._settings

    def _snapshot(
        self, settings: Settings, generation: int, reuse: Mapping[str, Repository]
    ) -> Snapshot[R]:
        repos = self._build(settings, reuse)
        return Snapshot(
            generation, settings.repository, MappingProxyType(repos), self._routes(settings)
        )

    def rebuild(
        self,
        definitions: Iterable[RepositoryConfig],
        connectors: tuple[ConnectorConfig, ...] | None = None,
        hosts: tuple[HostConfig, ...] | None = None,
    ) -> tuple[Snapshot[R], list[Repository]]:
        """Serve `definitions` (and `connectors` and `hosts`, when given) from now on. They
        are checked as the configuration file's are (unique names, known group members, no
        cycles, connectors and hosts pointing at a repository): a `ValueError` leaves the
        current snapshot in service. Returns the new snapshot and the repository objects it
        no longer uses (for the caller to close)."""
        settings = Settings.model_validate(
            {
                "server": self._settings.server,
                "security": self._settings.security,
                "database": self._settings.database,
                "storage": self._settings.storage,
                "repository": tuple(definitions),
                "connector": self._settings.connector if connectors is None else connectors,
                "host": self._settings.host if hosts is None else hosts,
                "cleanup_policy": self._settings.cleanup_policy,
            }
        )
        old = self._current
        new = self._snapshot(settings, old.generation + 1, old.repos)
        self._settings, self._current = settings, new  # the swap
        kept = {id(repo) for repo in new.repos.values()}
        return new, [repo for repo in old.repos.values() if id(repo) not in kept]
