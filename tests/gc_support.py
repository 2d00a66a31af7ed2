"""Helpers for the garbage-collection tests: a hosted repository over real stores (SQLite or
PostgreSQL metadata, a filesystem blob store), images pushed through its own methods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from portway.config import RepositoryConfig
from portway.db.schema import metadata, schema_version
from portway.db.store import MetadataStore, open_metadata
from portway.lifecycle.collector import Collector, Report
from portway.lifecycle.guard import Guard
from portway.oci.digest import Digest
from portway.repos.hosted import HostedRepository
from portway.storage.blobstore import BlobStore
from portway.storage.filesystem import FilesystemBackend
from push_support import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256

HOLD = 0.4  # seconds: gc_hold in these tests
MARGIN = 0.05
AGED = HOLD + MARGIN + 0.1  # wait this long and every candidate so far is old enough
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass
class World:
    meta: MetadataStore
    blobs: BlobStore
    repo: HostedRepository
    root: Path

    def collector(self) -> Collector:
        return Collector(self.meta, self.blobs, HOLD, MARGIN)

    async def gc(self, dry_run: bool = False) -> Report:
        return await self.collector().run(dry_run=dry_run)

    async def push_blob(self, image: str, data: bytes) -> str:
        digest = sha256(data)
        await self.repo.push_blob(image, body(data), Digest.parse(digest), len(data))
        return digest

    async def push_image(
        self, image: str, tag: str | None, layers: list[bytes], config: bytes | None = None
    ) -> str:
        config = config if config is not None else json.dumps({"layers": len(layers)}).encode()
        for data in [config, *layers]:
            await self.push_blob(image, data)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)} for x in layers
            ],
        }
        raw = json.dumps(doc).encode()
        digest, _ = await self.repo.put_manifest(image, tag or sha256(raw), raw, OCI_MANIFEST)
        return digest

    def blob_there(self, data: bytes) -> bool:
        digest = sha256(data)
        path = self.root / "storage" / "blobs" / "sha256" / digest[7:9] / digest[7:]
        return path.exists()

    def close(self) -> None:
        self.meta.close()


def open_world(url: str, root: Path) -> World:
    meta = open_metadata(url)
    with meta.engine.begin() as conn:  # a PostgreSQL database is shared by the test module
        for table in reversed(metadata.sorted_tables):
            if table is not schema_version:
                conn.execute(table.delete())
    blobs = BlobStore(FilesystemBackend(root / "storage"))
    cfg = RepositoryConfig(name="docker-hosted", type="hosted")
    repo_id = meta.ensure_repository(cfg.name, cfg.type)
    repo = HostedRepository(cfg, repo_id, meta, blobs, Guard(meta, HOLD))
    return World(meta, blobs, repo, root)
