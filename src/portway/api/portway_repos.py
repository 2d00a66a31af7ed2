"""Portway's own repository endpoints (`/api/v1/repositories`): definitions in Portway's
field names, with `ETag` on every answer and `If-Match` honoured on change (412 when the
repository changed since it was read)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from portway.api.problems import Problem, check_if_match
from portway.api.routing import Call, Operation, json_response, no_content
from portway.config import RepositoryConfig
from portway.repos.admin import RepositoryEntry

BASE = "/api/v1/repositories"


class RepositoryAnswer(BaseModel):
    name: str
    managedBy: Literal["file", "api"]
    revision: int
    etag: str
    definition: dict[str, Any]


class RepositoryList(BaseModel):
    items: list[RepositoryAnswer]


def answer(entry: RepositoryEntry) -> dict[str, Any]:
    definition = entry.config.model_dump(mode="json")
    if definition.get("remote_password"):
        definition["remote_password"] = "********"
    return RepositoryAnswer(
        name=entry.config.name,
        managedBy=entry.managed_by,
        revision=entry.revision,
        etag=entry.etag,
        definition=definition,
    ).model_dump()


def _checked(call: Call) -> RepositoryEntry:
    name = call.path("name")
    entry = call.services.repositories.entry(name)
    if entry is None or not call.may(name, "browse"):
        raise Problem(404, f"no repository {name!r}")
    check_if_match(call.request.headers.get("If-Match"), entry.etag, f"repository {name!r}")
    return entry


async def list_repositories(call: Call) -> web.StreamResponse:
    items = [
        answer(e) for e in call.services.repositories.entries() if call.may(e.config.name, "browse")
    ]
    return json_response({"items": items})


async def create(call: Call) -> web.StreamResponse:
    entry = await call.services.repositories.create(call.body, actor=call.actor)
    return json_response(
        answer(entry), 201, {"ETag": entry.etag, "Location": f"{BASE}/{entry.config.name}"}
    )


async def read(call: Call) -> web.StreamResponse:
    entry = _checked(call)
    return json_response(answer(entry), headers={"ETag": entry.etag})


async def replace(call: Call) -> web.StreamResponse:
    entry = _checked(call)
    cfg: RepositoryConfig = call.body
    if cfg.name != entry.config.name:
        raise Problem(400, "name: repository names cannot change")
    expected = entry.revision if "If-Match" in call.request.headers else None
    new = await call.services.repositories.replace(cfg, actor=call.actor, expected=expected)
    return json_response(answer(new), headers={"ETag": new.etag})


async def delete(call: Call) -> web.StreamResponse:
    entry = _checked(call)
    expected = entry.revision if "If-Match" in call.request.headers else None
    await call.services.repositories.delete(entry.config.name, actor=call.actor, expected=expected)
    return no_content()


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        BASE,
        list_repositories,
        "Repositories, with who manages each",
        "portway",
        None,
        responses={200: (RepositoryList, False)},
    ),
    Operation(
        "POST",
        BASE,
        create,
        "Create a repository",
        "portway",
        "repositories",
        body=RepositoryConfig,
        responses={201: (RepositoryAnswer, False)},
    ),
    Operation(
        "GET",
        BASE + "/{name}",
        read,
        "A repository (ETag)",
        "portway",
        None,
        responses={200: (RepositoryAnswer, False)},
    ),
    Operation(
        "PUT",
        BASE + "/{name}",
        replace,
        "Replace a repository's definition (If-Match)",
        "portway",
        "repositories",
        body=RepositoryConfig,
        responses={200: (RepositoryAnswer, False)},
    ),
    Operation(
        "DELETE",
        BASE + "/{name}",
        delete,
        "Delete a repository (If-Match)",
        "portway",
        "repositories",
        responses={204: (None, False)},
    ),
]
