"""CNCF distribution (Debian's `docker-registry` 2.8) on an ephemeral loopback port.

Used as a reference registry in tests, as an upstream for proxy repositories and as the
baseline in `bench/`. The API is small on purpose::

    reg = Distribution(tmp_path, htpasswd=("alice", "secret")).start()
    reg.url            # "http://127.0.0.1:PORT"
    reg.host           # "127.0.0.1:PORT"
    reg.access_log()   # everything the registry wrote to stdout/stderr
    reg.stop()

`extra_config` is merged (recursively) over the generated configuration, e.g.
`{"proxy": {"remoteurl": "..."}}` or `{"log": {"level": "debug"}}`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ports import free_port
from .process import ManagedProcess, http_answers

REGISTRY_BIN = "docker-registry"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def bcrypt_htpasswd_line(user: str, password: str) -> str:
    """One `user:$2y$...` line, as `htpasswd -Bbn` prints it (distribution accepts only bcrypt)."""
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    )
    return out.stdout.strip() + "\n"


class Distribution:
    """One `docker-registry serve CONFIG` process with filesystem storage under `tmp_path`."""

    def __init__(
        self,
        tmp_path: Path,
        htpasswd: tuple[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        if shutil.which(REGISTRY_BIN) is None:
            raise RuntimeError(f"{REGISTRY_BIN} not found (Debian package docker-registry)")
        self.root = tmp_path
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.storage_dir = self.root / "storage"
        self.credentials = htpasswd
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "cache": {"blobdescriptor": "inmemory"},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if htpasswd is not None:
            path = self.root / "htpasswd"
            path.write_text(bcrypt_htpasswd_line(*htpasswd))
            config["auth"] = {"htpasswd": {"realm": "distribution", "path": str(path)}}
        self.config = _merge(config, extra_config or {})
        self.config_path = self.root / "config.yml"
        # JSON is valid YAML, so no YAML writer is needed.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.process = ManagedProcess(
            [REGISTRY_BIN, "serve", str(self.config_path)], self.root / "registry.log"
        )

    def start(self, timeout: float = 15.0) -> Distribution:
        self.process.start()
        self.process.wait_until(
            lambda: http_answers(f"{self.url}/v2/"), timeout, f"answer on {self.url}/v2/"
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def access_log(self) -> str:
        return self.process.log()

    log = access_log

    def image(self, name: str, repository: str = "docker-hosted") -> str:
        """`127.0.0.1:PORT/<repository>/<name>`, mirroring `PortwayServer.image`."""
        return f"{self.host}/{repository}/{name}"

    def __enter__(self) -> Distribution:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
