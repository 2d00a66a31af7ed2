"""The web UI's session key in the database (a cluster on PostgreSQL): the first node brings
its `ui-session.key`, so sessions it signed before the upgrade stay valid on every node; nodes
starting together agree on one key. Real nodes behind HAProxy: tests/test_cluster_state.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.db.shared_schema import shared_secrets
from portway.db.store import MetadataStore, open_metadata
from portway.ui.session import Sessions, load_key
from portway.ui.session_db import shared_key


@pytest.fixture
def store(postgres_url: str) -> Iterator[MetadataStore]:
    meta = open_metadata(postgres_url)
    with meta.engine.begin() as conn:
        conn.execute(shared_secrets.delete())
    yield meta
    meta.close()


def test_the_first_nodes_file_key_moves_in_and_its_sessions_stay_valid(
    store: MetadataStore, tmp_path: Path
) -> None:
    first, second = tmp_path / "node1", tmp_path / "node2"
    first.mkdir()
    second.mkdir()
    before_first = Sessions(load_key(first)).issue("alice")  # signed before the upgrade
    before_second = Sessions(load_key(second)).issue("bob")
    key = shared_key(store.engine, first)
    assert key == load_key(first)
    assert shared_key(store.engine, second) == key  # the second node's file is not read
    assert shared_key(store.engine, tmp_path / "no-folder") == key
    everywhere = Sessions(key)
    assert everywhere.user_of(before_first) == "alice"
    assert everywhere.user_of(before_second) is None  # the other nodes' users sign in again
    assert Sessions(shared_key(store.engine, second)).user_of(everywhere.issue("carol")) == "carol"


def test_nodes_starting_together_agree_on_one_new_key(store: MetadataStore, tmp_path: Path) -> None:
    keys: list[bytes] = []
    start = threading.Barrier(4)

    def node() -> None:
        start.wait()
        keys.append(shared_key(store.engine, tmp_path))

    threads = [threading.Thread(target=node) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 4 and len(set(keys)) == 1 and len(keys[0]) == 32
    with store.engine.connect() as conn:
        assert conn.execute(shared_secrets.select()).all()[0].name == "ui-session"
