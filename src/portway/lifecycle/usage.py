"""Storage used, per repository and per blob store, and per-repository quotas.

A blob counts once per scope: a layer shared by ten images of a repository counts once in
that repository, and once in the blob store however many repositories link it. Usage is
summed from the blob links when asked (`portway repo show`, and a push into a repository
that has a quota), so it is never out of step with what is stored.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, func, select

from portway.config import RepositoryConfig
from portway.db.schema import blob_links
from portway.db.store import MetadataStore
from portway.oci.errors import RegistryError

log = logging.getLogger("portway.lifecycle")


def repository_bytes(conn: Connection, repo_id: int) -> int:
    unique = (
        select(blob_links.c.digest, func.max(blob_links.c.size).label("size"))
        .where(blob_links.c.repo_id == repo_id)
        .group_by(blob_links.c.digest)
        .subquery()
    )
    return int(conn.execute(select(func.coalesce(func.sum(unique.c.size), 0))).scalar_one())


def store_bytes(conn: Connection) -> int:
    unique = (
        select(blob_links.c.digest, func.max(blob_links.c.size).label("size"))
        .group_by(blob_links.c.digest)
        .subquery()
    )
    return int(conn.execute(select(func.coalesce(func.sum(unique.c.size), 0))).scalar_one())


def _linked(conn: Connection, repo_id: int, digest: str) -> bool:
    stmt = (
        select(blob_links.c.size)
        .where(blob_links.c.repo_id == repo_id, blob_links.c.digest == digest)
        .limit(1)
    )
    return conn.execute(stmt).first() is not None


async def check_quota(
    meta: MetadataStore, cfg: RepositoryConfig, repo_id: int, digest: str, size: int
) -> None:
    """Refuse a blob that would take the repository over its `quota_bytes` (nothing of it is
    linked, so nothing is counted); log once it crosses its warning threshold."""
    if cfg.quota_bytes is None:
        return

    def read(conn: Connection) -> tuple[int, bool]:
        return repository_bytes(conn, repo_id), _linked(conn, repo_id, digest)

    used, already = await meta._read(read)
    if already:
        return
    after = used + size
    if after > cfg.quota_bytes:
        raise RegistryError(
            "DENIED",
            f"repository {cfg.name!r} is over its quota: this blob of {size} bytes would take "
            f"it to {after} bytes, above quota_bytes = {cfg.quota_bytes} ({used} bytes used); "
            "delete images (then portway gc) or raise the quota",
        )
    threshold = cfg.quota_warning * cfg.quota_bytes
    if used <= threshold < after:
        log.warning(
            "repository %s uses %d of its %d quota bytes (above quota_warning = %.2f)",
            cfg.name,
            after,
            cfg.quota_bytes,
            cfg.quota_warning,
        )


def usage_of(meta: MetadataStore, repo_id: int, cfg: RepositoryConfig) -> dict[str, object]:
    """What `portway repo show` prints under "usage" (not for a serving event loop)."""
    used = meta.read_now(lambda conn: repository_bytes(conn, repo_id))
    out: dict[str, object] = {
        "bytes": used,
        "blob_store_bytes": meta.read_now(store_bytes),
    }
    if cfg.quota_bytes is not None:
        out["quota_bytes"] = cfg.quota_bytes
        out["quota_used"] = round(used / cfg.quota_bytes, 4) if cfg.quota_bytes else 1.0
        out["over_warning"] = used > cfg.quota_warning * cfg.quota_bytes
    return out
