"""The token endpoint's answers: access tokens granting what was asked and is allowed on the
route's repository, refresh tokens for `docker login`, and new access tokens for them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from portway.auth.errors import InvalidToken
from portway.auth.privileges import BROWSE, Principal, allowed_actions, docker_grant, public_role
from portway.auth.scopes import Scope
from portway.auth.state import AuthState
from portway.auth.tokens import Access, TokenError
from portway.db.engine import DatabaseBusy, DatabaseFull

log = logging.getLogger("portway.auth")


class TokenIssuing(AuthState):
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


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
