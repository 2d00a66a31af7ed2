"""`portway repo list|show`: what each repository holds, read without side effects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from conftest import PortwayFactory
from push_support import Registry, push_config_only
from support import toml
from support.server import PortwayServer


def _portway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args], capture_output=True, text=True, timeout=60
    )


def test_list_and_show_count_hosted_and_group_images(portway_factory: PortwayFactory) -> None:
    server = portway_factory(
        repositories=[
            {"name": "team-hosted", "type": "hosted"},
            {"name": "team-group", "type": "group", "members": ["team-hosted"]},
        ]
    )
    push_config_only(Registry(server.repository_url("team-hosted")), "tools/jq", "1")
    listed = _portway("repo", "list", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["team-hosted"][-1] == "1"
    assert rows["team-group"][-1] == "1"  # a group shows what its members hold
    shown = _portway("repo", "show", "team-group", "--config", str(server.config_path))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["images"] == ["tools/jq"]


def test_reading_repositories_creates_no_admin(tmp_path: Path) -> None:
    """The admin's first password is only ever shown by `portway serve`: listing
    repositories of a new data directory must not create the account silently."""
    config = tmp_path / "portway.toml"
    config.write_text(toml.dumps({"server": {"data_dir": str(tmp_path / "data")}}))
    listed = _portway("repo", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "docker-hosted" in listed.stdout
    assert not (tmp_path / "data" / "admin.password").exists()


def test_show_prints_usable_urls_and_list_no_policy_where_there_is_none(tmp_path: Path) -> None:
    """On a wildcard listen `repo show` prints a URL a client can use (and says so), and `repo
    list` shows a write policy only for hosted repositories."""
    server = PortwayServer(
        tmp_path / "portway",
        repositories=[
            {"name": "team-hosted", "type": "hosted", "write_policy": "allow_once"},
            {"name": "hub", "type": "proxy", "remote_url": "http://127.0.0.1:9"},
            {"name": "team-group", "type": "group", "members": ["team-hosted", "hub"]},
        ],
    )
    server.server_extra["listen"] = f"0.0.0.0:{server.port}"
    server.config_path.write_text(toml.dumps(server._config()))
    server.start()
    try:
        shown = _portway("repo", "show", "team-hosted", "--config", str(server.config_path))
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert "0.0.0.0" not in "".join(info["routes"])
        nexus = info["routes"][0]
        assert nexus == f"http://127.0.0.1:{server.port}/repository/team-hosted/v2/"
        answer = requests.get(nexus, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert "every address" in info["routes_note"]
        assert info["write_policy"] == "allow_once"
        hub = _portway("repo", "show", "hub", "--config", str(server.config_path))
        proxy = json.loads(hub.stdout)
        assert "write_policy" not in proxy and "members" not in proxy
        listed = _portway("repo", "list", "--config", str(server.config_path))
        assert listed.returncode == 0, listed.stderr
        policy = {line.split()[0]: line.split()[3] for line in listed.stdout.splitlines()[1:]}
        assert policy == {"team-hosted": "allow_once", "hub": "-", "team-group": "-"}
    finally:
        server.stop()
