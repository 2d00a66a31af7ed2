"""What one node changes, every node sees: a re-tag and a delete within a second, a connector
made through one node's API listening on every node, failed-login counts, users and roles (a
reduced isolation matrix), on a 3-node cluster sharing PostgreSQL.
Each request goes to one node directly, so the test knows which node answered. A web UI
session signed in through the front door holds on every node, and ends on every node when its
user is disabled or removed. And 50 pushes through the front door while garbage collection
runs lose nothing; after a delete and a pass, no node claims the freed blobs."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import requests

import gc_pushes
from portway.auth.privileges import Privilege, Role
from portway.compose import Portway
from portway.config import load_settings
from portway.lifecycle.collector import Collector
from push_support import Registry
from support.cluster import Cluster, node_of, portway_cli, start_cluster, token
from support.ports import free_port
from support.security import OCI_MANIFEST, Client, digest_of, make_image, push_image
from support.server import PortwayServer

FAILURES = 3  # login_max_failures for the cluster
SEEN_WITHIN = 1.0  # seconds: a change on one node is answered by every node after this
REPOSITORIES = (
    {"name": "docker-hosted", "type": "hosted", "path_routing": True},
    {"name": "team-a-hosted", "type": "hosted", "path_routing": True},
    {"name": "team-b-hosted", "type": "hosted", "path_routing": True},
)
ALL = frozenset({"browse", "read", "add", "edit", "delete"})
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-3", "limited": "limited-Secret-5"}
UI_ADMINS = {"carol": "carol-Secret-7", "dave": "dave-Secret-9"}  # web UI sessions


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    security = {"enabled": True, "login_max_failures": FAILURES, "login_failure_window": 300}
    with start_cluster(
        tmp_path_factory.mktemp("cluster"), postgres_url,
        security=security, repositories=REPOSITORIES,
        # three nodes on one host, one connector; gc_hold short for the pushes while GC runs
        server={"share_connector_ports": True, "gc_hold": gc_pushes.HOLD},
    ) as started:  # fmt: skip
        # Roles and users through the services `portway role add` / `user add` call, in this
        # process (each `portway` command takes seconds to start on a busy machine).
        with Portway(load_settings(started.nodes[0].config_path)) as root:
            for team in "ab":
                privilege = Privilege(f"team-{team}-*", ALL)
                root.roles.put(Role(f"team-{team}", privileges=(privilege,)), actor="test")
            for user, roles in {"alice": ["team-a"], "bob": ["team-b"], "limited": []}.items():
                root.users.add(user, PASSWORDS[user], roles, actor="test")
            for user, password in UI_ADMINS.items():
                root.users.add(user, password, ["admin"], actor="test")
        yield started


def admin_client(cluster: Cluster, node: PortwayServer) -> Client:
    user, password = cluster.admin
    return Client(node.url, user=user, password=password)


def until_every_node(
    cluster: Cluster, check: Callable[[PortwayServer], bool], timeout: float = 10.0
) -> list[float]:
    """Seconds until each node passes `check` (asked in turn, every 20 ms)."""
    start = time.monotonic()
    seen: dict[int, float] = {}
    while len(seen) < len(cluster.nodes) and time.monotonic() - start < timeout:
        for index, node in enumerate(cluster.nodes):
            if index not in seen and check(node):
                seen[index] = time.monotonic() - start
        time.sleep(0.02)
    return [seen.get(i, float("inf")) for i in range(len(cluster.nodes))]


def test_retag_and_delete_seen_on_every_node_within_a_second(cluster: Cluster) -> None:
    clients = [admin_client(cluster, node) for node in cluster.nodes]
    first, second = make_image("retag"), make_image("retag", note="second")
    assert push_image(clients[0], "docker-hosted/retag", "t", first).status_code == 201
    for client in clients:  # every node has answered (and may cache) the first digest
        answer = client.get_manifest("docker-hosted/retag", "t")
        assert answer.headers.get("Docker-Content-Digest") == first.digest

    def digest_on(node: PortwayServer) -> str | None:
        answer = clients[cluster.nodes.index(node)].get_manifest("docker-hosted/retag", "t")
        return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None

    moved = clients[1].put_manifest("docker-hosted/retag", "t", second.manifest)
    assert moved.status_code == 201, moved.text
    seen = until_every_node(cluster, lambda node: digest_on(node) == second.digest)
    assert max(seen) <= SEEN_WITHIN, f"re-tag seen after {seen} s"

    gone = clients[2].request("DELETE", f"/v2/docker-hosted/retag/manifests/{second.digest}")
    assert gone.status_code == 202, gone.text
    seen = until_every_node(cluster, lambda node: digest_on(node) is None)
    assert max(seen) <= SEEN_WITHIN, f"delete seen after {seen} s"
    for client in clients:
        assert client.get_manifest("docker-hosted/retag", "t").status_code == 404


def test_a_connector_made_on_one_node_listens_on_every_node(cluster: Cluster) -> None:
    session = cluster.session()
    nodes = [node_of(session.get(f"{n.url}/api/v1/connectors", timeout=30)) for n in cluster.nodes]
    assert len(set(nodes)) == len(cluster.nodes)  # one process each: its id names the node
    listen = f"127.0.0.1:{free_port()}"
    body = {"listen": listen, "repository": "docker-hosted"}
    sent = time.monotonic()
    made = session.post(f"{cluster.nodes[0].url}/api/v1/connectors", json=body, timeout=30)
    assert made.status_code == 201, made.text
    answered: set[str] = set()  # nodes that answered on the new port (fresh connections)
    while answered != set(nodes) and time.monotonic() - sent < 10:
        try:
            reply = requests.get(f"http://{listen}/v2/", headers={"Connection": "close"},
                                 timeout=5)  # fmt: skip
        except requests.ConnectionError:
            time.sleep(0.01)
            continue
        assert reply.status_code == 401  # the registry's challenge, from the connector
        answered.add(node_of(reply))
    took = time.monotonic() - sent
    assert answered == set(nodes), (answered, nodes, cluster.logs()[-3000:])
    assert took <= 2.0, f"every node listened after {took:.2f}s"
    print(f"connector listening on all {len(nodes)} nodes {took:.3f}s after the POST was sent")
    for node in cluster.nodes:
        shown = session.get(f"{node.url}/api/v1/connectors/{listen}", timeout=30).json()
        assert shown["state"] == "listening" and shown["managedBy"] == "api", shown

    def views() -> list[tuple[str, str]]:  # every node's view, as one node answers it
        shown = session.get(f"{cluster.nodes[1].url}/api/v1/connectors/{listen}", timeout=30)
        return sorted((n["node"], n["state"]) for n in shown.json()["nodes"])

    names = sorted(f"{socket.gethostname()}:127.0.0.1:{n.port}" for n in cluster.nodes)
    while views() != [(name, "listening") for name in names]:
        assert time.monotonic() - sent <= 5.0, f"nodes shown: {views()}"
        time.sleep(0.05)

    gone = session.delete(f"{cluster.nodes[2].url}/api/v1/connectors/{listen}", timeout=30)
    assert gone.status_code == 204, gone.text
    deleted = time.monotonic()

    def refused() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", int(listen.rpartition(":")[2])), 1):
                return False
        except OSError:
            return True

    while not refused():
        assert time.monotonic() - deleted <= 2.0, "a node still listens 2 s after the delete"
        time.sleep(0.01)


def login(node: PortwayServer, user: str, password: str) -> int:
    answer = requests.get(
        f"{node.url}/v2/token", params={"service": "portway"}, auth=(user, password),
        headers={"X-Forwarded-For": "198.51.100.20", "Connection": "close"}, timeout=30,
    )  # fmt: skip
    return answer.status_code


def test_failed_logins_count_across_nodes(cluster: Cluster) -> None:
    nodes = cluster.nodes
    wrong = [login(nodes[i % 3], "limited", f"guess-{i}") for i in range(FAILURES)]
    assert wrong == [401] * FAILURES
    # Every node refuses from now on, the right password too: the counts are shared.
    assert [login(node, "limited", PASSWORDS["limited"]) for node in nodes] == [429] * 3
    unlocked = portway_cli(nodes[2].config_path, "user", "unlock", "limited")
    assert "unlocked limited" in unlocked.stdout
    assert [login(node, "limited", PASSWORDS["limited"]) for node in nodes] == [200] * 3


def csrf_of(answer: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', answer.text)
    assert found, answer.text[:500]
    return found.group(1)


def ui_sign_in(base: str, user: str, password: str) -> tuple[requests.Session, list[str]]:
    """A browser-like session signed in to the web UI at `base` (the form and its CSRF
    token, as a browser posts them), and the nodes that answered the two requests."""
    browser = requests.Session()
    form = browser.get(f"{base}/ui/login", timeout=30)
    assert form.status_code == 200, form.text[:300]
    signed = browser.post(
        f"{base}/ui/login", allow_redirects=False, timeout=30,
        data={"csrf": csrf_of(form), "next": "/ui/", "username": user, "password": password},
    )  # fmt: skip
    assert signed.status_code == 303 and signed.headers["Location"] == "/ui/", signed.text[:300]
    assert browser.cookies.get("portway_ui"), signed.headers
    return browser, [node_of(form), node_of(signed)]


def test_a_ui_session_holds_on_every_node_and_ends_everywhere(cluster: Cluster) -> None:
    front = cluster.front_url
    image = make_image("ui-session")
    admin = admin_client(cluster, cluster.nodes[0])
    tags = [f"t{i}" for i in range(6)]
    for tag in tags:
        assert push_image(admin, "docker-hosted/ui-session", tag, image).status_code == 201
    browser, nodes = ui_sign_in(front, "carol", UI_ADMINS["carol"])
    served: dict[str, set[str]] = {}  # node -> pages it answered
    pages = ["/ui/", "/ui/admin/repositories", "/ui/admin/users", "/ui/admin/jobs",
             "/ui/admin/usage", "/ui/admin/health", "/ui/admin/access",
             "/ui/r/docker-hosted/tags?image=ui-session"]  # fmt: skip
    for path in pages * 2:
        answer = browser.get(front + path, allow_redirects=False, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.headers)
        assert "Sign in" not in answer.text.partition("<main")[2][:400], path
        served.setdefault(node_of(answer), set()).add(path)
    assert len(served) == len(cluster.nodes), served  # every node honoured the session
    # Forms: each confirmation page's CSRF token posted back, often to another node.
    crossed = 0
    for tag in tags:
        params = {"image": "ui-session", "tag": tag}
        confirm = browser.get(f"{front}/ui/r/docker-hosted/delete", params=params, timeout=30)
        assert confirm.status_code == 200, confirm.text[:300]
        deleted = browser.post(
            f"{front}/ui/r/docker-hosted/delete", allow_redirects=False, timeout=30,
            data={"csrf": csrf_of(confirm), **params},
        )  # fmt: skip
        assert deleted.status_code == 303, (tag, deleted.status_code, deleted.text[:300])
        assert f"deleted={tag}" in deleted.headers["Location"]
        crossed += node_of(confirm) != node_of(deleted)
        nodes += [node_of(confirm), node_of(deleted)]
    assert crossed >= 1 and len(set(nodes)) == len(cluster.nodes), nodes
    listed = admin.request("GET", "/v2/docker-hosted/ui-session/tags/list")
    assert listed.status_code == 404 or listed.json()["tags"] in (None, []), listed.text

    # The same cookie on each node directly, then a user disabled through the UI (a form)
    # and another removed through the API: neither session opens a page anywhere after.
    def pages_open(session_cookie: str) -> list[int]:
        cookies = {"portway_ui": session_cookie}
        return [
            requests.get(
                f"{node.url}/ui/admin/users", cookies=cookies, allow_redirects=False, timeout=30
            ).status_code
            for node in cluster.nodes
        ]

    carol = str(browser.cookies.get("portway_ui"))
    dave_browser, _ = ui_sign_in(front, "dave", UI_ADMINS["dave"])
    dave = str(dave_browser.cookies.get("portway_ui"))
    assert pages_open(carol) == pages_open(dave) == [200] * len(cluster.nodes)
    user_page = dave_browser.get(f"{front}/ui/admin/users/carol", timeout=30)
    off = dave_browser.post(
        f"{front}/ui/admin/users/carol/state", allow_redirects=False, timeout=30,
        data={"csrf": csrf_of(user_page), "state": "disabled"},
    )  # fmt: skip
    assert off.status_code == 303 and off.headers["Location"].endswith("saved=disabled")
    assert pages_open(carol) == [303] * len(cluster.nodes)
    removed = cluster.session().delete(
        f"{cluster.nodes[1].url}/service/rest/v1/security/users/dave", timeout=30
    )
    assert removed.status_code == 204, removed.text
    assert pages_open(dave) == [303] * len(cluster.nodes)


def test_isolation_across_nodes(cluster: Cluster) -> None:
    """A reduced matrix: each principal's outcome is the same whichever node answers, and a
    token one node signed means the same on every other node."""
    one, two, three = cluster.nodes
    image = make_image("team")
    alice = Client(one.url, user="alice", password=PASSWORDS["alice"])
    assert push_image(alice, "team-a-hosted/app", "v1", image).status_code == 201
    bob = Client(two.url, user="bob", password=PASSWORDS["bob"])
    assert push_image(bob, "team-b-hosted/app", "v1", image).status_code == 201

    def outcome(client: Client, name: str) -> tuple[int, str]:
        answer = client.get_manifest(name, "v1")
        code = "" if answer.status_code == 200 else answer.json()["errors"][0]["code"]
        return answer.status_code, code

    def fresh(node: PortwayServer, user: str | None) -> Client:  # a new login for each cell
        return Client(node.url, user=user, password=PASSWORDS.get(user or ""))

    for node in cluster.nodes:
        assert outcome(fresh(node, "alice"), "team-a-hosted/app") == (200, ""), node.url
        assert outcome(fresh(node, "alice"), "team-b-hosted/app") == (404, "NAME_UNKNOWN")
        assert outcome(fresh(node, "bob"), "team-a-hosted/app") == (404, "NAME_UNKNOWN")
        assert outcome(fresh(node, "bob"), "team-b-hosted/app") == (200, ""), node.url
        assert outcome(fresh(node, None), "team-a-hosted/app") == (401, "UNAUTHORIZED")
        refused = push_image(fresh(node, "bob"), "team-a-hosted/intruder", "v1",
                             make_image("intruder"))  # fmt: skip
        assert refused.status_code == 404, (node.url, refused.text)

    # alice's token from node one, replayed unchanged on node three
    assert alice.token is not None
    replay = Client(three.url, token=alice.token, fixed_token=True)
    assert outcome(replay, "team-a-hosted/app") == (200, "")
    assert outcome(replay, "team-b-hosted/app")[0] in (401, 404)
    pulled = replay.request("GET", f"/v2/team-a-hosted/app/blobs/{digest_of(image.layer)}")
    assert pulled.status_code == 200 and pulled.content == image.layer
    listed = admin_client(cluster, three).request("GET", "/v2/team-a-hosted/app/tags/list")
    assert listed.json()["tags"] == ["v1"]
    assert OCI_MANIFEST  # the media type the helpers push


def test_pushes_through_the_front_while_gc_runs_lose_nothing(cluster: Cluster) -> None:
    """tests/test_gc_pushes.py's 50 pushes, through HAProxy (requests spread over the 3
    nodes), images deleted again, a pass every second on the shared database and folder."""
    images = [f"repository:docker-hosted/img{k}:pull,push,delete" for k in range(5)]
    bearer = token(cluster.front_url, cluster.admin, images)
    reg = Registry(cluster.front_url, headers={"Authorization": f"Bearer {bearer}"})
    gc_pushes.pushes_while_gc_runs(
        reg, cluster.nodes[0].config_path, prefix="docker-hosted/", budget=120
    )


def test_after_delete_and_gc_no_node_claims_the_blobs(cluster: Cluster) -> None:
    """Every node has answered for the image's blobs (and may cache that); the image is
    deleted through one node and a pass frees its blobs; then no node claims them, and a
    re-push through another node uploads them again and is served complete everywhere."""
    clients = [admin_client(cluster, node) for node in cluster.nodes]
    image = make_image("stale-after-gc")
    blobs = [digest_of(image.config), digest_of(image.layer)]
    assert push_image(clients[0], "docker-hosted/stale", "v1", image).status_code == 201

    def head(client: Client, digest: str) -> int:
        return client.request("HEAD", f"/v2/docker-hosted/stale/blobs/{digest}").status_code

    for client in clients:
        assert [head(client, d) for d in blobs] == [200, 200]
    gone = clients[1].request("DELETE", f"/v2/docker-hosted/stale/manifests/{image.digest}")
    assert gone.status_code == 202, gone.text
    time.sleep(gc_pushes.HOLD + 1.5)  # past gc_hold: the candidates are acted on
    with Portway(load_settings(cluster.nodes[2].config_path)) as root:
        report = asyncio.run(Collector(root.meta, root.blobs, gc_pushes.HOLD).run())
    assert set(blobs) <= {digest for digest, _ in report.blobs}, report
    seen = until_every_node(
        cluster, lambda node: [head(clients[cluster.nodes.index(node)], d) for d in blobs]
        == [404, 404],
    )  # fmt: skip
    assert max(seen) <= SEEN_WITHIN, f"freed blobs still claimed after {seen} s"
    again = push_image(clients[2], "docker-hosted/stale", "v1", image)
    assert again.status_code == 201, again.text
    for client in clients:
        assert [head(client, d) for d in blobs] == [200, 200]
        got = client.request("GET", f"/v2/docker-hosted/stale/blobs/{digest_of(image.layer)}")
        assert got.status_code == 200 and got.content == image.layer
