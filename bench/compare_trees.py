"""Server CPU per request of two or more Portway source trees (or settings), side by side.

    .venv/bin/python bench/compare_trees.py [--side NAME=SRC[:CONFIG-LINES]] ... \
        [--what manifest blob] [--rounds 3] [--duration 8] [--workers 1] [--security off|on]

Each side is a Portway started from the source folder SRC (`SRC/src` goes first on
PYTHONPATH, so an older checkout, e.g. a `git worktree add --detach` of an earlier commit,
runs with this venv's packages) with a fresh data folder, security as `--security` and the
extra `[server]` lines CONFIG-LINES (`;`-separated, e.g. `metrics = false;access_log = false`).
A small image is pushed to each; then `wrk -t2 -c64` runs on a manifest GET by tag and/or a
1 KiB blob GET, alternating the sides' order every round. Printed per side and row: the
median requests/s and the median server CPU (user + system, workers included) per request,
and each side's CPU per request over the first side's: the figure to read on a busy machine,
where request rates swing with other work but a request's CPU cost moves much less.

Without `--side` it compares this checkout with itself (the harness's own noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from data import OCI_MANIFEST
from ops import WrkResult, auth_headers, check_get, push_small_image, wrk
from run import loadavg
from servers import HOSTED, REPO_ROOT, ServerProcess, Target, free_port, venv_python


@dataclass
class Side:
    name: str
    src: Path
    extra: list[str]


def parse_side(text: str) -> Side:
    name, _, rest = text.partition("=")
    src, _, extra = rest.partition(":")
    lines = [line.strip() for line in extra.split(";") if line.strip()]
    return Side(name, Path(src or REPO_ROOT).resolve(), lines)


def start(
    side: Side, root: Path, workers: int, security: bool, wrapper: Sequence[str] = ()
) -> tuple[ServerProcess, Target]:
    """Portway from `side.src` with a fresh data folder; `wrapper` goes before the command
    (e.g. valgrind), which then may take minutes to answer."""
    port = free_port()
    home = root / side.name
    home.mkdir(parents=True)
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f'data_dir = "{home / "data"}"',
        f"workers = {workers}",
        # A side may set its own log level (e.g. "info" to write the access log).
        *([] if any(x.startswith("log_level") for x in side.extra) else ['log_level = "warning"']),
        *side.extra,
        "",
        "[security]",
        f"enabled = {'true' if security else 'false'}",
        *(["token_ttl = 7200"] if security else []),
        "",
        "[[repository]]",
        f'name = "{HOSTED}"',
        'type = "hosted"',
        "path_routing = true",
        "",
    ]
    config = home / "portway.toml"
    config.write_text("\n".join(lines))
    argv = [*wrapper, venv_python(), "-m", "portway", "serve", "--config", str(config)]
    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(side.src / "src")}
    server = ServerProcess(side.name, argv, home, env=env)
    server.wait_ready(f"http://127.0.0.1:{port}/v2/", timeout=600 if wrapper else 90)
    creds = None
    if security:
        creds = ("admin", (home / "data" / "admin.password").read_text().strip())
    auth = "bearer" if security else "none"
    target = Target(side.name, "127.0.0.1", port, f"/v2/{HOSTED}/", "", True, auth, creds)
    return server, target


def measure(
    group: list[tuple[Side, ServerProcess, Target]],
    urls: dict[tuple[str, str], tuple[str, dict[str, str]]],
    what: str,
    duration: int,
) -> list[tuple[WrkResult, float]]:
    """wrk on every side of `group` at once; each side's result and server CPU seconds."""
    before = [server.cpu_seconds() for _, server, _ in group]
    with ThreadPoolExecutor(len(group)) as pool:
        futures = [
            pool.submit(
                wrk, urls[(side.name, what)][0], duration, headers=urls[(side.name, what)][1]
            )
            for side, _, _ in group
        ]
        results = [f.result() for f in futures]
    used = [server.cpu_seconds() - b for (_, server, _), b in zip(group, before, strict=True)]
    return list(zip(results, used, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", action="append", default=[], help="NAME=SRC[:CONFIG-LINES]")
    ap.add_argument("--what", nargs="+", choices=["manifest", "blob"], default=["manifest"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--security", choices=["off", "on"], default="off")
    ap.add_argument(
        "--together",
        action="store_true",
        help="load every side at the same time (each then shares the machine alike)",
    )
    args = ap.parse_args(argv)
    sides = [parse_side(s) for s in args.side] or [parse_side("a="), parse_side("b=")]
    print(f"load average at start: {loadavg()}")
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="portway-trees-") as tmp:
        started: list[tuple[Side, ServerProcess, Target]] = []
        try:
            for side in sides:
                server, target = start(side, Path(tmp), args.workers, args.security == "on")
                started.append((side, server, target))
            urls: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
            for side, _, t in started:
                img = push_small_image(t, "bench/trees", side.name)
                manifest = t.path(img.image, f"manifests/{img.tag}")
                blob = t.path(img.image, f"blobs/{img.layer_digest}")
                check_get(t, manifest, img.manifest, OCI_MANIFEST, img.image)
                check_get(t, blob, img.layer, None, img.image)
                auth = auth_headers(t, img.image)
                urls[(side.name, "manifest")] = (
                    t.base + manifest,
                    {"Accept": OCI_MANIFEST, **auth},
                )
                urls[(side.name, "blob")] = (t.base + blob, auth)
            for url, headers in urls.values():  # warm up
                wrk(url, 1, headers=headers)
            for rnd in range(args.rounds):
                order = started if rnd % 2 == 0 else started[::-1]
                for what in args.what:
                    groups = [order] if args.together else [[s] for s in order]
                    for group in groups:
                        for (side, _, _), (result, used) in zip(
                            group, measure(group, urls, what, args.duration), strict=True
                        ):
                            key = (side.name, what)
                            rates.setdefault(key, []).append(result.requests_per_s)
                            cpu.setdefault(key, []).append(used / result.requests * 1e6)
                            print(
                                f"round {rnd + 1} {what:>8} {side.name:>10}: "
                                f"{result.requests_per_s:8.0f} req/s, "
                                f"{cpu[key][-1]:6.1f} µs CPU/req"
                            )
        finally:
            for _, server, _ in started:
                server.stop()
    print(f"load average at end: {loadavg()}\n")
    print("| row | side | req/s (median) | server CPU µs/req (median) | CPU vs first side |")
    print("|---|---|---|---|---|")
    for what in args.what:
        first = statistics.median(cpu[(sides[0].name, what)])
        for side in sides:
            key = (side.name, what)
            c = statistics.median(cpu[key])
            r = statistics.median(rates[key])
            print(f"| {what} | {side.name} | {r:,.0f} | {c:.0f} | {c / first:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
