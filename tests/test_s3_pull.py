"""Streamed blob GETs from a repository on S3 (Ceph RGW, plain HTTP): the body is spliced
from the bucket's socket to the client's (portway.http.splice). Bytes match, the client's
connection stays usable after a spliced answer, and a client that hangs up mid-body harms
neither the worker nor the next GET. /metrics shows the bucket's operations."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import requests

from metrics_support import key, label_values, settle, value
from s3_support import MiB, s3_server
from support.ceph import CephRGW
from upstream_support import Pusher, sha256


def test_spliced_pulls_match_and_keep_the_connection_usable(
    tmp_path: Path, ceph_rgw: CephRGW
) -> None:
    bucket = ceph_rgw.make_bucket("pull-splice")
    node = s3_server(tmp_path, ceph_rgw, bucket).start(timeout=60)
    try:
        base = f"{node.url}/repository/docker-hosted"
        big = os.urandom(20 * MiB + 7)
        small = os.urandom(3000)
        digests = [Pusher(base).push_blob("team/pull", data) for data in (big, small)]
        session = requests.Session()
        for _ in range(2):  # one keep-alive connection for all four answers
            for data, digest in zip((big, small), digests, strict=True):
                got = session.get(f"{base}/v2/team/pull/blobs/{digest}", timeout=60)
                assert got.status_code == 200
                assert int(got.headers["Content-Length"]) == len(data)
                assert got.content == data and sha256(got.content) == digest

        # A client that reads a little and hangs up: the worker goes on serving.
        host, port = node.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            path = f"/repository/docker-hosted/v2/team/pull/blobs/{digests[0]}"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = sock.recv(64 * 1024)
            assert head.startswith(b"HTTP/1.1 200")
        again = requests.get(f"{base}/v2/team/pull/blobs/{digests[0]}", timeout=60)
        assert again.status_code == 200 and sha256(again.content) == digests[0]

        # The bucket's latencies in /metrics: each GET opened one spliced object read (the
        # hung-up one too) after a size check; the 20 MiB body went up in 5 MiB parts.
        storage = "portway_storage_operation_duration_seconds_count"
        samples = settle(node.url, {key(storage, backend="s3", operation="read_open"): 6})
        assert value(samples, storage, backend="s3", operation="stat") >= 6
        assert value(samples, storage, backend="s3", operation="put_part") >= 4
        assert value(samples, storage, backend="s3", operation="complete_parts") >= 1
        assert label_values(samples, storage, "backend") == {"s3"}
    finally:
        node.stop()
