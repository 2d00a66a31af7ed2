"""`portway doctor --cluster URL,URL,...`: the nodes behind one front door, side by side.

Each node is asked directly (its own URL, not the front door's) for `/readyz?node=1` with
the administrator's credentials (portway.observe.node says what it answers). Flagged:

- a node that does not answer, or is not ready (its database or blob store unreachable);
- a node whose clock is more than `MAX_SKEW` seconds off this host's (Date header);
- a configuration table that differs between nodes (by fingerprint; each node's own
  `[server]` keys, such as its listen address and data directory, may differ);
- signing keys that differ (a token one node signs would be refused by another).
"""

from __future__ import annotations

import argparse
import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    return results + compare(nodes)


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
