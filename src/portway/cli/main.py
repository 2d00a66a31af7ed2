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
    "portway.cli.db",
    "portway.cli.gc",
    "portway.cli.backup",
    "portway.cli.jobs",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("portway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from portway import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="portway",
        description="Portway: hosted, proxy and group container repositories behind ports, "
        "host names and paths.",
    )
    parser.add_argument("--version", action="version", version=f"portway {_version()}")
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


def _kid_last(argv: list[str]) -> list[str]:
    """`portway key remove KID`: a kid is base64url and one in 64 begins with "-", which argparse
    would read as an option; move it behind `--` so it always parses as the positional KID."""
    if argv[:2] != ["key", "remove"]:
        return argv
    from portway.auth.keys import KID_RE

    kids = [a for a in argv[2:] if a.startswith("-") and len(a) >= 16 and KID_RE.match(a)]
    if len(kids) != 1 or "--" in argv:
        return argv
    return [a for a in argv if a != kids[0]] + ["--", kids[0]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_kid_last(list(sys.argv[1:] if argv is None else argv)))
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
