"""Who is asking, by user name and password (Basic on every request, or the token
endpoint's password grant), and what a Basic or anonymous request may do."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from portway.auth.errors import InvalidCredentials, LoginLocked
from portway.auth.grants import Grant
from portway.auth.privileges import Principal, allowed_actions, browsable, public_role
from portway.auth.state import AuthState

MAX_AUTH_HEADER = 8192


class BasicAuthentication(AuthState):
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

    def authorize(self, principal: Principal, repository: str | None) -> Grant:
        """The grant of a Basic (or anonymous) request on a repository's route."""
        actions = allowed_actions(principal, repository) if repository else frozenset()
        return Grant(principal.name, principal.anonymous, repository, actions)

    def catalog(self, principal: Principal, repositories: Iterable[str]) -> list[str]:
        """The repositories this principal may see listed (`_catalog`, search)."""
        return browsable(principal, repositories)
