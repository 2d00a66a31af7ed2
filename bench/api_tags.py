"""Admin API list endpoints at 100,000 tags in one image: p50/p95 latency per endpoint.

    .venv/bin/python bench/api_tags.py [--tags N] [--requests R] [--workers W] [--postgres]

Makes a fresh data folder, writes N tags (each its own small image manifest) of one image
straight through the metadata store (no push: minutes saved, the same rows), starts a real
`portway serve` with security on, and times R requests per endpoint over one kept-alive
connection with Basic credentials: Portway's tag pages sorted by name, semantic version,
push time and size (first page and a page deep in the list by cursor), the untagged filter,
Nexus's components and search pages. The first request of each sorted order (which sorts the
whole list and, by size, reads every manifest once) is reported apart as `cold`.
With `--postgres` the metadata lives in a throwaway PostgreSQL 15 (tests/support/postgres.py,
locale C.UTF-8), ANALYZEd after the load as autovacuum would have done. To measure another
tree, set PYTHONPATH to its src: the rows are then written, and the server run, by that tree.
Target: p95 at most 100 ms. Prints a Markdown table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from proxy_overhead import Proc, answers, python, wait_for
from run import machine, write_results
from servers import free_ports

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # else the tree it names writes the rows (its schema)
    sys.path.insert(0, str(ROOT / "src"))
REPO, IMAGE = "bench-hosted", "team/app"


def _manifest(i: int) -> bytes:
    layer = hashlib.sha256(f"layer {i}".encode()).hexdigest()
    config = hashlib.sha256(f"config {i}".encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config}",
                "size": 500 + i % 977,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{layer}",
                    "size": 1_000_000 + (i * 7919) % 5_000_000,
                }
            ],
        },
        sort_keys=True,
    ).encode()


def _tag(i: int) -> str:
    kind = i % 4
    if kind == 0:
        return f"v{i // 1000}.{(i // 10) % 100}.{i % 10}-{i}"
    if kind == 1:
        return f"{i // 1000}.{i % 1000}.{i % 7}"
    if kind == 2:
        return f"pr-{i}"
    return f"build-{i:06d}"


def generate(data_dir: Path, count: int, url: str = "") -> None:
    """N tags and manifests, written through the metadata store's own engine and tables."""
    from portway.compose import Portway
    from portway.config import RepositoryConfig, Settings
    from portway.db.schema import manifests, tags

    settings = Settings.model_validate(
        {
            "server": {"data_dir": data_dir},
            "database": {"url": url},
            "repository": [RepositoryConfig(name=REPO, type="hosted", path_routing=True)],
        }
    )
    with Portway(settings) as root:
        repo_id = root.meta.ensure_repository(REPO, "hosted")
        now = time.time() - count
        batch_m: list[dict[str, Any]] = []
        batch_t: list[dict[str, Any]] = []
        for i in range(count):
            body = _manifest(i)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            batch_m.append(
                {
                    "repo_id": repo_id,
                    "image": IMAGE,
                    "digest": digest,
                    "media_type": "application/vnd.oci.image.manifest.v1+json",
                    "body": body,
                    "created": now + i,
                }
            )
            batch_t.append(
                {
                    "repo_id": repo_id,
                    "image": IMAGE,
                    "name": _tag(i),
                    "digest": digest,
                    "updated": now + i,
                }
            )
            if len(batch_m) >= 5000 or i == count - 1:
                with root.meta.engine.begin() as conn:
                    conn.execute(manifests.insert(), batch_m)
                    conn.execute(tags.insert(), batch_t)
                batch_m, batch_t = [], []
        if url:  # planner statistics, as a registry that has been serving has
            with root.meta.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")


def timed(session: requests.Session, url: str, params: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        answer = session.get(url, params=params)
        out.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.text[:300]
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="metadata in PostgreSQL")
    parser.add_argument("--only", help="just the endpoints whose name holds this, e.g. search")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pw-bench-api-"))
    data = work / "data"
    pg = None
    db_url = ""
    if args.postgres:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.postgres import Postgres

        pg = Postgres().start()
        db_url = pg.create_database("api_tags")
    try:
        run_bench(args, work, data, db_url)
    finally:
        if pg is not None:
            pg.stop()


def run_bench(args: argparse.Namespace, work: Path, data: Path, db_url: str) -> None:
    started = time.monotonic()
    generate(data, args.tags, db_url)
    print(f"{args.tags} tags written in {time.monotonic() - started:.1f} s", flush=True)
    (port,) = free_ports(1)
    config = work / "portway.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
        f"workers = {args.workers}\n[security]\nenabled = true\n"
        f'[database]\nurl = "{db_url}"\n'
        f'[[repository]]\nname = "{REPO}"\ntype = "hosted"\npath_routing = true\n'
    )
    proc = Proc([python(), "-m", "portway", "serve", "--config", str(config)], work / "log")
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        wait_for(lambda: answers(f"{base}/v2/"), "the server", 120)
        wait_for(lambda: (data / "admin.password").exists(), "the admin password", 30)
        session = requests.Session()
        session.auth = ("admin", (data / "admin.password").read_text().strip())
        tags_url = f"{base}/api/v1/repositories/{REPO}/images/{IMAGE}/tags"
        cases: list[tuple[str, str, dict[str, str]]] = []
        for sort in ("name", "semver", "pushed", "size"):
            if args.only and args.only not in f"tags sort={sort}":
                continue
            cold = timed(session, tags_url, {"sort": sort}, 1)[0]
            first = session.get(tags_url, params={"sort": sort, "limit": "100"}).json()
            cursor = first["nextCursor"]
            for _ in range(100):  # 100 pages in: 10,000 tags deep
                cursor = session.get(tags_url, params={"sort": sort, "cursor": cursor}).json()[
                    "nextCursor"
                ]
            rows.append({"endpoint": f"tags sort={sort}", "cold_ms": round(cold, 1)})
            cases.append((f"tags sort={sort} first page", tags_url, {"sort": sort}))
            cases.append((f"tags sort={sort} page 101", tags_url, {"sort": sort, "cursor": cursor}))
        cases.append(("tags sort=pushed desc", tags_url, {"sort": "pushed", "order": "desc"}))
        cases.append(("tags untagged", tags_url, {"untagged": "true"}))
        cases.append(
            ("nexus components", f"{base}/service/rest/v1/components", {"repository": REPO})
        )
        cases.append(
            (
                "nexus search version=pr-9*",
                f"{base}/service/rest/v1/search",
                {"repository": REPO, "version": "pr-9*"},
            )
        )
        components = f"{base}/service/rest/v1/components"
        token = session.get(components, params={"repository": REPO}).json()["continuationToken"]
        cases.append(
            (
                "nexus components page 2",
                components,
                {"repository": REPO, "continuationToken": token},
            )
        )
        search = f"{base}/service/rest/v1/search"
        wanted = {"repository": REPO, "version": "pr-9*"}
        token = session.get(search, params=wanted).json()["continuationToken"]
        cases.append(("nexus search pr-9* page 2", search, {**wanted, "continuationToken": token}))
        cases.append(("nexus repositories", f"{base}/service/rest/v1/repositories", {}))
        for name, url, params in cases:
            if args.only and args.only not in name:
                continue
            times = timed(session, url, params, args.requests)
            rows.append(
                {
                    "endpoint": name,
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(pct(times, 0.95), 1),
                    "max_ms": round(max(times), 1),
                }
            )
            print(rows[-1], flush=True)
    finally:
        proc.stop()
    db = "PostgreSQL" if db_url else "SQLite"
    print(
        f"\n| endpoint ({args.tags} tags, {args.workers} worker, {db}) | p50 ms | p95 ms | max ms |"
        " cold ms |\n|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['endpoint']} | {row.get('p50_ms', '')} | {row.get('p95_ms', '')} | "
            f"{row.get('max_ms', '')} | {row.get('cold_ms', '')} |"
        )
    write_results(
        {
            "bench": "api_tags",
            "tags": args.tags,
            "workers": args.workers,
            "database": db.lower(),
            "requests": args.requests,
            "machine": machine(),
            "rows": rows,
        },
        "api-tags-",
    )


if __name__ == "__main__":
    main()
