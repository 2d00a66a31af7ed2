"""A 3-node cluster (PostgreSQL, blobs in one S3 bucket on Ceph RGW, HAProxy round-robin):
real clients push and pull through the front door; many chunked pushes at once have their
requests spread over the nodes, every byte verified; a rolling restart fails no pull; an
upload survives SIGKILL of its node. See tests/support/cluster.py for what nodes share."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from portway.storage.part_uploads import LEASE  # an S3 upload session's lease
from support.ceph import CephRGW
from support.cluster import (
    BLOCK,
    Cluster,
    SizedBody,
    node_of,
    numbered_blob,
    s3_storage,
    start_cluster,
    token,
)
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import OciImage, files_in_docker_archive
from support.ports import free_port
from support.security import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Client, make_image, push_image

PUSHES = 50
CHUNK = 128 * 1024
CHUNKS = 3


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, ceph_rgw: CephRGW
) -> Iterator[Cluster]:
    bucket = ceph_rgw.make_bucket(f"cluster-{uuid.uuid4().hex[:8]}")
    s3 = s3_storage(ceph_rgw, bucket, part_size=5 * 1024 * 1024, redirect="always")
    with start_cluster(tmp_path_factory.mktemp("cluster"), postgres_url, **s3) as started:
        yield started


def creds(cluster: Cluster) -> str:
    return ":".join(cluster.admin)


def raw_manifest(ref: str, cluster: Cluster) -> bytes:
    out = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds(cluster), ref)
    return out.stdout.encode()


def test_skopeo_push_through_front_seen_by_every_node(
    cluster: Cluster, oci_image: OciImage, tmp_path: Path
) -> None:
    digestfile = tmp_path / "digest"
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", creds(cluster),
        "--digestfile", str(digestfile), oci_image.ref, f"docker://{cluster.image('skopeo')}:v1",
    )
    pushed = digestfile.read_text().strip()
    for node in cluster.nodes:
        assert sha256(raw_manifest(f"docker://{node.image('skopeo')}:v1", cluster)) == pushed
    out = tmp_path / "out"
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", creds(cluster),
        f"docker://{cluster.image('skopeo')}@{pushed}", f"dir:{out}",
    )
    manifest = json.loads((out / "manifest.json").read_bytes())
    for layer in manifest["layers"]:
        blob = (out / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert sha256(blob) == layer["digest"]


def test_podman_push_pull_through_front(
    cluster: Cluster, oci_image: OciImage, container_storage: ContainerStorage, tmp_path: Path
) -> None:
    podman = container_storage.podman
    user, password = cluster.admin
    podman("login", "--tls-verify=false", "-u", user, "-p", password, cluster.front)
    local_id = podman("pull", "--quiet", oci_image.ref).stdout.split()[-1]
    target = f"{cluster.image('podman')}:v1"
    podman("tag", local_id, target)
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--digestfile", str(digestfile), target)
    pushed = digestfile.read_text().strip()
    podman("rmi", "--force", local_id)
    podman("pull", "--tls-verify=false", f"{cluster.image('podman')}@{pushed}")
    archive = tmp_path / "saved.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive),
           f"{cluster.image('podman')}@{pushed}")  # fmt: skip
    assert files_in_docker_archive(archive) == oci_image.files


def _docker_blob_gets(cluster: Cluster, image: str) -> dict[str, set[int]]:
    """Layer digest -> statuses of the blob GETs docker made for it, from every node's
    access log (the `agent="docker/..."` lines)."""
    line = re.compile(
        rf'"GET /v2/{re.escape(image)}/blobs/(sha256:[0-9a-f]{{64}})" (\d{{3}}) .* agent="docker/'
    )
    seen: dict[str, set[int]] = {}
    for node in cluster.nodes:
        for found in line.finditer(node.log()):
            seen.setdefault(found.group(1), set()).add(int(found.group(2)))
    return seen


def test_docker_push_pull_through_front(
    cluster: Cluster, dockerd: Dockerd, oci_image: OciImage, tmp_path: Path
) -> None:
    """docker pushes and pulls through the front door; the cluster's `redirect = "always"`
    sends each layer GET to the bucket (a 307 in the answering node's access log), docker
    follows it to Ceph RGW, and the saved image has every file."""
    user, password = cluster.admin
    login = dockerd.docker("login", "-u", user, "--password-stdin", cluster.front,
                           input=password)  # fmt: skip
    assert "Login Succeeded" in login.stdout
    target = f"{cluster.image('docker')}:v1"
    dockerd.load_oci(oci_image.ref, target, tmp_path)
    pushed = dockerd.docker("push", target).stdout
    dockerd.docker("rmi", target)
    dockerd.docker("pull", target)
    archive = tmp_path / "saved.tar"
    dockerd.docker("save", "-o", str(archive), target)
    assert files_in_docker_archive(archive) == oci_image.files
    assert "digest: sha256:" in pushed
    dockerd.docker("logout", cluster.front)
    # The layers docker pushed (its own compression, not the OCI layout's digests).
    bearer = token(cluster.front_url, cluster.admin, ["repository:docker-hosted/docker:pull"])
    manifest = requests.get(
        f"{cluster.front_url}/v2/docker-hosted/docker/manifests/v1", timeout=60,
        headers={"Authorization": f"Bearer {bearer}",
                 "Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )  # fmt: skip
    assert manifest.status_code == 200, manifest.text
    layers = {layer["digest"] for layer in manifest.json()["layers"]}
    deadline = time.monotonic() + 5  # access log lines are written at most 0.2 s late
    while not layers <= set(gets := _docker_blob_gets(cluster, "docker-hosted/docker")):
        assert time.monotonic() < deadline, (layers, gets)
        time.sleep(0.3)
    assert all(gets[digest] == {307} for digest in layers), gets


# -- many chunked pushes at once ----------------------------------------------------------


def _push_chunked(cluster: Cluster, bearer: str, index: int) -> tuple[str, set[str], str]:
    """One image whose layer goes up in PATCH chunks, each request on a new connection (so
    HAProxy picks a node for each); returns (layer digest, nodes the upload met, manifest
    digest)."""
    auth = {"Authorization": f"Bearer {bearer}"}
    base = cluster.front_url
    name = f"docker-hosted/chunked-{index}"
    layer = os.urandom(CHUNK * CHUNKS)
    nodes: set[str] = set()
    answer = requests.post(f"{base}/v2/{name}/blobs/uploads/", headers=auth, timeout=60)
    assert answer.status_code == 202, answer.text
    nodes.add(node_of(answer))
    for part in range(CHUNKS):
        body = layer[part * CHUNK : (part + 1) * CHUNK]
        answer = requests.patch(
            urljoin(base, answer.headers["Location"]),
            data=body,
            headers={**auth, "Content-Type": "application/octet-stream",
                     "Content-Range": f"{part * CHUNK}-{(part + 1) * CHUNK - 1}"},
            timeout=60,
        )  # fmt: skip
        assert answer.status_code == 202, (part, answer.status_code, answer.text)
        nodes.add(node_of(answer))
    location = answer.headers["Location"]
    joiner = "&" if "?" in location else "?"
    answer = requests.put(
        urljoin(base, f"{location}{joiner}digest={sha256(layer)}"), headers=auth, timeout=60
    )
    assert answer.status_code == 201, answer.text
    nodes.add(node_of(answer))
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": index}).encode()
    answer = requests.post(
        f"{base}/v2/{name}/blobs/uploads/", params={"digest": sha256(config)}, data=config,
        headers={**auth, "Content-Type": "application/octet-stream"}, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
    }).encode()  # fmt: skip
    answer = requests.put(
        f"{base}/v2/{name}/manifests/v1", data=manifest,
        headers={**auth, "Content-Type": OCI_MANIFEST}, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    return sha256(layer), nodes, sha256(manifest)


def test_concurrent_chunked_pushes_spread_over_nodes(cluster: Cluster) -> None:
    # Tokens signed by whichever node the front door picked, used on every node; one token
    # for ten images (at most 16 scopes per token request), so few password checks.
    bearers = [
        token(cluster.front_url, cluster.admin,
              [f"repository:docker-hosted/chunked-{i}:pull,push" for i in range(g, g + 10)])
        for g in range(0, PUSHES, 10)
    ]  # fmt: skip
    with ThreadPoolExecutor(PUSHES) as pool:
        results = list(
            pool.map(lambda i: _push_chunked(cluster, bearers[i // 10], i), range(PUSHES))
        )
    spread = sum(len(nodes) > 1 for _, nodes, _ in results)
    every = set().union(*(nodes for _, nodes, _ in results))
    assert len(every) == len(cluster.nodes), every
    # Five requests per upload, round-robin among 50 at once: nearly every upload meets
    # several nodes (all five on one node happens, rarely).
    assert spread >= PUSHES * 0.8, [sorted(n) for _, n, _ in results]
    for index, (layer_digest, _, manifest_digest) in enumerate(results):
        node = cluster.nodes[index % len(cluster.nodes)]  # read back from one node directly
        name = f"docker-hosted/chunked-{index}"
        auth = {"Authorization": f"Bearer {bearers[index // 10]}"}
        blob = requests.get(f"{node.url}/v2/{name}/blobs/{layer_digest}", headers=auth,
                            timeout=60)  # fmt: skip
        assert blob.status_code == 200 and sha256(blob.content) == layer_digest, index
        got = requests.get(f"{node.url}/v2/{name}/manifests/v1",
                           headers={**auth, "Accept": OCI_MANIFEST}, timeout=60)  # fmt: skip
        assert got.status_code == 200 and sha256(got.content) == manifest_digest, index


# -- rolling restart behind the front door ------------------------------------------------


def test_rolling_restart_fails_no_request(cluster: Cluster) -> None:
    """Two nodes restarted in turn (SIGTERM, start, ready again) while a client pulls through
    HAProxy on new connections: the draining node's refused connections are resent to
    another node, its /readyz 503 takes it out; no pull fails."""
    layer = os.urandom(256 * 1024)
    bearer = token(cluster.front_url, cluster.admin, ["repository:docker-hosted/rolling:pull,push"])
    auth = {"Authorization": f"Bearer {bearer}"}
    answer = requests.post(
        f"{cluster.front_url}/v2/docker-hosted/rolling/blobs/uploads/",
        params={"digest": sha256(layer)}, data=layer, headers=auth, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    stop = threading.Event()
    outcomes: list[int | str] = []

    def pull() -> None:
        while not stop.is_set():
            try:
                got = requests.get(
                    f"{cluster.front_url}/v2/docker-hosted/rolling/blobs/{sha256(layer)}",
                    headers=auth, timeout=60,
                )  # fmt: skip
                ok = got.status_code == 200 and got.content == layer
                outcomes.append(200 if ok else got.status_code)
            except requests.RequestException as exc:
                outcomes.append(type(exc).__name__)

    puller = threading.Thread(target=pull, daemon=True)
    puller.start()
    try:
        for node in cluster.nodes[:2]:
            assert node.stop() == 0
            node.start(60)
            deadline = time.monotonic() + 30
            while requests.get(f"{node.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            time.sleep(2.5)  # one passed check (every 2 s) puts it back behind HAProxy
    finally:
        stop.set()
        puller.join(60)
    failed = [o for o in outcomes if o != 200]
    assert len(outcomes) > 20 and not failed, (len(outcomes), failed[:10], cluster.logs())


# -- SIGKILL of the node holding a half-done upload ----------------------------------------

CRASH_SIZE = 1024 * 1024 * 1024  # the 1 GiB, generated as it is sent (never on disk)


def _expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in numbered_blob(0, size):
        digest.update(piece)  # releases the GIL: runs beside the upload
    return "sha256:" + digest.hexdigest()


def _status(cluster: Cluster, location: str, auth: dict[str, str]) -> int:
    """Bytes the upload holds, asked through the front door (any live node answers)."""
    got = requests.get(urljoin(cluster.front_url, location), headers=auth, timeout=60)
    assert got.status_code == 204, (got.status_code, got.text)
    return int(got.headers["Range"].rpartition("-")[2]) + 1


def test_upload_survives_sigkill_of_its_node(cluster: Cluster) -> None:
    """The first half of the upload is acknowledged (202) by one node; that node is killed in
    the middle of the PATCH with the second half; the client asks through the front door
    (another node answers) how much the upload holds (at least the acknowledged half), sends
    the rest there and closes it; a third node serves the blob with the right digest."""
    half = CRASH_SIZE // 2
    hashing = ThreadPoolExecutor(1)
    expected_digest = hashing.submit(_expected_digest, CRASH_SIZE)
    hashing.shutdown(wait=False)
    bearer = token(cluster.front_url, cluster.admin, ["repository:docker-hosted/crash:pull,push"])
    auth = {"Authorization": f"Bearer {bearer}"}
    octets = {**auth, "Content-Type": "application/octet-stream"}
    victim = cluster.nodes[0]
    started = requests.post(f"{victim.url}/v2/docker-hosted/crash/blobs/uploads/", headers=auth,
                            timeout=60)  # fmt: skip
    assert started.status_code == 202, started.text
    first = requests.patch(
        urljoin(victim.url, started.headers["Location"]), data=SizedBody(0, half),
        headers={**octets, "Content-Range": f"0-{half - 1}"}, timeout=300,
    )  # fmt: skip
    assert first.status_code == 202, first.text
    location = first.headers["Location"]
    midway, resume, errors = threading.Event(), threading.Event(), []

    def body() -> Iterator[bytes]:
        for index, piece in enumerate(numbered_blob(half, CRASH_SIZE)):
            if index == 32:  # 32 MiB of the second half sent: the node is killed now
                midway.set()
                resume.wait(120)
            yield piece

    def send() -> None:
        try:
            requests.patch(urljoin(victim.url, location), data=body(), headers=octets,
                           timeout=120)  # fmt: skip
        except requests.RequestException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert midway.wait(120)
        time.sleep(1)  # the node reads what is in flight
        victim.kill()  # SIGKILL mid-request: no drain, no cleanup
        resume.set()
        sender.join(120)
        assert errors, "the PATCH to the killed node should have failed"
        held = _status(cluster, location, auth)  # through the front door: another node
        assert half <= held < CRASH_SIZE, held  # what was acknowledged is kept
        # On S3 the killed node's lease on the session (part_uploads.LEASE) runs out
        # before another node may write it: until then the session answers "busy".
        killed = time.monotonic()
        while True:
            rest = requests.patch(
                urljoin(cluster.front_url, location), data=SizedBody(held, CRASH_SIZE),
                headers={**octets, "Content-Range": f"{held}-{CRASH_SIZE - 1}"}, timeout=300,
            )  # fmt: skip
            if rest.status_code != 400 or "busy" not in rest.text:
                break
            assert time.monotonic() - killed < LEASE + 30, rest.text
            time.sleep(2)
        print(f"session writable again {time.monotonic() - killed:.1f} s after the kill")
        assert rest.status_code == 202, rest.text
        expected = expected_digest.result(300)
        done = requests.put(
            urljoin(cluster.front_url, rest.headers["Location"]), params={"digest": expected},
            headers=auth, timeout=300,
        )  # fmt: skip
        assert done.status_code == 201, done.text
        reader = cluster.nodes[2]
        got = requests.get(f"{reader.url}/v2/docker-hosted/crash/blobs/{expected}", headers=auth,
                           stream=True, timeout=300)  # fmt: skip
        check = hashlib.sha256()
        for piece in got.iter_content(BLOCK):
            check.update(piece)
        assert got.status_code == 200 and "sha256:" + check.hexdigest() == expected
    finally:
        resume.set()
        if not victim.alive():
            victim.start(60)  # the module's cluster stays whole for later tests


# -- presigned redirects, as portway doctor --cluster sees them ----------------------------


def _doctor(*args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", "doctor", *args, "--user", "admin"],
        input=password + "\n", capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_doctor_fetches_presigned_redirects(cluster: Cluster) -> None:
    """Blob GETs redirect to the bucket ([storage] redirect = "always"); the doctor follows
    one from here, and flags a node whose public_endpoint clients cannot reach, and a node
    whose bucket does not exist (its /readyz answers 503)."""
    user, password = cluster.admin
    client = Client(cluster.front_url, user=user, password=password)
    pushed = push_image(client, "docker-hosted/redirected", "v1", make_image("redirect"))
    assert pushed.status_code == 201, pushed.text
    nodes = ",".join(node.url for node in cluster.nodes)
    run = _doctor("--cluster", nodes, password=password)
    assert "PASS  presigned blob URLs can be fetched from here: " in run.stdout, run.stdout
    assert run.returncode == 0, run.stdout
    storage = {**cluster.storage_table(), "public_endpoint": f"http://127.0.0.1:{free_port()}"}
    odd = cluster.make_node("odd-endpoint", storage=storage)
    gone = cluster.make_node(
        "odd-bucket", storage={**cluster.storage_table(), "bucket": "no-such-bucket"}
    )
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda node: node.start(60), (odd, gone)))
    try:
        run = _doctor("--cluster", odd.url, password=password)
        assert "FAIL  presigned blob URLs can be fetched from here: " in run.stdout, run.stdout
        assert "public_endpoint" in run.stdout and run.returncode == 1
        run = _doctor("--cluster", gone.url, password=password)
        assert f"FAIL  {gone.url} is ready: status 503; blob_store: cannot reach the bucket " \
            "no-such-bucket" in run.stdout, run.stdout
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda node: node.stop(), (odd, gone)))
