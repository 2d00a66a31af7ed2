"""Which certificate a proxy listener serves to which name (SNI).

nginx, Apache httpd and Caddy pick a certificate per virtual host, so a name only gets its own
certificate when some virtual host answers that name. A listener's default virtual host has
the default certificate; every other DNS name of every certificate given therefore needs a
virtual host of its own, unless a mapping (`[[host]]`) already has one. This module works out
those names: grouped by the certificate that covers them best (an exact SAN entry before a
`*.` wildcard, the first certificate first) and by where their requests go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from portway.tls.names import choose, dns_names

Claim = Callable[[str], tuple[bool, str | None]]
"""name -> (needs a certificate site, repository its Docker paths map to or None)."""


@dataclass(frozen=True)
class NameGroup:
    cert: int  # index into the listener's certificates
    repository: str | None  # the repository these names map, None: passed through
    names: tuple[str, ...]  # exact names, or `*.` wildcards (never both in one group)


def certificate_names(certs: Sequence[x509.Certificate]) -> list[str]:
    """Every DNS name of every certificate, once, in order (no IP addresses: no SNI)."""
    names: dict[str, None] = {}
    for cert in certs:
        for name in dns_names(cert):
            if name and not _is_ip(name):
                names.setdefault(name.rstrip("."), None)
    return list(names)


def name_groups(certs: Sequence[x509.Certificate], claim: Claim) -> list[NameGroup]:
    """The certificate sites a listener needs, in the order of the names' first appearance:
    one per certificate and repository, for exact names and for wildcards apart."""
    groups: dict[tuple[bool, int, str | None], list[str]] = {}
    for name in certificate_names(certs):
        needed, repository = claim(name)
        if not needed:
            continue
        key = (name.startswith("*."), choose(name, certs), repository)
        groups.setdefault(key, []).append(name)
    return [NameGroup(cert, repo, tuple(names)) for (_w, cert, repo), names in groups.items()]


def _is_ip(name: str) -> bool:
    return all(part.isdigit() for part in name.split(".")) or ":" in name
