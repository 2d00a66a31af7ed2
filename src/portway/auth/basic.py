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
# Seconds a remembered Basic login is answered without looking at the failed-login limits
# again (a lockout of that user or address takes effect on it within this time).
LOCK_RECHECK = 1.0


def _user_password(header: str) -> tuple[str, str]:
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
    return user, password


class BasicAuthentication(AuthState):
    def authenticate_basic(self, header: str | None, client_addr: str | None) -> Principal:
        """The principal of an `Authorization` header value: None (or empty) -> anonymous;
        `Basic ...` -> the user. Raises InvalidCredentials or LoginLocked."""
        if not header:
            return self.anonymous()
        user, password = _user_password(header)
        return self.authenticate_password(user, password, client_addr, cache=True)

    def remembered_basic(self, header: str, client_addr: str | None) -> Principal | None:
        """The principal of Basic credentials this process checked for this client address
        within the last `basic_cache_ttl` seconds, while no user or role changed and the
        failed-login limits were looked at within LOCK_RECHECK seconds; None: call
        `authenticate_basic` (in a thread: it may hash a password and read the database).
        Costs no database query and no thread hand-off: Basic on every request."""
        try:
            user, password = _user_password(header)
        except InvalidCredentials:
            return None
        generation = self._generation()
        hit = self._cached(self._login_key(user, password, client_addr), generation)
        if hit is None or hit[1] <= self._clock():
            return None
        return hit[0]

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
        # (`remembered_basic` skips it only for the same user, password and client address,
        # and for at most LOCK_RECHECK seconds after it was last looked at.)
        locked = self.limiter.check(user, client_addr)
        if locked is not None:
            self._audit("login", user, client_addr, None, "locked", {"by": locked.key})
            raise LoginLocked(locked.retry_after)
        key = self._login_key(user, password, client_addr)
        # Read before the check: a change landing during it makes the entry stale, not wrong.
        generation = self._generation() if cache else 0
        if cache:
            hit = self._cached(key, generation)
            if hit is not None:
                self._lock_checked(key)
                return hit[0]
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

    def _login_key(self, user: str, password: str, client_addr: str | None) -> bytes:
        """An HMAC of the credentials and the client address (the password is never kept)."""
        text = f"{user}\0{password}\0{client_addr or ''}".encode("utf-8", "surrogatepass")
        return hmac.new(self._basic_key, text, hashlib.sha256).digest()

    def _cached(self, key: bytes, generation: int) -> tuple[Principal, float] | None:
        """(principal, until when the lock check holds) of a remembered login."""
        with self._lock:
            hit = self._basic.get(key)
            if hit is None:
                return None
            if hit[0] <= self._clock() or hit[2] != generation:
                del self._basic[key]
                return None
            return hit[1], hit[3]

    def _lock_checked(self, key: bytes) -> None:
        with self._lock:
            hit = self._basic.get(key)
            if hit is not None:
                self._basic[key] = (hit[0], hit[1], hit[2], self._clock() + LOCK_RECHECK)

    def _remember(self, key: bytes, principal: Principal, generation: int) -> None:
        now = self._clock()
        with self._lock:
            self._basic[key] = (now + self._basic_ttl, principal, generation, now + LOCK_RECHECK)
            while len(self._basic) > 1024:
                self._basic.popitem(last=False)

    def authorize(self, principal: Principal, repository: str | None) -> Grant:
        """The grant of a Basic (or anonymous) request on a repository's route."""
        actions = allowed_actions(principal, repository) if repository else frozenset()
        return Grant(principal.name, principal.anonymous, repository, actions)

    def catalog(self, principal: Principal, repositories: Iterable[str]) -> list[str]:
        """The repositories this principal may see listed (`_catalog`, search)."""
        return browsable(principal, repositories)
