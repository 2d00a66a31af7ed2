"""Users in the metadata database: added, changed, disabled, deleted, their roles, their
password checked, their principal; the first start's `admin` user."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from portway.auth.keys import write_private
from portway.auth.privileges import (
    ADMIN_ROLE,
    ANONYMOUS,
    ANONYMOUS_ROLE,
    Principal,
    Role,
    expand_roles,
    make_principal,
)
from portway.auth.refresh_store import RefreshRecords
from portway.auth.roles_store import RoleRecords
from portway.auth.store_base import StoreError, utc
from portway.db.auth_schema import refresh_tokens, roles, user_roles, users
from portway.db.engine import DatabaseBusy, DatabaseFull

ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "admin.password"
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


@dataclass(frozen=True)
class UserInfo:
    name: str
    disabled: bool
    created: datetime
    roles: tuple[str, ...]


class UserRecords(RoleRecords, RefreshRecords):
    """Users; their roles must exist (roles_store) and their refresh tokens go when the
    password changes or the user is disabled (refresh_store)."""

    def add_user(
        self, name: str, password: str, roles_: Iterable[str] = (), *, disabled: bool = False
    ) -> None:
        if not USER_NAME_RE.match(name) or name == ANONYMOUS:
            raise StoreError(
                f"user name {name!r}: 1-128 characters of letters, digits and . _ @ + -, "
                f"not {ANONYMOUS!r}"
            )
        if not password:
            raise StoreError("the password must not be empty")
        password_hash = self.hasher.hash(password)
        try:
            with self._change() as conn:
                self._insert_user(conn, name, password_hash, roles_, disabled=disabled)
        except IntegrityError:
            raise StoreError(f"user {name!r} already exists") from None

    def _insert_user(
        self,
        conn: Connection,
        name: str,
        password_hash: str,
        roles_: Iterable[str],
        *,
        disabled: bool,
    ) -> None:
        now = self._now()
        conn.execute(
            insert(users).values(
                name=name,
                password_hash=password_hash,
                disabled=disabled,
                created=now,
                password_changed=now,
            )
        )
        self._set_roles(conn, name, roles_)

    def set_password(self, name: str, password: str) -> None:
        """Change a password; the user's refresh tokens stop working."""
        if not password:
            raise StoreError("the password must not be empty")
        password_hash = self.hasher.hash(password)
        with self._change() as conn:
            done = conn.execute(
                update(users)
                .where(users.c.name == name)
                .values(password_hash=password_hash, password_changed=self._now())
            )
            if done.rowcount == 0:
                raise StoreError(f"no user {name!r}")
            self._revoke_user(conn, name)

    def disable_user(self, name: str, disabled: bool = True) -> None:
        """Disable (or enable) a user; disabling revokes the user's refresh tokens."""
        with self._change() as conn:
            done = conn.execute(update(users).where(users.c.name == name).values(disabled=disabled))
            if done.rowcount == 0:
                raise StoreError(f"no user {name!r}")
            if disabled:
                self._revoke_user(conn, name)

    def delete_user(self, name: str) -> None:
        with self._change() as conn:
            conn.execute(delete(refresh_tokens).where(refresh_tokens.c.username == name))
            conn.execute(delete(user_roles).where(user_roles.c.username == name))
            if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
                raise StoreError(f"no user {name!r}")

    def get_user(self, name: str) -> UserInfo | None:
        found = [u for u in self._users(name) if u.name == name]
        return found[0] if found else None

    def list_users(self) -> list[UserInfo]:
        return self._users(None)

    def _users(self, name: str | None) -> list[UserInfo]:
        query = select(users.c.name, users.c.disabled, users.c.created).order_by(users.c.name)
        links = select(user_roles.c.username, user_roles.c.role).order_by(user_roles.c.role)
        if name is not None:
            query = query.where(users.c.name == name)
            links = links.where(user_roles.c.username == name)
        with self._read("get_user" if name is not None else "list_users") as conn:
            held: dict[str, list[str]] = {}
            for user, role in conn.execute(links):
                held.setdefault(user, []).append(role)
            return [
                UserInfo(
                    row.name, bool(row.disabled), utc(row.created), tuple(held.get(row.name, ()))
                )
                for row in conn.execute(query)
            ]

    def set_user_roles(self, name: str, roles_: Iterable[str]) -> None:
        with self._change() as conn:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first() is None:
                raise StoreError(f"no user {name!r}")
            self._set_roles(conn, name, roles_)

    def _set_roles(self, conn: Connection, name: str, roles_: Iterable[str]) -> None:
        wanted = sorted(set(roles_))
        if wanted:
            known = set(
                conn.execute(select(roles.c.name).where(roles.c.name.in_(wanted))).scalars()
            )
            missing = [r for r in wanted if r not in known]
            if missing:
                raise StoreError(f"unknown roles: {', '.join(missing)}")
        conn.execute(delete(user_roles).where(user_roles.c.username == name))
        if wanted:
            conn.execute(insert(user_roles), [{"username": name, "role": r} for r in wanted])

    # -- authentication --------------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> Principal | None:
        """The user's principal when the password is right and the user enabled, else None.

        Takes the time of one argon2 verification whether or not the user exists; upgrades
        the stored hash when our parameters changed.
        """
        with self._read() as conn:
            row = conn.execute(
                select(users.c.password_hash, users.c.disabled).where(users.c.name == name)
            ).first()
        if row is None:
            self.hasher.verify_dummy(password)
            return None
        if not self.hasher.verify(row.password_hash, password) or row.disabled:
            return None
        if self.hasher.needs_rehash(row.password_hash):
            # Best effort: a busy or full database keeps the old hash until a later login.
            with contextlib.suppress(DatabaseBusy, DatabaseFull), self._write("rehash") as conn:
                conn.execute(
                    update(users)
                    .where(users.c.name == name, users.c.password_hash == row.password_hash)
                    .values(password_hash=self.hasher.hash(password))
                )
        return self.principal(name)

    def principal(self, name: str) -> Principal | None:
        """The principal of an enabled user (roles expanded), without a password check."""
        with self._read() as conn:
            row = conn.execute(select(users.c.disabled).where(users.c.name == name)).first()
            if row is None or row.disabled:
                return None
            held = list(
                conn.execute(
                    select(user_roles.c.role).where(user_roles.c.username == name)
                ).scalars()
            )
        catalog = self.load_roles()
        return make_principal(name, expand_roles(held, catalog.get))

    def anonymous_roles(self) -> tuple[Role, ...]:
        """The stored `anonymous` role and the roles it includes."""
        return expand_roles([ANONYMOUS_ROLE], self.load_roles().get)

    # -- first start -----------------------------------------------------------------------

    def ensure_admin(self, data_dir: Path) -> str | None:
        """On first start, create `admin` with a random password written to
        `<data_dir>/admin.password` (mode 0600) and return the password, for the caller to
        print once. Returns None when the admin user exists already (or another worker just
        created it)."""
        self.ensure_builtin_roles()
        if self.get_user(ADMIN_USER) is not None:
            return None
        password = secrets.token_urlsafe(18)
        password_hash = self.hasher.hash(password)
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._change() as conn:
                self._insert_user(conn, ADMIN_USER, password_hash, [ADMIN_ROLE], disabled=False)
                # Written inside the transaction: if the file cannot be written, no admin
                # exists whose password nobody knows.
                write_private(data_dir / ADMIN_PASSWORD_FILE, (password + "\n").encode())
        except IntegrityError:
            return None
        return password
