"""Build the repositories a configuration declares: leaves first, then groups over them."""

from __future__ import annotations

from collections.abc import Mapping

from portway.config import Settings
from portway.coordination.interfaces import Locks
from portway.db.store import MetadataStore
from portway.lifecycle.guard import Guard
from portway.repos.base import Repository
from portway.repos.group import GroupRepository, resolution_order
from portway.repos.hosted import HostedRepository
from portway.repos.proxy import ProxyRepository
from portway.storage.blobstore import BlobStore


def build_repositories(
    settings: Settings,
    meta: MetadataStore,
    blobs: BlobStore,
    reuse: Mapping[str, Repository] | None = None,
    locks: Locks | None = None,
) -> dict[str, Repository]:
    """`reuse`: repositories already in service (registry.py); a hosted or proxy one whose
    definition is unchanged is kept as it is, with its connections and caches. Groups are
    always made again (they hold nothing but their members). `locks`: single flight of the
    proxy repositories (flock in the blob store's lock folder when None)."""
    repos: dict[str, Repository] = {}
    guard = Guard(meta, settings.server.gc_hold)
    for cfg in settings.repository:
        repo_id = meta.ensure_repository(cfg.name, cfg.type)
        old = (reuse or {}).get(cfg.name)
        if cfg.type != "group" and old is not None and old.config == cfg:
            repos[cfg.name] = old
        elif cfg.type == "hosted":
            repos[cfg.name] = HostedRepository(cfg, repo_id, meta, blobs, guard)
        elif cfg.type == "proxy":
            repos[cfg.name] = ProxyRepository(cfg, repo_id, meta, blobs, locks, guard)
    members_of = {c.name: c.members for c in settings.repository if c.type == "group"}
    for cfg in settings.repository:
        if cfg.type != "group":
            continue
        leaves = [repos[name] for name in resolution_order(cfg.name, members_of)]
        writable = repos.get(cfg.writable_member) if cfg.writable_member else None
        assert writable is None or isinstance(writable, HostedRepository)
        repos[cfg.name] = GroupRepository(cfg, leaves, writable)
    return repos
