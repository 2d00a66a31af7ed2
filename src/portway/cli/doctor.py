"""`portway doctor URL`: check a deployment from the outside, as a Docker client sees it.

Each check prints PASS or FAIL with the fix for what failed. The checks that write (a probe
upload) clean up after themselves and never commit a blob.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlencode, urljoin, urlsplit

from portway.cli.doctor_client import Client, Reply, Result, bearer, challenge_params
from portway.cli.doctor_cluster import add_cluster_option, parse_cluster, run_cluster

CHUNK = 10 * 1024 * 1024
PROBE = "portway-doctor"  # image name of the probe upload (nothing is ever committed)
API_HEADER = "Docker-Distribution-API-Version"


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
        params = challenge_params(challenge)
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


def check_login(client: Client, challenge: str | None, user: str | None) -> Result | None:
    """With security on, log in at the token realm first: a wrong password fails here, once,
    instead of as a confusing upload failure (and a second counted failed login)."""
    params = challenge_params(challenge) if challenge else {}
    realm = params.get("realm")
    if not realm:
        return None  # security off: nothing to log in to
    name = f"log in as {user}" if user else "log in"
    if client.auth is None:
        return Result(
            name,
            False,
            "the registry asks for a login (security is on)",
            "pass --user NAME (a user that may push; the password is read from stdin)",
        )
    parts = urlsplit(realm)
    sub = Client(f"{parts.scheme}://{parts.netloc}", True, None, client.auth)
    query = urlencode({"service": params.get("service", "")})
    reply = sub.request("GET", f"{parts.path}?{query}", absolute=True)
    if reply.status == 200:
        return Result(name, True, "the token service accepted the password")
    if reply.status == 401:
        return Result(
            name,
            False,
            "the registry refused the user name or password (401)",
            f"check them; an administrator can set a new one: portway user passwd {user}",
        )
    detail = f"status {reply.status}: {reply.body[:200]!r}"
    if reply.status == 429:
        return Result(name, False, detail, "too many failed logins: wait and try again")
    return Result(name, False, detail, "the token realm did not answer as a token service")


def _authorize(client: Client, challenge: str | None, basic: str | None, image: str) -> None:
    """Use a bearer token for pushing `image` when the registry asks for tokens."""
    client.auth = basic
    if challenge:
        token = bearer(client, challenge, f"repository:{image}:pull,push", basic)
        if token:
            client.auth = token


def _start_upload(client: Client, image: str) -> Reply:
    return client.request("POST", f"/v2/{image}/blobs/uploads/", b"")


def _unknown_name(reply: Reply) -> bool:
    if reply.status != 404:
        return False
    try:
        errors = json.loads(reply.body).get("errors") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(e, dict) and e.get("code") == "NAME_UNKNOWN" for e in errors)


def _candidates(client: Client) -> list[str]:
    """Probe images to try, in order: the URL itself names a repository (a connector, a host
    mapping, a /repository/<name> path); else a repository path on a shared host, for the
    repositories the catalog shows, then the default install's `docker-hosted`."""
    names = [PROBE]
    reply = client.request("GET", "/v2/_catalog")
    if reply.status == 200:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            for listed in json.loads(reply.body).get("repositories") or []:
                repo = str(listed).split("/", 1)[0]
                if f"{repo}/{PROBE}" not in names:
                    names.append(f"{repo}/{PROBE}")
    if f"docker-hosted/{PROBE}" not in names:
        names.append(f"docker-hosted/{PROBE}")
    return names


def choose_image(
    client: Client, challenge: str | None, basic: str | None
) -> tuple[str | None, Result]:
    """Find an image name this URL routes to a repository, by starting (and dropping) an
    upload for each candidate; the first that is not "no such repository" wins."""
    name = "find a repository to probe"
    tried: list[str] = []
    for image in _candidates(client):
        _authorize(client, challenge, basic, image)
        reply = _start_upload(client, image)
        if _unknown_name(reply):
            tried.append(image)
            continue
        location = reply.headers.get("location")
        if reply.status == 202 and location:
            with contextlib.suppress(OSError):
                target = urlsplit(urljoin(client.url("/"), location))
                query = "?" + target.query if target.query else ""
                client.request("DELETE", target.path + query, absolute=True)
        return image, Result(name, True, f"probing with image {image} (choose one with --image)")
    return None, Result(
        name,
        False,
        f"no repository answered for {', '.join(tried)}",
        "pass --image REPOSITORY/NAME (a repository with path_routing = true that the user "
        "may push to), or give the URL of one repository (a connector's port, a mapped host, "
        "or http://HOST:PORT/repository/NAME)",
    )


def check_upload(
    client: Client, image: str, challenge: str | None, basic: str | None
) -> list[Result]:
    results: list[Result] = []
    _authorize(client, challenge, basic, image)
    start = _start_upload(client, image)
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
    image: str | None,
    basic: str | None,
    insecure: bool,
    ca: str | None,
    out: Callable[[str], None] = print,
    user: str | None = None,
) -> int:
    client = Client(url, insecure, ca, basic)
    results, challenge = check_root(client)
    if results[0].ok:
        results += _probe(client, image, challenge, basic, user)
    for r in results:
        out(f"{'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        if not r.ok and r.fix:
            out(f"      fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    out(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _probe(
    client: Client, image: str | None, challenge: str | None, basic: str | None, user: str | None
) -> list[Result]:
    """Log in, find the probe image, then the upload and encoded-slash checks; stop at the
    first of those that fails, since the rest would only fail for the same reason."""
    login = check_login(client, challenge, user)
    results = [login] if login else []
    if login and not login.ok:
        return results
    if image is None:
        image, chosen = choose_image(client, challenge, basic)
        results.append(chosen)
        if image is None:
            return results
    results += check_upload(client, image, challenge, basic)
    results.append(check_encoded_slash(client, image))
    return results


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.user}: ")
    return sys.stdin.readline().rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    basic = None
    if args.user:
        password = _read_password(args)
        basic = "Basic " + base64.b64encode(f"{args.user}:{password}".encode()).decode()
    if args.url is None and args.cluster is None:
        print("portway doctor: give the URL clients use, --cluster URL,URL,..., or both")
        return 2
    status = 0
    if args.url is not None:
        try:
            status = run_checks(args.url, args.image, basic, args.insecure, args.ca, user=args.user)
        except OSError as exc:
            print(f"FAIL  cannot reach {args.url}: {exc}")
            status = 1
    if args.cluster is not None:
        nodes = parse_cluster(args.cluster)
        status = max(status, run_cluster(nodes, basic, args.insecure, args.ca))
    return status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check a deployment as a Docker client sees it")
    p.add_argument("url", nargs="?", help="the registry URL clients use, e.g. https://host")
    add_cluster_option(p)
    p.add_argument(
        "--image",
        help="image name for the probe upload (default: found by trying portway-doctor, then "
        "<repository>/portway-doctor for the repositories the URL shows, then docker-hosted)",
    )
    p.add_argument(
        "--user", help="user that may push (the password is read from stdin, or asked for)"
    )
    p.add_argument("--password", help="password (visible to other local users)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--ca", help="CA certificate to trust")
    p.set_defaults(func=run)
