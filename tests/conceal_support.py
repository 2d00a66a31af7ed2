"""Comparing whole answers: what a repository that exists but is not yours answers must be
what one that does not exist answers (status, body, challenge, headers), up to the names in
them. Used by the isolation matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from support.security import Client, parse_challenge

# Differ by the length of the names, by the clock, or per request (X-Request-Id).
UNCOMPARED = {"date", "content-length", "www-authenticate", "x-request-id"}

Request = tuple[str, str, str, dict[str, Any]]  # (raw|request, method, path, keyword arguments)


@dataclass
class RecordingClient(Client):
    """A `Client` that remembers the last request it was asked to make, to make it again
    somewhere else (`replay`)."""

    last: Request | None = None
    _nested: bool = False

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if not self._nested:
            self.last = ("raw", method, path, dict(kwargs))
        return super().raw(method, path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.last = ("request", method, path, dict(kwargs))
        self._nested = True
        try:
            return super().request(method, path, **kwargs)
        finally:
            self._nested = False

    def replay(self, last: Request, path: str) -> requests.Response:
        via, method, _, kwargs = last
        if via == "request":
            return self.request(method, path, **kwargs)
        return self.raw(method, path, **kwargs)


def shape(answer: requests.Response, names: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Everything a client sees of `answer`, each name in `names` replaced by its placeholder
    (in order: put names that contain others first)."""

    def norm(text: str) -> str:
        for name, placeholder in names:
            text = text.replace(name, placeholder)
        return text

    scheme, params = parse_challenge(answer.headers.get("WWW-Authenticate", ""))
    return {
        "status": answer.status_code,
        "body": norm(answer.text),
        "challenge": (scheme, {k: norm(v) for k, v in sorted(params.items())}),
        "headers": {
            k.lower(): norm(v) for k, v in answer.headers.items() if k.lower() not in UNCOMPARED
        },
    }
