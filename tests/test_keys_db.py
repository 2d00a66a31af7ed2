"""Signing keys in the database (a cluster on PostgreSQL): every node signs with the same key
and verifies with the same set; the first node moves its folder keys in; a rotation or a
removal on one node reaches the others (two real servers: tests/test_cluster_shared.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.auth.keys import KeyFolderError, KeyRing
from portway.auth.keys_db import DatabaseKeyRing
from portway.auth.tokens import TokenAuthority, TokenError
from portway.db.shared_schema import signing_keys
from portway.db.store import MetadataStore, open_metadata


@pytest.fixture
def store(postgres_url: str) -> Iterator[MetadataStore]:
    meta = open_metadata(postgres_url)
    with meta.engine.begin() as conn:
        conn.execute(signing_keys.delete())
    yield meta
    meta.close()


def test_first_node_moves_its_folder_keys_in_and_every_node_uses_them(
    store: MetadataStore, tmp_path: Path
) -> None:
    folder = KeyRing(tmp_path / "keys")
    old = folder.rotate()
    current = folder.rotate()
    node_a = DatabaseKeyRing(store.engine, import_from=tmp_path / "keys")
    node_b = DatabaseKeyRing(store.engine, import_from=tmp_path / "elsewhere")  # no folder
    assert node_a.current.kid == current and sorted(node_a.kids()) == sorted([old, current])
    assert node_b.current.kid == current and node_b.kids() == node_a.kids()
    signed = TokenAuthority(folder, issuer="portway").issue_refresh("alice", "portway", None)
    claims = TokenAuthority(node_b, issuer="portway").verify(signed.token, None, kind="refresh")
    assert claims.subject == "alice"  # a token of the single-host days still verifies


def test_rotation_and_removal_on_one_node_reach_the_others(store: MetadataStore) -> None:
    node_a = DatabaseKeyRing(store.engine)
    node_b = DatabaseKeyRing(store.engine)
    first = node_a.current.kid
    assert node_b.current.kid == first  # node b found node a's first key
    before = TokenAuthority(node_b, issuer="portway").issue_refresh("bob", "portway", None)
    revision = node_a.revision
    rotated = node_b.rotate()
    node_a.reload_if_changed()
    assert node_a.current.kid == rotated and node_a.revision > revision
    tokens_a = TokenAuthority(node_a, issuer="portway")
    assert tokens_a.verify(before.token, None, kind="refresh").subject == "bob"
    with pytest.raises(KeyFolderError):
        node_a.remove(rotated)  # the current key stays
    node_a.remove(first)
    node_b.reload_if_changed()
    assert node_b.kids() == [rotated]
    with pytest.raises(TokenError):
        TokenAuthority(node_b, issuer="portway").verify(before.token, None, kind="refresh")


def test_nodes_starting_together_agree_on_one_first_key(store: MetadataStore) -> None:
    rings = [DatabaseKeyRing(store.engine) for _ in range(4)]
    barrier = threading.Barrier(len(rings))
    kids: list[str] = []

    def start(ring: DatabaseKeyRing) -> None:
        barrier.wait()
        kids.append(ring.current.kid)

    threads = [threading.Thread(target=start, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(kids) == 4 and len(set(kids)) == 1
    assert rings[0].kids() == [kids[0]]
