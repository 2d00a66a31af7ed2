"""`portway backup` of a running registry while skopeo pushes: the copy, served by a new
`portway serve`, has every image its metadata names complete (each pulled with skopeo), and
`portway fsck --full` finds nothing wrong in it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import requests

from support.engines import skopeo
from support.images import make_oci_layout
from support.server import PortwayServer

PUSHES = 6


def _portway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args], capture_output=True, text=True, timeout=300
    )


def test_backup_during_pushes_restores_complete_images(tmp_path: Path) -> None:
    server = PortwayServer(tmp_path / "live")
    server.start(timeout=60)
    restored: PortwayServer | None = None
    try:
        first = make_oci_layout(tmp_path / "img0", "v1", layers=2, layer_size=512 * 1024)
        skopeo("copy", "--quiet", "--dest-tls-verify=false", first.ref,
               f"docker://{server.image('base:v1')}")  # fmt: skip
        failures: list[str] = []
        started = threading.Event()

        def push() -> None:
            for i in range(1, PUSHES + 1):
                img = make_oci_layout(tmp_path / f"img{i}", "v1", layers=3,
                                      layer_size=1024 * 1024, seed=i)  # fmt: skip
                started.set()
                got = skopeo("copy", "--quiet", "--dest-tls-verify=false", img.ref,
                             f"docker://{server.image(f'app{i}:v1')}", check=False)  # fmt: skip
                if got.returncode != 0:
                    failures.append(got.stderr)

        pusher = threading.Thread(target=push)
        pusher.start()
        started.wait(60)
        dest = tmp_path / "restored" / "data"
        got = _portway("backup", str(dest), "--config", str(server.config_path))
        pusher.join(300)
        assert got.returncode == 0, got.stderr
        assert "blob file(s) copied before the database snapshot" in got.stdout
        assert not failures, failures

        restored = PortwayServer(tmp_path / "restored")
        restored.start(timeout=60)
        base = restored.repository_url()
        images = requests.get(f"{base}/v2/_catalog", timeout=30).json()["repositories"]
        assert "base" in images
        pulled = 0
        (tmp_path / "pulled").mkdir()
        for name in images:
            tags = requests.get(f"{base}/v2/{name}/tags/list", timeout=30).json()["tags"] or []
            for tag in tags:
                out = tmp_path / "pulled" / f"{name}-{tag}"
                src = f"docker://{restored.image(f'{name}:{tag}')}"
                skopeo("copy", "--quiet", "--src-tls-verify=false", src, f"oci:{out}:{tag}")
                pulled += 1
        assert pulled == len(images) >= 1
        print(f"backup during pushes: {len(images) - 1} of {PUSHES} pushed images in it")
        restored.stop()
        fsck = _portway("fsck", "--full", "--config", str(restored.config_path))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        server.stop()
        if restored is not None:
            restored.stop()
