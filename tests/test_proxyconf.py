"""Generated reverse-proxy configurations, checked by each server's own validator and by
running the real server in front of an echo backend that stands in for Portway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import portway
from portway.config import Settings, load_settings, parse_settings
from portway.proxyconf import (
    SERVERS,
    CertPair,
    ProxyConfigError,
    ProxyOptions,
    ProxyServer,
    build_plan,
    render,
)
from portway.tls.ca import TlsInitResult, init_tls
from proxyconf_support import (
    MIB,
    EchoBackend,
    need_binary,
    request,
    start_proxy,
    validate,
)
from support.engines import skopeo
from support.ports import free_ports

SRC = Path(portway.__file__).resolve().parent.parent
PUSH_REPO, PULL_REPO = "docker-hosted-project", "docker-group-project"


# --- the layout the seed describes, on ephemeral ports -----------------------------------


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
            {
                "server": {"listen": f"0.0.0.0:{self.backend_port}"},
                "repository": [
                    {"name": PUSH_REPO, "type": "hosted"},
                    {"name": PULL_REPO, "type": "group", "members": [PUSH_REPO]},
                ],
                "connector": [
                    {
                        "listen": f"127.0.0.1:{self.push_port}",
                        "repository": PUSH_REPO,
                        "served_by": "proxy",
                    },
                    {
                        "listen": f"127.0.0.1:{self.pull_port}",
                        "repository": PULL_REPO,
                        "served_by": "proxy",
                    },
                ],
                "host": [
                    {"name": "project-push.example.com", "repository": PUSH_REPO},
                    {"name": "project.example.com", "repository": PULL_REPO},
                    {"name": "*.docker.example.com"},
                ],
            },
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


# --- validators ---------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("server", SERVERS)
def test_generated_config_passes_validator(server: ProxyServer, tls: bool, tmp_path: Path) -> None:
    layout = make_layout(tmp_path, tls)
    conf = layout.config(server)
    result = validate(server, conf)
    assert result.returncode == 0, f"{conf.read_text()}\n---\n{result.stdout}{result.stderr}"


SEED_NGINX = """
 server {
listen 443 ssl;
server_name project.example.com

ssl on;
ssl_certificate CERT;
ssl_certificate_key KEY;

# Docker /v2 and /v1 (for search) requests
location ~ (/v1/|/v2/) {
proxy_set_header Host $host:$server_port;
proxy_set_header X-Real-IP $remote_addr;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto "https";
proxy_pass http://locahost:8081/repository/docker-repo
}

# Regular Nexus requests
location / {
proxy_set_header Host $host;
proxy_set_header X-Real-IP $remote_addr;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto "https";
proxy_pass http://localhost:8081;
}

}
"""


def test_seed_nginx_example_is_rejected_and_ours_passes(tmp_path: Path) -> None:
    """The seed's nginx host-mapping example is not valid nginx; the generated one is."""
    layout = make_layout(tmp_path, tls=True)
    run = tmp_path / "run"
    run.mkdir()
    cert = layout.tls.issued[0] if layout.tls else None
    assert cert is not None
    seed = SEED_NGINX.replace("CERT", str(cert.cert)).replace("KEY", str(cert.key))
    conf = tmp_path / "seed-nginx.conf"
    conf.write_text(
        f"pid {run}/seed.pid;\nerror_log {run}/seed-error.log;\nevents {{}}\nhttp {{\n"
        f"access_log off;\nclient_body_temp_path {run}/body;\nproxy_temp_path {run}/proxy;\n"
        f"fastcgi_temp_path {run}/fastcgi;\nuwsgi_temp_path {run}/uwsgi;\n"
        f"scgi_temp_path {run}/scgi;\n{seed}\n}}\n"
    )
    rejected = validate("nginx", conf)
    assert rejected.returncode != 0
    assert "emerg" in rejected.stderr
    ours = validate("nginx", layout.config("nginx"))
    assert ours.returncode == 0, ours.stderr


@pytest.fixture(params=[False, True], ids=["http", "https"])
def tls(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
def echo_layout(tmp_path: Path, tls: bool) -> Iterator[tuple[Layout, EchoBackend]]:
    layout = make_layout(tmp_path, tls)
    with EchoBackend(layout.backend_port) as backend:
        yield layout, backend


@pytest.mark.parametrize("server", SERVERS)
def test_proxy_behaviour(server: ProxyServer, echo_layout: tuple[Layout, EchoBackend]) -> None:
    layout, backend = echo_layout
    conf = layout.config(server)
    ports = [layout.push_port, layout.pull_port, layout.host_port]
    proc = start_proxy(server, conf, ports)
    try:
        _check_sites(server, layout, backend)
    except AssertionError:
        print(conf.read_text())
        print(proc.log()[-3000:])
        for log in sorted((layout.root / "run").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        proc.stop()


def _check_sites(server: ProxyServer, layout: Layout, backend: EchoBackend) -> None:
    scheme = "https" if layout.tls else "http"
    ca = layout.tls.ca_cert if layout.tls else None
    h = layout.host_port
    sites = [
        # (port, Host header as the client sends it, repository the path must land in)
        (layout.push_port, f"project.example.com:{layout.push_port}", PUSH_REPO),
        (layout.pull_port, f"project.example.com:{layout.pull_port}", PULL_REPO),
        (h, f"project-push.example.com:{h}", PUSH_REPO),
        (h, f"project.example.com:{h}", PULL_REPO),
        (h, f"team-a.docker.example.com:{h}", "team-a"),
    ]
    if server != "caddy":
        # Caddy has no lower-case function for placeholders: it passes the label as typed.
        sites.append((h, f"Team-B.Docker.Example.com:{h}", "team-b"))
    for port, host, repo in sites:
        what = f"{host} -> {repo}"
        test_id = f"{port}-{host}"
        streamed: list[bool] = []

        def saw_first_bytes(test_id: str = test_id, streamed: list[bool] = streamed) -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if backend.received.get(test_id, 0) > 0:
                    streamed.append(True)
                    return
                time.sleep(0.01)
            streamed.append(False)

        push = request(
            port,
            "POST",
            "/v2/team%2Fimg/blobs/uploads/?mount=sha256%3Aab&from=x",
            host,
            ca=ca,
            chunks=10,
            after_first_chunk=saw_first_bytes,
            headers={
                "X-Test-Id": test_id,
                # Forgeries a proxy must not let through to a server that trusts it.
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Prefix": "/evil",
                "Forwarded": "for=1.2.3.4;host=evil.example;proto=http",
            },
        )
        assert push.status == 200, (what, push.status, push.body[:500])
        echo = push.echo()
        assert echo["raw_path"] == (
            f"/repository/{repo}/v2/team%2Fimg/blobs/uploads/?mount=sha256%3Aab&from=x"
        ), what
        assert echo["method"] == "POST"
        assert echo["body_length"] == 10 * MIB, what
        assert streamed == [True], f"{what}: the proxy buffered the request body"
        assert echo["version"] == "1.1", what
        sent = echo["header_map"]
        assert sent["host"] == host, what
        assert sent["x-forwarded-host"] == host, what
        assert sent["x-forwarded-proto"] == scheme, what
        assert sent["x-forwarded-port"] == str(port), what
        assert "127.0.0.1" in sent["x-forwarded-for"], what
        assert "x-forwarded-prefix" not in sent, what
        assert "forwarded" not in sent, what
        assert push.headers.get("docker-distribution-api-version") == "registry/2.0", what

        for target, expected in [
            ("/v2", f"/repository/{repo}/v2"),
            ("/v2/", f"/repository/{repo}/v2/"),
            (
                "/v2/a%2Fb/tags/list?n=10&last=x%2Fy",
                f"/repository/{repo}/v2/a%2Fb/tags/list?n=10&last=x%2Fy",
            ),
            ("/v1/search?q=busybox", f"/repository/{repo}/v1/search?q=busybox"),
            # Not Docker paths: to the main listener unchanged.
            ("/service/rest/v1/status?x=%2F", "/service/rest/v1/status?x=%2F"),
            ("/repository/other/v2/x%2Fy/tags/list", "/repository/other/v2/x%2Fy/tags/list"),
            ("/v2x/not-docker", "/v2x/not-docker"),
        ]:
            got = request(port, "GET", target, host, ca=ca)
            assert got.status == 200, (what, target, got.status, got.body[:300])
            assert got.echo()["raw_path"] == expected, (what, target)
            assert got.headers.get("docker-distribution-api-version") == "registry/2.0"

    # A host name no mapping claims passes through untouched: Portway routes it itself
    # (repository paths, its own host mappings).
    other = f"other.example.com:{h}"
    got = request(h, "PUT", "/v2/docker-hosted/img/manifests/v1", other, ca=ca, chunks=1)
    assert got.status == 200, (other, got.status, got.body[:300])
    echo = got.echo()
    assert echo["raw_path"] == "/v2/docker-hosted/img/manifests/v1"
    assert echo["body_length"] == MIB
    assert echo["header_map"]["x-forwarded-host"] == other


# --- plan building and the command line ---------------------------------------------------


def test_plan_picks_certificate_per_host_and_notes_portway_connectors(tmp_path: Path) -> None:
    issued = init_tls(tmp_path, ["*.example.com", "project.example.com", "*.docker.example.com"])
    settings = parse_settings(
        {
            "repository": [{"name": "r1", "type": "hosted"}],
            "connector": [
                {"listen": "0.0.0.0:8086", "repository": "r1", "served_by": "proxy"},
                {"listen": "0.0.0.0:8087", "repository": "r1"},
            ],
            "host": [
                {"name": "project.example.com", "repository": "r1"},
                {"name": "other.example.com", "repository": "r1"},
                {"name": "*.docker.example.com"},
            ],
        },
        environ={},
    )
    pairs = tuple(CertPair(i.cert, i.key) for i in issued.issued)
    plan = build_plan(settings, ProxyOptions(certs=pairs))
    assert plan.upstream.url == "http://127.0.0.1:8081"
    by_name = {site.name: site.tls for site in plan.sites}
    assert by_name["project.example.com"] == pairs[1]  # exact name beats the wildcard
    assert by_name["other.example.com"] == pairs[0]
    assert by_name["*.docker.example.com"] == pairs[2]
    assert [listener.port for listener in plan.listeners] == [8086, 443]
    assert len(plan.notes) == 1 and "8087" in plan.notes[0]
    http_plan = build_plan(settings, ProxyOptions(upstream="http://10.0.0.5:9000"))
    assert [listener.port for listener in http_plan.listeners] == [8086, 80]
    assert http_plan.upstream.address == "10.0.0.5:9000"


def test_plan_refuses_what_cannot_work(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "repository": [{"name": "r1", "type": "hosted"}],
            "connector": [{"listen": "0.0.0.0:443", "repository": "r1", "served_by": "proxy"}],
            "host": [{"name": "a.example.com", "repository": "r1"}],
        },
        environ={},
    )
    with pytest.raises(ProxyConfigError, match="443"):
        build_plan(settings, ProxyOptions(https_port=443, http_port=443))
    with pytest.raises(ProxyConfigError, match="plain HTTP"):
        build_plan(settings, ProxyOptions(upstream="https://127.0.0.1:8081", http_port=80))
    with pytest.raises(ProxyConfigError, match="nothing to proxy"):
        build_plan(parse_settings({}, environ={}))
    with pytest.raises(ProxyConfigError, match="not found"):
        build_plan(settings, ProxyOptions(certs=(CertPair(tmp_path / "x", tmp_path / "y"),)))


def test_cli_writes_config(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, tls=True)
    assert layout.tls is not None
    config = tmp_path / "portway.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{layout.backend_port}"\n'
        '[[repository]]\nname = "r1"\ntype = "hosted"\n'
        f'[[connector]]\nlisten = "127.0.0.1:{layout.push_port}"\nrepository = "r1"\n'
        'served_by = "proxy"\n'
        '[[host]]\nname = "project.example.com"\nrepository = "r1"\n'
    )
    out = tmp_path / "nginx.conf"
    tls = layout.tls.issued[0]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "proxy-config",
            "nginx",
            "--config",
            str(config),
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
            "--https-port",
            str(layout.host_port),
            "--runtime-dir",
            str(tmp_path / "run"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert "/repository/r1$request_uri" in text
    assert f"ssl_certificate {tls.cert};" in text
    (tmp_path / "run").mkdir()
    assert validate("nginx", out).returncode == 0
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "proxy-config",
            "haproxy",
            "--config",
            str(config),
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "COMBINED.pem" in bad.stderr


# --- end to end: a real Portway behind each proxy, real skopeo through it -----------------


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("server", SERVERS)
def test_skopeo_push_and_pull_through_proxy(
    server: ProxyServer,
    tls: bool,
    tmp_path: Path,
    portway_factory: Any,
    oci_image: Any,
) -> None:
    """The seed's port mapping: push to one port (hosted), pull from another (group)."""
    need_binary(server)
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (scripts/install-test-deps.sh)")
    push_port, pull_port = free_ports(2)
    portway = portway_factory(
        repositories=[
            {"name": PUSH_REPO, "type": "hosted"},
            {"name": PULL_REPO, "type": "group", "members": [PUSH_REPO]},
        ],
        connectors=[
            {"listen": f"127.0.0.1:{push_port}", "repository": PUSH_REPO, "served_by": "proxy"},
            {"listen": f"127.0.0.1:{pull_port}", "repository": PULL_REPO, "served_by": "proxy"},
        ],
    )
    root = tmp_path / "proxy"
    (root / "run").mkdir(parents=True)
    certs: tuple[CertPair, ...] = ()
    flags_dest, flags_src = ["--dest-tls-verify=false"], ["--src-tls-verify=false"]
    if tls:
        issued = init_tls(root / "tls", ["127.0.0.1"]).issued[0]
        pem = issued.combined
        certs = (CertPair(pem, pem) if server == "haproxy" else CertPair(issued.cert, issued.key),)
        trust = root / "trust"
        trust.mkdir()
        shutil.copy(root / "tls" / "ca.crt", trust / "ca.crt")
        flags_dest, flags_src = [f"--dest-cert-dir={trust}"], [f"--src-cert-dir={trust}"]
    options = ProxyOptions(certs=certs, runtime_dir=root / "run", caddy_offline=True)
    conf = root / f"{server}.conf"
    conf.write_text(render(server, build_plan(load_settings(portway.config_path), options)))
    proc = start_proxy(server, conf, [push_port, pull_port])
    try:
        pushed = root / "digest"
        skopeo(
            "copy",
            *flags_dest,
            "--digestfile",
            str(pushed),
            oci_image.ref,
            f"docker://127.0.0.1:{push_port}/proxied/img:v1",
        )
        digest = pushed.read_text().strip()
        out = root / "pulled"
        skopeo(
            "copy",
            *flags_src,
            f"docker://127.0.0.1:{pull_port}/proxied/img@{digest}",
            f"oci:{out}:pulled",
        )
        assert (out / "index.json").exists()
        # It landed in the hosted repository, as Portway's Nexus-style path shows.
        tags = _get_json(f"{portway.url}/repository/{PUSH_REPO}/v2/proxied/img/tags/list")
        assert tags["tags"] == ["v1"]
    except Exception:
        print(conf.read_text())
        print(proc.log()[-3000:])
        for log in sorted((root / "run").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        proc.stop()


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


@pytest.mark.parametrize("server", ["apache", "haproxy", "caddy"])
def test_default_system_paths_pass_validator(server: ProxyServer, tmp_path: Path) -> None:
    """Without --runtime-dir the files follow Debian's layout and still validate.

    (nginx is left out: its check creates the log and temporary folders it names.)
    """
    layout = make_layout(tmp_path, tls=False)
    (tmp_path / "run").mkdir()
    conf = tmp_path / f"{server}-system.conf"
    options = ProxyOptions(http_port=layout.host_port, caddy_offline=True)
    conf.write_text(render(server, build_plan(layout.settings, options)))
    result = validate(server, conf)
    assert result.returncode == 0, f"{conf.read_text()}\n---\n{result.stdout}{result.stderr}"
