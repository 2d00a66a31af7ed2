"""What the parts of the auth service share: the store, the token authority, the caches and
the security generation they are checked against, and the audit log.

`AuthService` (portway.auth.service) is this state with its parts: Basic authentication
(portway.auth.basic), bearer tokens verified and narrowed (portway.auth.bearer) and tokens
issued and refreshed (portway.auth.tokens_issue).

On PostgreSQL a store read is a network round trip that an event loop must not wait for
(ADR 21): `inline` is False there, the HTTP layer runs lookups that miss the caches in a
thread (`off_loop`), and the security generation, when due on an event loop, is read in a
thread while requests go on with the value read before (ADR 29). On SQLite (a local file)
every read stays inline, as before.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from portway.auth.audit import AuditLog
from portway.auth.grants import Grant
from portway.auth.privileges import Principal, anonymous_principal
from portway.auth.ratelimit import LoginLimiter
from portway.auth.store import UserStore
from portway.auth.tokencache import Stamp, VerifiedTokens
from portway.auth.tokens import TokenAuthority
from portway.config import RepositoryConfig

GENERATION_CHECK = 1.0  # seconds between looks at the security generation (see _generation)

log = logging.getLogger("portway.auth")
T = TypeVar("T")


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
        # SQLite: reads are microseconds on a local file and stay on the caller's thread.
        self.inline = store.engine.dialect.name == "sqlite"
        self._generation_reading = False
        self._verified: VerifiedTokens[Grant] = VerifiedTokens(clock=tokens.clock)

    def set_repositories(self, repositories: Iterable[RepositoryConfig]) -> None:
        """Take the repositories' `anonymous_pull` switches (call again after a config change)."""
        self._public = frozenset(r.name for r in repositories if r.anonymous_pull)
        self._anon = None
        self._principals: dict[str, tuple[int, Principal | None]] = {}

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` where it may wait for the database: inline on SQLite, in a thread of
        the default executor on PostgreSQL (a call made on an event loop)."""
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def anonymous_cached(self) -> Principal | None:
        """The cached principal of requests without credentials, None when it must be read."""
        cached = self._anon
        if cached is not None and cached[0] > self._clock() and cached[2] == self._generation():
            return cached[1]
        return None

    def anonymous(self) -> Principal:
        """The principal of requests without credentials (cached for a few seconds). Reads
        the roles on a miss: on an event loop call `anonymous_now` instead."""
        cached = self.anonymous_cached()
        if cached is not None:
            return cached
        now, generation = self._clock(), self._generation()
        principal = anonymous_principal(self.store.anonymous_roles(), self._public)
        self._anon = (now + self._anon_ttl, principal, generation)
        return principal

    async def anonymous_now(self) -> Principal:
        """`anonymous()` for an event loop: a miss reads the roles off the loop."""
        cached = self.anonymous_cached()
        return cached if cached is not None else await self.off_loop(self.anonymous)

    def _generation(self) -> int:
        """The store's security generation, read at most every GENERATION_CHECK seconds: a
        user disabled or a role changed (by any worker or `portway user|role`) takes effect
        within that time, and a request costs no extra query.

        On PostgreSQL, called on an event loop, the read goes to a thread and this returns
        the value read before; the new one is used once it is in (a database that answers
        slowly delays a change by that long, never a request)."""
        now = self._clock()
        if now >= self._generation_checked + GENERATION_CHECK:
            self._generation_checked = now
            if self.inline or asyncio._get_running_loop() is None:
                self._read_generation()
            elif not self._generation_reading:
                self._generation_reading = True
                loop = asyncio.get_running_loop()
                loop.run_in_executor(None, self._read_generation).add_done_callback(
                    self._generation_read
                )
        return self._generation_value

    def _read_generation(self) -> None:
        self._generation_value = self.store.generation()
        # The same tick notices a key rotated or removed by `portway key` (one stat; in a
        # cluster the key ring watches the database in a thread of its own).
        self.tokens.keys.reload_if_changed()

    def _generation_read(self, done: asyncio.Future[None]) -> None:
        self._generation_reading = False
        if not done.cancelled() and done.exception() is not None:
            # The database is away or slow: keep the generation read before, retry later.
            log.warning("security generation not read: %s", done.exception())

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
