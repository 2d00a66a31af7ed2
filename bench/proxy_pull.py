"""Pulls through a proxy and a group repository, against a hosted one and against the upstream.

    .venv/bin/python bench/proxy_pull.py [--rounds N] [--layer-mib M]

Starts CNCF distribution as the upstream and one Portway holding `docker-hosted` (hosted),
`hub` (proxy of that distribution) and `group` (hosted + hub), all with repository paths. Each
round builds a fresh 4-layer image (already gzipped layers), pushes it to distribution as
`u<r>` and to the hosted repository as `h<r>`, then times `skopeo copy` pulls into fresh OCI
folders:

- direct:      distribution  u<r>           (the upstream itself)
- proxy cold:  hub/u<r>                      (first pull: fetched and cached while streamed)
- proxy warm:  hub/u<r>                      (from the cache)
- group warm:  group/u<r>                    (through the group, served by its proxy member)
- hosted:      docker-hosted/h<r>            (the same bytes, stored here)

Issue 4's targets: warm pull through proxy and group at least 0.9x the hosted pull's speed
(time ratio hosted/warm >= 0.9), and a cold pull through the proxy at most 1.2x the time of a
direct pull from the upstream. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from data import build_layout, default_cache_dir, layer_prefixes
from ops import skopeo_copy
from run import machine, write_results
from servers import ServerProcess, free_port, start_distribution, venv_python

MiB = 1024 * 1024


def portway_config(port: int, data_dir: Path, upstream: str) -> str:
    return f"""[server]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
workers = 1
log_level = "warning"

[security]
enabled = false

[[repository]]
name = "docker-hosted"
type = "hosted"
path_routing = true

[[repository]]
name = "hub"
type = "proxy"
remote_url = "{upstream}"
path_routing = true

[[repository]]
name = "group"
type = "group"
members = ["docker-hosted", "hub"]
path_routing = true
allow_proxy_shadowing = true
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer-mib", type=int, default=8, help="size of each of the 4 layers")
    args = p.parse_args()
    if not shutil.which("skopeo"):
        print("skopeo not found (Debian package `skopeo`)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="portway-proxy-pull-"))
    servers: list[ServerProcess] = []
    try:
        dist, upstream = start_distribution(work, name="upstream")
        servers.append(dist)
        port = free_port()
        home = work / "portway"
        home.mkdir()
        config = home / "portway.toml"
        config.write_text(portway_config(port, home / "data", upstream.base))
        portway = ServerProcess(
            "portway",
            [venv_python(), "-m", "portway", "serve", "--config", str(config)],
            home,
            env={"PYTHONUNBUFFERED": "1"},
        )
        servers.append(portway)
        portway.wait_ready(f"http://127.0.0.1:{port}/v2/")
        here = f"127.0.0.1:{port}"
        prefixes = layer_prefixes(default_cache_dir(), 4, args.layer_mib * MiB)
        times: dict[str, list[float]] = {
            k: [] for k in ("direct", "proxy cold", "proxy warm", "group warm", "hosted")
        }
        for r in range(args.rounds):
            layout = build_layout(work / f"layout{r}", prefixes, secrets.token_hex(8))
            src = f"oci:{layout.path}:{layout.tag}"
            skopeo_copy(src, f"docker://{upstream.ref}/u{r}:1")
            skopeo_copy(src, f"docker://{here}/docker-hosted/h{r}:1")

            def pull(ref: str, key: str, r: int = r) -> None:
                out = work / f"out-{key.replace(' ', '-')}-{r}"
                times[key].append(skopeo_copy(f"docker://{ref}", f"oci:{out}:x"))
                shutil.rmtree(out)

            pull(f"{upstream.ref}/u{r}:1", "direct")
            pull(f"{here}/hub/u{r}:1", "proxy cold")
            pull(f"{here}/hub/u{r}:1", "proxy warm")
            pull(f"{here}/group/u{r}:1", "group warm")
            pull(f"{here}/docker-hosted/h{r}:1", "hosted")
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows = [
            ("warm pull via proxy vs hosted (speed)", med["hosted"] / med["proxy warm"], ">= 0.9x"),
            ("warm pull via group vs hosted (speed)", med["hosted"] / med["group warm"], ">= 0.9x"),
            ("cold pull via proxy vs direct (time)", med["proxy cold"] / med["direct"], "<= 1.2x"),
        ]
        print(
            f"\nimage: 4 layers of {args.layer_mib} MiB (gzipped), skopeo, medians of "
            f"{args.rounds} rounds\n"
        )
        print("| pull | median s |\n|---|---|")
        for key, value in med.items():
            print(f"| {key} | {value:.3f} |")
        print("\n| comparison | ratio | target | met |\n|---|---|---|---|")
        results = []
        for title, ratio, target in rows:
            bound = float(target.split()[1].rstrip("x"))
            met = ratio >= bound if target.startswith(">=") else ratio <= bound
            print(f"| {title} | {ratio:.2f}x | {target} | {'yes' if met else 'no'} |")
            results.append({"row": title, "ratio": ratio, "target": target, "met": met})
        record = {"machine": machine(), "times": times, "medians": med, "rows": results}
        write_results(record, "proxy-pull-")
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
