"""Every name of every certificate given to `portway proxy-config` gets that certificate.

For each server (nginx, Apache httpd, HAProxy, Caddy): the generated configuration runs for
real in front of an echo backend, and every name on every TLS port is checked twice, with
`openssl s_client -servername NAME` (the certificate served must be the one whose SAN covers
NAME, and verify against the CA) and with `requests` verifying against the CA through names
that resolve by /etc/hosts (the request must also land where that name routes).

Certificates, the first one the default:
  0 project.example.com        [[host]] -> the group
  1 project-push.example.com   [[host]] -> the hosted repository
  2 *.docker.example.com       [[host]] wildcard, the first label names the repository
  3 registry.example.com and *.cache.example.com: no [[host]] at all (the shared host used
    for repository paths): passed through to Portway, which routes by path
  4 team-c.docker.example.com  an exact certificate for one name under the wildcard host
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portway.config import Settings, parse_settings
from portway.proxyconf import SERVERS, CertPair, ProxyOptions, ProxyServer, build_plan, render
from portway.tls.ca import init_tls, issue_server_certificate
from proxyconf_support import PULL_REPO, PUSH_REPO, EchoBackend, seed_config, start_proxy
from support.hosts import etc_hosts
from support.ports import free_ports

CERT_NAMES: tuple[tuple[str, ...], ...] = (
    ("project.example.com",),
    ("project-push.example.com",),
    ("*.docker.example.com",),
    ("registry.example.com", "*.cache.example.com"),
    ("team-c.docker.example.com",),
)
# name a client uses -> (certificate it must get, repository on the host port or None:
# passed through unchanged)
NAMES: dict[str, tuple[int, str | None]] = {
    "project.example.com": (0, PULL_REPO),
    "project-push.example.com": (1, PUSH_REPO),
    "team-a.docker.example.com": (2, "team-a"),
    "team-c.docker.example.com": (4, "team-c"),
    "registry.example.com": (3, None),
    "img.cache.example.com": (3, None),
}
PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    combined: Path

    def pair(self, server: ProxyServer) -> CertPair:
        # HAProxy wants certificate and key in one file; the others take them apart.
        if server == "haproxy":
            return CertPair(self.combined, self.combined)
        return CertPair(self.cert, self.key)

    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )


def issue(directory: Path) -> tuple[Path, list[Issued]]:
    """The CA and one certificate per entry of CERT_NAMES (several names in one SAN)."""
    ca = init_tls(directory, ["ca-only.invalid"])
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    issued = []
    for index, names in enumerate(CERT_NAMES):
        key, cert = issue_server_certificate(ca_key, ca_cert, names)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        paths = Issued(
            directory / f"c{index}.crt", directory / f"c{index}.key", directory / f"c{index}.pem"
        )
        paths.cert.write_bytes(cert_pem)
        paths.key.write_bytes(key_pem)
        paths.combined.write_bytes(cert_pem + key_pem)
        issued.append(paths)
    return ca.ca_cert, issued


def settings(
    backend_port: int, push_port: int, pull_port: int, pull_tls: list[dict[str, str]] | None = None
) -> Settings:
    pull = {"tls": pull_tls} if pull_tls else None
    return parse_settings(
        seed_config(f"127.0.0.1:{backend_port}", push_port, pull_port, pull), environ={}
    )


@pytest.fixture(scope="module")
def resolved() -> Iterator[None]:
    with etc_hosts(*NAMES):
        yield


def served_certificate(port: int, name: str | None, ca: Path) -> tuple[bytes, str]:
    """(DER of the certificate the server sent, openssl's output) for one handshake."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca)]
    argv += ["-servername", name, "-verify_hostname", name] if name else ["-noservername"]
    run = subprocess.run(argv, input="", capture_output=True, text=True, timeout=30, check=False)
    found = PEM_RE.search(run.stdout)
    assert found, f"{name}@{port}: no certificate\n{run.stdout}{run.stderr}"
    der = x509.load_pem_x509_certificate(found.group(0).encode()).public_bytes(
        serialization.Encoding.DER
    )
    return der, run.stdout


@pytest.mark.parametrize("server", SERVERS)
def test_every_certificate_name_gets_its_certificate(
    server: ProxyServer, tmp_path: Path, resolved: None
) -> None:
    backend_port, push_port, pull_port, host_port = free_ports(4)
    ca, issued = issue(tmp_path / "tls")
    (tmp_path / "run").mkdir()
    options = ProxyOptions(
        certs=tuple(i.pair(server) for i in issued),
        https_port=host_port,
        bind="127.0.0.1",
        runtime_dir=tmp_path / "run",
        caddy_offline=True,
    )
    conf = tmp_path / f"{server}.conf"
    conf.write_text(
        render(server, build_plan(settings(backend_port, push_port, pull_port), options))
    )
    routes = {push_port: PUSH_REPO, pull_port: PULL_REPO, host_port: None}
    with EchoBackend(backend_port):
        proc = start_proxy(server, conf, list(routes))
        try:
            for port, connector_repo in routes.items():
                default, _ = served_certificate(port, None, ca)
                assert default == issued[0].der(), f"{server}: no SNI on {port}"
                for name, (index, host_repo) in NAMES.items():
                    what = f"{server}: {name} on port {port}"
                    der, out = served_certificate(port, name, ca)
                    assert der == issued[index].der(), f"{what}: wrong certificate\n{out}"
                    assert "Verify return code: 0 (ok)" in out, f"{what}\n{out}"
                    repo = connector_repo if port != host_port else host_repo
                    got = requests.get(
                        f"https://{name}:{port}/v2/a%2Fb/tags/list?n=1", verify=str(ca), timeout=30
                    )
                    assert got.status_code == 200, (what, got.status_code, got.text[:300])
                    prefix = f"/repository/{repo}" if repo else ""
                    assert got.json()["raw_path"] == f"{prefix}/v2/a%2Fb/tags/list?n=1", what
        except AssertionError:
            print(conf.read_text())
            print(proc.log()[-3000:])
            raise
        finally:
            proc.stop()


def test_plan_certificate_sites(tmp_path: Path) -> None:
    """Which names get a certificate site: not those a [[host]] answers, not IP addresses;
    a connector with certificates of its own uses only those."""
    _ca, issued = issue(tmp_path / "tls")
    ip_only = init_tls(tmp_path / "tls", ["127.0.0.1"]).issued[0]
    own = init_tls(tmp_path / "own", ["own-a.example.com", "own-b.example.com"]).issued
    pull_tls = [{"cert": str(i.cert), "key": str(i.key)} for i in own]
    pairs = (*(i.pair("nginx") for i in issued), CertPair(ip_only.cert, ip_only.key))
    options = ProxyOptions(certs=pairs, https_port=443)
    plan = build_plan(settings(8081, 8086, 8087, pull_tls), options)
    by_port = {listener.port: listener.sites for listener in plan.listeners}
    host_sites = {s.names: (s.tls, s.repository) for s in by_port[443] if s.names}
    assert host_sites == {
        ("registry.example.com",): (pairs[3], None),
        ("*.cache.example.com",): (pairs[3], None),
        ("team-c.docker.example.com",): (pairs[4], "team-c"),
    }
    assert [s.kind for s in by_port[443]][:1] == ["pass-through"]  # the default stays first
    own_pairs = [CertPair(i.cert, i.key) for i in own]
    assert [(s.names, s.tls) for s in by_port[8087]] == [
        ((), own_pairs[0]),
        (("own-a.example.com",), own_pairs[0]),
        (("own-b.example.com",), own_pairs[1]),
    ]
