"""The server log: what an operator reads should not drown in clients' routine probing."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from conftest import PortwayFactory
from support.server import PortwayServer

TLS_LINE = "HTTPS traffic on an HTTP port"


def _tls_hello(server: PortwayServer) -> None:
    """What docker, podman and skopeo do first on every command: try TLS on the plain port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # The plain port answers in HTTP, so the handshake fails: that is the point.
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        contextlib.suppress(ssl.SSLError, OSError),
    ):
        context.wrap_socket(raw, server_hostname="localhost").close()


def _broken_request(server: PortwayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        assert b" 400 " in raw.recv(65536).split(b"\r\n", 1)[0]


def _wait_for(server: PortwayServer, text: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        log = server.log()
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never reached the log:\n{server.log()[-3000:]}")


def test_a_tls_hello_on_the_plain_port_is_logged_at_debug_only(
    portway_factory: PortwayFactory,
) -> None:
    quiet = portway_factory(server={"log_level": "info"})
    _tls_hello(quiet)
    _broken_request(quiet)  # a real client mistake still gets its INFO line
    log = _wait_for(quiet, "Content-Length")
    assert "INFO portway.http" in log
    assert TLS_LINE not in log

    verbose = portway_factory(server={"log_level": "debug"})
    _tls_hello(verbose)
    log = _wait_for(verbose, TLS_LINE)
    line = next(line for line in log.splitlines() if TLS_LINE in line)
    assert " DEBUG portway.http" in line
