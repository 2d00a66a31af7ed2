"""One route table: (listener port, Host, path) -> repository, client-visible prefix, image.

Access methods, in the order they are tried:
  1. Nexus path   /repository/<repo>/v2/...   (what reverse proxies target)
  2. Connector    a listener port bound to one repository (the seed's port mapping: one host
                  name, a push port and a pull port, so the port decides, not the Host header)
  3. Host mapping Host: name (exact, or first label of a wildcard domain) -> repository, on
                  the main listener and on connectors bound to no repository
  4. Repository path /v2/<repo>/<image>/... for repositories with path_routing = true

With `conceal` (security on), a `/repository/<name>/` path or a wildcard host label that
names no repository still routes to `<name>`, so that its answers are those of a repository
the caller may not see (http/concealed.py), never a tell-tale "no such repository".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portway.config import REPO_NAME_RE, Settings


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes. `repository` is None on a shared host (no mapping applies)."""

    repository: str | None
    rest: str  # path from /v2 or /v1 on, e.g. "/v2/img/manifests/latest"
    prefix: str  # client-visible path before /v2 ("" or "/repository/<repo>")
    via: str  # "path", "host", "connector" or "shared"
    external_url: str | None = None


@dataclass(frozen=True, slots=True)
class _Binding:
    repository: str | None
    external_url: str | None


PortBindings = dict[int, _Binding]  # listener port -> what it serves


class RouteTable:
    def __init__(
        self,
        repositories: Mapping[str, bool],  # name -> path_routing
        hosts: Mapping[str, _Binding],
        wildcards: Mapping[str, str | None],  # ".docker.example.com" -> external_url
        ports: dict[int, _Binding],
        conceal: bool = False,
    ) -> None:
        self.repositories = dict(repositories)
        self.hosts = dict(hosts)
        self.wildcards = dict(wildcards)
        self.ports = ports
        self.conceal = conceal

    @classmethod
    def from_settings(cls, settings: Settings, ports: PortBindings | None = None) -> RouteTable:
        """`ports`: the listeners' bindings, shared with the table this one replaces (a
        rebuild changes repositories, not the sockets that are open)."""
        hosts: dict[str, _Binding] = {}
        wildcards: dict[str, str | None] = {}
        for h in settings.host:
            if h.name.startswith("*."):
                wildcards[h.name[1:]] = h.external_url
            else:
                hosts[h.name] = _Binding(h.repository, h.external_url)
        return cls(
            {r.name: r.path_routing for r in settings.repository},
            hosts,
            wildcards,
            {} if ports is None else ports,
            conceal=settings.security.enabled,
        )

    def bind_port(self, port: int, repository: str | None, external_url: str | None) -> None:
        """Called once a listener is open (its real port is known)."""
        self.ports[port] = _Binding(repository, external_url)

    def unbind_port(self, port: int) -> None:
        """A connector's listener closed."""
        self.ports.pop(port, None)

    def _named(self, name: str) -> bool:
        """Does `name` route: a repository, or (concealing) a name one could have?"""
        return name in self.repositories or (self.conceal and REPO_NAME_RE.match(name) is not None)

    def path_routed(self) -> list[str]:
        return sorted(n for n, on in self.repositories.items() if on)

    def _host_binding(self, host: str) -> _Binding | None:
        name = host.lower()
        if name.startswith("["):
            name = name.split("]", 1)[0] + "]"
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        found = self.hosts.get(name)
        if found is not None:
            return found
        for suffix, external in self.wildcards.items():
            if name.endswith(suffix):
                label = name[: -len(suffix)]
                if label and "." not in label and self._named(label):
                    return _Binding(label, external)
        return None

    def resolve(self, port: int, host: str, path: str) -> Route | None:
        if path.startswith("/repository/"):
            repo, sep, rest = path[len("/repository/") :].partition("/")
            if not self._named(repo):
                return None
            return Route(repo, "/" + rest if sep else "/", f"/repository/{repo}", "path")
        bound = self.ports.get(port)
        if bound is not None and bound.repository is not None:
            return Route(bound.repository, path, "", "connector", bound.external_url)
        binding = self._host_binding(host)
        if binding is not None:
            return Route(binding.repository, path, "", "host", binding.external_url)
        return Route(None, path, "", "shared", bound.external_url if bound else None)
