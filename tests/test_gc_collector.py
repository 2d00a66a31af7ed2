"""Online garbage collection over the real stores, on SQLite and on PostgreSQL: what one pass
deletes (the dry run's set equals the run's), what it leaves (shared layers, tagged images,
index children, referrers of a present subject, held blobs), and the compare-and-set races
with a push, interleaved step by step."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gc_support import AGED, HOLD, OCI_INDEX, World, body, open_world
from portway.db.lifecycle import DELETING, GONE, LIVE, blob_states
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage.blobstore import BlobStore
from push_support import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'portway.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    w = open_world(url, tmp_path)
    yield w
    w.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def same_as_dry_run(w: World) -> set[tuple[str, ...]]:
    dry = await w.gc(dry_run=True)
    real = await w.gc()
    assert dry.deleted() == real.deleted()
    assert dry.bytes_freed == real.bytes_freed
    return real.deleted()


def state(w: World, digest: str) -> str | None:
    row = (
        w.meta._conn()
        .execute(select(blob_states.c.state).where(blob_states.c.digest == digest))
        .first()
    )
    return None if row is None else str(row[0])


def test_an_upload_nothing_references_goes_after_the_hold(world: World) -> None:
    async def scenario() -> None:
        digest = await world.push_blob("app", b"orphan layer")
        assert (await world.gc()).deleted() == set()  # too young: a push may still need it
        await asyncio.sleep(AGED)
        gone = await same_as_dry_run(world)
        assert gone == {("link", "docker-hosted", "app", digest), ("blob", digest)}
        assert not world.blob_there(b"orphan layer")
        with pytest.raises(RegistryError) as err:
            await world.repo.stat_blob("app", Digest.parse(digest))
        assert err.value.code == "BLOB_UNKNOWN"
        assert state(world, digest) == GONE
        assert (await world.gc()).deleted() == set()  # nothing left to do

    run(scenario())


def test_deleting_an_image_frees_its_own_layers_not_shared_ones(world: World) -> None:
    async def scenario() -> None:
        a = await world.push_image("app", "v1", [b"layer a", b"shared"])
        await world.push_image("app", "v2", [b"layer b", b"shared"])
        await asyncio.sleep(AGED)
        assert await same_as_dry_run(world) == set()  # every upload is referenced
        await world.repo.delete_manifest("app", a)
        await asyncio.sleep(AGED)
        gone = await same_as_dry_run(world)
        config_a = sha256(json.dumps({"layers": 2}).encode())
        assert {g for g in gone if g[0] == "blob"} == {("blob", sha256(b"layer a"))}
        # both images have the same config bytes: only its link... is still referenced by v2
        assert ("link", "docker-hosted", "app", config_a) not in gone
        assert world.blob_there(b"shared") and world.blob_there(b"layer b")
        assert not world.blob_there(b"layer a")

    run(scenario())


def test_a_deleted_tag_frees_its_manifest_once_no_other_tag_points_at_it(world: World) -> None:
    async def scenario() -> None:
        digest = await world.push_image("app", "v1", [b"tagged twice"])
        await world.repo.put_manifest("app", "latest", await _body(world, digest), OCI_MANIFEST)
        await world.repo.delete_manifest("app", "v1")
        await asyncio.sleep(AGED)
        assert await same_as_dry_run(world) == set()  # "latest" still points at it
        await world.repo.delete_manifest("app", "latest")
        await asyncio.sleep(AGED)
        assert await same_as_dry_run(world) == {("manifest", "docker-hosted", "app", digest)}
        await asyncio.sleep(AGED)  # its blobs are candidates of the next pass
        gone = await same_as_dry_run(world)
        assert ("blob", sha256(b"tagged twice")) in gone

    run(scenario())


def test_an_index_takes_its_children_and_referrers_with_it(world: World) -> None:
    async def scenario() -> None:
        amd = await world.push_image("app", None, [b"amd64 layer"], b'{"a":"amd64"}')
        arm = await world.push_image("app", None, [b"arm64 layer"], b'{"a":"arm64"}')
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": len(await _body(world, d))}
                for d in (amd, arm)
            ],
        }
        raw = json.dumps(index).encode()
        idx, _ = await world.repo.put_manifest("app", "multi", raw, OCI_INDEX)
        empty = b"{}"
        await world.push_blob("app", empty)
        sig = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(empty),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(empty),
                    "size": 2,
                }
            ],
            "subject": {"mediaType": OCI_INDEX, "digest": idx, "size": len(raw)},
        }
        sig_raw = json.dumps(sig).encode()
        referrer, _ = await world.repo.put_manifest("app", sha256(sig_raw), sig_raw, OCI_MANIFEST)
        await world.repo.delete_manifest("app", "multi")
        await asyncio.sleep(AGED)
        assert await same_as_dry_run(world) == {("manifest", "docker-hosted", "app", idx)}
        await asyncio.sleep(AGED)
        gone = await same_as_dry_run(world)
        assert {g for g in gone if g[0] == "manifest"} == {
            ("manifest", "docker-hosted", "app", d) for d in (amd, arm, referrer)
        }
        await asyncio.sleep(AGED)
        gone = await same_as_dry_run(world)
        assert ("blob", sha256(b"amd64 layer")) in gone and ("blob", sha256(empty)) in gone

    run(scenario())


async def _body(w: World, digest: str) -> bytes:
    row = await w.meta.manifest_by_digest(w.repo.repo_id, "app", digest)
    assert row is not None
    return row.body


def test_a_blob_head_holds_a_candidate_until_the_manifest_arrives(world: World) -> None:
    async def scenario() -> None:
        layer = b"layer the client was told exists"
        digest = await world.push_blob("app", layer)
        await asyncio.sleep(AGED)
        await world.repo.stat_blob("app", Digest.parse(digest))  # HEAD: 200, held
        report = await world.gc()
        assert report.deleted() == set() and report.held == 1
        await world.push_image("app", "v1", [layer])  # the manifest PUT still finds it
        await asyncio.sleep(HOLD + 0.1)
        assert await same_as_dry_run(world) == set()
        assert world.blob_there(layer)

    run(scenario())


def test_a_push_claiming_a_blob_after_the_plan_keeps_it(world: World) -> None:
    """plan (the blob is garbage) -> a push links it again -> the pass executes: kept."""

    async def scenario() -> None:
        layer = b"pushed again"
        await world.push_blob("app", layer)
        await asyncio.sleep(AGED)
        plan = await world.collector().plan()
        assert sha256(layer) in plan.blobs
        await world.push_image("other", "v1", [layer])  # another image, same layer
        report = await world.collector().execute(plan)
        assert ("blob", sha256(layer)) not in report.deleted()
        assert world.blob_there(layer) and state(world, sha256(layer)) in (None, LIVE)
        assert await world.repo.stat_blob("other", Digest.parse(sha256(layer))) == len(layer)

    run(scenario())


class PausingBlobStore(BlobStore):
    """Deletes only when told: the collector stops with the blob marked `deleting`."""

    def __init__(self, inner: BlobStore) -> None:
        super().__init__(inner.backend, sessions=inner.sessions, spool=inner.spool)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def delete(self, digest: Digest) -> None:
        self.entered.set()
        await self.release.wait()
        await super().delete(digest)


def test_a_push_during_the_deletion_waits_and_revives_the_blob(world: World) -> None:
    """marked deleting -> a push claims the blob (waits) -> bytes deleted, gone -> the push
    revives it and uploads the bytes again: linked, present, live."""

    async def scenario() -> None:
        layer = b"deleted while pushed"
        digest = await world.push_blob("app", layer)
        await asyncio.sleep(AGED)
        pausing = PausingBlobStore(world.blobs)
        collector = world.collector()
        collector.blobs = pausing
        gc = asyncio.create_task(collector.run())
        await asyncio.wait_for(pausing.entered.wait(), 10)
        assert state(world, digest) == DELETING
        push = asyncio.create_task(
            world.repo.push_blob("app", body(layer), Digest.parse(digest), len(layer))
        )
        await asyncio.sleep(0.3)
        assert not push.done()  # waiting for the deletion's outcome
        pausing.release.set()
        report = await gc
        assert ("blob", digest) in report.deleted()
        assert await push == len(layer)
        assert world.blob_there(layer) and state(world, digest) == LIVE
        assert await world.repo.stat_blob("app", Digest.parse(digest)) == len(layer)

    run(scenario())


def test_a_manifest_put_s_reference_check_then_gc_then_its_write(world: World) -> None:
    """A manifest PUT checks its references (blobs uploaded long ago; then an index's child
    whose tag was deleted: aged candidates each time) -> a pass runs right then -> the PUT
    writes: nothing it checked is deleted, and the image is complete."""

    async def scenario() -> None:
        guard = world.repo.guard
        checked = guard.hold
        reports = []

        async def hold_then_gc(repo_id: int, image: str, digests: list[str]) -> None:
            await checked(repo_id, image, digests)
            reports.append(await world.gc())  # between the check and the write

        config, layer = b'{"c":2}', b"uploaded long ago, referenced by no manifest yet"
        await world.push_blob("app", config)
        await world.push_blob("app", layer)
        await asyncio.sleep(AGED)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
        guard.hold = hold_then_gc  # type: ignore[method-assign]
        image, _ = await world.repo.put_manifest(
            "app", "v1", json.dumps(doc).encode(), OCI_MANIFEST
        )
        guard.hold = checked  # type: ignore[method-assign]

        child = await world.push_image("app", "child", [b"child layer"], b'{"c":1}')
        await world.repo.delete_manifest("app", "child")  # by tag: the child is a candidate
        await asyncio.sleep(AGED)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": child, "size": len(await _body(world, child))}
            ],
        }
        guard.hold = hold_then_gc  # type: ignore[method-assign]
        idx, _ = await world.repo.put_manifest(
            "app", "multi", json.dumps(index).encode(), OCI_INDEX
        )
        guard.hold = checked  # type: ignore[method-assign]

        assert [(r.deleted(), r.held) for r in reports] == [(set(), 2), (set(), 1)]
        assert world.blob_there(layer) and world.blob_there(b"child layer")
        await asyncio.sleep(HOLD + 0.1)  # the holds run out: referenced now, still kept
        assert await same_as_dry_run(world) == set()
        for digest in (image, idx, child):
            assert await world.meta.manifest_by_digest(world.repo.repo_id, "app", digest)
        assert await world.repo.stat_blob("app", Digest.parse(sha256(layer))) == len(layer)

    run(scenario())
