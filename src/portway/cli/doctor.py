"""`portway doctor URL`: check a deployment from the outside, as a Docker client sees it.

Each check prints PASS or FAIL with the fix for what failed. The checks that write (a probe
upload) clean up after themselves and never commit a blob.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

from portway.upstream.challenge import parse_challenges

CHUNK = 10 * 1024 * 1024
API_HEADER = "Docker-Distribution-API-Version"


@dataclass
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    def __init__(self, base: str, insecure: bool, ca: str | None, auth: str | None) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SystemExit(f"portway doctor: {base!r} is not an http(s) URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.auth = auth
        self.context: ssl.SSLContext | None = None
        if self.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca)
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def connect(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.prefix}{path}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        absolute: bool = False,
        timeout: float = 30.0,
        anonymous: bool = False,
    ) -> Reply:
        conn = self.connect(timeout)
        hdrs = dict(headers or {})
        if self.auth and not anonymous and "Authorization" not in hdrs:
            hdrs["Authorization"] = self.auth
        target = path if absolute else self.prefix + path
        try:
            conn.request(method, target, body=body, headers=hdrs)  # type: ignore[arg-type]
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()


def _bearer(client: Client, challenge: str, scope: str, basic: str | None) -> str | None:
    """Fetch a token for `scope` from the challenge's realm (the Docker token dance)."""
    params = _challenge_params(challenge)
    realm = params.get("realm")
    if not realm:
        return None
    parts = urlsplit(realm)
    query = urlencode({"service": params.get("service", ""), "scope": scope})
    target = f"{parts.path}?{query}"
    sub = Client(f"{parts.scheme}://{parts.netloc}", True, None, basic)
    reply = sub.request("GET", target, absolute=True)
    if reply.status != 200:
        return None
    token = json.loads(reply.body).get("token")
    return f"Bearer {token}" if token else None


def _challenge_params(header: str) -> dict[str, str]:
    """The parameters of the first challenge in a `WWW-Authenticate` value."""
    found = parse_challenges([header])
    return dict(found[0].params) if found else {}


def check_root(client: Client) -> tuple[list[Result], str | None]:
    results: list[Result] = []
    reply = client.request("GET", "/v2/", anonymous=True)
    has_header = reply.headers.get(API_HEADER.lower()) == "registry/2.0"
    results.append(
        Result(
            "GET /v2/ answers as a registry",
            reply.status in (200, 401) and has_header,
            f"status {reply.status}, {API_HEADER}: {reply.headers.get(API_HEADER.lower())}",
            "the URL does not reach Portway's /v2/ for this repository: check the proxy's "
            "location for /v2/ and that it keeps the Docker-Distribution-API-Version header",
        )
    )
    slashless = client.request("GET", "/v2", anonymous=True)
    results.append(
        Result(
            "GET /v2 (no slash) is not redirected",
            slashless.status == 200
            or (slashless.status == 401 and "www-authenticate" in slashless.headers),
            f"status {slashless.status}",
            "a redirect from /v2 drops the WWW-Authenticate challenge: route /v2 exactly too",
        )
    )
    challenge = reply.headers.get("www-authenticate")
    if reply.status == 401 and challenge:
        params = _challenge_params(challenge)
        realm = params.get("realm", "")
        realm_parts = urlsplit(realm)
        same = realm_parts.scheme == client.scheme and realm_parts.netloc == client.netloc
        results.append(
            Result(
                "token realm uses the client's scheme and host",
                same,
                f"realm {realm}",
                "the proxy must send X-Forwarded-Proto/Host/Port (and come from "
                "[server] trusted_proxies) so Portway builds the realm for the client's URL",
            )
        )
        try:
            sub = Client(f"{realm_parts.scheme}://{realm_parts.netloc}", True, None, None)
            token_reply = sub.request("GET", realm_parts.path + "?service=probe", absolute=True)
            reachable = token_reply.status in (200, 401)
            detail = f"status {token_reply.status}"
        except OSError as exc:
            reachable, detail = False, str(exc)
        results.append(
            Result(
                "token realm is reachable",
                reachable,
                detail,
                "route <prefix>/v2/token to the same repository as /v2/",
            )
        )
    return results, challenge


def check_upload(
    client: Client, image: str, challenge: str | None, basic: str | None
) -> list[Result]:
    results: list[Result] = []
    if challenge:
        token = _bearer(client, challenge, f"repository:{image}:pull,push", basic)
        if token:
            client.auth = token
    start = client.request("POST", f"/v2/{image}/blobs/uploads/", b"")
    location = start.headers.get("location", "")
    if start.status != 202 or not location:
        results.append(
            Result(
                "start a probe upload",
                False,
                f"status {start.status}: {start.body[:200]!r}",
                "give credentials that may push (--user/--password) and an image name in a "
                "writable repository (--image)",
            )
        )
        return results
    absolute = urljoin(client.url("/"), location)
    loc_parts = urlsplit(absolute)
    results.append(
        Result(
            "upload Location uses the client's scheme and host",
            loc_parts.scheme == client.scheme and loc_parts.netloc == client.netloc,
            f"Location: {location}",
            "send X-Forwarded-Proto/Host/Port from the proxy, and list it in trusted_proxies",
        )
    )
    target = loc_parts.path + ("?" + loc_parts.query if loc_parts.query else "")
    try:
        results.append(_chunk(client, target))
        results.append(_streaming(client, target))
    finally:
        with contextlib.suppress(OSError):
            client.request("DELETE", target, absolute=True)
    return results


def _chunk(client: Client, target: str) -> Result:
    body = os.urandom(CHUNK)
    reply = client.request(
        "PATCH",
        target,
        body,
        {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"0-{CHUNK - 1}",
            "Content-Length": str(CHUNK),
        },
        absolute=True,
        timeout=120,
    )
    return Result(
        "a 10 MiB chunk passes (no body size limit)",
        reply.status == 202,
        f"status {reply.status}",
        "lift the proxy's body limit (nginx: client_max_body_size 0; Apache: LimitRequestBody 0)",
    )


def _streaming(client: Client, target: str) -> Result:
    """Send part of a chunked body, pause, and ask (on another connection) how much the
    server has: a buffering proxy holds everything back until the body ends."""
    pause = threading.Event()
    progress: dict[str, str] = {}

    def body() -> Iterator[bytes]:
        for _ in range(8):
            yield os.urandom(1024 * 1024)
        pause.wait(10)
        for _ in range(8):
            yield os.urandom(1024 * 1024)

    def send() -> None:
        try:
            conn = client.connect(120)
            hdrs = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
            if client.auth:
                hdrs["Authorization"] = client.auth
            conn.request("PATCH", target, body=body(), headers=hdrs, encode_chunked=True)
            progress["status"] = str(conn.getresponse().status)
            conn.close()
        except OSError as exc:
            progress["error"] = str(exc)

    sender = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    sender.start()
    seen = 0
    deadline = started + 8
    while time.monotonic() < deadline and seen < CHUNK + 4 * 1024 * 1024:
        time.sleep(0.5)
        status = client.request("GET", target, absolute=True)
        rng = status.headers.get("range", "0-0")
        try:
            seen = int(rng.rsplit("-", 1)[1]) + 1
        except ValueError:
            seen = 0
    pause.set()
    sender.join(120)
    streamed = seen > CHUNK + 1024 * 1024
    return Result(
        "request bodies stream through (not buffered)",
        streamed,
        f"server had {seen} bytes while the client paused mid-body "
        f"({time.monotonic() - started:.1f}s); PATCH {progress}",
        "turn request buffering off (nginx: proxy_request_buffering off; HAProxy: no "
        "option http-buffer-request) so big layers do not wait for the whole body",
    )


def check_encoded_slash(client: Client, image: str) -> Result:
    first, _, rest = image.partition("/")
    encoded = f"{first}%2F{rest}" if rest else f"{first}%2Fprobe"
    reply = client.request("GET", f"/v2/{encoded}/tags/list")
    is_registry = reply.headers.get(API_HEADER.lower()) == "registry/2.0"
    return Result(
        "encoded slashes reach the registry",
        is_registry and reply.status in (200, 401, 404),
        f"status {reply.status}, from the registry: {is_registry}",
        "keep %2F undecoded (Apache: AllowEncodedSlashes NoDecode + ProxyPass ... nocanon; "
        "nginx: no URI part in proxy_pass inside regex locations)",
    )


def run_checks(
    url: str,
    image: str,
    basic: str | None,
    insecure: bool,
    ca: str | None,
    out: Callable[[str], None] = print,
) -> int:
    client = Client(url, insecure, ca, basic)
    results, challenge = check_root(client)
    if results[0].ok:
        results += check_upload(client, image, challenge, basic)
        results.append(check_encoded_slash(client, image))
    for r in results:
        out(f"{'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        if not r.ok and r.fix:
            out(f"      fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    out(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    basic = None
    if args.user:
        password = args.password if args.password is not None else sys.stdin.readline().strip()
        basic = "Basic " + base64.b64encode(f"{args.user}:{password}".encode()).decode()
    try:
        return run_checks(args.url, args.image, basic, args.insecure, args.ca)
    except OSError as exc:
        print(f"FAIL  cannot reach {args.url}: {exc}")
        return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check a deployment as a Docker client sees it")
    p.add_argument("url", help="the registry URL clients use, e.g. https://project.example.com")
    p.add_argument("--image", default="portway-doctor/probe", help="image name for the probe")
    p.add_argument("--user", help="user that may push (the password is read from stdin)")
    p.add_argument("--password", help="password (visible to other local users)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--ca", help="CA certificate to trust")
    p.set_defaults(func=run)
