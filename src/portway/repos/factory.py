"""Build the repositories a configuration declares."""

from __future__ import annotations

from portway.config import ConfigError, Settings
from portway.db.store import MetadataStore
from portway.repos.base import Repository
from portway.repos.hosted import HostedRepository
from portway.storage.blobstore import BlobStore


def build_repositories(
    settings: Settings, meta: MetadataStore, blobs: BlobStore
) -> dict[str, Repository]:
    repos: dict[str, Repository] = {}
    for cfg in settings.repository:
        repo_id = meta.ensure_repository(cfg.name, cfg.type)
        if cfg.type == "hosted":
            repos[cfg.name] = HostedRepository(cfg, repo_id, meta, blobs)
        else:
            raise ConfigError(
                f"repository {cfg.name!r}: type {cfg.type!r} is not available in this build"
            )
    return repos
