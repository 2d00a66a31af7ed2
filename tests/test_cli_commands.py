"""The command table of `portway`: a command line naming a command loads only the module
that registers it, so `portway serve` keeps no other command's code in memory."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

from portway.cli.main import COMMAND_MODULES, COMMANDS, build_parser


def _registered(module: str) -> list[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(sub)
    return list(sub.choices)


def test_the_table_names_the_commands_each_module_registers() -> None:
    for module in COMMAND_MODULES:
        assert sorted(_registered(module)) == sorted(
            c for c, m in COMMANDS.items() if m == module
        ), module


def test_the_full_parser_has_every_command() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)


def _command_modules_loaded(*argv: str) -> list[str]:
    script = (
        "import json, sys\n"
        "from portway.cli.main import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('portway.cli.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_serve_loads_no_other_command() -> None:
    assert _command_modules_loaded("serve", "--help") == ["portway.cli.main", "portway.cli.serve"]


def test_a_line_without_a_command_loads_them_all() -> None:
    loaded = _command_modules_loaded("--help")
    assert set(COMMAND_MODULES) <= set(loaded)
    assert "usage: portway [-h] [--version] COMMAND" in subprocess.run(
        [sys.executable, "-m", "portway", "--help"], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout
