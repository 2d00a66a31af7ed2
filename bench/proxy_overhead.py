"""Reverse-proxy overhead: nginx (the config `portway proxy-config nginx` writes) in front of
Portway, against a connector Portway serves itself.

    .venv/bin/python bench/proxy_overhead.py [--rounds N] [--duration S] [--blob-mib M]

One Portway (security off, one worker, fresh data folder) with a hosted repository and two
connectors on it: one Portway opens (`direct`), one marked `served_by = "proxy"` that nginx
opens (`nginx`), configured exactly as generated (HTTP, `worker_processes auto`, buffering off).
nginx talks to Portway's main listener at `/repository/<repo>/v2/...`, as in production.

Measured through both doors, alternating sides each round:
- blob pull MB/s: `curl` downloads one 64 MiB blob to /dev/null (median of the rounds);
- manifest GET requests/s: `wrk -t2 -c64 -d10s` on a manifest by tag (median of the rounds).

Prints a Markdown table with the ratio nginx / direct and writes JSON to bench/results/.
Everything runs on loopback on the same machine, so nginx competes with Portway and the
client for the same cores: the numbers are the cost on one box, the worst case.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from run import write_results
from servers import free_ports

REPO = "bench-hosted"
IMAGE = "bench/overhead"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Proc:
    """A child in its own process group, stopped by its PID's group."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return resp.status, resp.headers, resp.read()


def push(base: str, blob: bytes) -> tuple[str, str]:
    """Monolithic blob uploads and a manifest tagged `v1`; returns (blob digest, manifest path)."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    digests = []
    for data in (config, blob):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, _ = request(
            "POST",
            f"{base}/v2/{IMAGE}/blobs/uploads/?digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 201, status
        digests.append((digest, len(data)))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digests[0][0],
                "size": digests[0][1],
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[1][0],
                    "size": digests[1][1],
                }
            ],
        }
    ).encode()
    status, _, _ = request(
        "PUT", f"{base}/v2/{IMAGE}/manifests/v1", manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert status == 201, status
    return digests[1][0], f"/v2/{IMAGE}/manifests/v1"


def curl_mb_s(url: str, size: int) -> float:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    code, got, seconds = int(out[0]), int(out[1]), float(out[2])
    if code != 200 or got != size:
        raise RuntimeError(f"blob GET {url}: HTTP {code}, {got} of {size} bytes")
    return size / seconds / 1e6


_WRK_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


def wrk_rps(url: str, duration: int, threads: int, connections: int) -> tuple[float, str]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "-H",
            f"Accept: {OCI_MANIFEST}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    match = _WRK_RE.search(out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    return float(match.group(1)), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--blob-mib", type=int, default=64, help="blob size in MiB (default 64)")
    p.add_argument("--pulls", type=int, default=5, help="blob GETs per side per round")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="portway-bench-proxy-"))
    main_port, direct_port, proxied_port = free_ports(3)
    config = work / "portway.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{main_port}"\ndata_dir = "{work / "data"}"\n'
        "[security]\nenabled = false\n"
        f'[[repository]]\nname = "{REPO}"\ntype = "hosted"\n'
        f'[[connector]]\nlisten = "127.0.0.1:{direct_port}"\nrepository = "{REPO}"\n'
        f'[[connector]]\nlisten = "127.0.0.1:{proxied_port}"\nrepository = "{REPO}"\n'
        'served_by = "proxy"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    runtime = work / "nginx"
    runtime.mkdir()
    nginx_conf = work / "nginx.conf"
    subprocess.run(
        [
            python(),
            "-m",
            "portway",
            "proxy-config",
            "nginx",
            "--config",
            str(config),
            "--runtime-dir",
            str(runtime),
            "-o",
            str(nginx_conf),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs: list[Proc] = []
    record: dict[str, Any] = {}
    load_start = os.getloadavg()
    try:
        procs.append(
            Proc(
                [python(), "-m", "portway", "serve", "--config", str(config)], work / "pw.log", env
            )
        )
        wait_for(lambda: answers(f"http://127.0.0.1:{main_port}/v2/"), "Portway")
        wait_for(lambda: answers(f"http://127.0.0.1:{direct_port}/v2/"), "Portway connector")
        procs.append(
            Proc(
                [
                    nginx,
                    "-c",
                    str(nginx_conf),
                    "-e",
                    str(runtime / "startup.log"),
                    "-g",
                    "daemon off;",
                ],
                work / "nginx.out",
            )
        )
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{proxied_port}/v2/"), "nginx")
        except RuntimeError:
            for log in (work / "nginx.out", runtime / "startup.log"):
                if log.exists():
                    print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
            raise
        size = args.blob_mib * 1024 * 1024
        blob = os.urandom(size)
        digest, manifest_path = push(f"http://127.0.0.1:{direct_port}", blob)
        del blob
        sides = {
            "nginx": f"http://127.0.0.1:{proxied_port}",
            "direct": f"http://127.0.0.1:{direct_port}",
        }
        pull: dict[str, list[float]] = {s: [] for s in sides}
        rps: dict[str, list[float]] = {s: [] for s in sides}
        for base in sides.values():  # warm both paths (page cache, connections)
            curl_mb_s(f"{base}/v2/{IMAGE}/blobs/{digest}", size)
            wrk_rps(base + manifest_path, 2, args.threads, args.connections)
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                base = sides[side]
                runs = [
                    curl_mb_s(f"{base}/v2/{IMAGE}/blobs/{digest}", size) for _ in range(args.pulls)
                ]
                pull[side].append(statistics.median(runs))
                value, _ = wrk_rps(
                    base + manifest_path, args.duration, args.threads, args.connections
                )
                rps[side].append(value)
                print(
                    f"round {r + 1} {side:6}  blob pull {pull[side][-1]:8.0f} MB/s   "
                    f"manifest GET {value:8.0f} req/s",
                    flush=True,
                )
        med_pull = {s: statistics.median(v) for s, v in pull.items()}
        med_rps = {s: statistics.median(v) for s, v in rps.items()}
        nginx_version = subprocess.run(
            [nginx, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip()
        record = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": "bench/proxy_overhead.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "nginx": nginx_version,
                "loadavg_end": os.getloadavg(),
                "loadavg_start": load_start,
            },
            "blob_mib": args.blob_mib,
            "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s",
            "blob_pull_mb_s": pull,
            "manifest_get_rps": rps,
            "median": {"blob_pull_mb_s": med_pull, "manifest_get_rps": med_rps},
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    mp, mr = record["median"]["blob_pull_mb_s"], record["median"]["manifest_get_rps"]
    lines = [
        "| measure | direct connector | through nginx | nginx / direct |",
        "|---|---|---|---|",
        f"| blob pull, {args.blob_mib} MiB (MB/s) | {mp['direct']:,.0f} | {mp['nginx']:,.0f} | "
        f"{mp['nginx'] / mp['direct']:.2f} |",
        f"| manifest GET, wrk {record['wrk']} (req/s) | {mr['direct']:,.0f} | "
        f"{mr['nginx']:,.0f} | {mr['nginx'] / mr['direct']:.2f} |",
    ]
    print()
    print("\n".join(lines))
    print(
        f"\nload average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} CPUs)"
    )
    write_results(record, "proxy-overhead-", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
