"""What the web UI (and the admin API) ask of the life-cycle code while Portway serves:
the cleanup policies and the repositories that use them, a policy's dry run over the
repositories being served (file and API-made alike), and storage used per repository and
blob store (usage.py's counting: a blob once per repository, once in the store)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from portway.config import CleanupPolicyConfig, RepositoryConfig, Settings
from portway.db.schema import blob_links
from portway.db.store import MetadataStore
from portway.lifecycle.cleanup import Cleanup, CleanupReport
from portway.lifecycle.guard import Guard


@dataclass(frozen=True)
class PolicyView:
    policy: CleanupPolicyConfig
    repositories: list[str]

    @property
    def criteria(self) -> list[str]:
        """The policy's settings that are set, in the file's words."""
        p = self.policy
        out = []
        for key in ("images", "include", "exclude"):
            if getattr(p, key):
                out.append(f"{key} = {getattr(p, key)!r}")
        if p.protected:
            out.append(f"protected = {list(p.protected)!r}")
        for key in ("keep_last", "older_than_days", "not_pulled_days", "untagged_days",
                    "cache_expiry_days"):  # fmt: skip
            if getattr(p, key) is not None:
                out.append(f"{key} = {getattr(p, key)}")
        if p.keep_last is not None:
            out.append(f"order = {p.order!r}")
        return out


@dataclass(frozen=True)
class RepositoryUsage:
    name: str
    bytes: int
    quota_bytes: int | None
    quota_warning: float

    @property
    def quota_used(self) -> float | None:
        if self.quota_bytes is None:
            return None
        return self.bytes / self.quota_bytes if self.quota_bytes else 1.0

    @property
    def over_warning(self) -> bool:
        q = self.quota_bytes
        return q is not None and self.bytes > self.quota_warning * q


@dataclass(frozen=True)
class Usage:
    repositories: list[RepositoryUsage]
    store_bytes: int
    store_kind: str


def bytes_per_repository(conn: Connection) -> dict[int, int]:
    """repo id -> bytes its blob links hold, each blob once (usage.py's rule)."""
    unique = (
        select(blob_links.c.repo_id, blob_links.c.digest, func.max(blob_links.c.size).label("size"))
        .group_by(blob_links.c.repo_id, blob_links.c.digest)
        .subquery()
    )
    stmt = select(unique.c.repo_id, func.sum(unique.c.size)).group_by(unique.c.repo_id)
    return {int(r): int(b or 0) for r, b in conn.execute(stmt)}


class LifecycleService:
    def __init__(
        self,
        settings: Settings,
        meta: MetadataStore,
        definitions: Callable[[], Sequence[RepositoryConfig]],
        repo_ids: Callable[[], dict[str, int]],
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.definitions = definitions  # what is served now
        self.repo_ids = repo_ids  # name -> id of the served hosted and proxy repositories

    def policies(self) -> list[PolicyView]:
        users: dict[str, list[str]] = {}
        for d in self.definitions():
            for name in d.cleanup_policies:
                users.setdefault(name, []).append(d.name)
        return [PolicyView(p, sorted(users.get(p.name, []))) for p in self.settings.cleanup_policy]

    def policy(self, name: str) -> PolicyView | None:
        return next((v for v in self.policies() if v.policy.name == name), None)

    async def dry_run(self, policy: str | None) -> CleanupReport:
        """What `portway cleanup --dry-run [--policy NAME]` would remove now, over the
        repositories being served; deletes nothing."""
        ids = self.repo_ids()
        served = [d for d in self.definitions() if d.name in ids]
        settings = self.settings.model_copy(update={"repository": served})
        cleanup = Cleanup(settings, self.meta, Guard(self.meta, self.settings.server.gc_hold))
        cleanup.repo_id_of = lambda cfg: ids[cfg.name]
        return await cleanup.run(dry_run=True, policy=policy)

    async def usage(self) -> Usage:
        """Storage used now (one grouped read of every blob link, in a read thread)."""
        from portway.lifecycle.usage import store_bytes

        def read(conn: Connection) -> tuple[dict[int, int], int]:
            return bytes_per_repository(conn), store_bytes(conn)

        per_repo, total = await self.meta._read(read)
        ids = self.repo_ids()
        rows = [
            RepositoryUsage(d.name, per_repo.get(ids[d.name], 0), d.quota_bytes, d.quota_warning)
            for d in sorted(self.definitions(), key=lambda d: d.name)
            if d.name in ids
        ]
        return Usage(rows, total, self.settings.storage.type)
