"""Connectors and host mappings created, changed and deleted while Portway runs.

The configuration file's `[[connector]]` and `[[host]]` tables are provisioning, as its
repositories are: applied at start (and at SIGHUP), shown as managed by the file, refused for
change here. The others are rows of `access_definitions` (db/access.py). A change is stored in
the same generation as repository changes, then applied to this process at once by the
repository service's refresh: the route table follows on every worker and node as it does for
repositories (ADR 24). Sockets are not opened here: the process that holds the listeners
watches the same generation and opens or closes them (http/live_connectors.py, ADR 28).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from portway.config import ConnectorConfig, HostConfig, Settings, split_listen
from portway.db.access import AccessStore, Kind, StoredAccess
from portway.db.connector_states import ConnectorStates, ListenerState, NodeView
from portway.db.repositories import DefinitionConflict
from portway.repos.admin import RepositoryRefused

if TYPE_CHECKING:
    from portway.auth.audit import AuditLog
    from portway.repos.admin import Network, RepositoryAdmin

Definition = ConnectorConfig | HostConfig
# Checks a new connector on this node: can its address be bound, do its TLS files load?
# Raises RepositoryRefused with the reason (409 for an address in use). `bind` is False when
# the connector listens already.
Probe = Callable[[ConnectorConfig, bool], None]
log = logging.getLogger("portway.server")


@dataclass(frozen=True, slots=True)
class AccessEntry:
    kind: Kind
    key: str
    config: Definition
    managed_by: Literal["file", "api"]
    revision: int  # 0 for the file's

    @property
    def etag(self) -> str:
        if self.managed_by == "file":
            digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()
            return f'"file-{digest[:16]}"'
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:12]
        return f'"{self.kind}-{digest}-{self.revision}"'


def key_of(config: Definition) -> str:
    return config.listen if isinstance(config, ConnectorConfig) else config.name


def _model(kind: Kind) -> type[ConnectorConfig] | type[HostConfig]:
    return ConnectorConfig if kind == "connector" else HostConfig


def check_api_connector(config: ConnectorConfig) -> None:
    """What the file allows but a connector made through the API may not do: a host name
    to resolve (the address must be an IP address), an ephemeral port, relative paths."""
    host, port = split_listen(config.listen)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise RepositoryRefused(
            f"listen: the address must be an IP address (0.0.0.0 for all), got {host!r}"
        ) from None
    if port == 0:
        raise RepositoryRefused("listen: a connector needs a fixed port (1-65535)")
    tls = config.tls if isinstance(config.tls, tuple) else (config.tls,) if config.tls else ()
    for pair in tls:
        for path in (pair.cert, pair.key):
            if not path.is_absolute():
                raise RepositoryRefused(f"tls: {path} is not an absolute path on the server")


class AccessAdmin:
    def __init__(
        self,
        settings: Settings,
        store: AccessStore,
        repositories: RepositoryAdmin,
        audit: AuditLog | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.settings = settings  # the file's
        self.store = store
        self.repositories = repositories
        self.audit = audit
        self.probe = probe
        self._stored: dict[tuple[Kind, str], StoredAccess] = {}
        # This worker's listeners of portway-served connectors, by listen address (filled
        # by the HTTP layer as the sockets arrive; shown by the API).
        self.listeners: dict[str, ListenerState] = {}
        # Every node's view of its listeners, shared through the database in a cluster
        # (db/connector_states.py); alone, this worker's view is the node's.
        self.node = ""
        self.shared: ConnectorStates | None = None
        self.file_version = 0  # moves when the file's tables are read again (SIGHUP)

    async def node_views(self) -> dict[str, list[NodeView]] | None:
        """Each node's view of the connectors it serves, by listen address; None while the
        cluster's copy cannot be read."""
        if self.shared is None:
            now = time.time()
            return {
                listen: [NodeView(self.node, state, detail, now)]
                for listen, (state, detail) in self.listeners.items()
            }
        try:
            return await asyncio.to_thread(self.shared.views)
        except SQLAlchemyError as exc:
            log.warning("connector states of the cluster not read: %s", exc)
            return None

    def set_file(self, settings: Settings) -> None:
        self.settings = settings
        self.file_version += 1

    # -- the set ---------------------------------------------------------------------------
    def _file(self, kind: Kind) -> tuple[Definition, ...]:
        return self.settings.connector if kind == "connector" else self.settings.host

    def _file_keys(self, kind: Kind) -> set[str]:
        return {key_of(c) for c in self._file(kind)}

    def merge(self, rows: Iterable[StoredAccess] | None = None) -> Network:
        """The file's connectors and hosts, and the API's (`rows`, else those remembered);
        a stored one the file now declares too is left out (the file's wins)."""
        rows = self._stored.values() if rows is None else rows
        connectors = list(self.settings.connector)
        hosts = list(self.settings.host)
        taken = {"connector": self._file_keys("connector"), "host": self._file_keys("host")}
        for row in rows:
            if row.key in taken[row.kind]:
                continue
            if row.kind == "connector":
                connectors.append(ConnectorConfig.model_validate(row.definition))
            else:
                hosts.append(HostConfig.model_validate(row.definition))
        return tuple(connectors), tuple(hosts)

    def remember(self, rows: Iterable[StoredAccess]) -> None:
        self._stored = {(r.kind, r.key): r for r in rows}

    def entries(self, kind: Kind) -> list[AccessEntry]:
        out = [AccessEntry(kind, key_of(c), c, "file", 0) for c in self._file(kind)]
        file_keys = self._file_keys(kind)
        for (k, key), row in sorted(self._stored.items()):
            if k == kind and key not in file_keys:
                config = _model(kind).model_validate(row.definition)
                out.append(AccessEntry(kind, key, config, "api", row.revision))
        return out

    def entry(self, kind: Kind, key: str) -> AccessEntry | None:
        if kind == "host":
            key = key.lower()
        return next((e for e in self.entries(kind) if e.key == key), None)

    # -- changes ---------------------------------------------------------------------------
    def _candidate(self, kind: Kind, key: str, config: Definition | None) -> Network:
        """The set in service with `key` replaced by `config` (or removed, for None)."""
        connectors, hosts = self.merge()
        if kind == "connector":
            rest = tuple(c for c in connectors if c.listen != key)
            assert config is None or isinstance(config, ConnectorConfig)
            return (*rest, *((config,) if config else ())), hosts
        kept = tuple(h for h in hosts if h.name != key)
        assert config is None or isinstance(config, HostConfig)
        return connectors, (*kept, *((config,) if config else ()))

    def _check(self, kind: Kind, key: str, config: Definition | None, bind: bool) -> None:
        if isinstance(config, ConnectorConfig):
            check_api_connector(config)
        self.repositories.check(self.repositories.definitions(), self._candidate(kind, key, config))
        if isinstance(config, ConnectorConfig) and config.served_by == "portway" and self.probe:
            self.probe(config, bind)

    def _writable(self, kind: Kind, key: str, expected: int | None) -> StoredAccess:
        if key in self._file_keys(kind):
            raise RepositoryRefused(
                f"{kind} {key!r} is managed by the configuration file; change it there "
                "(and send SIGHUP or restart), not through the API",
                status=409,
            )
        row = self._stored.get((kind, key))
        if row is None:
            raise RepositoryRefused(f"no {kind} {key!r}", status=404)
        if expected is not None and row.revision != expected:
            raise RepositoryRefused(
                f"{kind} {key!r} changed since it was read (revision {row.revision})", 412
            )
        return row

    def _record(self, event: str, key: str, actor: str, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write(event, principal=actor, detail={"key": key, **detail})

    async def create(self, config: Definition, *, actor: str) -> AccessEntry:
        await self.repositories.refresh()
        kind: Kind = "connector" if isinstance(config, ConnectorConfig) else "host"
        key = key_of(config)
        if key in self._file_keys(kind) or (kind, key) in self._stored:
            raise RepositoryRefused(f"{kind} {key!r} exists", status=409)
        await asyncio.to_thread(self._check, kind, key, config, True)
        try:
            await asyncio.to_thread(
                self.store.create, kind, key, config.model_dump(mode="json", exclude_none=True)
            )
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=409) from None
        await self.repositories.refresh(force=True)
        self._record(f"{kind}.create", key, actor, {"repository": config.repository})
        entry = self.entry(kind, key)
        assert entry is not None
        return entry

    async def replace(
        self, config: Definition, *, actor: str, expected: int | None = None
    ) -> AccessEntry:
        await self.repositories.refresh()
        kind: Kind = "connector" if isinstance(config, ConnectorConfig) else "host"
        key = key_of(config)
        self._writable(kind, key, expected)
        await asyncio.to_thread(self._check, kind, key, config, False)
        try:
            await asyncio.to_thread(
                self.store.replace, kind, key,
                config.model_dump(mode="json", exclude_none=True), expected,
            )  # fmt: skip
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=412 if expected else 404) from None
        await self.repositories.refresh(force=True)
        self._record(f"{kind}.update", key, actor, {"repository": config.repository})
        entry = self.entry(kind, key)
        assert entry is not None
        return entry

    async def delete(
        self, kind: Kind, key: str, *, actor: str, expected: int | None = None
    ) -> None:
        await self.repositories.refresh()
        self._writable(kind, key, expected)
        try:
            await asyncio.to_thread(self.store.delete, kind, key, expected)
        except DefinitionConflict as exc:
            raise RepositoryRefused(str(exc), status=412 if expected else 404) from None
        await self.repositories.refresh(force=True)
        self._record(f"{kind}.delete", key, actor, {})


class DefinitionSource:
    """The connectors in service, for the process that holds the listeners (it watches the
    same generation as the repository service; http/live_connectors.py)."""

    def __init__(self, repositories: RepositoryAdmin) -> None:
        assert repositories.access is not None
        self.repositories = repositories
        self.access = repositories.access

    def generation(self) -> object:
        return self.repositories.store.generation(), self.access.file_version

    def connectors(self) -> tuple[ConnectorConfig, ...]:
        return self.access.merge(self.access.store.list("connector"))[0]

    def set_file(self, settings: Settings) -> None:
        """SIGHUP: the file's tables were read again."""
        self.repositories.settings = settings
        self.repositories.file_names = frozenset(r.name for r in settings.repository)
        self.access.set_file(settings)
