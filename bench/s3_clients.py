"""obstore against aiobotocore on the same real Ceph RGW, in one run (ADR 0015).

    .venv/bin/python bench/s3_clients.py [--size-mib 64] [--rounds 3] [--small 200]

Starts a one-host Ceph cluster with radosgw (tests/support/ceph.py) in a temporary folder,
then measures for each client: PUT and streamed GET of one object (MB/s), a multipart upload
of the same object in 8 MiB parts (one at a time, and 4 in flight), the median latency of
a small PUT and GET, whether a presigned GET URL works from a plain HTTP client, and the
process CPU seconds per MB moved (obstore's Rust threads count: `time.process_time` covers
every thread). Prints a Markdown table and writes the JSON into bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.ceph import CephRGW

RESULTS = Path(__file__).resolve().parent / "results"
PART = 8 * 1024 * 1024
MiB = 1024 * 1024


class Client:
    name = ""

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> int: ...
    async def multipart(self, key: str, data: bytes, parallel: int = 1) -> None: ...
    async def presign(self, key: str) -> str: ...
    async def close(self) -> None: ...


class Botocore(Client):
    name = "aiobotocore"

    def __init__(self, rgw: CephRGW, bucket: str) -> None:
        self.rgw, self.bucket = rgw, bucket

    async def open(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        )
        self._ctx = get_session().create_client(
            "s3",
            endpoint_url=self.rgw.endpoint,
            region_name=self.rgw.region,
            aws_access_key_id=self.rgw.access_key,
            aws_secret_access_key=self.rgw.secret_key,
            config=config,
        )
        self.s3 = await self._ctx.__aenter__()

    async def put(self, key: str, data: bytes) -> None:
        await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def get(self, key: str) -> int:
        got = 0
        response = await self.s3.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(1024 * 1024):
                got += len(chunk)
        return got

    async def multipart(self, key: str, data: bytes, parallel: int = 1) -> None:
        upload = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        uid = upload["UploadId"]
        gate = asyncio.Semaphore(parallel)

        async def send(number: int, start: int) -> dict[str, Any]:
            async with gate:
                done = await self.s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=number,
                    Body=data[start : start + PART],
                )
            return {"PartNumber": number, "ETag": done["ETag"]}

        parts = await asyncio.gather(
            *(send(n, s) for n, s in enumerate(range(0, len(data), PART), 1))
        )
        await self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
        )

    async def presign(self, key: str) -> str:
        url: str = await self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
        )
        return url

    async def close(self) -> None:
        await self._ctx.__aexit__(None, None, None)


class Obstore(Client):
    name = "obstore"

    def __init__(self, rgw: CephRGW, bucket: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            bucket,
            endpoint=rgw.endpoint,
            region=rgw.region,
            access_key_id=rgw.access_key,
            secret_access_key=rgw.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    async def open(self) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data, use_multipart=False)

    async def get(self, key: str) -> int:
        import obstore

        got = 0
        result = await obstore.get_async(self.store, key)
        async for chunk in result.stream(min_chunk_size=1024 * 1024):
            got += len(memoryview(chunk))
        return got

    async def multipart(self, key: str, data: bytes, parallel: int = 1) -> None:
        import obstore

        async def parts() -> AsyncIterator[bytes]:
            for start in range(0, len(data), PART):
                yield data[start : start + PART]

        await obstore.put_async(
            self.store, key, parts(), use_multipart=True, chunk_size=PART, max_concurrency=parallel
        )

    async def presign(self, key: str) -> str:
        import obstore

        url: str = await obstore.sign_async(self.store, "GET", key, timedelta(seconds=300))
        return url

    async def close(self) -> None:
        return None


async def _timed(op: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await op()
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(client: Client, data: bytes, rounds: int, small: int) -> dict[str, Any]:
    mb = len(data) / 1e6
    row: dict[str, Any] = {}
    for label, op in (
        ("put", lambda: client.put("big", data)),
        ("get", lambda: client.get("big")),
        ("multipart", lambda: client.multipart("mp", data)),
        ("multipart_x4", lambda: client.multipart("mp4", data, parallel=4)),
    ):
        runs = [await _timed(op) for _ in range(rounds)]
        best = min(runs)
        row[f"{label}_mb_s"] = round(mb / best[0], 1)
        row[f"{label}_cpu_s_per_mb"] = round(statistics.median(c for _, c in runs) / mb, 5)
    tiny = os.urandom(1024)
    puts, gets = [], []
    for i in range(small):
        puts.append((await _timed(lambda i=i: client.put(f"small/{i}", tiny)))[0])
        gets.append((await _timed(lambda i=i: client.get(f"small/{i}")))[0])
    row["small_put_ms"] = round(statistics.median(puts) * 1000, 2)
    row["small_get_ms"] = round(statistics.median(gets) * 1000, 2)
    url = await client.presign("big")
    with urllib.request.urlopen(url, timeout=30) as response:
        fetched = len(response.read())
    row["presigned_get"] = "works" if fetched == len(data) else f"short: {fetched}"
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="portway-s3bench-") as tmp:
        started = time.monotonic()
        rgw = CephRGW(Path(tmp)).start()
        try:
            boot = round(time.monotonic() - started, 1)
            data = os.urandom(args.size_mib * MiB)
            results: dict[str, Any] = {}
            for cls in (Obstore, Botocore):
                bucket = f"bench-{cls.name}"
                rgw.make_bucket(bucket)
                client = cls(rgw, bucket)
                await client.open()  # type: ignore[attr-defined]
                try:
                    results[cls.name] = await measure(client, data, args.rounds, args.small)
                finally:
                    await client.close()
                print(cls.name, results[cls.name], flush=True)
        finally:
            rgw.stop()
    return {"rgw_start_s": boot, "size_mib": args.size_mib, "clients": results}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("obstore", "aiobotocore", "botocore", "aiohttp")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=200)
    args = parser.parse_args()
    record = asyncio.run(run(args))
    record["versions"] = versions()
    record["load_average"] = os.getloadavg()
    record["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    cols = ["put_mb_s", "get_mb_s", "multipart_mb_s", "multipart_x4_mb_s", "put_cpu_s_per_mb",
            "get_cpu_s_per_mb", "multipart_cpu_s_per_mb", "small_put_ms", "small_get_ms",
            "presigned_get"]
    print("| client | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in record["clients"].items():
        print(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"s3-clients-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
