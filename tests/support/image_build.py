"""Portway's OCI image, built by deploy/build-image.sh with buildah in a private storage.

The build downloads a minimal Debian (minutes, mostly waiting on the mirror), so it starts in
the background as soon as collection shows that an image test will run, and the tests wait
for it (`ImageBuild.wait`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from support.engines import ContainerStorage
from support.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/portway:test"
BUILD_TIMEOUT = 900.0


class ImageBuild:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pw-image-"))
        self.storage = ContainerStorage(self.root / "containers")
        flags = " ".join(self.storage._storage_flags)
        env = {**self.storage.env(), "BUILDAH": f"buildah {flags}"}
        self.started = time.monotonic()
        self.seconds: float | None = None
        self.process = ManagedProcess(
            [str(REPO_ROOT / "deploy" / "build-image.sh"), TAG],
            self.root / "build.log",
            env=env,
            cwd=REPO_ROOT,
        )
        self.process.start()

    def wait(self) -> None:
        """Until the image is built; raises with the build's log when it failed."""
        assert self.process.proc is not None
        if self.seconds is None:
            code = self.process.proc.wait(BUILD_TIMEOUT)
            self.seconds = time.monotonic() - self.started
            if code != 0:
                raise AssertionError(f"build-image.sh exited {code}:\n{self.process.log()[-4000:]}")

    def close(self) -> None:
        self.process.stop()
        self.storage.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


_BUILD: ImageBuild | None = None


def start_build() -> ImageBuild:
    global _BUILD
    if _BUILD is None:
        _BUILD = ImageBuild()
    return _BUILD


def finish_build() -> None:
    global _BUILD
    if _BUILD is not None:
        _BUILD.close()
        _BUILD = None
