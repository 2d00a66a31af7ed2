"""How we authenticate to one upstream: nothing, Basic, or the Docker bearer-token dance.

We learn the scheme from the upstream's first 401 (no credentials are sent before the
upstream asks for them). Afterwards requests carry credentials up front: Basic as is, and for
Bearer a token per scope, fetched from the challenge's realm and cached until ``expires_in``
(60 s when absent) minus a safety margin. Concurrent requests needing the same token make
one token request.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from .challenge import Challenge
from .errors import (
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamServerError,
    UpstreamUnauthorizedError,
    from_client_exception,
    parse_retry_after,
)
from .singleflight import SingleFlight

DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class TokenKey:
    realm: str
    service: str | None
    scope: str | None


@dataclass(frozen=True)
class _CachedToken:
    value: str
    expires_at: float


class UpstreamAuth:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        username: str | None,
        password: str | None,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], float] = time.monotonic,
        token_margin: float = 10.0,
        user_agent: str = "portway",
    ) -> None:
        self._session = session
        self.username = username
        self._password = password or ""
        self._timeout = timeout
        self._clock = clock
        self._margin = token_margin
        self._user_agent = user_agent
        self.scheme: str | None = None  # "basic" or "bearer", once the upstream told us
        self._realm: str | None = None
        self._service: str | None = None
        self._tokens: dict[TokenKey, _CachedToken] = {}
        self._fetches: SingleFlight[TokenKey, _CachedToken] = SingleFlight()
        self.token_requests = 0  # how many times we asked a token service (for tests, metrics)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def _basic(self) -> str:
        raw = f"{self.username or ''}:{self._password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def authorization(self, scope: str | None) -> str | None:
        """The ``Authorization`` value to send before any challenge, if we know one."""
        if self.scheme == "basic" and self.has_credentials:
            return self._basic()
        if self.scheme == "bearer" and self._realm is not None:
            key = TokenKey(self._realm, self._service, scope)
            return f"Bearer {await self._token(key, scope)}"
        return None

    async def answer(
        self, url: str, challenges: Sequence[Challenge], scope: str | None, sent: str | None
    ) -> str:
        """The ``Authorization`` value to retry with after a 401 carrying ``challenges``.

        Raises ``UpstreamUnauthorizedError`` when there is nothing (more) to try.
        """
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.get("realm")), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            self.scheme = "bearer"
            self._realm = bearer.get("realm")
            self._service = bearer.get("service")
            key = TokenKey(self._realm or "", self._service, scope)
            if sent is not None and sent.startswith("Bearer "):
                # the token we sent was refused (expired early, or revoked): fetch afresh once
                self._tokens.pop(key, None)
            wanted = bearer.get("scope") or scope
            return f"Bearer {await self._token(key, wanted)}"
        if basic is not None:
            self.scheme = "basic"
            if not self.has_credentials:
                raise UpstreamUnauthorizedError(
                    url, "requires a login (Basic) and no credentials are configured", status=401
                )
            if sent is not None and sent.startswith("Basic "):
                raise self.refused(url)
            return self._basic()
        schemes = ", ".join(c.scheme for c in challenges) or "none given"
        raise UpstreamUnauthorizedError(
            url, f"refused the request (401) with no usable challenge ({schemes})", status=401
        )

    def token_refused(self, url: str, scope: str | None) -> UpstreamUnauthorizedError:
        who = f"user {self.username!r}" if self.has_credentials else "anonymous pulls"
        wanted = f"'{scope}'" if scope else "access"
        return UpstreamUnauthorizedError(
            url,
            f"refused the token its token service issued to {who} for {wanted} (401): the"
            " repository does not exist or needs other credentials",
            status=401,
        )

    def refused(self, url: str, status: int = 401) -> UpstreamUnauthorizedError:
        if self.has_credentials:
            problem = f"refused the configured credentials of user {self.username!r} ({status})"
        else:
            problem = f"refused anonymous access ({status}); configure credentials"
        return UpstreamUnauthorizedError(url, problem, status=status)

    async def _token(self, key: TokenKey, wanted_scope: str | None) -> str:
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.expires_at:
            return cached.value
        token = await self._fetches.do(key, lambda: self._fetch(key, wanted_scope))
        return token.value

    async def _fetch(self, key: TokenKey, wanted_scope: str | None) -> _CachedToken:
        params: list[tuple[str, str]] = []
        if key.service:
            params.append(("service", key.service))
        if wanted_scope:
            params.extend(("scope", s) for s in wanted_scope.split(" ") if s)
        if self.username:
            params.append(("account", self.username))
        headers = {"User-Agent": self._user_agent}
        if self.has_credentials:
            headers["Authorization"] = self._basic()
        realm = key.realm
        self.token_requests += 1
        try:
            async with self._session.get(
                realm, params=params, headers=headers, timeout=self._timeout, allow_redirects=True
            ) as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE)
                status, reason = resp.status, resp.reason
                retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise from_client_exception(
                f"{realm} (token service)", exc, timeout=self._timeout.total
            ) from exc
        where = f"{realm} (token service)"
        if status in (401, 403):
            raise self.refused(where, status)
        if status == 429:
            raise UpstreamRateLimitedError(
                where,
                "token service rate limit reached (429)",
                retry_after=parse_retry_after(retry_after),
            )
        if status >= 500:
            raise UpstreamServerError(where, f"answered {status} {reason}", status=status)
        if status != 200:
            raise UpstreamUnauthorizedError(
                where, f"answered {status} {reason} instead of a token", status=status
            )
        token = self._parse_token(where, body)
        self._tokens[key] = token
        return token

    def _parse_token(self, where: str, body: bytes) -> _CachedToken:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamServerError(where, "answered something that is not a token (no JSON)")
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise UpstreamServerError(where, "answered JSON without a token")
        lifetime = doc.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        margin = min(self._margin, lifetime / 2)
        return _CachedToken(value, self._clock() + lifetime - margin)


__all__ = ["TokenKey", "UpstreamAuth", "UpstreamError"]
