"""Do connectors cost anything? Portway with 1 and with 100 `[[connector]]` listeners.

    .venv/bin/python bench/connectors.py [--quick] [--rounds N] [--workers N]

Two Portway servers run side by side: one with a single connector, one with 100 (each
`listen = "127.0.0.1:<free port>"`, `repository = "docker-hosted"`). A small image is pushed
through the first connector of each, then wrk measures manifest GET by tag through that
connector, alternating between the two servers for several rounds. The issue's target: the
100-connector server within 5% of the single-connector one (median of the rounds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from data import OCI_MANIFEST
from ops import check_get, push_small_image, wrk
from run import machine, write_results
from servers import (
    ServerProcess,
    Target,
    connector_target,
    free_ports,
    start_distribution,
    start_portway,
)

TOLERANCE = 0.05


def wait_ports(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        still = []
        for port in pending:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            except OSError:
                still.append(port)
        pending = still
        if pending:
            time.sleep(0.1)
    if pending:
        raise RuntimeError(f"connector ports not listening after {timeout:.0f}s: {pending[:5]}...")


def start_side(
    workdir: Path, name: str, count: int, workers: int, self_check: bool
) -> tuple[ServerProcess, Target, float]:
    t0 = time.monotonic()
    if self_check:
        server, target = start_distribution(workdir, name=name)
        return server, target, time.monotonic() - t0
    ports = free_ports(count)
    server, _ = start_portway(workdir, workers=workers, connectors=ports, name=name)
    wait_ports(ports)
    return server, connector_target(ports[0], name), time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s per side")
    p.add_argument("--rounds", type=int, help="wrk rounds per side (default 5)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 6)")
    p.add_argument("--connectors", type=int, default=100, help="connectors on the big side")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--self-check",
        action="store_true",
        help="two distribution servers instead (shows the noise of the method)",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3 if args.quick else 6)
    workdir = Path(tempfile.mkdtemp(prefix="portway-bench-conn-"))
    nonce = secrets.token_hex(4)
    servers: list[ServerProcess] = []
    sides = {"1 connector": 1, f"{args.connectors} connectors": args.connectors}
    runs: dict[str, list[float]] = {k: [] for k in sides}
    cpu_us: dict[str, list[float]] = {k: [] for k in sides}
    info: dict[str, dict[str, Any]] = {}
    try:
        targets: dict[str, Target] = {}
        for i, (label, count) in enumerate(sides.items()):
            server, target, startup = start_side(
                workdir, f"side{i}", count, args.workers, args.self_check
            )
            servers.append(server)
            targets[label] = target
            info[label] = {"startup_s": round(startup, 2), "rss_kib_idle": server.rss_kib()}
        paths = {}
        for label, t in targets.items():
            img = push_small_image(t, "bench/small", f"{nonce}/{label}")
            paths[label] = t.path(img.image, f"manifests/{img.tag}")
            check_get(t, paths[label], img.manifest, OCI_MANIFEST)
        for r in range(rounds):
            order = list(targets) if r % 2 == 0 else list(targets)[::-1]
            for label in order:
                t = targets[label]
                server = servers[list(targets).index(label)]
                cpu0 = server.cpu_seconds()
                res = wrk(t.base + paths[label], duration, headers={"Accept": OCI_MANIFEST})
                per_req = (server.cpu_seconds() - cpu0) / max(res.requests, 1) * 1e6
                runs[label].append(res.requests_per_s)
                cpu_us[label].append(per_req)
                print(
                    f"  round {r + 1} {label:16} {res.requests_per_s:10,.0f} req/s "
                    f"{per_req:8.0f} server CPU us/req",
                    flush=True,
                )
        for label, server in zip(targets, servers, strict=True):
            info[label]["rss_kib_after"] = server.rss_kib()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    one, many = list(sides)
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
    ratio = med[many] / med[one]
    cpu_ratio = med_cpu[many] / med_cpu[one]
    met = ratio >= 1 - TOLERANCE
    print()
    if args.self_check:
        print("SELF-CHECK: both sides are distribution; this shows the method's noise.")
    lines = [
        "| server | manifest GET req/s (median) | rounds | server CPU us/req (median) "
        "| start-up s | RSS idle MiB |",
        "|---|---|---|---|---|---|",
    ]
    for k in sides:
        lines.append(
            f"| {k} | {med[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[k])} | "
            f"{med_cpu[k]:.0f} | {info[k]['startup_s']:.2f} | "
            f"{info[k]['rss_kib_idle'] / 1024:.0f} |"
        )
    print("\n".join(lines))
    print(
        f"\nratio {many} / {one}: {ratio:.3f} (target ≥ {1 - TOLERANCE:.2f}): "
        f"{'met' if met else 'NOT met'}"
    )
    print(f"server CPU per request, {many} / {one}: {cpu_ratio:.3f}")
    record = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "bench/connectors.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "self_check": args.self_check,
        "workers": args.workers,
        "duration_s": duration,
        "machine": machine(),
        "runs": runs,
        "server_cpu_us_per_req": cpu_us,
        "cpu_ratio": cpu_ratio,
        "median": med,
        "servers": info,
        "ratio": ratio,
        "target": 1 - TOLERANCE,
        "met": met,
    }
    write_results(record, "connectors-", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
