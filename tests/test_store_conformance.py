"""The metadata store's contract, the same tests on SQLite and on a real PostgreSQL 15.

Two `MetadataStore`s on one database stand for two workers (SQLite) or two nodes (PostgreSQL):
concurrent writers must neither fail nor duplicate rows, and a tag guard must see the tag as the
transaction that moves it finds it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from asyncio import run
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portway.auth.passwords import FAST_TEST_PARAMS, PasswordHasher
from portway.auth.privileges import Privilege, Role
from portway.auth.ratelimit import LoginLimiter
from portway.auth.store import UserStore
from portway.auth.store_base import StoreError
from portway.db.auth_schema import security_state
from portway.db.schema import blob_links, manifest_refs, manifests, metadata, schema_version, tags
from portway.db.store import MetadataStore, NewManifest, open_metadata

HASHER = PasswordHasher(FAST_TEST_PARAMS)
GIB = 1 << 30

Opener = Callable[[], MetadataStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores on one empty database (each call: another worker or node)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'portway.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened: list[MetadataStore] = []

    def opener() -> MetadataStore:
        store = open_metadata(url)
        opened.append(store)
        return store

    first = opener()
    with first.engine.begin() as conn:  # the PostgreSQL database is shared by the module
        for table in reversed(metadata.sorted_tables):
            if table is not schema_version:
                conn.execute(table.delete())
    yield opener
    for store in opened:
        store.close()


def eventually(check: Callable[[], bool], within: float = 1.0) -> float:
    """Seconds until `check()` held; fails when it does not within `within` seconds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not seen within {within}s"
        time.sleep(0.005)
    return time.monotonic() - start


def manifest(n: int, refs: tuple[str, ...] = ()) -> NewManifest:
    return NewManifest(
        digest=f"sha256:{n:064x}",
        media_type="application/vnd.oci.image.manifest.v1+json",
        body=b'{"schemaVersion":2,"n":%d}' % n,
        artifact_type=None,
        subject=None,
        annotations=None,
        refs=tuple((r, False) for r in refs),
    )


def allow(_tag: str, _current: str | None) -> None:
    return None


class Refused(Exception):
    pass


def immutable(digest: str, pause: float = 0.0) -> Callable[[str, str | None], None]:
    """A guard that refuses to move a tag that points at another manifest already."""

    def guard(_tag: str, current: str | None) -> None:
        time.sleep(pause)  # widen the window between the guard's look and the move
        if current is not None and current != digest:
            raise Refused(current)

    return guard


def count(store: MetadataStore, table: object) -> int:
    with store.read_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def run_together(*jobs: Callable[[], object]) -> list[object]:
    """Run each job in its own thread, all released at once; results or exceptions."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_repositories_upsert(open_store: Opener) -> None:
    store = open_store()
    first = store.ensure_repository("docker-hosted", "hosted")
    assert store.ensure_repository("docker-hosted", "proxy") == first
    assert store.ensure_repository("other", "hosted") != first
    other = open_store()
    assert other.ensure_repository("docker-hosted", "hosted") == first


def test_a_retag_or_delete_on_one_node_reaches_another_nodes_cache_within_a_second(
    open_store: Opener,
) -> None:
    node_a, node_b = open_store(), open_store()
    repo = node_a.ensure_repository("r", "hosted")
    one, two = manifest(11), manifest(12)
    asyncio.run(node_a.put_manifest(repo, "app", one, ["v1"], allow))
    for _ in range(3):  # cached on node b now (on both databases)
        found = run(node_b.manifest_by_tag(repo, "app", "v1"))
        assert found is not None and found.digest == one.digest
    assert node_b._signal.token() is not None, "node b caches nothing"
    asyncio.run(node_a.put_manifest(repo, "app", two, ["v1"], allow))  # re-tag

    def retagged() -> bool:
        found = run(node_b.manifest_by_tag(repo, "app", "v1"))
        return found is not None and found.digest == two.digest

    eventually(retagged)
    assert asyncio.run(node_a.delete_tag(repo, "app", "v1", allow))
    eventually(lambda: run(node_b.manifest_by_tag(repo, "app", "v1")) is None)


def test_manifests_tags_and_pagination(open_store: Opener) -> None:
    store = open_store()
    repo = store.ensure_repository("r", "hosted")
    one, two = manifest(1, ("sha256:" + "a" * 64,)), manifest(2)
    names = ["v1", "latest", "b", "a", "c"]
    asyncio.run(store.put_manifest(repo, "app", one, names, allow))
    asyncio.run(store.put_manifest(repo, "app", two, ["latest"], allow))
    asyncio.run(store.put_manifest(repo, "lib/x", two, [], allow))

    got = run(store.manifest_by_digest(repo, "app", one.digest))
    assert run(store.manifest(repo, "app", "v1")) == got
    assert got is not None and got.body == one.body and got.media_type == one.media_type
    latest = run(store.manifest_by_tag(repo, "app", "latest"))
    assert latest is not None and latest.digest == two.digest  # the upsert moved it
    info = run(store.tag_info(repo, "app", "latest"))
    assert info is not None and info[0] == two.digest
    assert run(store.list_tags(repo, "app", None, None)) == sorted(names)
    assert run(store.list_tags(repo, "app", None, 2)) == ["a", "b"]
    assert run(store.list_tags(repo, "app", "b", 2)) == ["c", "latest"]
    assert run(store.list_tags(repo, "app", "v1", 5)) == []
    assert run(store.list_images(repo, None, None)) == ["app", "lib/x"]
    assert run(store.list_images(repo, "app", 1)) == ["lib/x"]
    assert run(store.image_exists(repo, "app")) and not run(store.image_exists(repo, "nope"))
    assert run(store.missing_manifests(repo, "app", [one.digest, "sha256:" + "f" * 64])) == [
        "sha256:" + "f" * 64
    ]
    assert run(store.references(repo, "app", "sha256:" + "a" * 64))

    # A second store (another worker or node) sees every change: at once on one host, within
    # the notification's delay on PostgreSQL.
    other = open_store()
    assert run(other.manifest_by_tag(repo, "app", "v1")) is not None
    assert asyncio.run(store.delete_tag(repo, "app", "v1", allow))
    assert not asyncio.run(store.delete_tag(repo, "app", "v1", allow))
    eventually(lambda: run(other.manifest_by_tag(repo, "app", "v1")) is None)
    assert asyncio.run(other.delete_manifest(repo, "app", one.digest))
    assert not asyncio.run(other.delete_manifest(repo, "app", one.digest))
    eventually(lambda: run(store.manifest_by_digest(repo, "app", one.digest)) is None)
    assert run(store.list_tags(repo, "app", None, None)) == ["latest"]  # its tags went with it
    assert not run(store.references(repo, "app", "sha256:" + "a" * 64))


def test_blob_links_hold_64_bit_sizes(open_store: Opener) -> None:
    store = open_store()
    repo = store.ensure_repository("r", "hosted")
    big = "sha256:" + "b" * 64
    asyncio.run(store.link_blob(repo, "app", big, 5 * GIB))
    asyncio.run(store.link_blob(repo, "app", big, 5 * GIB))  # linked already: no error
    assert run(store.blob_size(repo, "app", big)) == 5 * GIB
    assert run(store.missing_blobs(repo, "app", [big, "sha256:" + "c" * 64])) == [
        "sha256:" + "c" * 64
    ]
    assert asyncio.run(store.unlink_blob(repo, "app", big))
    assert not asyncio.run(store.unlink_blob(repo, "app", big))
    assert run(store.blob_size(repo, "app", big)) is None


def test_upload_sessions(open_store: Opener) -> None:
    store = open_store()
    repo = store.ensure_repository("r", "hosted")
    asyncio.run(store.create_upload("u1", repo, "app"))
    asyncio.run(store.create_upload("u2", repo, "app"))
    row = run(store.get_upload("u1"))
    assert row is not None and (row.repo_id, row.image) == (repo, "app")
    assert sorted(run(store.expired_uploads(time.time() + 1))) == ["u1", "u2"]
    assert run(store.expired_uploads(time.time() - 3600)) == []
    other = store.ensure_repository("other", "hosted")
    asyncio.run(store.create_upload("u3", other, "app"))
    assert sorted(run(store.expired_uploads(time.time() + 1, repo))) == ["u1", "u2"]
    assert run(store.expired_uploads(time.time() + 1, other)) == ["u3"]
    digest = "sha256:" + "d" * 64
    asyncio.run(store.finish_upload("u1", repo, "app", digest, 3 * GIB))
    assert (
        run(store.get_upload("u1")) is None and run(store.blob_size(repo, "app", digest)) == 3 * GIB
    )
    asyncio.run(store.delete_upload("u2"))
    assert run(store.get_upload("u2")) is None


def test_users_and_roles(open_store: Opener) -> None:
    meta = open_store()
    users = UserStore(meta.engine, HASHER, read_engine=meta.read_engine)
    users.ensure_builtin_roles()
    users.ensure_builtin_roles()  # again, as every worker does at start: no error
    before = users.generation()
    users.put_role(Role("dev", privileges=(Privilege("team-*", frozenset({"read", "add"})),)))
    users.add_user("alice", "correct horse", ["dev"])
    with pytest.raises(StoreError):
        users.add_user("alice", "again and again", [])
    assert users.generation() >= before + 2
    principal = users.authenticate("alice", "correct horse")
    assert principal is not None
    assert users.authenticate("alice", "wrong") is None
    info = users.get_user("alice")
    assert info is not None and info.roles == ("dev",)
    users.set_user_roles("alice", [])
    assert users.get_user("alice").roles == ()  # type: ignore[union-attr]
    users.delete_user("alice")
    assert users.get_user("alice") is None
    with meta.read_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(security_state)).scalar_one() == 1


def test_login_failures_shared_by_every_store(open_store: Opener) -> None:
    one, two = open_store(), open_store()
    now = [1000.0]
    limiters = [
        LoginLimiter(m.engine, 3, 60, read_engine=m.read_engine, clock=lambda: now[0])
        for m in (one, two)
    ]
    assert limiters[0].failure("bob", "10.0.0.1") is None
    assert limiters[1].failure("bob", "10.0.0.1") is None
    lockout = limiters[0].failure("bob", "10.0.0.1")
    assert lockout is not None and lockout.key == "user"
    assert limiters[1].check("bob", "10.0.0.1") is not None  # the other node counts them too
    assert limiters[1].check("bob", "10.0.0.2") is None
    assert limiters[1].unlock("bob") == 3
    assert limiters[0].check("bob", "10.0.0.1") is None
    now[0] += 120  # out of the window
    assert limiters[0].failure("carol", "10.0.0.1") is None
    assert limiters[0].check("bob", "10.0.0.1") is None


def test_tag_guard_sees_the_tag_inside_the_moving_transaction(open_store: Opener) -> None:
    """Two pushes of different manifests to one immutable tag at once: exactly one wins."""
    a, b = open_store(), open_store()
    repo = a.ensure_repository("r", "hosted")
    one, two = manifest(1), manifest(2)
    results = run_together(
        lambda: asyncio.run(a.put_manifest(repo, "app", one, ["v1"], immutable(one.digest, 0.3))),
        lambda: asyncio.run(b.put_manifest(repo, "app", two, ["v1"], immutable(two.digest, 0.3))),
    )
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(refused) == 1, results
    assert [r for r in results if r is not None and not isinstance(r, Refused)] == []
    winner = one if results[0] is None else two
    tagged = run(a.manifest_by_tag(repo, "app", "v1"))
    assert tagged is not None and tagged.digest == winner.digest


def test_concurrent_upserts_make_one_row(open_store: Opener) -> None:
    stores = [open_store() for _ in range(4)]
    repo = stores[0].ensure_repository("r", "hosted")
    digest = "sha256:" + "e" * 64
    results = run_together(
        *(lambda s=s: asyncio.run(s.link_blob(repo, "app", digest, 7 * GIB)) for s in stores)
    )
    assert results == [None] * 4
    same = manifest(9, ("sha256:" + "1" * 64, "sha256:" + "2" * 64))
    results = run_together(
        *(lambda s=s: asyncio.run(s.put_manifest(repo, "app", same, ["t"], allow)) for s in stores)
    )
    assert results == [None] * 4
    repos = run_together(*(lambda s=s: s.ensure_repository("new", "hosted") for s in stores))
    assert len(set(repos)) == 1 and all(isinstance(r, int) for r in repos), repos
    store = stores[0]
    assert count(store, blob_links) == 1 and run(store.blob_size(repo, "app", digest)) == 7 * GIB
    assert count(store, manifests) == 1
    assert count(store, manifest_refs) == 2
    assert count(store, tags) == 1
