"""What every settings table shares: strict models, the operator-worded error, address checks."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """A configuration problem, worded for the operator (names the key at fault)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not host:
        raise ValueError(f"expected HOST:PORT with a host (0.0.0.0 for all), got {value!r}")
    return value


def check_networks(value: tuple[str, ...]) -> tuple[str, ...]:
    """Each an address or network (CIDR), as `ipaddress` reads them."""
    for net in value:
        ipaddress.ip_network(net, strict=False)
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
