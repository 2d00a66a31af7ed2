"""The web UI's admin pages in a real browser (Debian's Chromium, Playwright) against a real
`portway serve` with security on: create a user and a role, assign the role, disable the
user; bulk delete tags with a preview (a set that changed since the preview is shown again,
not deleted; a long preview lists its first tags, and all on request) and check through /v2/
that exactly those tags are gone; a cleanup policy's dry run lists what it would remove and
removes nothing; storage usage; the cleanup job run now as a dry run, its progress page
followed until the report; a connector and a host mapping made on the page serve the
repository at once, and a deleted connector stops; every admin page refused (403) to a user
without admin privileges. Screenshots as tests/test_ui_browser.py."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from portway.ui.bulk import PREVIEW_ROWS
from support import browser
from support import toml as tomlfile
from support.images import OCI_MANIFEST, OciImage
from support.ports import free_port
from support.process import port_open
from support.server import PortwayServer

chromium = browser.chromium  # the module's browser (a fixture)
REPO = "team-hosted"
POLICY = "keep-newest-v"
OPS = ("ops", "ops-password-1")
DEV = ("dev2", "dev2-password-1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    root = tmp_path_factory.mktemp("ui-admin")
    srv = PortwayServer(
        root,
        repositories=[
            {
                "name": REPO,
                "type": "hosted",
                "path_routing": True,
                "cleanup_policies": [POLICY],
                "quota_bytes": 100 * 1024 * 1024,
            },
        ],
        security={"enabled": True, "min_password_length": 8},
    )
    doc = srv._config()
    doc["cleanup_policy"] = [{"name": POLICY, "include": "v[0-9]+", "keep_last": 1}]
    srv.config_path.write_text(tomlfile.dumps(doc))
    srv.start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def admin(server: PortwayServer) -> tuple[str, str]:
    password = server.admin_password()
    assert password
    return "admin", password


@pytest.fixture(scope="module")
def manifest(server: PortwayServer, admin: tuple[str, str], oci_image: OciImage) -> bytes:
    """app:1.0 pushed by skopeo; its manifest, to tag it again over /v2/."""
    out = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", ":".join(admin),
         oci_image.ref, f"docker://{server.host}/{REPO}/app:1.0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = requests.get(f"{server.url}/v2/{REPO}/app/manifests/1.0", auth=admin, timeout=30,
                       headers={"Accept": OCI_MANIFEST})  # fmt: skip
    assert got.status_code == 200, got.text
    return got.content


def tag(server: PortwayServer, admin: tuple[str, str], body: bytes, *names: str) -> None:
    for name in names:
        url = f"{server.url}/v2/{REPO}/app/manifests/{name}"
        headers = {"Content-Type": OCI_MANIFEST}
        put = requests.put(url, data=body, auth=admin, headers=headers, timeout=30)
        assert put.status_code == 201, put.text


def tags_of(server: PortwayServer, admin: tuple[str, str]) -> list[str]:
    got = requests.get(f"{server.url}/v2/{REPO}/app/tags/list", auth=admin, timeout=30)
    assert got.status_code == 200, got.text
    return sorted(got.json()["tags"] or [])


def status(page: Any) -> str:
    return str(page.get_by_role("status").inner_text())


def test_users_and_roles(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    page = browser.sign_in(chromium, server.url, admin)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill(OPS[0])
    page.get_by_label("Password").fill(OPS[1])
    page.get_by_role("button", name="Create user").click()
    assert status(page) == f"User {OPS[0]} created."
    page.get_by_label("Role name").fill("team-reader")
    page.get_by_label("Privileges").fill(f"{REPO}:browse,read")
    page.get_by_role("button", name="Save role").click()
    assert status(page) == "Role team-reader saved."
    assert page.get_by_role("cell", name=f"{REPO}:browse,read").count() == 1
    browser.shot(page, "admin-users-roles", tmp_path)

    page.get_by_role("link", name=f"Edit user {OPS[0]}").click()
    page.get_by_role("checkbox", name="team-reader").check()
    page.get_by_role("button", name="Save roles").click()
    assert status(page) == f"Roles of {OPS[0]} saved."
    assert page.get_by_role("checkbox", name="team-reader").is_checked()
    browser.shot(page, "admin-user", tmp_path)
    users = requests.get(f"{server.url}/service/rest/v1/security/users", auth=admin, timeout=30)
    ops = next(u for u in users.json() if u["userId"] == OPS[0])
    assert ops["roles"] == ["team-reader"] and ops["status"] == "active"
    assert requests.get(f"{server.url}/v2/{REPO}/app/tags/list", auth=OPS, timeout=30).ok

    page.get_by_role("button", name=f"Disable user {OPS[0]}").click()
    assert status(page) == f"User {OPS[0]} disabled."
    users = requests.get(f"{server.url}/service/rest/v1/security/users", auth=admin, timeout=30)
    assert next(u for u in users.json() if u["userId"] == OPS[0])["status"] == "disabled"
    refused = chromium.new_context().new_page()
    refused.goto(f"{server.url}/ui/login")
    refused.get_by_label("User name").fill(OPS[0])
    refused.get_by_label("Password").fill(OPS[1])
    refused.get_by_role("button", name="Sign in").click()
    assert "Wrong user name or password" in refused.get_by_role("alert").inner_text()
    # Signed in as admin: the page will not let admin disable itself.
    page.goto(f"{server.url}/ui/admin/users/admin")
    assert page.get_by_role("button", name="Disable user admin").is_disabled()


def test_bulk_delete_with_preview(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    tag(server, admin, manifest, "pr-1", "pr-2", "pr-10", "prod")
    page = browser.sign_in(chromium, server.url, admin)
    page.goto(f"{server.url}/ui/r/{REPO}/tags?image=app")
    page.get_by_role("link", name="Delete many tags…").click()
    page.get_by_label("Tags matching").fill("pr-*")
    page.get_by_label("Tags matching").press("Enter")  # the keyboard submits the preview
    heading = page.get_by_role("heading", name="3 tags would be deleted")
    heading.wait_for()
    shown = page.locator("table.preview tbody td:first-child").all_inner_texts()
    assert shown == ["pr-1", "pr-10", "pr-2"]
    browser.shot(page, "bulk-delete-preview", tmp_path)

    tag(server, admin, manifest, "pr-3")  # pushed after the preview: the set changed
    page.get_by_role("button", name="Delete these 3 tags").click()
    assert "changed since the preview" in page.get_by_role("alert").inner_text()
    assert tags_of(server, admin) == ["1.0", "pr-1", "pr-10", "pr-2", "pr-3", "prod"]
    shown = page.locator("table.preview tbody td:first-child").all_inner_texts()
    assert shown == ["pr-1", "pr-10", "pr-2", "pr-3"]

    page.get_by_role("button", name="Delete these 4 tags").click()
    assert status(page) == "4 tags deleted."
    assert tags_of(server, admin) == ["1.0", "prod"]


def test_a_long_preview_lists_the_first_tags_and_all_on_request(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
) -> None:  # fmt: skip
    names = [f"many-{n:03d}" for n in range(PREVIEW_ROWS + 5)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: tag(server, admin, manifest, name), names))
    page = browser.sign_in(chromium, server.url, admin)
    page.goto(f"{server.url}/ui/r/{REPO}/bulk-delete?image=app&match=many-*")
    page.get_by_role("heading", name=f"{len(names)} tags would be deleted").wait_for()
    rows = page.locator("table.preview tbody td:first-child")
    assert rows.all_inner_texts() == names[:PREVIEW_ROWS]
    page.get_by_role("link", name=f"List all {len(names)} tags").click()
    page.get_by_role("heading", name=f"{len(names)} tags would be deleted").wait_for()
    assert rows.all_inner_texts() == names

    page.get_by_role("button", name=f"Delete these {len(names)} tags").click()
    assert status(page) == f"{len(names)} tags deleted."
    assert not [t for t in tags_of(server, admin) if t.startswith("many-")]


def test_cleanup_dry_run_and_usage(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    oci_image: OciImage, tmp_path: Path,
) -> None:  # fmt: skip
    tag(server, admin, manifest, "v1", "v2", "v3")  # keep_last = 1 of the tags v<N>: v3 stays
    before = tags_of(server, admin)
    page = browser.sign_in(chromium, server.url, admin)
    page.get_by_role("link", name="Cleanup").click()
    row = page.get_by_role("row").filter(has_text=POLICY)
    assert "keep_last = 1" in row.inner_text() and REPO in row.inner_text()
    browser.shot(page, "admin-cleanup", tmp_path)
    page.get_by_role("link", name=f"Dry run of {POLICY}").click()
    assert status(page).startswith(f"Policy {POLICY} would remove 2 tags and 0 manifests")
    listed = page.locator("table.dry-tags tbody tr").all_inner_texts()
    assert [line.split("\t") for line in listed] == [[REPO, "app", "v1"], [REPO, "app", "v2"]]
    browser.shot(page, "admin-cleanup-dry-run", tmp_path)
    assert tags_of(server, admin) == before  # a dry run deletes nothing

    # A repository made on the page beside a file repository that names a cleanup policy.
    page.get_by_role("link", name="Manage repositories").click()
    page.get_by_label("Name").fill("team-two")
    page.get_by_role("button", name="Create repository").click()
    assert "Repository team-two created" in status(page)
    page.get_by_role("link", name="Usage").click()
    assert page.get_by_role("row").filter(has_text="team-two").inner_text().count("0 Bytes")
    blobs = [oci_image.config_digest, *(layer.digest for layer in oci_image.layers)]
    folder = oci_image.layout / "blobs" / "sha256"
    expected = sum((folder / d.removeprefix("sha256:")).stat().st_size for d in blobs)
    row = page.get_by_role("row").filter(has_text=REPO)
    assert f"{expected:,}" in row.inner_text() and "100.0 MiB" in row.inner_text()
    assert f"{expected:,} bytes" in status(page)
    browser.shot(page, "admin-usage", tmp_path)


def test_cleanup_job_dry_run_from_the_jobs_page(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    tag(server, admin, manifest, "v1", "v2", "v3")  # as above: v1 and v2 would go
    before = tags_of(server, admin)
    page = browser.sign_in(chromium, server.url, admin)
    page.get_by_role("link", name="Jobs").click()
    assert page.get_by_role("row").filter(has_text="upload-purge").count() == 1
    browser.shot(page, "admin-jobs", tmp_path)
    page.get_by_role("link", name="cleanup", exact=True).click()
    page.get_by_label("dry run: report, delete nothing").check()
    page.get_by_role("button", name="Run now").click()
    assert "/ui/admin/jobs/cleanup/runs/" in page.url
    done = page.get_by_role("status").filter(has_text="done")
    done.wait_for(timeout=60_000)  # the page reloads itself until the run ends
    text = status(page)
    assert "cleanup: would remove 2 tag(s) and 0 manifest(s)" in text, text
    listed = page.locator("ul.items li").all_inner_texts()
    assert listed == [f"{REPO}/app:v1", f"{REPO}/app:v2"]
    browser.shot(page, "admin-job-run", tmp_path)
    assert tags_of(server, admin) == before  # a dry run deletes nothing


def wait_until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_connector_and_host_made_on_the_page_serve_at_once(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    page = browser.sign_in(chromium, server.url, admin)
    page.get_by_role("link", name="Connectors").click()
    page.get_by_label("Listen address").fill(f"127.0.0.1:{port}")
    page.get_by_role("combobox", name="Repository").first.select_option(REPO)
    page.get_by_role("button", name="Add connector").click()
    assert status(page) == f"127.0.0.1:{port} created: it is live now."
    by_port = f"http://127.0.0.1:{port}/v2/app/tags/list"  # the repository at the root
    wait_until(lambda: port_open("127.0.0.1", port), "the new connector listens")
    got = requests.get(by_port, auth=admin, timeout=30)
    assert got.status_code == 200 and "1.0" in got.json()["tags"], got.text
    page.get_by_label("Host name").fill("registry.team.test")
    page.locator("#host-repository").select_option(REPO)
    page.get_by_role("button", name="Add host mapping").click()
    assert status(page) == "registry.team.test created: it is live now."
    by_host = requests.get(f"{server.url}/v2/app/tags/list", auth=admin, timeout=30,
                           headers={"Host": f"registry.team.test:{server.port}"})  # fmt: skip
    assert by_host.status_code == 200 and "1.0" in by_host.json()["tags"], by_host.text
    row = page.get_by_role("row").filter(has_text=f"127.0.0.1:{port}")
    assert "listening" in row.inner_text() and "api" in row.inner_text()
    # The node's own view, as every node would show it in a cluster: NAME:LISTEN: listening.
    page.reload()
    nodes = row.get_by_role("listitem").all_inner_texts()
    assert nodes == [f"{socket.gethostname()}:{server.host}: listening"], nodes
    browser.shot(page, "admin-connectors", tmp_path)

    page.get_by_role("button", name=f"Delete connector 127.0.0.1:{port}").click()
    assert status(page) == f"127.0.0.1:{port} deleted."
    wait_until(lambda: not port_open("127.0.0.1", port), "the deleted connector stops")


def test_non_admin_sees_no_admin_pages(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes
) -> None:
    role = requests.post(
        f"{server.url}/service/rest/v1/security/roles", auth=admin, timeout=30,
        json={"id": "team-reader-delete", "name": "team-reader-delete",
              "privileges": [f"nx-repository-view-docker-{REPO}-*"], "roles": []},
    )  # fmt: skip
    made = requests.post(
        f"{server.url}/service/rest/v1/security/users", auth=admin, timeout=30,
        json={"userId": DEV[0], "firstName": "d", "lastName": "d", "emailAddress": "d@x",
              "password": DEV[1], "status": "active", "roles": ["team-reader-delete"]},
    )  # fmt: skip
    assert role.status_code in (200, 201), role.text
    assert made.status_code in (200, 201), made.text
    page = browser.sign_in(chromium, server.url, DEV)
    nav = page.get_by_role("navigation", name="Main").inner_text()
    for link in ("Manage repositories", "Users", "Connectors", "Cleanup", "Usage", "Jobs",
                 "Health"):  # fmt: skip
        assert link not in nav.split("\n"), link
    for path in ("/ui/admin/repositories", "/ui/admin/users", "/ui/admin/users/admin",
                 "/ui/admin/cleanup", f"/ui/admin/cleanup/{POLICY}", "/ui/admin/usage",
                 "/ui/admin/health", "/ui/admin/jobs", "/ui/admin/jobs/gc",
                 "/ui/admin/access"):  # fmt: skip
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 403, path
    session = next(c for c in page.context.cookies() if c["name"] == "portway_ui")
    for path in ("/ui/admin/users/admin/state", "/ui/admin/users/admin/roles",
                 "/ui/admin/roles", "/ui/admin/users", "/ui/admin/jobs/gc/run",
                 "/ui/admin/access", "/ui/admin/access/delete"):  # fmt: skip
        forged = requests.post(f"{server.url}{path}", data={"state": "disabled", "role": "x"},
                               cookies={"portway_ui": session["value"]}, timeout=30,
                               allow_redirects=False)  # fmt: skip
        assert forged.status_code == 403, path
    users = requests.get(f"{server.url}/service/rest/v1/security/users", auth=admin, timeout=30)
    assert next(u for u in users.json() if u["userId"] == "admin")["status"] == "active"


def test_admin_pages_fit_a_phone(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], manifest: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    page = browser.sign_in(chromium, server.url, admin,
                           viewport={"width": 390, "height": 844}, is_mobile=True)  # fmt: skip
    for path, name in (("/ui/admin/users", "phone-users"), ("/ui/admin/access", None),
                       (f"/ui/r/{REPO}/bulk-delete?image=app&match=*", None),
                       (f"/ui/admin/cleanup/{POLICY}", None), ("/ui/admin/usage", None),
                       ("/ui/admin/jobs", "phone-jobs")):  # fmt: skip
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 200, path
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways on a phone ({width} px)"
        if name:
            browser.shot(page, name, tmp_path)
