"""Online garbage collection (ADR 0025): one pass over the candidates, while serving.

A pass plans (portway.lifecycle.plan) and then executes in this order:

1. blob links no manifest of their image references (300 at a time, in a transaction that
   checks them again: the candidate row unchanged, no hold, no reference);
2. blobs no link is left for: marked `deleting` (compare-and-set on their state row), then
   candidates, links and holds are read again: if one appeared (a push claimed the blob
   meanwhile) the blob goes back to `live`; else its bytes are deleted through
   `BlobStore.delete` and it becomes `gone`;
3. manifests no tag, index or present subject needs; their blobs, children and referrers
   become candidates for a later pass (after `gc_hold`, like every new candidate).

Each step works in batches of a few set-based statements (one per batch, never one per
item) and deletes the bytes of a batch DELETE_CONCURRENCY at a time. A collector killed at
any point leaves a state the next pass finishes: a blob left `deleting` is resumed,
candidates stay until their item is decided. A pass asked to stop (`checkpoint`, looked at
before every batch) ends between two batches and reports what it deleted so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Connection, delete, select

from portway.db.dialect import Dialect
from portway.db.lifecycle import (
    BLOB,
    DELETING,
    GONE,
    LINK,
    LIVE,
    MANIFEST,
    blob_states,
    chunks,
    drop_blob_candidates,
    drop_candidates,
    forget_expired_holds,
    gc_candidates,
    gc_holds,
    held_keys,
    hold_key,
    match_keys,
    note_candidates_since,
    set_states,
)
from portway.db.schema import blob_links, manifest_refs, manifests, repositories
from portway.db.store import MetadataStore
from portway.lifecycle.plan import (
    HOLD_MARGIN,
    STALE_DELETING,
    Candidate,
    Key,
    Plan,
    make_plan,
    plan_links,
    plan_manifests,
)
from portway.oci.digest import Digest
from portway.storage.blobstore import BlobStore

DELETE_CONCURRENCY = 16  # blob deletes (and size look-ups) at once
LINK_BATCH = 300  # links or manifests per transaction
BLOB_BATCH = 300  # blobs marked, deleted and finished together
# Called before every batch with what the pass deleted so far (`deleted_blob_links`,
# `deleted_blobs`, `deleted_manifests`); True: stop there (a job stopped through the API).
Checkpoint = Callable[[Mapping[str, int]], Awaitable[bool]]


async def _go_on(_done: Mapping[str, int]) -> bool:
    return False


_Between = Callable[[str, int], Awaitable[bool]]  # (what, how many the last batch deleted)


@dataclass
class Report:
    dry_run: bool
    manifests: list[tuple[str, str, str]] = field(default_factory=list)  # repository, image, digest
    links: list[tuple[str, str, str]] = field(default_factory=list)
    blobs: list[tuple[str, int]] = field(default_factory=list)  # digest, bytes
    candidates: int = 0
    held: int = 0
    seconds: float = 0.0
    stopped: bool = False  # asked to stop: batches were left for the next pass

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

    async def execute(self, plan: Plan, checkpoint: Checkpoint = _go_on) -> Report:
        """Delete what `plan` found, each item checked again as it goes; before each batch
        `checkpoint()` may say to stop (what is left stays for the next pass)."""
        names = await self._repo_names()
        sizes = await self._sizes(plan.blobs)
        report = Report(dry_run=False, candidates=plan.candidates, held=plan.held)
        tally = {"deleted_blob_links": 0, "deleted_blobs": 0, "deleted_manifests": 0}

        async def between(kind: str, count: int) -> bool:
            tally[kind] += count
            return await checkpoint(dict(tally))

        links, report.stopped = await self._delete_links(plan, between)
        report.links = [_named(names, c) for c in links]
        if report.stopped:
            return report
        await self._forget(plan.drops)  # before the blobs: a dropped row needs none
        gone, report.stopped = await self._delete_blobs(plan, sizes, between)
        report.blobs = [(d, sizes.get(d, 0)) for d in gone]
        if report.stopped:
            return report
        manifests, report.stopped = await self._delete_manifests(plan, between)
        report.manifests = [_named(names, c) for c in manifests]
        return report

    async def _repo_names(self) -> dict[int, str]:
        rows = await self.meta._read(
            lambda conn: list(conn.execute(select(repositories.c.id, repositories.c.name)))
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def _sizes(self, blobs: dict[str, int | None]) -> dict[str, int]:
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def size_of(digest: str, size: int | None) -> tuple[str, int]:
            if size is not None:
                return digest, size
            async with limit:  # a HEAD per blob on S3: several at once
                return digest, await self.blobs.stat(Digest.parse(digest)) or 0

        return dict(await asyncio.gather(*(size_of(d, s) for d, s in blobs.items())))

    async def _batches(
        self,
        items: Sequence[Candidate],
        run: Callable[..., list[Candidate]],
        what: str,
        between: _Between,
    ) -> tuple[list[Candidate], bool]:
        """`run(conn, part=...)` in one write per `LINK_BATCH` of `items`, asking `between`
        before each whether to stop; returns what was deleted and whether it stopped."""
        done: list[Candidate] = []
        last = 0
        for part in chunks(items, LINK_BATCH):
            if await between(what, last):
                return done, True
            batch = await self.meta._write(partial(run, part=part))
            done += batch
            last = len(batch)
        return done, False

    # -- 1. links ----------------------------------------------------------------------
    async def _delete_links(self, plan: Plan, between: _Between) -> tuple[list[Candidate], bool]:
        """Per batch one transaction: lock, re-check (holds, references), compare-and-set
        drop of the candidate rows, delete the links, note their blobs; a few statements."""
        dialect = self.meta.dialect

        def run(conn: Connection, part: Sequence[Candidate]) -> list[Candidate]:
            dialect.lock_keys(conn, [hold_key(*c.key) for c in part])
            busy = held_keys(conn, [c.key for c in part], time.time())
            again = Plan(started=time.time())
            plan_links(conn, again, [c for c in part if c.key not in busy])
            still = [c for c, _ in again.links]
            # Only rows nobody renewed meanwhile (a push that linked the blob again).
            dropped = drop_candidates(conn, LINK, [(c.key, c.since) for c in still])
            gone = [c for c in still if c.key in dropped]
            cols = [blob_links.c.repo_id, blob_links.c.image, blob_links.c.digest]
            for chunk in chunks(gone):
                conn.execute(
                    delete(blob_links).where(match_keys(conn, cols, [c.key for c in chunk]))
                )
            # With the links, so a collector killed before step 2 leaves the blobs tracked.
            note_candidates_since(dialect, conn, [(0, "", c.digest, BLOB, c.since) for c in gone])
            return gone

        return await self._batches([c for c, _ in plan.links], run, "deleted_blob_links", between)

    # -- 2. blobs ----------------------------------------------------------------------
    async def _delete_blobs(
        self, plan: Plan, sizes: dict[str, int], between: _Between
    ) -> tuple[list[str], bool]:
        wanted: list[tuple[str, tuple[str, int] | None]] = [(d, None) for d in plan.blobs]
        wanted += [(d, (DELETING, g)) for d, g in plan.resume.items() if d not in plan.blobs]
        gone: list[str] = []
        last = 0
        for part in chunks(wanted, BLOB_BATCH):
            if await between("deleted_blobs", last):  # a batch is marked, deleted, finished
                return gone, True
            batch = await self._delete_blob_batch(part, sizes)
            gone += batch
            last = len(batch)
        return gone, False

    async def _delete_blob_batch(
        self, part: Sequence[tuple[str, tuple[str, int] | None]], sizes: dict[str, int]
    ) -> list[str]:
        dialect = self.meta.dialect

        def mark(conn: Connection) -> dict[str, int]:
            digests = [d for d, _ in part]
            states = _states(conn, digests)
            linked = _linked_digests(conn, digests)
            expect: dict[str, tuple[str, int] | None] = {}
            for digest, resume in part:
                state = states.get(digest)
                if resume is not None and state != resume:
                    continue
                if resume is None and state is not None and state[0] != LIVE:
                    continue
                if digest not in linked:
                    expect[digest] = state
            return set_states(dialect, conn, DELETING, expect, sizes)

        marked = await self.meta._write(mark)
        if not marked:
            return []
        # Read again once `deleting` is visible: a push that claimed the blob meanwhile is
        # seen here, or it sees `deleting` and waits for the outcome (guard.py).
        now = time.time()

        def needed(conn: Connection) -> dict[str, int]:
            busy = _linked_digests(conn, list(marked)) | _pending_digests(conn, list(marked), now)
            return {d: g for d, g in marked.items() if d in busy}

        back = await self.meta._read(needed)
        doomed = {d: g for d, g in marked.items() if d not in back}
        if back:
            expect_back = {d: (DELETING, g) for d, g in back.items()}
            await self.meta._write(lambda conn: set_states(dialect, conn, LIVE, expect_back))
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def remove(digest: str) -> None:
            async with limit:
                await self.blobs.delete(Digest.parse(digest))

        await asyncio.gather(*(remove(d) for d in doomed))

        def finish(conn: Connection) -> list[str]:
            expect = {d: (DELETING, g) for d, g in doomed.items()}
            out = sorted(set_states(dialect, conn, GONE, expect))
            drop_blob_candidates(conn, out)
            return out

        return await self.meta._write(finish)

    # -- 3. manifests ------------------------------------------------------------------
    async def _delete_manifests(
        self, plan: Plan, between: _Between
    ) -> tuple[list[Candidate], bool]:
        dialect = self.meta.dialect

        def run(conn: Connection, part: Sequence[Candidate]) -> list[Candidate]:
            dialect.lock_keys(conn, [hold_key(*c.key) for c in part])
            busy = held_keys(conn, [c.key for c in part], time.time())
            again = Plan(started=time.time())
            plan_manifests(conn, again, [c for c in part if c.key not in busy])
            dropped = drop_candidates(conn, MANIFEST, [(c.key, c.since) for c in again.manifests])
            gone = [c for c in again.manifests if c.key in dropped]
            _delete_manifest_rows(dialect, conn, gone)
            return gone

        return await self._batches(plan.manifests, run, "deleted_manifests", between)

    async def _forget(self, drops: list[Candidate]) -> None:
        def run(conn: Connection) -> None:
            by_kind: dict[str, list[tuple[Key, float]]] = {}
            for c in drops:
                by_kind.setdefault(c.kind, []).append((c.key, c.since))
            for kind, items in by_kind.items():
                drop_candidates(conn, kind, items)
            forget_expired_holds(conn, time.time())

        await self.meta._write(run)


def _delete_manifest_rows(dialect: Dialect, conn: Connection, gone: Sequence[Candidate]) -> None:
    """Delete these manifests; what they held becomes a candidate for a later pass."""
    now = time.time()
    for part in chunks(gone):
        keys = [c.key for c in part]
        rcols = [manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.manifest]
        mcols = [manifests.c.repo_id, manifests.c.image, manifests.c.digest]
        scols = [manifests.c.repo_id, manifests.c.image, manifests.c.subject]
        refs = conn.execute(
            select(*rcols[:2], manifest_refs.c.ref, manifest_refs.c.is_manifest).where(
                match_keys(conn, rcols, keys)
            )
        )
        rows = [(int(r[0]), str(r[1]), str(r[2]), MANIFEST if r[3] else LINK, now) for r in refs]
        referrers = conn.execute(select(*mcols).where(match_keys(conn, scols, keys)))
        rows += [(int(r[0]), str(r[1]), str(r[2]), MANIFEST, now) for r in referrers]
        note_candidates_since(dialect, conn, rows)
        conn.execute(delete(manifest_refs).where(match_keys(conn, rcols, keys)))
        conn.execute(delete(manifests).where(match_keys(conn, mcols, keys)))


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


def _named(names: dict[int, str], c: Candidate) -> tuple[str, str, str]:
    return (names.get(c.repo_id, str(c.repo_id)), c.image, c.digest)
