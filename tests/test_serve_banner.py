"""What `portway serve` says at start about the registry it serves."""

from __future__ import annotations

from pathlib import Path

from support.server import PortwayServer

CREATED = "Created a new data directory"


def test_banner_says_when_a_data_directory_is_created(tmp_path: Path) -> None:
    """A relative data_dir counts from the config file's folder: the start that creates it
    (a new, empty registry with a new admin) says where, and a restart says nothing."""
    server = PortwayServer(tmp_path / "etc-portway", server={"data_dir": "data"}, workers=1)
    expected = (tmp_path / "etc-portway" / "data").resolve()
    assert not expected.exists()
    server.start()
    try:
        first = server.log()
        line = next(line for line in first.splitlines() if CREATED in line)
        assert str(expected) in line and "new, empty registry" in line
        assert f"data_dir in {server.config_path}" in first
        # The first start's examples fetch the image they push, and show podman's flag.
        assert "docker pull hello-world && docker tag hello-world" in first
        assert f"podman pull --tls-verify=false {server.host}/docker-hosted/" in first
        server.restart()
        again = server.log()[len(first) :]
        assert "Portway serving on" in again
        assert CREATED not in again and "New registry" not in again
    finally:
        server.stop()


def test_banner_names_the_database_server_of_a_new_registry(
    tmp_path: Path, postgres_url: str
) -> None:
    """On PostgreSQL there is no portway.db to look for: the first start on an empty database
    says the database was new (by URL, no password); a restart says nothing."""
    server = PortwayServer(tmp_path / "node", workers=1, database_url=postgres_url)
    server.data_dir.mkdir(parents=True)  # an existing data folder: only the database is new
    server.start()
    try:
        first = server.log()
        line = next(line for line in first.splitlines() if "New registry" in line)
        assert f"the database {postgres_url} held no registry yet" in line
        assert "portway.db" not in first
        server.restart()
        assert "New registry" not in server.log()[len(first) :]
    finally:
        server.stop()
