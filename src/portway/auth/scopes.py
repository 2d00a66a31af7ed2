"""Docker token scopes: `repository:library/alpine:pull,push`, `registry:catalog:*`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SCOPES = 16
"""How many scopes one token request may carry (after splitting space-separated ones)."""
MAX_SCOPE_LENGTH = 512

_TYPE_RE = re.compile(r"^([a-z0-9]+)(?:\(([a-z0-9._-]+)\))?$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,254}$")
_ACTION_RE = re.compile(r"^(?:[a-z]+|\*)$")


class ScopeError(ValueError):
    """A scope the token endpoint cannot accept; the message is safe to show the client."""


@dataclass(frozen=True)
class Scope:
    """One resource and the actions asked on it. `resource_class` is the tolerated
    `repository(plugin)` suffix; it carries no meaning here."""

    type: str
    name: str
    actions: tuple[str, ...]
    resource_class: str | None = None

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    @property
    def is_catalog(self) -> bool:
        return self.type == "registry" and self.name == "catalog"


CATALOG = Scope("registry", "catalog", ("*",))


def parse_scope(text: str) -> Scope:
    """Parse one `type[(class)]:name:actions` scope. The name may hold `:` (a registry port);
    the type ends at the first colon and the actions start after the last one."""
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"scope longer than {MAX_SCOPE_LENGTH} characters")
    head, sep1, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not (sep1 and sep2):
        raise ScopeError(f"malformed scope {_show(text)}: expected type:name:actions")
    m = _TYPE_RE.match(head)
    if not m:
        raise ScopeError(f"malformed scope {_show(text)}: bad resource type")
    if not _NAME_RE.match(name):
        raise ScopeError(f"malformed scope {_show(text)}: bad resource name")
    actions: list[str] = []
    for action in actions_text.split(","):
        if not _ACTION_RE.match(action):
            raise ScopeError(f"malformed scope {_show(text)}: bad action list")
        if action not in actions:
            actions.append(action)
    return Scope(m.group(1), name, tuple(actions), m.group(2))


def parse_scopes(values: Iterable[str], limit: int = MAX_SCOPES) -> list[Scope]:
    """Parse the token endpoint's repeated `scope` parameters (each may hold several
    space-separated scopes, as OAuth2 forms do). Scopes naming the same resource merge."""
    merged: dict[tuple[str, str], Scope] = {}
    count = 0
    for value in values:
        for text in value.split():
            count += 1
            if count > limit:
                raise ScopeError(f"too many scopes in one request (at most {limit})")
            scope = parse_scope(text)
            key = (scope.type, scope.name)
            old = merged.get(key)
            if old is not None:
                extra = tuple(a for a in scope.actions if a not in old.actions)
                scope = Scope(old.type, old.name, old.actions + extra, old.resource_class)
            merged[key] = scope
    return list(merged.values())


def _show(text: str) -> str:
    """A scope echoed in an error: shortened and stripped of anything unprintable."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:80])
    return repr(clean)
