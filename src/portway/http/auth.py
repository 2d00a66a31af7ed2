"""Security on the HTTP side: who is asking (Basic or bearer) and may they do it here. The
token endpoint the `WWW-Authenticate` challenge sends Docker clients to is
portway.http.token_endpoint.

The realm is built for the URL the client came through (connector, host mapping, repository
path, behind a proxy), and every token is bound to the repository it was issued for.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from portway.auth.errors import AuthError, LoginLocked
from portway.auth.grants import Grant
from portway.auth.passwords import lower_thread_priority
from portway.auth.privileges import ACTIONS, BROWSE, READ, Principal, allowed_actions
from portway.auth.service import AuthService
from portway.auth.tokencache import token_key
from portway.http.context import CONTEXT_KEY, AppContext
from portway.http.forwarded import client_address, client_origin
from portway.http.protocol import RegistryRequestHandler
from portway.http.routing import Route
from portway.oci.errors import RegistryError
from portway.oci.names import check_name

# Handler vocabulary -> Portway privileges.
_ACTION_MAP = {"pull": READ, "push": "add", "delete": "delete", "edit": "edit", "catalog": BROWSE}
_AUTH = "portway.auth"
_ROUTE = "portway.route"


class _RequestAuth:
    """What one request's authorization found out: its credentials (parsed once), its
    grants per repository, its principal, a refused login. One object under one request
    key, made when the request is routed: a lookup of a key the request does not hold costs
    an exception inside aiohttp's mapping, and this made four of them per request."""

    __slots__ = ("bearer_refused", "credentials", "grants", "principal", "refused")

    def __init__(self) -> None:
        self.credentials: tuple[str, str] | None = None
        self.grants: dict[str | None, Grant] = {}
        self.principal: Principal | None = None
        self.refused: AuthError | None = None
        self.bearer_refused: dict[str | None, AuthError] | None = None  # by repository


def _state(request: web.Request) -> _RequestAuth:
    try:
        state: _RequestAuth = request[_AUTH]
    except KeyError:
        state = request[_AUTH] = _RequestAuth()
    return state


def remember_route(request: web.Request, route: Route) -> None:
    request[_ROUTE] = route
    request[_AUTH] = _RequestAuth()


def too_many(exc: LoginLocked) -> RegistryError:
    return RegistryError(
        "TOOMANYREQUESTS", exc.message, status=429, headers={"Retry-After": str(exc.retry_after)}
    )


def client_addr(request: web.Request) -> str | None:
    return client_address(request, request.app[CONTEXT_KEY].trusted)


def realm_of(request: web.Request, ctx: AppContext) -> str:
    route: Route | None = request.get(_ROUTE)
    prefix = route.prefix if route else ""
    if route is not None and route.external_url:
        return route.external_url.rstrip("/") + prefix + "/v2/token"
    return client_origin(request, ctx.trusted).url(prefix + "/v2/token")


def _mount_source_scope(request: web.Request, image: str, actions: tuple[str, ...]) -> list[str]:
    """A blob mount (`POST .../blobs/uploads/?mount=D&from=SRC`) also needs pull on SRC: ask
    for it in the challenge, as distribution does, so a client that requests exactly the
    challenge's scope can mount (the token still grants only what the user may do)."""
    source = request.query.get("from")
    if request.method != "POST" or "push" not in actions or not source or source == image:
        return []
    if "mount" not in request.query or not request.path.rstrip("/").endswith("/blobs/uploads"):
        return []
    try:
        check_name(source)
    except RegistryError:
        return []
    return [f"repository:{source}:pull"]


def _docker_actions(actions: tuple[str, ...]) -> str:
    docker = []
    if any(a in ("pull", "catalog") for a in actions):
        docker.append("pull")
    if "push" in actions or "edit" in actions:
        docker.append("push")
    if "delete" in actions:
        docker.append("delete")
    return ",".join(docker or ["pull"])


class SecurityAuthorizer:
    """The Authorizer used when `[security] enabled = true`."""

    def __init__(self, auth: AuthService, service: str, login_threads: int = 4) -> None:
        self.auth = auth
        self.service = service
        # Password checks (argon2: about a third of a second of CPU each) and the database
        # writes a login may make wait here, a few at once and at a lower CPU priority, never
        # on the event loop (docs/adr/0008).
        self.pool = ThreadPoolExecutor(
            max_workers=login_threads,
            thread_name_prefix="portway-auth",
            initializer=lower_thread_priority,
        )

    # -- identity ----------------------------------------------------------------------
    def _credentials(self, request: web.Request) -> tuple[str, str]:
        state = _state(request)
        if state.credentials is None:
            header = request.headers.get("Authorization", "").strip()
            scheme, _, value = header.partition(" ")
            state.credentials = scheme.lower(), value.strip()
        return state.credentials

    def _grant(self, request: web.Request, repository: str | None) -> Grant:
        state = _state(request)
        cache = state.grants
        if repository in cache:
            return cache[repository]
        scheme, value = self._credentials(request)
        try:
            if scheme == "bearer":
                if state.bearer_refused is not None and repository in state.bearer_refused:
                    raise state.bearer_refused[repository]
                remembered = self.auth.remembered_bearer(value, repository, self.service)
                grant = remembered or self.auth.verify_bearer(
                    value, repository, self.service, client_addr(request)
                )
            else:
                if state.refused is not None:
                    raise state.refused
                principal = state.principal or self.auth.authenticate_basic(
                    request.headers.get("Authorization"), client_addr(request)
                )
                state.principal = principal
                grant = self.auth.authorize(principal, repository)
        except LoginLocked as exc:
            raise too_many(exc) from None
        except AuthError as exc:
            raise self._challenge(
                request,
                repository,
                None,
                (),
                exc.message,
                "invalid_token" if scheme == "bearer" else None,
            ) from None
        cache[repository] = grant
        return grant

    async def identify(self, request: web.Request, repository: str | None) -> None:
        """Decide who is asking, with every lookup that may wait for the database made here
        (a password check in the pool; on PostgreSQL the store's reads in a thread), so that
        `_grant`, `principal` and `visible` after it answer from memory on the event loop."""
        scheme, value = self._credentials(request)
        if scheme == "basic":
            await self._check_basic(request)
        elif scheme == "bearer":
            await self._check_bearer(request, repository, value)
        elif not request.headers.get("Authorization"):  # no credentials: anonymous
            state = _state(request)
            if state.principal is None:
                state.principal = await self.auth.anonymous_now()

    async def _check_bearer(self, request: web.Request, repository: str | None, token: str) -> None:
        """Verify a token for `repository` unless it was verified before (off the loop on
        PostgreSQL: a token seen first needs its user read), and find its user."""
        state = _state(request)
        grant = state.grants.get(repository)
        if grant is None:
            key = self._token_key(request, token, repository)
            grant = self.auth.remembered_bearer(token, repository, self.service, key)
        if grant is None:
            if state.bearer_refused is None:
                state.bearer_refused = {}
            if repository in state.bearer_refused:
                return
            try:
                grant = await self.auth.off_loop(
                    self.auth.verify_bearer, token, repository, self.service, client_addr(request)
                )
            except AuthError as exc:
                state.bearer_refused[repository] = exc  # `_grant` answers with the challenge
                return
        state.grants[repository] = grant
        if not self.auth.inline and state.principal is None:
            found, principal = self.auth.principal_cached(grant)
            if not found:
                principal = await self.auth.off_loop(self.auth.principal_of, grant)
            state.principal = principal

    def _token_key(self, request: web.Request, token: str, repository: str | None) -> bytes:
        """The token's cache key, from the connection's memo when it sent this token for
        this route before (the key is a hash of exactly these, see `token_key`)."""
        protocol = request.protocol
        if not isinstance(protocol, RegistryRequestHandler):
            return token_key(token, repository, self.service)
        memo = protocol.token_memo
        if memo is not None and memo[1] == repository and memo[0] == token:
            return memo[2]
        key = token_key(token, repository, self.service)
        protocol.token_memo = (token, repository, key)
        return key

    async def _check_basic(self, request: web.Request) -> None:
        """Check Basic credentials in the pool, once per request (`_grant` uses the result)."""
        state = _state(request)
        if state.principal is not None or state.refused is not None:
            return
        if self._credentials(request)[0] != "basic":
            return
        header, client = request.headers.get("Authorization"), client_addr(request)
        remembered = self.auth.remembered_basic(header or "", client)
        if remembered is not None:  # checked before: no thread hand-off, no database query
            state.principal = remembered
            return
        loop = asyncio.get_running_loop()
        try:
            state.principal = await loop.run_in_executor(
                self.pool, self.auth.authenticate_basic, header, client
            )
        except AuthError as exc:
            state.refused = exc

    def principal(self, request: web.Request) -> Principal | None:
        state = _state(request)
        if state.principal is not None:
            return state.principal
        for grant in state.grants.values():
            principal = self.auth.principal_of(grant)
            if principal is not None:
                state.principal = principal
                return principal
        return None

    # -- decisions ---------------------------------------------------------------------
    def _challenge(
        self,
        request: web.Request,
        repository: str | None,
        image: str | None,
        actions: tuple[str, ...],
        message: str = "authentication required",
        error: str | None = None,
    ) -> RegistryError:
        ctx = request.app[CONTEXT_KEY]
        scope: list[str] = []
        if image is not None:
            scope.append(f"repository:{image}:{_docker_actions(actions)}")
            scope.extend(_mount_source_scope(request, image, actions))
        elif "catalog" in actions:
            scope.append("registry:catalog:*")
        header = AuthService.challenge(realm_of(request, ctx), self.service, scope, error)
        detail = (
            [{"Type": "repository", "Name": image, "Action": a} for a in actions] if image else None
        )
        return RegistryError("UNAUTHORIZED", message, detail, headers={"WWW-Authenticate": header})

    async def authorize(
        self,
        request: web.Request,
        repository: str | None,
        image: str | None,
        actions: tuple[str, ...],
    ) -> None:
        await self.identify(request, repository)
        grant = self._grant(request, repository)
        if not actions:
            # GET /v2/: any valid identity; no credentials gets the challenge (docker login).
            scheme, _ = self._credentials(request)
            if grant.anonymous and scheme != "bearer":
                raise self._challenge(request, repository, None, ())
            return
        if "catalog" in actions:
            scheme, _ = self._credentials(request)
            if grant.anonymous and scheme != "bearer":
                # Ask for credentials first: a client that has some gets its own listing,
                # not anonymous's (it would never send them after a 200).
                raise self._challenge(request, repository, None, actions)
            if not grant.catalog and grant.access is not None:
                raise self._challenge(
                    request, repository, None, actions, error="insufficient_scope"
                )
            if repository is not None and not grant.permits(BROWSE):
                raise self._refuse(request, grant, repository, None, actions)
            return
        needed = [_ACTION_MAP[a] for a in actions]
        if all(grant.permits(a, image) for a in needed):
            return
        raise self._refuse(request, grant, repository, image, actions)

    def _refuse(
        self,
        request: web.Request,
        grant: Grant,
        repository: str | None,
        image: str | None,
        actions: tuple[str, ...],
    ) -> RegistryError:
        scheme, _ = self._credentials(request)
        if grant.anonymous:
            return self._challenge(request, repository, image, actions)
        principal = self.principal(request)
        allowed = (
            allowed_actions(principal, repository) if principal and repository else frozenset()
        )
        if READ not in allowed and BROWSE not in allowed:
            # No existence leak: the same answer as for a repository that does not exist.
            return RegistryError("NAME_UNKNOWN", "repository or image not found")
        wanted = {_ACTION_MAP[a] for a in actions}
        if scheme == "bearer" and wanted <= allowed:
            # The user may, the token does not say so: get a token with this scope.
            return self._challenge(request, repository, image, actions, error="insufficient_scope")
        return RegistryError(
            "DENIED",
            "requested access to the resource is denied",
            detail={"repository": repository, "actions": sorted(wanted & ACTIONS)},
        )

    def audit(
        self, request: web.Request, event: str, repository: str, detail: dict[str, str]
    ) -> None:
        if self.auth.audit is None:
            return
        who = next((g.principal for g in _state(request).grants.values()), None)
        self.auth.audit.write(
            event,
            principal=who,
            client=client_addr(request),
            repository=repository,
            detail=detail,
        )

    def visible(self, request: web.Request, repository: str) -> bool:
        principal = self.principal(request)
        if principal is None and request.headers.get("Authorization"):
            # Not decided yet (/v1/search): the request's own credentials, checked as for
            # any request on this route (a token bound elsewhere is refused, not ignored).
            route: Route | None = request.get(_ROUTE)
            self._grant(request, route.repository if route else None)
            principal = self.principal(request)
        if principal is None:
            principal = self.auth.anonymous()
        return BROWSE in allowed_actions(principal, repository)
