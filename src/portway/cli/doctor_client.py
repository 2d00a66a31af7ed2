"""The HTTP side of `portway doctor`: a small registry client (plain `http.client`, so the
checks see exactly what went over the wire) and Docker's bearer-token dance."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from portway.upstream.challenge import parse_challenges


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
            conn.request(method, target, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()


def bearer(client: Client, challenge: str, scope: str, basic: str | None) -> str | None:
    """Fetch a token for `scope` from the challenge's realm (the Docker token dance)."""
    params = challenge_params(challenge)
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


def challenge_params(header: str) -> dict[str, str]:
    """The parameters of the first challenge in a `WWW-Authenticate` value."""
    found = parse_challenges([header])
    return dict(found[0].params) if found else {}
