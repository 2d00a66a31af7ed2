"""Route kinds: what a request asked for, in a few words an operator can graph and grep.

`route_kind(path)` names the kind (manifest, blob, upload, tags, catalog, referrers, token,
ping, search, metrics, health, other) from the path as sent, without the repository prefix
logic of the route table: `/repository/<repo>/v2/...`, a connector's `/v2/...` and a
repository path `/v2/<repo>/<image>/...` all end the same way. Image names may contain
"manifests" or "blobs", so the resource is found from the right, as the v2 dispatcher does.

`DISTRIBUTION_HANDLER` maps a kind (and, for uploads, whether the path names a session) onto
the `handler` label distribution gives its `registry_http_*` metrics.
"""

from __future__ import annotations

HEALTH_PATHS = frozenset(
    {
        "/livez",
        "/readyz",
        "/startupz",
        "/service/rest/v1/status",
        "/service/rest/v1/status/writable",
    }
)
METRICS_PATH = "/metrics"

# distribution's handler names (registry/handlers/app.go route names)
DISTRIBUTION_HANDLER = {
    "ping": "base",
    "manifest": "manifest",
    "blob": "blob",
    "upload": "blob_upload",
    "upload_chunk": "blob_upload_chunk",
    "tags": "tags",
    "catalog": "catalog",
    "referrers": "referrers",
}


def route_kind(path: str) -> str:
    """The kind of `path` (no query string); "upload_chunk" is an upload naming a session."""
    v2 = path.find("/v2/")
    if v2 < 0:
        if path.endswith("/v2"):
            return "ping"
        if path == METRICS_PATH:
            return "metrics"
        if path in HEALTH_PATHS:
            return "health"
        if "/v1/search" in path:
            return "search"
        return "other"
    rest = path[v2 + 3 :]
    if rest == "/":
        return "ping"
    if rest == "/token":
        return "token"
    if rest == "/_catalog":
        return "catalog"
    if rest.endswith(("/blobs/uploads/", "/blobs/uploads")):
        return "upload"
    head = rest.rpartition("/")[0]
    if head.endswith("/manifests"):
        return "manifest"
    if head.endswith("/blobs/uploads"):
        return "upload_chunk"
    if head.endswith("/blobs"):
        return "blob"
    if rest.endswith("/tags/list"):
        return "tags"
    if head.endswith("/referrers"):
        return "referrers"
    return "other"


def public_kind(kind: str) -> str:
    """The `route` label: an upload is an upload, whether or not it names its session."""
    return "upload" if kind == "upload_chunk" else kind
