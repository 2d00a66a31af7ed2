"""Portway against CNCF distribution, side by side on this machine, in one run.

    .venv/bin/python bench/run.py [--quick] [--only ROW ...] [--workers N]

Starts Portway (`python -m portway serve`, fresh data folder, repository `docker-hosted` with
path routing) and distribution (`docker-registry serve`, filesystem driver, in-memory blob
descriptor cache) on free loopback ports, measures every row on both, prints a table and a
Markdown table, and writes the results as JSON into bench/results/.
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

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = ("portway", "distribution")
LABELS = ("Portway", "distribution")


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


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio_of(res: dict[str, Any], sides: tuple[str, str] = SIDES) -> float | None:
    p, d = res.get(sides[0]), res.get(sides[1])
    if not isinstance(p, dict) or not isinstance(d, dict) or not d["value"]:
        return None
    return float(p["value"]) / float(d["value"])


def render(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return lines
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table_lines(
    results: dict[str, dict[str, Any]],
    markdown: bool,
    sides: tuple[str, str] = SIDES,
    labels: tuple[str, str] = LABELS,
    with_targets: bool = True,
) -> list[str]:
    head = ["row", "unit", *labels, "ratio"]
    if with_targets:
        head += ["target", "met"]
    body = []
    for name, res in results.items():
        rowdef = ROWS[name]
        cells = [f"{name} ({rowdef.title})" if markdown else name, rowdef.unit]
        for side in sides:
            v = res.get(side)
            cells.append(fmt(v["value"], rowdef.unit) if isinstance(v, dict) else "ERR")
        r = ratio_of(res, sides)
        cells.append(f"{r:.2f}x" if r is not None else "-")
        if with_targets:
            met = rowdef.met(r) if r is not None else None
            cells += [rowdef.target_text(), "-" if met is None else ("yes" if met else "no")]
        body.append(cells)
    return render(head, body, markdown)


def cost_lines(
    results: dict[str, dict[str, Any]],
    markdown: bool,
    sides: tuple[str, str] = SIDES,
    labels: tuple[str, str] = LABELS,
) -> list[str]:
    """Server CPU per unit of work: what each side spent, whatever else the machine did."""
    head = ["row", "server CPU", *labels, f"{labels[0]}/{labels[1]}"]
    body = []
    for name, res in results.items():
        rowdef = ROWS[name]
        costs = []
        for side in sides:
            v = res.get(side)
            costs.append(v.get("cost") if isinstance(v, dict) else None)
        if all(c is None for c in costs):
            continue
        p, d = costs
        body.append(
            [
                name,
                rowdef.cost_unit,
                "-" if p is None else f"{p:.3g}",
                "-" if d is None else f"{d:.3g}",
                f"{p / d:.2f}x" if p is not None and d else "-",
            ]
        )
    return render(head, body, markdown)


def measure_row(
    ctx: Context, rowdef: Row, targets: dict[str, Target], repeat: int, first: int
) -> dict[str, Any]:
    """Measure one row `repeat` times on each side; the value is the median of the runs."""
    sides = tuple(targets)
    runs: dict[str, list[Measurement]] = {side: [] for side in sides}
    errors: dict[str, str] = {}
    skipped: set[str] = set()
    for k in range(repeat):
        # Alternate which side goes first, so neither always inherits the other's aftermath.
        order = sides if (first + k) % 2 == 0 else sides[::-1]
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
    rss: dict[str, int] = {}
    client: TransferClient | None = None
    ctx: Context | None = None
    try:
        files = blob_files(cache, cfg.blob_count, cfg.blob_size)
        client = TransferClient(files, args.client_cpus)
        if args.self_check:
            s1, t1 = start_distribution(workdir, cpus=args.server_cpus, name="portway")
            servers.append(s1)
        else:
            s1, t1 = start_portway(
                workdir, workers=args.workers, layout=args.layout, cpus=args.server_cpus
            )
            servers.append(s1)
        s2, t2 = start_distribution(workdir, cpus=args.server_cpus)
        servers.append(s2)
        targets: dict[str, Target] = {"portway": t1, "distribution": t2}
        ctx = Context(cfg, client, workdir, cache, secrets.token_hex(4))
        ctx.cpu_probes = {side: s.cpu_seconds for side, s in zip(SIDES, servers, strict=True)}
        for i, name in enumerate(names):
            rowdef = ROWS[name]
            res = measure_row(ctx, rowdef, targets, args.repeat, first=i)
            ratio = ratio_of(res)
            res["ratio"] = ratio
            res["met"] = rowdef.met(ratio) if ratio is not None else None
            results[name] = res
        rss = {side: s.rss_kib() for side, s in zip(SIDES, servers, strict=True)}
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
    print("\n".join(table_lines(results, markdown=False)))
    print()
    print("\n".join(cost_lines(results, markdown=False)))
    print()
    print("\n".join(table_lines(results, markdown=True)))
    print()
    print("\n".join(cost_lines(results, markdown=True)))
    print(f"\n{elapsed:.0f} s in all; server RSS at the end (KiB): {rss}")
    record = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command.strip(),
        "self_check": args.self_check,
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
