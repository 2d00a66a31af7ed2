"""Render a proxy plan with the package's Jinja2 templates (one per server)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import jinja2

from portway.proxyconf import nodes
from portway.proxyconf.routes import CertPair, ProxyConfigError, ProxyPlan

ProxyServer = Literal["nginx", "apache", "haproxy", "caddy"]
SERVERS: tuple[ProxyServer, ...] = get_args(ProxyServer)
TEMPLATES: dict[ProxyServer, str] = {
    "nginx": "nginx.conf.j2",
    "apache": "apache2.conf.j2",
    "haproxy": "haproxy.cfg.j2",
    "caddy": "Caddyfile.j2",
}


def haproxy_crt(pair: CertPair) -> Path:
    """The file HAProxy 2.6 loads for a certificate and its key.

    HAProxy takes no key path: the key must be in the certificate file, or in the file named
    like the certificate plus `.key` (`server.crt.key`).
    """
    if pair.key == pair.cert or pair.key == Path(f"{pair.cert}.key"):
        return pair.cert
    if b"PRIVATE KEY-----" in pair.cert.read_bytes():
        return pair.cert
    raise ProxyConfigError(
        f"HAProxy reads the private key from the certificate file: run "
        f"`cat {pair.cert} {pair.key} > COMBINED.pem` and pass --tls-cert COMBINED.pem "
        f"--tls-key COMBINED.pem (`portway tls init` writes NAME.pem files like that)"
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("portway.proxyconf", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # configuration files, not HTML
    )
    env.filters["haproxy_crt"] = haproxy_crt
    return env


def runtime_paths(plan: ProxyPlan, server: ProxyServer) -> dict[str, Path]:
    """Where the server keeps its pid file, logs and temporary files.

    `--runtime-dir DIR` puts all of them in DIR (so the proxy runs unprivileged, or in a
    test); otherwise they follow Debian's layout for that server.
    """
    base = plan.options.runtime_dir
    if base is not None:
        return {
            "dir": base,
            "pid": base / f"{server}.pid",
            "error_log": base / f"{server}-error.log",
            "access_log": base / f"{server}-access.log",
            "temp": base,
        }
    defaults = {
        "nginx": ("/run", "/run/nginx-portway.pid", "/var/log/nginx", "/var/lib/nginx"),
        "apache": ("/run", "/run/apache2-portway.pid", "/var/log/apache2", "/etc/apache2"),
        "haproxy": ("/run", "/run/haproxy-portway.pid", "/var/log", "/var/lib/haproxy"),
        "caddy": ("/var/lib/caddy", "/run/caddy-portway.pid", "/var/log/caddy", "/var/lib/caddy"),
    }
    run, pid, logs, temp = (Path(p) for p in defaults[server])
    return {
        "dir": run,
        "pid": pid,
        "error_log": logs / "portway-error.log",
        "access_log": logs / "portway-access.log",
        "temp": temp,
    }


def render(server: ProxyServer, plan: ProxyPlan) -> str:
    """The complete configuration file for `server`."""
    if server not in TEMPLATES:
        raise ValueError(f"unknown proxy server {server!r}; choose one of {', '.join(SERVERS)}")
    template = _environment().get_template(TEMPLATES[server])
    return template.render(
        plan=plan,
        upstream=plan.upstream,
        options=plan.options,
        paths=runtime_paths(plan, server),
        timeout=plan.options.timeout,
        # Apache names the nodes' balancer in its proxy targets; the others name an
        # upstream group (nginx, HAProxy) or list the nodes (Caddy) in one place.
        backend="balancer://portway" if plan.balanced else plan.upstream.url,
        health={
            "path": nodes.HEALTH_PATH,
            "interval": nodes.HEALTH_INTERVAL,
            "fall": nodes.HEALTH_FALL,
            "rise": nodes.HEALTH_RISE,
        },
    )
