"""Small operations the rows share: push a tiny image, run wrk, run skopeo, talk to the client."""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import OCI_MANIFEST, small_image
from servers import Target

BENCH_DIR = Path(__file__).resolve().parent


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- tiny pushes


_TOKENS: dict[tuple[str, str, str], str] = {}
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def scope_name(t: Target, image: str) -> str:
    """The name a client puts in a token scope: the path between /v2/ and the resource."""
    return t.api.split("/v2/", 1)[1] + image


def auth_headers(t: Target, image: str, actions: str = "pull") -> dict[str, str]:
    """The Authorization header for requests on `image` (nothing when security is off).

    Bearer, as docker does it: GET /v2/ without credentials, follow the challenge's realm
    with the user's Basic credentials and `scope=repository:<name>:<actions>`, then send the
    token on every request. One token per image and actions, fetched once per run."""
    if t.auth == "none" or t.credentials is None:
        return {}
    if t.auth == "basic":
        return {"Authorization": _basic(t.credentials)}
    key = (t.base, scope_name(t, image), actions)
    token = _TOKENS.get(key)
    if token is None:
        token = _TOKENS[key] = _fetch_token(t, image, actions)
    return {"Authorization": f"Bearer {token}"}


def log_in(t: Target, times: int = 8) -> None:
    """What `docker login` does just before a push: token requests with the Basic
    credentials, each on a new connection so that every worker likely sees one and remembers
    the login (Portway checks a password with argon2 once, then for 30 s from memory)."""
    if t.auth != "none":
        for _ in range(times):
            _fetch_token(t, "bench/login", "pull")


def _fetch_token(t: Target, image: str, actions: str) -> str:
    assert t.credentials is not None
    status, headers, _ = _request(t, "GET", t.api.split("/v2/", 1)[0] + "/v2/")
    challenge = headers.get("www-authenticate", "")
    if status != 401 or not challenge.lower().startswith("bearer "):
        raise BenchError(f"{t.name}: GET /v2/ gave HTTP {status}, no Bearer challenge")
    params = dict(_CHALLENGE_PARAM.findall(challenge))
    scope = f"repository:{scope_name(t, image)}:{actions}"
    query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": scope})
    realm = urllib.parse.urlsplit(params["realm"])
    conn = http.client.HTTPConnection(realm.hostname or t.host, realm.port or t.port, timeout=60)
    try:
        conn.request(
            "GET", f"{realm.path}?{query}", headers={"Authorization": _basic(t.credentials)}
        )
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"{t.name}: token request: HTTP {resp.status} {data[:200]!r}")
    token: str = json.loads(data)["token"]
    return token


def _request(
    t: Target, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(t.host, t.port, timeout=60)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})}
        )
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def push_blob_bytes(t: Target, image: str, data: bytes, digest: str) -> None:
    """POST, then PUT with the whole body (works on every registry)."""
    start = t.path(image, "blobs/uploads/")
    auth = auth_headers(t, image, "pull,push")
    status, headers, body = _request(t, "POST", start, headers=auth)
    if status != 202:
        raise BenchError(f"{t.name}: POST {start}: HTTP {status} {body[:200]!r}")
    url = urllib.parse.urljoin(t.base + start, headers.get("location", ""))
    parts = urllib.parse.urlsplit(url)
    sep = "&" if parts.query else "?"
    path = f"{parts.path}?{parts.query}" if parts.query else parts.path
    status, _, body = _request(
        t,
        "PUT",
        f"{path}{sep}digest={urllib.parse.quote(digest)}",
        data,
        {"Content-Type": "application/octet-stream", **auth},
    )
    if status != 201:
        raise BenchError(f"{t.name}: PUT blob {digest}: HTTP {status} {body[:200]!r}")


def push_manifest(
    t: Target, image: str, ref: str, manifest: bytes, media_type: str = OCI_MANIFEST
) -> None:
    status, _, body = _request(
        t,
        "PUT",
        t.path(image, f"manifests/{ref}"),
        manifest,
        {"Content-Type": media_type, **auth_headers(t, image, "pull,push")},
    )
    if status != 201:
        raise BenchError(f"{t.name}: PUT manifest {image}:{ref}: HTTP {status} {body[:200]!r}")


@dataclass(frozen=True)
class SmallImage:
    image: str
    tag: str
    manifest: bytes
    layer_digest: str
    layer: bytes


def push_small_image(t: Target, image: str, unique: str, tag: str = "latest") -> SmallImage:
    import hashlib

    config, layer, manifest = small_image(unique)
    for blob in (config, layer):
        push_blob_bytes(t, image, blob, "sha256:" + hashlib.sha256(blob).hexdigest())
    push_manifest(t, image, tag, manifest)
    return SmallImage(image, tag, manifest, "sha256:" + hashlib.sha256(layer).hexdigest(), layer)


def check_get(
    t: Target, path: str, expect: bytes, accept: str | None = None, image: str = ""
) -> None:
    headers = {"Accept": accept} if accept else {}
    status, _, body = _request(t, "GET", path, headers={**headers, **auth_headers(t, image)})
    if status != 200 or body != expect:
        raise BenchError(
            f"{t.name}: GET {path}: HTTP {status}, {len(body)} bytes (expected "
            f"200 and {len(expect)} known bytes)"
        )


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests_per_s: float
    requests: int
    non_2xx: int
    socket_errors: str
    latency_avg: str
    raw: str = field(repr=False)


def wrk(
    url: str,
    duration: int,
    threads: int = 2,
    connections: int = 64,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchError("wrk not found (Debian package `wrk`)")
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    out = proc.stdout
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise BenchError(f"cannot read wrk output:\n{out}")
    non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s+(.*)", out)
    lat = re.search(r"Latency\s+(\S+)", out)
    result = WrkResult(
        float(rps.group(1)),
        int(total.group(1)),
        int(non2.group(1)) if non2 else 0,
        sock.group(1).strip() if sock else "",
        lat.group(1) if lat else "",
        out,
    )
    if result.non_2xx:
        raise BenchError(f"wrk saw {result.non_2xx} non-2xx responses of {result.requests}")
    return result


# --------------------------------------------------------------------------- skopeo


def skopeo_copy(
    src: str, dest: str, timeout: int = 600, creds: tuple[str, str] | None = None
) -> float:
    """Wall time of one `skopeo copy` (layers kept as they are: --preserve-digests); `creds`
    for the registry side (skopeo then follows the bearer challenge itself, as docker does)."""
    binary = shutil.which("skopeo")
    if binary is None:
        raise BenchError("skopeo not found (Debian package `skopeo`)")
    argv = [binary, "copy", "--quiet", "--preserve-digests", "--retry-times", "0"]
    login = [] if creds is None else [":".join(creds)]
    if src.startswith("docker://"):
        argv.append("--src-tls-verify=false")
        argv += [f"--src-creds={c}" for c in login]
    if dest.startswith("docker://"):
        argv.append("--dest-tls-verify=false")
        argv += [f"--dest-creds={c}" for c in login]
    argv += [src, dest]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"skopeo copy {src} {dest} failed: {proc.stderr.strip()[-500:]}")
    return elapsed


# --------------------------------------------------------------------------- transfer client


class TransferClient:
    """`bench/client.py` in its own process; one JSON command per line."""

    def __init__(self, files: list[Path], cpus: str | None = None) -> None:
        argv = [sys.executable, str(BENCH_DIR / "client.py"), json.dumps([str(p) for p in files])]
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        hello = self._readline()
        if not hello.get("ready"):
            raise BenchError(f"transfer client did not start: {hello}")

    def _readline(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"transfer client exited ({self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        result = self._readline()
        if "error" in result:
            raise BenchError(str(result["error"]))
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
