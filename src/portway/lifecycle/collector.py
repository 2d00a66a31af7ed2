"""Online garbage collection (ADR 0025): one pass over the candidates, while serving.

A pass plans (portway.lifecycle.plan) and then executes in this order:

1. blob links no manifest of their image references (each deleted in a transaction that
   checks again: the candidate row unchanged, no hold, no reference);
2. blobs no link is left for: marked `deleting` (compare-and-set on their state row), then
   candidates, links and holds are read again: if one appeared (a push claimed the blob
   meanwhile) the blob goes back to `live`; else its bytes are deleted through
   `BlobStore.delete` and it becomes `gone`;
3. manifests no tag, index or present subject needs; their blobs, children and referrers
   become candidates for a later pass (after `gc_hold`, like every new candidate).

A collector killed at any point leaves a state the next pass finishes: a blob left
`deleting` is resumed, candidates stay until their item is decided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Connection, delete, func, select, tuple_

from portway.db.lifecycle import (
    BLOB,
    DELETING,
    GONE,
    LINK,
    LIVE,
    MANIFEST,
    blob_states,
    drop_candidate,
    forget_expired_holds,
    gc_candidates,
    gc_holds,
    held,
    hold_key,
    note_candidates,
    set_state,
)
from portway.db.schema import blob_links, manifest_refs, manifests, repositories
from portway.db.store import MetadataStore
from portway.lifecycle.plan import (
    HOLD_MARGIN,
    STALE_DELETING,
    Candidate,
    Key,
    Plan,
    chunks,
    make_plan,
    manifest_is_garbage,
)
from portway.oci.digest import Digest
from portway.storage.blobstore import BlobStore

DELETE_CONCURRENCY = 16


@dataclass
class Report:
    dry_run: bool
    manifests: list[tuple[str, str, str]] = field(default_factory=list)  # repository, image, digest
    links: list[tuple[str, str, str]] = field(default_factory=list)
    blobs: list[tuple[str, int]] = field(default_factory=list)  # digest, bytes
    candidates: int = 0
    held: int = 0
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs)

    def deleted(self) -> set[tuple[str, ...]]:
        """Everything this pass deleted (or would): for comparing a dry run with a run."""
        return (
            {("manifest", *m) for m in self.manifests}
            | {("link", *link) for link in self.links}
            | {("blob", d) for d, _ in self.blobs}
        )


class Collector:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        hold: float,
        margin: float = HOLD_MARGIN,
        stale: float = STALE_DELETING,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.hold = hold
        self.margin = margin
        self.stale = stale  # a blob `deleting` this long is a killed collector's: resumed

    async def plan(self) -> Plan:
        def read() -> Plan:
            with self.meta.read_engine.connect() as conn, self.meta.dialect.snapshot(conn):
                return make_plan(conn, self.hold, self.margin, self.stale)

        return await asyncio.to_thread(read)

    async def run(self, dry_run: bool = False) -> Report:
        started = time.monotonic()
        plan = await self.plan()
        report = await (self.describe(plan) if dry_run else self.execute(plan))
        report.seconds = time.monotonic() - started
        return report

    async def describe(self, plan: Plan) -> Report:
        """What executing `plan` would delete, on a registry nobody changes meanwhile."""
        names = await self._repo_names()
        sizes = await self._sizes(plan.blobs)
        report = Report(dry_run=True, candidates=plan.candidates, held=plan.held)
        report.links = [_named(names, c) for c, _ in plan.links]
        report.blobs = [(d, sizes[d]) for d in plan.blobs]
        report.blobs += [(d, 0) for d in plan.resume if d not in plan.blobs]
        report.manifests = [_named(names, c) for c in plan.manifests]
        return report

    async def execute(self, plan: Plan) -> Report:
        """Delete what `plan` found, each item checked again as it goes."""
        names = await self._repo_names()
        sizes = await self._sizes(plan.blobs)
        report = Report(dry_run=False, candidates=plan.candidates, held=plan.held)
        report.links = [_named(names, c) for c in await self._delete_links(plan)]
        await self._forget(plan.drops)  # before the blobs: a dropped row needs none
        gone = await self._delete_blobs(plan, sizes)
        report.blobs = [(d, sizes.get(d, 0)) for d in gone]
        report.manifests = [_named(names, c) for c in await self._delete_manifests(plan)]
        return report

    async def _repo_names(self) -> dict[int, str]:
        rows = await self.meta._read(
            lambda conn: list(conn.execute(select(repositories.c.id, repositories.c.name)))
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def _sizes(self, blobs: dict[str, int | None]) -> dict[str, int]:
        out: dict[str, int] = {}
        for digest, size in blobs.items():
            if size is None:
                size = await self.blobs.stat(Digest.parse(digest)) or 0
            out[digest] = size
        return out

    # -- 1. links ----------------------------------------------------------------------
    async def _delete_links(self, plan: Plan) -> list[Candidate]:
        dialect = self.meta.dialect
        done: list[Candidate] = []

        def run(conn: Connection, part: Sequence[tuple[Candidate, int]]) -> list[Candidate]:
            dialect.lock_keys(conn, [hold_key(*c.key) for c, _ in part])
            busy = _held_or_referenced(conn, [c for c, _ in part], time.time())
            out = []
            for c, _size in part:
                if c.key in busy:
                    continue
                if not drop_candidate(conn, c.key, LINK, c.since):
                    continue  # renewed meanwhile (a push linked it again)
                conn.execute(
                    delete(blob_links).where(
                        blob_links.c.repo_id == c.repo_id,
                        blob_links.c.image == c.image,
                        blob_links.c.digest == c.digest,
                    )
                )
                # With the link, so a collector killed before step 2 leaves the blob tracked.
                note_candidates(dialect, conn, [(0, "", c.digest, BLOB)], c.since)
                out.append(c)
            return out

        for part in chunks(plan.links, 200):
            done += await self.meta._write(partial(run, part=part))
        return done

    # -- 2. blobs ----------------------------------------------------------------------
    async def _delete_blobs(self, plan: Plan, sizes: dict[str, int]) -> list[str]:
        wanted: list[tuple[str, tuple[str, int] | None]] = [(d, None) for d in plan.blobs]
        wanted += [(d, (DELETING, g)) for d, g in plan.resume.items() if d not in plan.blobs]
        gone: list[str] = []
        for part in chunks(wanted, 200):
            gone += await self._delete_blob_batch(part, sizes)
        return gone

    async def _delete_blob_batch(
        self, part: Sequence[tuple[str, tuple[str, int] | None]], sizes: dict[str, int]
    ) -> list[str]:
        dialect = self.meta.dialect

        def mark(conn: Connection) -> dict[str, int]:
            marked: dict[str, int] = {}
            digests = [d for d, _ in part]
            states = _states(conn, digests)
            linked = _linked_digests(conn, digests)
            for digest, resume in part:
                state = states.get(digest)
                if resume is not None and state != resume:
                    continue
                if resume is None and state is not None and state[0] != LIVE:
                    continue
                if digest in linked:
                    continue
                new = set_state(dialect, conn, digest, DELETING, state, sizes.get(digest))
                if new is not None:
                    marked[digest] = new
            return marked

        marked = await self.meta._write(mark)
        # Read again once `deleting` is visible: a push that claimed the blob meanwhile is
        # seen here, or it sees `deleting` and waits for the outcome (guard.py).
        now = time.time()

        def needed(conn: Connection) -> dict[str, int]:
            busy = _linked_digests(conn, list(marked)) | _pending_digests(conn, list(marked), now)
            return {d: g for d, g in marked.items() if d in busy}

        back = await self.meta._read(needed)
        doomed = {d: g for d, g in marked.items() if d not in back}

        def revive(conn: Connection) -> None:
            for d, g in back.items():
                set_state(dialect, conn, d, LIVE, (DELETING, g))

        if back:
            await self.meta._write(revive)
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def remove(digest: str) -> None:
            async with limit:
                await self.blobs.delete(Digest.parse(digest))

        await asyncio.gather(*(remove(d) for d in doomed))

        def finish(conn: Connection) -> list[str]:
            out = []
            for digest, generation in doomed.items():
                if set_state(dialect, conn, digest, GONE, (DELETING, generation)) is not None:
                    drop_candidate(conn, (0, "", digest), BLOB)
                    out.append(digest)
            return out

        return await self.meta._write(finish)

    # -- 3. manifests ------------------------------------------------------------------
    async def _delete_manifests(self, plan: Plan) -> list[Candidate]:
        dialect = self.meta.dialect
        done: list[Candidate] = []
        for c in plan.manifests:

            def run(conn: Connection, c: Candidate = c) -> bool:
                dialect.lock_keys(conn, [hold_key(*c.key)])
                if held(conn, *c.key, time.time()) or not manifest_is_garbage(conn, c.key):
                    return False
                if not drop_candidate(conn, c.key, MANIFEST, c.since):
                    return False
                _delete_manifest(dialect, conn, c)
                return True

            if await self.meta._write(run):
                done.append(c)
        return done

    async def _forget(self, drops: list[Candidate]) -> None:
        def run(conn: Connection) -> None:
            for c in drops:
                drop_candidate(conn, c.key, c.kind, c.since)
            forget_expired_holds(conn, time.time())

        await self.meta._write(run)


def _delete_manifest(dialect: object, conn: Connection, c: Candidate) -> None:
    """Delete one manifest; what it held becomes a candidate for a later pass."""
    where = (manifest_refs.c.repo_id == c.repo_id, manifest_refs.c.image == c.image)
    refs = list(
        conn.execute(
            select(manifest_refs.c.ref, manifest_refs.c.is_manifest).where(
                *where, manifest_refs.c.manifest == c.digest
            )
        )
    )
    rows = [(c.repo_id, c.image, str(r), MANIFEST if m else LINK) for r, m in refs]
    rows += [
        (c.repo_id, c.image, str(r[0]), MANIFEST)
        for r in conn.execute(
            select(manifests.c.digest).where(
                manifests.c.repo_id == c.repo_id,
                manifests.c.image == c.image,
                manifests.c.subject == c.digest,
            )
        )
    ]
    note_candidates(dialect, conn, rows, time.time())  # type: ignore[arg-type]
    conn.execute(delete(manifest_refs).where(*where, manifest_refs.c.manifest == c.digest))
    conn.execute(
        delete(manifests).where(
            manifests.c.repo_id == c.repo_id,
            manifests.c.image == c.image,
            manifests.c.digest == c.digest,
        )
    )


def _referenced(conn: Connection, c: Candidate) -> bool:
    return (
        conn.execute(
            select(manifest_refs.c.manifest)
            .where(
                manifest_refs.c.repo_id == c.repo_id,
                manifest_refs.c.image == c.image,
                manifest_refs.c.ref == c.digest,
            )
            .limit(1)
        ).first()
        is not None
    )


def _held_or_referenced(conn: Connection, part: Sequence[Candidate], now: float) -> set[Key]:
    keys = [c.key for c in part]
    out: set[Key] = set()
    for chunk in chunks(keys):
        out |= {
            (int(r[0]), str(r[1]), str(r[2]))
            for r in conn.execute(
                select(gc_holds.c.repo_id, gc_holds.c.image, gc_holds.c.digest).where(
                    tuple_(gc_holds.c.repo_id, gc_holds.c.image, gc_holds.c.digest).in_(chunk),
                    gc_holds.c.until > now,
                )
            )
        }
        out |= {
            (int(r[0]), str(r[1]), str(r[2]))
            for r in conn.execute(
                select(manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref)
                .where(
                    tuple_(manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref).in_(
                        chunk
                    )
                )
                .distinct()
            )
        }
    return out


def _states(conn: Connection, digests: Sequence[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for chunk in chunks(list(digests)):
        for d, state, generation in conn.execute(
            select(blob_states.c.digest, blob_states.c.state, blob_states.c.generation).where(
                blob_states.c.digest.in_(chunk)
            )
        ):
            out[str(d)] = (str(state), int(generation))
    return out


def _linked_digests(conn: Connection, digests: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for chunk in chunks(list(digests)):
        stmt = select(blob_links.c.digest).where(blob_links.c.digest.in_(chunk)).distinct()
        out |= {str(r[0]) for r in conn.execute(stmt)}
    return out


def _pending_digests(conn: Connection, digests: Sequence[str], now: float) -> set[str]:
    """Digests a link candidate or a live hold may still need."""
    out: set[str] = set()
    for chunk in chunks(list(digests)):
        out |= {
            str(r[0])
            for r in conn.execute(
                select(gc_candidates.c.digest)
                .where(gc_candidates.c.digest.in_(chunk), gc_candidates.c.kind == LINK)
                .distinct()
            )
        }
        out |= {
            str(r[0])
            for r in conn.execute(
                select(gc_holds.c.digest)
                .where(gc_holds.c.digest.in_(chunk), gc_holds.c.until > now)
                .distinct()
            )
        }
    return out


def _link_count(conn: Connection, digest: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(blob_links).where(blob_links.c.digest == digest)
        ).scalar_one()
    )


def _named(names: dict[int, str], c: Candidate) -> tuple[str, str, str]:
    return (names.get(c.repo_id, str(c.repo_id)), c.image, c.digest)
