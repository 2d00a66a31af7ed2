"""The refusals of authentication: `status` is what to answer, `message` is safe for clients."""

from __future__ import annotations


class AuthError(Exception):
    """Refused authentication. `status` is what to answer; `message` is safe for clients."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCredentials(AuthError):
    pass


class LoginLocked(AuthError):
    """Too many failed logins: answer 429 with `Retry-After: retry_after`."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after} seconds")
        self.retry_after = retry_after


class InvalidToken(AuthError):
    """A bearer or refresh token refused (expired, forged, another repository's...)."""
