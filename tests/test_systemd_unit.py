"""deploy/portway.service: systemd accepts it, it is hardened, its stop timeout outlasts the
drain, and the command it runs is a working `portway serve` (ADR 18)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from portway.config import ServerConfig
from portway.http.supervisor import STOP_MARGIN
from support import toml
from support.ports import free_port
from support.process import ManagedProcess, http_answers

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "portway.service"
PORTWAY = Path(sys.executable).with_name("portway")  # the venv's console script


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def _exec_start() -> list[str]:
    return shlex.split(_service()["ExecStart"])


def _with_portway_here(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart's program replaced by this checkout's `portway` (verify checks
    that the program exists); every other line as shipped."""
    unit = tmp_path / "portway.service"
    unit.write_text(text.replace(_exec_start()[0], str(PORTWAY), 1))
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install-test-deps.sh"
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = _verify(_with_portway_here(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    # and it does look: a misspelt option is reported
    (tmp_path / "bad").mkdir()
    bad = _with_portway_here(tmp_path / "bad", UNIT.read_text() + "[Service]\nProtectSistem=yes\n")
    assert "ProtectSistem" in _verify(bad).stderr


def test_the_unit_is_hardened_and_outlasts_the_drain() -> None:
    service = _service()
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "User": "portway",
    }.items():
        assert service.get(key) == value, key
    assert service["ReadWritePaths"] == "/var/lib/portway"
    assert int(service["LimitNOFILE"]) >= 4096
    drain = ServerConfig().drain_timeout
    assert float(service["TimeoutStopSec"]) > drain + STOP_MARGIN


def test_exec_start_runs_portway_serve_and_stops_with_status_0(tmp_path: Path) -> None:
    argv = _exec_start()
    assert Path(argv[0]).name == "portway" and argv[1] == "serve", argv
    config_at = argv.index("--config") + 1
    assert argv[config_at] == "/etc/portway/portway.toml"
    port = free_port()
    config = tmp_path / "portway.toml"
    config.write_text(
        toml.dumps(
            {
                "server": {
                    "listen": f"127.0.0.1:{port}",
                    "data_dir": str(tmp_path / "data"),
                    "workers": 2,
                },
                "security": {"enabled": False},
                "repository": [{"name": "docker-hosted", "type": "hosted"}],
            }
        )
    )
    # the unit's own command line, with this checkout's program and a temporary config
    command = [str(PORTWAY), *argv[1:config_at], str(config), *argv[config_at + 1 :]]
    proc = ManagedProcess(command, tmp_path / "portway.log", cwd=tmp_path)
    proc.start()
    try:
        proc.wait_until(lambda: http_answers(f"http://127.0.0.1:{port}/v2/"), 60, "/v2/")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)  # what systemd sends (KillMode=mixed: main only)
        start = time.monotonic()
        status = proc.proc.wait(float(_service()["TimeoutStopSec"]))
        print(f"stopped in {time.monotonic() - start:.1f}s")
        assert status == 0, proc.log()[-3000:]
    finally:
        proc.stop()


def test_portway_serve_knows_every_option_the_unit_passes() -> None:
    result = subprocess.run(
        [str(PORTWAY), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for arg in _exec_start()[2:]:
        if arg.startswith("--"):
            assert arg in result.stdout, arg
