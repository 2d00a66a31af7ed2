"""A full disk gets a clear answer and costs no reads (issue 9, item 3).

The server's whole data directory (metadata database, blob store, keys, audit log) is a small
tmpfs mounted for the test, filled up for real with a file. While it is full:

- pushes are refused with 507 Insufficient Storage and an OCI error saying storage is full
  (skopeo prints "507 Insufficient Storage"; docker and podman print the same status line);
- pulls, logins (docker login) and token requests go on; the audit log's failure is logged
  once, not answered with errors;
- once the file is removed, pushes work again and the audit log says it is written again,
  without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.dockerd import Dockerd
from support.engines import skopeo
from support.images import make_oci_layout
from support.security import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, basic, digest_of
from support.server import PortwayServer
from support.smallfs import fill, free_bytes, small_fs

pytestmark = pytest.mark.slow

NO_TLS_DEST, NO_TLS_SRC = "--dest-tls-verify=false", "--src-tls-verify=false"


@pytest.fixture
def full_disk_server(tmp_path: Path) -> Iterator[PortwayServer]:
    server = PortwayServer(tmp_path / "portway", security={"enabled": True})
    with small_fs(server.data_dir, 48):
        server.start()
        try:
            yield server
        finally:
            server.stop()
            print(server.log()[-4000:])


def _storage_full(answer: requests.Response) -> None:
    assert answer.status_code == 507, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"].startswith("storage is full"), error


def _token(server: PortwayServer, auth: str) -> requests.Response:
    return requests.get(
        f"{server.url}/v2/token",
        params={"service": "portway", "scope": "repository:docker-hosted/seed:pull"},
        headers={"Authorization": auth},
        timeout=30,
    )


def test_full_disk_refuses_writes_clearly_and_keeps_serving_reads_and_logins(
    full_disk_server: PortwayServer, tmp_path: Path
) -> None:
    server = full_disk_server
    password = server.admin_password()
    assert password
    creds = f"admin:{password}"
    auth = basic("admin", password)
    seed = make_oci_layout(tmp_path / "seed", "v1", layers=2, layer_size=256 * 1024, seed=1)
    fresh = make_oci_layout(tmp_path / "fresh", "v1", layers=2, layer_size=1024 * 1024, seed=2)
    seed_ref = f"docker://{server.image('seed')}:v1"
    skopeo("copy", NO_TLS_DEST, "--dest-creds", creds, seed.ref, seed_ref)
    assert _token(server, auth).status_code == 200  # the signing key exists from here on

    filler = fill(server.data_dir)
    assert free_bytes(server.data_dir) < 64 * 1024
    full_since = time.monotonic()

    # -- writes: a clear refusal, the status line clients print -----------------------
    pushed = skopeo(
        "copy", NO_TLS_DEST, "--dest-creds", creds, fresh.ref,
        f"docker://{server.image('fresh')}:v1", check=False, timeout=120,
    )  # fmt: skip
    assert pushed.returncode != 0
    assert "507 Insufficient Storage" in pushed.stdout + pushed.stderr, pushed.stderr
    blob = os.urandom(512 * 1024)
    _storage_full(
        requests.post(
            f"{server.url}/v2/docker-hosted/raw/blobs/uploads/",
            params={"digest": digest_of(blob)},
            data=blob,
            headers={"Authorization": auth, "Content-Type": "application/octet-stream"},
            timeout=30,
        )
    )
    # a manifest the database has no room for (its pages outgrow what SQLite holds spare)
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer_digest = seed.layers[0].digest
    big = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": seed.config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": 1}],
            "annotations": {"padding": os.urandom(1536 * 1024).hex()},
        }
    ).encode()
    _storage_full(
        requests.put(
            f"{server.url}/v2/docker-hosted/seed/manifests/big",
            data=big,
            headers={"Authorization": auth, "Content-Type": OCI_MANIFEST},
            timeout=60,
        )
    )

    # -- reads, logins and tokens go on ------------------------------------------------
    pulled = tmp_path / "pulled"
    skopeo("copy", NO_TLS_SRC, "--src-creds", creds, seed_ref, f"oci:{pulled}:v1")
    index = json.loads((pulled / "index.json").read_text())
    assert index["manifests"][0]["digest"] == seed.manifest_digest
    for _ in range(40):  # more records than the audit log's last page has room for
        token = _token(server, auth)  # each one is audited: the audit log cannot grow
        assert token.status_code == 200, token.text
    wrong = _token(server, basic("admin", "not-the-password"))
    assert wrong.status_code == 401, wrong.text
    dockerd = Dockerd(tmp_path / "dockerd").start()
    try:
        dockerd.docker("login", server.host, "-u", "admin", "--password-stdin", input=password)
        dockerd.docker("pull", f"{server.image('seed')}:v1")
    finally:
        dockerd.stop()
    full_for = time.monotonic() - full_since

    log = server.log()
    # reported once a minute, not once a request
    assert 1 <= log.count("cannot be written") <= 1 + int(full_for // 60), log[-3000:]
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
    refusals = [line for line in log.splitlines() if "portway.http" in line and "refused" in line]
    assert 1 <= len(refusals) <= 1 + int(full_for // 60), refusals
    assert all("storage is full" in line for line in refusals), refusals

    # -- space returns: no restart needed ----------------------------------------------
    filler.unlink()
    skopeo(
        "copy", NO_TLS_DEST, "--dest-creds", creds, fresh.ref,
        f"docker://{server.image('fresh')}:v1",
    )  # fmt: skip
    again = tmp_path / "again"
    skopeo("copy", NO_TLS_SRC, "--src-creds", creds, f"docker://{server.image('fresh')}:v1",
           f"oci:{again}:v1")  # fmt: skip
    assert json.loads((again / "index.json").read_text())["manifests"][0]["digest"]
    assert _token(server, auth).status_code == 200
    deadline = time.monotonic() + 5
    while "is written again" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "is written again" in server.log()
    audit = (server.data_dir / "audit.log").read_text().splitlines()
    assert json.loads(audit[-1])["event"] == "token.issue"
    shutil.rmtree(pulled, ignore_errors=True)


def test_audit_log_on_a_full_disk_reports_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from portway.auth.audit import AuditLog

    with small_fs(tmp_path / "fs", 1) as root:
        audit = AuditLog(root / "audit.log")
        audit.write("login", principal="alice")
        filler = fill(root)
        with caplog.at_level("WARNING", logger="portway.audit"):
            for n in range(200):  # more than the file's last page has room for
                audit.write("login", principal=f"user-{n}")
        assert not audit.healthy and audit.lost > 0
        assert "cannot be written" in caplog.records[0].message
        assert len(caplog.records) == 1  # once a minute, not once a record

        filler.unlink()
        caplog.clear()
        with caplog.at_level("WARNING", logger="portway.audit"):
            audit.write("login", principal="bob")
        assert audit.healthy
        assert "written again" in caplog.records[0].message
        lines = (root / "audit.log").read_text().splitlines()
        assert json.loads(lines[0])["principal"] == "alice"
        assert json.loads(lines[-1])["principal"] == "bob"  # whole, after a cut-off line
