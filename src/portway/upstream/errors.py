"""Typed failures of a remote registry, worded for the operator who reads them.

Each error carries a ``kind`` the proxy repository branches on (serve stale content, render
an OCI error, feed the breaker) and a message that names the upstream URL and the problem.
"""

from __future__ import annotations

from typing import ClassVar, Literal

ErrorKind = Literal[
    "unreachable",
    "timeout",
    "server_error",
    "rate_limited",
    "not_found",
    "unauthorized",
    "digest_mismatch",
    "blocked",
]

#: Kinds that say "the upstream is unwell", as opposed to "the upstream answered no".
FAILURE_KINDS: frozenset[str] = frozenset(
    {"unreachable", "timeout", "server_error", "rate_limited"}
)


class UpstreamError(Exception):
    """A request to the remote registry did not give what was asked for."""

    kind: ClassVar[ErrorKind]

    def __init__(self, url: str, problem: str, *, status: int | None = None) -> None:
        self.url = url
        self.problem = problem
        self.status = status
        super().__init__(f"upstream {url}: {problem}")

    @property
    def is_failure(self) -> bool:
        """True when this counts against the upstream's health (see the breaker)."""
        return self.kind in FAILURE_KINDS


class UpstreamUnreachableError(UpstreamError):
    kind = "unreachable"


class UpstreamTruncatedError(UpstreamUnreachableError):
    """The connection ended before the whole body arrived."""


class UpstreamTimeoutError(UpstreamError):
    kind = "timeout"


class UpstreamServerError(UpstreamError):
    kind = "server_error"


class UpstreamRateLimitedError(UpstreamError):
    kind = "rate_limited"

    def __init__(
        self, url: str, problem: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(url, problem, status=status)
        self.retry_after = retry_after


class UpstreamNotFoundError(UpstreamError):
    kind = "not_found"

    def __init__(
        self, url: str, problem: str, *, status: int | None = 404, code: str | None = None
    ) -> None:
        super().__init__(url, problem, status=status)
        self.code = code


class UpstreamUnauthorizedError(UpstreamError):
    kind = "unauthorized"


class UpstreamDigestMismatchError(UpstreamError):
    kind = "digest_mismatch"


class UpstreamBlockedError(UpstreamError):
    """Not sent at all: the breaker has stopped asking this upstream for a while."""

    kind = "blocked"

    def __init__(self, url: str, problem: str, *, blocked_until: float) -> None:
        super().__init__(url, problem)
        self.blocked_until = blocked_until


def describe_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def from_client_exception(url: str, exc: BaseException, *, timeout: float | None) -> UpstreamError:
    """Translate an aiohttp/OS exception raised while talking to ``url``."""
    import asyncio

    import aiohttp

    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        within = f" within {describe_seconds(timeout)}" if timeout else ""
        return UpstreamTimeoutError(url, f"no answer{within} (timed out)")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamTruncatedError(url, f"the response body was cut short ({exc})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return UpstreamUnreachableError(url, f"cannot connect: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnreachableError(url, "the server closed the connection without answering")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamUnreachableError(url, f"connection failed: {exc or type(exc).__name__}")
    return UpstreamUnreachableError(url, f"request failed: {type(exc).__name__}: {exc}")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
