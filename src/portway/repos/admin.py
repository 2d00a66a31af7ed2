"""Repositories created, changed and deleted while Portway runs (the admin API's service).

The configuration file's `[[repository]]` tables are provisioning: applied at start, shown as
managed by the file, and refused for change here (the file stays the truth for what it
declares). Every other repository is a row of `repository_definitions` (db/repositories.py).
A change is stored, then applied to this process at once; every other worker and node sees
the set's generation move the next time it serves a request (one indexed row read at most
every `FRESHNESS` seconds) and rebuilds its registry snapshot (ADR 17, ADR 24). A request
naming a repository the snapshot lacks looks at once and waits for that rebuild (`settle`):
a repository created on one node takes pushes on every node as soon as the create answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from portway.auth.audit import AuditLog
from portway.config import ConnectorConfig, HostConfig, RepositoryConfig, Settings
from portway.db.repositories import DefinitionConflict, DefinitionStore, StoredDefinition

if TYPE_CHECKING:
    from portway.db.access import StoredAccess
    from portway.repos.access import AccessAdmin

log = logging.getLogger("portway.repos.admin")

FRESHNESS = 0.05  # seconds between two looks at the generation row, while serving


class RepositoryRefused(ValueError):
    """A change that cannot be made; `status` is the HTTP answer that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    config: RepositoryConfig
    managed_by: Literal["file", "api"]
    revision: int  # 0 for the file's; the API's ETag otherwise

    @property
    def etag(self) -> str:
        if self.managed_by == "file":
            digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()
            return f'"file-{digest[:16]}"'
        return f'"{self.config.name}-{self.revision}"'


def _message(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("repository change not applied: %s", task.exception())


# The connectors and host mappings in service: the file's and those made through the API.
Network = tuple[tuple[ConnectorConfig, ...], tuple[HostConfig, ...]]
Apply = Callable[[tuple[RepositoryConfig, ...], Network], Awaitable[Any]]


class RepositoryAdmin:
    def __init__(
        self,
        settings: Settings,
        store: DefinitionStore,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings  # the file's
        self.file_names = frozenset(r.name for r in settings.repository)
        self.store = store
        self.audit = audit
        self.clock = clock
        self.apply: Apply | None = None  # set by the composition root
        self.access: AccessAdmin | None = None  # connectors and hosts (repos/access.py)
        self._stored: dict[str, StoredDefinition] = {}
        self._generation = -1
        self._next_check = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- the set ---------------------------------------------------------------------------
    def _merge(self, stored: Iterable[StoredDefinition]) -> tuple[RepositoryConfig, ...]:
        defs = list(self.settings.repository)
        for row in stored:
            if row.name in self.file_names:
                log.warning(
                    "repository %r is declared by the file; its API definition is ignored", row.name
                )
                continue
            defs.append(RepositoryConfig.model_validate(row.definition))
        return tuple(defs)

    def definitions(self) -> tuple[RepositoryConfig, ...]:
        """The repositories in service: the file's and the stored ones."""
        return self._merge(self._stored.values())

    def network(self, rows: Iterable[StoredAccess] | None = None) -> Network:
        """The connectors and hosts in service (or with the API's `rows` instead)."""
        if self.access is None:
            return self.settings.connector, self.settings.host
        return self.access.merge(rows)

    def check(
        self, definitions: tuple[RepositoryConfig, ...], network: Network | None = None
    ) -> None:
        """Refuse a set the configuration file could not declare (unknown members, cycles,
        a connector or host naming no repository, two listeners on one address)."""
        connectors, hosts = network if network is not None else self.network()
        try:
            Settings.model_validate(
                {
                    "server": self.settings.server,
                    "security": self.settings.security,
                    "repository": definitions,
                    "connector": connectors,
                    "host": hosts,
                    "cleanup_policy": self.settings.cleanup_policy,
                }
            )
        except ValidationError as exc:
            raise RepositoryRefused(_message(exc)) from None

    def initial(self) -> tuple[RepositoryConfig, ...]:
        """What to serve at start: the file's repositories and the stored ones (the file's
        alone, with an error in the log, when the stored ones no longer fit the file)."""
        self._generation = self.store.generation()
        rows = self.store.list()
        access = self.access.store.list() if self.access is not None else []
        try:
            merged = self._merge(rows)
            self.check(merged, self.network(access))
        except (RepositoryRefused, ValidationError) as exc:
            log.error(
                "repositories, connectors and hosts made through the API are not served: %s",
                exc,
            )
            return self.settings.repository
        self._stored = {r.name: r for r in rows}
        if self.access is not None:
            self.access.remember(access)
        return merged

    def entries(self) -> list[RepositoryEntry]:
        out = [RepositoryEntry(c, "file", 0) for c in self.settings.repository]
        for row in self._stored.values():
            if row.name not in self.file_names:
                out.append(
                    RepositoryEntry(
                        RepositoryConfig.model_validate(row.definition), "api", row.revision
                    )
                )
        return out

    def entry(self, name: str) -> RepositoryEntry | None:
        return next((e for e in self.entries() if e.config.name == name), None)

    # -- freshness -------------------------------------------------------------------------
    def maybe_refresh(self) -> None:
        """Called whenever the registry is read: at most every FRESHNESS seconds, look at the
        generation; when it moved, rebuild in the background (the next requests see it).
        Never waits for PostgreSQL on the event loop: there the look is the change signal,
        and the generation row is read in a thread once the signal moved."""
        now = self.clock()
        if now < self._next_check or (self._task is not None and not self._task.done()):
            return
        self._next_check = now + FRESHNESS
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        generation = self.store.known_generation()
        if generation is None and self.store.inline:
            try:  # SQLite: one indexed row of a local file, read here
                generation = self.store.generation()
            except Exception as exc:  # a database away: keep serving what we have
                log.debug("repository generation not read: %s", exc)
                return
        if generation is None:  # PostgreSQL after a change signal: read in a thread
            self._task = loop.create_task(self._look())
        elif generation != self._generation:
            self._task = loop.create_task(self.refresh())
        else:
            return
        self._task.add_done_callback(_log_failure)

    async def settle(self) -> bool:
        """A request named a repository or route this process does not know: look at the
        generation now, not up to FRESHNESS later, and wait for the rebuild when it moved, so
        that a repository created through another worker or node is served at once. True
        when the set in service changed."""
        before = self._generation
        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        try:
            generation = (
                self.store.generation()
                if self.store.inline
                else await asyncio.to_thread(self.store.generation)
            )
        except Exception as exc:  # a database away: keep serving what we have
            log.debug("repository generation not read: %s", exc)
            return self._generation != before
        if generation != self._generation:
            await self.refresh()
        return self._generation != before

    async def _look(self) -> None:
        try:
            generation = await asyncio.to_thread(self.store.generation)
        except Exception as exc:  # a database away: keep serving what we have
            log.debug("repository generation not read: %s", exc)
            return
        if generation != self._generation:
            await self.refresh()

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            generation = await asyncio.to_thread(self.store.generation)
            if generation == self._generation and not force:
                return
            rows = await asyncio.to_thread(self.store.list)
            access = await asyncio.to_thread(self.access.store.list) if self.access else []
            merged = self._merge(rows)
            network = self.network(access)
            try:
                self.check(merged, network)
            except RepositoryRefused as exc:
                log.error("repository, connector or host change not applied: %s", exc.message)
                self._generation = generation
                return
            if self.apply is not None:
                await self.apply(merged, network)
            self._stored = {r.name: r for r in rows}
            if self.access is not None:
                self.access.remember(access)
            self._generation = generation

    # -- changes ---------------------------------------------------------------------------
    def _writable(self, name: str) -> StoredDefinition:
        if name in self.file_names:
            raise RepositoryRefused(
                f"repository {name!r} is managed by the configuration file; change it there "
                "(and restart), not through the API",
                status=409,
            )
        row = self._stored.get(name)
        if row is None:
            raise RepositoryRefused(f"no repository {name!r}", status=404)
        return row

    def _record(self, event: str, name: str, actor: str, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write(event, principal=actor, repository=name, detail=detail)

    async def create(self, config: RepositoryConfig, *, actor: str) -> RepositoryEntry:
        await self.refresh()
        name = config.name
        if name in self.file_names or name in self._stored:
            raise RepositoryRefused(f"repository {name!r} exists", status=409)
        self.check((*self._merge(self._stored.values()), config))
        try:
            await asyncio.to_thread(self.store.create, name, config.model_dump(mode="json"))
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=409) from None
        await self.refresh(force=True)
        self._record("repository.create", name, actor, {"type": config.type})
        entry = self.entry(name)
        assert entry is not None
        return entry

    async def replace(
        self, config: RepositoryConfig, *, actor: str, expected: int | None = None
    ) -> RepositoryEntry:
        await self.refresh()
        name = config.name
        row = self._writable(name)
        if expected is not None and row.revision != expected:
            raise RepositoryRefused(
                f"repository {name!r} changed since it was read (revision {row.revision})", 412
            )
        if row.definition.get("type") != config.type:
            raise RepositoryRefused(
                f"repository {name!r} is {row.definition.get('type')}; delete and create it "
                "to change its type",
                status=400,
            )
        others = [c for c in self._merge(self._stored.values()) if c.name != name]
        self.check((*others, config))
        try:
            await asyncio.to_thread(
                self.store.replace, name, config.model_dump(mode="json"), expected
            )
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=412 if expected else 404) from None
        await self.refresh(force=True)
        self._record("repository.update", name, actor, {"type": config.type})
        entry = self.entry(name)
        assert entry is not None
        return entry

    async def delete(self, name: str, *, actor: str, expected: int | None = None) -> None:
        await self.refresh()
        row = self._writable(name)
        if expected is not None and row.revision != expected:
            raise RepositoryRefused(
                f"repository {name!r} changed since it was read (revision {row.revision})", 412
            )
        rest = tuple(c for c in self._merge(self._stored.values()) if c.name != name)
        self.check(rest)  # a group still naming it, a connector or host pointing at it
        try:
            await asyncio.to_thread(self.store.delete, name, expected)
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=412 if expected else 404) from None
        await self.refresh(force=True)
        self._record("repository.delete", name, actor, {})
