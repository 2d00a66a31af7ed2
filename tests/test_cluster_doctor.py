"""`portway doctor --cluster`: a consistent cluster passes; odd nodes are named.

Beside a consistent 2-node cluster, four odd nodes sharing its blob store: one on another
database (so with signing keys of its own: the keys live in the database), one with a
different [security] table, one whose clock runs 30 s ahead (libfaketime, Debian's
`faketime`), and one whose database is dropped under it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from portway.compose import Portway
from portway.config import load_settings
from support.cluster import Cluster, ClusterNode, start_cluster
from support.postgres import Postgres

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW = 30


@dataclass
class Odd:
    key: ClusterNode
    config: ClusterNode
    skew: ClusterNode
    nodb: ClusterNode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("cluster"), postgres_url, size=2) as started:
        yield started


@pytest.fixture(scope="module")
def odd(cluster: Cluster, postgres: Postgres) -> Iterator[Odd]:
    assert FAKETIME.exists(), "libfaketime missing: apt-get install faketime"
    other = postgres.create_database("doctor_other")
    lost = postgres.create_database("doctor_lost")
    skewed = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME": f"+{SKEW}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    nodes = Odd(
        key=cluster.make_node("odd-key", database={"url": other}),
        config=cluster.make_node("odd-config", security={"enabled": True, "token_ttl": 600}),
        skew=cluster.make_node("odd-skew", env=skewed),
        nodb=cluster.make_node(
            "odd-nodb", database={"url": lost}, server={"health_check_interval": 0.5}
        ),
    )
    every = [nodes.key, nodes.config, nodes.skew, nodes.nodb]
    try:
        with ThreadPoolExecutor(len(every)) as pool:
            list(pool.map(lambda node: node.start(60), every))
        # The odd database has an admin of its own: give it the cluster admin's password, so
        # the doctor may read that node's details too.
        with Portway(load_settings(nodes.key.config_path)) as root:
            root.users.set_password("admin", cluster.admin[1], actor="test")
        postgres.drop_database(lost)  # the database goes away under a running node
        deadline = time.monotonic() + 20
        while requests.get(f"{nodes.nodb.url}/readyz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, nodes.nodb.log()[-3000:]
            time.sleep(0.2)
        yield nodes
    finally:
        with ThreadPoolExecutor(len(every)) as pool:
            list(pool.map(lambda node: node.stop(), every))


def doctor(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", "doctor", *args],
        input=(password or "") + "\n", capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip


def test_consistent_cluster_and_its_front_door_pass(cluster: Cluster) -> None:
    user, password = cluster.admin
    nodes = ",".join(node.url for node in cluster.nodes)
    run = doctor(cluster.front_url, "--cluster", nodes, "--user", user, password=password)
    assert run.returncode == 0, run.stdout + run.stderr
    for line in (
        "PASS  request bodies stream through (not buffered)",  # HAProxy as generated
        "PASS  [security] is the same on every node",
        "PASS  [repository] is the same on every node",
        "PASS  [database] is the same on every node",
        "PASS  signing keys are the same on every node",
        f"PASS  {cluster.nodes[1].url} clock",
        f"PASS  {cluster.nodes[0].url} is ready",
        "2 nodes: ",
    ):
        assert line in run.stdout, run.stdout


def test_node_details_need_the_administrator(cluster: Cluster) -> None:
    nodes = ",".join(node.url for node in cluster.nodes)
    run = doctor("--cluster", nodes)
    assert run.returncode == 1
    assert "FAIL  node details (configuration, signing keys)" in run.stdout, run.stdout
    assert "--user admin" in run.stdout
    plain = requests.get(f"{cluster.nodes[0].url}/readyz?node=1", auth=("admin", "wrong"),
                         timeout=30)  # fmt: skip
    assert "settings" not in plain.json()["node"], plain.text


def _line(out: str, start: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{out}"
    return found[0]


def test_odd_nodes_are_flagged(cluster: Cluster, odd: Odd) -> None:
    user, password = cluster.admin
    good = [node.url for node in cluster.nodes]
    urls = [*good, odd.key.url, odd.config.url, odd.skew.url, odd.nodb.url]
    run = doctor("--cluster", ",".join(urls), "--user", user, password=password)
    out = run.stdout
    assert run.returncode == 1, out
    keys = _line(out, "FAIL  signing keys are the same on every node: differ: ")
    groups = keys.partition("differ: ")[2].split(" | ")
    assert odd.key.url in groups and len(groups) == 2, keys  # the odd node alone
    security = _line(out, "FAIL  [security] is the same on every node: differs: ")
    assert odd.config.url in security.partition("differs: ")[2].split(" | "), security
    clock = _line(out, f"FAIL  {odd.skew.url} clock: ")
    ahead = float(clock.partition("clock: ")[2].split()[0])
    assert SKEW - 3 <= ahead <= SKEW + 3 and "ahead of" in clock, clock
    ready = _line(out, f"FAIL  {odd.nodb.url} is ready: status 503; database: ")
    assert "cannot reach the database server" in ready, ready
    details = _line(out, "FAIL  node details (configuration, signing keys): not given by ")
    assert f"not given by {odd.nodb.url}: node details unavailable" in details, details
    for url in good:  # the consistent nodes pass their own checks
        assert f"PASS  {url} is ready" in out and f"PASS  {url} clock" in out, out
    assert "PASS  [repository] is the same on every node" in out
    assert "PASS  [storage] is the same on every node" in out
    database = _line(out, "FAIL  [database] is the same on every node: differs: ")
    assert odd.key.url in database.partition("differs: ")[2].split(" | "), database
