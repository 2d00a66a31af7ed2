"""Privileges, roles, principals and the pure decision: what may this principal do here?

Nexus-style repository actions:

    browse  see that the repository and its images exist (catalog, search, tags list)
    read    pull manifests and blobs
    add     push new content (new tags, new manifests, blobs)
    edit    overwrite or untag existing content
    delete  delete manifests, tags, blobs

Admin privileges (`ADMIN_PRIVILEGES`) govern the admin API and CLI, not repositories. A
principal holding the admin privilege "*" is an administrator: every action everywhere.

Nothing here does I/O; the store builds principals, the service turns decisions into tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

BROWSE, READ, ADD, EDIT, DELETE = "browse", "read", "add", "edit", "delete"
ACTIONS: frozenset[str] = frozenset({BROWSE, READ, ADD, EDIT, DELETE})

ADMIN_PRIVILEGES: frozenset[str] = frozenset(
    {"users", "roles", "repositories", "settings", "audit", "*"}
)
"""`users`/`roles`: manage identities; `repositories`/`settings`: configuration; `audit`: read
the audit log; `*`: all of them and every repository action (administrator)."""

ANONYMOUS = "anonymous"
ADMIN_ROLE = "admin"
ANONYMOUS_ROLE = "anonymous"
PUBLIC_ROLE = "public-pull"
"""Synthetic role built from the per-repository `anonymous_pull` switches (never stored)."""

# Docker token actions and their Portway meaning.
PULL, PUSH, DOCKER_DELETE, DOCKER_ALL = "pull", "push", "delete", "*"
DOCKER_ACTIONS: Mapping[str, frozenset[str]] = {
    PULL: frozenset({READ}),
    # A push of a new tag needs `add`; whether a push overwrites (and so needs `edit`) is
    # decided by the repository at manifest PUT time, against the granted actions.
    PUSH: frozenset({ADD}),
    DOCKER_DELETE: frozenset({DELETE}),
    DOCKER_ALL: ACTIONS,
}
"""Docker action -> the Portway actions it requires (all of them must be held)."""

DOCKER_CARRIES: Mapping[str, frozenset[str]] = {
    PULL: frozenset({READ, BROWSE}),
    PUSH: frozenset({ADD, EDIT}),
    DOCKER_DELETE: frozenset({DELETE}),
    DOCKER_ALL: ACTIONS,
}
"""Portway actions a granted Docker action carries into the token when the principal holds
them: `push` carries `edit` so the repository can decide an overwrite without a second round
trip; `pull` carries `browse` for the tags list."""

PORTWAY_TO_DOCKER: Mapping[str, frozenset[str]] = {
    BROWSE: frozenset({PULL, DOCKER_ALL}),
    READ: frozenset({PULL, DOCKER_ALL}),
    ADD: frozenset({PUSH, DOCKER_ALL}),
    EDIT: frozenset({PUSH, DOCKER_ALL}),
    DELETE: frozenset({DOCKER_DELETE, DOCKER_ALL}),
}
"""Which token actions on an image let a request use a Portway action on that image."""


class PrivilegeError(ValueError):
    """A privilege or role that cannot be stored (unknown action, bad pattern)."""


_PATTERN_RE = re.compile(r"^[a-z0-9*][a-z0-9._*-]{0,63}$")


@dataclass(frozen=True)
class Privilege:
    """Actions on repositories whose name matches `repository` (`*` is a wildcard)."""

    repository: str
    actions: frozenset[str]

    def __post_init__(self) -> None:
        if not _PATTERN_RE.match(self.repository):
            raise PrivilegeError(
                f"repository pattern {self.repository!r}: a repository name, '*' wildcards allowed"
            )
        unknown = set(self.actions) - ACTIONS
        if unknown:
            raise PrivilegeError(
                f"unknown actions {sorted(unknown)}; expected some of {sorted(ACTIONS)}"
            )
        object.__setattr__(self, "actions", frozenset(self.actions))

    def matches(self, repository: str) -> bool:
        return _compile(self.repository).fullmatch(repository) is not None


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


@dataclass(frozen=True)
class Role:
    """A named set of privileges; `roles` names roles whose privileges this one includes."""

    name: str
    privileges: tuple[Privilege, ...] = ()
    roles: tuple[str, ...] = ()
    admin: frozenset[str] = frozenset()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise PrivilegeError("role names are 1-64 characters")
        unknown = set(self.admin) - ADMIN_PRIVILEGES
        if unknown:
            raise PrivilegeError(
                f"unknown admin privileges {sorted(unknown)}; "
                f"expected some of {sorted(ADMIN_PRIVILEGES)}"
            )
        object.__setattr__(self, "admin", frozenset(self.admin))
        object.__setattr__(self, "privileges", tuple(self.privileges))
        object.__setattr__(self, "roles", tuple(self.roles))


@dataclass(frozen=True)
class Principal:
    """Who is asking. `roles` are effective roles: nested roles already expanded."""

    name: str
    roles: tuple[Role, ...] = ()
    is_admin: bool = False
    anonymous: bool = False
    admin_privileges: frozenset[str] = frozenset()

    def with_roles(self, *roles: Role) -> Principal:
        return Principal(
            name=self.name,
            roles=self.roles + tuple(r for r in roles if r not in self.roles),
            is_admin=self.is_admin,
            anonymous=self.anonymous,
            admin_privileges=self.admin_privileges,
        )

    def has_admin(self, privilege: str) -> bool:
        """May this principal use the admin privilege `privilege` (e.g. "users")?"""
        return self.is_admin or privilege in self.admin_privileges


def make_principal(name: str, roles: Iterable[Role], *, anonymous: bool = False) -> Principal:
    """A principal from its effective roles; admin status and privileges come from the roles."""
    effective = tuple(roles)
    admin: frozenset[str] = frozenset().union(*(r.admin for r in effective))
    return Principal(
        name=name,
        roles=effective,
        is_admin="*" in admin and not anonymous,
        anonymous=anonymous,
        admin_privileges=admin if not anonymous else frozenset(),
    )


def expand_roles(names: Iterable[str], lookup: Callable[[str], Role | None]) -> tuple[Role, ...]:
    """Roles named, plus the roles they include, breadth first; cycles and unknown names skipped."""
    seen: set[str] = set()
    out: list[Role] = []
    queue = list(names)
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        role = lookup(name)
        if role is None:
            continue
        out.append(role)
        queue.extend(role.roles)
    return tuple(out)


def public_role(repositories: Iterable[str]) -> Role:
    """The grants of the per-repository "anonymous pull" switch: browse and read on each."""
    names = sorted(set(repositories))
    return Role(
        name=PUBLIC_ROLE,
        privileges=tuple(Privilege(n, frozenset({BROWSE, READ})) for n in names),
        description="anonymous pull (repository setting)",
    )


def anonymous_principal(
    roles: Iterable[Role] = (), public_repositories: Iterable[str] = ()
) -> Principal:
    """The principal of a request without credentials: its own role plus the public role."""
    return make_principal(ANONYMOUS, (*roles, public_role(public_repositories)), anonymous=True)


def allowed_actions(principal: Principal, repository: str) -> frozenset[str]:
    """Every repository action `principal` may perform on `repository`."""
    if principal.is_admin:
        return ACTIONS
    allowed: set[str] = set()
    for role in principal.roles:
        for priv in role.privileges:
            if priv.matches(repository):
                allowed |= priv.actions
    return frozenset(allowed)


def grant(principal: Principal, repository: str, requested: Iterable[str]) -> frozenset[str]:
    """The requested actions the principal may perform: an intersection, never an error."""
    return allowed_actions(principal, repository) & frozenset(requested)


def docker_grant(
    principal: Principal, repository: str, requested: Iterable[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """Grant Docker token actions (`pull`, `push`, `delete`, `*`) on a repository.

    Returns (docker actions granted, Portway actions they carry). `*` is granted only when
    every action is allowed; see `DOCKER_CARRIES` for what each granted action carries.
    """
    allowed = allowed_actions(principal, repository)
    docker: set[str] = set()
    portway: set[str] = set()
    for action in requested:
        needs = DOCKER_ACTIONS.get(action)
        if needs is None or not needs <= allowed:
            continue
        docker.add(action)
        portway |= needs | (DOCKER_CARRIES[action] & allowed)
    return frozenset(docker), frozenset(portway)


def browsable(principal: Principal, repositories: Iterable[str]) -> list[str]:
    """The repositories `principal` may see listed (catalog, search), in the given order."""
    return [r for r in repositories if BROWSE in allowed_actions(principal, r)]
