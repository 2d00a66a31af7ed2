"""`portway user add|passwd` from scripts and pipes, its password limits, `portway --version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from conftest import PortwayFactory
from portway import __version__
from support import toml


def _config(tmp_path: Path, security: dict[str, object] | None = None) -> Path:
    path = tmp_path / "portway.toml"
    doc: dict[str, object] = {"server": {"data_dir": str(tmp_path / "data")}}
    if security:
        doc["security"] = security
    path.write_text(toml.dumps(doc))
    return path


def _portway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Without a terminal: stdin is the given text, or /dev/null."""
    return subprocess.run(
        [sys.executable, "-m", "portway", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line_refusal(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    for word in words:
        assert word in run.stderr, run.stderr


def test_user_add_without_a_terminal_says_to_use_password_stdin(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run = _portway("user", "add", "bob", "--config", str(config))
    _one_line_refusal(run, "--password-stdin")


def test_every_bad_password_gets_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    too_long = _portway(
        "user", "add", "bob", "--password-stdin", "--config", str(config), stdin="x" * 2000 + "\n"
    )
    _one_line_refusal(too_long, "too long", "1024 bytes")
    too_short = _portway(
        "user", "add", "bob", "--password-stdin", "--config", str(config), stdin="short7!\n"
    )
    _one_line_refusal(too_short, "too short", "at least 8", "min_password_length")
    empty = _portway("user", "add", "bob", "--password-stdin", "--config", str(config), stdin="")
    _one_line_refusal(empty, "too short")
    listed = _portway("user", "list", "--config", str(config))
    assert "bob" not in listed.stdout  # nothing was created by a refused command
    added = _portway(
        "user", "add", "bob", "--password-stdin", "--config", str(config), stdin="eight-ch\n"
    )
    assert added.returncode == 0, added.stderr
    changed = _portway(
        "user", "passwd", "bob", "--password-stdin", "--config", str(config), stdin="no\n"
    )
    _one_line_refusal(changed, "too short")


def test_minimum_password_length_is_configurable(tmp_path: Path) -> None:
    config = _config(tmp_path, {"min_password_length": 12})
    run = _portway("user", "add", "bob", "--password", "eleven-char", "--config", str(config))
    _one_line_refusal(run, "at least 12")
    run = _portway("user", "add", "bob", "--password", "twelve-chars", "--config", str(config))
    assert run.returncode == 0, run.stderr


def test_a_user_added_from_a_pipe_can_log_in(portway_factory: PortwayFactory) -> None:
    server = portway_factory(security={"enabled": True})
    added = _portway(
        "user",
        "add",
        "ci-bot",
        "--password-stdin",
        "--config",
        str(server.config_path),
        stdin="ci-bot-Secret-1\n",
    )
    assert added.returncode == 0, added.stderr
    answer = requests.get(f"{server.url}/v2/", auth=("ci-bot", "ci-bot-Secret-1"), timeout=30)
    assert answer.status_code == 200, answer.text


def test_version() -> None:
    run = _portway("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"portway {__version__}"
