"""`portway doctor --cluster URL,URL,...`: the nodes behind one front door, side by side.

Each node is asked directly (its own URL, not the front door's) for `/readyz?node=1` with
the administrator's credentials (portway.observe.node says what it answers). Flagged:

- a node that does not answer, or is not ready (its database or blob store unreachable);
- a node whose clock is more than `MAX_SKEW` seconds off this host's (Date header);
- a configuration table that differs between nodes (by fingerprint; each node's own
  `[server]` keys, such as its listen address and data directory, may differ);
- signing keys that differ (a token one node signs would be refused by another);
- with presigned redirects on, a redirect this host cannot follow (one image's config blob
  from the first ready node: the bucket's address as signed must be reachable from here).
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from portway.cli.doctor_client import Client, Result

MAX_SKEW = 2.0  # seconds; the Date header counts whole seconds
PATH = "/readyz?node=1"


@dataclass
class Node:
    url: str
    status: int = 0
    error: str = ""
    doc: dict[str, Any] = field(default_factory=dict)
    skew: float | None = None  # node clock minus ours, seconds

    @property
    def info(self) -> dict[str, Any]:
        node = self.doc.get("node")
        return node if isinstance(node, dict) and "settings" in node else {}


def _ask(url: str, auth: str | None, insecure: bool, ca: str | None) -> Node:
    node = Node(url)
    client = Client(url, insecure, ca, auth)
    before = time.time()
    try:
        reply = client.request("GET", PATH, timeout=15)
    except OSError as exc:
        node.error = str(exc) or type(exc).__name__
        return node
    after = time.time()
    node.status = reply.status
    try:
        node.doc = json.loads(reply.body)
    except ValueError:
        node.error = f"status {reply.status}, not a Portway health answer"
        return node
    date = reply.headers.get("date")
    if date:
        sent = email.utils.parsedate_to_datetime(date).timestamp()
        # The Date header drops the fraction of its second: compare with its middle.
        node.skew = sent + 0.5 - (before + after) / 2
    return node


def _readiness(node: Node) -> Result:
    name = f"{node.url} is ready"
    if node.error:
        return Result(name, False, node.error, "start the node, or check its address and port")
    checks = node.doc.get("checks") or {}
    failing = [
        f"{what}: {c.get('reason') or 'failed'}"
        for what, c in checks.items()
        if isinstance(c, dict) and not (c.get("reachable") and c.get("writable"))
    ]
    if node.status == 200 and not failing:
        return Result(name, True, "database and blob store reachable and writable")
    return Result(
        name,
        node.status == 200,  # a full disk or a held lock: still serving reads
        f"status {node.status}; " + "; ".join(failing),
        "check that node's [database] url and [storage] settings and that it can reach "
        "them (network, credentials from its environment, the bucket's existence)",
    )


def _clock(node: Node) -> Result | None:
    if node.skew is None:
        return None
    off = node.skew
    ok = abs(off) <= MAX_SKEW
    side = "ahead of" if off > 0 else "behind"
    return Result(
        f"{node.url} clock",
        ok,
        f"{abs(off):.1f} s {side} this host",
        "synchronise the clocks (chrony or systemd-timesyncd on every node): tokens and "
        "presigned URLs carry times, and a skewed node refuses or ends them early",
    )


def _groups(nodes: list[Node], value: Any) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(json.dumps(value(node), sort_keys=True), []).append(node.url)
    return groups


def _differs(groups: dict[str, list[str]]) -> str:
    return " | ".join(", ".join(urls) for urls in groups.values())


def compare(nodes: list[Node]) -> list[Result]:
    known = [n for n in nodes if n.info]
    results: list[Result] = []
    refused = [n for n in nodes if not n.error and not n.info]
    if refused:
        why = refused[0].doc.get("node", {})
        results.append(Result(
            "node details (configuration, signing keys)",
            False,
            f"not given by {', '.join(n.url for n in refused)}: "
            f"{why.get('refused', 'no node section') if isinstance(why, dict) else why}",
            "pass --user admin (the password on stdin): only an administrator sees them",
        ))  # fmt: skip
    if len(known) < 2:
        return results
    tables = sorted({t for n in known for t in n.info["settings"]})
    for table in tables:
        groups = _groups(known, lambda n, t=table: n.info["settings"].get(t))
        results.append(Result(
            f"[{table}] is the same on every node",
            len(groups) == 1,
            "same fingerprint" if len(groups) == 1 else f"differs: {_differs(groups)}",
            f"give every node the same [{table}] table (only each node's own [server] "
            "listen, data_dir, workers, tls and logging keys may differ), then restart the "
            "odd ones one at a time",
        ))  # fmt: skip
    keys = _groups(known, lambda n: n.info["signing_keys"])
    results.append(Result(
        "signing keys are the same on every node",
        len(keys) == 1,
        "same signing key and key ids" if len(keys) == 1 else f"differ: {_differs(keys)}",
        "on PostgreSQL the keys live in the database: point every node at the same "
        "[database] url; SQLite nodes each keep <data_dir>/keys: copy it to every node "
        "(a token signed on one node is refused by a node without its key)",
    ))  # fmt: skip
    versions = _groups(known, lambda n: n.info.get("version"))
    results.append(Result(
        "Portway version",
        True,
        "the same on every node" if len(versions) == 1 else f"mixed: {_differs(versions)} "
        "(expected only during a rolling upgrade)",
    ))  # fmt: skip
    return results


_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))  # fmt: skip


def _a_blob(client: Client) -> tuple[str, str] | None:
    """(image, config digest) of some image the node serves: from the catalog, its tags and
    the manifest of the first tag (a single-platform manifest)."""
    reply = client.request("GET", "/v2/_catalog?n=20")
    names = (json.loads(reply.body).get("repositories") or []) if reply.status == 200 else []
    for name in names[:5]:
        tags = client.request("GET", f"/v2/{name}/tags/list")
        listed = (json.loads(tags.body).get("tags") or []) if tags.status == 200 else []
        if not listed:
            continue
        target = f"/v2/{name}/manifests/{listed[0]}"
        got = client.request("GET", target, headers={"Accept": _ACCEPT})
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            return name, str(json.loads(got.body)["config"]["digest"])
    return None


def check_redirect(url: str, auth: str | None, insecure: bool, ca: str | None) -> Result | None:
    """With presigned redirects on, a blob GET answers 307 to the bucket: fetch that URL from
    here, as a client outside would. None when the node has no image to try."""
    client = Client(url, insecure, ca, auth)
    try:
        found = _a_blob(client)
        if found is None:
            return None
        name, digest = found
        reply = client.request("GET", f"/v2/{name}/blobs/{digest}")
    except (OSError, ValueError):
        return None
    title = "presigned blob URLs can be fetched from here"
    location = reply.headers.get("location", "")
    if reply.status not in (302, 303, 307) or not location:
        return Result(title, True, f"{url} answers blob GETs itself (status {reply.status})")
    try:
        with urllib.request.urlopen(location, timeout=30) as answer:
            body = answer.read()
        ok = "sha256:" + hashlib.sha256(body).hexdigest() == digest
        detail = f"{urlsplit(location).netloc}: {'the blob' if ok else 'other bytes'}"
    except (OSError, ValueError) as exc:
        ok, detail = False, f"{urlsplit(location).netloc}: {exc}"
    return Result(
        title,
        ok,
        detail,
        "set [storage] public_endpoint to the S3 address clients reach (it signs the "
        "redirects), or turn redirects off for clients that cannot reach the bucket "
        '([storage] redirect = "auto" with redirect_networks)',
    )


def cluster_checks(
    urls: list[str], auth: str | None, insecure: bool, ca: str | None
) -> list[Result]:
    nodes = [_ask(url, auth, insecure, ca) for url in urls]
    results: list[Result] = []
    for node in nodes:
        results.append(_readiness(node))
        clock = _clock(node)
        if clock is not None:
            results.append(clock)
    results += compare(nodes)
    ready = [n for n in nodes if n.status == 200]
    if ready:
        redirect = check_redirect(ready[0].url, auth, insecure, ca)
        if redirect is not None:
            results.append(redirect)
    return results


def parse_cluster(value: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    urls = [u if "://" in u else f"http://{u}" for u in urls]
    if not urls:
        raise SystemExit("portway doctor: --cluster needs URL,URL,... (each node's own URL)")
    return urls


def run_cluster(
    urls: list[str],
    auth: str | None,
    insecure: bool,
    ca: str | None,
    out: Callable[[str], None] = print,
) -> int:
    results = cluster_checks(urls, auth, insecure, ca)
    for r in results:
        out(f"{'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        if not r.ok and r.fix:
            out(f"      fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    out(f"{len(urls)} nodes: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def add_cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        metavar="URL,URL,...",
        help="each node's own URL behind the front door: flags a node that is not ready (its "
        "database or blob store), a skewed clock, and configuration or signing keys that "
        "differ between nodes (give --user admin)",
    )
