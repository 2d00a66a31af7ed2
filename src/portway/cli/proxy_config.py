"""`portway proxy-config SERVER`: a reverse-proxy configuration from the Portway settings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from portway.config import load_settings
from portway.proxyconf import ProxyConfigError, ProxyOptions, build_plan, render
from portway.proxyconf.nodes import parse_nodes
from portway.proxyconf.render import SERVERS, ProxyServer
from portway.proxyconf.routes import DEFAULT_TIMEOUT, CertPair
from portway.proxyconf.snippet import nginx_snippet


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy-config",
        help="print a reverse-proxy configuration (nginx, apache, haproxy, caddy)",
        description=(
            "Render a complete configuration for a reverse proxy in front of Portway: each "
            '[[connector]] with a repository and served_by = "proxy" becomes a port the proxy '
            "listens on, each [[host]] a virtual host on --https-port (with certificates) or "
            "--http-port. Docker paths go to /repository/<repo>/ on Portway's main listener; "
            "everything else passes through unchanged."
        ),
    )
    parser.add_argument("server", choices=SERVERS)
    parser.add_argument("--config", type=Path, default=None, help="Portway configuration file")
    parser.add_argument(
        "--tls-cert",
        action="append",
        default=[],
        metavar="CERT",
        help="PEM certificate; repeat with --tls-key for several: on every TLS port each name "
        "of each certificate gets the certificate whose SAN covers it, the first one is the "
        "default",
    )
    parser.add_argument(
        "--tls-key",
        action="append",
        default=[],
        metavar="KEY",
        help="PEM private key for the --tls-cert at the same position",
    )
    parser.add_argument(
        "--upstream",
        default=None,
        metavar="URL",
        help="Portway's main listener as the proxy reaches it "
        "(default: [server] listen, 0.0.0.0 as 127.0.0.1)",
    )
    parser.add_argument(
        "--nodes",
        default=None,
        metavar="HOST:PORT,...",
        help="several Portway nodes (their main listeners) sharing one database and blob "
        "store: requests go round-robin with no affinity, and the proxy checks each node's "
        "/readyz where it can (HAProxy, Apache, Caddy); the host listener (--http-port or "
        "--https-port) passes everything through even without [[host]] entries",
    )
    parser.add_argument(
        "--http-port", type=int, default=80, help="port for host mappings without TLS (default 80)"
    )
    parser.add_argument(
        "--https-port", type=int, default=443, help="port for host mappings with TLS (default 443)"
    )
    parser.add_argument(
        "--bind",
        default=None,
        metavar="ADDRESS",
        help="address the host-mapping listener binds (default: all)",
    )
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="put pid file, logs and temporary files in DIR "
        "(default: the server's usual /run, /var/log, /var/lib paths)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"read/send timeouts for slow layers (default {DEFAULT_TIMEOUT})",
    )
    parser.add_argument(
        "--caddy-offline",
        action="store_true",
        help="Caddy: admin endpoint off and no automatic HTTPS (tests, air-gapped hosts)",
    )
    parser.add_argument(
        "--apache-modules",
        type=Path,
        default=Path("/usr/lib/apache2/modules"),
        metavar="DIR",
        help="where Apache's mod_*.so files are",
    )
    parser.add_argument(
        "--snippet",
        action="store_true",
        help="nginx: only what goes in /etc/nginx/conf.d/portway.conf (inside the main "
        "config's http block), leaving the distribution's nginx.conf and other sites alone",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="FILE",
        help="write here instead of standard output",
    )
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> ProxyOptions:
    certs: list[str] = args.tls_cert
    keys: list[str] = args.tls_key
    if len(certs) != len(keys):
        raise ProxyConfigError("give --tls-cert and --tls-key in pairs (one key per certificate)")
    runtime: Path | None = args.runtime_dir
    return ProxyOptions(
        upstream=args.upstream,
        nodes=parse_nodes(args.nodes) if args.nodes is not None else (),
        certs=tuple(
            CertPair(Path(c).resolve(), Path(k).resolve()) for c, k in zip(certs, keys, strict=True)
        ),
        http_port=args.http_port,
        https_port=args.https_port,
        bind=args.bind,
        runtime_dir=runtime.resolve() if runtime else None,
        timeout=args.timeout,
        caddy_offline=args.caddy_offline,
        apache_modules=args.apache_modules,
    )


def run(args: argparse.Namespace) -> int:
    server: ProxyServer = args.server
    try:
        plan = build_plan(load_settings(args.config), options_from_args(args))
        text = render(server, plan)
        if args.snippet:
            if server != "nginx":
                raise ProxyConfigError("--snippet is for nginx (a conf.d file)")
            text = nginx_snippet(text, (args.http_port, args.https_port))
    except ProxyConfigError as exc:
        print(f"portway proxy-config: {exc}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"portway proxy-config: note: {note}", file=sys.stderr)
    output: Path | None = args.output
    if output is None:
        sys.stdout.write(text)
    else:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, output)
    return 0
