"""What does nginx in front of Portway cost, against a direct connector?

    .venv/bin/python bench/nginx_overhead.py [--quick] [--repeat N] [--only ROW ...]

One Portway with two connectors on `docker-hosted`: one it serves itself, and one with
`served_by = "proxy"`, whose port nginx opens with the configuration `portway proxy-config
nginx` renders (used as generated: `worker_processes auto`, access log on). The same rows as
`bench/run.py` (same client, same data) run through both ports; the CPU column for nginx counts
Portway and nginx together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from data import blob_files, default_cache_dir
from ops import TransferClient
from rows import ROWS, BenchConfig, Context
from run import RESULTS, cost_lines, loadavg, machine, measure_row, ratio_of, table_lines
from servers import ServerProcess, connector_target, free_ports, start_nginx, start_portway

DEFAULT_ROWS = ("push", "pull", "pull-c4", "manifest-get", "small-blob-get")
SIDES = ("nginx", "direct")
LABELS = ("through nginx", "direct connector")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", nargs="+", metavar="ROW", choices=sorted(ROWS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--nginx-directive",
        action="append",
        default=[],
        metavar="TEXT",
        help='add a directive to the generated http block, e.g. "proxy_buffer_size 256k"',
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cfg = BenchConfig.make(args.quick)
    names = [n for n in ROWS if n in (args.only or DEFAULT_ROWS)]
    workdir = Path(tempfile.mkdtemp(prefix="portway-bench-nginx-"))
    cache = default_cache_dir()
    servers: list[ServerProcess] = []
    client: TransferClient | None = None
    results: dict[str, dict[str, Any]] = {}
    load_start = loadavg()
    try:
        client = TransferClient(blob_files(cache, cfg.blob_count, cfg.blob_size))
        direct_port, proxy_port = free_ports(2)
        portway, _ = start_portway(
            workdir, workers=args.workers, connectors=[direct_port], proxied=[proxy_port]
        )
        servers.append(portway)
        nginx, nginx_target = start_nginx(
            workdir, workdir / "portway" / "portway.toml", proxy_port, extra=args.nginx_directive
        )
        servers.append(nginx)
        targets = {"direct": connector_target(direct_port, "direct"), "nginx": nginx_target}
        ctx = Context(cfg, client, workdir, cache, secrets.token_hex(4))
        ctx.cpu_probes = {
            "direct": portway.cpu_seconds,
            "nginx": lambda: portway.cpu_seconds() + nginx.cpu_seconds(),
        }
        for i, name in enumerate(names):
            res = measure_row(ctx, ROWS[name], targets, args.repeat, first=i)
            res["ratio"] = ratio_of(res, SIDES)
            results[name] = res
    finally:
        for s in reversed(servers):
            s.stop()
        if client is not None:
            client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    for markdown in (False, True):
        print()
        print("\n".join(table_lines(results, markdown, SIDES, LABELS, with_targets=False)))
        print()
        print("\n".join(cost_lines(results, markdown, SIDES, LABELS)))
    record = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "bench/nginx_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "config": cfg.__dict__,
        "nginx_directives": args.nginx_directive,
        "rows": results,
    }
    out = args.out or RESULTS / f"nginx-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
