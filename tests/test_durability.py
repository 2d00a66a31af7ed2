"""Crash safety: SIGKILL during 20 concurrent pushes, restart, then check consistency.

Every push is several blobs (monolithic POST ?digest= and chunked POST/PATCH/PUT, plus one
blob every push shares) and a manifest PUT with a tag. A ledger records, per blob and per
manifest, how far the client got: `partial` (the body never fully left the client), `sent`
(fully sent, no answer: it may or may not have committed) or `acked` (201). After the restart:

- every acked manifest is served by its tag with the same digest and body, and every blob it
  references downloads with the right digest;
- every acked blob is visible and downloads with the right digest;
- no partial blob is visible; a `sent` blob or manifest is either absent or whole;
- every file under `storage/blobs` hashes to its own name;
- the server takes a fresh push.

The same checks follow a blob store that fills up in the middle of the pushes (a small tmpfs
as `storage/`): refusals are 507, and once the file system grows the server takes pushes
again without a restart.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from push_support import MiB, Registry, manifest_for, sha256
from support.server import PortwayServer
from support.smallfs import resize, shrink_to_used, small_fs

pytestmark = pytest.mark.slow

PUSHERS = 20
PUSHES_PER_PUSHER = 4
KILL_AFTER_ACKED = 20  # manifests acknowledged before the SIGKILL
SHARED = random.Random(99).randbytes(MiB)  # in every push: concurrent commits of one digest
RANK = {"partial": 0, "sent": 1, "acked": 2}


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (image, digest) -> (state, size)
    blobs: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # (image, tag) -> (state, digest, body, [(digest, size)])
    manifests: dict[tuple[str, str], tuple[str, str, bytes, list[tuple[str, int]]]] = field(
        default_factory=dict
    )
    acked_manifests: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def blob(self, image: str, digest: str, size: int, state: str) -> None:
        with self.lock:
            old = self.blobs.get((image, digest))
            if old is None or RANK[state] > RANK[old[0]]:
                self.blobs[(image, digest)] = (state, size)

    def manifest(
        self, image: str, tag: str, state: str, body: bytes, refs: list[tuple[str, int]]
    ) -> None:
        with self.lock:
            self.manifests[(image, tag)] = (state, sha256(body), body, refs)
            if state == "acked":
                self.acked_manifests += 1


class Stop(Exception):
    """The server went away (or answered something a live server would not)."""


def _push_blob(reg: Registry, ledger: Ledger, image: str, data: bytes, chunked: bool) -> None:
    digest = sha256(data)
    sent: list[bool] = []
    try:
        if chunked:
            location = reg.start_upload(image)
            cuts = sorted(random.sample(range(1, len(data)), 2))
            offset = 0
            for end in [*cuts, len(data)]:
                location, reply = reg.patch(location, offset, data[offset:end], end - offset)
                if reply.status != 202:
                    raise Stop(f"PATCH {reply.status}: {reply.body[:200]!r}")
                offset = end
            reply = reg.finish_upload(location, digest, sent=sent)
        else:
            reply = reg.upload_monolithic(image, digest, data, len(data), sent=sent)
    except Stop:
        ledger.blob(image, digest, len(data), "sent" if sent else "partial")
        raise
    except (OSError, AssertionError) as exc:  # AssertionError: start_upload got no 202
        ledger.blob(image, digest, len(data), "sent" if sent else "partial")
        raise Stop(repr(exc)) from exc
    if reply.status != 201 or reply.header("Docker-Content-Digest") != digest:
        ledger.blob(image, digest, len(data), "sent")
        raise Stop(f"blob upload answered {reply.status}: {reply.body[:200]!r}")
    ledger.blob(image, digest, len(data), "acked")


def _pusher(reg: Registry, ledger: Ledger, index: int, stop: threading.Event) -> None:
    rng = random.Random(index)
    image = f"crash/pusher-{index:02d}"
    try:
        for n in range(PUSHES_PER_PUSHER):
            if stop.is_set():
                return
            config = f'{{"pusher":{index},"push":{n},"nonce":"{os.urandom(8).hex()}"}}'.encode()
            layers = [os.urandom(rng.randint(MiB, 4 * MiB)) for _ in range(3)]
            _push_blob(reg, ledger, image, config, chunked=False)
            _push_blob(reg, ledger, image, SHARED, chunked=False)
            _push_blob(reg, ledger, image, layers[0], chunked=False)
            _push_blob(reg, ledger, image, layers[1], chunked=True)
            _push_blob(reg, ledger, image, layers[2], chunked=True)
            body = manifest_for(config, [SHARED, *layers])
            refs = [(sha256(b), len(b)) for b in (config, SHARED, *layers)]
            tag = f"push-{n}"
            sent: list[bool] = []
            try:
                reply = reg.put_manifest(image, tag, body, sent=sent)
            except OSError as exc:
                ledger.manifest(image, tag, "sent" if sent else "partial", body, refs)
                raise Stop(repr(exc)) from exc
            if reply.status != 201:
                ledger.manifest(image, tag, "sent", body, refs)
                raise Stop(f"manifest PUT answered {reply.status}: {reply.body[:200]!r}")
            assert reply.header("Docker-Content-Digest") == sha256(body)
            ledger.manifest(image, tag, "acked", body, refs)
    except Stop as exc:
        with ledger.lock:
            ledger.errors[str(exc).split(":")[0][:60]] += 1


def _pull_ok(reg: Registry, image: str, digest: str, size: int) -> bool:
    status, hexdigest, length = reg.pull_blob(image, digest)
    return status == 200 and f"sha256:{hexdigest}" == digest and length == size


def _blob_files_match_their_names(data_dir: Path) -> tuple[int, list[str]]:
    root = data_dir / "storage" / "blobs"
    bad: list[str] = []
    count = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        count += 1
        algorithm = path.parent.parent.name
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                hasher.update(chunk)
        if hasher.hexdigest() != path.name or path.parent.name != path.name[:2]:
            bad.append(str(path.relative_to(root)))
    return count, bad


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(
    request: pytest.FixtureRequest, portway_factory: Callable[..., PortwayServer]
) -> Iterator[PortwayServer]:
    srv = portway_factory(workers=request.param)
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def test_sigkill_during_concurrent_pushes_leaves_a_consistent_store(
    server: PortwayServer,
) -> None:
    reg = Registry(server.repository_url(), timeout=60)
    ledger = Ledger()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_pusher, args=(reg, ledger, i, stop), daemon=True)
        for i in range(PUSHERS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    deadline = started + 180
    while ledger.acked_manifests < KILL_AFTER_ACKED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger.acked_manifests >= KILL_AFTER_ACKED, ledger.errors
    server.kill()  # SIGKILL to the whole process group, in the middle of the pushes
    killed_at = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(90)
        assert not t.is_alive()

    states = Counter(state for state, *_ in ledger.blobs.values())
    manifest_states = Counter(state for state, *_ in ledger.manifests.values())
    print(
        f"\nkilled after {killed_at:.1f}s: manifests {dict(manifest_states)}, "
        f"blobs {dict(states)}, pushers stopped by {dict(ledger.errors)}"
    )
    # the kill landed in the middle: some work was in flight
    assert sum(ledger.errors.values()) > 0
    assert states["partial"] + states["sent"] + manifest_states["partial"] > 0

    server.start()
    _assert_consistent(reg, ledger, server.data_dir)
    _fresh_push_works(reg)


def test_blob_store_filling_up_during_concurrent_pushes_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    server = PortwayServer(tmp_path / "portway", workers=1)
    storage = server.data_dir / "storage"
    with small_fs(storage, 1024):
        server.start()
        try:
            reg = Registry(server.repository_url(), timeout=60)
            ledger = Ledger()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_pusher, args=(reg, ledger, i, stop), daemon=True)
                for i in range(PUSHERS)
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 180
            while ledger.acked_manifests < KILL_AFTER_ACKED // 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ledger.acked_manifests >= KILL_AFTER_ACKED // 2, ledger.errors
            # the file system shrinks to what is used plus 8 MiB: it fills up within moments
            shrink_to_used(storage, 8)
            for t in threads:  # each pusher stops at its first refusal
                t.join(240)
                assert not t.is_alive()
            states = Counter(state for state, *_ in ledger.blobs.values())
            manifest_states = Counter(state for state, *_ in ledger.manifests.values())
            print(
                f"\nblob store full: manifests {dict(manifest_states)}, blobs {dict(states)}, "
                f"pushers stopped by {dict(ledger.errors)}"
            )
            # it filled up in the middle: pushes were refused with 507, never a 500
            assert any("507" in reason for reason in ledger.errors), ledger.errors
            assert not any("500" in reason for reason in ledger.errors), ledger.errors
            log = server.log()
            assert "Traceback" not in log and "internal error" not in log, log[-3000:]

            resize(storage, 1024)  # space is back; no restart
            _assert_consistent(reg, ledger, server.data_dir)
            _fresh_push_works(reg)
        finally:
            server.stop()


def _assert_consistent(reg: Registry, ledger: Ledger, data_dir: Path) -> None:
    """What must hold after a fault, for every push the ledger saw."""
    states = Counter(state for state, *_ in ledger.blobs.values())
    # 1. acknowledged manifests: same digest by tag, every referenced blob whole
    for (image, tag), (state, digest, body, refs) in ledger.manifests.items():
        got = reg.get_manifest(image, tag)
        if state == "acked":
            assert got.status == 200, (image, tag, got.status, got.body[:200])
        elif got.status == 404:
            continue
        assert got.header("Docker-Content-Digest") == digest, (image, tag, state)
        assert got.body == body
        for blob_digest, size in refs:
            assert _pull_ok(reg, image, blob_digest, size), (image, tag, state, blob_digest)

    # 2. blobs: acked ones whole, partial ones invisible, sent ones absent or whole
    outcome: Counter[str] = Counter()
    for (image, digest), (state, size) in ledger.blobs.items():
        head = reg.head_blob(image, digest)
        if state == "partial":
            assert head.status == 404, (image, digest, "partial upload is visible")
        elif state == "acked":
            assert head.status == 200, (image, digest, head.status)
        outcome[f"{state}:{head.status}"] += 1
        if head.status == 200:
            assert head.header("Content-Length") == str(size), (image, digest, state)
            assert _pull_ok(reg, image, digest, size), (image, digest, state)
        else:
            assert head.status == 404, (image, digest, head.status)
    print(f"afterwards (ledger state:HEAD status): {dict(outcome)}")

    # 3. the store itself: every blob file's content hashes to its name
    count, bad = _blob_files_match_their_names(data_dir)
    assert not bad, f"blob files whose content does not match their name: {bad}"
    assert count >= states["acked"] // 2


def _fresh_push_works(reg: Registry, image: str = "crash/after") -> None:
    fresh = random.Random(1234).randbytes(3 * MiB + 17)
    third = len(fresh) // 3
    chunks = [fresh[:third], fresh[third : 2 * third], fresh[2 * third :]]
    assert reg.upload_chunked(image, chunks, sha256(fresh)).status == 201
    config = b'{"after":"restart"}'
    assert reg.upload_monolithic(image, sha256(config), config, len(config)).status == 201
    body = manifest_for(config, [fresh])
    assert reg.put_manifest(image, "ok", body).status == 201
    got = reg.get_manifest(image, "ok")
    assert got.status == 200 and got.body == body
    assert _pull_ok(reg, image, sha256(fresh), len(fresh))


def test_closing_put_racing_an_unfinished_patch_never_publishes_a_growing_file(
    portway_factory: Callable[..., PortwayServer],
) -> None:
    """A client (buggy or hostile) closes a session with PUT while its own PATCH is still
    streaming. Whatever the answers, the published blob must never change afterwards."""
    server = portway_factory(workers=1)
    reg = Registry(server.repository_url())
    image = "race/put-during-patch"
    head = random.Random(5).randbytes(MiB)
    location = reg.start_upload(image)
    location, reply = reg.patch(location, 0, head, len(head))
    assert reply.status == 202
    upload_file = server.data_dir / "storage" / "uploads" / location.rstrip("/").rsplit("/")[-1]
    assert upload_file.stat().st_size == len(head)

    # a PATCH announcing 8 MiB that sends 3 MiB, then stalls
    tail = random.Random(6).randbytes(8 * MiB)
    conn = reg.connect()
    conn.putrequest("PATCH", location)
    conn.putheader("Content-Length", str(len(tail)))
    conn.putheader("Content-Range", f"{len(head)}-{len(head) + len(tail) - 1}")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    conn.send(tail[: 3 * MiB])
    deadline = time.monotonic() + 10
    while upload_file.stat().st_size == len(head) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    on_disk = upload_file.read_bytes()
    assert len(on_disk) > len(head)

    # close the session with the digest of what is on disk right now
    put = reg.finish_upload(location, sha256(on_disk))
    conn.send(tail[3 * MiB :])
    try:
        patch_status = conn.getresponse().status
    except OSError:
        patch_status = None
    finally:
        conn.close()
    print(f"\nPUT during PATCH: PUT {put.status}, PATCH {patch_status}")
    assert put.status in (201, 400, 404, 416), put.body[:300]
    if put.status != 201 and patch_status == 202:
        # the PATCH won: the session holds everything and closes normally
        done = reg.finish_upload(location, sha256(head + tail))
        assert done.status == 201, done.body[:300]
        assert _pull_ok(reg, image, sha256(head + tail), len(head) + len(tail))

    # whatever was accepted, every visible blob is whole and matches its name
    for digest in {sha256(on_disk), sha256(head + tail)}:
        found = reg.head_blob(image, digest)
        if found.status == 200:
            size = int(found.header("Content-Length") or -1)
            assert _pull_ok(reg, image, digest, size), digest
    _count, bad = _blob_files_match_their_names(server.data_dir)
    assert not bad, f"blob files whose content does not match their name: {bad}"
