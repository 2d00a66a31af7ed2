"""Generated reverse-proxy configurations, checked by each server's own validator and by
running the real server in front of an echo backend that stands in for Portway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.proxyconf import SERVERS, ProxyServer
from proxyconf_support import (
    MIB,
    PULL_REPO,
    PUSH_REPO,
    EchoBackend,
    Layout,
    make_layout,
    request,
    start_proxy,
    validate,
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
