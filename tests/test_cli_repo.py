"""`portway repo list|show`: what each repository holds, read without side effects."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import requests

from conftest import PortwayFactory
from support import toml
from support.server import PortwayServer


def _portway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args], capture_output=True, text=True, timeout=60
    )


def _push_config_only_image(url: str, image: str) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    base = f"{url}/repository/team-hosted/v2/{image}"
    r = requests.post(f"{base}/blobs/uploads/", params={"digest": digest}, data=config, timeout=10)
    assert r.status_code == 201, r.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest,
            "size": len(config),
        },
        "layers": [],
    }
    r = requests.put(
        f"{base}/manifests/1",
        data=json.dumps(manifest),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert r.status_code == 201, r.text


def test_list_and_show_count_hosted_and_group_images(portway_factory: PortwayFactory) -> None:
    server = portway_factory(
        repositories=[
            {"name": "team-hosted", "type": "hosted"},
            {"name": "team-group", "type": "group", "members": ["team-hosted"]},
        ]
    )
    _push_config_only_image(server.url, "tools/jq")
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
