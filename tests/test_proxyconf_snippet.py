"""`portway proxy-config nginx --snippet`: a conf.d file for an nginx that serves other sites
too (Debian's layout), instead of a whole nginx.conf that would replace the distribution's."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import PortwayFactory
from support.ports import free_port
from support.process import ManagedProcess, port_open

HOST = "project.example.test"


def _main_conf(run: Path, snippet: Path, http_port: int) -> str:
    """What a distribution's nginx.conf looks like: its own default site on the shared port,
    and `include conf.d/*.conf` inside `http`."""
    temps = "\n".join(
        f"    {kind}_temp_path {run}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {run}/access.log;
{temps}
    server {{
        listen 127.0.0.1:{http_port} default_server;
        server_name _;
        location / {{ return 200 "the other site\\n"; }}
    }}
    include {snippet};
}}
"""


def test_nginx_snippet_joins_an_existing_nginx(
    portway_factory: PortwayFactory, tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed (scripts/install-test-deps.sh installs it)")
    push_port, http_port = free_port(), free_port()
    server = portway_factory(
        connectors=[
            {
                "listen": f"127.0.0.1:{push_port}",
                "repository": "docker-hosted",
                "served_by": "proxy",
            }
        ],
        hosts=[{"name": HOST, "repository": "docker-hosted"}],
    )
    run = tmp_path / "run"
    run.mkdir()
    snippet = tmp_path / "portway.conf"
    made = subprocess.run(
        [
            sys.executable, "-m", "portway", "proxy-config", "nginx", "--snippet",
            "--config", str(server.config_path), "--http-port", str(http_port),
            "--bind", "127.0.0.1", "--runtime-dir", str(run), "--output", str(snippet),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    text = snippet.read_text()
    for main_only in ("events", "pid ", "worker_processes", "http {", "_temp_path"):
        assert main_only not in text, main_only
    main = tmp_path / "nginx.conf"
    main.write_text(_main_conf(run, snippet, http_port))
    check = subprocess.run(
        [nginx, "-t", "-q", "-c", str(main), "-e", str(run / "startup.log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    proc = ManagedProcess(
        [nginx, "-c", str(main), "-e", str(run / "startup.log"), "-g", "daemon off;"],
        run / "nginx.out",
        cwd=tmp_path,
    )
    proc.start()
    try:
        for port in (push_port, http_port):
            proc.wait_until(functools.partial(port_open, "127.0.0.1", port), 30, f"port {port}")
        for port, host in ((push_port, None), (http_port, HOST)):
            url = f"http://127.0.0.1:{port}/v2/"
            answer = requests.get(url, headers={"Host": host} if host else {}, timeout=10)
            assert answer.status_code == 200, (url, answer.text)
            assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        elsewhere = {"Host": "elsewhere"}
        other = requests.get(f"http://127.0.0.1:{http_port}/", headers=elsewhere, timeout=10)
        assert other.text == "the other site\n"  # the distribution's default site keeps its role
    finally:
        proc.stop()
