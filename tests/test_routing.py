"""The route table over raw HTTP: every access method reaches the right repository, and every
URL handed back (upload `Location`, tag-list `Link`, token `realm`) is the one the client sees.

One Portway with security on serves all the methods at once:

    nexus path       http://127.0.0.1:MAIN/repository/beta/v2/...      -> beta
    connector        http://127.0.0.1:CONN/v2/...                       -> gamma
    host mapping     Host: registry.example.test                         -> delta
    wildcard host    Host: beta.docker.example.test                      -> beta
    repository path  http://127.0.0.1:MAIN/v2/alpha/<image>/...         -> alpha
    behind a proxy   /repository/gamma/v2/... + X-Forwarded-* / Forwarded from 127.0.0.1
    external_url     a connector and a host with an absolute base URL
    TLS + SNI        one connector, two certificates

A second Portway trusts only 10.255.255.0/24, so the same forwarded headers from 127.0.0.1 are
a forgery and must change nothing (the spoofing test).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cryptography import x509

from api_support import running_server
from portway.tls.ca import TlsInitResult, init_tls
from support.ports import free_port
from support.security import make_image
from support.server import PortwayServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REALM_RE = re.compile(r'realm="([^"]+)"')
SNI_NAMES = ("project.example.test", "project-push.example.test")


# --- a raw client: any port, Host header and SNI name, no redirects, no URL rewriting ---------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    peer_names: list[str] = field(default_factory=list)  # SAN DNS names of the TLS certificate

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1:port whatever the Host header says, with the SNI name given."""

    def __init__(self, port: int, context: ssl.SSLContext | None, sni: str | None) -> None:
        super().__init__("127.0.0.1", port, timeout=30, context=context)
        self.tls = context is not None
        self.sni = sni

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        if self.tls:
            context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
            self.sock = context.wrap_socket(self.sock, server_hostname=self.sni)


def call(
    port: int,
    method: str,
    target: str,
    host: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    ca: Path | None = None,
    sni: str | None = None,
) -> Answer:
    context = None
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
    conn = _Connection(port, context, sni)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None or method in ("PUT", "POST", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        answer = Answer(response.status, response.headers, response.read())
        if ca is not None and isinstance(conn.sock, ssl.SSLSocket):
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            answer.peer_names = san.value.get_values_for_type(x509.DNSName)
        return answer
    finally:
        conn.close()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the server ---------------------------------------------------------------------------


@dataclass
class Site:
    server: PortwayServer
    password: str
    conn_port: int
    ext_conn_port: int
    tls_port: int
    tls: TlsInitResult

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": basic("admin", self.password)}


REPOS = ("alpha", "beta", "gamma", "delta", "omega")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tls = init_tls(tmp_path_factory.mktemp("routing-tls"), list(SNI_NAMES))
    conn_port, ext_conn_port, tls_port = free_port(), free_port(), free_port()
    with running_server(
        tmp_path_factory,
        "routing",
        security={"enabled": True},
        repositories=[
            {"name": "alpha", "type": "hosted", "path_routing": True, "anonymous_pull": True},
            {"name": "beta", "type": "hosted"},
            {"name": "gamma", "type": "hosted"},
            {"name": "delta", "type": "hosted"},
            {"name": "omega", "type": "hosted", "path_routing": True},
        ],
        connectors=[
            {"listen": f"127.0.0.1:{conn_port}", "repository": "gamma"},
            {
                "listen": f"127.0.0.1:{ext_conn_port}",
                "repository": "gamma",
                "external_url": "https://gamma.example.test:7443",
            },
            {
                "listen": f"127.0.0.1:{tls_port}",
                "repository": "delta",
                "tls": [{"cert": str(i.cert), "key": str(i.key)} for i in tls.issued],
            },
        ],
        hosts=[
            {"name": "registry.example.test", "repository": "delta"},
            {
                "name": "ext.example.test",
                "repository": "beta",
                "external_url": "https://ext.example.test",
            },
            {"name": "*.docker.example.test"},
        ],
    ) as server:
        password = server.admin_password()
        assert password
        yield Site(server, password, conn_port, ext_conn_port, tls_port, tls)


@pytest.fixture(scope="module")
def wary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    """Trusts only a network 127.0.0.1 is not in: forwarded headers from tests are forgeries."""
    with running_server(
        tmp_path_factory,
        "routing-wary",
        security={"enabled": True},
        server={"trusted_proxies": ["10.255.255.0/24"]},
        repositories=[
            {"name": "gamma", "type": "hosted"},
            {"name": "delta", "type": "hosted"},
        ],
        hosts=[{"name": "registry.example.test", "repository": "delta"}],
    ) as server:
        yield server


# --- access methods -----------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """How a client reaches a repository, and what it must be told back.

    The client sends `<send_prefix>/v2/<name_prefix><image>/...` to 127.0.0.1:`port` with Host
    `host` (and `headers`, the ones a proxy adds). It must be handed `Location`s and `Link`s
    under `<visible_base><visible_prefix>/v2/...` (`visible_base` empty: relative) and a realm
    `<realm_base><visible_prefix>/v2/token`.
    """

    id: str
    port: str  # "main", "conn", "ext_conn", "tls"
    host: str  # Host header; {port} is replaced by the listener's port
    repository: str
    send_prefix: str = ""
    name_prefix: str = ""
    visible_prefix: str = ""
    visible_base: str = ""
    realm_base: str = "http://{host}"
    headers: tuple[tuple[str, str], ...] = ()
    sni: str | None = None


PROXY = "127.0.0.1 as a trusted proxy"
METHODS = [
    Method(
        "nexus-path",
        "main",
        "127.0.0.1:{port}",
        "beta",
        send_prefix="/repository/beta",
        visible_prefix="/repository/beta",
    ),
    Method("connector", "conn", "127.0.0.1:{port}", "gamma"),
    # A connector bound to a repository wins over a host mapping of the same name (the seed:
    # project.example.com:8086 pushes, project.example.com itself pulls from the group).
    Method("connector-over-host", "conn", "registry.example.test:{port}", "gamma"),
    Method("host", "main", "registry.example.test:{port}", "delta"),
    Method("host-no-port", "main", "Registry.Example.Test", "delta"),
    Method("wildcard", "main", "beta.docker.example.test:{port}", "beta"),
    Method("wildcard-upper", "main", "Alpha.Docker.Example.Test:{port}", "alpha"),
    Method("repository-path", "main", "127.0.0.1:{port}", "alpha", name_prefix="alpha/"),
    Method(
        "external-url-connector",
        "ext_conn",
        "127.0.0.1:{port}",
        "gamma",
        visible_base="https://gamma.example.test:7443",
        realm_base="https://gamma.example.test:7443",
    ),
    Method(
        "external-url-host",
        "main",
        "ext.example.test:{port}",
        "beta",
        visible_base="https://ext.example.test",
        realm_base="https://ext.example.test",
    ),
    Method(
        "tls-sni",
        "tls",
        "project-push.example.test:{port}",
        "delta",
        realm_base="https://{host}",
        sni="project-push.example.test",
    ),
    # Behind a reverse proxy that maps a client-visible root onto the Nexus path.
    Method(
        "x-forwarded",
        "main",
        "project.example.test:8443",
        "gamma",
        send_prefix="/repository/gamma",
        realm_base="https://project.example.test:8443",
        headers=(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "project.example.test"),
            ("X-Forwarded-Port", "8443"),
            ("X-Forwarded-For", "192.0.2.7"),
        ),
    ),
    Method(
        "x-forwarded-host-with-port",  # port in X-Forwarded-Host and X-Forwarded-Port: once
        "main",
        "project.example.test:8443",
        "gamma",
        send_prefix="/repository/gamma",
        realm_base="https://project.example.test:8443",
        headers=(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "project.example.test:8443"),
            ("X-Forwarded-Port", "8443"),
        ),
    ),
    Method(
        "x-forwarded-default-port",
        "main",
        "project.example.test",
        "gamma",
        send_prefix="/repository/gamma",
        realm_base="https://project.example.test",
        headers=(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "project.example.test:443"),
            ("X-Forwarded-Port", "443"),
        ),
    ),
    Method(
        "x-forwarded-prefix",
        "main",
        "proxy.example.test",
        "gamma",
        send_prefix="/repository/gamma",
        visible_prefix="/registry/gamma",
        realm_base="https://proxy.example.test:9443",
        headers=(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "proxy.example.test:9443"),
            ("X-Forwarded-Prefix", "/registry/gamma/"),
        ),
    ),
    Method(
        "rfc7239-forwarded",
        "main",
        "127.0.0.1:{port}",
        "gamma",
        send_prefix="/repository/gamma",
        realm_base="https://project.example.test:9443",
        headers=(("Forwarded", 'for=192.0.2.7;host="project.example.test:9443";proto=https'),),
    ),
    Method(
        "proxied-host-mapping",  # a proxy passing a host-mapped name through unchanged
        "main",
        "registry.example.test",
        "delta",
        realm_base="https://registry.example.test:8443",
        headers=(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "registry.example.test:8443"),
            ("X-Forwarded-Port", "8443"),
        ),
    ),
]


@dataclass
class Client:
    site: Site
    method: Method
    token: str | None = None  # once set, sent instead of the admin's Basic credentials

    @property
    def port(self) -> int:
        m, s = self.method.port, self.site
        return {
            "main": s.server.port,
            "conn": s.conn_port,
            "ext_conn": s.ext_conn_port,
            "tls": s.tls_port,
        }[m]

    @property
    def host(self) -> str:
        return self.method.host.replace("{port}", str(self.port))

    @property
    def realm(self) -> str:
        base = self.method.realm_base.replace("{host}", self.host)
        return f"{base}{self.method.visible_prefix}/v2/token"

    def send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """`path` as the client sees it (from /v2 or /v1 on)."""
        sent = dict(self.method.headers)
        if auth and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        elif auth:
            sent.update(self.site.admin)
        sent.update(headers or {})
        tls = self.method.port == "tls"
        return call(
            self.port,
            method,
            self.method.send_prefix + path,
            self.host,
            sent,
            body,
            ca=self.site.tls.ca_cert if tls else None,
            sni=self.method.sni,
        )

    def client_path(self, url: str) -> str:
        """A URL we were handed -> the path the client asks for next (from /v2 on)."""
        base = self.method.visible_base
        if base:
            assert url.startswith(base + "/"), (url, base)
            url = url[len(base) :]
        else:
            assert not urlsplit(url).scheme, f"expected a relative URL, got {url}"
        prefix = self.method.visible_prefix
        assert url.startswith(prefix + "/v2/"), (url, prefix)
        return url[len(prefix) :]

    def expected(self, path: str) -> str:
        return f"{self.method.visible_base}{self.method.visible_prefix}{path}"


def push(client: Client, image: str, tags: tuple[str, ...]) -> str:
    """Blob upload in two steps (POST, then PUT to the Location), a monolithic one, a manifest
    under each tag; checks every Location on the way. Returns the manifest digest."""
    built = make_image(image)
    # A push token from the token endpoint behind this door (Basic only here: hashing a
    # password per request would make this test slow).
    got = client.send("GET", f"/v2/token?service=portway&scope=repository:{image}:push,pull")
    assert got.status == 200, (got.status, got.body[:300])
    client.token = got.json()["token"]
    # Two-step upload: the Location must be followable as is.
    started = client.send("POST", f"/v2/{image}/blobs/uploads/")
    assert started.status == 202, (started.status, started.body[:300])
    location = started.header("Location")
    assert location.startswith(client.expected(f"/v2/{image}/blobs/uploads/")), location
    follow = client.client_path(location)
    sep = "&" if "?" in follow else "?"
    layer_digest = digest_of(built.layer)
    done = client.send(
        "PUT",
        f"{follow}{sep}digest={quote(layer_digest)}",
        headers={"Content-Type": "application/octet-stream"},
        body=built.layer,
    )
    assert done.status == 201, (done.status, done.body[:300])
    assert done.header("Location") == client.expected(f"/v2/{image}/blobs/{layer_digest}")
    config_digest = digest_of(built.config)
    mono = client.send(
        "POST",
        f"/v2/{image}/blobs/uploads/?digest={quote(config_digest)}",
        headers={"Content-Type": "application/octet-stream"},
        body=built.config,
    )
    assert mono.status == 201, (mono.status, mono.body[:300])
    assert mono.header("Location") == client.expected(f"/v2/{image}/blobs/{config_digest}")
    for tag in tags:
        put = client.send(
            "PUT",
            f"/v2/{image}/manifests/{tag}",
            headers={"Content-Type": OCI_MANIFEST},
            body=built.manifest,
        )
        assert put.status == 201, (put.status, put.body[:300])
        assert put.header("Location") == client.expected(f"/v2/{image}/manifests/{built.digest}"), (
            put.header("Location")
        )
    client.token = None
    return built.digest


@pytest.mark.parametrize("method", METHODS, ids=[m.id for m in METHODS])
def test_access_method(site: Site, method: Method) -> None:
    client = Client(site, method)
    image = f"{method.name_prefix}ns/img-{method.id}"
    digest = push(client, image, ("t1", "t2"))

    # It landed in the repository the method names, and nowhere else.
    bare = image.removeprefix(method.name_prefix)
    for repo in REPOS:
        listed = call(
            site.server.port,
            "GET",
            f"/repository/{repo}/v2/{bare}/tags/list",
            site.server.host,
            site.admin,
        )
        if repo == method.repository:
            assert listed.status == 200, (repo, listed.body[:300])
            assert listed.json()["tags"] == ["t1", "t2"]
        else:
            assert listed.status == 404, (repo, listed.status)

    # Pagination: the Link names the next page at the client's URL.
    page = client.send("GET", f"/v2/{image}/tags/list?n=1")
    assert page.status == 200
    assert page.json() == {"name": image, "tags": ["t1"]}
    link = page.header("Link")
    assert link == f'<{client.expected(f"/v2/{image}/tags/list")}?n=1&last=t1>; rel="next"', link
    rest = client.send("GET", client.client_path(link[1 : link.index(">")]))
    assert rest.json()["tags"] == ["t2"]
    assert rest.header("Link") == ""

    # %2F in the image name reaches the same image.
    encoded = client.send("GET", f"/v2/{quote(image, safe='')}/tags/list")
    assert encoded.status == 200, (encoded.status, encoded.body[:300])
    assert encoded.json()["name"] == image
    manifest = client.send(
        "GET",
        f"/v2/{quote(image, safe='')}/manifests/t1",
        headers={"Accept": OCI_MANIFEST},
    )
    assert manifest.status == 200
    assert manifest.header("Docker-Content-Digest") == digest

    # /v2 and /v2/: the challenge, never a redirect; its realm is the client's URL.
    for base in ("/v2/", "/v2"):
        anon = client.send("GET", base, auth=False)
        assert anon.status == 401, (base, anon.status, anon.header("Location"))
        challenge = anon.header("WWW-Authenticate")
        assert challenge.startswith("Bearer "), challenge
        found = REALM_RE.search(challenge)
        assert found and found.group(1) == client.realm, (base, challenge)
        assert anon.header("Docker-Distribution-API-Version") == "registry/2.0"

    # docker login: the realm (mapped back through the same door) hands out a token ...
    token_path = client.realm
    token_path = urlsplit(token_path).path
    prefix = method.visible_prefix
    assert token_path.startswith(prefix + "/v2/token")
    got = client.send("GET", f"{token_path[len(prefix) :]}?service=portway")
    assert got.status == 200, (got.status, got.body[:300])
    token = got.json()["token"]
    bearer = client.send("GET", "/v2/", auth=False, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status == 200, (bearer.status, bearer.body[:300])
    # ... and a scoped one pulls.
    scoped = client.send("GET", f"/v2/token?service=portway&scope=repository:{quote(image)}:pull")
    assert scoped.status == 200
    pulled = client.send(
        "GET",
        f"/v2/{image}/manifests/t2",
        auth=False,
        headers={"Authorization": f"Bearer {scoped.json()['token']}", "Accept": OCI_MANIFEST},
    )
    assert pulled.status == 200, (pulled.status, pulled.body[:300])

    # /v1: ping and search through the same door.
    ping = client.send("GET", "/v1/_ping")
    assert ping.status == 200 and ping.json() is True
    search = client.send("GET", f"/v1/search?q=img-{method.id}")
    assert search.status == 200, (search.status, search.body[:300])
    names = [r["name"] for r in search.json()["results"]]
    assert image in names, names


def test_sni_picks_the_certificate_per_name(site: Site) -> None:
    for name in SNI_NAMES:
        answer = call(
            site.tls_port,
            "GET",
            "/v2/",
            f"{name}:{site.tls_port}",
            site.admin,
            ca=site.tls.ca_cert,
            sni=name,
        )
        assert answer.status == 200
        assert answer.peer_names == [name]
    # A client sending no SNI gets the first certificate.
    context = ssl.create_default_context(cafile=str(site.tls.ca_cert))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", site.tls_port), timeout=10) as raw,
        context.wrap_socket(raw) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [SNI_NAMES[0]]


# --- a shared host with path-routed repositories of different auth settings ---------------


def test_shared_host_login_with_mixed_anonymous_pull(site: Site) -> None:
    """alpha allows anonymous pulls, omega does not; both are path-routed on the main host.

    docker login must still see a challenge on `GET /v2/` (a 200 would make it skip the
    credentials), and the token endpoint with no scope must answer a login."""
    server = site.server
    owner = Client(site, Method("shared-alpha", "main", "127.0.0.1:{port}", "alpha"))
    push(owner, "alpha/shared/img", ("v1",))
    push(owner, "omega/shared/img", ("v1",))

    anon = call(server.port, "GET", "/v2/", server.host)
    assert anon.status == 401
    realm = REALM_RE.search(anon.header("WWW-Authenticate"))
    assert realm and realm.group(1) == f"{server.url}/v2/token"

    login = call(
        server.port,
        "GET",
        "/v2/token?service=portway&offline_token=true&client_id=docker",
        server.host,
        site.admin,
    )
    assert login.status == 200, login.body[:300]
    token = login.json()["token"]
    ok = call(server.port, "GET", "/v2/", server.host, {"Authorization": f"Bearer {token}"})
    assert ok.status == 200

    wrong = call(
        server.port,
        "GET",
        "/v2/token?service=portway",
        server.host,
        {"Authorization": basic("admin", "not-the-password")},
    )
    assert wrong.status == 401

    # Anonymous: alpha serves pulls as is; omega challenges, and an anonymous token for it
    # gives nothing away.
    free = call(
        server.port,
        "GET",
        "/v2/alpha/shared/img/manifests/v1",
        server.host,
        {"Accept": OCI_MANIFEST},
    )
    assert free.status == 200, (free.status, free.body[:300])
    first = call(
        server.port,
        "GET",
        "/v2/omega/shared/img/manifests/v1",
        server.host,
        {"Accept": OCI_MANIFEST},
    )
    assert first.status == 401
    challenge = first.header("WWW-Authenticate")
    assert 'scope="repository:omega/shared/img:pull"' in challenge, challenge
    got = call(
        server.port,
        "GET",
        "/v2/token?service=portway&scope=repository:omega/shared/img:pull",
        server.host,
    )
    assert got.status == 200, got.body[:300]  # anonymous gets a token, with nothing in it
    pulled = call(
        server.port,
        "GET",
        "/v2/omega/shared/img/manifests/v1",
        server.host,
        {"Accept": OCI_MANIFEST, "Authorization": f"Bearer {got.json()['token']}"},
    )
    assert pulled.status == 401, (pulled.status, pulled.body[:300])

    # The shared host's catalog and search name images as <repo>/<image>.
    catalog = call(server.port, "GET", "/v2/_catalog", server.host, site.admin)
    assert catalog.status == 200
    assert {"alpha/shared/img", "omega/shared/img"} <= set(catalog.json()["repositories"])
    search = call(server.port, "GET", "/v1/search?q=shared", server.host, site.admin)
    names = {r["name"] for r in search.json()["results"]}
    assert {"alpha/shared/img", "omega/shared/img"} <= names


# --- spoofing: forwarded headers from an untrusted peer change nothing --------------------

FORGED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "registry.example.test:8443",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": 'for=192.0.2.66;host="evil.example";proto=https',
}


def test_forwarded_headers_from_untrusted_peer_are_ignored(wary: PortwayServer) -> None:
    password = wary.admin_password()
    assert password
    admin = {"Authorization": basic("admin", password)}
    own = wary.host

    anon = call(wary.port, "GET", "/repository/gamma/v2/", own, FORGED)
    assert anon.status == 401
    realm = REALM_RE.search(anon.header("WWW-Authenticate"))
    assert realm and realm.group(1) == f"http://{own}/repository/gamma/v2/token"

    started = call(
        wary.port, "POST", "/repository/gamma/v2/spoof/blobs/uploads/", own, {**FORGED, **admin}
    )
    assert started.status == 202
    assert started.header("Location").startswith("/repository/gamma/v2/spoof/blobs/uploads/")

    # X-Forwarded-Host naming a mapped host does not move the request to that host's
    # repository: a bare /v2/ request on the main listener stays on the shared host.
    shared = call(wary.port, "GET", "/v2/", own, FORGED)
    realm = REALM_RE.search(shared.header("WWW-Authenticate"))
    assert realm and realm.group(1) == f"http://{own}/v2/token"
    listed = call(wary.port, "GET", "/v2/_catalog", own, {**FORGED, **admin})
    assert listed.status == 200
    assert listed.json()["repositories"] == []  # no path-routed repository here

    # The real Host header still routes (host mapping is not a forwarded header).
    mapped = call(wary.port, "GET", "/v2/", f"registry.example.test:{wary.port}", FORGED)
    realm = REALM_RE.search(mapped.header("WWW-Authenticate"))
    assert realm and realm.group(1) == f"http://registry.example.test:{wary.port}/v2/token"


# --- defaults -----------------------------------------------------------------------------


def test_location_is_relative_without_external_url(site: Site) -> None:
    started = call(
        site.conn_port,
        "POST",
        "/v2/rel/blobs/uploads/",
        f"127.0.0.1:{site.conn_port}",
        site.admin,
    )
    assert started.status == 202
    assert started.header("Location").startswith("/v2/rel/blobs/uploads/")


def test_unknown_repository_on_nexus_path(site: Site) -> None:
    answer = call(site.server.port, "GET", "/repository/nope/v2/", site.server.host, site.admin)
    assert answer.status == 404


# --- the /etc/hosts editor the host-mapping tests use -------------------------------------


def test_hosts_editor_restores_the_file(tmp_path: Path) -> None:
    from support.hosts import etc_hosts, resolves_locally

    hosts, lock = tmp_path / "hosts", tmp_path / "lock"
    original = b"127.0.0.1 localhost\n::1 localhost ip6-localhost"  # no final newline
    hosts.write_bytes(original)
    with etc_hosts("a.example.test", "b.example.test", path=hosts, lock=lock) as added:
        assert added == ["a.example.test", "b.example.test"]
        assert resolves_locally("a.example.test", hosts)
        with etc_hosts("a.example.test", path=hosts, lock=lock) as again:
            assert again == []  # nested: already there
    assert hosts.read_bytes() == original

    # Someone else edits the file meanwhile: only our lines go, theirs stay.
    with etc_hosts("c.example.test", path=hosts, lock=lock):
        hosts.write_bytes(hosts.read_bytes() + b"10.0.0.1 theirs.example.test\n")
    text = hosts.read_text()
    assert "theirs.example.test" in text
    assert "c.example.test" not in text
