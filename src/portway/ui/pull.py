"""Pull commands for an image, one per access method that reaches its repository and per
client: the same routes `portway repo show` prints (cli/repo.py), as pull references."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from portway.cli.repo import _reachable
from portway.config import Settings

CLIENTS = ("docker", "podman", "skopeo", "nerdctl")
_WILD = ("0.0.0.0", "::", "[::]", "")


@dataclass(frozen=True)
class Access:
    method: str  # "port connector", "host mapping", "repository path", "Nexus path"
    registry: str  # HOST[:PORT] a client names, or a URL for the Nexus path
    prefix: str  # path before the image name ("<repository>/" for repository paths)
    plain_http: bool
    note: str = ""


def _main_address(settings: Settings, browser_host: str) -> str:
    host, _, port = settings.server.listen.rpartition(":")
    if host in _WILD:  # what the browser used is what reaches this machine from there
        return browser_host.rsplit(":", 1)[0] + ":" + port if ":" in browser_host else (
            f"{browser_host}:{port}")  # fmt: skip
    return _reachable(settings.server.listen)


def _strip(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def accesses(
    settings: Settings, repository: str, path_routing: bool, browser_host: str
) -> list[Access]:
    main = _main_address(settings, browser_host)
    http = not settings.server.tls
    out: list[Access] = []
    for c in settings.connector:
        if c.repository != repository:
            continue
        if c.external_url:
            out.append(Access("port connector", _strip(c.external_url), "",
                              c.external_url.startswith("http:")))  # fmt: skip
        elif c.served_by != "proxy":
            host, _, port = c.listen.rpartition(":")
            address = f"{main.rsplit(':', 1)[0]}:{port}" if host in _WILD else _reachable(c.listen)
            out.append(Access("port connector", address, "", not c.tls))
    for h in settings.host:
        if h.name.startswith("*.") and h.repository is None:
            name = repository + h.name[1:]
        elif h.repository == repository:
            name = h.name
        else:
            continue
        registry = _strip(h.external_url) if h.external_url else name
        out.append(Access("host mapping", registry, "", http if not h.external_url else (
            h.external_url.startswith("http:"))))  # fmt: skip
    if path_routing:
        out.append(Access("repository path", main, f"{repository}/", http))
    scheme = "http" if http else "https"
    out.append(Access(
        "Nexus path", f"{scheme}://{main}/repository/{repository}", "", http,
        note="for a reverse proxy in front (a Docker client cannot name a path before /v2/)",
    ))  # fmt: skip
    return out


def commands(access: Access, image: str, reference: str) -> dict[str, str]:
    """client -> command line, for a tag (`name`) or a digest (`sha256:...`)."""
    sep = "@" if reference.startswith("sha256:") else ":"
    if access.method == "Nexus path":
        url = f"{access.registry}/v2/{image}/manifests/{reference}"
        accept = (
            "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,"
            "application/vnd.docker.distribution.manifest.v2+json"
        )
        return {"curl": f"curl -H {shlex.quote('Accept: ' + accept)} {shlex.quote(url)}"}
    ref = f"{access.registry}/{access.prefix}{image}{sep}{reference}"
    local = image.rsplit("/", 1)[-1]
    tag = reference if sep == ":" else "pulled"
    tls = access.plain_http
    return {
        "docker": f"docker pull {ref}",
        "podman": f"podman pull {'--tls-verify=false ' if tls else ''}{ref}",
        "skopeo": f"skopeo copy {'--src-tls-verify=false ' if tls else ''}docker://{ref} "
        f"oci:{local}:{tag}",
        "nerdctl": f"nerdctl pull {'--insecure-registry ' if tls else ''}{ref}",
    }
