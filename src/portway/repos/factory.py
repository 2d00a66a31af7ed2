"""Build the repositories a configuration declares: leaves first, then groups over them."""

from __future__ import annotations

from portway.config import Settings
from portway.db.store import MetadataStore
from portway.repos.base import Repository
from portway.repos.group import GroupRepository, resolution_order
from portway.repos.hosted import HostedRepository
from portway.repos.proxy import ProxyRepository
from portway.storage.blobstore import BlobStore


def build_repositories(
    settings: Settings, meta: MetadataStore, blobs: BlobStore
) -> dict[str, Repository]:
    repos: dict[str, Repository] = {}
    for cfg in settings.repository:
        repo_id = meta.ensure_repository(cfg.name, cfg.type)
        if cfg.type == "hosted":
            repos[cfg.name] = HostedRepository(cfg, repo_id, meta, blobs)
        elif cfg.type == "proxy":
            repos[cfg.name] = ProxyRepository(cfg, repo_id, meta, blobs)
    members_of = {c.name: c.members for c in settings.repository if c.type == "group"}
    for cfg in settings.repository:
        if cfg.type != "group":
            continue
        meta.ensure_repository(cfg.name, cfg.type)
        leaves = [repos[name] for name in resolution_order(cfg.name, members_of)]
        writable = repos.get(cfg.writable_member) if cfg.writable_member else None
        assert writable is None or isinstance(writable, HostedRepository)
        repos[cfg.name] = GroupRepository(cfg, leaves, writable)
    return repos
