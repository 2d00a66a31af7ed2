"""Nexus's repository endpoints for Docker: list, and create/read/update/delete per kind.

    GET    /service/rest/v1/repositories
    GET    /service/rest/v1/repositories/{name}          DELETE (204)
    POST   /service/rest/v1/repositories/docker/{kind}   (201)
    GET    /service/rest/v1/repositories/docker/{kind}/{name}
    PUT    /service/rest/v1/repositories/docker/{kind}/{name}  (204)

`docker.httpPort`/`httpsPort` name connectors: a file-declared connector is shown; one that
no connector of the file serves is refused (connectors are not created at run time yet).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from portway.api.nexus_models import (
    DockerAttributes,
    DockerGroupRepository,
    DockerGroupRequest,
    DockerHostedRepository,
    DockerHostedRequest,
    DockerProxyAttributes,
    DockerProxyRepository,
    DockerProxyRequest,
    GroupAttributes,
    HostedStorageAttributes,
    HttpClientAttributes,
    HttpClientAuthentication,
    NegativeCacheAttributes,
    PortwayOptions,
    ProxyAttributes,
    RepositorySummary,
)
from portway.api.problems import Problem
from portway.api.routing import Call, Operation, Param, json_response, no_content
from portway.config import RepositoryConfig, Settings, split_listen
from portway.repos.admin import RepositoryEntry

BASE = "/service/rest/v1/repositories"
NAME = Param("name", "repository name", required=True)
Request = DockerHostedRequest | DockerProxyRequest | DockerGroupRequest


def _ports(settings: Settings, name: str) -> tuple[int | None, int | None]:
    http = https = None
    for conn in settings.connector:
        if conn.repository == name:
            port = split_listen(conn.listen)[1]
            if conn.tls is not None:
                https = https or port
            else:
                http = http or port
    return http, https


def to_config(kind: str, req: Request, settings: Settings) -> RepositoryConfig:
    """A Nexus request as a Portway repository definition (RepositoryConfig checks it)."""
    if not req.online:
        raise Problem(400, "online: Portway repositories are always online")
    ports = _ports(settings, req.name)
    for field, wanted, have in (
        ("docker.httpPort", req.docker.http_port, ports[0]),
        ("docker.httpsPort", req.docker.https_port, ports[1]),
    ):
        if wanted is not None and wanted != have:
            raise Problem(
                400,
                f"{field}: connectors are declared in the configuration file ([[connector]] "
                f"with repository = {req.name!r}); none serves port {wanted}",
            )
    options = req.portway or PortwayOptions()
    fields: dict[str, Any] = {
        "name": req.name,
        "type": kind,
        "path_routing": options.path_routing,
        "anonymous_pull": options.anonymous_pull,
        "v1_enabled": req.docker.v1_enabled,
        "strict_content_types": req.storage.strict_content_type_validation,
    }
    if isinstance(req, DockerHostedRequest):
        policy: str = req.storage.write_policy
        if policy == "allow_once" and req.storage.latest_policy:
            policy = "allow_latest"
        fields["write_policy"] = policy
    elif isinstance(req, DockerProxyRequest):
        auth = req.http_client.authentication
        fields |= {
            "remote_url": req.proxy.remote_url,
            "metadata_max_age": req.proxy.metadata_max_age * 60,
            "negative_cache_ttl": req.negative_cache.time_to_live * 60
            if req.negative_cache.enabled
            else 0,
            "cache_foreign_layers": req.docker_proxy.cache_foreign_layers,
            "foreign_layer_urls": tuple(req.docker_proxy.foreign_layer_url_whitelist),
            "remote_username": auth.username if auth else None,
            "remote_password": auth.password if auth else None,
        }
    else:
        fields |= {
            "members": tuple(req.group.member_names),
            "writable_member": req.group.writable_member,
        }
    return RepositoryConfig.model_validate(fields)


def from_entry(entry: RepositoryEntry, base: str, settings: Settings) -> dict[str, Any]:
    cfg = entry.config
    http, https = _ports(settings, cfg.name)
    common: dict[str, Any] = {
        "name": cfg.name,
        "online": True,
        "url": f"{base}/repository/{cfg.name}",
        "docker": DockerAttributes(
            v1_enabled=cfg.v1_enabled, force_basic_auth=True, http_port=http, https_port=https
        ),
        "portway": PortwayOptions(
            path_routing=cfg.path_routing,
            anonymous_pull=cfg.anonymous_pull,
            managed_by=entry.managed_by,
            revision=entry.revision,
        ),
    }
    model: DockerHostedRepository | DockerProxyRepository | DockerGroupRepository
    if cfg.type == "hosted":
        once = cfg.write_policy in ("allow_once", "allow_latest")
        model = DockerHostedRepository(
            **common,
            storage=HostedStorageAttributes(
                strict_content_type_validation=cfg.strict_content_types,
                write_policy="allow_once" if once else cfg.write_policy,  # type: ignore[arg-type]
                latest_policy=cfg.write_policy == "allow_latest",
            ),
        )
    elif cfg.type == "proxy":
        auth = (
            HttpClientAuthentication(type="username", username=cfg.remote_username)
            if cfg.remote_username
            else None
        )
        model = DockerProxyRepository(
            **common,
            proxy=ProxyAttributes(
                remote_url=cfg.remote_url, metadata_max_age=cfg.metadata_max_age // 60
            ),
            negative_cache=NegativeCacheAttributes(
                enabled=cfg.negative_cache_ttl > 0, time_to_live=cfg.negative_cache_ttl // 60
            ),
            http_client=HttpClientAttributes(authentication=auth),
            docker_proxy=DockerProxyAttributes(
                cache_foreign_layers=cfg.cache_foreign_layers,
                foreign_layer_url_whitelist=list(cfg.foreign_layer_urls),
            ),
        )
    else:
        model = DockerGroupRepository(
            **common,
            group=GroupAttributes(
                member_names=list(cfg.members), writable_member=cfg.writable_member
            ),
        )
    return model.model_dump(by_alias=True, mode="json")


def _entry(call: Call, kind: str | None = None) -> RepositoryEntry:
    name = call.path("name")
    entry = call.services.repositories.entry(name)
    if entry is None or (kind is not None and entry.config.type != kind):
        what = f"{kind} repository" if kind else "repository"
        raise Problem(404, f"no Docker {what} named {name!r}")
    return entry


async def list_repositories(call: Call) -> web.StreamResponse:
    base = call.base_url()
    out = [
        RepositorySummary(
            name=e.config.name, type=e.config.type, url=f"{base}/repository/{e.config.name}"
        ).model_dump(by_alias=True)
        for e in call.services.repositories.entries()
        if call.may(e.config.name, "browse")
    ]
    return json_response(out)


async def get_any(call: Call) -> web.StreamResponse:
    entry = _entry(call)
    return json_response(from_entry(entry, call.base_url(), call.ctx.registry.settings))


async def delete_any(call: Call) -> web.StreamResponse:
    await call.services.repositories.delete(call.path("name"), actor=call.actor)
    return no_content()


def _kind_ops(kind: str, request: type[Request], answer: type[Any]) -> list[Operation]:
    async def create(call: Call) -> web.StreamResponse:
        cfg = to_config(kind, call.body, call.ctx.registry.settings)
        await call.services.repositories.create(cfg, actor=call.actor)
        return web.Response(status=201, headers={"Location": f"{BASE}/docker/{kind}/{cfg.name}"})

    async def read(call: Call) -> web.StreamResponse:
        entry = _entry(call, kind)
        return json_response(from_entry(entry, call.base_url(), call.ctx.registry.settings))

    async def update(call: Call) -> web.StreamResponse:
        name = call.path("name")
        if call.body.name != name:
            raise Problem(400, f"name: {call.body.name!r} is not {name!r} (names cannot change)")
        _entry(call, kind)
        cfg = to_config(kind, call.body, call.ctx.registry.settings)
        await call.services.repositories.replace(cfg, actor=call.actor)
        return no_content()

    path = f"{BASE}/docker/{kind}"
    return [
        Operation(
            "POST",
            path,
            create,
            f"Create a Docker {kind} repository",
            "repositories",
            "repositories",
            body=request,
            responses={201: (None, False)},
        ),
        Operation(
            "GET",
            path + "/{name}",
            read,
            f"A Docker {kind} repository",
            "repositories",
            "repositories",
            responses={200: (answer, False)},
        ),
        Operation(
            "PUT",
            path + "/{name}",
            update,
            f"Change a Docker {kind} repository",
            "repositories",
            "repositories",
            body=request,
            responses={204: (None, False)},
        ),
    ]


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        BASE,
        list_repositories,
        "Repositories the caller may browse",
        "repositories",
        None,
        responses={200: (RepositorySummary, True)},
    ),
    *_kind_ops("hosted", DockerHostedRequest, DockerHostedRepository),
    *_kind_ops("proxy", DockerProxyRequest, DockerProxyRepository),
    *_kind_ops("group", DockerGroupRequest, DockerGroupRepository),
    Operation(
        "GET",
        BASE + "/{name}",
        get_any,
        "A repository, whatever its kind",
        "repositories",
        "repositories",
        responses={200: (DockerHostedRepository, False)},
    ),
    Operation(
        "DELETE",
        BASE + "/{name}",
        delete_any,
        "Delete a repository",
        "repositories",
        "repositories",
        responses={204: (None, False)},
    ),
]
