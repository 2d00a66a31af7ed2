"""Portway on S3 against CNCF distribution's S3 driver, side by side on one Ceph RGW.

    .venv/bin/python bench/s3.py [--quick] [--repeat N] [--only ROW ...] [--security on|off]

Starts a one-host Ceph RGW (tests/support/ceph.py: monitor, memstore OSD, radosgw on free
ports), one bucket per server, then two pairs of servers on it:

- streamed: Portway (`[storage] type = "s3"`, `redirect = "off"`) and distribution 2.8
  (`storage: s3`, `redirect: disable: true`): every blob byte goes through the registry;
- redirected: Portway (`redirect = "always"`) and distribution with its default redirects:
  a blob GET answers 307 to a presigned bucket URL, which the client follows.

Rows on the streamed pair: monolithic push, chunked push, blob pull, manifest GET by tag;
on the redirected pair: blob pull. Portway runs with security on (a bearer token) unless
`--security off`; distribution has no auth. Prints the tables (values, ratio, target, met)
and writes the JSON into bench/results/s3-<time>.json. `AWS_CA_BUNDLE` is unset for both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from data import blob_files, default_cache_dir
from ops import TransferClient
from rows import ROWS, BenchConfig, Context, Row
from run import loadavg, machine, measure_row, write_results
from servers import REPO_ROOT, ServerProcess, Target, start_distribution, start_portway
from tables import Ratio, Side, fmt, judge

sys.path.insert(0, str(REPO_ROOT))
from tests.support import ceph

MiB = 1 << 20
# Ratio Portway/distribution asked for (issue 11), per row and pair.
TARGETS = {
    ("streamed", "push"): 2.0,
    ("streamed", "chunked"): 2.0,
    ("streamed", "pull"): 1.2,
    ("streamed", "manifest-get"): 20.0,
    ("redirected", "pull"): 1.0,
}
PAIRS = {"streamed": ("push", "chunked", "pull", "manifest-get"), "redirected": ("pull",)}


def portway_storage(rgw: ceph.CephRGW, bucket: str, redirect: str) -> str:
    return "\n".join(
        [
            "[storage]",
            'type = "s3"',
            f'bucket = "{bucket}"',
            f'endpoint = "{rgw.endpoint}"',
            f'region = "{rgw.region}"',
            f'redirect = "{redirect}"',
            "",
        ]
    )


def distribution_storage(rgw: ceph.CephRGW, bucket: str, redirect: bool) -> list[str]:
    return [
        "  s3:",
        f"    accesskey: {rgw.access_key}",
        f"    secretkey: {rgw.secret_key}",
        f"    region: {rgw.region}",
        f"    regionendpoint: {rgw.endpoint}",
        f"    bucket: {bucket}",
        "    secure: false",
        "    v4auth: true",
        "    rootdirectory: /registry",
        "  redirect:",
        f"    disable: {'false' if redirect else 'true'}",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small data, short wrk runs")
    p.add_argument("--repeat", type=int, default=1, help="runs per row and side; medians")
    p.add_argument("--security", choices=("on", "off"), default="on")
    p.add_argument("--workers", type=int, default=0, help="Portway workers (0: one per CPU)")
    p.add_argument("--only", nargs="+", choices=sorted({r for rs in PAIRS.values() for r in rs}))
    p.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    p.add_argument("--out", type=Path, help="JSON result path")
    return p.parse_args(argv)


def table(results: dict[str, dict[str, Any]], markdown: bool) -> list[str]:
    head = ["pair", "row", "unit", "Portway", "distribution", "ratio", "target", "met"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append(f"{'pair':11} {'row':13} {'unit':6} {'Portway':>10} {'dist':>10} "
                     f"{'ratio':>7} {'target':>8} met")
    for key, res in results.items():
        pair, name = key.split("/", 1)
        rowdef = ROWS[name]
        p, d = res.get("portway"), res.get("distribution")
        pv = p["value"] if isinstance(p, dict) else None
        dv = d["value"] if isinstance(d, dict) else None
        ratio = res["ratios"].get("ratio")
        met = res["met"].get("ratio")
        cells = [
            pair,
            name,
            rowdef.unit,
            fmt(pv, rowdef.unit) if pv is not None else str(p),
            fmt(dv, rowdef.unit) if dv is not None else str(d),
            "-" if ratio is None else f"{ratio:.2f}x",
            rowdef.target_text(TARGETS.get((pair, name))),
            "-" if met is None else ("yes" if met else "no"),
        ]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"{cells[0]:11} {cells[1]:13} {cells[2]:6} {cells[3]:>10} "
                         f"{cells[4]:>10} {cells[5]:>7} {cells[6]:>8} {cells[7]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("AWS_CA_BUNDLE", None)
    cfg = BenchConfig.make(args.quick)
    if not args.quick:  # a memstore OSD keeps every object in memory: 4 x 64 MiB per push
        cfg = replace(cfg, blob_count=4)
    ceph.DEVICE_BYTES = 12 * 1024**3
    workdir = Path(tempfile.mkdtemp(prefix="portway-bench-s3-"))
    started = time.monotonic()
    load_start = loadavg()
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}; workdir {workdir}", flush=True)
    servers: list[ServerProcess] = []
    results: dict[str, dict[str, Any]] = {}
    rgw = ceph.CephRGW(workdir / "ceph")
    client: TransferClient | None = None
    ctx: Context | None = None
    try:
        t0 = time.monotonic()
        rgw.start()
        print(f"Ceph RGW at {rgw.endpoint} ({time.monotonic() - t0:.0f} s)", flush=True)
        s3_env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
        auth = "bearer" if args.security == "on" else "none"
        files = blob_files(default_cache_dir(), cfg.blob_count, cfg.blob_size)
        client = TransferClient(files)
        ctx = Context(cfg, client, workdir, default_cache_dir(), secrets.token_hex(4))
        ratio = [Ratio("ratio", "portway", "distribution", "dist")]
        for i, pair in enumerate(args.pairs):
            redirect = pair == "redirected"
            bucket_p = rgw.make_bucket(f"portway-{pair}")
            bucket_d = rgw.make_bucket(f"distribution-{pair}")
            pw, tp = start_portway(
                workdir,
                workers=args.workers,
                name=f"portway-{pair}",
                auth=auth,
                extra_config=portway_storage(rgw, bucket_p, "always" if redirect else "off"),
                env=s3_env,
            )
            servers.append(pw)
            dist, td = start_distribution(
                workdir,
                name=f"distribution-{pair}",
                storage=distribution_storage(rgw, bucket_d, redirect),
            )
            servers.append(dist)
            targets: dict[str, Target] = {
                "portway": replace(tp, name="portway"),
                "distribution": replace(td, name="distribution"),
            }
            ctx.cpu_probes = {"portway": pw.cpu_seconds, "distribution": dist.cpu_seconds}
            ctx.state.clear()
            for name in PAIRS[pair]:
                if args.only and name not in args.only:
                    continue
                rowdef: Row = replace(ROWS[name], target=TARGETS.get((pair, name)))
                res = measure_row(ctx, rowdef, targets, args.repeat, first=i)
                res.update(judge(res, rowdef, ratio))
                results[f"{pair}/{name}"] = res
            for s in (pw, dist):
                s.stop()
            for side, bucket in (("Portway", bucket_p), ("distribution", bucket_d)):
                listed = rgw.client().list_objects_v2(Bucket=bucket, MaxKeys=10)
                if not listed.get("KeyCount"):
                    raise SystemExit(f"{side} stored nothing in bucket {bucket}: not on S3")
    finally:
        if ctx is not None:
            for close in reversed(ctx.closers):
                close()
        for s in servers:
            s.stop()
        if client is not None:
            client.close()
        rgw.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    for markdown in (False, True):
        print("\n".join(table(results, markdown)))
        print()
    print(f"{elapsed:.0f} s in all; load {load_start} -> {loadavg()}")
    command = "bench/s3.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(
        {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": command.strip(),
            "security": args.security,
            "config": cfg.__dict__,
            "machine": info,
            "elapsed_s": round(elapsed, 1),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "sides": {s.key: s.label for s in (Side("portway", "Portway on S3"),
                                              Side("distribution", "distribution 2.8 S3"))},
            "rows": results,
        },
        prefix="s3-",
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
