"""`portway gc [--dry-run]`: one online garbage-collection pass, while the server runs."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from portway.lifecycle.collector import Report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gc",
        help="delete blobs and manifests nothing needs any more (safe while serving)",
        description="One garbage-collection pass over what became garbage (deleted manifests "
        "and tags, removed blob links, uploads nothing references) at least [server] gc_hold "
        "seconds ago. Pushes in progress are never broken.",
    )
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=gc)


def gc(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.config import load_settings
    from portway.lifecycle.collector import Collector

    settings = load_settings(args.config)
    with Portway(settings) as root:
        collector = Collector(root.meta, root.blobs, settings.server.gc_hold)
        report = asyncio.run(collector.run(dry_run=args.dry_run))
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print_report(report)
    return 0


def report_json(report: Report) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "manifests": [{"repository": r, "image": i, "digest": d} for r, i, d in report.manifests],
        "blob_links": [{"repository": r, "image": i, "digest": d} for r, i, d in report.links],
        "blobs": [{"digest": d, "size": s} for d, s in report.blobs],
        "bytes_freed": report.bytes_freed,
        "candidates": report.candidates,
        "held": report.held,
        "seconds": round(report.seconds, 3),
    }


def print_report(report: Report) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    for repo, image, digest in report.manifests:
        print(f"manifest   {repo}/{image}@{digest}")
    for repo, image, digest in report.links:
        print(f"blob link  {repo}/{image}@{digest}")
    for digest, size in report.blobs:
        print(f"blob       {digest} ({size} bytes)")
    print(
        f"gc: {verb} {len(report.manifests)} manifest(s), {len(report.links)} blob link(s), "
        f"{len(report.blobs)} blob(s), {report.bytes_freed} bytes"
        f"{' would be' if report.dry_run else ''} freed; {report.candidates} candidate(s) "
        f"examined, {report.held} held by pushes in progress; {report.seconds:.2f}s"
    )
