"""The admin API's route table: one `Operation` per method and path, from which the handlers
are mounted and the OpenAPI document is generated (openapi.py), so the two cannot disagree.

Each operation names the admin privilege it needs (auth/privileges.py: users, roles,
repositories, settings, audit) or None for any signed-in user; views that list repository
content filter by the caller's repository privileges themselves. Credentials are HTTP Basic;
none gives 401 with a Basic challenge, a user without the privilege 403.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from portway.api.problems import Problem, invalid
from portway.api.services import AdminServices
from portway.auth.errors import AuthError, LoginLocked
from portway.auth.privileges import Principal, allowed_actions
from portway.http.context import CONTEXT_KEY, AppContext

REALM = 'Basic realm="Portway"'


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass
class Call:
    request: web.Request
    ctx: AppContext
    services: AdminServices
    principal: Principal | None  # None: security is off
    body: Any = None

    @property
    def actor(self) -> str:
        return self.principal.name if self.principal is not None else "anonymous"

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query.get(name, default)

    def may(self, repository: str, action: str) -> bool:
        if self.principal is None:
            return True
        return action in allowed_actions(self.principal, repository)

    def base_url(self) -> str:
        from portway.http.forwarded import client_origin

        return client_origin(self.request, self.ctx.trusted).url("").rstrip("/")


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /api/v1/repositories/{name}
    handler: Handler
    summary: str
    tag: str
    privilege: str | None
    body: type[BaseModel] | None = None
    text_body: bool = False  # text/plain (Nexus's change-password)
    responses: Mapping[int, tuple[type[BaseModel] | None, bool]] = field(default_factory=dict)
    query: tuple[Param, ...] = ()
    greedy: tuple[str, ...] = ()  # path parameters that may hold '/' (image names)
    fresh: bool = False  # read the repository set's generation first (another worker's change)

    @property
    def operation_id(self) -> str:
        parts = re.sub(r"[{}]", "", self.path).strip("/").replace("/", "_").replace("-", "_")
        return f"{self.method.lower()}_{parts}"

    def aiohttp_path(self) -> str:
        out = self.path
        for name in self.greedy:
            out = out.replace("{" + name + "}", "{" + name + ":.+}")
        return out


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def no_content(headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=204, headers=dict(headers or {}))


async def _principal(request: web.Request, ctx: AppContext) -> Principal | None:
    from portway.http.auth import SecurityAuthorizer
    from portway.http.forwarded import client_address

    authorizer = ctx.authorizer
    if not isinstance(authorizer, SecurityAuthorizer):
        return None
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        raise Problem(
            401, "sign in with HTTP Basic credentials", headers={"WWW-Authenticate": REALM}
        )
    client = client_address(request, ctx.trusted)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            authorizer.pool, authorizer.auth.authenticate_basic, header, client
        )
    except LoginLocked as exc:
        raise Problem(429, exc.message, headers={"Retry-After": str(exc.retry_after)}) from None
    except AuthError as exc:
        raise Problem(401, exc.message, headers={"WWW-Authenticate": REALM}) from None


async def _parse_body(request: web.Request, op: Operation) -> Any:
    if op.text_body:
        raw = await request.read()
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise Problem(400, "the body is not UTF-8 text") from None
    assert op.body is not None
    raw = await request.read()
    try:
        return op.body.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise invalid(exc) from None


def _errors_of(exc: Exception) -> Problem | None:
    """Typed refusals of the services, as problems; None for a fault."""
    from portway.auth.keys import KeyFolderError
    from portway.auth.privileges import PrivilegeError
    from portway.auth.services import PasswordRejected
    from portway.auth.store_base import StoreError
    from portway.repos.admin import RepositoryRefused
    from portway.repos.browse import CursorError

    if isinstance(exc, RepositoryRefused):
        return Problem(exc.status, exc.message)
    if isinstance(exc, StoreError):
        text = str(exc)
        status = 404 if text.startswith("no ") else 409 if "exists" in text else 400
        return Problem(status, text)
    if isinstance(exc, (PrivilegeError, PasswordRejected, CursorError)):
        return Problem(400, str(exc))
    if isinstance(exc, KeyFolderError):
        return Problem(409, str(exc))
    if isinstance(exc, ValidationError):
        return invalid(exc)
    from portway.oci.errors import RegistryError

    if isinstance(exc, RegistryError) and exc.status < 500:
        return Problem(exc.status, exc.message, title=exc.code)
    return None


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT_KEY]
        try:
            services = ctx.admin
            assert services is not None
            principal = await _principal(request, ctx)
            if op.fresh:
                await services.repositories.refresh()
            if (
                principal is not None
                and op.privilege is not None
                and not principal.has_admin(op.privilege)
            ):
                raise Problem(403, f"this needs the admin privilege {op.privilege!r}")
            call = Call(request, ctx, services, principal)
            if op.body is not None or op.text_body:
                call.body = await _parse_body(request, op)
            return await op.handler(call)
        except Problem as problem:
            return problem.response(request.path)
        except Exception as exc:
            refusal = _errors_of(exc)
            if refusal is None:
                raise
            return refusal.response(request.path)

    return handle


def install(app: web.Application, operations: list[Operation]) -> None:
    for op in operations:
        app.router.add_route(op.method, op.aiohttp_path(), _wrap(op))
