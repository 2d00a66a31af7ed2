"""Portway (several workers) started and restarted while nginx already holds the connector ports.

The README's layout: connectors marked `served_by = "proxy"` are ports nginx listens on, so
nginx may well be up first and stay up while Portway restarts. Portway must neither bind nor
probe those ports.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxyconf_support import seed_connectors, seed_repositories
from support.engines import skopeo
from support.images import OciImage
from support.nginx import start_nginx
from support.ports import free_ports
from support.server import PortwayServer
from support.workers import listening, wait_for

pytestmark = pytest.mark.slow

WORKERS_WITHIN = 180.0  # seconds for a spawned worker to start on a loaded machine


def _wait_for_both_workers(server: PortwayServer) -> None:
    """`start()` returns once one worker answers; the other may still be starting (spawned,
    it imports everything again: many seconds on a loaded machine). Stopped before it listens,
    it would never report it."""

    def both() -> bool:
        assert server.alive(), server.log()[-3000:]
        return len(listening(server, this_run=True)) >= 2

    wait_for("both workers of this start listening", both, WORKERS_WITHIN)


def _push_and_pull(
    oci_image: OciImage, root: Path, push_port: int, pull_port: int, tag: str
) -> None:
    digest_file = root / f"digest-{tag}"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digest_file),
        oci_image.ref,
        f"docker://127.0.0.1:{push_port}/restart/img:{tag}",
    )
    digest = digest_file.read_text().strip()
    out = root / f"pulled-{tag}"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://127.0.0.1:{pull_port}/restart/img@{digest}",
        f"oci:{out}:pulled",
    )
    assert (out / "index.json").exists()


def test_two_workers_start_and_restart_while_nginx_holds_the_connector_ports(
    tmp_path: Path, oci_image: OciImage
) -> None:
    push_port, pull_port = free_ports(2)
    server = PortwayServer(
        tmp_path / "portway",
        workers=2,
        repositories=seed_repositories(),
        connectors=seed_connectors(push_port, pull_port),
    )
    nginx = start_nginx(server.config_path, tmp_path / "nginx", [push_port, pull_port])
    try:
        server.start(60)  # nginx first, as after a reboot where it came up before Portway
        _wait_for_both_workers(server)
        _push_and_pull(oci_image, tmp_path, push_port, pull_port, "v1")
        begun = time.monotonic()
        status = server.stop(30)  # a graceful stop of two workers on a busy machine
        assert status == 0, (status, time.monotonic() - begun, server.log()[-2000:])
        assert nginx.alive()
        server.start(60)  # a restart with nginx still up
        _wait_for_both_workers(server)
        _push_and_pull(oci_image, tmp_path, push_port, pull_port, "v2")
        log = server.log()
        assert "cannot listen" not in log, log[-3000:]
        assert len(listening(server)) == 4, log[-3000:]  # 2 workers, twice, no replacement
    except BaseException:
        print(server.log()[-4000:])
        print(nginx.log()[-2000:])
        raise
    finally:
        server.stop()
        nginx.stop()
