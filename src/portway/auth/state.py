"""What the parts of the auth service share: the store, the token authority, the caches and
the security generation they are checked against, and the audit log.

`AuthService` (portway.auth.service) is this state with its parts: Basic authentication
(portway.auth.basic), bearer tokens verified and narrowed (portway.auth.bearer) and tokens
issued and refreshed (portway.auth.tokens_issue).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from portway.auth.audit import AuditLog
from portway.auth.grants import Grant
from portway.auth.privileges import Principal, anonymous_principal
from portway.auth.ratelimit import LoginLimiter
from portway.auth.store import UserStore
from portway.auth.tokencache import Stamp, VerifiedTokens
from portway.auth.tokens import TokenAuthority
from portway.config import RepositoryConfig

GENERATION_CHECK = 1.0  # seconds between looks at the security generation (see _generation)


class AuthState:
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
        # key -> (expires, principal, security generation when cached, lock checked until)
        self._basic: OrderedDict[bytes, tuple[float, Principal, int, float]] = OrderedDict()
        self._basic_key = secrets.token_bytes(32)
        self._anon_ttl = anonymous_cache_ttl
        self._anon: tuple[float, Principal, int] | None = None
        self._lock = threading.Lock()
        self._generation_value = 0
        self._generation_checked = -GENERATION_CHECK
        self._verified: VerifiedTokens[Grant] = VerifiedTokens(clock=tokens.clock)

    def set_repositories(self, repositories: Iterable[RepositoryConfig]) -> None:
        """Take the repositories' `anonymous_pull` switches (call again after a config change)."""
        self._public = frozenset(r.name for r in repositories if r.anonymous_pull)
        self._anon = None
        self._principals: dict[str, tuple[int, Principal | None]] = {}

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
