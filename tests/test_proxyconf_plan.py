"""`portway proxy-config`: the plan from the settings, the command line, Debian's default paths,
and end to end a real Portway behind each proxy with real skopeo through it."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from portway.config import load_settings, parse_settings
from portway.proxyconf import (
    SERVERS,
    CertPair,
    ProxyConfigError,
    ProxyOptions,
    ProxyServer,
    build_plan,
    render,
)
from portway.tls.ca import init_tls
from proxyconf_support import (
    PUSH_REPO,
    make_layout,
    need_binary,
    seed_connectors,
    seed_repositories,
    start_proxy,
    validate,
)
from support.engines import skopeo
from support.nginx import proxy_config
from support.ports import free_ports

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
    certificate = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    https = ("--https-port", str(layout.host_port), "--runtime-dir", str(tmp_path / "run"))
    run = proxy_config("nginx", config, *certificate, *https, "--output", str(out), check=False)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert "/repository/r1$request_uri" in text
    assert f"ssl_certificate {tls.cert};" in text
    (tmp_path / "run").mkdir()
    assert validate("nginx", out).returncode == 0
    bad = proxy_config("haproxy", config, *certificate, check=False)
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
        repositories=seed_repositories(), connectors=seed_connectors(push_port, pull_port)
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
