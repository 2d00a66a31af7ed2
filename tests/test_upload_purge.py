"""Stale upload sessions are purged by the age of their data, not of their session row."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from portway.config import RepositoryConfig
from portway.db.store import MetadataStore
from portway.repos.hosted import HostedRepository
from portway.storage.blobstore import BlobStore
from portway.storage.filesystem import FilesystemBackend


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_purge_keeps_sessions_still_receiving_data(tmp_path: Path) -> None:
    async def scenario() -> None:
        meta = MetadataStore.open_sqlite(tmp_path / "portway.db")
        blobs = BlobStore(FilesystemBackend(tmp_path / "storage"))
        cfg = RepositoryConfig(name="docker-hosted", type="hosted")
        repo = HostedRepository(cfg, meta.ensure_repository(cfg.name, cfg.type), meta, blobs)
        old = await repo.start_upload("app")
        busy = await repo.start_upload("app")
        await repo.append_upload(busy, _body(b"x" * 10), 10)
        hour_ago = time.time() - 3600
        os.utime(tmp_path / "storage" / "uploads" / old.id, (hour_ago, hour_ago))
        # Both session rows are "old"; only one data file is.
        purged = await _purge_with_old_rows(repo, meta, max_age=60)
        assert purged == 1
        assert await meta.get_upload(old.id) is None
        assert not (tmp_path / "storage" / "uploads" / old.id).exists()
        state = await repo.upload_state("app", busy.id)
        assert state.offset == 10
        meta.close()

    asyncio.run(scenario())


async def _purge_with_old_rows(repo: HostedRepository, meta: MetadataStore, max_age: int) -> int:
    from sqlalchemy import update

    from portway.db.schema import uploads

    with meta.engine.begin() as conn:
        conn.execute(update(uploads).values(created=time.time() - 3600))
    return await repo.purge_uploads(max_age)


def test_leftover_spool_and_lock_files_are_purged_unless_in_use(tmp_path: Path) -> None:
    """A worker killed while a proxy fetched leaves its spool file, notice and lock file: they
    go once untouched for the session lifetime; a lock another worker holds stays."""
    from portway.upstream.crossworker import SpoolNotice, WorkerLock

    blobs = BlobStore(FilesystemBackend(tmp_path / "storage"))
    old = time.time() - 7200
    spool = blobs.spool_dir() / "spool-dead"
    spool.write_bytes(b"partial")
    fresh = blobs.spool_dir() / "spool-busy"
    fresh.write_bytes(b"growing")
    SpoolNotice(blobs.lock_dir(), "b-dead").publish(spool, 100)
    (blobs.lock_dir() / "b-dead.lock").write_bytes(b"")
    held = WorkerLock(blobs.lock_dir(), "b-held")
    assert held.try_acquire()
    for path in (spool, blobs.lock_dir() / "b-dead.spool", blobs.lock_dir() / "b-dead.lock"):
        os.utime(path, (old, old))
    os.utime(held.path, (old, old))

    assert asyncio.run(blobs.purge_leftovers(3600)) == 3
    assert not spool.exists() and fresh.exists()
    assert sorted(p.name for p in blobs.lock_dir().iterdir()) == ["b-held.lock"]
    held.release()


def test_purge_round_forgets_expired_refresh_tokens_and_stale_sessions(tmp_path: Path) -> None:
    """What the server's janitor runs every 10 minutes, in one round."""
    from sqlalchemy import update

    from portway.compose import Portway
    from portway.config import parse_settings
    from portway.db.schema import uploads
    from portway.http.auth import SecurityAuthorizer
    from portway.http.server import purge_once

    settings = parse_settings(
        {
            "server": {"data_dir": str(tmp_path / "data"), "upload_session_ttl": 60},
            "repository": [{"name": "docker-hosted", "type": "hosted"}],
        },
        environ={},
    )
    root = Portway(settings)
    meta, blobs = root.meta, root.blobs
    ctx = root.context()
    assert isinstance(ctx.authorizer, SecurityAuthorizer)  # security is on by default
    store = ctx.authorizer.auth.store
    store.ensure_admin(settings.server.data_dir)
    store.record_refresh("old", "admin", "docker-hosted", int(time.time()) - 10)
    store.record_refresh("live", "admin", "docker-hosted", int(time.time()) + 3600)
    repo = ctx.repos["docker-hosted"]
    assert isinstance(repo, HostedRepository)

    async def scenario() -> dict[str, int]:
        stale = await repo.start_upload("img")
        hour_ago = time.time() - 3600
        os.utime(settings.server.data_dir / "storage" / "uploads" / stale.id, (hour_ago, hour_ago))
        with meta.engine.begin() as conn:  # the session row is an hour old too
            conn.execute(update(uploads).values(created=hour_ago))
        return await purge_once(ctx, blobs)

    gone = asyncio.run(scenario())
    assert gone == {"uploads": 1, "leftovers": 0, "refresh_tokens": 1}
    assert store.refresh_valid("live", "admin", "docker-hosted")
    meta.close()
