"""Operations on users, roles and signing keys, each with its audit record (ADR 17).

The CLI calls these today and the admin API will call the same ones: a transport parses,
calls one method, renders the result or the error. A change is written to the audit log only
once it is stored; a refused one (`StoreError`, `PrivilegeError`, `PasswordRejected`,
`KeyFolderError`) raises and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from portway.auth.audit import AuditLog
from portway.auth.keys import KeyRing
from portway.auth.passwords import MAX_PASSWORD_BYTES
from portway.auth.privileges import Role
from portway.auth.ratelimit import LoginLimiter
from portway.auth.store import UserStore
from portway.auth.store_base import StoreError
from portway.auth.users_store import UserInfo
from portway.config import SecurityConfig


class PasswordRejected(ValueError):
    """A new password outside the configured limits."""


def check_password(password: str, security: SecurityConfig) -> None:
    """Refuse a new password outside `[security]`'s limits (before anything is opened)."""
    minimum = security.min_password_length
    if len(password) < minimum:
        raise PasswordRejected(
            f"the password is too short: at least {minimum} characters "
            "([security] min_password_length)"
        )
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordRejected(f"the password is too long: at most {MAX_PASSWORD_BYTES} bytes")


class UserService:
    def __init__(
        self,
        store: UserStore,
        limiter: LoginLimiter,
        audit: AuditLog,
        security: SecurityConfig,
        data_dir: Path,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.audit = audit
        self.security = security
        self.data_dir = data_dir

    def list(self) -> list[UserInfo]:
        return self.store.list_users()

    def add(self, name: str, password: str, roles: Sequence[str], *, actor: str) -> None:
        check_password(password, self.security)
        self.store.add_user(name, password, roles)
        self.audit.write("user.add", principal=actor, detail={"user": name, "roles": list(roles)})

    def set_password(self, name: str, password: str, *, actor: str) -> None:
        """A new password; for `admin`, the first password's file goes (it is no longer true)."""
        check_password(password, self.security)
        self.store.set_password(name, password)
        if name == "admin":
            (self.data_dir / "admin.password").unlink(missing_ok=True)
        self.audit.write("user.passwd", principal=actor, detail={"user": name})

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> None:
        self.store.disable_user(name, disabled)
        event = "user.disable" if disabled else "user.enable"
        self.audit.write(event, principal=actor, detail={"user": name})

    def delete(self, name: str, *, actor: str) -> None:
        self.store.delete_user(name)
        self.audit.write("user.delete", principal=actor, detail={"user": name})

    def set_roles(self, name: str, roles: Sequence[str], *, actor: str) -> None:
        self.store.set_user_roles(name, roles)
        self.audit.write("user.roles", principal=actor, detail={"user": name, "roles": list(roles)})

    def unlock(self, name: str, address: str | None, *, actor: str) -> int:
        """Forgive the user's failed logins (every address), and the address's when given.
        Returns how many failed logins were forgiven."""
        if self.store.get_user(name) is None:
            raise StoreError(f"no user {name!r}")
        forgiven = self.limiter.unlock(name, address)
        self.audit.write("user.unlock", principal=actor, detail={"user": name, "address": address})
        return forgiven


def privilege_text(role: Role) -> list[str]:
    return [f"{p.repository}:{','.join(sorted(p.actions))}" for p in role.privileges]


class RoleService:
    def __init__(self, store: UserStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    def list(self) -> list[Role]:
        return self.store.list_roles()

    def put(self, role: Role, *, actor: str) -> None:
        """Create or replace a role."""
        self.store.put_role(role)
        detail = {
            "role": role.name,
            "privileges": privilege_text(role),
            "include": list(role.roles),
        }
        self.audit.write("role.put", principal=actor, detail=detail)

    def delete(self, name: str, *, actor: str) -> None:
        self.store.delete_role(name)
        self.audit.write("role.delete", principal=actor, detail={"role": name})


class KeyService:
    """Token signing keys: running servers take a change within a second (auth/keys.py)."""

    def __init__(self, ring: KeyRing, audit: AuditLog) -> None:
        self.ring = ring
        self.audit = audit

    def list(self) -> tuple[str, list[str]]:
        """(the signing key's kid, every kid)."""
        current = self.ring.current.kid
        return current, self.ring.kids()

    def rotate(self, *, actor: str) -> str:
        self.ring.load()
        kid = self.ring.rotate()
        self.audit.write("key.rotate", principal=actor, detail={"kid": kid})
        return kid

    def remove(self, kid: str, *, actor: str) -> None:
        self.ring.remove(kid)
        self.audit.write("key.remove", principal=actor, detail={"kid": kid})
