"""Running the generated reverse-proxy configurations for tests: the seed's layout on ephemeral
ports, each server's validator, the real server in front of an echo backend standing in for
Portway, and a raw HTTP/1.1 client that sets any Host header and SNI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from portway.config import Settings, parse_settings
from portway.proxyconf import CertPair, ProxyOptions, ProxyServer, build_plan, render
from portway.tls.ca import TlsInitResult, init_tls
from support.ports import free_ports
from support.process import ManagedProcess

BINARY = {"nginx": "nginx", "apache": "apache2", "haproxy": "haproxy", "caddy": "caddy"}
MIB = 1024 * 1024
PUSH_REPO, PULL_REPO = "docker-hosted-project", "docker-group-project"


def need_binary(server: str) -> str:
    path = shutil.which(BINARY[server]) or shutil.which(BINARY[server], path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{BINARY[server]} is not installed (scripts/install-test-deps.sh)")
    return path


def caddy_env(runtime: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(runtime),
        "XDG_DATA_HOME": str(runtime / "data"),
        "XDG_CONFIG_HOME": str(runtime / "config"),
    }


def validate(server: ProxyServer, conf: Path) -> subprocess.CompletedProcess[str]:
    runtime = conf.parent / "run"
    binary = need_binary(server)
    argv = {
        "nginx": [binary, "-t", "-q", "-c", str(conf), "-e", str(runtime / "nginx-startup.log")],
        "apache": [binary, "-t", "-f", str(conf)],
        "haproxy": [binary, "-c", "-f", str(conf)],
        "caddy": [binary, "validate", "--config", str(conf), "--adapter", "caddyfile"],
    }[server]
    env = caddy_env(runtime) if server == "caddy" else None
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


# --- the echo backend standing in for Portway's main listener ---------------------------


class EchoBackend:
    """Records each request (method, raw path, headers, body length) and answers with it.

    Runs its own event loop in a thread. `received[test_id]` grows while a body streams in,
    so a test can tell a streaming proxy from a buffering one.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        test_id = request.headers.get("X-Test-Id", "")
        length = 0
        async for chunk in request.content.iter_any():
            length += len(chunk)
            self.received[test_id] = length
        record = {
            "method": request.method,
            "raw_path": request.raw_path,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": length,
        }
        return web.json_response(
            record, headers={"Docker-Distribution-API-Version": "registry/2.0"}
        )

    async def _serve(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    def __enter__(self) -> EchoBackend:
        self._thread.start()
        assert self._ready.wait(10), "echo backend did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# --- a raw HTTP/1.1 client: exact request targets, chunked bodies, any Host and SNI -------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def echo(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        data["header_map"] = {k.lower(): v for k, v in data["headers"]}
        return data


def _read_response(sock: socket.socket | ssl.SSLSocket) -> Response:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return Response(status, headers, body)


def request(
    port: int,
    method: str,
    target: str,
    host: str,
    *,
    sni: str | None = None,
    ca: Path | None = None,
    headers: dict[str, str] | None = None,
    chunks: int = 0,
    after_first_chunk: Any = None,
) -> Response:
    """Send one request to 127.0.0.1:port with the given Host (and SNI when `ca` is set).

    With `chunks`, the body is `chunks` MiB sent with chunked transfer encoding, and
    `after_first_chunk()` runs between the first MiB and the rest.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock: socket.socket | ssl.SSLSocket = raw
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
        server_name = sni or host.rpartition(":")[0] or host
        if server_name not in {"project.example.com", "project-push.example.com"} and not (
            server_name.endswith(".docker.example.com")
        ):
            context.check_hostname = False  # an unknown name gets the default certificate
        sock = context.wrap_socket(raw, server_hostname=server_name)
    with sock:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if chunks:
            lines.append("Transfer-Encoding: chunked")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        block = b"\xab" * MIB
        for index in range(chunks):
            sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            if index == 0 and after_first_chunk is not None:
                after_first_chunk()
        if chunks:
            sock.sendall(b"0\r\n\r\n")
        return _read_response(sock)


# --- running the real proxies -----------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_proxy(server: ProxyServer, conf: Path, ports: list[int]) -> ManagedProcess:
    binary = need_binary(server)
    runtime = conf.parent / "run"
    argv = {
        "nginx": [
            binary,
            "-c",
            str(conf),
            "-e",
            str(runtime / "nginx-startup.log"),
            "-g",
            "daemon off;",
        ],
        "apache": [binary, "-f", str(conf), "-DFOREGROUND"],
        "haproxy": [binary, "-db", "-f", str(conf)],
        "caddy": [binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
    }[server]
    env = caddy_env(runtime) if server == "caddy" else None
    proc = ManagedProcess(argv, runtime / f"{server}.out", env=env, cwd=conf.parent)
    proc.start()
    proc.wait_until(lambda: all(_port_open(p) for p in ports), 30, "listening ports")
    return proc


# --- the layout the seed describes, on ephemeral ports -----------------------------------


def seed_repositories() -> list[dict[str, Any]]:
    """The seed's repositories: a hosted one, and a group over it."""
    return [
        {"name": PUSH_REPO, "type": "hosted"},
        {"name": PULL_REPO, "type": "group", "members": [PUSH_REPO]},
    ]


def seed_connectors(
    push_port: int, pull_port: int, pull_extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Push to one port (the hosted repository), pull from another (the group), both ports
    held by the proxy in front; `pull_extra` goes into the pull connector's table."""
    return [
        {"listen": f"127.0.0.1:{push_port}", "repository": PUSH_REPO, "served_by": "proxy"},
        {
            "listen": f"127.0.0.1:{pull_port}",
            "repository": PULL_REPO,
            "served_by": "proxy",
            **(pull_extra or {}),
        },
    ]


def seed_config(
    listen: str, push_port: int, pull_port: int, pull_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The seed's configuration: Portway on `listen`, its repositories and connectors, and
    the host names (two for the repositories, a wildcard whose first label names one)."""
    return {
        "server": {"listen": listen},
        "repository": seed_repositories(),
        "connector": seed_connectors(push_port, pull_port, pull_extra),
        "host": [
            {"name": "project-push.example.com", "repository": PUSH_REPO},
            {"name": "project.example.com", "repository": PULL_REPO},
            {"name": "*.docker.example.com"},
        ],
    }


@dataclass
class Layout:
    root: Path
    backend_port: int
    push_port: int
    pull_port: int
    host_port: int
    tls: TlsInitResult | None
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = parse_settings(
            seed_config(f"0.0.0.0:{self.backend_port}", self.push_port, self.pull_port),
            environ={},
        )

    def options(self, server: str) -> ProxyOptions:
        certs: tuple[CertPair, ...] = ()
        if self.tls is not None:
            # HAProxy wants certificate and key in one file; the others take them apart.
            certs = tuple(
                CertPair(i.combined, i.combined) if server == "haproxy" else CertPair(i.cert, i.key)
                for i in self.tls.issued
            )
        return ProxyOptions(
            certs=certs,
            http_port=self.host_port,
            https_port=self.host_port,
            bind="127.0.0.1",
            runtime_dir=self.root / "run",
            caddy_offline=True,
        )

    def config(self, server: ProxyServer) -> Path:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        path = self.root / f"{server}.conf"
        path.write_text(render(server, build_plan(self.settings, self.options(server))))
        return path


def make_layout(root: Path, tls: bool, backend_port: int | None = None) -> Layout:
    root.mkdir(parents=True, exist_ok=True)
    ports = free_ports(4)
    issued = None
    if tls:
        # The first certificate is the default one (port mappings, unknown host names).
        issued = init_tls(
            root / "tls",
            ["project.example.com", "project-push.example.com", "*.docker.example.com"],
        )
    return Layout(
        root=root,
        backend_port=backend_port or ports[0],
        push_port=ports[1],
        pull_port=ports[2],
        host_port=ports[3],
        tls=issued,
    )
