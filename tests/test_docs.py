"""What the README and docs promise matches the code and the commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from portway.auth.keys import KeyRing

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_license_file_is_the_one_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_quick_start_shows_podman_and_fetches_the_image_it_tags() -> None:
    quick = _quick_start()
    podman = [line for line in quick.splitlines() if line.startswith("podman ")]
    assert podman and all("--tls-verify=false" in line for line in podman)
    tagged = re.search(r"^docker tag (\S+) ", quick, re.MULTILINE)
    assert tagged is not None
    pulled = quick.index(f"docker pull {tagged.group(1)}")
    assert pulled < tagged.start()  # the image is fetched before it is tagged


def test_readme_and_key_help_agree_on_when_a_removed_key_stops_working() -> None:
    # A running server stats the key folder about once a second (KeyRing.reload_if_changed)
    # and drops a removed key's tokens then; tests/test_token_cache.py times it.
    assert hasattr(KeyRing, "reload_if_changed")
    shown = subprocess.run(
        [sys.executable, "-m", "portway", "key", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "removal within a second" in " ".join(shown.stdout.split())
    flat = " ".join(line.lstrip("# ") for line in README.splitlines())
    assert "refuse its tokens within a second" in " ".join(flat.split())
    assert "notice at once" not in README


def test_nginx_is_not_told_to_overwrite_the_distribution_config() -> None:
    assert "> /etc/nginx/nginx.conf" not in README
    assert "conf.d/portway.conf" in README
    proxy_doc = (ROOT / "docs" / "reverse-proxy.md").read_text()
    assert "> /etc/nginx/nginx.conf" not in proxy_doc
    assert "UI, REST API" not in proxy_doc  # neither exists yet


def test_readme_documents_every_configuration_key() -> None:
    from portway.config import (
        CleanupPolicyConfig,
        ConnectorConfig,
        DatabaseConfig,
        HostConfig,
        JobConfig,
        JobsConfig,
        RepositoryConfig,
        SecurityConfig,
        ServerConfig,
        StorageConfig,
    )

    models = (ServerConfig, SecurityConfig, DatabaseConfig, StorageConfig, RepositoryConfig)
    models += (CleanupPolicyConfig, JobConfig, JobsConfig)
    for model in (*models, ConnectorConfig, HostConfig):
        for key in model.model_fields:
            documented = re.search(rf"^\s*{key} = ", README, re.MULTILINE) or f"`{key}`" in README
            assert documented, f"{model.__name__}.{key} is not in the README"


def test_readme_documents_doctor() -> None:
    assert "## Checking a deployment: `portway doctor`" in README
    assert "portway doctor http://127.0.0.1:8081 --user admin" in README
