"""Roles in the metadata database: privileges on repositories, admin privileges, included
roles; the built-in `admin` and `anonymous` roles."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from portway.auth.privileges import ACTIONS, ADMIN_ROLE, ANONYMOUS_ROLE, Privilege, Role
from portway.auth.store_base import StoreBase, StoreError
from portway.db.auth_schema import (
    role_admin_privileges,
    role_includes,
    role_privileges,
    roles,
    user_roles,
)

BUILTIN_ROLES = (
    Role(
        ADMIN_ROLE,
        privileges=(Privilege("*", ACTIONS),),
        admin=frozenset({"*"}),
        description="administrator: everything",
    ),
    Role(ANONYMOUS_ROLE, description="what requests without credentials may do"),
)


class RoleRecords(StoreBase):
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
