"""Each node's view of its connectors in the metadata database (db/connector_states.py, ADR
32), on SQLite and on a real PostgreSQL: a node's write replaces its own rows only, a view not
written again within the age bound is not shown, and a worker's share loop follows its
listeners and keeps serving while the database cannot be reached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, update

from portway.db.connector_states import ConnectorStates, ListenerState, share_loop
from portway.db.shared_schema import connector_states
from portway.db.store import MetadataStore, open_metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'portway.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    meta = open_metadata(url)
    with meta.engine.begin() as conn:
        conn.execute(connector_states.delete())  # the PostgreSQL database is the module's
    yield meta
    meta.close()


def states(meta: MetadataStore, node: str) -> ConnectorStates:
    return ConnectorStates(meta.engine, meta.read_engine, node)


def test_each_node_replaces_only_its_own_view(store: MetadataStore) -> None:
    a, b = states(store, "a:5000"), states(store, "b:5000")
    a.publish({"10.0.0.1:6000": ("listening", None), "10.0.0.1:6001": ("listening", None)})
    b.publish({"10.0.0.1:6000": ("failed", "[Errno 98] Address already in use")})
    views = a.views()
    assert [(v.node, v.state) for v in views["10.0.0.1:6000"]] == [
        ("a:5000", "listening"),
        ("b:5000", "failed"),
    ]
    assert views["10.0.0.1:6000"][1].detail == "[Errno 98] Address already in use"
    a.publish({"10.0.0.1:6000": ("listening", None)})  # 6001 removed on node a
    views = b.views()
    assert "10.0.0.1:6001" not in views
    assert len(views["10.0.0.1:6000"]) == 2
    b.publish({})  # node b serves none now
    assert [v.node for v in a.views()["10.0.0.1:6000"]] == ["a:5000"]


def test_a_view_not_written_again_is_not_shown(store: MetadataStore) -> None:
    a, b = states(store, "a:5000"), states(store, "b:5000")
    a.publish({"10.0.0.1:6000": ("listening", None)})
    b.publish({"10.0.0.1:6000": ("listening", None)})
    with store.engine.begin() as conn:  # node b stopped a minute ago
        conn.execute(
            update(connector_states)
            .where(connector_states.c.node == "b:5000")
            .values(updated=time.time() - 60)
        )
    assert [v.node for v in a.views()["10.0.0.1:6000"]] == ["a:5000"]
    assert len(a.views(max_age=120)["10.0.0.1:6000"]) == 2


def test_the_share_loop_follows_the_listeners_and_survives_a_dead_database(
    store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    shared = states(store, "a:5000")
    listeners: dict[str, ListenerState] = {"10.0.0.1:6000": ("listening", None)}

    async def scenario() -> None:
        task = asyncio.create_task(share_loop(listeners, shared))
        try:
            await _until(lambda: "10.0.0.1:6000" in shared.views())
            listeners["10.0.0.1:6001"] = ("failed", "tls: no such file")
            del listeners["10.0.0.1:6000"]
            await _until(lambda: set(shared.views()) == {"10.0.0.1:6001"})
            store.engine.dispose()
            shared.engine = _unreachable(store)
            listeners["10.0.0.1:6002"] = ("listening", None)
            await _until(lambda: "not shared with the cluster" in caplog.text)
            assert not task.done()  # serving goes on; the loop tries again
            shared.engine = store.engine
            await _until(lambda: set(shared.views()) == {"10.0.0.1:6001", "10.0.0.1:6002"})
        finally:
            task.cancel()

    asyncio.run(scenario())


def _unreachable(meta: MetadataStore) -> Engine:
    if meta.engine.dialect.name == "sqlite":
        return create_engine("sqlite:////nonexistent-folder/portway.db")
    return create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)
