"""A held database write lock must not freeze the server (issue 9, item 2).

A second process opens the metadata database with Python's sqlite3, runs `BEGIN IMMEDIATE` and
sleeps: it holds SQLite's write lock as a long migration, a backup tool or a stuck worker would.
Meanwhile, with security on, pings and pulls (bearer token and Basic) must keep answering fast,
and a write that cannot get the lock within `[server] database_busy_timeout` gets a retryable
503 with an OCI error body and `Retry-After`, while the rest of the server keeps serving.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support.engines import skopeo
from support.security import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, basic, digest_of, parse_challenge
from support.server import PortwayServer

pytestmark = pytest.mark.slow

IMAGE = "docker-hosted/app"
FAST = 0.100  # seconds: what a ping or a pull must stay under while the lock is held
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held(db: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the SQLite write lock on `db` for `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@dataclass
class Pushed:
    manifest: bytes
    blobs: list[bytes]


def _push(session: requests.Session, base: str, auth: str, tag: str, seed: int) -> Pushed:
    rng = random.Random(seed)
    layer = rng.randbytes(512 * 1024)
    config = f'{{"architecture":"amd64","os":"linux","seed":{seed}}}'.encode()
    headers = {"Authorization": auth}
    for blob in (config, layer):
        answer = session.post(
            f"{base}/v2/{IMAGE}/blobs/uploads/",
            params={"digest": digest_of(blob)},
            data=blob,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert answer.status_code == 201, answer.text
    manifest = (
        f'{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",'
        f'"config":{{"mediaType":"{OCI_CONFIG}","digest":"{digest_of(config)}",'
        f'"size":{len(config)}}},'
        f'"layers":[{{"mediaType":"{OCI_LAYER}","digest":"{digest_of(layer)}",'
        f'"size":{len(layer)}}}]}}'
    ).encode()
    answer = session.put(
        f"{base}/v2/{IMAGE}/manifests/{tag}",
        data=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
    )
    assert answer.status_code == 201, answer.text
    return Pushed(manifest, [config, layer])


def _token(session: requests.Session, server: PortwayServer, auth: str, scope: bool = True) -> str:
    """A token from the realm the challenge names: for pulling the image, or (no scope) the
    one `docker login` gets and pings with."""
    challenge = session.get(f"{server.url}/v2/").headers["WWW-Authenticate"]
    _scheme, params = parse_challenge(challenge)
    query = {"service": params["service"]}
    if scope:
        query["scope"] = f"repository:{IMAGE}:pull"
    answer = session.get(params["realm"], params=query, headers={"Authorization": auth})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def _pull(
    session: requests.Session,
    base: str,
    auth: str,
    tag: str,
    image: Pushed,
    took: list[float] | None = None,
) -> None:
    """The manifest, then each blob; `took` gets each request's seconds."""
    headers = {"Authorization": auth}
    started = time.perf_counter()
    got = session.get(
        f"{base}/v2/{IMAGE}/manifests/{tag}", headers={**headers, "Accept": OCI_MANIFEST}
    )
    assert got.status_code == 200 and got.content == image.manifest, got.text[:300]
    for blob in image.blobs:
        if took is not None:
            took.append(time.perf_counter() - started)
        started = time.perf_counter()
        got = session.get(f"{base}/v2/{IMAGE}/blobs/{digest_of(blob)}", headers=headers)
        assert got.status_code == 200 and got.content == blob, got.status_code
    if took is not None:
        took.append(time.perf_counter() - started)


@pytest.fixture
def secured(portway_factory: Callable[..., PortwayServer]) -> PortwayServer:
    return portway_factory(security={"enabled": True})


def test_pings_and_pulls_stay_fast_while_another_process_holds_the_write_lock(
    secured: PortwayServer, tmp_path: Path
) -> None:
    server = secured
    password = server.admin_password()
    assert password
    auth_basic = basic("admin", password)
    session = requests.Session()
    image = _push(session, server.url, auth_basic, "v1", seed=1)
    bearer = "Bearer " + _token(session, server, auth_basic)
    login_bearer = "Bearer " + _token(session, server, auth_basic, scope=False)
    _pull(
        session, server.url, bearer, "v1", image
    )  # warm: this is about the lock, not a cold start

    timings: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, action: Callable[[], object]) -> None:
        started = time.perf_counter()
        action()
        timings[name].append(time.perf_counter() - started)

    def ping(auth: str) -> None:
        answer = session.get(f"{server.url}/v2/", headers={"Authorization": auth})
        assert answer.status_code == 200, answer.text

    with write_lock_held(server.data_dir / "portway.db", 20) as holder:
        # Long enough for every periodic re-read (the security generation is looked at every
        # second, the anonymous role every five) to fall inside the hold.
        until = time.monotonic() + 7
        while time.monotonic() < until:
            timed("ping (Basic)", lambda: ping(auth_basic))
            timed("ping (token)", lambda: ping(login_bearer))
            timed("token (Basic)", lambda: _token(session, server, auth_basic))
            _pull(session, server.url, bearer, "v1", image, timings["pull (token)"])
            _pull(session, server.url, auth_basic, "v1", image, timings["pull (Basic)"])
            time.sleep(0.02)
        # a real client, start to end, while the lock is still held
        started = time.monotonic()
        skopeo(
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            f"admin:{password}",
            f"docker://{server.image('app')}:v1",
            f"oci:{tmp_path / 'pulled'}:v1",
            timeout=60,
        )
        skopeo_took = time.monotonic() - started
        still_held = holder.poll() is None

    report = {name: (len(t), round(max(t), 3)) for name, t in timings.items()}
    print("\nwhile the write lock was held (requests, slowest seconds):", report)
    print(f"skopeo copy (pull) took {skopeo_took:.2f}s")
    for name in ("ping (Basic)", "ping (token)", "pull (token)", "pull (Basic)"):
        count, worst = report[name]
        assert count >= 5 and worst < FAST, (name, report)
    # A token request checks a password (cached for Basic): fast too, never the lock's 20 s.
    assert report["token (Basic)"][1] < FAST, report
    assert skopeo_took < 10, skopeo_took
    assert still_held, "the lock was released before the checks ended"


def test_a_write_that_cannot_get_the_lock_gets_a_retryable_503_and_reads_go_on(
    portway_factory: Callable[..., PortwayServer],
) -> None:
    server = portway_factory(security={"enabled": True}, server={"database_busy_timeout": 1.5})
    password = server.admin_password()
    assert password
    auth_basic = basic("admin", password)
    session = requests.Session()
    image = _push(session, server.url, auth_basic, "v1", seed=2)
    bearer = "Bearer " + _token(session, server, auth_basic)
    login_bearer = "Bearer " + _token(session, server, auth_basic, scope=False)
    fresh = os.urandom(300 * 1024)

    slow_pings: list[float] = []
    stop = threading.Event()

    def pinger() -> None:
        ping_session = requests.Session()
        while not stop.is_set():
            started = time.perf_counter()
            answer = ping_session.get(f"{server.url}/v2/", headers={"Authorization": login_bearer})
            assert answer.status_code == 200
            slow_pings.append(time.perf_counter() - started)
            time.sleep(0.02)

    with write_lock_held(server.data_dir / "portway.db", 30) as holder:
        thread = threading.Thread(target=pinger, daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            answer = session.put(
                f"{server.url}/v2/{IMAGE}/manifests/v2",
                data=image.manifest,
                headers={"Authorization": auth_basic, "Content-Type": OCI_MANIFEST},
            )
            put_took = time.monotonic() - started
            started = time.monotonic()
            blob = session.post(
                f"{server.url}/v2/{IMAGE}/blobs/uploads/",
                params={"digest": digest_of(fresh)},
                data=fresh,
                headers={"Authorization": auth_basic, "Content-Type": "application/octet-stream"},
            )
            blob_took = time.monotonic() - started
            # an OAuth2 login asking for a refresh token (a database write) still logs in
            login = session.post(
                f"{server.url}/v2/token",
                data={
                    "grant_type": "password",
                    "username": "admin",
                    "password": password,
                    "service": "portway",
                    "access_type": "offline",
                    "client_id": "test",
                },
            )
            _pull(session, server.url, bearer, "v1", image)
        finally:
            stop.set()
            thread.join(10)
        assert holder.poll() is None

    print(
        f"\nmanifest PUT answered {answer.status_code} after {put_took:.2f}s, blob upload "
        f"{blob.status_code} after {blob_took:.2f}s; {len(slow_pings)} pings meanwhile, "
        f"slowest {max(slow_pings):.3f}s"
    )
    for refused, took in ((answer, put_took), (blob, blob_took)):
        assert refused.status_code == 503, refused.text
        assert refused.headers["Content-Type"].startswith("application/json")
        error = refused.json()["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert "database is busy" in error["message"], error
        assert int(refused.headers["Retry-After"]) >= 1
        assert 1.4 <= took < 5, took  # the busy timeout, not the lock's 30 s
    assert login.status_code == 200, login.text
    assert login.json()["token"]
    # The loop never waited with the writes: a blocked loop shows as pings of 1.5 s.
    assert len(slow_pings) >= 20 and max(slow_pings) < 0.5, sorted(slow_pings)[-5:]

    # the lock is gone: the same writes go through
    again = session.put(
        f"{server.url}/v2/{IMAGE}/manifests/v2",
        data=image.manifest,
        headers={"Authorization": auth_basic, "Content-Type": OCI_MANIFEST},
    )
    assert again.status_code == 201, again.text
    blob = session.post(
        f"{server.url}/v2/{IMAGE}/blobs/uploads/",
        params={"digest": digest_of(fresh)},
        data=fresh,
        headers={"Authorization": auth_basic, "Content-Type": "application/octet-stream"},
    )
    assert blob.status_code == 201, blob.text
    got = session.get(
        f"{server.url}/v2/{IMAGE}/blobs/{digest_of(fresh)}", headers={"Authorization": bearer}
    )
    assert got.status_code == 200 and got.content == fresh
