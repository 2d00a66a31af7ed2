"""A local certificate authority for trying Portway with TLS: `portway tls init`.

Creates (or reuses) `ca.key` + `ca.crt` in a folder and signs one server certificate per host
name, so each host can have its own certificate chosen by SNI. Not a replacement for a real
PKI: the CA key sits next to the certificates it signs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class IssuedCertificate:
    host: str
    cert: Path
    key: Path
    combined: Path  # certificate then key, for HAProxy


@dataclass(frozen=True)
class TlsInitResult:
    directory: Path
    ca_cert: Path
    ca_key: Path
    ca_created: bool
    issued: tuple[IssuedCertificate, ...]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically; private files are created 0600 from the start."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def check_host(host: str) -> str:
    """A host name (optionally `*.` wildcard) or an IP address, normalised; ValueError if not."""
    value = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _HOST_RE.match(value):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return value


def file_stem(host: str) -> str:
    """`*.docker.example.com` -> `wildcard.docker.example.com`; IPv6 colons become dashes."""
    return host.replace("*.", "wildcard.", 1).replace(":", "-")


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    """What every certificate here shares: names, key, a fresh serial, valid from 5 minutes
    ago (clock skew) for `days`."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    common_name: str = "Portway local CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        _builder(name, name, public, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for `hosts` (DNS names, `*.` wildcards, IP addresses) signed by the CA."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name")
    names = [check_host(h) for h in hosts]
    alt: list[x509.GeneralName] = []
    for host in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    key = _new_key()
    public = key.public_key()
    ca_public = ca_cert.public_key()
    if not isinstance(ca_public, ec.EllipticCurvePublicKey):
        raise ValueError("the CA key is not an EC key")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _builder(subject, ca_cert.subject, public, days)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not (cert_path.exists() and key_path.exists()):
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected the EC key `portway tls init` writes")
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def init_tls(directory: Path, hosts: Sequence[str], days: int = 825) -> TlsInitResult:
    """Create the CA in `directory` unless one is there, then one certificate per host.

    Writes `ca.crt`, `ca.key`, and for each host `<host>.crt`, `<host>.key` and `<host>.pem`
    (both in one file, as HAProxy wants them); `*.x` is written as `wildcard.x`. Existing host
    files are replaced.
    """
    names = [check_host(h) for h in hosts]
    directory.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(directory)
    created = loaded is None
    if loaded is None:
        loaded = create_ca()
        _write(directory / CA_KEY, _key_pem(loaded[0]), private=True)
        _write(directory / CA_CERT, loaded[1].public_bytes(serialization.Encoding.PEM))
    ca_key, ca_cert = loaded
    issued = []
    for host in dict.fromkeys(names):
        key, cert = issue_server_certificate(ca_key, ca_cert, [host], days=days)
        stem = file_stem(host)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        key_pem, cert_pem = _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)
        _write(key_path, key_pem, private=True)
        _write(cert_path, cert_pem)
        # HAProxy wants certificate and key in one file.
        combined = directory / f"{stem}.pem"
        _write(combined, cert_pem + key_pem, private=True)
        issued.append(IssuedCertificate(host=host, cert=cert_path, key=key_path, combined=combined))
    return TlsInitResult(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        ca_created=created,
        issued=tuple(issued),
    )


def instructions(result: TlsInitResult, port: int | None = None) -> str:
    """What to do next: the Portway config lines and how each client trusts the CA."""
    ca = result.ca_cert
    lines = [
        f"CA certificate: {ca}" + ("" if result.ca_created else " (existing CA reused)"),
        "",
        "Server certificates (use them in [server] tls, [[connector]] tls, or proxy-config):",
    ]
    for item in result.issued:
        lines.append(f'  {{ cert = "{item.cert}", key = "{item.key}" }}   # {item.host}')
    lines.append("  (HAProxy: the NAME.pem files hold certificate and key together)")
    lines += ["", "Trust the CA on each client machine:"]
    for item in result.issued:
        host = item.host.replace("*", "<repo>", 1)
        where = f"{host}:{port}" if port and port != 443 else f"{host}:<port>"
        folder = f"/etc/docker/certs.d/{where}"
        lines.append(f"  docker:  mkdir -p {folder} && cp {ca} {folder}/ca.crt")
        if not port or port == 443:
            lines.append(f"           (on port 443 the folder is /etc/docker/certs.d/{host}/)")
    lines += [
        f"  podman, skopeo, buildah:  a folder D holding ca.crt (mkdir -p D && cp {ca} D/ca.crt),",
        "           then --cert-dir D (skopeo: --src-cert-dir / --dest-cert-dir D),",
        "           or /etc/containers/certs.d/<host:port>/ca.crt for every command",
        f"  system-wide (Debian):  cp {ca} /usr/local/share/ca-certificates/portway-ca.crt"
        " && update-ca-certificates",
    ]
    return "\n".join(lines) + "\n"
