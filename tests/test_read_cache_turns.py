"""The SQLite read cache's change token is read once per turn of the event loop.

Two `MetadataStore`s on one SQLite file stand for two workers. A turn's token covers what
happened before it was read: a commit made later is seen from the next turn on, and this
process's own writes at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.db.store import MetadataStore, open_metadata
from test_store_conformance import manifest


def allow(_tag: str, _current: str | None) -> None:
    return None


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[MetadataStore, MetadataStore]]:
    url = f"sqlite:///{tmp_path / 'portway.db'}"
    a, b = open_metadata(url), open_metadata(url)
    yield a, b
    a.close()
    b.close()


def pragma_counter(store: MetadataStore) -> list[str]:
    """The `PRAGMA data_version` statements run on the store's event-loop read connection."""
    seen: list[str] = []
    dbapi = store._conn().connection.dbapi_connection
    assert dbapi is not None
    dbapi.set_trace_callback(  # type: ignore[attr-defined]
        lambda sql: seen.append(sql) if "data_version" in sql else None
    )
    return seen


def commit_elsewhere(store: MetadataStore, repo: int, n: int) -> None:
    """Another worker's push, made while this loop's turn is held (the loop is blocked)."""
    done = threading.Thread(
        target=lambda: asyncio.run(store.put_manifest(repo, "app", manifest(n), ["v1"], allow))
    )
    done.start()
    done.join()


def test_one_data_version_read_serves_every_lookup_of_a_turn(
    workers: tuple[MetadataStore, MetadataStore],
) -> None:
    a, b = workers
    repo = a.ensure_repository("r", "hosted")
    asyncio.run(b.put_manifest(repo, "app", manifest(1), ["v1"], allow))
    seen = pragma_counter(a)

    async def turns() -> None:
        for _ in range(3):
            for _ in range(10):  # ten cached lookups, no await that yields in between
                found = await a.manifest_by_tag(repo, "app", "v1")
                assert found is not None and found.digest == manifest(1).digest
            await asyncio.sleep(0)  # the turn ends

    asyncio.run(turns())
    assert len(seen) == 3, seen


def test_a_commit_after_the_turns_read_is_seen_from_the_next_turn(
    workers: tuple[MetadataStore, MetadataStore],
) -> None:
    a, b = workers
    repo = a.ensure_repository("r", "hosted")
    asyncio.run(b.put_manifest(repo, "app", manifest(1), ["v1"], allow))

    async def scenario() -> tuple[str | None, str | None, str | None]:
        before = await a.manifest_by_tag(repo, "app", "v1")
        commit_elsewhere(b, repo, 2)  # re-tag v1 by another worker, within this turn
        same_turn = await a.manifest_by_tag(repo, "app", "v1")
        await asyncio.sleep(0)
        next_turn = await a.manifest_by_tag(repo, "app", "v1")
        return tuple(m.digest if m else None for m in (before, same_turn, next_turn))  # type: ignore[return-value]

    before, same_turn, next_turn = asyncio.run(scenario())
    assert before == manifest(1).digest
    # Nothing queued before the turn's read can depend on the later commit: it may be unseen.
    assert same_turn == manifest(1).digest
    assert next_turn == manifest(2).digest


def test_a_fresh_read_sees_what_the_cache_has_not_heard_of(
    workers: tuple[MetadataStore, MetadataStore],
) -> None:
    """What a proxy's lock holder re-checks (`fresh=True`) is read from the database, even
    while the read cache still holds the answer from before another worker's commit."""
    a, b = workers
    repo = a.ensure_repository("r", "hosted")
    asyncio.run(b.put_manifest(repo, "app", manifest(1), ["v1"], allow))

    async def scenario() -> list[str | None]:
        await a.manifest(repo, "app", "v1")  # cached, with the tag's clock
        was = await a.tag_info(repo, "app", "v1")
        commit_elsewhere(b, repo, 2)  # v1 moves to manifest 2, within this turn
        cached = await a.manifest(repo, "app", "v1")
        fresh = await a.manifest(repo, "app", "v1", fresh=True)
        by_digest = await a.manifest(repo, "app", manifest(2).digest, fresh=True)
        clock = await a.tag_info(repo, "app", "v1", fresh=True)
        stale_clock = await a.tag_info(repo, "app", "v1")
        return [
            cached.digest if cached else None,
            fresh.digest if fresh else None,
            by_digest.digest if by_digest else None,
            clock[0] if clock else None,
            stale_clock[0] if stale_clock else None,
            was[0] if was else None,
        ]

    cached, fresh, by_digest, clock, stale_clock, was = asyncio.run(scenario())
    assert cached == stale_clock == was == manifest(1).digest  # the cache has not heard yet
    assert fresh == by_digest == clock == manifest(2).digest


def test_this_processs_own_write_is_seen_at_once(
    workers: tuple[MetadataStore, MetadataStore],
) -> None:
    a, b = workers
    repo = a.ensure_repository("r", "hosted")
    asyncio.run(a.put_manifest(repo, "app", manifest(1), ["v1"], allow))

    async def scenario() -> tuple[object, object, object]:
        first = a.change_signal.token()
        commit_elsewhere(b, repo, 2)
        unchanged = a.change_signal.token()
        a.change_signal.written()  # what this process's writer says after its commit
        return first, unchanged, a.change_signal.token()

    first, unchanged, after_written = asyncio.run(scenario())
    assert first is not None and unchanged == first
    assert after_written != first

    async def write_then_read() -> str | None:
        await a.put_manifest(repo, "app", manifest(3), ["v1"], allow)
        found = await a.manifest_by_tag(repo, "app", "v1")
        return found.digest if found else None

    assert asyncio.run(write_then_read()) == manifest(3).digest


def test_without_a_running_loop_every_call_reads_the_database(
    workers: tuple[MetadataStore, MetadataStore],
) -> None:
    a, b = workers
    repo = a.ensure_repository("r", "hosted")
    first = a.change_signal.token()
    commit_elsewhere(b, repo, 1)
    assert a.change_signal.token() != first
