"""TLS: the local CA (`portway tls init`) and SNI certificate choice on one listener."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509

import portway
from portway.config import TlsConfig
from portway.tls import build_ssl_context
from portway.tls.ca import init_tls
from portway.tls.names import choose, dns_names, name_matches

SRC = Path(portway.__file__).resolve().parent.parent


def _portway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("a.example.com", "a.example.com", True),
        ("A.Example.com.", "a.example.com", True),
        ("a.docker.example.com", "*.docker.example.com", True),
        ("docker.example.com", "*.docker.example.com", False),
        ("a.b.docker.example.com", "*.docker.example.com", False),
        ("*.docker.example.com", "*.docker.example.com", True),
        ("*.docker.example.com", "*.example.com", False),
        ("b.example.com", "a.example.com", False),
    ],
)
def test_name_matches(name: str, pattern: str, expected: bool) -> None:
    assert name_matches(name, pattern) is expected


def test_init_writes_a_ca_and_certificates_that_chain(tmp_path: Path) -> None:
    result = init_tls(tmp_path, ["a.example.com", "*.docker.example.com", "127.0.0.1"])
    assert result.ca_created
    assert [i.host for i in result.issued] == ["a.example.com", "*.docker.example.com", "127.0.0.1"]
    for item in result.issued:
        assert item.key.stat().st_mode & 0o077 == 0
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(result.ca_cert), str(item.cert)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    ip_cert = x509.load_pem_x509_certificate(result.issued[2].cert.read_bytes())
    san = ip_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    wildcard = x509.load_pem_x509_certificate(result.issued[1].cert.read_bytes())
    assert dns_names(wildcard) == ("*.docker.example.com",)
    # A second run reuses the CA, so clients that already trust it keep working.
    again = init_tls(tmp_path, ["b.example.com"])
    assert not again.ca_created
    assert again.ca_cert.read_bytes() == result.ca_cert.read_bytes()


def test_cli_tls_init(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    run = _portway("tls", "init", "--host", "a.example.com", "--dir", str(out))
    assert run.returncode == 0, run.stderr
    assert "/etc/docker/certs.d/a.example.com" in run.stdout
    assert "--cert-dir" in run.stdout
    ca, cert = out / "ca.crt", out / "a.example.com.crt"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The same check a client does: a context trusting only our CA accepts the server's chain.
    client = ssl.create_default_context(cafile=str(ca))
    server = build_ssl_context(TlsConfig(cert=cert, key=out / "a.example.com.key"))
    assert isinstance(server, ssl.SSLContext)
    assert isinstance(client, ssl.SSLContext)


def test_cli_tls_init_rejects_bad_host(tmp_path: Path) -> None:
    run = _portway("tls", "init", "--host", "bad host", "--dir", str(tmp_path))
    assert run.returncode == 2
    assert "bad host" in run.stderr


def test_choose_prefers_exact_over_wildcard(tmp_path: Path) -> None:
    result = init_tls(tmp_path, ["*.example.com", "project.example.com"])
    certs = [x509.load_pem_x509_certificate(i.cert.read_bytes()) for i in result.issued]
    assert choose("project.example.com", certs) == 1
    assert choose("other.example.com", certs) == 0
    assert choose("unknown.org", certs) == 0
    assert choose(None, certs) == 0


@asynccontextmanager
async def _serve(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


def _peer_names(port: int, server_name: str | None, ca: Path) -> tuple[tuple[str, ...], bytes]:
    """Connect, return the SAN DNS names of the certificate the server sent, and a response."""
    context = ssl.create_default_context(cafile=str(ca))
    if server_name is None:
        context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
    return dns_names(x509.load_der_x509_certificate(der)), body


def test_sni_context_serves_the_certificate_for_each_name(tmp_path: Path) -> None:
    hosts = ["project.example.com", "project-push.example.com", "*.docker.test"]
    result = init_tls(tmp_path, hosts)
    configs = tuple(TlsConfig(cert=i.cert, key=i.key) for i in result.issued)
    context = build_ssl_context(configs)

    async def scenario() -> None:
        async with _serve(context) as port:
            loop = asyncio.get_running_loop()

            async def names(server_name: str | None) -> tuple[str, ...]:
                found, body = await loop.run_in_executor(
                    None, _peer_names, port, server_name, result.ca_cert
                )
                assert body.endswith(b"hello")
                return found

            assert await names("project.example.com") == ("project.example.com",)
            assert await names("project-push.example.com") == ("project-push.example.com",)
            assert await names("team-a.docker.test") == ("*.docker.test",)
            # No SNI: the first certificate is the default.
            assert await names(None) == ("project.example.com",)

    asyncio.run(scenario())


def test_sni_context_unknown_name_gets_first_certificate(tmp_path: Path) -> None:
    result = init_tls(tmp_path, ["one.example.com", "two.example.com"])
    context = build_ssl_context(tuple(TlsConfig(cert=i.cert, key=i.key) for i in result.issued))

    async def scenario() -> None:
        async with _serve(context) as port:
            loop = asyncio.get_running_loop()
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.run_in_executor(
                    None, _peer_names, port, "three.example.com", result.ca_cert
                )
            found, _ = await loop.run_in_executor(
                None, _peer_names, port, "two.example.com", result.ca_cert
            )
            assert found == ("two.example.com",)

    asyncio.run(scenario())


def test_mismatched_key_fails_at_build(tmp_path: Path) -> None:
    result = init_tls(tmp_path, ["one.example.com", "two.example.com"])
    one, two = result.issued
    with pytest.raises(ssl.SSLError):
        build_ssl_context(TlsConfig(cert=one.cert, key=two.key))


def test_main_listener_serves_https_and_skopeo_trusts_the_ca(
    tmp_path: Path, portway_factory: Any, oci_image: Any
) -> None:
    """`[server] tls` turns the main listener into HTTPS: the registry answers there with the
    certificate `portway tls init` made, and skopeo pushes with only the CA trusted."""
    result = init_tls(tmp_path / "tls", ["127.0.0.1"])
    cert = result.directory / "127.0.0.1.crt"
    key = result.directory / "127.0.0.1.key"
    server = portway_factory(server={"tls": {"cert": str(cert), "key": str(key)}})
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(result.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"Docker-Distribution-API-Version: registry/2.0" in reply
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(result.ca_cert.read_bytes())
    dest = f"docker://{server.host}/docker-hosted/tls-check:1"
    run = subprocess.run(
        ["skopeo", "copy", "--dest-cert-dir", str(certs), oci_image.ref, dest],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    plain = subprocess.run(
        ["skopeo", "inspect", "--cert-dir", str(tmp_path), dest],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0  # without the CA, the certificate is not trusted
