"""Latency of each request of a small blob upload session, one client, one connection.

Starts Portway (one worker by default) and runs `--sessions` uploads of `--size` random bytes
as docker and skopeo send them (HEAD, POST, PATCH, closing PUT), then prints each request
kind's median, 10th and 90th percentile, leaving out the first `--warm` sessions.
Compare two trees by running it with `PYTHONPATH=<tree>/src` in turn.

    .venv/bin/python bench/upload_latency.py --auth basic --sessions 200
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from servers import start_portway
from tables import render

KINDS = ("HEAD", "POST", "PATCH", "PUT")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--auth", choices=("none", "basic"), default="basic")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--size", type=int, default=627, help="bytes per blob (627: a config blob)")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--warm", type=int, default=20)
    args = p.parse_args()
    server, t = start_portway(
        Path(tempfile.mkdtemp(prefix="portway-upload-latency-")),
        workers=args.workers,
        auth=args.auth,
    )
    headers = {}
    if t.credentials is not None:
        pair = ":".join(t.credentials).encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    conn = http.client.HTTPConnection(t.host, t.port)

    def call(method: str, path: str, body: bytes = b"", expect: int = 0) -> str:
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        times[method].append((time.perf_counter() - start) * 1000)
        if expect and resp.status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}, expected {expect}")
        return resp.getheader("Location") or ""

    try:
        for _ in range(args.sessions):
            data = os.urandom(args.size)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            call("HEAD", t.path("bench/latency", f"blobs/{digest}"), expect=404)
            where = call("POST", t.path("bench/latency", "blobs/uploads/"), expect=202)
            where = call("PATCH", where, data, expect=202)
            call("PUT", where + ("&" if "?" in where else "?") + "digest=" + digest, expect=201)
    finally:
        conn.close()
        server.stop()
    rows = []
    for kind in KINDS:
        kept = sorted(times[kind][args.warm :])
        tenth, ninetieth = kept[len(kept) // 10], kept[len(kept) * 9 // 10]
        rows.append([kind, f"{statistics.median(kept):.2f}", f"{tenth:.2f}", f"{ninetieth:.2f}"])
    print(f"{args.sessions - args.warm} sessions of {args.size} bytes, auth {args.auth}, ms\n")
    print("\n".join(render(["request", "median", "p10", "p90"], rows, markdown=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
