"""A throwaway PostgreSQL 15 cluster (Debian's `postgresql`) on a free loopback port.

One cluster per test session; each test module gets a database of its own::

    pg = Postgres().start()
    url = pg.create_database("test_store")   # "postgresql://postgres@127.0.0.1:PORT/test_store"
    pg.log()                                 # the server log
    pg.stop()                                # pg_ctl stop, then SIGKILL by PID if need be

The server runs as the `postgres` system user (it refuses root), from a folder under the
system temporary directory that user can enter (pytest's own folders are root-only), and
listens on 127.0.0.1 only, with `trust` authentication: a test cluster, not a deployment.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_port
from .process import ProcessError, port_open

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
START_TIMEOUT = 30.0
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _as_postgres(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the `postgres` user (runuser ships with util-linux)."""
    if os.getuid() == 0:
        argv = ["runuser", "-u", PG_USER, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class Postgres:
    """One PostgreSQL cluster made by `initdb` and run by `pg_ctl`."""

    def __init__(self, root: Path | None = None) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(
                f"{PG_BIN}/initdb not found: install the Debian package postgresql "
                "(scripts/install-test-deps.sh does)"
            )
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="portway-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.pid: int | None = None
        self._databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{database}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None = None) -> None:
        detail = ""
        if result is not None:
            detail = f"\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        raise ProcessError(f"PostgreSQL: {what}{detail}\n--- server log ---\n{self.log()[-4000:]}")

    def start(self) -> Postgres:
        if os.getuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        result = _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            timeout=120,
        )
        if result.returncode != 0:
            self._fail("initdb failed", result)
        options = (
            f"-k {self.data} -p {self.port} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        result = _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
             str(self.log_path), "-w", "-t", str(int(START_TIMEOUT)), "start"],
            timeout=START_TIMEOUT + 10,
        )
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, IndexError):
                self.pid = int(pid_file.read_text().splitlines()[0])
        if result.returncode != 0:
            self.stop()
            self._fail(f"pg_ctl start failed (port {self.port})", result)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.host, self.port):
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"no connection on {self.host}:{self.port} within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command through `psql` over TCP; returns its unaligned output."""
        result = subprocess.run(
            ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host,
             "-p", str(self.port), "-U", PG_USER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            self._fail(f"psql {sql!r} failed", result)
        return result.stdout

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its URL."""
        self._databases += 1
        name = name or f"test_{self._databases}"
        name = re.sub(r"[^a-z0-9_]", "_", name.lower())[:50] + f"_{self._databases}"
        if not _DB_NAME.match(name):
            name = f"test_{self._databases}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "15",
                 "stop"],
                timeout=30,
            )
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, 0)
                os.kill(self.pid, signal.SIGKILL)  # pg_ctl did not manage: end it by PID
            self.pid = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
