"""Garbage collection: one online Portway pass against distribution's offline garbage-collect.

    .venv/bin/python bench/gc.py [--blobs 100000] [--garbage 1000] [--postgres] [--keep DIR]

Builds the same registry twice, directly (no clients):

- Portway: `--blobs` blobs (configs and layers of images with 10 layers each, in 100 images
  with as many tags as it takes) and `--garbage` more layers uploaded but referenced by no
  manifest, written into the metadata store (SQLite, and PostgreSQL with `--postgres`) with
  SQLAlchemy Core and into the filesystem blob store's layout; the garbage is recorded as the
  upload path records it (a candidate per unreferenced link), aged past gc_hold.
- distribution 2.8 (`docker-registry`): the same images in its filesystem layout (blob data
  files, layer links, manifest revisions and tag links; its manifests are blobs too, so it
  holds one more blob per image), the same unreferenced layers linked into the repositories.

Then times a dry run and a real pass of each (`portway`'s Collector; `docker-registry
garbage-collect [--dry-run] config.yml`, which distribution can run only with the registry
stopped or read-only) and checks each deleted exactly the garbage. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
sys.path.insert(0, str(REPO_ROOT))

from portway.db.lifecycle import LINK, note_candidates  # noqa: E402
from portway.db.schema import blob_links, manifest_refs, manifests  # noqa: E402
from portway.db.store import open_metadata  # noqa: E402
from portway.lifecycle.collector import Collector  # noqa: E402
from portway.storage.blobstore import BlobStore  # noqa: E402
from portway.storage.filesystem import FilesystemBackend  # noqa: E402

LAYERS = 10
REPOS = 100
HOLD = 3600.0
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def blob(n: int) -> tuple[str, bytes]:
    data = f"portway gc benchmark blob {n}\n".encode() * 8
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


class DataSet:
    """Images of one config and LAYERS layers each; garbage layers linked, never referenced."""

    def __init__(self, blobs: int, garbage: int) -> None:
        self.images: list[tuple[str, str, bytes, list[tuple[str, bytes]]]] = []
        per_image = LAYERS + 1
        n = 0
        for i in range(blobs // per_image):
            refs = [blob(n + k) for k in range(per_image)]
            n += per_image
            doc = {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG,
                    "size": len(refs[0][1]),
                    "digest": refs[0][0],
                },
                "layers": [
                    {"mediaType": DOCKER_LAYER, "size": len(d), "digest": g} for g, d in refs[1:]
                ],
            }
            self.images.append(
                (f"img{i % REPOS}", f"t{i // REPOS}", json.dumps(doc).encode(), refs)
            )
        self.garbage = [(f"img{k % REPOS}", *blob(n + k)) for k in range(garbage)]

    @property
    def blob_count(self) -> int:
        return sum(len(refs) for *_, refs in self.images) + len(self.garbage)


def write_file(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# -- Portway ---------------------------------------------------------------------------------
def build_portway(ds: DataSet, root: Path, url: str) -> None:
    meta = open_metadata(url)
    try:
        repo_id = meta.ensure_repository("docker-hosted", "hosted")
        storage = root / "storage"
        now = time.time()
        links: list[dict[str, Any]] = []
        mans: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        for image, _tag, body, parts in ds.images:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            mans.append(
                {
                    "repo_id": repo_id,
                    "image": image,
                    "digest": digest,
                    "media_type": DOCKER_MANIFEST,
                    "body": body,
                    "created": now,
                }
            )
            for d, data in parts:
                write_file(storage / BlobStore.blob_key(_digest(d)), data)
                links.append(
                    {
                        "repo_id": repo_id,
                        "image": image,
                        "digest": d,
                        "size": len(data),
                        "created": now,
                    }
                )
                refs.append(
                    {
                        "repo_id": repo_id,
                        "image": image,
                        "manifest": digest,
                        "ref": d,
                        "is_manifest": 0,
                    }
                )
        for image, d, data in ds.garbage:
            write_file(storage / BlobStore.blob_key(_digest(d)), data)
            links.append(
                {"repo_id": repo_id, "image": image, "digest": d, "size": len(data), "created": now}
            )
        with meta.engine.begin() as conn:
            for table, rows in ((blob_links, links), (manifests, mans), (manifest_refs, refs)):
                for start in range(0, len(rows), 5000):
                    conn.execute(insert(table), rows[start : start + 5000])
            note_candidates(
                meta.dialect,
                conn,
                [(repo_id, image, d, LINK) for image, d, _ in ds.garbage],
                now - 2 * HOLD,  # uploaded long ago, never referenced
            )
        if meta.dialect.name == "postgresql":
            # A registry that has been serving has planner statistics (autovacuum): one that
            # was just bulk-loaded has none, and PostgreSQL would scan instead of seek.
            with meta.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        meta.close()


def _digest(text: str) -> Any:
    from portway.oci.digest import Digest

    return Digest.parse(text)


def time_portway(root: Path, url: str, dry_run: bool) -> tuple[float, int]:
    meta = open_metadata(url)
    try:
        collector = Collector(meta, BlobStore(FilesystemBackend(root / "storage")), HOLD)
        started = time.perf_counter()
        report = asyncio.run(collector.run(dry_run=dry_run))
        return time.perf_counter() - started, len(report.blobs)
    finally:
        meta.close()


# -- distribution ----------------------------------------------------------------------------
def build_distribution(ds: DataSet, root: Path) -> Path:
    v2 = root / "docker" / "registry" / "v2"

    def put_blob(d: str, data: bytes) -> None:
        hexd = d.split(":")[1]
        write_file(v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data", data)

    def link(path: Path, d: str) -> None:
        write_file(path / "link", d.encode())

    for image, tag, body, parts in ds.images:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        hexd = digest.split(":")[1]
        put_blob(digest, body)
        repo = v2 / "repositories" / image
        link(repo / "_manifests" / "revisions" / "sha256" / hexd, digest)
        link(repo / "_manifests" / "tags" / tag / "current", digest)
        link(repo / "_manifests" / "tags" / tag / "index" / "sha256" / hexd, digest)
        for d, data in parts:
            put_blob(d, data)
            link(repo / "_layers" / "sha256" / d.split(":")[1], d)
    for image, d, data in ds.garbage:
        put_blob(d, data)
        link(v2 / "repositories" / image / "_layers" / "sha256" / d.split(":")[1], d)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:0\n"
    )
    return config


def distribution_blobs(root: Path) -> int:
    return sum(len(os.listdir(p)) for p in (root / "docker/registry/v2/blobs/sha256").iterdir())


def time_distribution(config: Path, dry_run: bool) -> float:
    argv = ["docker-registry", "garbage-collect", *(["--dry-run"] if dry_run else []), str(config)]
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"distribution garbage-collect failed: {run.stderr[-2000:]}")
    return elapsed


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=100_000, help="blobs referenced by images")
    parser.add_argument("--garbage", type=int, default=1_000, help="unreferenced blobs")
    parser.add_argument("--postgres", action="store_true", help="also Portway on PostgreSQL")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args()
    ds = DataSet(args.blobs - args.garbage, args.garbage)
    top = args.keep or Path(tempfile.mkdtemp(prefix="portway-gc-bench-"))
    rows: list[tuple[str, str, float, int]] = []
    try:
        backends = [
            ("Portway, SQLite", f"sqlite:///{top / 'sqlite' / 'portway.db'}", top / "sqlite")
        ]
        pg = None
        if args.postgres:
            from tests.support.postgres import Postgres

            pg = Postgres().start()
            backends.append(("Portway, PostgreSQL", pg.create_database("gc_bench"), top / "pg"))
        for name, url, root in backends:
            t0 = time.perf_counter()
            build_portway(ds, root, url)
            print(
                f"{name}: built {ds.blob_count} blobs in {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
            for dry in (True, False):
                seconds, count = time_portway(root, url, dry)
                rows.append((name, "dry run" if dry else "pass", seconds, count))
                print(f"{name}: {rows[-1][1]} {seconds:.2f}s, {count} blobs", flush=True)
            after = time_portway(root, url, False)[1]
            assert after == 0, f"a second pass still found {after} blobs"
        if pg is not None:
            pg.stop()
        droot = top / "distribution"
        t0 = time.perf_counter()
        config = build_distribution(ds, droot)
        before = distribution_blobs(droot)
        print(f"distribution: built {before} blobs in {time.perf_counter() - t0:.0f}s", flush=True)
        dry = time_distribution(config, True)
        rows.append(
            ("distribution 2.8 (offline)", "dry run", dry, before - distribution_blobs(droot))
        )
        print(f"distribution: dry run {dry:.2f}s", flush=True)
        real = time_distribution(config, False)
        rows.append(
            ("distribution 2.8 (offline)", "pass", real, before - distribution_blobs(droot))
        )
        print(f"distribution: pass {real:.2f}s, {rows[-1][3]} blobs", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)
    print()
    print(f"{ds.blob_count} blobs in Portway ({len(ds.images)} images), {args.garbage} garbage")
    print(f"{'registry':<28} {'run':<8} {'seconds':>8} {'blobs deleted':>14}")
    for name, run, seconds, count in rows:
        label = (
            count if run == "pass" else f"({count} listed)" if name.startswith("Portway") else "-"
        )
        print(f"{name:<28} {run:<8} {seconds:>8.2f} {label!s:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
