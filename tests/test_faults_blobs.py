"""Damaged blob files are never served as good (issue 9, item 6).

A blob file cut short on disk, or removed, answers 404 BLOB_UNKNOWN on HEAD and GET alike
(before: a cut file was served as 200 with its short length while HEAD announced the recorded
one, and a removed file kept HEAD at 200, so docker's push skipped it and the loss never
healed). A real client's re-push of the image then heals it. Each damaged blob is logged once
as a storage fault and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import requests

from portway.oci.digest import Digest
from portway.storage.blobstore import BlobStore
from portway.storage.filesystem import FilesystemBackend
from support.engines import skopeo
from support.images import make_oci_layout
from support.server import PortwayServer

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
NO_TLS_DEST, NO_TLS_SRC = "--dest-tls-verify=false", "--src-tls-verify=false"


def _blob_file(server: PortwayServer, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return server.data_dir / "storage" / "blobs" / algorithm / hexdigest[:2] / hexdigest


def _unknown(answer: requests.Response, head: bool) -> None:
    assert answer.status_code == 404, (answer.status_code, answer.headers)
    if not head:
        assert answer.json()["errors"][0]["code"] == "BLOB_UNKNOWN", answer.text


def test_cut_and_removed_blob_files_answer_404_and_a_re_push_heals_them(
    portway_factory: Callable[..., PortwayServer], tmp_path: Path
) -> None:
    server = portway_factory()
    image = make_oci_layout(tmp_path / "layout", "v1", layers=2, layer_size=3 * MiB, seed=6)
    ref = f"docker://{server.image('damaged')}:v1"
    skopeo("copy", NO_TLS_DEST, image.ref, ref)
    cut, gone = image.layers[0], image.layers[1]
    assert cut.size >= 3 * MiB
    base = f"{server.repository_url()}/v2/damaged/blobs"
    assert requests.head(f"{base}/{cut.digest}", timeout=30).status_code == 200

    with open(_blob_file(server, cut.digest), "r+b") as f:
        f.truncate(MiB)
    _blob_file(server, gone.digest).unlink()

    for _ in range(2):  # asked again and again, reported once
        for layer in (cut, gone):
            _unknown(requests.head(f"{base}/{layer.digest}", timeout=30), head=True)
            _unknown(requests.get(f"{base}/{layer.digest}", timeout=30), head=False)
        # through repository-path routing too
        path_base = f"{server.url}/v2/docker-hosted/damaged/blobs"
        _unknown(requests.head(f"{path_base}/{cut.digest}", timeout=30), head=True)
    # a pull fails on the damaged layer instead of taking 1 MiB for 3
    failed = skopeo("copy", NO_TLS_SRC, ref, f"oci:{tmp_path / 'broken'}:v1", check=False)
    assert failed.returncode != 0
    log = server.log()
    assert log.count(f"storage fault: blob {cut.digest} has {MiB} bytes") == 1, log[-2000:]
    assert log.count(f"storage fault: blob {gone.digest} is missing") == 1, log[-2000:]

    # the same image pushed again by a real client: it uploads what answered 404
    skopeo("copy", NO_TLS_DEST, image.ref, ref)
    for layer in (cut, gone):
        head = requests.head(f"{base}/{layer.digest}", timeout=30)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(layer.size)
        got = requests.get(f"{base}/{layer.digest}", timeout=60)
        assert got.status_code == 200
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == layer.digest
    assert _blob_file(server, cut.digest).stat().st_size == cut.size
    pulled = tmp_path / "pulled"
    skopeo("copy", NO_TLS_SRC, ref, f"oci:{pulled}:v1")
    index = json.loads((pulled / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_damaged_blobs_are_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlobStore(FilesystemBackend(tmp_path / "storage"))
    data = os.urandom(3 * MiB)
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())

    async def scenario() -> list[bool]:
        await store.ingest(_chunks(data), digest, len(data))
        seen = [await store.intact(digest, len(data))]
        path = store.backend.local_path(store.blob_key(digest))
        assert path is not None
        os.truncate(path, MiB)
        seen += [await store.intact(digest, len(data)) for _ in range(3)]
        await store.ingest(_chunks(data), digest, len(data))  # pushed again: healed
        seen.append(await store.intact(digest, len(data)))
        os.unlink(path)
        seen.append(await store.intact(digest, len(data)))
        return seen

    with caplog.at_level(logging.ERROR, logger="portway.storage"):
        seen = asyncio.run(scenario())
    assert seen == [True, False, False, False, True, False]
    assert store.faults.damaged_blobs == 4
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # once when cut, once more when removed after healing
    assert f"has {MiB} bytes" in messages[0] and "is missing" in messages[1]
