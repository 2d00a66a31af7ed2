"""The admin API's OpenAPI 3.1 document: generated from the route table, valid by a standard
validator (openapi-spec-validator), naming every route the app mounts; and a bounded
schemathesis run against the served document on a real server finds no 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from admin_api_support import start_server
from portway.api.views import operations
from support.server import PortwayServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    """One server (security on, 2 workers) for the module: the document test only reads, and
    runs before the schemathesis run that changes what the server holds."""
    srv = start_server(tmp_path_factory.mktemp("openapi"), workers=2)
    try:
        yield srv
    finally:
        srv.stop()


def test_document_is_valid_and_names_every_route(server: PortwayServer) -> None:
    answer = requests.get(f"{server.url}/api/openapi.json")
    assert answer.status_code == 200  # no credentials needed to read it
    doc = answer.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    mounted = {(op.method, op.path) for op in operations()}
    assert mounted <= listed
    assert ("GET", "/api/openapi.json") in listed
    for must in (
        ("GET", "/service/rest/v1/repositories"),
        ("POST", "/service/rest/v1/repositories/docker/hosted"),
        ("PUT", "/service/rest/v1/repositories/docker/group/{name}"),
        ("GET", "/service/rest/v1/security/privileges"),
        ("GET", "/service/rest/v1/search"),
        ("GET", "/api/v1/repositories/{name}/images/{image}/tags"),
    ):
        assert must in listed, must
    hosted = doc["components"]["schemas"]["HostedStorageAttributes"]
    assert hosted["properties"]["writePolicy"]["enum"] == ["allow", "allow_once", "deny"]
    # Every path parameter of every operation is declared.
    for path, item in doc["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path))


def _schemathesis(
    server: PortwayServer, password: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.url}/api/openapi.json",
        "--auth",
        f"admin:{password}",
        # Not the operations on one user (edit, delete, change password): the run would edit
        # or delete the account it signs in with, and a run locked out tests nothing.
        "--exclude-path-regex",
        "^/service/rest/v1/security/users/",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "3",
        "--phases",
        "fuzzing",
        "--seed",
        "13",
        "--no-shrink",
        "--max-time",
        "25",
        "--request-timeout",
        "20",
    ]
    # Its own state folder (.schemathesis) goes into the test's folder, not the checkout.
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=cwd)


def test_schemathesis_finds_no_server_error(server: PortwayServer, tmp_path: Path) -> None:
    password = server.admin_password()
    assert password
    run = _schemathesis(server, password, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert re.search(r"\d+ generated, \d+ passed", output), output[-3000:]
    log = server.log()
    assert not re.search(r'" 5\d\d in=', log), "a 5xx in the access log"
    answers = re.findall(r'" (\d{3}) in=.*schemathesis', log)
    refused = sum(status in ("401", "429") for status in answers)
    assert refused < len(answers) / 2, (refused, len(answers))  # it stayed signed in
