"""A private Docker daemon (Debian `docker.io`) and a CLI bound to it.

The daemon runs with the vfs storage driver, no bridge and no iptables, so it needs nothing
from the host beyond the binaries; 127.0.0.0/8 counts as an insecure registry by default, so
pushes to a plain-HTTP registry on loopback work without TLS. Each instance keeps its own data
root, exec root, socket and client config (`DOCKER_CONFIG`), and is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .process import ManagedProcess, ProcessError
from .runner import CommandResult, run


def docker_cli() -> str:
    """The CLI from the same Debian package as the daemon (a newer one may shadow it in PATH)."""
    packaged = Path("/usr/bin/docker")
    if packaged.exists():
        return str(packaged)
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("docker CLI not found (Debian package docker.io)")
    return found


class Dockerd:
    def __init__(self, tmp_path: Path) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd not found (Debian package docker.io)")
        self.root = tmp_path
        self.root.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~108 bytes; pytest's tmp paths can be long.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="pw-dockerd-"))
        self.socket = self.sock_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "dockerd.pid"
        self.config_dir = self.root / "client-config"
        self.config_dir.mkdir(exist_ok=True)
        self.cli = docker_cli()
        self.process = ManagedProcess(
            [
                "dockerd",
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.sock_dir / "exec"),
                "--pidfile",
                str(self.pidfile),
                "-H",
                self.host,
            ],
            self.root / "dockerd.log",
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}

    def _info_ok(self) -> bool:
        if not self.socket.exists():
            return False
        result = subprocess.run(
            [self.cli, "info", "--format", "{{.ServerVersion}}"],
            env=self.env(),
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.process.start()
        self.process.wait_until(self._info_ok, timeout, "`docker info` answer")
        return self

    def stop(self) -> None:
        try:
            self.process.stop(timeout=20)
        finally:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    def log(self) -> str:
        return self.process.log()

    def docker(
        self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> CommandResult:
        """Run `docker ARGS` against this daemon with its private client config."""
        return run([self.cli, *args], env=self.env(), check=check, timeout=timeout, input=input)

    def load_oci(self, layout_ref: str, name: str, work_dir: Path) -> str:
        """Load an `oci:DIR:TAG` image into the daemon as `name` (a `repo:tag`); returns `name`.

        Goes through a docker-archive written by skopeo, the way docker itself cannot read
        OCI layouts.
        """
        archive = work_dir / f"load-{name.replace('/', '_').replace(':', '_')}.tar"
        archive.unlink(missing_ok=True)
        run(["skopeo", "copy", "--quiet", layout_ref, f"docker-archive:{archive}:{name}"])
        out = self.docker("load", "-i", str(archive))
        if name not in out.stdout:
            raise ProcessError(f"docker load did not report {name}: {out.stdout}")
        return name
