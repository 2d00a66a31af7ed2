"""`portway doctor URL` against the quick start: the default install, security on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from conftest import PortwayFactory
from support.server import PortwayServer


def _doctor(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", "doctor", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def quick_start(portway_factory: PortwayFactory) -> PortwayServer:
    """The embedded default's repositories (`docker-hosted`, path routing) with security on,
    and a port connector bound to `docker-hosted` (a URL that names its repository)."""
    return portway_factory(security={"enabled": True}, connectors=[{"repository": "docker-hosted"}])


def test_doctor_passes_on_the_default_install(quick_start: PortwayServer) -> None:
    password = quick_start.admin_password()
    assert password
    run = _doctor(quick_start.url, "--user", "admin", stdin=password + "\n")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS  log in as admin" in run.stdout
    assert "probing with image docker-hosted/portway-doctor" in run.stdout
    assert "PASS  a 10 MiB chunk passes" in run.stdout
    assert run.stdout.strip().endswith(" 0 failed")
    # The probe committed nothing.
    catalog = requests.get(f"{quick_start.url}/v2/_catalog", auth=("admin", password), timeout=30)
    assert catalog.json()["repositories"] == []
    # On a port bound to one repository the image needs no repository part.
    bound = f"http://127.0.0.1:{quick_start.connector_port(0)}"
    run = _doctor(bound, "--user", "admin", stdin=password + "\n")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "probing with image portway-doctor " in run.stdout


def test_doctor_stops_at_a_wrong_password(quick_start: PortwayServer) -> None:
    run = _doctor(quick_start.url, "--user", "admin", stdin="not-the-password\n")
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == ["FAIL  log in as admin: the registry refused the user name or password (401)"]
    assert "portway user passwd admin" in run.stdout
    assert not any("upload" in line or "chunk" in line for line in lines)


def test_doctor_without_user_says_to_pass_one(quick_start: PortwayServer) -> None:
    run = _doctor(quick_start.url)
    assert run.returncode == 1
    assert "FAIL  log in: the registry asks for a login" in run.stdout
    assert "pass --user NAME" in run.stdout
