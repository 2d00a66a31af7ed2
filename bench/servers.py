"""Start the registries under test: Portway and CNCF distribution, each on a free loopback port.

Both run as child processes in their own session, in a temporary folder the benchmark owns,
and are stopped by their PID when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTED = "docker-hosted"


@dataclass(frozen=True)
class Target:
    """One registry as the benchmark client sees it.

    `api` is the path prefix before `<image>/...` (it ends in `/`); `ref` is the
    `host:port[/repo]` prefix of a docker:// reference, for skopeo.
    """

    name: str
    host: str
    port: int
    api: str
    ref: str
    single_post: bool = False  # takes a monolithic upload as one POST ?digest= with the body
    # How requests authenticate: "none", "bearer" (a token from the challenge's realm, as
    # docker gets one) or "basic" (the credentials on every request); `credentials` are the
    # user name and password for the last two (skopeo gets them with --creds).
    auth: str = "none"
    credentials: tuple[str, str] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def path(self, image: str, rest: str) -> str:
        return f"{self.api}{image}/{rest}"

    def url(self, image: str, rest: str) -> str:
        return self.base + self.path(image, rest)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held together while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class ServerProcess:
    """A child server process in its own session, stopped by its PID (then its group)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()  # nobody else holds this process yet: stop it, or it outlives the run
        raise RuntimeError(f"{self.name} did not answer {url} in {timeout:.0f}s; log:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_kib(self) -> int:
        """Resident memory of the process and its children (KiB), 0 when unknown."""
        total = 0
        pids = [self.proc.pid, *_children(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its live (and reaped) children."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for i, pid in enumerate(self.pids()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
            total += int(fields[11]) + int(fields[12])
            if i == 0:
                total += int(fields[13]) + int(fields[14])
        return total / tick

    def pids(self) -> list[int]:
        return [self.proc.pid, *_children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Workers forked by the server share its process group (its own session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return out
    for child in text.split():
        out.append(int(child))
        out.extend(_children(int(child)))
    return out


# --------------------------------------------------------------------------- Portway


def portway_config(
    port: int,
    data_dir: Path,
    workers: int,
    connectors: Sequence[int] = (),
    log_level: str = "warning",
    proxied: Sequence[int] = (),
    security: bool = False,
    server_lines: Sequence[str] = (),
) -> str:
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f'data_dir = "{data_dir}"',
        f"workers = {workers}",
        f'log_level = "{log_level}"',
        *server_lines,
        "",
        "[security]",
        f"enabled = {'true' if security else 'false'}",
        # Long enough for any run: the harness, unlike docker, does not renew a token.
        "token_ttl = 7200",
        "",
        "[[repository]]",
        f'name = "{HOSTED}"',
        'type = "hosted"',
        "path_routing = true",
        "",
    ]
    for cport in connectors:
        lines += [
            "[[connector]]",
            f'listen = "127.0.0.1:{cport}"',
            f'repository = "{HOSTED}"',
            "",
        ]
    for pport in proxied:  # a reverse proxy owns these ports (portway proxy-config)
        lines += [
            "[[connector]]",
            f'listen = "127.0.0.1:{pport}"',
            f'repository = "{HOSTED}"',
            'served_by = "proxy"',
            "",
        ]
    return "\n".join(lines)


def venv_python() -> str:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def start_portway(
    workdir: Path,
    *,
    workers: int = 1,
    connectors: Sequence[int] = (),
    proxied: Sequence[int] = (),
    layout: str = "path",
    cpus: str | None = None,
    name: str = "portway",
    auth: str = "none",
    extra_config: str = "",
    env: dict[str, str] | None = None,
    log_level: str = "warning",
    server_lines: Sequence[str] = (),
) -> tuple[ServerProcess, Target]:
    """Portway with a fresh data folder (`extra_config`: TOML tables appended, e.g.
    `[storage]`; `server_lines`: more `[server]` keys; `env`: added to the environment);
    `layout` is `path` (/v2/docker-hosted/<image>) or
    `nexus` (/repository/docker-hosted/v2/<image>). `auth` "bearer" or "basic" turns
    `[security]` on; requests then go as the admin user that the first start creates."""
    if auth not in ("none", "bearer", "basic"):
        raise ValueError(f"unknown auth {auth!r}")
    port = free_port()
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "portway.toml"
    config.write_text(
        portway_config(
            port,
            home / "data",
            workers,
            connectors,
            log_level,
            proxied,
            auth != "none",
            server_lines,
        )
        + "\n"
        + extra_config
    )
    argv = [venv_python(), "-m", "portway", "serve", "--config", str(config)]
    if workers:
        argv += ["--workers", str(workers)]
    env = {"PYTHONUNBUFFERED": "1", **(env or {})}
    server = ServerProcess(name, argv, home, env=env, cpus=cpus)
    server.wait_ready(f"http://127.0.0.1:{port}/v2/", timeout=120)  # a loaded machine
    if layout == "nexus":
        api = f"/repository/{HOSTED}/v2/"
    elif layout == "path":
        api = f"/v2/{HOSTED}/"
    else:
        raise ValueError(f"unknown Portway layout {layout!r}")
    creds = None
    if auth != "none":
        creds = ("admin", (home / "data" / "admin.password").read_text().strip())
    ref = f"127.0.0.1:{port}/{HOSTED}"
    return server, Target(name, "127.0.0.1", port, api, ref, True, auth, creds)


def connector_target(port: int, name: str) -> Target:
    """A connector maps its port's root /v2/<image>/... to its repository."""
    return Target(name, "127.0.0.1", port, "/v2/", f"127.0.0.1:{port}", True)


# --------------------------------------------------------------------------- distribution


def distribution_config(
    port: int,
    root: Path,
    debug_port: int | None = None,
    storage: Sequence[str] = (),
    request_log: bool = False,
) -> str:
    """`storage`: the driver's lines under `storage:` (default: the filesystem at `root`);
    `request_log`: one JSON line per answered request ("response completed", at info)."""
    driver = list(storage) or ["  filesystem:", f"    rootdirectory: {root}"]
    logging = ["  level: info", "  formatter: json"] if request_log else ["  level: error"]
    lines = [
        "version: 0.1",
        "log:",
        *logging,
        "  accesslog:",
        "    disabled: true",
        "storage:",
        *driver,
        "  cache:",
        "    blobdescriptor: inmemory",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: portway-bench-not-a-secret",
    ]
    if debug_port is not None:
        lines += ["  debug:", f"    addr: 127.0.0.1:{debug_port}"]
    return "\n".join(lines) + "\n"


def start_distribution(
    workdir: Path,
    *,
    cpus: str | None = None,
    name: str = "distribution",
    storage: Sequence[str] = (),
    env: dict[str, str] | None = None,
    request_log: bool = False,
) -> tuple[ServerProcess, Target]:
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise RuntimeError("docker-registry not found (Debian package `docker-registry`)")
    port = free_port()
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    (home / "data").mkdir(exist_ok=True)
    config = home / "config.yml"
    config.write_text(
        distribution_config(port, home / "data", storage=storage, request_log=request_log)
    )
    server = ServerProcess(name, [binary, "serve", str(config)], home, env=env, cpus=cpus)
    server.wait_ready(f"http://127.0.0.1:{port}/v2/")
    return server, Target(name, "127.0.0.1", port, "/v2/", f"127.0.0.1:{port}")
