"""`portway gc [--dry-run]`: one online garbage-collection pass, while the server runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
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
    c = sub.add_parser(
        "cleanup",
        help="apply the repositories' cleanup policies (tags, untagged manifests, cache expiry)",
        description="Remove what each repository's [[cleanup_policy]] tables select; the "
        "blobs they held are freed by the next `portway gc` pass.",
    )
    c.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    c.add_argument("--dry-run", action="store_true", help="report what would go; remove nothing")
    c.add_argument("--policy", help="apply only this policy (where a repository lists it)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cleanup)
    f = sub.add_parser(
        "fsck",
        help="check that stored blobs match their digests and the metadata (and repair)",
        description="Hash stored blobs against their digests (--full, or --sample N; default "
        "a sample of 1000), check that every referenced blob is linked and stored and that no "
        "stored blob is orphaned. Exit status 1 when something is wrong.",
    )
    f.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    size = f.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="hash every blob")
    size.add_argument("--sample", type=int, default=1000, help="hash N blobs chosen at random")
    f.add_argument("--repair", action="store_true", help="quarantine corrupt blobs")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(func=fsck_command)


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


def cleanup(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.config import load_settings
    from portway.lifecycle.cleanup import Cleanup
    from portway.lifecycle.guard import Guard

    settings = load_settings(args.config)
    if args.policy and args.policy not in {p.name for p in settings.cleanup_policy}:
        print(f"portway: no [[cleanup_policy]] named {args.policy!r}", file=sys.stderr)
        return 2
    with Portway(settings) as root:
        guard = Guard(root.meta, settings.server.gc_hold)
        report = asyncio.run(Cleanup(settings, root.meta, guard).run(args.dry_run, args.policy))
    if args.json:
        doc = {
            "dry_run": report.dry_run,
            "tags": [{"repository": r, "image": i, "tag": t} for r, i, t in report.tags],
            "manifests": [
                {"repository": r, "image": i, "digest": d} for r, i, d in report.manifests
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    for repo, image, tag in report.tags:
        print(f"tag        {repo}/{image}:{tag}")
    for repo, image, digest in report.manifests:
        print(f"manifest   {repo}/{image}@{digest}")
    verb = "would remove" if report.dry_run else "removed"
    print(
        f"cleanup: {verb} {len(report.tags)} tag(s) and {len(report.manifests)} manifest(s); "
        "`portway gc` frees their blobs"
    )
    return 0


def fsck_command(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from portway.compose import Portway
    from portway.config import load_settings
    from portway.lifecycle.fsck import fsck

    with Portway(load_settings(args.config)) as root:
        sample = None if args.full else args.sample
        report = asyncio.run(fsck(root.meta, root.blobs, sample=sample, repair=args.repair))
    if args.json:
        print(json.dumps({**asdict(report), "clean": report.clean}, indent=2))
        return 0 if report.clean else 1
    for digest in report.corrupt:
        print(f"corrupt    {digest} (bytes do not match the digest)")
    for digest in report.missing:
        print(f"missing    {digest} (linked or referenced, not stored)")
    for repo, image, digest in report.unlinked:
        print(f"unlinked   {repo}/{image}: a manifest references {digest}, the image has no link")
    for repo, image, digest in report.missing_children:
        print(f"no child   {repo}/{image}: an index lists {digest}, which is not stored")
    for digest in report.orphans:
        print(f"orphan     {digest} (stored, linked nowhere)")
    for digest in report.quarantined:
        print(f"quarantined {digest} (moved to quarantine/)")
    for repo, image, manifest in report.images_to_repush:
        print(f"re-push    {repo}/{image}@{manifest} needs a corrupt blob")
    state = "clean" if report.clean else "PROBLEMS FOUND"
    print(f"fsck: {state}; {report.checked} blob(s) hashed")
    return 0 if report.clean else 1


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
