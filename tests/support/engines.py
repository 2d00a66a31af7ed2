"""skopeo, podman and buildah with private storage, so tests never touch the host's images."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .runner import CommandResult, run


def skopeo(*args: str, check: bool = True, timeout: float = 300) -> CommandResult:
    """`skopeo ARGS`; tests pass `--src-tls-verify=false` / `--dest-tls-verify=false` themselves."""
    return run(["skopeo", *args], check=check, timeout=timeout)


class ContainerStorage:
    """One containers/storage root (vfs driver) shared by podman and buildah in a test.

    Both tools get the same `--root`/`--runroot`, so an image built with buildah is visible to
    podman and the other way round, and an auth file of their own.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.root.mkdir(parents=True, exist_ok=True)
        self.graph_root = self.root / "storage"
        # podman refuses a runroot longer than 50 characters; pytest's tmp paths are longer.
        self.run_root = Path(tempfile.mkdtemp(prefix="pw-run-"))
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.auth_file = self.root / "auth.json"
        self.auth_file.write_text('{"auths": {}}\n')  # podman insists that it exists
        self._storage_flags = [
            "--root",
            str(self.graph_root),
            "--runroot",
            str(self.run_root),
            "--storage-driver",
            "vfs",
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "TMPDIR": str(self.tmp_dir),
        }

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> CommandResult:
        argv = [
            "podman",
            *self._storage_flags,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--tmpdir",
            str(self.tmp_dir / "podman"),
            *args,
        ]
        return run(argv, env=self.env(), check=check, timeout=timeout)

    def buildah(self, *args: str, check: bool = True, timeout: float = 300) -> CommandResult:
        return run(
            ["buildah", *self._storage_flags, *args], env=self.env(), check=check, timeout=timeout
        )

    def cleanup(self) -> None:
        """Drop images and containers, then the storage (vfs layers are plain directories)."""
        if self.graph_root.exists():
            self.buildah("rm", "--all", check=False)
            self.podman("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.run_root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
