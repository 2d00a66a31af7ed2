"""The web UI's tag page at 100,000 tags in one image: p50/p95 latency per view.

    .venv/bin/python bench/ui_tags.py [--tags N] [--requests R]

Writes N tags straight through the metadata store (bench/api_tags.py `generate`), starts a
real `portway serve` with security on, signs in through the UI's login form and times R GETs
of /ui/r/<repo>/tags per view (sorted by name, version, push time, size; a filter), of the bulk
delete preview of 2,778 of the tags (as first shown, and with all listed), and of the users,
usage and jobs pages, over one kept-alive connection. Target: p95 at most 500 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import requests

from api_tags import IMAGE, REPO, generate, pct
from proxy_overhead import Proc, answers, python, wait_for
from servers import free_ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pw-bench-ui-"))
    data = work / "data"
    generate(data, args.tags)
    (port,) = free_ports(1)
    config = work / "portway.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
        f"[security]\nenabled = true\n"
        f'[[repository]]\nname = "{REPO}"\ntype = "hosted"\npath_routing = true\n'
    )
    proc = Proc([python(), "-m", "portway", "serve", "--config", str(config)], work / "log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/v2/"), "the server", 120)
        wait_for(lambda: (data / "admin.password").exists(), "the admin password", 30)
        s = requests.Session()
        form = s.get(f"{base}/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        password = (data / "admin.password").read_text().strip()
        s.post(f"{base}/ui/login", data={"csrf": csrf[1], "username": "admin",
                                          "password": password, "next": "/ui/"})  # fmt: skip
        assert "portway_ui" in s.cookies
        tags_url = f"{base}/ui/r/{REPO}/tags"
        print(f"| UI page ({args.tags} tags) | p50 ms | p95 ms | max ms |\n|---|---|---|---|")
        views: list[tuple[str, str, dict[str, str]]] = [
            (f"tags sort={sort}", tags_url, {"image": IMAGE, "sort": sort})
            for sort in ("name", "semver", "pushed", "size")
        ]
        views.append(("tags sort=name q=pr-9", tags_url, {"image": IMAGE, "q": "pr-9"}))
        bulk = f"{base}/ui/r/{REPO}/bulk-delete"
        first = s.get(bulk, params={"image": IMAGE, "match": "pr-9*"}).text
        matched = re.search(r"(\d+) tags would be deleted", first)
        count = matched[1] if matched else "?"
        views.append((f"bulk delete preview match=pr-9* ({count} tags, 200 listed)", bulk,
                      {"image": IMAGE, "match": "pr-9*"}))  # fmt: skip
        views.append((f"the same, all {count} listed", bulk,
                      {"image": IMAGE, "match": "pr-9*", "all": "1"}))  # fmt: skip
        views.append(("users and roles", f"{base}/ui/admin/users", {}))
        views.append(("usage", f"{base}/ui/admin/usage", {}))
        views.append(("jobs", f"{base}/ui/admin/jobs", {}))
        for label, url, params in views:
            s.get(url, params=params)  # the first sorted page sorts the list once
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                answer = s.get(url, params=params)
                times.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, answer.text[:300]
            print(f"| {label} | {statistics.median(times):.1f} | {pct(times, 0.95):.1f} | "
                  f"{max(times):.1f} |", flush=True)  # fmt: skip
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
