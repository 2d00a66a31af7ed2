"""Reverse-proxy configurations (nginx, Apache httpd, HAProxy, Caddy) from Portway's settings."""

from portway.proxyconf.render import SERVERS, ProxyServer, render
from portway.proxyconf.routes import (
    CertPair,
    ProxyConfigError,
    ProxyOptions,
    ProxyPlan,
    build_plan,
)

__all__ = [
    "SERVERS",
    "CertPair",
    "ProxyConfigError",
    "ProxyOptions",
    "ProxyPlan",
    "ProxyServer",
    "build_plan",
    "render",
]
