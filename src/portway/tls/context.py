"""Server-side SSL contexts for Portway's listeners, with one certificate per host name (SNI)."""

from __future__ import annotations

import ssl

from portway.config import TlsConfig
from portway.tls.names import choose, load_certificate


def _server_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    return context


def build_ssl_context(tls: TlsConfig | tuple[TlsConfig, ...]) -> ssl.SSLContext:
    """One server context for a listener.

    With several certificates, the client's SNI server name picks the certificate whose SAN
    DNS names cover it (exact names before `*.` wildcards); a client sending no SNI, or a name
    no certificate covers, gets the first certificate. Files are read once, here: an unreadable
    file or a key that does not match its certificate raises at start, not at the first request.
    """
    configs = (tls,) if isinstance(tls, TlsConfig) else tuple(tls)
    if not configs:
        raise ValueError("build_ssl_context needs at least one certificate")
    contexts = [_server_context(config) for config in configs]
    default = contexts[0]
    if len(contexts) == 1:
        return default
    certs = [load_certificate(config.cert) for config in configs]

    def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        index = choose(server_name, certs)
        if index:
            sock.context = contexts[index]

    default.sni_callback = pick
    return default
