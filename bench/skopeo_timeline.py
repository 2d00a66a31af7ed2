"""Where a skopeo push's time goes: each request's own duration, from the servers' logs.

Pushes the bench image (4 gzipped layers of `--layer-mib` MiB and a config blob, as the
`image-push` row of run.py) with `skopeo copy` to Portway (security on, two workers, the JSON
access log) and to CNCF distribution (its "response completed" lines), alternating, and
prints per side the median over the pushes of: the push's wall time, the time inside each
kind of request summed over one push, and the rest (the client's own time between requests:
start-up, reading the layout, opening connections).

    .venv/bin/python bench/skopeo_timeline.py --pushes 5
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from data import LayerPrefix, build_layout, layer_prefixes
from ops import skopeo_copy
from servers import ServerProcess, Target, start_distribution, start_portway
from tables import render

KINDS = ("token", "blob HEAD", "upload POST", "upload PATCH", "upload PUT", "manifest PUT")
MiB = 1024 * 1024


def kind_of(method: str, path: str) -> str | None:
    if path.startswith("/v2/token") or path == "/v2/":
        return "token"
    if method == "HEAD" and "/blobs/" in path:
        return "blob HEAD"
    if "/blobs/uploads/" in path:
        return {"POST": "upload POST", "PATCH": "upload PATCH", "PUT": "upload PUT"}.get(method)
    if method == "PUT" and "/manifests/" in path:
        return "manifest PUT"
    return None


def portway_requests(log: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        start = line.find('{"ts"')
        if start < 0:
            continue
        row = json.loads(line[start:])
        out.append((row["method"], row["path"], float(row["duration_ms"])))
    return out


_DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s)$")
_SCALE = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}


def distribution_requests(log: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{") or "response completed" not in line:
            continue
        row = json.loads(line)
        found = _DURATION.match(str(row.get("http.response.duration", "")))
        if found is None:
            continue
        ms = float(found.group(1)) * _SCALE[found.group(2)]
        path = str(row["http.request.uri"]).split("?")[0]
        out.append((str(row["http.request.method"]), path, ms))
    return out


def one_push(
    t: Target, layout_dir: Path, prefixes: list[LayerPrefix], unique: str, image: str
) -> float:
    layout = build_layout(layout_dir, prefixes, unique)
    return skopeo_copy(
        f"oci:{layout.path}:{layout.tag}",
        f"docker://{t.ref}/{image}:{layout.tag}",
        creds=t.credentials,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument("--layer-mib", type=int, default=8)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portway-skopeo-timeline-"))
    prefixes = layer_prefixes(work / "cache", 4, args.layer_mib * MiB)
    portway, pt = start_portway(
        work,
        workers=2,
        auth="basic",
        log_level="info",
        server_lines=("access_log = true", 'log_format = "json"'),
    )
    dist, dt = start_distribution(work, request_log=True)
    Reader = Callable[[Path], list[tuple[str, str, float]]]
    sides: list[tuple[str, Target, ServerProcess, Reader]] = [
        ("Portway (security on)", pt, portway, portway_requests),
        ("distribution", dt, dist, distribution_requests),
    ]
    walls: dict[str, list[float]] = defaultdict(list)
    inside: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        for n in range(args.pushes):
            for name, t, server, read in sides:
                seen = len(read(server.log_path))
                wall = one_push(
                    t, work / f"layout-{n}-{t.name}", prefixes, f"{time.time()}", f"tl/img{n}"
                )
                time.sleep(0.3)  # the last log lines reach the file
                sums: dict[str, float] = defaultdict(float)
                for method, path, ms in read(server.log_path)[seen:]:
                    kind = kind_of(method, path)
                    if kind is not None:
                        sums[kind] += ms
                walls[name].append(wall * 1000)
                for kind in KINDS:
                    inside[name][kind].append(sums.get(kind, 0.0))
                inside[name]["the client, between requests"].append(
                    wall * 1000 - sum(sums.values())
                )
    finally:
        portway.stop()
        dist.stop()
    rows = []
    names = [s[0] for s in sides]
    for what in ("push, wall", *KINDS, "the client, between requests"):
        cells = []
        for name in names:
            values = walls[name] if what == "push, wall" else inside[name][what]
            cells.append(f"{statistics.median(values):.1f}")
        rows.append([what, *cells])
    print(f"skopeo push of 4 x {args.layer_mib} MiB layers, ms, medians of {args.pushes}\n")
    print("\n".join(render(["", *names], rows, markdown=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
