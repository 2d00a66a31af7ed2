"""nginx in front of a test's Portway, configured as an operator would: `portway proxy-config
nginx` for the server's configuration file, then nginx started on what it wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import portway
from support.process import ManagedProcess, port_open

SRC = Path(portway.__file__).resolve().parent.parent


def proxy_config(
    server: str, config: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`portway proxy-config SERVER --config CONFIG ARGS...` (this checkout's Portway); with
    `check`, fails the test if it fails."""
    argv = [sys.executable, "-m", "portway", "proxy-config", server, "--config", str(config)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [*argv, *args], check=check, capture_output=True, text=True, timeout=60, env=env
    )


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("nginx is not installed (scripts/install-test-deps.sh)")
    return path


def start_nginx(config: Path, root: Path, ports: list[int], *args: str) -> ManagedProcess:
    """nginx for Portway's `config` (`ARGS` go to proxy-config): its configuration in
    `root/nginx.conf`, its runtime folder `root/run`; returns once each of `ports` accepts."""
    runtime = root / "run"
    runtime.mkdir(parents=True)
    conf = root / "nginx.conf"
    proxy_config("nginx", config, "--runtime-dir", str(runtime), *args, "--output", str(conf))
    argv = [nginx_binary(), "-c", str(conf), "-e", str(runtime / "startup.log")]
    proc = ManagedProcess([*argv, "-g", "daemon off;"], runtime / "nginx.out", cwd=root)
    proc.start()

    def ready() -> bool:
        return all(port_open("127.0.0.1", p) for p in ports)

    try:
        proc.wait_until(ready, 30, f"nginx on {ports}")
    except BaseException:
        proc.stop()
        raise
    return proc
