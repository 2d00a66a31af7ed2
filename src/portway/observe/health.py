"""Health checks of the metadata database and the blob store, run by every worker.

Each worker checks every `[server] health_check_interval` seconds, in a thread (a hung file
system never blocks the event loop; a check still running after one interval counts as
failed), and answers `/readyz`, `/service/rest/v1/status` and `.../status/writable` from the
last results:

- the database is *reachable* when a new connection opens the file and reads its schema;
  *writable* when the file and its folder accept writes and the write lock can be taken
  within a second (held longer: "locked"); with `[database] url` on PostgreSQL, reachable
  when a new connection to the server opens, writable unless the server is a read-only
  standby;
- the blob store is *reachable* when its folder can be listed; *writable* when a small probe
  file can be written and removed there; on S3, reachable when the bucket answers HeadBucket,
  writable when a small probe object can be written and removed under the prefix.

A full file system or a held lock makes the node not writable but still ready: reads,
logins and tokens go on (docs/adr/0008). Unreachable, or refusing writes for any other
reason (a read-only mount, permissions, an immutable file), makes it not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portway.storage.faults import FULL_ERRNOS
from portway.storage.part_uploads import HEALTH_PROBES

CHECKS = ("database", "blob_store")
MIN_FREE_BYTES = 64 * 1024  # less than this free on the database's file system: full
_PROBE_BYTES = b"\0" * 4096


@dataclass(frozen=True)
class Check:
    """One store's state: `reason` says what failed, in an operator's words."""

    reachable: bool
    writable: bool
    reason: str = ""
    soft: bool = False  # not writable for a passing reason (full, locked): still ready
    seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return self.reachable and (self.writable or self.soft)


@dataclass
class Health:
    database: Path
    blob_root: Path
    interval: float
    on_result: Callable[[str, Check], None] | None = None
    database_url: str = ""  # [database] url: a PostgreSQL server instead of the file
    bucket: BucketProbe | None = None  # [storage] type = "s3": the bucket instead of a folder
    results: dict[str, Check] = field(default_factory=dict)
    started_at: float | None = None  # time.time() of the first finished round
    _running: asyncio.Future[dict[str, Check]] | None = None

    @property
    def ready(self) -> bool:
        return bool(self.results) and all(c.ready for c in self.results.values())

    @property
    def readable(self) -> bool:
        return bool(self.results) and all(c.reachable for c in self.results.values())

    @property
    def writable(self) -> bool:
        return bool(self.results) and all(c.writable for c in self.results.values())

    def report(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "reachable": c.reachable,
                "writable": c.writable,
                **({"reason": c.reason} if c.reason else {}),
            }
            for name, c in self.results.items()
        }

    async def check_once(self) -> None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._probe_all))
        done, _ = await asyncio.wait({self._running}, timeout=self.interval)
        if done:
            results = self._running.result()
        else:
            stuck = f"the check did not finish within {self.interval:g} s"
            results = {name: Check(False, False, stuck, seconds=self.interval) for name in CHECKS}
        self.results = results
        if self.started_at is None:
            self.started_at = time.time()
        if self.on_result is not None:
            for name, check in results.items():
                self.on_result(name, check)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_once()

    def _probe_all(self) -> dict[str, Check]:
        lock_wait = min(1.0, self.interval / 4)
        return {
            "database": _timed(
                lambda: probe_postgres(self.database_url, self.interval)
                if self.database_url.startswith("postgres")
                else probe_database(self.database, lock_wait)
            ),
            "blob_store": _timed(
                self.bucket.probe if self.bucket is not None
                else lambda: probe_blob_store(self.blob_root)
            ),
        }


def _timed(probe: Callable[[], Check]) -> Check:
    start = time.perf_counter()
    check = probe()
    return Check(check.reachable, check.writable, check.reason, check.soft,
                 time.perf_counter() - start)  # fmt: skip


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def probe_database(path: Path, lock_wait: float) -> Check:
    """Open `path` anew (never creating it), read the schema, then test writing."""
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=lock_wait, isolation_level=None
        )
    except sqlite3.Error as exc:
        return Check(False, False, f"cannot open the database {path}: {exc}")
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            return Check(False, False, f"cannot read the database {path}: {exc}")
        for target in (path, path.parent):
            if not os.access(target, os.W_OK):
                return Check(True, False, f"the database {target} refuses writes")
        stat = os.statvfs(path.parent)
        if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
            return Check(True, False, f"no space left for the database in {path.parent}", True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc) or "busy" in str(exc)
            reason = f"the database's write lock is held (waited {lock_wait:g} s)"
            return Check(True, False, reason if locked else f"database: {exc}", locked)
        return Check(True, True)
    finally:
        conn.close()


def probe_postgres(url: str, timeout: float) -> Check:
    """Connect to the PostgreSQL server anew and ask it whether it takes writes (a hot
    standby, or a server in recovery, does not)."""
    import psycopg

    conninfo = "postgresql://" + url.partition("://")[2]  # no SQLAlchemy driver suffix
    try:
        wait = max(1, int(timeout))
        with psycopg.connect(conninfo, connect_timeout=wait, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(False, False, f"cannot reach the database server: {first}")
    if row is not None and row[0]:
        return Check(True, False, "the database server is a read-only standby")
    return Check(True, True)


def probe_blob_store(root: Path) -> Check:
    """List the blob store's folder, then write, sync and remove a small file in it."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        return Check(False, False, f"cannot list the blob store {root}: {_os_reason(exc)}")
    probe = root / f".health-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        full = exc.errno in FULL_ERRNOS
        what = "no space left" if full else _os_reason(exc)
        return Check(True, False, f"cannot write to the blob store {root}: {what}", full)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return Check(True, True)


@dataclass
class BucketProbe:
    """The S3 bucket of `[storage] type = "s3"`: reachable when HeadBucket answers, writable
    when a small probe object can be written and removed under the prefix. One blocking
    botocore client, made on first use, for the health thread only."""

    bucket: str
    endpoint: str | None
    region: str
    prefix: str
    timeout: float
    _client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import botocore.config
            import botocore.session

            from portway.storage.s3data import share_data

            session = share_data(botocore.session.get_session())  # the worker's one copy
            self._client = session.create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self.region,
                config=botocore.config.Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"max_attempts": 1},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def probe(self) -> Check:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"the bucket {self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")
        try:
            client = self._s3()
            client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            return Check(False, False, f"cannot reach {where}: {exc}")
        key = f"{self.prefix.strip('/')}/{HEALTH_PROBES}/{os.getpid()}".lstrip("/")
        try:
            client.put_object(Bucket=self.bucket, Key=key, Body=_PROBE_BYTES)
            client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            return Check(True, False, f"cannot write to {where}: {exc}")
        return Check(True, True)
