"""Several real `portway serve` nodes sharing one database and one blob store, behind HAProxy.

    with start_cluster(root, postgres_url) as cluster:   # 3 nodes, security on
        cluster.front            # "127.0.0.1:PORT": HAProxy, round-robin, no affinity
        cluster.nodes[1].url     # one node directly, e.g. to see what *it* answers
        cluster.admin            # ("admin", password)
        cluster.image("app")     # "127.0.0.1:PORT/docker-hosted/app" through the front door

What the nodes share, as an operator would set it up:

- metadata: one `[database] url` (PostgreSQL);
- blobs: `[storage] type = "s3"` on a bucket when `storage=` says so (`s3_storage(rgw,
  bucket)`: Ceph RGW, credentials in the environment); by default one folder for all nodes,
  as `[storage] path` (each node's `<data_dir>/storage` is a link to it as well);
- signing keys: in the database (`signing_keys`), made by the first node that starts.

The front door's configuration is what `portway proxy-config haproxy --nodes A,B,C` prints
for the first node's settings. Nodes start one after another: the first creates the admin
account (and writes `admin.password`); the others find it in the database.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import toml
from .ceph import CephRGW
from .ports import free_port
from .process import ManagedProcess, http_answers
from .server import DEFAULT_REPOSITORIES, PortwayServer

SIZE = 3
START_TIMEOUT = 60.0  # seconds per node: several Python processes start at once on 2 cores


class ClusterNode(PortwayServer):
    """A `PortwayServer` whose configuration also has `[database]` and `[storage]`."""

    def __init__(
        self, tmp_path: Path, *, tables: Mapping[str, Any], **kwargs: Any
    ) -> None:
        self.tables = {  # a table, or an array of tables ([[job]])
            name: dict(table) if isinstance(table, Mapping) else [dict(t) for t in table]
            for name, table in tables.items()
        }
        super().__init__(tmp_path, **kwargs)

    def _config(self) -> dict[str, Any]:
        doc = super()._config()
        doc.update(self.tables)
        return doc

    def rewrite_config(self) -> None:
        """Write the configuration again (after changing `tables` or `security`)."""
        self.config_path.write_text(toml.dumps(self._config()))


def portway_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "portway", *args, "--config", str(config)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stdout}{result.stderr}")
    return result


@dataclass
class Cluster:
    root: Path
    database_url: str
    size: int = SIZE
    storage: Mapping[str, Any] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    security: Mapping[str, Any] = field(default_factory=lambda: {"enabled": True})
    repositories: Sequence[Mapping[str, Any]] = DEFAULT_REPOSITORIES
    server: Mapping[str, Any] = field(default_factory=dict)
    tables: Mapping[str, Any] = field(default_factory=dict)  # more tables, e.g. [jobs]
    nodes: list[ClusterNode] = field(default_factory=list)
    proxy: ManagedProcess | None = None
    front_port: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.shared_blobs = self.root / "blobs"
        self.shared_blobs.mkdir(exist_ok=True)
        self.front_port = free_port()

    # -- addresses -------------------------------------------------------------------------

    @property
    def front(self) -> str:
        return f"127.0.0.1:{self.front_port}"

    @property
    def front_url(self) -> str:
        return f"http://{self.front}"

    def image(self, name: str, repository: str = "docker-hosted") -> str:
        return f"{self.front}/{repository}/{name}"

    @property
    def admin(self) -> tuple[str, str]:
        password = self.nodes[0].admin_password()
        assert password, "the first node wrote no admin.password"
        return "admin", password

    # -- nodes -----------------------------------------------------------------------------

    def storage_table(self) -> dict[str, Any]:
        if self.storage is not None:
            return dict(self.storage)
        return {"type": "filesystem", "path": str(self.shared_blobs)}

    def make_node(
        self,
        name: str,
        *,
        database: Mapping[str, Any] | None = None,
        storage: Mapping[str, Any] | None = None,
        security: Mapping[str, Any] | None = None,
        server: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClusterNode:
        """A node of this cluster (not started); each argument overrides the shared table."""
        tables = {
            **self.tables,
            "database": dict(database or {"url": self.database_url}),
            "storage": dict(storage or self.storage_table()),
        }
        node = ClusterNode(
            self.root / name,
            tables=tables,
            repositories=self.repositories,
            security=security or self.security,
            server={**self.server, **(server or {})},
            env={**self.env, **(env or {})},
        )
        node.data_dir.mkdir(parents=True, exist_ok=True)
        if tables["storage"].get("type", "filesystem") == "filesystem":
            link = node.data_dir / "storage"
            if not link.exists():
                link.symlink_to(Path(tables["storage"]["path"]), target_is_directory=True)
        return node

    def start(self) -> Cluster:
        self.nodes = [self.make_node(f"node{i}") for i in range(1, self.size + 1)]
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            config = pool.submit(self.proxy_config)  # `portway proxy-config`, meanwhile
            # the first creates the admin account; the others find it in the database
            self.nodes[0].start(START_TIMEOUT)
            for started in pool.map(lambda node: node.start(START_TIMEOUT), self.nodes[1:]):
                assert started.alive()
            self.start_proxy(config.result())
        return self

    # -- the front door --------------------------------------------------------------------

    def proxy_config(self, nodes: Sequence[PortwayServer] | None = None) -> Path:
        run = self.root / "haproxy"
        run.mkdir(exist_ok=True)
        conf = run / "haproxy.cfg"
        members = ",".join(n.host for n in (nodes or self.nodes))
        portway_cli(
            self.nodes[0].config_path, "proxy-config", "haproxy", "--nodes", members,
            "--http-port", str(self.front_port), "--bind", "127.0.0.1",
            "--runtime-dir", str(run), "--output", str(conf),
        )
        return conf

    def start_proxy(self, conf: Path | None = None) -> None:
        conf = conf or self.proxy_config()
        self.proxy = ManagedProcess(["haproxy", "-db", "-f", str(conf)], conf.parent / "out.log")
        self.proxy.start()
        self.proxy.wait_until(
            lambda: http_answers(f"{self.front_url}/v2/"), 30, f"HAProxy on {self.front}"
        )

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    # -- life cycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_proxy()
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))

    def logs(self) -> str:
        parts = [f"--- {n.root.name} ---\n{n.log()[-3000:]}" for n in self.nodes]
        if self.proxy is not None:
            parts.append(f"--- haproxy ---\n{self.proxy.log()[-2000:]}")
        return "\n".join(parts)

    def session(self) -> requests.Session:
        """A requests session with the admin's Basic credentials."""
        session = requests.Session()
        session.auth = self.admin
        return session


def s3_storage(rgw: CephRGW, bucket: str, **extra: Any) -> dict[str, Any]:
    """`Cluster(storage=..., env=...)` arguments for blobs in an S3 bucket on Ceph RGW, with
    the credentials in the environment as an operator gives them."""
    table = {"type": "s3", "bucket": bucket, "endpoint": rgw.endpoint, "region": rgw.region}
    env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
    return {"storage": {**table, **extra}, "env": env}


@contextlib.contextmanager
def start_cluster(root: Path, database_url: str, **kwargs: Any) -> Iterator[Cluster]:
    cluster = Cluster(root, database_url, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# -- a raw registry client through the front door ----------------------------------------


def node_of(response: requests.Response) -> str:
    """Which node answered: the per-process prefix of Portway's X-Request-Id."""
    return response.headers.get("X-Request-Id", "?").rpartition("-")[0]


def token(base: str, auth: tuple[str, str], scopes: Sequence[str]) -> str:
    """One bearer token for every scope (one password check for many pushes)."""
    answer = requests.get(
        f"{base}/v2/token",
        params={"service": "portway", "scope": list(scopes)},
        auth=auth,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


# -- big bodies without holding them in memory ----------------------------------------------

BLOCK = 1024 * 1024
_BASE = os.urandom(BLOCK)


def numbered_blob(start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a blob made of numbered 1 MiB blocks (any offset, any size)."""
    offset = start
    while offset < end:
        index, within = divmod(offset, BLOCK)
        block = index.to_bytes(8, "big") + _BASE[8:]
        piece = block[within : min(BLOCK, within + end - offset)]
        offset += len(piece)
        yield piece


class SizedBody:
    """`numbered_blob(start, end)` with a length, so requests sends Content-Length."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[bytes]:
        return numbered_blob(self.start, self.end)
