"""Profile Portway under wrk load with py-spy and print the hot spots.

    .venv/bin/python bench/profile.py [--what manifest|blob|push|chunked|pull] [--duration 15]
                                      [--s3] [--lines]

Starts Portway alone (fresh data folder), pushes a small image, runs wrk (2 threads, 64
connections) against a manifest GET by tag (or a 1 KiB blob GET) while `py-spy record` samples
the server and its workers, then prints the functions with the most samples, by own time and
by inclusive time (`--lines`: own time per source line). `push`/`chunked` push 64 MiB blobs,
`pull` GETs four 64 MiB blobs over and over (one stream). `--s3` starts a one-host Ceph RGW
(tests/support/ceph.py) and puts Portway's blobs in a bucket there (`redirect = "off"`: every
byte goes through Portway). Needs py-spy in the venv (`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from connectors import wait_ports
from data import OCI_MANIFEST, blob_files, default_cache_dir
from ops import TransferClient, auth_headers, check_get, push_small_image, wrk
from servers import REPO_ROOT, Target, connector_target, free_ports, start_portway

sys.path.insert(0, str(REPO_ROOT))
from tests.support import ceph

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?P<line>:\d+)?\)$")


def short(frame: str, line: bool = False) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    at = m.group("line") or "" if line else ""
    return f"{m.group('func')} ({file}{at})"


def _package(frame: str) -> str:
    """`sqlalchemy`, `aiohttp`, `asyncio`, `portway.db`, ... from a shortened frame."""
    m = FRAME.match(frame)
    if not m:
        return "?"
    parts = m.group("file").split("/")
    if parts[0] == "portway" and len(parts) > 2:
        return f"portway.{parts[1]}"
    return parts[0].removesuffix(".py")


def summarize(
    raw: str, top: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        threads[frames[-1] if len(frames) < 3 else " > ".join(frames[:3])] += count
        own[short(stack.rsplit(";", 1)[-1], line=True)] += count
        packages[_package(frames[-1])] += count
        for f in set(frames):
            inclusive[f] += count
    return total, own.most_common(top), inclusive.most_common(top), packages.most_common(8)


def s3_storage(rgw: ceph.CephRGW, bucket: str) -> str:
    return (
        f'[storage]\ntype = "s3"\nbucket = "{bucket}"\nendpoint = "{rgw.endpoint}"\n'
        f'region = "{rgw.region}"\nredirect = "off"\n'
    )


def _push_cmd(t: Target, mode: str, count: int) -> dict[str, object]:
    return {
        "op": "push",
        "host": t.host,
        "port": t.port,
        "api": t.api,
        "image": "bench/profile",
        "mode": mode,
        "chunk": 8 << 20,
        "count": count,
        "concurrency": 1,
        "tag": secrets.token_hex(8),
        "headers": auth_headers(t, "bench/profile", "pull,push"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--what",
        choices=("manifest", "blob", "push", "chunked", "pull"),
        default="manifest",
        help="wrk on a manifest or 1 KiB blob GET, 64 MiB blob pushes (monolithic/chunked) or"
        " 64 MiB blob GETs",
    )
    p.add_argument("--s3", action="store_true", help="blobs in a Ceph RGW bucket")
    p.add_argument("--duration", type=int, default=15, help="seconds of load and sampling")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--connectors", type=int, default=0, help="open N connectors; load goes through the first"
    )
    p.add_argument(
        "--auth",
        choices=("none", "bearer", "basic"),
        default="none",
        help="security off (none) or on, requests carrying a bearer token or Basic credentials",
    )
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--lines", action="store_true", help="own time per source line, not per function"
    )
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="portway-profile-"))
    server = None
    client: TransferClient | None = None
    rgw = ceph.CephRGW(workdir / "ceph") if args.s3 else None
    try:
        extra, env = "", {}
        if rgw is not None:
            rgw.start()
            extra = s3_storage(rgw, rgw.make_bucket("profile"))
            env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
        ports = free_ports(args.connectors)
        server, t = start_portway(
            workdir, workers=args.workers, connectors=ports, auth=args.auth,
            extra_config=extra, env=env,
        )
        if ports:
            wait_ports(ports)
            t = dataclasses.replace(
                connector_target(ports[0], "portway"), auth=t.auth, credentials=t.credentials
            )
        img = push_small_image(t, "bench/small", secrets.token_hex(4))
        pulled: list[str] = []
        if args.what in ("push", "chunked", "pull"):
            client = TransferClient(blob_files(default_cache_dir(), 8, 64 << 20))
            path, headers = "", {}
            if args.what == "pull":
                pulled = client.call(_push_cmd(t, "monolithic", 4))["digests"]
        elif args.what == "manifest":
            path = t.path(img.image, f"manifests/{img.tag}")
            check_get(t, path, img.manifest, OCI_MANIFEST, img.image)
            headers = {"Accept": OCI_MANIFEST, **auth_headers(t, img.image)}
        else:
            path = t.path(img.image, f"blobs/{img.layer_digest}")
            check_get(t, path, img.layer, image=img.image)
            headers = auth_headers(t, img.image)
        raw_out = workdir / "profile.txt"
        cmd = [
            pyspy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--subprocesses",
            *([] if args.lines else ["--function"]),
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(raw_out),
        ]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result: dict[str, float] = {}

        def load() -> None:
            if client is None:
                result["rate"] = wrk(t.base + path, args.duration, headers=headers).requests_per_s
                return
            mode = "monolithic" if args.what == "push" else "chunked"
            moved = seconds = 0.0
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                if pulled:
                    cmd = {
                        "op": "pull", "host": t.host, "port": t.port, "api": t.api,
                        "image": "bench/profile", "digests": pulled, "concurrency": 1,
                        "headers": auth_headers(t, "bench/profile"),
                    }
                    r = client.call(cmd)
                else:
                    r = client.call(_push_cmd(t, mode, 8))
                moved += r["bytes"]
                seconds += r["seconds"]
            result["rate"] = moved / seconds / 1e6 if seconds else 0.0

        loader = threading.Thread(target=load)
        loader.start()
        loader.join()
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0 or not raw_out.exists():
            print(f"py-spy failed: {err.strip()}", file=sys.stderr)
            return 1
        total, own, incl, roots = summarize(raw_out.read_text(), args.top)
        unit = "MB/s" if client is not None else "req/s"
        print(
            f"{args.what}: {result.get('rate', 0):,.0f} {unit} under py-spy "
            f"(sampling slows the server; compare ratios, not the rate)"
        )
        print(f"{total} samples\n\nown time:")
        for name, n in own:
            print(f"  {100 * n / total:5.1f}%  {name}")
        print("\nown time by package:")
        for name, n in roots:
            print(f"  {100 * n / total:5.1f}%  {name}")
        print("\ninclusive time:")
        for name, n in incl:
            print(f"  {100 * n / total:5.1f}%  {name}")
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        if rgw is not None:
            rgw.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
