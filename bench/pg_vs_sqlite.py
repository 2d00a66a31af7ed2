"""Portway on PostgreSQL against Portway on SQLite, same host, one run.

    .venv/bin/python bench/pg_vs_sqlite.py [--duration 5] [--workers 1] [--security off|on]

Starts a throwaway PostgreSQL 15 (tests/support/postgres.py), then two Portway servers with
fresh data folders: one on the embedded SQLite, one with `[database] url` on that PostgreSQL.
Rows: manifest GET by tag (wrk -c64), tags list of an image with 50 tags (wrk -c64), push of a
small image (config, 1 KiB layer, manifest: sequential, pushes/s). Then, in this process, the
uncached lookup behind a manifest GET on PostgreSQL done by 64 concurrent coroutines in two
ways: psycopg's sync driver in a thread pool (what the store does) and psycopg's async driver
on 10 connections. Prints the tables (plain and Markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from observe_cost import cpu_seconds
from ops import OCI_MANIFEST, auth_headers, check_get, push_manifest, push_small_image, wrk
from servers import REPO_ROOT, ServerProcess, Target, start_portway

sys.path.insert(0, str(REPO_ROOT))
from tests.support.postgres import Postgres

TAGS = 50


Measure = Callable[["Side", int], tuple[float, int]]  # (rate, operations done)


class Side:
    """One Portway and what to add to its CPU time: the PostgreSQL server's, when it has one."""

    def __init__(self, target: Target, server: ServerProcess, db_pid: int | None) -> None:
        self.target = target
        self.server = server
        self.db_pid = db_pid

    def cpu(self) -> float:
        total = self.server.cpu_seconds()
        return total + (cpu_seconds(self.db_pid) if self.db_pid else 0.0)


def manifest_get(side: Side, duration: int) -> tuple[float, int]:
    t = side.target
    img = push_small_image(t, "bench/manifest", "m")
    path = t.path(img.image, f"manifests/{img.tag}")
    check_get(t, path, img.manifest, OCI_MANIFEST, img.image)
    headers = {"Accept": OCI_MANIFEST, **auth_headers(t, img.image)}
    result = wrk(t.base + path, duration, headers=headers)
    return result.requests_per_s, result.requests


def tags_list(side: Side, duration: int) -> tuple[float, int]:
    t = side.target
    img = push_small_image(t, "bench/tags", "t")
    for i in range(TAGS):
        push_manifest(t, img.image, f"v{i}", img.manifest)
    result = wrk(
        t.base + t.path(img.image, "tags/list"), duration, headers=auth_headers(t, img.image)
    )
    return result.requests_per_s, result.requests


def small_push(side: Side, count: int) -> tuple[float, int]:
    start = time.perf_counter()
    for i in range(count):
        push_small_image(side.target, f"bench/push{i}", f"p{i}-{time.time_ns()}")
    return count / (time.perf_counter() - start), count


ROWS: list[tuple[str, str, Measure]] = [
    ("manifest GET by tag (wrk -c64)", "req/s", manifest_get),
    ("tags list, 50 tags (wrk -c64)", "req/s", tags_list),
    ("small image push (sequential)", "pushes/s", small_push),
]


def by_tag(repo_id: int, image: str, tag: str) -> Any:
    """The query behind an uncached manifest GET by tag (portway.db.store)."""
    from sqlalchemy import and_, select

    from portway.db.schema import manifests, tags

    joined = tags.join(
        manifests,
        and_(
            manifests.c.repo_id == tags.c.repo_id,
            manifests.c.image == tags.c.image,
            manifests.c.digest == tags.c.digest,
        ),
    )
    return (
        select(manifests.c.digest, manifests.c.media_type, manifests.c.body)
        .select_from(joined)
        .where(tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
    )


async def lookups_threads(url: str, n: int, concurrency: int) -> float:
    from portway.db.store import open_metadata

    with open_metadata(url) as store:
        stmt = by_tag(
            store.ensure_repository("docker-hosted", "hosted"), "bench/manifest", "latest"
        )
        return await _drive(lambda: store._read(lambda c: c.execute(stmt).first()), n, concurrency)


async def lookups_async(url: str, n: int, concurrency: int) -> float:
    import psycopg

    from portway.db.store import open_metadata

    with open_metadata(url) as store:
        stmt = by_tag(
            store.ensure_repository("docker-hosted", "hosted"), "bench/manifest", "latest"
        )
        sql = str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(10)]
    free: asyncio.Queue[psycopg.AsyncConnection[tuple[object, ...]]] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)

    async def one() -> object:
        conn = await free.get()
        try:
            cur = await conn.execute(sql)  # type: ignore[arg-type]
            return await cur.fetchone()
        finally:
            free.put_nowait(conn)

    try:
        return await _drive(one, n, concurrency)
    finally:
        for c in conns:
            await c.close()


async def _drive(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def render(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
            "| " + " | ".join(r) + " |" for r in body
        ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--pushes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3, help="runs per row and side; medians")
    p.add_argument("--security", choices=("on", "off"), default="off")
    args = p.parse_args(argv)
    pg = Postgres().start()
    servers: list[ServerProcess] = []
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        work = Path(tempfile.mkdtemp(prefix="portway-pg-bench-"))
        auth = "bearer" if args.security == "on" else "none"
        url = pg.create_database("bench")
        configs = {"sqlite": "", "postgresql": f'[database]\nurl = "{url}"\n'}
        sides = {}
        for name, extra in configs.items():
            server, target = start_portway(
                work, workers=args.workers, name=name, auth=auth, extra_config=extra
            )
            servers.append(server)
            sides[name] = Side(target, server, pg.pid if name == "postgresql" else None)
        for title, _unit, fn in ROWS:
            for name, side in sides.items():
                amount = args.pushes if fn is small_push else args.duration
                runs = []
                for _ in range(args.repeat):
                    before = side.cpu()
                    rate, done = fn(side, amount)
                    runs.append((rate, (side.cpu() - before) / max(1, done) * 1e6))
                results.setdefault(title, {})[name] = (
                    statistics.median(r for r, _ in runs),
                    statistics.median(c for _, c in runs),
                )
        for server in servers:
            server.stop()
        servers = []
        n, conc = 20000, 64
        threads = statistics.median(asyncio.run(lookups_threads(url, n, conc)) for _ in range(3))
        driver = statistics.median(asyncio.run(lookups_async(url, n, conc)) for _ in range(3))
    finally:
        for server in servers:
            server.stop()
        pg.stop()
    head = ["row", "unit", "SQLite", "PostgreSQL", "PG/SQLite", "CPU us/op SQLite", "CPU us/op PG"]
    body = []
    for title, unit, _fn in ROWS:
        lite, post = results[title]["sqlite"], results[title]["postgresql"]
        body.append([
            title, unit, f"{lite[0]:.0f}", f"{post[0]:.0f}", f"{post[0] / lite[0]:.2f}x",
            f"{lite[1]:.0f}", f"{post[1]:.0f}",
        ])  # fmt: skip
    lookups = [
        ["sync psycopg in a thread pool (the store)", f"{threads:.0f}"],
        ["async psycopg, 10 connections", f"{driver:.0f}"],
    ]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average {' '.join(load)}; CPU us/op: Portway's (workers included), on")
    print("PostgreSQL plus the database server's")
    for markdown in (False, True):
        print()
        print("\n".join(render(head, body, markdown)))
        print()
        print(
            "\n".join(
                render(["uncached lookup by tag, 64 at once", "lookups/s"], lookups, markdown)
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
