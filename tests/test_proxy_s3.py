"""A proxy repository whose blobs are on S3 (Ceph RGW), CNCF distribution upstream: the cache
fill tees the upstream body into a multipart upload at the blob's address while the clients
get it from the spool; the upload is completed only after the digest verified, and a fill
cut short leaves nothing in the bucket (no object, no multipart upload)."""

from __future__ import annotations

import os
from pathlib import Path

import requests
import urllib3

from conftest import DistributionFactory
from proxy_support import Relay, get_blob, proxy, v2, wait_for
from s3_support import MiB, bucket_keys, object_sha256, s3_server
from support.ceph import CephRGW
from upstream_support import Pusher, sha256


def _blob_key(prefix: str, digest: str) -> str:
    hexpart = digest.split(":", 1)[1]
    return f"{prefix}/blobs/sha256/{hexpart[:2]}/{hexpart}"


def test_cold_pull_through_a_proxy_on_s3_stores_the_verified_blob(
    tmp_path: Path, ceph_rgw: CephRGW, distribution_factory: DistributionFactory
) -> None:
    upstream = distribution_factory()
    data = os.urandom(12 * MiB + 12345)  # more than two 5 MiB parts and a short last one
    digest = Pusher(upstream.url).push_blob("team/big", data)
    bucket = ceph_rgw.make_bucket("proxy-tee")
    node = s3_server(tmp_path, ceph_rgw, bucket, repositories=[proxy("hub", upstream.url)]).start(
        timeout=60
    )
    try:
        prefix = node.tables["storage"]["prefix"]
        key = _blob_key(prefix, digest)
        got = get_blob(node, "hub", "team/big", digest)
        assert got.status_code == 200
        assert got.content == data
        wait_for(lambda: key in bucket_keys(ceph_rgw, bucket, prefix), what="the blob in S3")
        assert object_sha256(ceph_rgw, bucket, key) == digest.split(":", 1)[1]
        # Teed straight to its address: no temporary object, no upload left open.
        assert bucket_keys(ceph_rgw, bucket, prefix) == [key]
        # Served from the bucket now, whole.
        again = get_blob(node, "hub", "team/big", digest)
        assert again.status_code == 200 and sha256(again.content) == digest
    finally:
        node.stop()


def test_upstream_killed_mid_blob_leaves_nothing_in_the_bucket(
    tmp_path: Path, ceph_rgw: CephRGW, distribution_factory: DistributionFactory
) -> None:
    upstream = distribution_factory()
    data = os.urandom(12 * MiB)
    digest = Pusher(upstream.url).push_blob("team/killed", data)
    relay = Relay(tmp_path, upstream.port, rate=2 * MiB).start()
    bucket = ceph_rgw.make_bucket("proxy-tee-killed")
    node = s3_server(tmp_path, ceph_rgw, bucket, repositories=[proxy("hub", relay.url)]).start(
        timeout=60
    )
    try:
        prefix = node.tables["storage"]["prefix"]
        url = v2(node, "hub", f"team/killed/blobs/{digest}")
        resp = requests.get(url, stream=True, timeout=60)
        try:
            assert resp.status_code == 200
            # Past the first 5 MiB part: the tee has a multipart upload open when it dies.
            first = resp.raw.read(7 * MiB)
            assert len(first) == 7 * MiB
            key = _blob_key(prefix, digest)
            # Teed while it streams: the upload at the blob's address is open, not complete.
            wait_for(
                lambda: bucket_keys(ceph_rgw, bucket, prefix) == [f"(multipart) {key}"],
                what="the tee's multipart upload",
            )
            relay.kill()  # the upstream dies with the rest unsent
            try:
                got = len(first) + len(resp.raw.read())
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                got = -1  # a cut connection: the error a client must see
            assert got < len(data), "the whole blob arrived although the upstream died"
        finally:
            resp.close()
        # The fill fails, aborts its upload: nothing at the address, no parts kept.
        wait_for(lambda: not bucket_keys(ceph_rgw, bucket, prefix), what="the upload aborted")
        assert requests.head(url, timeout=30).status_code != 200  # still down, never cached
        relay.start()  # the upstream is back on the same address
        again = get_blob(node, "hub", "team/killed", digest)
        assert again.status_code == 200 and sha256(again.content) == digest
        wait_for(lambda: bucket_keys(ceph_rgw, bucket, prefix) == [key], what="the blob in S3")
    finally:
        node.stop()
        relay.stop()
