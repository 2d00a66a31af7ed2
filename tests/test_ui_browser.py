"""The web UI in a real browser (Debian's Chromium, Playwright) against a real `portway
serve` with security on: sign in (also keyboard only), browse to an image pushed by skopeo,
copy its pull command and run it, delete a tag, create a repository and push to it at once,
admin pages refused to a non-admin. Screenshots go to $PORTWAY_UI_SCREENSHOTS (default: the
test's folder)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support import browser
from support.images import OciImage
from support.server import PortwayServer

chromium = browser.chromium  # the session-wide browser (a fixture)
REPO = "docker-hosted"
DEV = ("dev", "dev-password-1")


def skopeo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    root = tmp_path_factory.mktemp("ui")
    srv = PortwayServer(
        root,
        repositories=[
            {"name": REPO, "type": "hosted", "path_routing": True, "anonymous_pull": True}
        ],
        security={"enabled": True, "min_password_length": 8},
    ).start(timeout=90)
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
def pushed(server: PortwayServer, admin: tuple[str, str], oci_image: OciImage) -> str:
    """app:1.0 and app:2.0 pushed by skopeo."""
    for tag in ("1.0", "2.0"):
        out = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", ":".join(admin),
                     oci_image.ref, f"docker://{server.host}/{REPO}/app:{tag}")  # fmt: skip
        assert out.returncode == 0, out.stderr
    return f"{server.host}/{REPO}/app"


def shot(page: Any, name: str, tmp_path: Path) -> None:
    browser.shot(page, name, tmp_path)


def sign_in(b: Any, server: PortwayServer, user: tuple[str, str], **ctx: Any) -> Any:
    return browser.sign_in(b, server.url, user, **ctx)


def tags_of(server: PortwayServer, admin: tuple[str, str], image: str) -> list[str]:
    out = skopeo("list-tags", "--tls-verify=false", "--creds", ":".join(admin),
                 f"docker://{server.host}/{image}")  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    return list(json.loads(out.stdout)["Tags"])


def test_browse_copy_pull_and_delete(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], pushed: str, tmp_path: Path
) -> None:
    page = sign_in(chromium, server, admin)
    cookie = next(c for c in page.context.cookies() if c["name"] == "portway_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    shot(page, "repositories", tmp_path)
    page.get_by_role("link", name=REPO, exact=True).click()
    page.get_by_role("link", name="app", exact=True).click()
    page.get_by_role("cell", name="2.0", exact=True).wait_for()
    shot(page, "tags", tmp_path)
    page.get_by_role("link", name="1.0", exact=True).click()
    page.get_by_role("heading", name="Layers").wait_for()
    shot(page, "manifest", tmp_path)

    field = page.locator('input[data-client="skopeo"][data-method="repository path"]')
    command = field.input_value()
    assert f"docker://{server.host}/{REPO}/app:1.0" in command
    field.locator("xpath=following-sibling::button").click()  # the Copy button
    # The label changes once the clipboard took the text (a promise) and for 1.5 s only.
    page.locator("button.copy", has_text="Copied").wait_for(timeout=5000)
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "app" / "index.json").exists()

    page.get_by_role("link", name="Delete tag 1.0").click()
    page.get_by_role("button", name="Delete tag 1.0").click()
    assert page.get_by_role("status").inner_text() == "Tag 1.0 deleted."
    assert tags_of(server, admin, f"{REPO}/app") == ["2.0"]


def test_create_repository_then_push_at_once(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], oci_image: OciImage,
    tmp_path: Path,
) -> None:  # fmt: skip
    page = sign_in(chromium, server, admin)
    page.get_by_role("link", name="Manage repositories").click()
    page.get_by_label("Name").fill("team-ui")
    page.get_by_label("Write policy").select_option("allow_once")
    page.get_by_role("button", name="Create repository").click()
    assert "Repository team-ui created" in page.get_by_role("status").inner_text()
    shot(page, "admin-repositories", tmp_path)
    out = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", ":".join(admin),
                 oci_image.ref, f"docker://{server.host}/team-ui/web:1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert tags_of(server, admin, "team-ui/web") == ["1"]


def test_non_admin_is_refused_admin_pages(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], tmp_path: Path
) -> None:
    page = sign_in(chromium, server, admin)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill(DEV[0])
    page.get_by_label("Password").fill(DEV[1])
    page.get_by_role("button", name="Create user").click()
    assert "User dev created" in page.get_by_role("status").inner_text()
    shot(page, "admin-users", tmp_path)
    page.get_by_role("link", name="Health").click()
    assert "ready" in page.get_by_role("status").inner_text()
    shot(page, "admin-health", tmp_path)

    dev = sign_in(chromium, server, DEV)
    assert dev.get_by_role("link", name="Manage repositories").count() == 0
    for path in ("/ui/admin/repositories", "/ui/admin/users", "/ui/admin/health"):
        answer = dev.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 403, path


def test_keyboard_only_login_on_a_phone(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], pushed: str, tmp_path: Path
) -> None:
    context = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(f"{server.url}/ui/")
    assert page.evaluate("document.activeElement.id") == "username"  # autofocus
    page.keyboard.type(admin[0])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(admin[1])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.url}/ui/")
    shot(page, "phone-repositories", tmp_path)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"


def test_forms_need_their_csrf_token(
    chromium: Any, server: PortwayServer, admin: tuple[str, str], pushed: str
) -> None:
    page = sign_in(chromium, server, admin)
    session = next(c for c in page.context.cookies() if c["name"] == "portway_ui")
    forged = requests.post(
        f"{server.url}/ui/r/{REPO}/delete",
        data={"image": "app", "tag": "2.0", "csrf": "guess"},
        cookies={"portway_ui": session["value"]},
        allow_redirects=False,
        timeout=30,
    )
    assert forged.status_code == 403
    assert "2.0" in tags_of(server, admin, f"{REPO}/app")
    stolen = requests.get(f"{server.url}/ui/", cookies={"portway_ui": session["value"] + "x"},
                          allow_redirects=False, timeout=30)  # fmt: skip
    assert stolen.status_code == 303 and "/ui/login" in stolen.headers["Location"]
