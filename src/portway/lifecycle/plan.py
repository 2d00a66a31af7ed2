"""The collector's plan: what one pass deletes, decided from the candidates alone.

The dry run is this plan; the real run is this plan, executed in batches, each batch's
conditions checked again (by `plan_links` and `plan_manifests` themselves) in the
transaction that deletes it (portway.lifecycle.collector).
On a registry nobody writes to meanwhile, both give the same set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from portway.db.lifecycle import (
    BLOB,
    CHUNK,
    DELETING,
    GONE,
    LINK,
    MANIFEST,
    QUARANTINED,
    blob_states,
    chunks,
    gc_candidates,
    gc_holds,
    match_keys,
)
from portway.db.schema import blob_links, manifest_refs, manifests, tags

HOLD_MARGIN = 1.0  # seconds on top of gc_hold: an answer read just before a candidate appeared
STALE_DELETING = 60.0  # a blob left `deleting` this long ago by a killed collector is resumed
__all__ = ["CHUNK", "chunks"]  # re-exported for the collector

Key = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class Candidate:
    repo_id: int
    image: str
    digest: str
    kind: str
    since: float

    @property
    def key(self) -> Key:
        return (self.repo_id, self.image, self.digest)


@dataclass
class Plan:
    started: float
    manifests: list[Candidate] = field(default_factory=list)
    links: list[tuple[Candidate, int]] = field(default_factory=list)  # with the link's size
    blobs: dict[str, int | None] = field(default_factory=dict)  # digest -> size if known
    resume: dict[str, int] = field(default_factory=dict)  # digest -> generation (stale deleting)
    drops: list[Candidate] = field(default_factory=list)  # not garbage: forget the row
    held: int = 0
    candidates: int = 0


def _keys_in(
    conn: Connection, columns: Sequence[Any], keys: Sequence[Key], *extra: Any
) -> list[Any]:
    """Rows of `columns` (the first three match a key) for the keys given, in batches."""
    out: list[Any] = []
    for part in chunks(list(keys)):
        stmt = select(*columns).where(match_keys(conn, columns[:3], part), *extra)
        out.extend(conn.execute(stmt))
    return out


def make_plan(
    conn: Connection, hold: float, margin: float = HOLD_MARGIN, stale: float = STALE_DELETING
) -> Plan:
    now = time.time()
    plan = Plan(started=now)
    cutoff = now - hold - margin
    rows = [
        Candidate(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]))
        for r in conn.execute(
            select(
                gc_candidates.c.repo_id,
                gc_candidates.c.image,
                gc_candidates.c.digest,
                gc_candidates.c.kind,
                gc_candidates.c.since,
            )
            .where(gc_candidates.c.since < cutoff)
            .order_by(gc_candidates.c.since)
        )
    ]
    plan.candidates = len(rows)
    held = {
        (int(r[0]), str(r[1]), str(r[2]))
        for r in conn.execute(
            select(gc_holds.c.repo_id, gc_holds.c.image, gc_holds.c.digest).where(
                gc_holds.c.until > now
            )
        )
    }
    held_digests = {k[2] for k in held}
    links = [c for c in rows if c.kind == LINK]
    mans = [c for c in rows if c.kind == MANIFEST]
    blob_rows = [c for c in rows if c.kind == BLOB]
    for c in links + mans:
        if c.key in held:
            plan.held += 1
    free_links = [c for c in links if c.key not in held]
    plan_links(conn, plan, free_links)
    _plan_blobs(conn, plan, free_links, blob_rows, held_digests)
    plan_manifests(conn, plan, [c for c in mans if c.key not in held])
    for digest, generation in conn.execute(
        select(blob_states.c.digest, blob_states.c.generation).where(
            blob_states.c.state == DELETING, blob_states.c.updated < now - stale
        )
    ):
        plan.resume[str(digest)] = int(generation)
    return plan


def plan_links(conn: Connection, plan: Plan, links: Sequence[Candidate]) -> None:
    """Links no manifest references go to `plan.links`; the others to `plan.drops`."""
    keys = [c.key for c in links]
    cols = [blob_links.c.repo_id, blob_links.c.image, blob_links.c.digest, blob_links.c.size]
    sizes = {(int(r[0]), str(r[1]), str(r[2])): int(r[3]) for r in _keys_in(conn, cols, keys)}
    refcols = [manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref]
    referenced = {(int(r[0]), str(r[1]), str(r[2])) for r in _keys_in(conn, refcols, keys)}
    for c in links:
        if c.key in referenced:
            plan.drops.append(c)
        elif c.key in sizes:
            plan.links.append((c, sizes[c.key]))
        else:
            plan.drops.append(c)  # no such link (an upload that failed): only its blob may go


def _plan_blobs(
    conn: Connection,
    plan: Plan,
    links: list[Candidate],
    blob_rows: list[Candidate],
    held_digests: set[str],
) -> None:
    """A blob goes when no link of it stays after this pass, no other candidate or hold may
    still need it, and it is not deleted already."""
    leaving: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for c, size in plan.links:
        leaving[c.digest] = leaving.get(c.digest, 0) + 1
        sizes[c.digest] = size
    processed: dict[str, int] = {}
    for c in links:
        processed[c.digest] = processed.get(c.digest, 0) + 1
    digests = sorted(
        {c.digest for c, _ in plan.links}
        | {c.digest for c in plan.drops if c.kind == LINK}
        | {c.digest for c in blob_rows}
    )
    digests = [d for d in digests if d not in held_digests]
    if not digests:
        return
    counts: dict[str, int] = {}
    pending: dict[str, int] = {}
    states: dict[str, str] = {}
    for part in chunks(digests):
        for d, n in conn.execute(
            select(blob_links.c.digest, func.count())
            .where(blob_links.c.digest.in_(part))
            .group_by(blob_links.c.digest)
        ):
            counts[str(d)] = int(n)
        for d, n in conn.execute(
            select(gc_candidates.c.digest, func.count())
            .where(gc_candidates.c.digest.in_(part), gc_candidates.c.kind == LINK)
            .group_by(gc_candidates.c.digest)
        ):
            pending[str(d)] = int(n)
        for d, state in conn.execute(
            select(blob_states.c.digest, blob_states.c.state).where(blob_states.c.digest.in_(part))
        ):
            states[str(d)] = str(state)
    for d in digests:
        if counts.get(d, 0) - leaving.get(d, 0) > 0:
            continue
        if pending.get(d, 0) - processed.get(d, 0) > 0:
            continue  # another image's link of it is a candidate still held or too young
        if states.get(d) in (DELETING, GONE, QUARANTINED):
            continue
        plan.blobs[d] = sizes.get(d)
    for c in blob_rows:
        if c.digest not in plan.blobs:
            plan.drops.append(c)


def plan_manifests(conn: Connection, plan: Plan, mans: Sequence[Candidate]) -> None:
    """Manifests no tag, index or present subject needs go to `plan.manifests`."""
    keys = [c.key for c in mans]
    mcols = [manifests.c.repo_id, manifests.c.image, manifests.c.digest, manifests.c.subject]
    subjects = {(int(r[0]), str(r[1]), str(r[2])): r[3] for r in _keys_in(conn, mcols, keys)}
    tcols = [tags.c.repo_id, tags.c.image, tags.c.digest]
    tagged = {(int(r[0]), str(r[1]), str(r[2])) for r in _keys_in(conn, tcols, keys)}
    rcols = [manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref]
    parents = {
        (int(r[0]), str(r[1]), str(r[2]))
        for r in _keys_in(conn, rcols, keys, manifest_refs.c.is_manifest == 1)
    }
    subject_keys = [(k[0], k[1], s) for k, s in subjects.items() if s]
    present = {(int(r[0]), str(r[1]), str(r[2])) for r in _keys_in(conn, mcols[:3], subject_keys)}
    for c in mans:
        if c.key not in subjects or c.key in tagged or c.key in parents:
            plan.drops.append(c)
            continue
        subject = subjects[c.key]
        if subject and (c.repo_id, c.image, subject) in present:
            plan.drops.append(c)  # a referrer whose subject is still there
            continue
        plan.manifests.append(c)
