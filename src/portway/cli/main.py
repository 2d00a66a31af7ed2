"""`portway ...`: one argparse tree; each command module adds its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from portway.config import ConfigError

# Each module exposes `register(subparsers)`; the parser it adds sets `func(args) -> int`.
# Keyed by the commands each registers: a command line naming one loads only its module
# (what `portway serve` keeps in memory for as long as it runs), anything else all of them.
COMMANDS = {
    "serve": "portway.cli.serve",
    "repo": "portway.cli.repo",
    "proxy-config": "portway.cli.proxy_config",
    "tls": "portway.cli.tls",
    "doctor": "portway.cli.doctor",
    "user": "portway.cli.users",
    "role": "portway.cli.users",
    "key": "portway.cli.users",
    "audit": "portway.cli.db",
    "db": "portway.cli.db",
    "gc": "portway.cli.gc",
    "cleanup": "portway.cli.gc",
    "fsck": "portway.cli.gc",
    "backup": "portway.cli.backup",
    "jobs": "portway.cli.jobs",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("portway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from portway import __version__

        return __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of `command`'s module when it names one."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="portway",
        description="Portway: hosted, proxy and group container repositories behind ports, "
        "host names and paths.",
    )
    parser.add_argument("--version", action="version", version=f"portway {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in names:
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
    words = _kid_last(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
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
