"""Instructions per request, counted by valgrind (callgrind): a cost figure that other work on
the machine cannot move, for comparing source trees or settings on a busy machine.

    .venv/bin/python bench/instructions.py [--side NAME=SRC[:CONFIG-LINES]] ... \\
        [--what manifest|blob] [--requests 300] [--security off|on|basic] [--keep DIR]

Sides as in bench/compare_trees.py. Each side runs alone, one worker, under
`valgrind --tool=callgrind --instr-atstart=no` (so start-up runs at near native speed); after
a small image is pushed, 200 warm-up requests are made and 3 s pass (so the metrics flush
has created the series' files the push needed), counting is switched on
(`callgrind_control -i on`), `--requests` GETs follow one after the other on one kept-alive
connection, and the counts are dumped; then the same time passes without requests and what
the server did meanwhile (timers, background threads) is subtracted. Printed: user-space
instructions per request (the kernel's share, the socket calls, is not counted) and each side
over the first. Needs the
Debian package `valgrind`. A side takes about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_trees import parse_side, start
from data import OCI_MANIFEST
from ops import BenchError, auth_headers, push_small_image
from run import loadavg

WARM_UP = 200
SETTLE = 3.0  # seconds after the warm-up: the metrics flushes of the push happen before counting


def count(
    side_text: str, root: Path, what: str, requests: int, security: str, keep: Path | None = None
) -> tuple[float, float]:
    """(instructions per request, instructions per second when idle) of one side."""
    side = parse_side(side_text)
    out = root / f"{side.name}.callgrind"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server, t = start(side, root, 1, security != "off", wrapper)
    try:
        if security == "basic":
            t = dataclasses.replace(t, auth="basic")
        img = push_small_image(t, "bench/instructions", side.name)
        rest = f"manifests/{img.tag}" if what == "manifest" else f"blobs/{img.layer_digest}"
        path = t.path(img.image, rest)
        headers = {"Accept": OCI_MANIFEST, **auth_headers(t, img.image)}
        conn = http.client.HTTPConnection(t.host, t.port, timeout=120)

        def burst(n: int) -> None:
            for _ in range(n):
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise BenchError(f"{side.name}: GET {path}: HTTP {resp.status}")

        burst(WARM_UP)
        # The first metrics flush after the push creates the files of every series it touched
        # (tens of thousands of instructions each): one-time work, so let it happen first.
        time.sleep(SETTLE)
        pid = str(server.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        started = time.monotonic()
        burst(requests)
        busy = time.monotonic() - started
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        # The same time again without requests: what timers and background threads do
        # (health checks, flushes, freshness polls) runs per second, not per request, and
        # under valgrind's slowdown would otherwise be charged to the requests.
        time.sleep(busy)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        conn.close()
    finally:
        server.stop()
    if keep is not None:  # for callgrind_annotate: where the instructions went
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{out}.1", keep / f"{side.name}.busy.callgrind")
        shutil.copy(f"{out}.2", keep / f"{side.name}.idle.callgrind")
    busy_total, idle_total = _totals(Path(f"{out}.1")), _totals(Path(f"{out}.2"))
    return (busy_total - idle_total) / requests, idle_total / busy


def _totals(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise BenchError(f"no totals in {dump}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", action="append", default=[], help="NAME=SRC[:CONFIG-LINES]")
    ap.add_argument("--what", choices=["manifest", "blob"], default="manifest")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--security", choices=["off", "on", "basic"], default="off")
    ap.add_argument("--keep", type=Path, help="copy each side's callgrind dumps here")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found (Debian package `valgrind`)", file=sys.stderr)
        return 2
    sides = args.side or ["this="]
    print(f"load average at start: {loadavg()} (does not change the counts)")
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="portway-instr-") as tmp:
        for text in sides:
            n, idle = count(text, Path(tmp), args.what, args.requests, args.security, args.keep)
            results.append((parse_side(text).name, n))
            print(
                f"{results[-1][0]}: {n / 1000:.1f} k instructions per request "
                f"(idle work subtracted: {idle / 1e6:.1f} M per second)",
                flush=True,
            )
    print(f"\n| {args.what} GET, security {args.security} | k instructions/request | vs first |")
    print("|---|---|---|")
    for name, n in results:
        print(f"| {name} | {n / 1000:.1f} | {n / results[0][1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
