"""The composition root: the whole application, built from `Settings` (ADR 17).

`Portway(settings)` is the only place that constructs the stores (metadata, blobs, users), the
security pieces (login limiter, signing keys, audit log, auth service, authorizer), the
repository registry with its route table, and the services. `portway serve` (each worker),
every CLI command and, later, the admin API take what they need from it.

Everything is made on first use, so a command pays only for what it touches: `portway key
rotate` opens no database, `portway repo list` never creates the admin account (only
`security()` does, and only `serve` calls it), and nothing here starts a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import cached_property, partial
from types import TracebackType
from typing import TYPE_CHECKING

from portway.config import RepositoryConfig, Settings
from portway.coordination.interfaces import Leases, Locks
from portway.db.store import MetadataStore, open_metadata
from portway.http.context import AllowAll, AppContext, Authorizer
from portway.http.forwarded import TrustedProxies
from portway.http.routing import PortBindings, RouteTable
from portway.repos.base import Repository
from portway.repos.factory import build_repositories
from portway.repos.registry import RepositoryRegistry, Snapshot
from portway.repos.services import SharedCatalog
from portway.storage.blobstore import BlobStore

if TYPE_CHECKING:
    from portway.api.services import AdminServices
    from portway.auth.audit import AuditLog
    from portway.auth.keys import KeyRing
    from portway.auth.ratelimit import LoginLimiter
    from portway.auth.service import AuthService
    from portway.auth.services import KeyService, RoleService, UserService
    from portway.auth.store import UserStore
    from portway.jobs.scheduler import Scheduler
    from portway.jobs.services import JobService
    from portway.maintenance.proxy_state import SharedProxyHealth
    from portway.repos.access import DefinitionSource
    from portway.repos.admin import Network, RepositoryAdmin


class Portway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin_password: str | None = None
        self._rebuilding = asyncio.Lock()

    # -- stores ----------------------------------------------------------------------------

    @cached_property
    def meta(self) -> MetadataStore:
        data_dir = self.settings.server.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        return open_metadata(self.settings)  # [database] url, else <data_dir>/portway.db

    @cached_property
    def blobs(self) -> BlobStore:
        """[storage]: portway.storage.open (a folder, or a bucket)."""
        from portway.storage.open import open_blobs

        return open_blobs(self.settings, lambda: self.meta)

    # -- coordination (ADR 0021) --------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        """Metadata in PostgreSQL: other nodes may share it, so share state through it (signing
        keys, audit log, locks, proxy health). Read from the settings: opens nothing."""
        return self.settings.database.url.startswith(("postgresql", "postgres:"))

    @cached_property
    def locks(self) -> Locks:
        """Single flight: advisory locks on PostgreSQL, flock files on one host."""
        if self.clustered:
            from portway.coordination.postgres import AdvisoryLocks

            return AdvisoryLocks(self.meta.read_engine)
        from portway.coordination.flock import FileLocks

        return FileLocks(self.blobs.lock_dir)

    @property
    def node(self) -> str:
        """This node among a cluster's: host name and main listener."""
        import socket

        return f"{socket.gethostname()}:{self.settings.server.listen}"

    @cached_property
    def proxy_health(self) -> SharedProxyHealth | None:
        """Breakers and negative caches of proxy repositories shared in a cluster, else None."""
        if not self.clustered:
            return None
        from portway.maintenance.proxy_state import SharedProxyHealth

        return SharedProxyHealth(self.meta.engine, self.node)

    @cached_property
    def leases(self) -> Leases:
        """Job singletons: lease rows with a fencing token in the metadata database."""
        from portway.coordination.leases import DatabaseLeases

        return DatabaseLeases(self.meta.engine)

    @cached_property
    def user_store(self) -> UserStore:
        from portway.auth.store import UserStore

        store = UserStore(self.meta.engine, read_engine=self.meta.read_engine)
        store.ensure_builtin_roles()
        return store

    @cached_property
    def audit(self) -> AuditLog:
        """`<data_dir>/audit.log` on one host; the database's `audit_events` in a cluster, so
        every node's records are in one place (`portway audit export`; ADR 0022)."""
        from portway.auth.audit import AuditLog

        if self.clustered:
            from portway.auth.audit_db import DatabaseAuditLog

            return DatabaseAuditLog(self.meta.engine, self.node)
        return AuditLog(self.settings.server.data_dir / "audit.log")

    @cached_property
    def keyring(self) -> KeyRing:
        """`<data_dir>/keys` on one host; the database's `signing_keys` in a cluster, where the
        first node moves its folder keys in (ADR 0022)."""
        from portway.auth.keys import KeyRing

        if self.clustered:
            from portway.auth.keys_db import DatabaseKeyRing

            keys = self.settings.server.data_dir / "keys"
            return DatabaseKeyRing(self.meta.engine, import_from=keys, watch=True)
        return KeyRing.in_data_dir(self.settings.server.data_dir)

    @cached_property
    def limiter(self) -> LoginLimiter:
        from portway.auth.ratelimit import LoginLimiter

        sec = self.settings.security
        return LoginLimiter(
            self.meta.engine,
            sec.login_max_failures,
            sec.login_failure_window,
            max_failures_per_address=sec.login_max_failures_per_address,
            read_engine=self.meta.read_engine,
        )

    # -- repositories and routes -----------------------------------------------------------

    @cached_property
    def registry(self) -> RepositoryRegistry[RouteTable]:
        """The definitions of the configuration file, with the repositories (their database
        rows made on first use) and the route table over them."""
        ports: PortBindings = {}  # the listeners' bindings, kept across rebuilds

        def build(settings: Settings, reuse: Mapping[str, Repository]) -> dict[str, Repository]:
            return build_repositories(settings, self.meta, self.blobs, reuse, self.locks)

        def routes(settings: Settings) -> RouteTable:
            return RouteTable.from_settings(settings, ports)

        # The file's repositories, connectors and hosts and the API's (repos/admin.py, access.py).
        admin = self.repository_admin
        repositories, (connectors, hosts) = admin.initial(), admin.network()
        update = {"repository": repositories, "connector": connectors, "host": hosts}
        settings = self.settings.model_copy(update=update)
        registry = RepositoryRegistry(settings, build, routes)
        registry.on_read = admin.maybe_refresh  # another worker's or node's change
        registry.on_miss = admin.settle
        return registry

    @cached_property
    def repository_admin(self) -> RepositoryAdmin:
        from portway.db.repositories import DefinitionStore
        from portway.repos.admin import RepositoryAdmin

        signal = self.meta.change_signal if self.clustered else None
        store = DefinitionStore(self.meta.engine, self.meta.read_engine, signal)
        from portway.db.access import AccessStore
        from portway.http.live_connectors import probe
        from portway.repos.access import AccessAdmin

        admin = RepositoryAdmin(self.settings, store, audit=self.audit)
        admin.apply = self.apply_repositories
        # Connectors and host mappings made through the admin API (repos/access.py).
        access = AccessStore(self.meta.engine, self.meta.read_engine)
        check = partial(probe, reuse_port=self.settings.server.share_connector_ports)
        admin.access = AccessAdmin(self.settings, access, admin, audit=self.audit, probe=check)
        admin.access.node = self.node
        if self.clustered:
            from portway.db.connector_states import ConnectorStates

            meta = self.meta
            admin.access.shared = ConnectorStates(meta.engine, meta.read_engine, self.node)
        return admin

    def connector_source(self) -> DefinitionSource:
        """What the listener holder watches for connectors (http/live_connectors.py)."""
        from portway.repos.access import DefinitionSource

        return DefinitionSource(self.repository_admin)

    async def apply_repositories(
        self, definitions: tuple[RepositoryConfig, ...], network: Network | None = None
    ) -> Snapshot[RouteTable]:
        """Serve `definitions` (and the connectors and hosts of `network`, when given) from
        now on (the admin API's path); raises ValueError for a set the configuration file
        could not declare, and then nothing changes. The build writes the repositories'
        rows: it runs in a thread, one rebuild at a time."""
        connectors, hosts = network if network is not None else (None, None)
        async with self._rebuilding:
            snapshot, retired = await asyncio.to_thread(
                self.registry.rebuild, definitions, connectors, hosts
            )
        auth = self.__dict__.get("auth")
        if auth is not None:
            auth.set_repositories(snapshot.definitions)
        for repo in retired:
            close = getattr(repo, "close", None)
            if close is not None:
                await close()
        return snapshot

    # -- security --------------------------------------------------------------------------

    @cached_property
    def auth(self) -> AuthService:
        from portway.auth.service import AuthService
        from portway.auth.tokens import TokenAuthority

        sec = self.settings.security
        tokens = TokenAuthority(self.keyring, issuer="portway", ttl=sec.token_ttl)
        return AuthService(
            self.user_store,
            tokens,
            limiter=self.limiter,
            audit=self.audit,
            repositories=self.registry.current.definitions,
        )

    def security(self) -> tuple[Authorizer | None, str | None]:
        """The authorizer for `[security]` (None when it is off), and the admin's first
        password when this call created the account (first start only)."""
        if not self.settings.security.enabled:
            return None, None
        from portway.http.auth import SecurityAuthorizer

        if "authorizer" not in self.__dict__:
            self._admin_password = self.user_store.ensure_admin(self.settings.server.data_dir)
            sec = self.settings.security
            self.__dict__["authorizer"] = SecurityAuthorizer(
                self.auth, sec.service, sec.login_threads
            )
        authorizer: Authorizer = self.__dict__["authorizer"]
        return authorizer, self._admin_password

    def context(self, authorizer: Authorizer | None = None) -> AppContext:
        """What the HTTP layer serves. With no authorizer given, `[security]` decides (and the
        admin account is made if missing); pass `AllowAll()` to read without security."""
        if authorizer is None:
            authorizer = self.security()[0] or AllowAll()
        return AppContext(
            settings=self.settings,
            registry=self.registry,
            trusted=TrustedProxies(self.settings.server.trusted_proxies),
            catalog=self.catalog,
            authorizer=authorizer,
            admin=self.admin_services,
        )

    # -- services --------------------------------------------------------------------------

    @cached_property
    def users(self) -> UserService:
        from portway.auth.services import UserService

        return UserService(
            self.user_store,
            self.limiter,
            self.audit,
            self.settings.security,
            self.settings.server.data_dir,
        )

    @cached_property
    def roles(self) -> RoleService:
        from portway.auth.services import RoleService

        return RoleService(self.user_store, self.audit)

    @cached_property
    def keys(self) -> KeyService:
        from portway.auth.services import KeyService

        return KeyService(self.keyring, self.audit)

    @cached_property
    def admin_services(self) -> AdminServices:
        from portway.api.services import AdminServices
        from portway.db.browse import BrowseQueries
        from portway.lifecycle.services import LifecycleService
        from portway.repos.browse import TagBrowser
        from portway.repos.bulk import BulkTags

        queries = BrowseQueries(self.meta.read_engine)

        def repo_ids() -> dict[str, int]:
            found = {n: getattr(r, "repo_id", None) for n, r in self.registry.current.repos.items()}
            return {n: int(i) for n, i in found.items() if i is not None}

        lifecycle = LifecycleService(
            self.settings, self.meta, lambda: self.registry.current.definitions, repo_ids
        )
        return AdminServices(
            users=self.users,
            roles=self.roles,
            keys=self.keys,
            repositories=self.repository_admin,
            access=self.connector_source().access,
            browse=queries,
            tags=TagBrowser(queries),
            bulk=BulkTags(queries),
            lifecycle=lifecycle,
            audit_path=self.settings.server.data_dir / "audit.log",
            audit_engine=self.meta.read_engine if self.clustered else None,
            jobs=self.job_service,
            session_engine=self.meta.engine if self.clustered else None,
        )

    @cached_property
    def job_service(self) -> JobService:
        """Maintenance jobs: list, runs, run now (ADR 0027)."""
        from portway.jobs.services import JobService

        meta = self.meta
        return JobService(self.settings, meta.engine, meta.read_engine, lambda: self.audit)

    def scheduler(self) -> Scheduler | None:
        """The job scheduler of one `portway serve` worker; None with `[jobs] enabled = false`."""
        if not self.settings.jobs.enabled:
            return None
        from portway.jobs.kinds import JobEnv
        from portway.jobs.runner import JobRunner
        from portway.jobs.scheduler import Scheduler

        purge = self.user_store.purge_refresh_tokens if self.settings.security.enabled else None
        env = JobEnv(
            self.settings,
            self.meta,
            self.blobs,
            lambda: list(self.registry.current.repos.values()),
            purge_refresh_tokens=purge,
        )
        runner = JobRunner(env, self.meta.engine, self.leases, self.settings.jobs)
        service = self.job_service
        scheduler = Scheduler(
            service.jobs, self.settings.jobs, self.meta.engine, self.leases, runner
        )
        service.on_queued = scheduler.poke
        return scheduler

    @cached_property
    def catalog(self) -> SharedCatalog:
        return SharedCatalog(self.registry)

    # -- life ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the repositories in service (a proxy's upstream connections), then `close`."""
        if "registry" in self.__dict__:
            for repo in self.registry.current.repos.values():
                close = getattr(repo, "close", None)
                if close is not None:
                    await close()
        if "blobs" in self.__dict__:
            await self.blobs.aclose()
        self.close()

    def close(self) -> None:
        close_audit = getattr(self.__dict__.get("audit"), "close", None)
        if close_audit is not None:
            close_audit()  # what is still queued for the database
        if "locks" in self.__dict__:
            self.locks.close()
        if "meta" in self.__dict__:
            self.meta.close()

    def __enter__(self) -> Portway:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
