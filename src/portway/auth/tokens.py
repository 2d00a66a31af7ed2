"""Docker registry bearer tokens: signed JWTs bound to one Portway repository.

Claims follow Docker's token specification (`iss`, `sub`, `aud` = service, `exp`, `nbf`,
`iat`, `jti`, `access: [{type, name, actions}]`) plus one claim of ours:

    "portway": {"kind": "access" | "refresh", "repo": "<repository>" | "",
                "actions": ["read", ...], "anon": false}

`repo` is the repository whose route issued the token ("" for a route that serves no single
repository, e.g. `_catalog` on a shared host); a token is refused on any other route. `actions`
are the Portway actions granted on that repository, so the repository can decide an overwrite
(`edit`) without asking again.

Refresh tokens (`offline_token=true`, OAuth2 `grant_type=refresh_token`) are JWTs of kind
`refresh`, without `access`, longer lived; the service also checks them against the store so
disabling a user or changing a password revokes them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from portway.auth.keys import KeyRing
from portway.auth.scopes import MAX_SCOPES, Scope, ScopeError, parse_scope, parse_scopes

__all__ = [
    "MAX_SCOPES",
    "Access",
    "IssuedToken",
    "Scope",
    "ScopeError",
    "TokenAuthority",
    "TokenClaims",
    "TokenError",
    "TokenExpired",
    "TokenWrongRepository",
    "parse_scope",
    "parse_scopes",
]

Kind = Literal["access", "refresh"]
ALGORITHMS = ("ES256", "RS256")
DEFAULT_TTL = 300
DEFAULT_REFRESH_TTL = 30 * 24 * 3600
_REQUIRED = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]


class TokenError(Exception):
    """A token that must be refused. `reason` is for the log; clients get a generic message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(TokenError):
    pass


class TokenWrongRepository(TokenError):
    """A genuine token presented on another repository's route (replay across teams)."""


@dataclass(frozen=True)
class Access:
    """One entry of the `access` claim: what the token allows on one resource."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: int
    expires_at: int

    @property
    def expires_in(self) -> int:
        return self.expires_at - self.issued_at


@dataclass(frozen=True)
class TokenClaims:
    """A verified token."""

    kind: Kind
    subject: str
    audience: str
    repository: str | None
    access: tuple[Access, ...]
    actions: frozenset[str]
    anonymous: bool
    jti: str
    issued_at: int
    expires_at: int


class TokenAuthority:
    """Issues and verifies tokens with the keys of a `KeyRing`."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str = "portway",
        ttl: int = DEFAULT_TTL,
        refresh_ttl: int = DEFAULT_REFRESH_TTL,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0 or refresh_ttl <= 0:
            raise ValueError("token lifetimes must be positive")
        self.keys = keys
        self.issuer = issuer
        self.ttl = ttl
        self.refresh_ttl = refresh_ttl
        self.leeway = leeway
        self._clock = clock

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock tokens are issued and checked by (`exp`, `nbf`)."""
        return self._clock

    # -- issuing ---------------------------------------------------------------------------

    def issue_access(
        self,
        subject: str,
        audience: str,
        repository: str | None,
        access: Iterable[Access],
        actions: Iterable[str],
        *,
        anonymous: bool = False,
    ) -> IssuedToken:
        extra = {
            "access": [a.claim() for a in access],
            "portway": {
                "kind": "access",
                "repo": repository or "",
                "actions": sorted(set(actions)),
                "anon": anonymous,
            },
        }
        return self._sign(subject, audience, self.ttl, extra)

    def issue_refresh(self, subject: str, audience: str, repository: str | None) -> IssuedToken:
        extra = {"portway": {"kind": "refresh", "repo": repository or "", "anon": False}}
        return self._sign(subject, audience, self.refresh_ttl, extra)

    def _sign(self, subject: str, audience: str, ttl: int, extra: Mapping[str, Any]) -> IssuedToken:
        now = int(self._clock())
        jti = secrets.token_urlsafe(18)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "nbf": now,
            "iat": now,
            "jti": jti,
            **extra,
        }
        key = self.keys.current
        token = jwt.encode(
            claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"}
        )
        return IssuedToken(token, jti, now, now + ttl)

    # -- verifying -------------------------------------------------------------------------

    def verify(
        self,
        token: str,
        repository_route: str | None,
        *,
        kind: Kind = "access",
        audience: str | None = None,
    ) -> TokenClaims:
        """Check signature, algorithm, kid, lifetime, issuer, kind and repository binding.

        `audience` (the service name) is checked when given. Raises `TokenError`.
        """
        if not isinstance(token, str) or len(token) > 16384:
            raise TokenError("not a token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenError(f"algorithm {str(alg)[:16]!r} refused")
        if not isinstance(kid, str):
            raise TokenError("token without kid")
        key = self.keys.verification_key(kid)
        if key is None:
            raise TokenError("unknown signing key")
        if alg != key.algorithm:
            raise TokenError("algorithm does not match the signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=[key.algorithm],
                issuer=self.issuer,
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from None
        return self._check(claims, repository_route, kind, audience)

    def _check(
        self, claims: dict[str, Any], route: str | None, kind: Kind, audience: str | None
    ) -> TokenClaims:
        now = self._clock()
        exp, nbf, iat = claims["exp"], claims["nbf"], claims["iat"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, nbf, iat)):
            raise TokenError("time claims must be integers")
        if now >= exp + self.leeway:
            raise TokenExpired("token expired")
        if now + self.leeway < nbf:
            raise TokenError("token not yet valid")
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience is not None and audience not in auds:
            raise TokenError("token issued for another service")
        own = claims.get("portway")
        if not isinstance(own, dict) or own.get("kind") != kind:
            raise TokenError(f"not a Portway {kind} token")
        repo = own.get("repo")
        if not isinstance(repo, str):
            raise TokenError("token not bound to a repository route")
        if repo != (route or ""):
            raise TokenWrongRepository(
                f"token for repository {repo or '(none)'!r} presented on {route or '(none)'!r}"
            )
        sub, jti = claims["sub"], claims["jti"]
        if not isinstance(sub, str) or not isinstance(jti, str):
            raise TokenError("sub and jti must be strings")
        return TokenClaims(
            kind=kind,
            subject=sub,
            audience=auds[0] if auds and isinstance(auds[0], str) else "",
            repository=repo or None,
            access=_access(claims.get("access", [])) if kind == "access" else (),
            actions=_strings(own.get("actions", []), "portway.actions"),
            anonymous=own.get("anon") is True,
            jti=jti,
            issued_at=iat,
            expires_at=exp,
        )


def _strings(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"{what} must be a list of strings")
    return frozenset(value)


def _access(value: Any) -> tuple[Access, ...]:
    if not isinstance(value, list):
        raise TokenError("access must be a list")
    out: list[Access] = []
    for entry in value:
        if not isinstance(entry, dict):
            raise TokenError("access entries must be objects")
        type_, name = entry.get("type"), entry.get("name")
        if not isinstance(type_, str) or not isinstance(name, str):
            raise TokenError("access entries need a type and a name")
        actions = _strings(entry.get("actions", []), "access actions")
        out.append(Access(type_, name, tuple(sorted(actions))))
    return tuple(out)
