"""Usage and quotas against a real `portway serve`: a blob shared by several images counts
once per repository and once in the blob store; a push that would exceed `quota_bytes` is
refused at the closing PUT of the blob that exceeds it (DENIED, a message naming the quota),
and leaves nothing counted; `portway repo show` prints the usage."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from push_support import Registry, manifest_for, sha256
from support.server import PortwayServer

QUOTA = 100_000

# On the data folder's SQLite and on PostgreSQL (a fresh database per test).
pytestmark = pytest.mark.parametrize("server_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def server(tmp_path: Path, server_database: str | None) -> Iterator[PortwayServer]:
    repos = [
        {"name": "team", "type": "hosted", "quota_bytes": QUOTA, "quota_warning": 0.5},
        {"name": "other", "type": "hosted"},
    ]
    srv = PortwayServer(tmp_path, repositories=repos, database_url=server_database)
    srv.start(timeout=60)
    yield srv
    srv.stop()


def usage(server: PortwayServer, name: str) -> dict[str, Any]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "repo",
            "show",
            name,
            "--config",
            str(server.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    shown: dict[str, Any] = json.loads(run.stdout)["usage"]
    return shown


def blob(n: int, size: int) -> bytes:
    return random.Random(n).randbytes(size)


def test_a_push_over_quota_is_refused_and_nothing_counts(server: PortwayServer) -> None:
    team = Registry(f"{server.url}/repository/team")
    other = Registry(f"{server.url}/repository/other")
    config, a, b, c = b'{"q":1}', blob(1, 40_000), blob(2, 40_000), blob(3, 30_000)
    for data in (config, a, b):
        assert team.upload_monolithic("app", sha256(data), data, len(data)).status == 201
    assert team.put_manifest("app", "v1", manifest_for(config, [a, b])).status == 201
    # The same layers in a second image, and in another repository: counted once per scope.
    for data in (config, a, b):
        assert team.upload_chunked("app2", [data], sha256(data)).status == 201
        assert other.upload_monolithic("app", sha256(data), data, len(data)).status == 201
    used = len(config) + len(a) + len(b)
    shown = usage(server, "team")
    assert shown["bytes"] == used and shown["quota_bytes"] == QUOTA and shown["over_warning"]
    assert shown["blob_store_bytes"] == used
    # c would take the repository to 110,007 bytes: its closing PUT is refused.
    refused = team.upload_chunked("app", [c[:10_000], c[10_000:]], sha256(c))
    assert refused.status == 403, refused.body
    error = json.loads(refused.body)["errors"][0]
    assert error["code"] == "DENIED"
    assert "quota" in error["message"] and str(QUOTA) in error["message"], error
    assert team.head_blob("app", sha256(c)).status == 404
    mono = team.upload_monolithic("app", sha256(c), c, len(c))
    assert mono.status == 403 and json.loads(mono.body)["errors"][0]["code"] == "DENIED"
    assert usage(server, "team")["bytes"] == used  # nothing of c counted
    # Another repository has no quota; a blob the repository holds already costs nothing.
    assert other.upload_monolithic("app", sha256(c), c, len(c)).status == 201
    assert team.upload_chunked("app3", [a], sha256(a)).status == 201
    assert usage(server, "other")["bytes"] == used + len(c)
