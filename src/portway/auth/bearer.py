"""Bearer tokens presented: verified once, remembered while nothing they depend on changes
(portway.auth.tokencache), and narrowed to what the token's user may do now."""

from __future__ import annotations

from portway.auth.errors import InvalidToken
from portway.auth.grants import Grant
from portway.auth.privileges import ACTIONS, Principal, allowed_actions, public_role
from portway.auth.state import AuthState
from portway.auth.tokencache import token_key
from portway.auth.tokens import TokenClaims, TokenError, TokenWrongRepository


class BearerGrants(AuthState):
    def principal_cached(self, grant: Grant) -> tuple[bool, Principal | None]:
        """(found, principal) from what this process remembers; (False, None): it must be
        read (`principal_of`, off the event loop on PostgreSQL)."""
        if grant.anonymous:
            anonymous = self.anonymous_cached()
            return anonymous is not None, anonymous
        hit = self._principals.get(grant.principal)
        if hit is not None and hit[0] == self._generation():
            return True, hit[1]
        return False, None

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

    def remembered_bearer(
        self,
        token: str,
        repository_route: str | None,
        service: str | None = None,
        key: bytes | None = None,
    ) -> Grant | None:
        """The grant of a bearer token verified before on this route, while nothing it
        depends on has changed (see `portway.auth.tokencache`); None: call `verify_bearer`.
        `key`: the token's `token_key` for this route and service, if the caller has it."""
        if key is None:
            key = token_key(token, repository_route, service)
        return self._verified.get(key, self._stamp())

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
