"""S3 BlobBackend (aiobotocore; ADR 0015): objects in one bucket, under an optional key prefix.

- Writes stream into a multipart upload: `write` fills one buffer up to `part_size` (at least
  S3's 5 MiB part minimum) and sends it as a part while the next one fills, so a writer
  holds at most `parts_in_flight + 1` parts in memory whatever the object's size; an object
  smaller than one part is a single PUT at `commit`. Nothing is visible at the key before
  `commit`; a failure aborts the multipart upload, and one left by a node that died is found
  by `pending_writes`.
- `copy` is server-side: CopyObject, or UploadPartCopy ranges above `copy_part_limit`
  (S3 refuses a CopyObject over 5 GiB). Ceph RGW shares the data of a copy instead of
  rewriting it.
- `presign_get` signs for `public_endpoint` (what clients reach, e.g. through a front door)
  while Portway itself talks to `endpoint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from portway.storage.backend import (
    ObjectInfo,
    ObjectMissing,
    Part,
    PartBody,
    PendingWrite,
    body_size,
)
from portway.storage.s3data import share_data
from portway.storage.s3raw import RawBody, can_splice, open_raw

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000
READ_CHUNK = MiB
COPY_LIMIT = 5 * 1024 * MiB  # the largest single CopyObject S3 allows
MAX_PRESIGN = 7 * 24 * 3600  # SigV4's longest expiry
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    endpoint: str | None = None  # None: AWS's own endpoint for the region
    region: str = "us-east-1"
    access_key: str | None = None  # None: botocore's chain (AWS_ACCESS_KEY_ID, profiles, ...)
    secret_key: str | None = None
    public_endpoint: str | None = None  # what presigned URLs name; default: `endpoint`
    prefix: str = ""  # keys live under this folder in the bucket
    part_size: int = 8 * MiB
    parts_in_flight: int = 2  # a writer holds at most this many parts + the one filling
    copy_part_limit: int = COPY_LIMIT
    path_style: bool = True  # RGW, MinIO and most others; AWS takes either
    max_connections: int = 64


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Backend:
    """Open with `await S3Backend.open(settings)`, close with `await backend.close()`."""

    def __init__(self, settings: S3Settings, client: S3Client, signer: S3Client) -> None:
        if settings.part_size < MIN_PART:
            raise ValueError(f"part_size {settings.part_size} is below S3's 5 MiB minimum")
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client
        self._signer = signer
        self._prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    async def open(cls, settings: S3Settings) -> S3Backend:
        session = share_data(get_session())
        stack = contextlib.AsyncExitStack()

        def config() -> AioConfig:
            return AioConfig(
                s3={"addressing_style": "path" if settings.path_style else "auto"},
                signature_version="s3v4",
                # only what S3 requires: the newer default checksums (aws-chunked trailers)
                # are not understood by every S3 implementation, Ceph 16 among them
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=settings.max_connections,
                retries={"max_attempts": 3, "mode": "standard"},
            )

        def make(endpoint: str | None) -> Any:
            return session.create_client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.region,
                aws_access_key_id=settings.access_key,
                aws_secret_access_key=settings.secret_key,
                config=config(),
            )

        try:
            client = await stack.enter_async_context(make(settings.endpoint))
            signer = client
            if settings.public_endpoint and settings.public_endpoint != settings.endpoint:
                signer = await stack.enter_async_context(make(settings.public_endpoint))
        except BaseException:
            await stack.aclose()
            raise
        backend = cls(settings, client, signer)
        backend._stack = stack
        return backend

    async def close(self) -> None:
        await self._stack.aclose()

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self._prefix + key

    def local_path(self, key: str) -> Path | None:
        return None

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return ObjectInfo(
            key=key, size=int(head["ContentLength"]), mtime=head["LastModified"].timestamp()
        )

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        if length == 0:
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        try:
            response = await self.client.get_object(**args)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise ObjectMissing(key) from None
            if _code(exc) == "InvalidRange":  # at or past the end: nothing to send
                return
            raise
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk

    async def open_raw(self, key: str) -> RawBody | None:
        """The GET answer's socket to splice the body from (s3raw.py); None over TLS."""
        return await open_raw(self, key, self._key(key)) if can_splice(self) else None

    async def create(self, key: str) -> S3Writer:
        return S3Writer(self, key, self._key(key))

    async def copy(self, src: str, dst: str) -> None:
        info = await self.stat(src)
        if info is None:
            raise ObjectMissing(src)
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        if info.size <= self.settings.copy_part_limit:
            try:
                await self.client.copy_object(
                    Bucket=self.bucket, Key=self._key(dst), CopySource=source  # type: ignore[arg-type]
                )
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise ObjectMissing(src) from None
                raise
            return
        await self._copy_in_parts(source, self._key(dst), info.size)

    async def _copy_in_parts(self, source: dict[str, str], target: str, size: int) -> None:
        step = max(self.settings.copy_part_limit, -(-size // MAX_PARTS), MIN_PART)
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, step), 1):
                end = min(start + step, size) - 1
                done = await self.client.upload_part_copy(
                    Bucket=self.bucket, Key=target, UploadId=upload_id, PartNumber=number,
                    CopySource=source, CopySourceRange=f"bytes={start}-{end}",  # type: ignore[arg-type]
                )
                parts.append({"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]})
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            await self._abort(target, upload_id)
            raise

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def list(self, prefix: str) -> AsyncIterator[str]:
        folder = prefix.strip("/")
        full = self._prefix + (folder + "/" if folder else "")
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"][len(self._prefix) :]

    async def presign_get(self, key: str, expires_in: float) -> str | None:
        seconds = max(1, min(int(expires_in), MAX_PRESIGN))
        url: str = await self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=seconds,
        )
        return url

    # -- resumable multipart writes (upload sessions continued on any node) ----------------
    part_minimum = MIN_PART

    async def begin_parts(self, key: str) -> str:
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return upload["UploadId"]

    async def put_part(self, key: str, token: str, number: int, data: PartBody) -> Part:
        size = body_size(data)
        if not isinstance(data, bytes):
            data.seek(0)
        try:
            done = await self.client.upload_part(
                Bucket=self.bucket, Key=self._key(key), UploadId=token,
                PartNumber=number, Body=data,
            )
        except ClientError as exc:
            if _code(exc) in {"NoSuchUpload", "404"}:
                raise ObjectMissing(f"multipart upload {token}") from None
            raise
        return Part(number=number, etag=done["ETag"], size=size)

    async def complete_parts(self, key: str, token: str, parts: Sequence[Part]) -> ObjectInfo:
        listed = [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
        try:
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=token,
                MultipartUpload={"Parts": listed},  # type: ignore[typeddict-item]
            )
        except ClientError as exc:
            if _code(exc) in {"NoSuchUpload", "404"}:
                raise ObjectMissing(f"multipart upload {token}") from None
            raise
        return ObjectInfo(key=key, size=sum(p.size for p in parts), mtime=time.time())

    async def pending_writes(self, older_than: float) -> Sequence[PendingWrite]:
        cutoff = time.time() - older_than
        found: list[PendingWrite] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix):
            for upload in page.get("Uploads", []):
                started = upload["Initiated"].timestamp()
                if started < cutoff:
                    key = upload["Key"][len(self._prefix) :]
                    found.append(PendingWrite(key=key, token=upload["UploadId"], started=started))
        return found

    async def abort_pending(self, pending: PendingWrite) -> None:
        if pending.key is None:
            raise ValueError("an S3 pending write names its key")
        await self._abort(self._key(pending.key), pending.token)

    async def _abort(self, full_key: str, upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
        except ClientError as exc:
            if _code(exc) not in {"NoSuchUpload", "404"}:
                raise


class S3Writer:
    """One object written as a multipart upload: the part filling and at most
    `parts_in_flight` parts being sent are all it holds in memory, so about
    `(1 + parts_in_flight) * part_size` at the peak, whatever the object's size. A part is
    filled in a BytesIO, which botocore and aiohttp send as it is (no copy)."""

    def __init__(self, backend: S3Backend, key: str, full_key: str) -> None:
        self._backend = backend
        self._client = backend.client
        self._bucket = backend.bucket
        self._key = key
        self._full_key = full_key
        self._part_size = backend.settings.part_size
        self._buffer = io.BytesIO()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight = max(1, backend.settings.parts_in_flight)
        self._sending: list[asyncio.Task[None]] = []
        self._size = 0
        self._open = True

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if not self._open:
            raise ValueError("write after commit or abort")
        view = memoryview(data)
        try:
            while view:
                room = self._part_size - self._buffer.tell()
                self._size += self._buffer.write(view[:room])
                view = view[room:]
                if self._buffer.tell() >= self._part_size:
                    await self._send_part()
        except BaseException:
            await self.abort()
            raise

    async def _send_part(self) -> None:
        if self._upload_id is None:
            upload = await self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._full_key
            )
            self._upload_id = upload["UploadId"]
        while len(self._sending) >= self._in_flight:
            await self._wait_sending(first=True)
        if len(self._parts) >= MAX_PARTS:
            raise ValueError(f"object over {MAX_PARTS} parts of {self._part_size} bytes")
        body, self._buffer = self._buffer, io.BytesIO()
        body.seek(0)
        number = len(self._parts) + 1
        entry: dict[str, Any] = {"PartNumber": number}
        self._parts.append(entry)
        self._sending.append(asyncio.create_task(self._upload(number, body, entry)))

    async def _upload(self, number: int, body: io.BytesIO, entry: dict[str, Any]) -> None:
        assert self._upload_id is not None
        done = await self._client.upload_part(
            Bucket=self._bucket, Key=self._full_key, UploadId=self._upload_id,
            PartNumber=number, Body=body,
        )
        entry["ETag"] = done["ETag"]

    async def _wait_sending(self, first: bool = False) -> None:
        """Wait for the oldest part in flight (`first`) or for all of them; raise a failure."""
        while self._sending:
            await self._sending.pop(0)
            if first:
                return

    async def commit(self) -> ObjectInfo:
        if not self._open:
            raise ValueError("commit after commit or abort")
        try:
            if self._upload_id is None:  # smaller than one part: one PUT
                self._buffer.seek(0)
                await self._client.put_object(
                    Bucket=self._bucket, Key=self._full_key, Body=self._buffer
                )
            else:
                if self._buffer.tell():
                    await self._send_part()  # the last part may be short
                await self._wait_sending()
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._full_key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            await self.abort()
            raise
        self._open = False
        self._buffer = io.BytesIO()
        return ObjectInfo(key=self._key, size=self._size, mtime=time.time())

    async def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        self._buffer = io.BytesIO()
        tasks, self._sending = self._sending, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            await asyncio.shield(self._backend._abort(self._full_key, upload_id))
