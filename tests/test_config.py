"""Configuration: unknown keys and bad values stop the server with a message naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portway.config import ConfigError, load_settings


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return str(caught.value)


def _serve(path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """`portway serve --config PATH` with `environ` added (it must refuse and exit)."""
    return subprocess.run(
        [sys.executable, "-m", "portway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **environ},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nlisten = "127.0.0.1:8081"\nlsiten = "x"\n', "server.lsiten: unknown key"),
        ('[server]\nlisten = "8081"\n', "server.listen: expected HOST:PORT"),
        ("[server]\nworkers = -1\n", "server.workers"),
        ("[server]\nbody_idle_timeout = 0\n", "server.body_idle_timeout"),
        ('[[repository]]\nname = "Bad_Name"\ntype = "hosted"\n', "repository[0](Bad_Name).name"),
        (
            '[[repository]]\nname = "x"\ntype = "hosted"\nwrite_policy = "sometimes"\n',
            "repository[0](x).write_policy",
        ),
        ('[[repository]]\nname = "hub"\ntype = "proxy"\n', "needs remote_url"),
        (
            '[[repository]]\nname = "a"\ntype = "group"\nmembers = ["b"]\n'
            '[[repository]]\nname = "b"\ntype = "group"\nmembers = ["a"]\n',
            "group cycle: a -> b -> a",
        ),
        (
            '[[repository]]\nname = "hub"\ntype = "proxy"\nremote_url = "http://r"\n'
            '[[repository]]\nname = "g"\ntype = "group"\nmembers = ["hub"]\n'
            'writable_member = "hub"\n',
            "writable_member 'hub' must be a hosted repository",
        ),
        ('[[connector]]\nlisten = "0.0.0.0:8086"\nrepository = "nope"\n', "unknown repository"),
        (
            '[[connector]]\nlisten = "0.0.0.0:8086"\ntls = { cert = "a", key = "b", ca = "c" }\n',
            "connector[0].tls.ca: unknown key",
        ),
        ("[security]\ntoken_ttl = 5\n", "security.token_ttl"),
        ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "server.trusted_proxies"),
        ('[storage]\nredirect_networks = ["nope"]\n', "storage.redirect_networks"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_serve_refuses_to_start_on_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "portway.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nlog_levle = "info"\n')
    run = _serve(path)
    assert run.returncode == 2
    assert "server.log_levle: unknown key" in run.stderr
    assert not (tmp_path / "data").exists()  # nothing was created


@pytest.mark.parametrize("key", ["online", "content_max_age"])
def test_keys_that_did_nothing_are_refused_with_the_reason(tmp_path: Path, key: str) -> None:
    """`online` and `content_max_age` were accepted and ignored; a file that still sets one
    is told that and why, not left believing it took effect (ADR 14)."""
    text = f'[[repository]]\nname = "hub"\ntype = "proxy"\nremote_url = "http://r"\n{key} = 1\n'
    message = _error(tmp_path, text)
    assert f"repository[0](hub).{key}: removed: it never did anything" in message


def test_an_environment_typo_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "portway.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    run = _serve(path, PORTWAY_SERVER__LISTNE="127.0.0.1:9000")
    assert run.returncode == 2
    assert "environment variable PORTWAY_SERVER__LISTNE" in run.stderr
    assert "[server] has no key 'listne'" in run.stderr
    assert "server.listne: unknown key" not in run.stderr
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"PORTWAY_LISTEN": "8081"})
    assert "environment variable PORTWAY_LISTEN (sets [server] listen): expected HOST:PORT" in str(
        caught.value
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"PORTWAY_SERVER__WORKERS": "-1"})
    assert "environment variable PORTWAY_SERVER__WORKERS" in str(caught.value)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "portway.toml"
    path.write_text('[server]\ndata_dir = "data"\n')
    settings = load_settings(path, environ={})
    assert settings.server.data_dir == (tmp_path / "data").resolve()
    assert [r.name for r in settings.repository] == ["docker-hosted"]  # the embedded default
    assert settings.repository[0].path_routing
    assert settings.security.enabled
    env = load_settings(path, environ={"PORTWAY_SERVER__LISTEN": "127.0.0.1:9000"})
    assert env.server.listen == "127.0.0.1:9000"
