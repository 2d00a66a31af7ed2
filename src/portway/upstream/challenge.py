"""Parse ``WWW-Authenticate`` challenges (RFC 7235) as registries send them.

``Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push"``
carries commas inside quoted values, several challenges may share one header, and a server
may send several headers; the parser below copes with all three.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

_SEPARATORS = ' \t,="'


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict[str, str] = field(default_factory=dict)  # names in lower case

    def get(self, name: str) -> str | None:
        return self.params.get(name)


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """All challenges found in the given ``WWW-Authenticate`` header values, in order."""
    found: list[Challenge] = []
    for value in headers:
        found.extend(_parse_one_header(value))
    return found


def _parse_one_header(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    pos, end = 0, len(text)

    def flush() -> None:
        if scheme is not None:
            challenges.append(Challenge(scheme.lower(), dict(params)))

    while pos < end:
        while pos < end and text[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        start = pos
        while pos < end and text[pos] not in _SEPARATORS:
            pos += 1
        word = text[start:pos]
        if not word:  # a stray '=' or quote: skip it rather than loop forever
            pos += 1
            continue
        after = pos
        while after < end and text[after] in " \t":
            after += 1
        is_param = scheme is not None and after < end and text[after] == "="
        if not is_param:
            if after < end and text[after] == "=" and scheme is None:
                # a parameter with no scheme before it: malformed, skip its value
                pos = _skip_value(text, after + 1)
                continue
            flush()
            scheme, params = word, {}
            continue
        value, pos = _read_value(text, after + 1)
        params[word.lower()] = value
    flush()
    return challenges


def _read_value(text: str, pos: int) -> tuple[str, int]:
    end = len(text)
    while pos < end and text[pos] in " \t":
        pos += 1
    if pos < end and text[pos] == '"':
        pos += 1
        out: list[str] = []
        while pos < end and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < end:
                pos += 1
            out.append(text[pos])
            pos += 1
        return "".join(out), pos + 1
    start = pos
    while pos < end and text[pos] not in " \t,":
        pos += 1
    return text[start:pos], pos


def _skip_value(text: str, pos: int) -> int:
    return _read_value(text, pos)[1]
