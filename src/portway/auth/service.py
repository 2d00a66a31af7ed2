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

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from portway.auth.audit import AuditLog
from portway.auth.basic import BasicAuthentication
from portway.auth.bearer import BearerGrants
from portway.auth.keys import KeyRing
from portway.auth.ratelimit import LoginLimiter
from portway.auth.store import UserStore
from portway.auth.tokens import TokenAuthority
from portway.auth.tokens_issue import TokenIssuing
from portway.config import RepositoryConfig

_CHALLENGE_SAFE = re.compile(r"[\x00-\x1f\x7f]")


class AuthService(BasicAuthentication, BearerGrants, TokenIssuing):
    """The parts together: who (portway.auth.basic, portway.auth.bearer), what (the `Grant`,
    portway.auth.grants), tokens (portway.auth.tokens_issue), over the shared state
    (portway.auth.state)."""

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


def _quote(value: str) -> str:
    clean = _CHALLENGE_SAFE.sub("", value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{clean}"'
