"""`portway fsck` over the real stores: a blob whose bytes changed on disk, a blob file gone,
a stored blob nobody links; `--repair` quarantines the corrupt blob, names the image that
needs it, and a push of that image stores good bytes again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gc_support import World, open_world
from portway.lifecycle.fsck import fsck
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from push_support import sha256


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = open_world(f"sqlite:///{tmp_path / 'portway.db'}", tmp_path)
    yield w
    w.close()


def blob_file(w: World, data: bytes) -> Path:
    digest = sha256(data)
    return w.root / "storage" / "blobs" / "sha256" / digest[7:9] / digest[7:]


def test_fsck_finds_corrupt_missing_and_orphan_blobs_and_repairs(world: World) -> None:
    async def scenario() -> None:
        good, bad, lost = b"good layer", b"bad layer!", b"lost layer"
        manifest = await world.push_image("app", "v1", [good, bad])
        await world.push_image("app", "v2", [lost])
        clean = await fsck(world.meta, world.blobs)
        assert clean.clean and clean.checked == 5, clean
        blob_file(world, bad).write_bytes(b"BAD LAYER!")  # same size, other bytes: bit rot
        blob_file(world, lost).unlink()
        orphan = b"stored, linked nowhere"
        path = blob_file(world, orphan)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orphan)
        report = await fsck(world.meta, world.blobs)
        assert not report.clean
        assert report.corrupt == [sha256(bad)]
        assert report.missing == [sha256(lost)]
        assert report.orphans == [sha256(orphan)]
        assert report.images_to_repush == [("docker-hosted", "app", manifest)]
        sampled = await fsck(world.meta, world.blobs, sample=1, seed=1)
        assert sampled.checked == 1
        repaired = await fsck(world.meta, world.blobs, repair=True)
        assert repaired.quarantined == [sha256(bad)]
        quarantined = world.root / "storage" / "quarantine" / "sha256" / sha256(bad)[7:]
        assert quarantined.read_bytes() == b"BAD LAYER!"
        with pytest.raises(RegistryError):  # never served again: HEAD says 404
            await world.repo.stat_blob("app", Digest.parse(sha256(bad)))
        await world.push_image("app", "v1", [good, bad])  # the re-push heals it
        assert blob_file(world, bad).read_bytes() == bad
        after = await fsck(world.meta, world.blobs)
        assert after.corrupt == [] and after.missing == [sha256(lost)]

    asyncio.run(scenario())
