"""Users, roles and refresh tokens in the metadata database (SQLAlchemy Core, sync engines).

Reads go through the read engine, each in one snapshot (on SQLite a deferred `BEGIN`: in WAL
mode it never takes or waits for the write lock; see portway.db.dialect), so logins, tokens and
role checks go on while another process writes; changes go through the write engine.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from portway.auth.keys import write_private
from portway.auth.passwords import PasswordHasher
from portway.auth.privileges import (
    ACTIONS,
    ADMIN_ROLE,
    ANONYMOUS,
    ANONYMOUS_ROLE,
    Principal,
    Privilege,
    Role,
    expand_roles,
    make_principal,
)
from portway.db.auth_schema import (
    refresh_tokens,
    role_admin_privileges,
    role_includes,
    role_privileges,
    roles,
    security_state,
    user_roles,
    users,
)
from portway.db.dialect import dialect_for
from portway.db.engine import DatabaseBusy, DatabaseFull

ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "admin.password"
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")

BUILTIN_ROLES = (
    Role(
        ADMIN_ROLE,
        privileges=(Privilege("*", ACTIONS),),
        admin=frozenset({"*"}),
        description="administrator: everything",
    ),
    Role(ANONYMOUS_ROLE, description="what requests without credentials may do"),
)


class StoreError(ValueError):
    """A refused change (unknown user or role, duplicate, reserved name); message for the user."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    disabled: bool
    created: datetime
    roles: tuple[str, ...]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UserStore:
    def __init__(
        self,
        engine: Engine,
        hasher: PasswordHasher | None = None,
        *,
        read_engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.read_engine = read_engine if read_engine is not None else engine
        self.hasher = hasher or PasswordHasher()
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot: the statements inside see one state of the database."""
        with self.read_engine.connect() as conn:
            if self.read_engine is not self.engine:
                # SQLite: a deferred BEGIN, a WAL read snapshot that takes no write lock
                with dialect_for(conn).snapshot(conn):
                    yield conn
            else:
                yield conn

    @contextlib.contextmanager
    def _change(self) -> Iterator[Connection]:
        """A transaction that changes users or roles: it also bumps the security generation,
        so every worker's cached logins are checked again on their next use."""
        with self.engine.begin() as conn:
            bump = dialect_for(conn).insert(security_state).values(id=1, generation=1)
            conn.execute(
                bump.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"generation": security_state.c.generation + 1},
                )
            )
            yield conn

    def generation(self) -> int:
        """Changes to users and roles so far (any worker, any `portway user|role` command)."""
        with self._read() as conn:
            value = conn.execute(select(security_state.c.generation)).scalar()
        return int(value or 0)

    # -- users -----------------------------------------------------------------------------

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
        with self._read() as conn:
            held: dict[str, list[str]] = {}
            for user, role in conn.execute(links):
                held.setdefault(user, []).append(role)
            return [
                UserInfo(
                    row.name, bool(row.disabled), _utc(row.created), tuple(held.get(row.name, ()))
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
            with contextlib.suppress(DatabaseBusy, DatabaseFull), self.engine.begin() as conn:
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

    # -- roles -----------------------------------------------------------------------------

    def ensure_builtin_roles(self) -> None:
        with self._change() as conn:
            for role in BUILTIN_ROLES:
                exists = conn.execute(select(roles.c.name).where(roles.c.name == role.name)).first()
                if exists is None:
                    try:
                        with conn.begin_nested():
                            self._write_role(conn, role, builtin=True)
                    except IntegrityError:
                        pass  # another worker made it at the same moment

    def put_role(self, role: Role) -> None:
        """Create or replace a role (its privileges, admin privileges and included roles)."""
        with self._change() as conn:
            row = conn.execute(select(roles.c.builtin).where(roles.c.name == role.name)).first()
            if row is not None and row.builtin and role.name == ADMIN_ROLE:
                raise StoreError(f"the built-in role {role.name!r} cannot be changed")
            unknown = [
                r
                for r in role.roles
                if r != role.name
                and conn.execute(select(roles.c.name).where(roles.c.name == r)).first() is None
            ]
            if unknown or role.name in role.roles:
                raise StoreError(f"role {role.name!r} includes unknown roles or itself: {unknown}")
            builtin = bool(row.builtin) if row is not None else False
            self._clear_role(conn, role.name)
            self._write_role(conn, role, builtin=builtin)

    def _write_role(self, conn: Connection, role: Role, *, builtin: bool) -> None:
        conn.execute(
            insert(roles).values(name=role.name, description=role.description, builtin=builtin)
        )
        pairs = sorted({(p.repository, a) for p in role.privileges for a in p.actions})
        if pairs:
            conn.execute(
                insert(role_privileges),
                [{"role": role.name, "repository": r, "action": a} for r, a in pairs],
            )
        if role.admin:
            conn.execute(
                insert(role_admin_privileges),
                [{"role": role.name, "privilege": p} for p in sorted(role.admin)],
            )
        if role.roles:
            conn.execute(
                insert(role_includes),
                [{"role": role.name, "included": r} for r in sorted(set(role.roles))],
            )

    def _clear_role(self, conn: Connection, name: str) -> None:
        for table in (role_privileges, role_admin_privileges, role_includes):
            conn.execute(delete(table).where(table.c.role == name))
        conn.execute(delete(roles).where(roles.c.name == name))

    def delete_role(self, name: str) -> None:
        with self._change() as conn:
            row = conn.execute(select(roles.c.builtin).where(roles.c.name == name)).first()
            if row is None:
                raise StoreError(f"no role {name!r}")
            if row.builtin:
                raise StoreError(f"the built-in role {name!r} cannot be deleted")
            conn.execute(delete(user_roles).where(user_roles.c.role == name))
            conn.execute(delete(role_includes).where(role_includes.c.included == name))
            self._clear_role(conn, name)

    def get_role(self, name: str) -> Role | None:
        return self.load_roles().get(name)

    def list_roles(self) -> list[Role]:
        return [r for _, r in sorted(self.load_roles().items())]

    def load_roles(self) -> dict[str, Role]:
        """Every stored role by name (roles are few: read them all at once)."""
        with self._read() as conn:
            described = {r.name: r.description for r in conn.execute(select(roles))}
            privs: dict[str, dict[str, set[str]]] = {}
            for role, repo, action in conn.execute(select(role_privileges)):
                privs.setdefault(role, {}).setdefault(repo, set()).add(action)
            admin: dict[str, set[str]] = {}
            for role, priv in conn.execute(select(role_admin_privileges)):
                admin.setdefault(role, set()).add(priv)
            includes: dict[str, list[str]] = {}
            for role, included in conn.execute(select(role_includes)):
                includes.setdefault(role, []).append(included)
        out: dict[str, Role] = {}
        for name, description in described.items():
            out[name] = Role(
                name,
                privileges=tuple(
                    Privilege(repo, frozenset(acts & ACTIONS))
                    for repo, acts in sorted(privs.get(name, {}).items())
                ),
                roles=tuple(sorted(includes.get(name, []))),
                admin=frozenset(admin.get(name, set())),
                description=description or "",
            )
        return out

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

    # -- refresh tokens --------------------------------------------------------------------

    def record_refresh(self, jti: str, user: str, repository: str | None, expires_at: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(refresh_tokens).values(
                    jti=jti,
                    username=user,
                    repository=repository or "",
                    issued=self._now(),
                    expires=datetime.fromtimestamp(expires_at, UTC),
                    revoked=False,
                )
            )

    def refresh_valid(self, jti: str, user: str, repository: str | None) -> bool:
        """Recorded, not revoked, not expired, for this user and repository, user enabled."""
        with self._read() as conn:
            row = conn.execute(
                select(refresh_tokens.c.revoked, refresh_tokens.c.expires, users.c.disabled)
                .join(users, users.c.name == refresh_tokens.c.username)
                .where(
                    refresh_tokens.c.jti == jti,
                    refresh_tokens.c.username == user,
                    refresh_tokens.c.repository == (repository or ""),
                )
            ).first()
        if row is None or row.revoked or row.disabled:
            return False
        return _utc(row.expires) > self._now()

    def revoke_refresh(self, jti: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(refresh_tokens).where(refresh_tokens.c.jti == jti).values(revoked=True)
            )

    def _revoke_user(self, conn: Connection, user: str) -> None:
        conn.execute(
            update(refresh_tokens).where(refresh_tokens.c.username == user).values(revoked=True)
        )

    def purge_refresh_tokens(self) -> int:
        """Forget expired refresh tokens; returns how many."""
        with self.engine.begin() as conn:
            done = conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.expires <= self._now())
            )
            return int(done.rowcount)
