"""Which certificate serves which host name: SAN reading and RFC 6125-style matching."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file (a leaf followed by its chain is fine)."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's SAN DNS names, lower-cased; its subject CN when it has no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return tuple(str(cn.value).lower() for cn in cns)
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def ip_addresses(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def name_matches(server_name: str, pattern: str) -> bool:
    """True when `server_name` is covered by the SAN entry `pattern`.

    Exact match, or a `*.` wildcard standing for exactly one left-most label
    (`*.docker.example.com` covers `a.docker.example.com`, not `docker.example.com`
    nor `a.b.docker.example.com`). A wildcard host name given as `server_name` (the way
    `[[host]] name = "*.docker.example.com"` is written) matches the same wildcard pattern.
    """
    server_name = server_name.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if server_name == pattern:
        return True
    if not pattern.startswith("*.") or server_name.startswith("*."):
        return False
    first, dot, rest = server_name.partition(".")
    return bool(first) and bool(dot) and rest == pattern[2:]


def covers(cert: x509.Certificate, server_name: str) -> bool:
    """True when the certificate is valid for `server_name` (a DNS name or an IP address)."""
    try:
        ip = ipaddress.ip_address(server_name.strip("[]"))
    except ValueError:
        return any(name_matches(server_name, pattern) for pattern in dns_names(cert))
    return str(ip) in ip_addresses(cert)


def choose(server_name: str | None, certs: Sequence[x509.Certificate]) -> int:
    """Index of the first certificate covering `server_name`; 0 (the default) otherwise.

    An exact SAN entry wins over a wildcard one, so `project.example.com` gets its own
    certificate even when a `*.example.com` certificate comes first.
    """
    if not certs:
        raise ValueError("no certificates to choose from")
    if not server_name:
        return 0
    lowered = server_name.lower().rstrip(".")
    for index, cert in enumerate(certs):
        if lowered in dns_names(cert):
            return index
    for index, cert in enumerate(certs):
        if covers(cert, server_name):
            return index
    return 0
