"""The auth facade the HTTP layer calls. No HTTP here: strings in, principals, grants and JSON
bodies out, typed errors (`AuthError` subclasses carry the status to render).

A request is decided in two steps:

1. who: `authenticate_basic(header, client)` (Basic, or no header -> anonymous) or
   `verify_bearer(token, repository)` (a token from our endpoint);
2. what: a `Grant` — Portway actions on the route's repository. `Grant.permits(action, image)`
   is the one check handlers make. For Basic the grant comes from `authorize(principal, repo)`.

Authenticated users may always do what anonymous pull allows (the per-repository switch);
the stored `anonymous` role applies to requests without credentials only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from portway.auth.audit import AuditLog
from portway.auth.keys import KeyRing
from portway.auth.privileges import (
    ACTIONS,
    BROWSE,
    PORTWAY_TO_DOCKER,
    Principal,
    allowed_actions,
    anonymous_principal,
    browsable,
    docker_grant,
    public_role,
)
from portway.auth.ratelimit import LoginLimiter
from portway.auth.scopes import Scope
from portway.auth.store import UserStore
from portway.auth.tokencache import Stamp, VerifiedTokens, token_key
from portway.auth.tokens import (
    Access,
    TokenAuthority,
    TokenClaims,
    TokenError,
    TokenWrongRepository,
)
from portway.config import RepositoryConfig
from portway.db.engine import DatabaseBusy, DatabaseFull

MAX_AUTH_HEADER = 8192
GENERATION_CHECK = 1.0  # seconds between looks at the security generation (see _generation)
log = logging.getLogger("portway.auth")
_CHALLENGE_SAFE = re.compile(r"[\x00-\x1f\x7f]")


class AuthError(Exception):
    """Refused authentication. `status` is what to answer; `message` is safe for clients."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCredentials(AuthError):
    pass


class LoginLocked(AuthError):
    """Too many failed logins: answer 429 with `Retry-After: retry_after`."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after} seconds")
        self.retry_after = retry_after


class InvalidToken(AuthError):
    """A bearer or refresh token refused (expired, forged, another repository's...)."""


@dataclass(frozen=True)
class Grant:
    """What a request may do on its route's repository.

    `actions`: Portway actions on `repository`. `access`: for a token, the images (and the
    catalog) it names; None for Basic, which is not limited to images.
    """

    principal: str
    anonymous: bool
    repository: str | None
    actions: frozenset[str]
    access: tuple[Access, ...] | None = None

    def permits(self, action: str, image: str | None = None) -> bool:
        """May the request perform `action` (browse/read/add/edit/delete) on `image`?

        For a token, `image` must be named in its access claim exactly as the client wrote it
        in the scope (on a repository-path route that includes the `<repo>/` prefix).
        """
        if action not in self.actions:
            return False
        if self.access is None or image is None:
            return True
        carriers = PORTWAY_TO_DOCKER.get(action, frozenset())
        return any(
            a.type == "repository" and a.name == image and not carriers.isdisjoint(a.actions)
            for a in self.access
        )

    @property
    def catalog(self) -> bool:
        """May this request list the catalog (filtered by `AuthService.catalog`)?"""
        if self.access is None:
            return True
        return any(a.type == "registry" and a.name == "catalog" for a in self.access)


class AuthService:
    def __init__(
        self,
        store: UserStore,
        tokens: TokenAuthority,
        *,
        limiter: LoginLimiter | None = None,
        audit: AuditLog | None = None,
        repositories: Iterable[RepositoryConfig] = (),
        basic_cache_ttl: float = 30.0,
        anonymous_cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.limiter = limiter if limiter is not None else LoginLimiter(store.engine)
        self.audit = audit
        self._clock = clock
        self._public: frozenset[str] = frozenset()
        self.set_repositories(repositories)
        self._basic_ttl = basic_cache_ttl
        # key -> (expires, principal, security generation when cached)
        self._basic: OrderedDict[bytes, tuple[float, Principal, int]] = OrderedDict()
        self._basic_key = secrets.token_bytes(32)
        self._anon_ttl = anonymous_cache_ttl
        self._anon: tuple[float, Principal, int] | None = None
        self._lock = threading.Lock()
        self._generation_value = 0
        self._generation_checked = -GENERATION_CHECK
        self._verified: VerifiedTokens[Grant] = VerifiedTokens(clock=tokens.clock)

    @classmethod
    def create(
        cls,
        store: UserStore,
        data_dir: Path,
        repositories: Iterable[RepositoryConfig] = (),
        *,
        issuer: str = "portway",
        token_ttl: int = 300,
        limiter: LoginLimiter | None = None,
    ) -> AuthService:
        """The default wiring: keys in `<data_dir>/keys`, audit in `<data_dir>/audit.log`."""
        tokens = TokenAuthority(KeyRing.in_data_dir(data_dir), issuer=issuer, ttl=token_ttl)
        return cls(
            store,
            tokens,
            limiter=limiter,
            audit=AuditLog(data_dir / "audit.log"),
            repositories=repositories,
        )

    def set_repositories(self, repositories: Iterable[RepositoryConfig]) -> None:
        """Take the repositories' `anonymous_pull` switches (call again after a config change)."""
        self._public = frozenset(r.name for r in repositories if r.anonymous_pull)
        self._anon = None
        self._principals: dict[str, tuple[int, Principal | None]] = {}

    # -- who -------------------------------------------------------------------------------

    def anonymous(self) -> Principal:
        """The principal of requests without credentials (cached for a few seconds)."""
        now = self._clock()
        generation = self._generation()
        cached = self._anon
        if cached is not None and cached[0] > now and cached[2] == generation:
            return cached[1]
        principal = anonymous_principal(self.store.anonymous_roles(), self._public)
        self._anon = (now + self._anon_ttl, principal, generation)
        return principal

    def authenticate_basic(self, header: str | None, client_addr: str | None) -> Principal:
        """The principal of an `Authorization` header value: None (or empty) -> anonymous;
        `Basic ...` -> the user. Raises InvalidCredentials or LoginLocked."""
        if not header:
            return self.anonymous()
        if len(header) > MAX_AUTH_HEADER:
            raise InvalidCredentials("malformed Authorization header")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise InvalidCredentials("expected Basic credentials")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidCredentials("malformed Basic credentials") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise InvalidCredentials("malformed Basic credentials")
        return self.authenticate_password(user, password, client_addr, cache=True)

    def authenticate_password(
        self, user: str, password: str, client_addr: str | None, *, cache: bool = False
    ) -> Principal:
        """Check a user name and password (Basic, or the OAuth2 `grant_type=password` form).

        Rate-limited per user and per client address; every attempt that reaches the password
        check is audited. With `cache`, a success is remembered for a few seconds (keyed by an
        HMAC, never the password) so Basic on every request does not cost an argon2 each.
        """
        # The lock comes first, even before the cache: otherwise, while a user was logging in
        # from elsewhere, a guesser on a locked address would learn that a guess was right.
        locked = self.limiter.check(user, client_addr)
        if locked is not None:
            self._audit("login", user, client_addr, None, "locked", {"by": locked.key})
            raise LoginLocked(locked.retry_after)
        key = hmac.new(self._basic_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        # Read before the check: a change landing during it makes the entry stale, not wrong.
        generation = self._generation() if cache else 0
        if cache:
            hit = self._cached(key, generation)
            if hit is not None:
                return hit
        principal = self.store.authenticate(user, password)
        if principal is None:
            self.limiter.failure(user, client_addr)
            self._audit("login", user, client_addr, None, "failure", None)
            raise InvalidCredentials("incorrect username or password")
        self.limiter.success(user, client_addr)
        self._audit("login", user, client_addr, None, "success", None)
        principal = principal.with_roles(public_role(self._public))
        if cache:
            self._remember(key, principal, generation)
        return principal

    def _generation(self) -> int:
        """The store's security generation, read at most every GENERATION_CHECK seconds: a
        user disabled or a role changed (by any worker or `portway user|role`) takes effect
        within that time, and a request costs no extra query."""
        now = self._clock()
        if now >= self._generation_checked + GENERATION_CHECK:
            self._generation_value = self.store.generation()
            self._generation_checked = now
            # The same tick notices a key rotated or removed by `portway key` (one stat).
            self.tokens.keys.reload_if_changed()
        return self._generation_value

    def _stamp(self) -> Stamp:
        """What a verified token's grant depends on besides the token: users and roles (the
        security generation) and the verifying keys (the key ring's revision)."""
        generation = self._generation()
        return generation, self.tokens.keys.revision

    def _cached(self, key: bytes, generation: int) -> Principal | None:
        with self._lock:
            hit = self._basic.get(key)
            if hit is None:
                return None
            if hit[0] <= self._clock() or hit[2] != generation:
                del self._basic[key]
                return None
            return hit[1]

    def _remember(self, key: bytes, principal: Principal, generation: int) -> None:
        with self._lock:
            self._basic[key] = (self._clock() + self._basic_ttl, principal, generation)
            while len(self._basic) > 1024:
                self._basic.popitem(last=False)

    # -- what ------------------------------------------------------------------------------

    def authorize(self, principal: Principal, repository: str | None) -> Grant:
        """The grant of a Basic (or anonymous) request on a repository's route."""
        actions = allowed_actions(principal, repository) if repository else frozenset()
        return Grant(principal.name, principal.anonymous, repository, actions)

    def catalog(self, principal: Principal, repositories: Iterable[str]) -> list[str]:
        """The repositories this principal may see listed (`_catalog`, search)."""
        return browsable(principal, repositories)

    def principal_of(self, grant: Grant) -> Principal | None:
        """The current principal behind a grant (catalog filtering, refusals, the access
        log's user name): read from the store once per user and security generation, so a
        bearer request does not cost a user and role lookup each."""
        if grant.anonymous:
            return self.anonymous()
        generation = self._generation()
        hit = self._principals.get(grant.principal)
        if hit is not None and hit[0] == generation:
            return hit[1]
        principal = self.store.principal(grant.principal)
        if principal is not None:
            principal = principal.with_roles(public_role(self._public))
        with self._lock:
            self._principals[grant.principal] = (generation, principal)
            while len(self._principals) > 1024:
                self._principals.pop(next(iter(self._principals)))
        return principal

    # -- tokens ----------------------------------------------------------------------------

    def issue_token(
        self,
        principal: Principal,
        service: str,
        scopes: Sequence[Scope],
        repository_route: str | None,
        client_addr: str | None,
        *,
        offline_token: bool = False,
    ) -> dict[str, Any]:
        """The token endpoint's JSON body for an authenticated (or anonymous) principal.

        Grants the intersection of what is asked and what is allowed on `repository_route`
        (the repository the token is bound to; None on a route serving no single repository,
        where only `registry:catalog:*` can be granted). A refresh token is added for
        `offline_token` when the principal is a user.
        """
        access: list[Access] = []
        actions: set[str] = set()
        for scope in scopes:
            if scope.is_catalog:
                if "*" in scope.actions:
                    access.append(Access("registry", "catalog", ("*",)))
                    # On a repository's own route the catalog lists that repository's
                    # images: the token carries `browse` there when the principal has it.
                    if repository_route:
                        actions |= allowed_actions(principal, repository_route) & {BROWSE}
                continue
            if scope.type != "repository" or not repository_route:
                continue
            docker, portway = docker_grant(principal, repository_route, scope.actions)
            if docker:
                access.append(Access("repository", scope.name, tuple(sorted(docker))))
                actions |= portway
        issued = self.tokens.issue_access(
            principal.name,
            service,
            repository_route,
            access,
            actions,
            anonymous=principal.anonymous,
        )
        body: dict[str, Any] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": _rfc3339(issued.issued_at),
            "scope": " ".join(f"{a.type}:{a.name}:{','.join(a.actions)}" for a in access),
        }
        if offline_token and not principal.anonymous:
            refresh = self.tokens.issue_refresh(principal.name, service, repository_route)
            try:
                self.store.record_refresh(
                    refresh.jti, principal.name, repository_route, refresh.expires_at
                )
            except (DatabaseBusy, DatabaseFull) as exc:
                # The login still succeeds: without a refresh token the client keeps using
                # the password (docker stores it instead of an identity token).
                log.warning("login of %r without a refresh token: %s", principal.name, exc)
            else:
                body["refresh_token"] = refresh.token
        self._audit(
            "token.issue",
            principal.name,
            client_addr,
            repository_route,
            "success",
            {
                "requested": [str(s) for s in scopes],
                "granted": body["scope"],
                "offline": "refresh_token" in body,
            },
        )
        return body

    def refresh(
        self,
        refresh_token: str,
        service: str,
        scopes: Sequence[Scope],
        repository_route: str | None,
        client_addr: str | None,
        *,
        bind_to: str | None = None,
    ) -> dict[str, Any]:
        """OAuth2 `grant_type=refresh_token`: a new access token for the refresh token's user;
        refused once the user is disabled, the password changed, or the token revoked. The
        same refresh token comes back in the body.

        The refresh token must belong to `repository_route`, the route the request came
        through. The new access token is bound to that route's repository, or to `bind_to`
        on a shared host (a route serving no single repository), where the scope names it.
        """
        try:
            claims = self.tokens.verify(refresh_token, repository_route, kind="refresh")
        except TokenError as exc:
            self._audit(
                "token.refresh",
                None,
                client_addr,
                repository_route,
                "denied",
                {"reason": exc.reason},
            )
            raise InvalidToken("invalid refresh token") from None
        if not self.store.refresh_valid(claims.jti, claims.subject, repository_route):
            self._audit(
                "token.refresh",
                claims.subject,
                client_addr,
                repository_route,
                "denied",
                {"reason": "revoked or user disabled"},
            )
            raise InvalidToken("invalid refresh token")
        principal = self.store.principal(claims.subject)
        if principal is None:
            raise InvalidToken("invalid refresh token")
        principal = principal.with_roles(public_role(self._public))
        issue_for = repository_route if repository_route is not None else bind_to
        body = self.issue_token(principal, service, scopes, issue_for, client_addr)
        body["refresh_token"] = refresh_token
        return body

    def remembered_bearer(
        self, token: str, repository_route: str | None, service: str | None = None
    ) -> Grant | None:
        """The grant of a bearer token verified before on this route, while nothing it
        depends on has changed (see `portway.auth.tokencache`); None: call `verify_bearer`."""
        return self._verified.get(token_key(token, repository_route, service), self._stamp())

    def verify_bearer(
        self,
        token: str,
        repository_route: str | None,
        service: str | None = None,
        client_addr: str | None = None,
    ) -> Grant:
        """The grant of a bearer token presented on `repository_route` (the route's repository,
        None for a route serving none). Raises InvalidToken; the reason goes to the audit log
        only for a genuine token replayed on another repository's route.

        The grant is what the token says, narrowed to what its user may do now: a disabled
        or deleted user's tokens are refused and a revoked privilege is gone, within the
        security generation check. It is remembered until the token expires or a user, role
        or key changes, so the signature is checked once per token, not once per request."""
        key = token_key(token, repository_route, service)
        # Read before the check: a change landing during it makes the entry stale, not wrong.
        stamp = self._stamp()
        hit = self._verified.get(key, stamp)
        if hit is not None:
            return hit
        try:
            claims = self.tokens.verify(token, repository_route, audience=service)
        except TokenWrongRepository as exc:
            self._audit(
                "token.replay",
                None,
                client_addr,
                repository_route,
                "denied",
                {"reason": exc.reason},
            )
            raise InvalidToken("token not valid for this repository") from None
        except TokenError:
            raise InvalidToken("invalid or expired token") from None
        grant = self._token_grant(claims)
        self._verified.put(key, grant, claims.expires_at + self.tokens.leeway, stamp)
        return grant

    def _token_grant(self, claims: TokenClaims) -> Grant:
        if claims.anonymous:
            principal = self.anonymous()
        else:
            user = self.store.principal(claims.subject)
            if user is None:  # disabled or deleted since the token was issued
                raise InvalidToken("invalid or expired token")
            principal = user.with_roles(public_role(self._public))
        actions = claims.actions & ACTIONS
        if claims.repository is not None:
            actions &= allowed_actions(principal, claims.repository)
        return Grant(claims.subject, claims.anonymous, claims.repository, actions, claims.access)

    # -- challenges ------------------------------------------------------------------------

    @staticmethod
    def challenge(
        realm: str,
        service: str,
        scope: str | Sequence[str] | None = None,
        error: str | None = None,
    ) -> str:
        """The `WWW-Authenticate` value sending a client to the token endpoint `realm`."""
        parts = [f"realm={_quote(realm)}", f"service={_quote(service)}"]
        if scope:
            text = scope if isinstance(scope, str) else " ".join(scope)
            parts.append(f"scope={_quote(text)}")
        if error:
            parts.append(f"error={_quote(error)}")
        return "Bearer " + ",".join(parts)

    @staticmethod
    def basic_challenge(realm: str) -> str:
        return f"Basic realm={_quote(realm)}"

    def _audit(
        self,
        event: str,
        principal: str | None,
        client: str | None,
        repository: str | None,
        outcome: str,
        detail: dict[str, Any] | None,
    ) -> None:
        if self.audit is not None:
            self.audit.write(
                event,
                principal=principal,
                client=client,
                repository=repository,
                outcome=outcome,
                detail=detail,
            )


def _quote(value: str) -> str:
    clean = _CHALLENGE_SAFE.sub("", value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{clean}"'


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
