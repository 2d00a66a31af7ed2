"""`portway proxy-config SERVER --nodes A,B,C`: a round-robin front door for several nodes.

Each server's configuration passes its own validator, and the real server spreads requests
over three stand-in nodes with no affinity; where the server checks `/readyz` itself
(HAProxy, Apache httpd, Caddy), a node that answers 503 there gets no more requests. The
real cluster behind HAProxy is in test_cluster_clients.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from portway.config import parse_settings
from portway.proxyconf import SERVERS, ProxyConfigError, ProxyOptions, ProxyServer, build_plan
from portway.proxyconf import render as render_config
from portway.proxyconf.nodes import parse_nodes
from proxyconf_support import EchoBackend, request, start_proxy, validate
from support.ports import free_port, free_ports

ACTIVE_CHECKS: tuple[ProxyServer, ...] = ("haproxy", "apache", "caddy")


class Node(EchoBackend):
    """A stand-in node: names its port in every answer; `/readyz` is 503 while `sick`."""

    def __init__(self, port: int, sick: bool = False) -> None:
        super().__init__(port)
        self.sick = sick
        self.served = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/readyz":
            return web.json_response({}, status=503 if self.sick else 200)
        self.served += 1
        return web.json_response({"node": self.port, "path": request.raw_path})


def _config(server: ProxyServer, root: Path, nodes: str, port: int) -> Path:
    (root / "run").mkdir(parents=True, exist_ok=True)
    settings = parse_settings({"server": {"listen": "127.0.0.1:8081"}}, environ={})
    options = ProxyOptions(
        nodes=parse_nodes(nodes),
        http_port=port,
        bind="127.0.0.1",
        runtime_dir=root / "run",
        caddy_offline=True,
    )
    path = root / f"{server}.conf"
    path.write_text(render_config(server, build_plan(settings, options)))
    return path


@pytest.mark.parametrize("server", SERVERS)
def test_nodes_config_passes_validator(server: ProxyServer, tmp_path: Path) -> None:
    conf = _config(server, tmp_path, "127.0.0.1:9001,127.0.0.1:9002,[::1]:9003", 9100)
    result = validate(server, conf)
    text = conf.read_text()
    assert result.returncode == 0, f"{text}\n---\n{result.stdout}{result.stderr}"
    for address in ("127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"):
        assert address in text
    if server in ACTIVE_CHECKS:
        assert "/readyz" in text


def test_nodes_option_refuses_what_cannot_work() -> None:
    with pytest.raises(ProxyConfigError, match="listed twice"):
        parse_nodes("127.0.0.1:1,127.0.0.1:1")
    with pytest.raises(ProxyConfigError, match="plain HTTP"):
        parse_nodes("https://127.0.0.1:1")
    with pytest.raises(ProxyConfigError, match="at least one"):
        parse_nodes(" , ")
    settings = parse_settings({}, environ={})
    with pytest.raises(ProxyConfigError, match="not both"):
        build_plan(settings, ProxyOptions(upstream="127.0.0.1:1", nodes=parse_nodes("a:1")))
    bad = subprocess.run(
        [sys.executable, "-m", "portway", "proxy-config", "haproxy", "--nodes", "a:1,a:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "listed twice" in bad.stderr, bad.stderr


def _spread(port: int, count: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    for index in range(count):
        answer = request(port, "GET", f"/v2/docker-hosted/img/tags/list?n={index}", "front")
        assert answer.status == 200, answer
        seen[int(json.loads(answer.body)["node"])] += 1
    return seen


@pytest.mark.parametrize("server", SERVERS)
def test_nodes_round_robin_and_readyz(server: ProxyServer, tmp_path: Path) -> None:
    ports = free_ports(3)
    front = free_port()
    sick = server in ACTIVE_CHECKS
    nodes = [Node(ports[0]), Node(ports[1]), Node(ports[2], sick=sick)]
    for node in nodes:
        node.__enter__()
    proxy = None
    try:
        conf = _config(server, tmp_path, ",".join(f"127.0.0.1:{p}" for p in ports), front)
        proxy = start_proxy(server, conf, [front])
        if not sick:
            # nginx's workers each keep their own round-robin turn: an even spread, not exact
            seen = _spread(front, 12)
            assert set(seen) == set(ports) and max(seen.values()) <= 6, seen
            return
        # The sick node may serve a few requests before its first failed checks.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            before = nodes[2].served
            seen = _spread(front, 8)
            if nodes[2].served == before:
                break
            time.sleep(0.5)
        assert set(seen) == {ports[0], ports[1]}, (seen, proxy.log()[-2000:])
        assert min(seen.values()) >= 2, seen
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes:
            node.__exit__()
