"""What metrics and the access log cost on the hot path: manifest GET requests/s with
`[server] metrics` and `access_log` on (the default) against both off.

    .venv/bin/python bench/observe_cost.py [--rounds N] [--duration S] [--workers W]
        [--split] [--no-pin]

Two Portways (security off, fresh data folders, `W` workers, 1 by default: the cost per
process), each with one small image pushed; the access log goes to a file, as a service
manager's journal would take it. `wrk -t2 -c64 -dSs` on the manifest by tag, alternating
sides each round (10 rounds of 3 s by default). On two or more cores the servers run on core
0 and wrk on the others, so the two never take each other's core. The cost is the median of
the rounds' own on/off ratios (each round's sides ran back to back). Prints a Markdown table
with the cost (1 - on/off) and writes JSON to bench/results/. Target: a cost of at most 5 %.

Beside req/s, which other work on a shared machine moves a lot, the server's own CPU time
(user + system, workers included) per request is read from /proc around each wrk run: the
steadier figure when the machine is busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from ops import wrk
from proxy_overhead import OCI_MANIFEST, Proc, answers, push, python, wait_for
from run import machine, write_results
from servers import free_ports

SIDES = {
    "on": {"metrics": True, "access_log": True},
    "off": {"metrics": False, "access_log": False},
    "metrics": {"metrics": True, "access_log": False},  # with --split: each part alone
    "log": {"metrics": False, "access_log": True},
}
REPO = "bench-hosted"


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            pids += _tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its children (the workers), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def start(root: Path, side: str, port: int, workers: int, pin: bool) -> Proc:
    data = root / side
    config = root / f"{side}.toml"
    keys = "\n".join(f"{k} = {str(v).lower()}" for k, v in SIDES[side].items())
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\nworkers = {workers}\n'
        f"{keys}\n\n[security]\nenabled = false\n\n"
        f'[[repository]]\nname = "{REPO}"\ntype = "hosted"\n'
    )
    argv = [python(), "-m", "portway", "serve", "--config", str(config)]
    if pin:  # the server on core 0, wrk (this process's children) on the others
        argv = ["taskset", "-c", "0", *argv]
    proc = Proc(argv, root / f"{side}.log")
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/v2/"), f"portway ({side}) on {port}", 90)
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--split", action="store_true", help="also metrics alone, access log alone")
    ap.add_argument("--no-pin", action="store_true", help="let server and wrk share cores")
    args = ap.parse_args(argv)
    sides = list(SIDES) if args.split else ["on", "off"]
    ports = dict(zip(sides, free_ports(len(sides)), strict=True))
    rates: dict[str, list[float]] = {side: [] for side in sides}
    cpu_us: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="portway-observe-") as tmp:
        root = Path(tmp)
        cores = os.cpu_count() or 1
        pin = not args.no_pin and cores >= 2
        procs = {side: start(root, side, ports[side], args.workers, pin) for side in sides}
        if pin:
            os.sched_setaffinity(0, set(range(1, cores)))
        try:
            urls = {}
            for side, port in ports.items():
                base = f"http://127.0.0.1:{port}/repository/{REPO}"
                _, path = push(base, b"observe-cost layer " * 64)
                urls[side] = base + path
            for url in urls.values():  # warm up
                wrk(url, 2, headers={"Accept": OCI_MANIFEST})
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else sides[::-1]
                for side in order:
                    before = cpu_seconds(procs[side].popen.pid)
                    result = wrk(urls[side], args.duration, headers={"Accept": OCI_MANIFEST})
                    used = cpu_seconds(procs[side].popen.pid) - before
                    rates[side].append(result.requests_per_s)
                    cpu_us[side].append(used / result.requests * 1e6)
                    print(
                        f"round {rnd + 1} {side:>7}: {result.requests_per_s:8.0f} req/s, "
                        f"{cpu_us[side][-1]:6.1f} µs CPU per request"
                    )
            log_lines = len((root / "on.log").read_text(errors="replace").splitlines())
        finally:
            for proc in procs.values():
                proc.stop()
    med = {side: statistics.median(values) for side, values in rates.items()}
    cpu = {side: statistics.median(values) for side, values in cpu_us.items()}
    # Each round's sides ran back to back: the median of the rounds' own ratios follows the
    # machine's drift (other tenants, clock changes) far less than a ratio of medians.
    pairs = [1 - on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    cpu_pairs = [on / off - 1 for on, off in zip(cpu_us["on"], cpu_us["off"], strict=True)]
    cost = statistics.median(pairs)
    cpu_cost = statistics.median(cpu_pairs)
    print(
        "\n| metrics, access log | manifest GET req/s (median) | server CPU µs/request "
        "| rounds (req/s) |"
    )
    print("|---|---|---|---|")
    for side in sides:
        rounds = ", ".join(f"{r:.0f}" for r in rates[side])
        print(f"| {side} | {med[side]:.0f} | {cpu[side]:.1f} | {rounds} |")
    print(
        f"\ncost (median of the rounds' own on/off ratios): {cost * 100:.1f} % of req/s, "
        f"{cpu_cost * 100:.1f} % more server CPU per request (target <= 5 %); rounds: "
        + ", ".join(f"{c * 100:.1f} %" for c in pairs)
        + f"; access-log lines: {log_lines}"
    )
    record: dict[str, Any] = {
        "bench": "observe_cost",
        "machine": machine(),
        "workers": args.workers,
        "duration_s": args.duration,
        "wrk": "-t2 -c64",
        "rates": rates,
        "median": med,
        "cpu_us_per_request": cpu_us,
        "cost": cost,
        "round_costs": pairs,
        "cpu_cost": cpu_cost,
    }
    write_results(record, prefix="observe-cost-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
