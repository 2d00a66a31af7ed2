"""The Makefile an operator and CI run: `make serve` installs only what serving needs, and
`make test` shows progress a person can follow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml in a scratch folder, with a `.venv` whose python is this
    one and whose install stamps are fresh (so `make pytest` installs nothing)."""
    work = tmp_path / "checkout"
    (work / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    python = work / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return work


def _make(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(work), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_make_serve_installs_no_test_tools(tmp_path: Path) -> None:
    work = _checkout(tmp_path)
    serve = _make(work, "-n", "serve")
    assert serve.returncode == 0, serve.stderr
    installs = [line for line in serve.stdout.splitlines() if "pip install" in line]
    assert installs == [".venv/bin/pip install --quiet -e ."]
    assert "[test]" not in serve.stdout
    venv = _make(work, "-n", "venv")
    assert "-e '.[test]'" in venv.stdout  # the development environment still gets them


def test_make_pytest_names_each_test_and_the_slowest_ones(tmp_path: Path) -> None:
    work = _checkout(tmp_path)
    for stamp in (".portway-serve-installed", ".portway-test-installed"):
        (work / ".venv" / stamp).touch()
    suite = work / "tests"
    suite.mkdir()
    (suite / "test_first.py").write_text("def test_one():\n    pass\n")
    (suite / "test_second.py").write_text(
        "import time\n\ndef test_slow():\n    time.sleep(1.1)\n\ndef test_two():\n    pass\n"
    )
    run = _make(work, "pytest")
    assert run.returncode == 0, run.stdout + run.stderr
    tests = ("test_first.py::test_one", "test_second.py::test_slow", "test_second.py::test_two")
    for test in tests:
        line = rf"^\[gw\d\] .*PASSED tests/{test}\s*$"
        assert re.search(line, run.stdout, re.MULTILINE), run.stdout
    assert "created: 2/2 workers" in run.stdout
    assert "slowest 15 durations" in run.stdout
    assert "test_second.py::test_slow" in run.stdout


def test_make_pytest_fails_when_nothing_is_collected(tmp_path: Path) -> None:
    work = _checkout(tmp_path)
    for stamp in (".portway-serve-installed", ".portway-test-installed"):
        (work / ".venv" / stamp).touch()
    (work / "empty").mkdir()
    run = _make(work, "pytest", "PYTEST_ARGS=empty")
    assert run.returncode != 0
    assert "pytest collected no tests" in run.stderr


def test_ci_runs_exactly_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert script[-1] == "exec make test"
