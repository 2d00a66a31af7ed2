"""The token endpoint (`<route>/v2/token`) the `WWW-Authenticate` challenge sends Docker
clients to: a password (Basic, or the OAuth2 form) or a refresh token in, a token bound to
the route's repository out. Who may do what is decided by portway.http.auth's authorizer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from portway.auth.errors import AuthError, InvalidCredentials, LoginLocked
from portway.auth.keys import KeyFolderError
from portway.auth.scopes import Scope, ScopeError, parse_scopes
from portway.auth.service import AuthService
from portway.http.auth import SecurityAuthorizer, client_addr, realm_of, too_many
from portway.http.concealed import concealable
from portway.http.context import AppContext
from portway.http.routing import Route
from portway.oci.errors import RegistryError


def _bound_repository(ctx: AppContext, route: Route, scopes: list[Scope]) -> str | None:
    """The repository a token is for: the route's, or on a shared host the repository the
    first repository scope names (`<repo>/<image>`); with security on, also a name that
    names none there, so that its token looks like that of a repository one may not see."""
    if route.repository is not None:
        return route.repository
    for scope in scopes:
        if scope.type == "repository":
            repo = scope.name.partition("/")[0]
            cfg = ctx.snapshot.config(repo)
            if cfg is not None and cfg.path_routing:
                return repo
            if ctx.routes.conceal and concealable(repo):
                return repo
            return None
    return None


def _token_response(body: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


async def token_endpoint(request: web.Request, ctx: AppContext, route: Route) -> web.Response:
    authorizer = ctx.authorizer
    if not isinstance(authorizer, SecurityAuthorizer):
        raise RegistryError("UNSUPPORTED", "security is off: no tokens needed", status=404)
    if request.method == "POST":
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        scope_values = [str(v) for v in form.getall("scope", [])]
    elif request.method == "GET":
        fields = {k: v for k, v in request.query.items()}
        scope_values = request.query.getall("scope", [])
    else:
        raise RegistryError("UNSUPPORTED", status=405)
    try:
        scopes = parse_scopes(scope_values)
    except ScopeError as exc:
        raise RegistryError("UNSUPPORTED", str(exc), status=400) from None
    bound = _bound_repository(ctx, route, scopes)
    if route.repository is None and bound is not None:
        scopes = [s for s in scopes if s.type != "repository" or s.name.startswith(bound + "/")]
    service = fields.get("service") or authorizer.service
    try:
        return await _answer_token(request, ctx, route, fields, scopes, bound, service)
    except KeyFolderError as exc:
        # No signing key can be written (a full disk): a clear, retryable refusal.
        raise RegistryError("UNAVAILABLE", f"cannot sign tokens: {exc}", status=503) from None


async def _answer_token(
    request: web.Request,
    ctx: AppContext,
    route: Route,
    fields: dict[str, str],
    scopes: list[Scope],
    bound: str | None,
    service: str,
) -> web.Response:
    authorizer = ctx.authorizer
    assert isinstance(authorizer, SecurityAuthorizer)
    auth = authorizer.auth
    client = client_addr(request)
    header = request.headers.get("Authorization")
    method = request.method

    def decide() -> dict[str, Any]:
        """In the authorizer's pool: a password check and a refresh token's record wait
        (argon2, the database's write lock), and must not hold up the event loop."""
        if method == "POST":
            grant_type = fields.get("grant_type", "")
            if grant_type == "refresh_token":
                return auth.refresh(
                    fields.get("refresh_token", ""),
                    service,
                    scopes,
                    route.repository,
                    client,
                    bind_to=bound,
                )
            if grant_type != "password":
                raise RegistryError(
                    "UNSUPPORTED", "grant_type must be password or refresh_token", status=400
                )
            principal = auth.authenticate_password(
                fields.get("username", ""), fields.get("password", ""), client
            )
            offline = fields.get("access_type") == "offline"
        else:
            principal = auth.authenticate_basic(header, client)
            # `offline_token=true` (what docker login sends) is not honoured: a refresh token
            # would land in ~/.docker/config.json as an identity token, which podman refuses
            # to log in over. Refresh tokens come from the OAuth2 POST only (ADR 0006).
            offline = False
        return auth.issue_token(principal, service, scopes, bound, client, offline_token=offline)

    try:
        body = await asyncio.get_running_loop().run_in_executor(authorizer.pool, decide)
    except LoginLocked as exc:
        raise too_many(exc) from None
    except InvalidCredentials as exc:
        raise RegistryError(
            "UNAUTHORIZED",
            exc.message,
            headers={"WWW-Authenticate": AuthService.basic_challenge(realm_of(request, ctx))},
        ) from None
    except AuthError as exc:
        raise RegistryError("UNAUTHORIZED", exc.message) from None
    return _token_response(body)
