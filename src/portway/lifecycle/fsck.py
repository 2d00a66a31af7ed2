"""`portway fsck`: are the stored bytes and the metadata consistent?

Checks, through the stores only (any backend):

- every linked blob's bytes hash to its digest and have the recorded size (all of them with
  `full`, else a random sample of `sample`);
- every blob a manifest references is linked in its image and stored; every child an index
  lists is there;
- no blob is stored that no repository links and no collector candidate accounts for
  (an orphan).

With `repair`, a corrupt blob is copied to `quarantine/<algorithm>/<hex>` and removed from
its place (`BlobStore.delete`), its state set to quarantined, and the images whose manifests
need it are listed: HEAD answers 404 for it from then on, so pushing those images again
stores good bytes (the push revives the blob).

Asked to stop (`checkpoint`, looked at every HASH_BATCH blobs), a check ends early with what
it hashed so far (`stopped`); it changes nothing, so there is nothing to finish.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Connection, and_, select

from portway.db.lifecycle import QUARANTINED, gc_candidates, set_state, state_of
from portway.db.schema import blob_links, manifest_refs, manifests, repositories
from portway.db.store import MetadataStore
from portway.oci.digest import Digest
from portway.storage.blobstore import BlobStore

HASH_BATCH = 100  # blobs hashed between two looks at `checkpoint`


@dataclass
class FsckReport:
    checked: int = 0  # blobs whose bytes were hashed
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # linked or referenced, not stored
    unlinked: list[tuple[str, str, str]] = field(default_factory=list)  # repo, image, digest
    missing_children: list[tuple[str, str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    images_to_repush: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # repo, image, manifest
    stopped: bool = False  # asked to stop before every sampled blob was hashed

    @property
    def clean(self) -> bool:
        return not (
            self.corrupt or self.missing or self.unlinked or self.missing_children or self.orphans
        )


def _metadata(
    conn: Connection,
) -> tuple[dict[str, int], list[tuple[str, str, str]], list[tuple[str, str, str]], set[str]]:
    names = {
        int(r[0]): str(r[1]) for r in conn.execute(select(repositories.c.id, repositories.c.name))
    }
    sizes: dict[str, int] = {}
    for digest, size in conn.execute(select(blob_links.c.digest, blob_links.c.size)):
        sizes[str(digest)] = int(size)
    link_join = and_(
        blob_links.c.repo_id == manifest_refs.c.repo_id,
        blob_links.c.image == manifest_refs.c.image,
        blob_links.c.digest == manifest_refs.c.ref,
    )
    unlinked = [
        (names.get(int(r[0]), str(r[0])), str(r[1]), str(r[2]))
        for r in conn.execute(
            select(manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref)
            .select_from(manifest_refs.outerjoin(blob_links, link_join))
            .where(manifest_refs.c.is_manifest == 0, blob_links.c.digest.is_(None))
            .distinct()
        )
    ]
    child_join = and_(
        manifests.c.repo_id == manifest_refs.c.repo_id,
        manifests.c.image == manifest_refs.c.image,
        manifests.c.digest == manifest_refs.c.ref,
    )
    children = [
        (names.get(int(r[0]), str(r[0])), str(r[1]), str(r[2]))
        for r in conn.execute(
            select(manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref)
            .select_from(manifest_refs.outerjoin(manifests, child_join))
            .where(manifest_refs.c.is_manifest == 1, manifests.c.digest.is_(None))
            .distinct()
        )
    ]
    pending = {str(r[0]) for r in conn.execute(select(gc_candidates.c.digest).distinct())}
    return sizes, unlinked, children, pending


def _needing(conn: Connection, digest: str) -> list[tuple[str, str, str]]:
    stmt = (
        select(repositories.c.name, manifest_refs.c.image, manifest_refs.c.manifest)
        .select_from(manifest_refs.join(repositories, repositories.c.id == manifest_refs.c.repo_id))
        .where(manifest_refs.c.ref == digest)
        .distinct()
    )
    return [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(stmt)]


async def _hash(blobs: BlobStore, digest: Digest) -> tuple[str, int]:
    hasher = hashlib.new(digest.algorithm)
    size = 0
    async for chunk in blobs.read(digest):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


async def fsck(
    meta: MetadataStore,
    blobs: BlobStore,
    *,
    sample: int | None = None,
    repair: bool = False,
    seed: int | None = None,
    checkpoint: Callable[[], Awaitable[bool]] | None = None,
) -> FsckReport:
    report = FsckReport()
    sizes, report.unlinked, report.missing_children, pending = await meta._read(_metadata)
    digests = sorted(sizes)
    stored: set[str] = set()
    async for key in blobs.backend.list("blobs/"):
        parts = key.split("/")
        if len(parts) >= 4:
            stored.add(f"{parts[1]}:{parts[-1]}")
    report.missing = [d for d in digests if d not in stored]
    report.missing += sorted(
        {d for _, _, d in report.unlinked if d not in stored and d not in sizes}
    )
    report.orphans = sorted(d for d in stored if d not in sizes and d not in pending)
    present = [d for d in digests if d in stored]
    if sample is not None and sample < len(present):
        present = sorted(random.Random(seed).sample(present, sample))
    for n, text in enumerate(present):
        if checkpoint is not None and n % HASH_BATCH == 0 and await checkpoint():
            report.stopped = True
            break
        digest = Digest.parse(text)
        actual, size = await _hash(blobs, digest)
        report.checked += 1
        if actual != digest.hex or size != sizes[text]:
            report.corrupt.append(text)
    for text in report.corrupt:
        report.images_to_repush += await meta._read(partial(_needing, digest=text))
        if repair:
            await _quarantine(meta, blobs, text)
            report.quarantined.append(text)
    return report


async def _quarantine(meta: MetadataStore, blobs: BlobStore, text: str) -> None:
    digest = Digest.parse(text)
    await blobs.backend.copy(blobs.blob_key(digest), f"quarantine/{digest.algorithm}/{digest.hex}")
    dialect = meta.dialect

    def mark(conn: Connection) -> None:
        set_state(dialect, conn, text, QUARANTINED, state_of(conn, text))

    await meta._write(mark)
    await blobs.delete(digest)
