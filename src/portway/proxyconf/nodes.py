"""The Portway nodes behind one front door (`portway proxy-config ... --nodes A,B,C`).

Every node serves every request (the metadata in one database, the blobs in one store), so
the proxy spreads requests round-robin with no affinity, and asks each node's `/readyz`
where the proxy can check on its own: a node that is draining for a restart, or lost its
database or bucket, answers 503 there and gets no new requests until it answers 200 again.
"""

from __future__ import annotations

from portway.proxyconf.routes import ProxyConfigError, Upstream, parse_upstream

HEALTH_PATH = "/readyz"
HEALTH_INTERVAL = 2  # seconds between checks of one node
HEALTH_FALL = 2  # failed checks in a row before a node is taken out
HEALTH_RISE = 1  # passed checks before it is put back


def parse_nodes(value: str | tuple[str, ...]) -> tuple[Upstream, ...]:
    """`HOST:PORT,HOST:PORT,...` (or `http://HOST:PORT` each) -> the nodes, in order."""
    items = value.split(",") if isinstance(value, str) else value
    nodes: list[Upstream] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            node = parse_upstream(item)
        except ProxyConfigError as exc:
            raise ProxyConfigError(str(exc).replace("--upstream", "--nodes")) from None
        if node in nodes:
            raise ProxyConfigError(f"--nodes: {node.address} is listed twice")
        nodes.append(node)
    if not nodes:
        raise ProxyConfigError("--nodes: expected HOST:PORT,HOST:PORT,... (at least one node)")
    return tuple(nodes)
