"""What a reverse proxy in front of Portway must serve, built from the settings.

The proxy plan is a list of listeners (ports), each with virtual sites. A site either maps
Docker's root paths (`/v2`, `/v2/...`, `/v1/...`) onto one repository's Nexus-style path on
Portway's main listener (`/repository/<repo>/v2/...`), or passes every request through
unchanged. Everything that is not a Docker path always passes through unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from portway.config import ConnectorConfig, Settings, TlsConfig, split_listen
from portway.proxyconf.certificates import Claim, name_groups
from portway.tls.names import choose, load_certificate, name_matches

# A repository named by the first label of a wildcard host: one DNS label, lower case.
REPOSITORY_LABEL = r"[a-z0-9][a-z0-9_-]*"
DEFAULT_TIMEOUT = 900


class ProxyConfigError(ValueError):
    """Settings or options that make no proxy configuration (worded for the operator)."""


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Upstream:
    """Portway's main listener, as the proxy reaches it (plain HTTP)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class Site:
    """One virtual server on a listener.

    - `host` set, `repository` set: host mapping (`project.example.com` -> one repository).
    - `wildcard_suffix` set: `<repo>.docker.example.com`, the first label names the repository.
    - `host` None, `repository` set: port mapping (every host name on this port).
    - `host` None, `repository` None: pass-through (Portway resolves the route itself).
    - `names` set: a certificate site, there so that these names (all exact, or all `*.`
      wildcards) get the certificate that covers them; it maps `repository` or passes
      through, like the listener's default site.
    """

    port: int
    tls: CertPair | None
    host: str | None = None
    wildcard_suffix: str | None = None
    repository: str | None = None
    default: bool = False
    names: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def maps_repository(self) -> bool:
        return self.repository is not None or self.wildcard_suffix is not None

    @property
    def kind(self) -> str:
        if self.names:
            return "certificate"
        if self.wildcard_suffix:
            return "wildcard host"
        if self.host:
            return "host"
        return "port" if self.repository else "pass-through"

    @property
    def name(self) -> str:
        """The host name as the operator wrote it (`*.docker.example.com`), or ''."""
        if self.names:
            return " ".join(self.names)
        if self.wildcard_suffix:
            return "*" + self.wildcard_suffix
        return self.host or ""

    @property
    def match_order(self) -> tuple[int, int]:
        """Sort key among a listener's sites: the default first, then exact names, then
        wildcards, the most specific first. Apache takes the first virtual host whose name
        matches (and its `*` spans dots); nginx, Caddy and HAProxy need no order but keep it."""
        if self.default:
            return (0, 0)
        wildcard = self.wildcard_suffix or (self.names and self.names[0].startswith("*."))
        if not wildcard:
            return (1, 0)
        return (2, -min(n.count(".") for n in (self.names or (self.name,))))

    @property
    def name_patterns(self) -> tuple[str, ...]:
        """`names` with each `*.x` as an anchored regex for one label (as a certificate's
        wildcard covers), for servers whose own wildcards would cover more."""
        return tuple(f"^[^.]+{re.escape(n[1:])}$" if n.startswith("*.") else n for n in self.names)

    @property
    def wildcard_regex(self) -> str:
        """Anchored regex for the host (no port), first label captured as group 1."""
        assert self.wildcard_suffix
        return f"^({REPOSITORY_LABEL}){re.escape(self.wildcard_suffix)}$"

    @property
    def host_regex(self) -> str:
        """Anchored regex for the Host header (an optional `:port` allowed)."""
        if self.wildcard_suffix:
            return f"^({REPOSITORY_LABEL}){re.escape(self.wildcard_suffix)}(:[0-9]+)?$"
        assert self.host
        return f"^{re.escape(self.host)}(:[0-9]+)?$"

    @property
    def wildcard_label_index(self) -> int:
        """Caddy counts host labels from the right: `a.docker.example.com` -> labels.3 is `a`."""
        assert self.wildcard_suffix
        return self.wildcard_suffix.count(".")


@dataclass(frozen=True)
class Listener:
    port: int
    bind: str | None
    tls: bool
    sites: tuple[Site, ...]

    @property
    def address(self) -> str:
        """`127.0.0.1:8086`, `[::1]:8086`, or `8086` for every address."""
        if not self.bind:
            return str(self.port)
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{host}:{self.port}"

    @property
    def bind_or_any(self) -> str:
        return self.address if self.bind else f"*:{self.port}"


@dataclass(frozen=True)
class ProxyOptions:
    """Choices the settings file does not make: where the proxy listens, certificates, paths."""

    upstream: str | None = None
    # Several nodes behind one front door, round-robin (portway.proxyconf.nodes.parse_nodes).
    nodes: tuple[Upstream, ...] = ()
    certs: tuple[CertPair, ...] = ()
    http_port: int = 80
    https_port: int = 443
    bind: str | None = None
    runtime_dir: Path | None = None
    timeout: int = DEFAULT_TIMEOUT
    caddy_offline: bool = False
    apache_modules: Path = Path("/usr/lib/apache2/modules")
    apache_user: str = "www-data"


@dataclass(frozen=True)
class ProxyPlan:
    upstream: Upstream
    listeners: tuple[Listener, ...]
    options: ProxyOptions = field(default_factory=ProxyOptions)
    notes: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return any(listener.tls for listener in self.listeners)

    @property
    def nodes(self) -> tuple[Upstream, ...]:
        """The Portway nodes requests go to: `--nodes`, else the one upstream."""
        return self.options.nodes or (self.upstream,)

    @property
    def balanced(self) -> bool:
        """Whether the proxy spreads requests over nodes (and checks their /readyz)."""
        return bool(self.options.nodes)

    @property
    def sites(self) -> tuple[Site, ...]:
        return tuple(site for listener in self.listeners for site in listener.sites)


def parse_upstream(url: str) -> Upstream:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ProxyConfigError(
            f"--upstream {url}: the proxy talks plain HTTP to Portway; give an http:// URL "
            "of a listener without TLS"
        )
    if not parts.hostname or parts.path not in ("", "/"):
        raise ProxyConfigError(f"--upstream {url}: expected http://HOST:PORT")
    return Upstream(host=parts.hostname, port=parts.port or 80)


def main_listener_upstream(settings: Settings) -> Upstream:
    """Portway's `[server] listen`, with a wildcard address replaced by loopback."""
    if settings.server.tls is not None:
        raise ProxyConfigError(
            "[server] listen serves HTTPS; point the proxy at a plain-HTTP listener with "
            "--upstream http://HOST:PORT"
        )
    host, port = split_listen(settings.server.listen)
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return Upstream(host=host, port=port)


def _certificates(pairs: Sequence[CertPair]) -> list[x509.Certificate]:
    certs = []
    for pair in pairs:
        for path in (pair.cert, pair.key):
            if not path.is_file():
                raise ProxyConfigError(f"TLS file not found: {path}")
        try:
            certs.append(load_certificate(pair.cert))
        except ValueError as exc:
            raise ProxyConfigError(f"{pair.cert}: not a PEM certificate ({exc})") from None
    return certs


def _pairs(tls: TlsConfig | tuple[TlsConfig, ...] | None) -> list[CertPair]:
    if tls is None:
        return []
    return [CertPair(cert=t.cert, key=t.key) for t in (tls if isinstance(tls, tuple) else (tls,))]


def _certificate_sites(
    port: int, pairs: Sequence[CertPair], certs: Sequence[x509.Certificate], claim: Claim
) -> list[Site]:
    return [
        Site(port=port, tls=pairs[g.cert], repository=g.repository, names=g.names)
        for g in name_groups(certs, claim)
    ]


def _every_name(repository: str) -> Claim:
    """On a connector's port: every name maps the connector's repository."""
    return lambda _name: (True, repository)


def _host_claim(settings: Settings) -> Claim:
    """On the host listener: a name a `[[host]]` has a site for needs none of its own; a name
    under a wildcard `[[host]]` maps the repository its first label names."""
    exact = {h.name for h in settings.host}
    wildcards = [h.name for h in settings.host if h.name.startswith("*.")]

    def claim(name: str) -> tuple[bool, str | None]:
        if name in exact:
            return False, None
        if not name.startswith("*."):
            for pattern in wildcards:
                if name_matches(name, pattern):
                    label = name.partition(".")[0]
                    return re.fullmatch(REPOSITORY_LABEL, label) is not None, label
        return True, None

    return claim


def _connector_bind(conn: ConnectorConfig) -> tuple[str | None, int]:
    host, port = split_listen(conn.listen)
    if host in ("0.0.0.0", "*", "::", ""):
        return None, port
    ipaddress.ip_address(host)  # the settings model accepts names; a proxy binds addresses
    return host, port


def build_plan(settings: Settings, options: ProxyOptions | None = None) -> ProxyPlan:
    """The listeners and sites a proxy needs for these settings.

    - each `[[connector]]` with a repository and `served_by = "proxy"`: the proxy listens on
      the connector's address and maps Docker paths onto that repository (port mapping);
      its certificates are the connector's own `tls` (if any), else the `--tls-cert`s;
    - each `[[host]]`: a site on the host listener (`https_port` with certificates, else
      `http_port`), with the certificate whose SAN covers the name (else the first one);
    - the host listener also gets a default site passing everything through, so Portway's
      own routing (repository paths, unknown hosts) still applies; with `nodes` (a front
      door for several nodes) that listener is there even without `[[host]]` entries;
    - on every TLS listener, certificate sites for the names of its certificates that no
      other site answers, so each name gets the certificate whose SAN covers it; the first
      certificate is the default (no SNI, or a name no certificate covers).
    """
    options = options or ProxyOptions()
    if options.nodes and options.upstream:
        raise ProxyConfigError("give either --upstream (one node) or --nodes (several), not both")
    if options.nodes:
        upstream = options.nodes[0]
    elif options.upstream:
        upstream = parse_upstream(options.upstream)
    else:
        upstream = main_listener_upstream(settings)
    pairs = list(options.certs)
    certs = _certificates(pairs)

    listeners: list[Listener] = []
    notes: list[str] = []
    for conn in settings.connector:
        if not conn.repository:
            continue
        if conn.served_by != "proxy":
            notes.append(
                f"connector {conn.listen} ({conn.repository}) is served by Portway itself; "
                'set served_by = "proxy" to put it behind this proxy'
            )
            continue
        bind, port = _connector_bind(conn)
        if port == 0:
            raise ProxyConfigError(f"connector {conn.listen}: a proxy needs a fixed port")
        own = _pairs(conn.tls)
        conn_pairs, conn_certs = (own, _certificates(own)) if own else (pairs, certs)
        tls = conn_pairs[0] if conn_pairs else None
        sites = [Site(port=port, tls=tls, repository=conn.repository, default=True)]
        if conn_pairs:
            sites += _certificate_sites(port, conn_pairs, conn_certs, _every_name(conn.repository))
        sites.sort(key=lambda site: site.match_order)
        listeners.append(Listener(port=port, bind=bind, tls=tls is not None, sites=tuple(sites)))

    if settings.host or options.nodes:
        # A front door for several nodes has this listener even without [[host]] entries:
        # its default site passes everything through, so repository paths work there.
        tls_on = bool(pairs)
        port = options.https_port if tls_on else options.http_port

        def cert_for(name: str | None) -> CertPair | None:
            return pairs[choose(name, certs)] if tls_on else None

        sites = [Site(port=port, tls=cert_for(None), default=True)]
        for host in settings.host:
            if host.name.startswith("*."):
                sites.append(
                    Site(port=port, tls=cert_for(host.name), wildcard_suffix=host.name[1:])
                )
            else:
                sites.append(
                    Site(
                        port=port,
                        tls=cert_for(host.name),
                        host=host.name,
                        repository=host.repository,
                    )
                )
        if tls_on:
            sites += _certificate_sites(port, pairs, certs, _host_claim(settings))
        sites.sort(key=lambda site: site.match_order)
        listeners.append(Listener(port=port, bind=options.bind, tls=tls_on, sites=tuple(sites)))

    seen: dict[int, Listener] = {}
    for listener in listeners:
        if listener.port in seen:
            raise ProxyConfigError(
                f"port {listener.port} is claimed twice (connector and host listener?); "
                "choose another --http-port/--https-port or connector port"
            )
        seen[listener.port] = listener
    if not listeners:
        raise ProxyConfigError(
            'nothing to proxy: add [[connector]] entries with a repository and served_by = "proxy",'
            " or [[host]] entries"
        )
    return ProxyPlan(
        upstream=upstream, listeners=tuple(listeners), options=options, notes=tuple(notes)
    )
