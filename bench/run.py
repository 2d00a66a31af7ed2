"""Portway against CNCF distribution, side by side on this machine, in one run.

    .venv/bin/python bench/run.py [--security on|off|both] [--quick] [--only ROW ...]

Starts Portway (`python -m portway serve`, fresh data folder, repository `docker-hosted` with
path routing) with security on (requests carry a bearer token, as docker's do), with security
off, or both side by side (the default), and distribution (`docker-registry serve`, filesystem
driver, in-memory blob descriptor cache, no auth) on free loopback ports; measures every row
on every server, prints the tables with the ratios (on/dist, off/dist, on/off) and Markdown
copies, and writes the results as JSON into bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from data import blob_files, default_cache_dir
from ops import TransferClient
from rows import ROWS, BenchConfig, Context, Measurement, Row
from servers import REPO_ROOT, ServerProcess, Target, start_distribution, start_portway
from tables import cost_lines, fmt, judge, layout, table_lines

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(record: dict[str, Any], prefix: str = "", out: Path | None = None) -> Path:
    """Save a run's JSON as `out`, or `bench/results/<prefix><timestamp>.json`; print where."""
    if out is None:
        out = RESULTS / f"{prefix}{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nresults: {out}")
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    versions = {}
    for tool, argv in (
        ("distribution", ["docker-registry", "--version"]),
        ("skopeo", ["skopeo", "--version"]),
        ("wrk", ["wrk", "-v"]),
    ):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            versions[tool] = (proc.stdout or proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[tool] = "missing"
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "portway_commit": commit,
        **versions,
    }


def measure_row(
    ctx: Context, rowdef: Row, targets: dict[str, Target], repeat: int, first: int
) -> dict[str, Any]:
    """Measure one row `repeat` times on each side; the value is the median of the runs."""
    sides = tuple(targets)
    runs: dict[str, list[Measurement]] = {side: [] for side in sides}
    errors: dict[str, str] = {}
    skipped: set[str] = set()
    for k in range(repeat):
        # Rotate which side goes first, so none always inherits another's aftermath.
        shift = (first + k) % len(sides)
        order = sides[shift:] + sides[:shift]
        for side in order:
            if side in errors or side in skipped:
                continue
            t0 = time.monotonic()
            try:
                m = rowdef.fn(ctx, targets[side])
            except Exception as exc:
                errors[side] = f"error: {exc}"
                print(f"  {rowdef.name} on {side} failed: {exc}", file=sys.stderr, flush=True)
                if os.environ.get("PORTWAY_BENCH_TRACE"):
                    traceback.print_exc()
                continue
            if m is None:
                skipped.add(side)
                continue
            runs[side].append(m)
            print(
                f"  {rowdef.name:16} {side:13} {fmt(m.value, rowdef.unit):>10} {rowdef.unit:6} "
                f"({time.monotonic() - t0:.1f}s)",
                flush=True,
            )
    res: dict[str, Any] = {}
    for side in sides:
        if side in errors:
            res[side] = errors[side]
        elif not runs[side]:
            res[side] = None
        else:
            values = [m.value for m in runs[side]]
            costs = [c for m in runs[side] if (c := m.cost(rowdef.cost_scale)) is not None]
            res[side] = {
                "value": statistics.median(values),
                "cost": statistics.median(costs) if costs else None,
                "cost_unit": rowdef.cost_unit,
                "runs": [
                    {"value": m.value, "server_cpu_s": m.cpu_s, "work": m.work, **m.detail}
                    for m in runs[side]
                ],
            }
    return res


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--security",
        choices=("on", "off", "both"),
        default="both",
        help="Portway with [security] on (bearer token), off, or both side by side (default)",
    )
    p.add_argument(
        "--auth",
        choices=("bearer", "basic"),
        default="bearer",
        help="with security on: a bearer token from the challenge's realm (docker's way, "
        "default) or Basic credentials on every request",
    )
    p.add_argument("--quick", action="store_true", help="small data, short wrk runs (< 1 min)")
    p.add_argument(
        "--only", nargs="+", metavar="ROW", choices=sorted(ROWS), help="run only these rows"
    )
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Portway worker processes (default 0: Portway's default, one per CPU)",
    )
    p.add_argument(
        "--layout",
        choices=("path", "nexus"),
        default="path",
        help="Portway URL layout: /v2/docker-hosted/<image> (path) or "
        "/repository/docker-hosted/v2/<image> (nexus)",
    )
    p.add_argument(
        "--monolithic",
        choices=("monolithic", "post-digest"),
        default="monolithic",
        help="monolithic push as POST then PUT with body (default, what distribution "
        "2.8 supports) or a single POST ?digest= (falls back to PUT on 202)",
    )
    p.add_argument("--server-cpus", metavar="LIST", help="pin both servers to these CPUs (taskset)")
    p.add_argument("--client-cpus", metavar="LIST", help="pin the transfer client to these CPUs")
    p.add_argument(
        "--self-check",
        action="store_true",
        help="run distribution in both columns (checks the harness, not Portway)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="measure each row N times per side; report medians"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--out", type=Path, help="JSON result path (default bench/results/<time>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for known in ROWS.values():
            print(f"{known.name:16} {known.unit:6} {known.target_text():12} {known.title}")
        return 0
    cfg = BenchConfig.make(args.quick, args.monolithic)
    names = args.only or list(ROWS)
    names = [n for n in ROWS if n in names]  # registration order
    cache = default_cache_dir()
    workdir = Path(tempfile.mkdtemp(prefix="portway-bench-"))
    started = time.monotonic()
    servers: list[ServerProcess] = []
    info = machine()
    load_start = loadavg()
    if load_start and load_start[0] > 0.5:
        print(
            f"warning: load average {load_start[0]:.2f} before the run: other work is "
            "running on this machine, results will be noisy",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"machine: {info['nproc']} cpus, {info['cpu']}, {info['mem_mib']} MiB; workdir {workdir}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    sides, ratios = layout(args.security, args.self_check)
    rss: dict[str, int] = {}
    client: TransferClient | None = None
    ctx: Context | None = None
    try:
        files = blob_files(cache, cfg.blob_count, cfg.blob_size)
        client = TransferClient(files, args.client_cpus)
        targets: dict[str, Target] = {}
        for side in sides:
            if side.key.startswith("distribution"):
                server, target = start_distribution(workdir, cpus=args.server_cpus, name=side.key)
            else:
                server, target = start_portway(
                    workdir,
                    workers=args.workers,
                    layout=args.layout,
                    cpus=args.server_cpus,
                    name=side.key,
                    auth=args.auth if side.key == "portway-on" else "none",
                )
            servers.append(server)
            targets[side.key] = target
        ctx = Context(cfg, client, workdir, cache, secrets.token_hex(4))
        ctx.cpu_probes = {side.key: s.cpu_seconds for side, s in zip(sides, servers, strict=True)}
        for i, name in enumerate(names):
            rowdef = ROWS[name]
            res = measure_row(ctx, rowdef, targets, args.repeat, first=i)
            res.update(judge(res, rowdef, ratios))
            results[name] = res
        rss = {side.key: s.rss_kib() for side, s in zip(sides, servers, strict=True)}
    finally:
        if ctx is not None:
            for close in reversed(ctx.closers):
                close()
        for s in servers:
            s.stop()
        if client is not None:
            client.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    command = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    if args.self_check:
        print("SELF-CHECK: both columns are distribution; ratios should be near 1.")
    for markdown in (False, True):
        print("\n".join(table_lines(results, markdown, sides, ratios)))
        print()
        print("\n".join(cost_lines(results, markdown, sides, ratios)))
        print()
    print(f"\n{elapsed:.0f} s in all; server RSS at the end (KiB): {rss}")
    record = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command.strip(),
        "self_check": args.self_check,
        "security": args.security,
        "auth": args.auth,
        "sides": {side.key: side.label for side in sides},
        "workers": args.workers,
        "layout": args.layout,
        "config": cfg.__dict__,
        "machine": info,
        "elapsed_s": round(elapsed, 1),
        "server_rss_kib": rss,
        "repeat": args.repeat,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "rows": {
            n: {
                "title": ROWS[n].title,
                "unit": ROWS[n].unit,
                "target": ROWS[n].target,
                "target_vs_off": ROWS[n].vs_off,
                "higher_is_better": ROWS[n].higher_is_better,
                **res,
            }
            for n, res in results.items()
        },
    }
    write_results(record, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
