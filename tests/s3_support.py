"""A real `portway serve` on `[storage] type = "s3"` (Ceph RGW), and looks into its bucket."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.ceph import CephRGW
from support.cluster import ClusterNode

MiB = 1024 * 1024


def s3_server(
    tmp_path: Path,
    rgw: CephRGW,
    bucket: str,
    *,
    server: Mapping[str, Any] | None = None,
    repositories: list[dict[str, Any]] | None = None,
    workers: int = 1,
    **storage: Any,
) -> ClusterNode:
    table = {
        "type": "s3",
        "bucket": bucket,
        "endpoint": rgw.endpoint,
        "region": rgw.region,
        "prefix": f"p-{uuid.uuid4().hex[:8]}",
        "part_size": 5 * MiB,
        **storage,
    }
    return ClusterNode(
        tmp_path / "portway",
        tables={"storage": table},
        server=server,
        repositories=repositories,
        workers=workers,
        env={"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key},
    )


def bucket_keys(rgw: CephRGW, bucket: str, prefix: str) -> list[str]:
    """Every object under `prefix`, and every multipart upload not completed as
    "(multipart) KEY"."""
    client = rgw.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return keys + [f"(multipart) {u['Key']}" for u in uploads]


def object_sha256(rgw: CephRGW, bucket: str, key: str) -> str:
    body = rgw.client().get_object(Bucket=bucket, Key=key)["Body"]
    hasher = hashlib.sha256()
    while chunk := body.read(MiB):
        hasher.update(chunk)
    return hasher.hexdigest()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue  # the thread or process is gone
    return found
