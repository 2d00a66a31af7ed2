"""A real `portway serve` process on ephemeral loopback ports, for tests."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import toml
from .ports import free_port
from .process import ManagedProcess, http_answers, port_open

DEFAULT_REPOSITORY = "docker-hosted"
DEFAULT_REPOSITORIES: tuple[dict[str, Any], ...] = (
    {"name": DEFAULT_REPOSITORY, "type": "hosted", "path_routing": True},
)
START_TIMEOUT = 60.0  # seconds; on 2 shared cores under load a start measured 19-31 s


class PortwayServer:
    """Writes a config into `tmp_path`, runs `python -m portway serve --config FILE`.

    Ports are chosen once, so `stop()`/`kill()` followed by `start()` brings the same server
    back on the same ports and data directory. `connectors` entries without a `listen` key get
    `127.0.0.1:<free port>`; `connector_port(i)` tells which.

    With the default repositories an image is pushed as `<host>/docker-hosted/<image>:<tag>`
    (repository-path routing) and reached over raw HTTP at
    `<url>/repository/docker-hosted/v2/<image>/...` (the Nexus layout) as well.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        repositories: Sequence[Mapping[str, Any]] | None = None,
        connectors: Sequence[Mapping[str, Any]] = (),
        hosts: Sequence[Mapping[str, Any]] = (),
        workers: int = 1,
        server: Mapping[str, Any] | None = None,
        security: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.database_url = database_url  # `[database] url`; None: the data folder's SQLite
        self.root = tmp_path
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.data_dir = self.root / "data"
        self.config_path = self.root / "portway.toml"
        self.repositories = [dict(r) for r in (repositories or DEFAULT_REPOSITORIES)]
        self.connectors = [
            {"listen": f"127.0.0.1:{free_port()}", **dict(c)} if "listen" not in c else dict(c)
            for c in connectors
        ]
        self.hosts = [dict(h) for h in hosts]
        self.workers = workers
        self.server_extra = dict(server or {})
        if "tls" in self.server_extra:  # the main listener speaks HTTPS
            self.url = f"https://{self.host}"
        # Security is on by default in Portway; tests that exercise it pass `security=`.
        self.security = dict(security) if security is not None else {"enabled": False}
        self.config_path.write_text(toml.dumps(self._config()))
        proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = ManagedProcess(
            [sys.executable, "-m", "portway", "serve", "--config", str(self.config_path)],
            self.root / "portway.log",
            env=proc_env,
            cwd=self.root,
        )

    def _config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "server": {
                "listen": self.host,
                "data_dir": str(self.data_dir),
                "workers": self.workers,
                **self.server_extra,
            },
            "security": self.security,
            "repository": self.repositories,
        }
        if self.database_url:
            doc["database"] = {"url": self.database_url}
        if self.connectors:
            doc["connector"] = self.connectors
        if self.hosts:
            doc["host"] = self.hosts
        return doc

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> PortwayServer:
        """Start and wait until `/v2/` answers and every connector Portway serves accepts."""
        self.process.start()
        self.process.wait_until(
            lambda: http_answers(f"{self.url}/v2/"), timeout, f"answer on {self.url}/v2/"
        )
        for index, connector in enumerate(self.connectors):
            if connector.get("served_by", "portway") != "portway":
                continue
            port = self.connector_port(index)
            self.process.wait_until(
                functools.partial(port_open, "127.0.0.1", port),
                timeout,
                f"connector on port {port}",
            )
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status."""
        return self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the server and its workers at once."""
        self.process.kill()

    def restart(self) -> PortwayServer:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def log(self) -> str:
        return self.process.log()

    # -- addresses -----------------------------------------------------------------------

    def connector_port(self, index: int = 0) -> int:
        return int(str(self.connectors[index]["listen"]).rpartition(":")[2])

    def image(self, name: str, repository: str = DEFAULT_REPOSITORY) -> str:
        """`127.0.0.1:PORT/<repository>/<name>`: a reference through repository-path routing."""
        return f"{self.host}/{repository}/{name}"

    def repository_url(self, repository: str = DEFAULT_REPOSITORY) -> str:
        """`http://127.0.0.1:PORT/repository/<repository>`: the Nexus layout base."""
        return f"{self.url}/repository/{repository}"

    def admin_password(self) -> str | None:
        path = self.data_dir / "admin.password"
        return path.read_text().strip() if path.exists() else None
