"""`portway backup DEST`: a consistent copy of a running registry's data folder.

Order matters, so that every blob the copied metadata names is in the copy: blob files are
copied first (pass 1), then the SQLite database is copied with SQLite's online backup API (a
consistent snapshot while the workers go on writing; WAL mode included), then the blobs the
snapshot links that pass 1 did not find are copied (pass 2), and copied files the snapshot
does not link (an upload finishing as the snapshot was taken) are left out, so the copy is
`fsck` clean. A blob is linked in the database only after its file is in place, so every blob
the snapshot links was on disk before pass 2. Blob files are immutable (named by digest), so a
copy is never torn; a file that vanished between listing and copying (garbage collection) is
skipped. DEST is laid out as a data folder: serve it by
pointing `data_dir` at it. PostgreSQL databases and S3 buckets are backed up with their own
tools (docs/backup.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
from pathlib import Path

from portway.config import Settings

SKIPPED = ("uploads", "locks", "quarantine")  # upload sessions and spools: not kept


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the metadata database, keys and blobs consistently while the registry runs",
        description="Copy blob files, then the SQLite database (online backup API), then the "
        "blob files written meanwhile, into DEST (a new or empty folder, laid out as a data "
        "folder). PostgreSQL and S3: see docs/backup.md.",
    )
    p.add_argument("dest", type=Path, help="folder to write the backup into (new or empty)")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.set_defaults(func=run)


def _copy_blobs(source: Path, dest: Path) -> int:
    """Copy every file under `source` missing from `dest` (names are digests); returns how many."""
    copied = 0
    for folder, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not (folder == str(source) and d in SKIPPED)]
        target = dest / Path(folder).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            out = target / name
            if out.exists():
                continue
            partial = target / f".{name}.partial"
            try:
                shutil.copy2(Path(folder) / name, partial)
            except FileNotFoundError:
                continue  # removed since it was listed (garbage collection)
            partial.rename(out)
            copied += 1
    return copied


def _copy_database(source: Path, dest: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out, pages=1024)
        finally:
            out.close()
    finally:
        src.close()


def _linked(database: Path) -> set[str]:
    conn = sqlite3.connect(database)
    try:
        return {row[0] for row in conn.execute("SELECT DISTINCT digest FROM blob_links")}
    finally:
        conn.close()


def _blob_path(root: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return root / "blobs" / algorithm / hexdigest[:2] / hexdigest


def _match_snapshot(source: Path, dest: Path, linked: set[str]) -> int:
    """Copy the linked blobs pass 1 missed, drop copied files the snapshot does not link."""
    have: set[str] = set()
    for path in (dest / "blobs").glob("*/*/*"):
        digest = f"{path.parent.parent.name}:{path.name}"
        if digest in linked:
            have.add(digest)
        else:
            path.unlink()
    copied = 0
    for digest in sorted(linked - have):
        src, out = _blob_path(source, digest), _blob_path(dest, digest)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.parent / f".{out.name}.partial"
        try:
            shutil.copy2(src, partial)
        except FileNotFoundError:
            continue  # fsck on the copy names it (and the images that need it)
        partial.rename(out)
        copied += 1
    return copied


def backup(settings: Settings, dest: Path) -> dict[str, int]:
    server, storage = settings.server, settings.storage
    if settings.database.url:
        raise SystemExit(
            "portway backup: [database] url is PostgreSQL; back it up with pg_dump (docs/backup.md)"
        )
    if storage.type != "filesystem":
        raise SystemExit(
            "portway backup: [storage] type is s3; copy the bucket with its own tools "
            "(docs/backup.md), and the database with pg_dump"
        )
    database = server.data_dir / "portway.db"
    if not database.exists():
        raise SystemExit(f"portway backup: no metadata database at {database}")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"portway backup: {dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    blobs = storage.path or server.data_dir / "storage"
    first = _copy_blobs(blobs, dest / "storage")
    _copy_database(database, dest / "portway.db")
    second = _match_snapshot(blobs, dest / "storage", _linked(dest / "portway.db"))
    for name in ("keys", "tls"):  # signing keys kept as files, certificates Portway made
        if (server.data_dir / name).is_dir():
            shutil.copytree(server.data_dir / name, dest / name, symlinks=True)
    for name in ("admin.password",):
        if (server.data_dir / name).exists():
            shutil.copy2(server.data_dir / name, dest / name)
    return {"blob_files_before_snapshot": first, "blob_files_after_snapshot": second}


def run(args: argparse.Namespace) -> int:
    from portway.config import load_settings

    report = backup(load_settings(args.config), args.dest.resolve())
    print(
        f"backup in {args.dest}: metadata database, "
        f"{report['blob_files_before_snapshot']} blob file(s) copied before the database "
        f"snapshot, {report['blob_files_after_snapshot']} after it"
    )
    return 0
