"""Tables of the storage life cycle (ADR 0025): garbage candidates, holds, blob states.

- `gc_candidates`: what may have become garbage, written when it may have (a manifest or tag
  deleted, a blob link removed, a blob linked by an upload or a mount that no manifest
  references yet). The collector reads these rows only, never the whole registry.
  kind "link": the blob link (repo_id, image, digest); "manifest": that manifest;
  "blob": the blob `digest` itself (repo_id 0, image "").
- `gc_holds`: an existence answer a client relies on (blob HEAD, mount, upload commit, the
  references a manifest PUT checked), recorded only when what it answered for is a candidate;
  the collector leaves held things alone until `until`.
- `blob_states`: a blob's deletion as a compare-and-set state change: live -> deleting -> gone,
  each step bumping `generation`. No row means live.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    or_,
    select,
    tuple_,
    update,
)

from portway.db.dialect import Dialect
from portway.db.schema import metadata

gc_candidates = Table(
    "gc_candidates",
    metadata,
    Column("repo_id", Integer, primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("since", Float, nullable=False),
)
Index("ix_gc_candidates_digest", gc_candidates.c.digest)
Index("ix_gc_candidates_since", gc_candidates.c.since)

gc_holds = Table(
    "gc_holds",
    metadata,
    Column("repo_id", Integer, primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("until", Float, nullable=False),
)
Index("ix_gc_holds_digest", gc_holds.c.digest)

blob_states = Table(
    "blob_states",
    metadata,
    Column("digest", String(160), primary_key=True),
    Column("state", String(8), nullable=False),  # live | deleting | gone | quarant
    Column("generation", BigInteger, nullable=False),
    Column("size", BigInteger),
    Column("updated", Float, nullable=False),
)

# When a manifest was last pulled (by tag or by digest), written in batches (guard.py), for
# the cleanup policies' not_pulled_days and a proxy cache's expiry by last use.
manifest_pulls = Table(
    "manifest_pulls",
    metadata,
    Column("repo_id", Integer, primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("last", Float, nullable=False),
)

LINK, MANIFEST, BLOB = "link", "manifest", "blob"
LIVE, DELETING, GONE, QUARANTINED = "live", "deleting", "gone", "quarant"

Key = tuple[int, str, str]  # (repo_id, image, digest)
CHUNK = 300  # keys per statement: one statement per batch, never one per item


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def match_keys(
    conn: Connection, columns: Sequence[Any], keys: Iterable[tuple[Any, ...]]
) -> ColumnElement[bool]:
    """Rows whose (repo_id, image, digest[, more]) `columns` equal one of `keys` (with a
    fourth column its value must match too: a compare-and-set), answered from the key's
    index on both databases. PostgreSQL: a row-value IN list (one parameter, compiled once).
    SQLite scans the whole table for that, so there it is one `repo_id = ? AND image = ? AND
    digest IN (...)` term per image, OR-ed."""
    if conn.dialect.name != "sqlite":
        return tuple_(*columns).in_([tuple(k) for k in keys])
    groups: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
    for key in keys:
        groups.setdefault((key[0], key[1]), []).append(tuple(key[2:]))
    terms = []
    for (repo_id, image), rest in groups.items():
        where = [columns[0] == repo_id, columns[1] == image]
        where.append(columns[2].in_(sorted({r[0] for r in rest})))
        if len(columns) > 3:
            where.append(tuple_(*columns[2:]).in_(rest))
        terms.append(and_(*where))
    return or_(*terms) if terms else false()


def hold_key(repo_id: int, image: str, digest: str) -> str:
    """What a hold and the collector's decision on the same thing serialise on (PostgreSQL
    advisory locks; SQLite's single write lock serialises them anyway)."""
    return f"gc:{repo_id}:{image}:{digest}"


def note_candidates(
    dialect: Dialect, conn: Connection, rows: Iterable[tuple[int, str, str, str]], since: float
) -> None:
    """Record (repo_id, image, digest, kind) as candidates from `since` (a newer event moves
    an existing row's clock forward: the collector waits a full hold after the last one)."""
    note_candidates_since(dialect, conn, [(*row, since) for row in rows])


def note_candidates_since(
    dialect: Dialect, conn: Connection, rows: Iterable[tuple[int, str, str, str, float]]
) -> None:
    """The same with a time per row (the latest time of a row named twice wins): one
    statement compiled once and run for all rows (executemany)."""
    latest: dict[tuple[int, str, str, str], float] = {}
    for r, i, d, k, since in rows:
        latest[(r, i, d, k)] = max(since, latest.get((r, i, d, k), since))
    if not latest:
        return
    stmt = dialect.insert(gc_candidates)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["repo_id", "image", "digest", "kind"],
            set_={"since": stmt.excluded.since},
        ),
        [
            {"repo_id": r, "image": i, "digest": d, "kind": k, "since": t}
            for (r, i, d, k), t in latest.items()
        ],
    )


def candidate_keys(conn: Connection, repo_id: int, image: str, digests: Sequence[str]) -> set[str]:
    """Which of `digests` are link or manifest candidates in this image."""
    if not digests:
        return set()
    stmt = select(gc_candidates.c.digest).where(
        gc_candidates.c.repo_id == repo_id,
        gc_candidates.c.image == image,
        gc_candidates.c.digest.in_(set(digests)),
    )
    return {r[0] for r in conn.execute(stmt)}


def write_holds(
    dialect: Dialect,
    conn: Connection,
    repo_id: int,
    image: str,
    digests: Sequence[str],
    until: float,
) -> None:
    dialect.lock_keys(conn, [hold_key(repo_id, image, d) for d in digests])
    stmt = dialect.insert(gc_holds)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["repo_id", "image", "digest"], set_={"until": stmt.excluded.until}
        ),
        [{"repo_id": repo_id, "image": image, "digest": d, "until": until} for d in digests],
    )


def held(conn: Connection, repo_id: int, image: str, digest: str, now: float) -> bool:
    row = conn.execute(
        select(gc_holds.c.until).where(
            gc_holds.c.repo_id == repo_id,
            gc_holds.c.image == image,
            gc_holds.c.digest == digest,
            gc_holds.c.until > now,
        )
    ).first()
    return row is not None


# Built once: every claim and hold reads it, and building a statement costs more than
# SQLite takes to run it (docs/benchmarks.md, "Where a skopeo push's time goes").
_STATE_OF = select(blob_states.c.state, blob_states.c.generation).where(
    blob_states.c.digest == bindparam("digest")
)


def state_of(conn: Connection, digest: str) -> tuple[str, int] | None:
    row = conn.execute(_STATE_OF, {"digest": digest}).first()
    return None if row is None else (str(row[0]), int(row[1]))


def set_state(
    dialect: Dialect,
    conn: Connection,
    digest: str,
    new: str,
    expect: tuple[str, int] | None,
    size: int | None = None,
) -> int | None:
    """Compare-and-set a blob's state: only from `expect` ((state, generation), None for "no
    row"). Returns the new generation, or None when the blob was not in the expected state."""
    now = time.time()
    if expect is None:
        added = conn.execute(
            dialect.insert(blob_states)
            .values(digest=digest, state=new, generation=1, size=size, updated=now)
            .on_conflict_do_nothing(index_elements=["digest"])
        )
        return 1 if added.rowcount else None
    state, generation = expect
    values: dict[str, object] = {"state": new, "generation": generation + 1, "updated": now}
    if size is not None:
        values["size"] = size
    changed = conn.execute(
        update(blob_states)
        .where(
            blob_states.c.digest == digest,
            blob_states.c.state == state,
            blob_states.c.generation == generation,
        )
        .values(**values)
    )
    return generation + 1 if changed.rowcount else None


def set_states(
    dialect: Dialect,
    conn: Connection,
    new: str,
    expect: Mapping[str, tuple[str, int] | None],
    sizes: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """`set_state` for many blobs at once, one statement per CHUNK blobs and expected state:
    returns the new generation of each blob that was in its expected state."""
    now = time.time()
    sizes = sizes or {}
    out: dict[str, int] = {}
    fresh = sorted(d for d, e in expect.items() if e is None)
    if fresh:
        rows = [
            {"digest": d, "state": new, "generation": 1, "size": sizes.get(d), "updated": now}
            for d in fresh
        ]
        stmt = dialect.insert(blob_states).on_conflict_do_nothing(index_elements=["digest"])
        added = conn.execute(stmt.returning(blob_states.c.digest), rows)  # batched VALUES
        out |= {str(r[0]): 1 for r in added}
    by_state: dict[str, list[tuple[str, int]]] = {}
    for digest, e in sorted(expect.items()):
        if e is not None:
            by_state.setdefault(e[0], []).append((digest, e[1]))
    for state, pairs in by_state.items():
        for part in chunks(pairs):
            values: dict[str, Any] = {
                "state": new,
                "generation": blob_states.c.generation + 1,
                "updated": now,
            }
            known = {d: sizes[d] for d, _ in part if d in sizes}
            if known:
                values["size"] = case(known, value=blob_states.c.digest, else_=blob_states.c.size)
            stmt = (
                update(blob_states)
                .where(
                    blob_states.c.digest.in_([d for d, _ in part]),
                    blob_states.c.state == state,
                    tuple_(blob_states.c.digest, blob_states.c.generation).in_(list(part)),
                )
                .values(**values)
                .returning(blob_states.c.digest, blob_states.c.generation)
            )
            out |= {str(r[0]): int(r[1]) for r in conn.execute(stmt)}
    return out


def drop_candidates(conn: Connection, kind: str, items: Sequence[tuple[Key, float]]) -> set[Key]:
    """Remove candidate rows of `kind`, each only if its time is still the one given (nothing
    renewed it meanwhile): one statement per CHUNK rows; returns the keys removed."""
    cols = [gc_candidates.c.repo_id, gc_candidates.c.image, gc_candidates.c.digest]
    out: set[Key] = set()
    for part in chunks(list(items)):
        where = match_keys(conn, [*cols, gc_candidates.c.since], [(*k, t) for k, t in part])
        stmt = delete(gc_candidates).where(gc_candidates.c.kind == kind, where).returning(*cols)
        out |= {(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(stmt)}
    return out


def drop_blob_candidates(conn: Connection, digests: Sequence[str]) -> None:
    for part in chunks(sorted(digests)):
        conn.execute(
            delete(gc_candidates).where(
                gc_candidates.c.repo_id == 0,
                gc_candidates.c.image == "",
                gc_candidates.c.kind == BLOB,
                gc_candidates.c.digest.in_(part),
            )
        )


def held_keys(conn: Connection, keys: Sequence[Key], now: float) -> set[Key]:
    """Which of `keys` have a live hold."""
    cols = [gc_holds.c.repo_id, gc_holds.c.image, gc_holds.c.digest]
    out: set[Key] = set()
    for part in chunks(list(keys)):
        stmt = select(*cols).where(match_keys(conn, cols, part), gc_holds.c.until > now)
        out |= {(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(stmt)}
    return out


def drop_candidate(conn: Connection, key: Key, kind: str, since: float | None = None) -> bool:
    """Remove a candidate row; with `since`, only if nothing renewed it meanwhile."""
    repo_id, image, digest = key
    where = [
        gc_candidates.c.repo_id == repo_id,
        gc_candidates.c.image == image,
        gc_candidates.c.digest == digest,
        gc_candidates.c.kind == kind,
    ]
    if since is not None:
        where.append(gc_candidates.c.since == since)
    return bool(conn.execute(delete(gc_candidates).where(and_(*where))).rowcount)


def pending_for_digest(conn: Connection, digest: str, now: float) -> bool:
    """Whether anything still may need blob `digest`: a link candidate or a live hold."""
    cand = conn.execute(
        select(gc_candidates.c.kind)
        .where(gc_candidates.c.digest == digest, gc_candidates.c.kind == LINK)
        .limit(1)
    ).first()
    if cand is not None:
        return True
    hold = conn.execute(
        select(gc_holds.c.until).where(gc_holds.c.digest == digest, gc_holds.c.until > now).limit(1)
    ).first()
    return hold is not None


def record_pulls(dialect: Dialect, conn: Connection, pulls: dict[Key, float]) -> None:
    """Upsert last-pull times; a newer time from another worker is kept."""
    if not pulls:
        return
    stmt = dialect.insert(manifest_pulls)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["repo_id", "image", "digest"],
            set_={"last": func.max(manifest_pulls.c.last, stmt.excluded.last)}
            if dialect.name == "sqlite"
            else {"last": func.greatest(manifest_pulls.c.last, stmt.excluded.last)},
        ),
        [{"repo_id": r, "image": i, "digest": d, "last": t} for (r, i, d), t in pulls.items()],
    )


def forget_expired_holds(conn: Connection, now: float) -> int:
    return int(conn.execute(delete(gc_holds).where(gc_holds.c.until <= now)).rowcount)
