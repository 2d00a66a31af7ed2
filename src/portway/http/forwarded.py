"""The URL the client sees: scheme, host and port from Forwarded / X-Forwarded-* headers,
honoured only when the peer is a trusted proxy; otherwise from the request itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORWARDING_HEADERS = (
    "Forwarded",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # host[:port] as the client typed it; never a doubled port
    forwarded: bool  # true when a trusted proxy described the client's view
    prefix: str | None = None  # X-Forwarded-Prefix, when sent

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"


_PEER_CACHE = 4096  # peers remembered per process (an answer never changes: networks are fixed)


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        self._known: dict[str, bool] = {}

    def trusts(self, peer: str | None) -> bool:
        """Is `peer` one of the trusted proxies? Remembered per address: parsing it costs more
        than the rest of a cached request's client lookup (docs/adr/0023)."""
        if not peer:
            return False
        known = self._known.get(peer)
        if known is None:
            if len(self._known) >= _PEER_CACHE:
                self._known.clear()
            known = self._known[peer] = self._check(peer)
        return known

    def _check(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def _parse_forwarded(value: str) -> dict[str, str]:
    """First element of an RFC 7239 Forwarded header (the proxy nearest the client)."""
    first = value.split(",", 1)[0]
    out: dict[str, str] = {}
    for pair in first.split(";"):
        key, sep, val = pair.strip().partition("=")
        if sep:
            out[key.strip().lower()] = val.strip().strip('"')
    return out


def _with_port(host: str, port: str | None, scheme: str) -> str:
    """Add a port to a host unless it carries one already or the port is the default."""
    if not port:
        return host
    if _port_of(host) is not None:
        return host
    if port.isdigit() and int(port) == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def client_origin(request: web.Request, trusted: TrustedProxies) -> Origin:
    headers = request.headers
    own_scheme = request.scheme
    own_host = request.host
    if not any(h in headers for h in _FORWARDING_HEADERS) or not trusted.trusts(request.remote):
        return Origin(own_scheme, own_host, False)
    fwd = _parse_forwarded(headers["Forwarded"]) if "Forwarded" in headers else {}
    x_proto = headers.get("X-Forwarded-Proto", "").split(",", 1)[0].strip().lower()
    x_host = headers.get("X-Forwarded-Host", "").split(",", 1)[0].strip()
    x_port = headers.get("X-Forwarded-Port", "").split(",", 1)[0].strip()
    x_prefix = headers.get("X-Forwarded-Prefix", "").split(",", 1)[0].strip()
    if not (fwd or x_proto or x_host or x_port or x_prefix):
        return Origin(own_scheme, own_host, False)
    scheme = fwd.get("proto", "").lower() or x_proto or own_scheme
    if scheme not in ("http", "https"):
        scheme = own_scheme
    if fwd.get("host"):
        host = fwd["host"]
    elif x_host:
        host = _with_port(x_host, x_port, scheme)
    elif x_port:
        host = _with_port(_strip_port(own_host), x_port, scheme)
    else:
        host = own_host
    if _port_of(host) == _DEFAULT_PORTS.get(scheme):
        host = _strip_port(host)
    prefix = x_prefix.rstrip("/") if x_prefix else None
    if prefix is not None and prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return Origin(scheme, host, True, prefix)


def _port_of(host: str) -> int | None:
    tail = host.rsplit("]", 1)[-1]
    if ":" in tail:
        port = tail.rsplit(":", 1)[1]
        return int(port) if port.isdigit() else None
    return None


def _strip_port(host: str) -> str:
    return host[: host.rindex(":")] if _port_of(host) is not None else host


def client_address(request: web.Request, trusted: TrustedProxies) -> str | None:
    """The client's address: the peer, or what a trusted proxy says it forwarded for."""
    peer = request.remote
    if not trusted.trusts(peer):
        return peer
    if "Forwarded" in request.headers:
        value = _parse_forwarded(request.headers["Forwarded"]).get("for")
        if value:
            return value.strip("[]").split("]:")[0]
    xff = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
    # Proxies append: the client is the rightmost address that is not one of our proxies.
    for addr in reversed(xff):
        if not trusted.trusts(addr):
            return addr
    if xff:
        return xff[0]
    real = request.headers.get("X-Real-IP", "").strip()
    return real or peer
