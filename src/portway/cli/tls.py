"""`portway tls init`: a local CA and one server certificate per host name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from portway.config import load_settings
from portway.tls.ca import init_tls, instructions


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tls", help="TLS helpers (a local CA for trying things out)")
    sub = parser.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    init = sub.add_parser(
        "init",
        help="create a local CA and one server certificate per host name",
        description=(
            "Create (or reuse) a local CA in DIR and sign one server certificate per --host. "
            "A host may be a DNS name, a wildcard (*.docker.example.com) or an IP address."
        ),
    )
    init.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME",
        help="host name the certificate is for (repeat for more)",
    )
    init.add_argument(
        "--dir", type=Path, default=None, help="where to write the files (default: <data_dir>/tls)"
    )
    init.add_argument("--config", type=Path, default=None, help="Portway configuration file")
    init.add_argument("--days", type=int, default=825, help="server certificate lifetime")
    init.add_argument(
        "--port", type=int, default=None, help="port clients will use, for the printed instructions"
    )
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    directory: Path | None = args.dir
    if directory is None:
        directory = load_settings(args.config).server.data_dir / "tls"
    try:
        result = init_tls(directory, args.host, days=args.days)
    except ValueError as exc:
        print(f"portway tls init: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(instructions(result, port=args.port))
    return 0
