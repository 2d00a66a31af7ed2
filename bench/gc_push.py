"""Push throughput while online garbage collection runs, against push throughput without it.

    .venv/bin/python bench/gc_push.py [--seconds 15] [--rounds 2] [--postgres]

A real `portway serve` (1 worker, security off, `gc_hold` 2 s) on the data folder's SQLite,
and with `--postgres` a second one on a throwaway PostgreSQL. PUSHERS threads push small
images (a config, a base layer every image shares, one unique 16 KiB layer: HEAD each blob,
upload the missing ones, PUT the manifest) and delete every other image right after its push,
so garbage keeps appearing. Phases alternate, each `--seconds` long, `--rounds` times: no
collector, then a collector pass every second (a `Collector` on the server's database and
blob store in this process, as `portway gc` runs beside a server). Prints pushes/s of each
phase, the ratio (target >= 0.9) and what the passes deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from portway.compose import Portway  # noqa: E402
from portway.config import load_settings  # noqa: E402
from portway.lifecycle.collector import Collector  # noqa: E402
from push_support import Registry, manifest_for, sha256  # noqa: E402
from support.server import PortwayServer  # noqa: E402

HOLD = 2
PUSHERS = 4
BASE = random.Random("base").randbytes(64 * 1024)


def push_one(reg: Registry, n: int) -> None:
    config = f'{{"push":{n}}}'.encode()
    layers = [BASE, random.Random(n).randbytes(16 * 1024)]
    image = f"img{n % 8}"
    for blob in (config, *layers):
        if reg.head_blob(image, sha256(blob)).status != 200:
            reply = reg.upload_monolithic(image, sha256(blob), blob, len(blob))
            assert reply.status == 201, (reply.status, reply.body[:200])
    reply = reg.put_manifest(image, f"t{n}", manifest_for(config, layers))
    assert reply.status == 201, (reply.status, reply.body[:200])
    if n % 2 == 0:
        digest = reply.header("Docker-Content-Digest")
        gone = reg.request("DELETE", reg.path(image, f"manifests/{digest}"))
        assert gone.status == 202, gone.status


def pushes_for(reg: Registry, seconds: float, counter: list[int]) -> int:
    """Pushes done by PUSHERS threads in `seconds` (each pusher finishes its last push)."""
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    done = [0]

    def pusher() -> None:
        while time.monotonic() < deadline:
            with lock:
                counter[0] += 1
                n = counter[0]
            push_one(reg, n)
            with lock:
                done[0] += 1

    with ThreadPoolExecutor(PUSHERS) as pool:
        for future in [pool.submit(pusher) for _ in range(PUSHERS)]:
            future.result()
    return done[0]


def collect_until(config: Path, stop: threading.Event, out: dict[str, float]) -> None:
    with Portway(load_settings(config)) as root:
        collector = Collector(root.meta, root.blobs, HOLD)
        while not stop.is_set():
            report = asyncio.run(collector.run())
            out["passes"] += 1
            out["blobs"] += len(report.blobs)
            out["seconds"] += report.seconds
            stop.wait(1.0)


def measure(name: str, server: PortwayServer, seconds: float, rounds: int) -> None:
    reg = Registry(f"{server.url}/repository/docker-hosted")
    counter = [0]
    pushes_for(reg, 3, counter)  # warm up
    rates: dict[bool, list[float]] = {False: [], True: []}
    gc = {"passes": 0.0, "blobs": 0.0, "seconds": 0.0}
    for _ in range(rounds):
        for with_gc in (False, True):
            stop = threading.Event()
            thread = threading.Thread(target=collect_until, args=(server.config_path, stop, gc))
            if with_gc:
                thread.start()
            started = time.monotonic()
            count = pushes_for(reg, seconds, counter)
            rates[with_gc].append(count / (time.monotonic() - started))
            stop.set()
            if with_gc:
                thread.join(120)
    without, during = (sum(rates[k]) / len(rates[k]) for k in (False, True))
    print(
        f"{name:<12} without GC {without:6.1f} pushes/s  while GC runs {during:6.1f} pushes/s"
        f"  ratio {during / without:.2f}  ({gc['passes']:.0f} passes, {gc['blobs']:.0f} blobs"
        f" deleted, {gc['seconds'] / max(gc['passes'], 1):.2f} s a pass)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="without/with pairs")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="portway-gc-push-"))
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    pg = None
    if args.postgres:
        from support.postgres import Postgres

        pg = Postgres().start()
        backends.append(("PostgreSQL", pg.create_database("gc_push")))
    try:
        for name, url in backends:
            server = PortwayServer(top / name, server={"gc_hold": HOLD}, database_url=url)
            server.start(timeout=60)
            try:
                measure(name, server, args.seconds, args.rounds)
            finally:
                server.stop()
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
