"""`portway ...`: one argparse tree; each command module adds its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from portway.config import ConfigError

# Each module exposes `register(subparsers)`; the parser it adds sets `func(args) -> int`.
COMMAND_MODULES = (
    "portway.cli.serve",
    "portway.cli.repo",
    "portway.cli.proxy_config",
    "portway.cli.tls",
    "portway.cli.doctor",
    "portway.cli.users",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="portway",
        description="Portway: hosted, proxy and group container repositories behind ports, "
        "host names and paths.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"portway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
