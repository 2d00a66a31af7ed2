"""`portway user ...` and `portway role ...`: identities and privileges, until the admin API.

Changes go straight to the database of the data directory and are written to the audit log.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from portway.config import load_settings


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[object, object]]:
    from portway.auth.audit import AuditLog
    from portway.auth.store import UserStore
    from portway.db.store import MetadataStore

    settings = load_settings(args.config)
    data_dir = settings.server.data_dir
    meta = MetadataStore.open_sqlite(data_dir / "portway.db")
    try:
        store = UserStore(meta.engine)
        store.ensure_builtin_roles()
        yield store, AuditLog(data_dir / "audit.log")
    finally:
        meta.close()


def _password(args: argparse.Namespace) -> str:
    """The new password from stdin, the option or the terminal, checked against the limits;
    any problem ends the command with one line (no traceback)."""
    from portway.auth.passwords import MAX_PASSWORD_BYTES

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = str(args.password)
    elif not sys.stdin.isatty():
        raise SystemExit(
            "portway: no terminal to ask for the password: pipe it in with --password-stdin"
        )
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise SystemExit("portway: no password given") from None
        if password != again:
            raise SystemExit("portway: the passwords differ")
    minimum = load_settings(args.config).security.min_password_length
    if len(password) < minimum:
        raise SystemExit(
            f"portway: the password is too short: at least {minimum} characters "
            "([security] min_password_length)"
        )
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise SystemExit(f"portway: the password is too long: at most {MAX_PASSWORD_BYTES} bytes")
    return password


def _run(args: argparse.Namespace, event: str, fn: object, detail: dict[str, object]) -> int:
    from portway.auth.audit import AuditLog
    from portway.auth.privileges import PrivilegeError
    from portway.auth.store import StoreError, UserStore

    with _store(args) as (store, audit):
        assert isinstance(store, UserStore) and isinstance(audit, AuditLog)
        try:
            assert callable(fn)
            fn(store)
        except (StoreError, PrivilegeError) as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 1
        audit.write(event, principal="cli", detail=detail)
    return 0


def user_add(args: argparse.Namespace) -> int:
    password = _password(args)
    return _run(
        args,
        "user.add",
        lambda s: s.add_user(args.name, password, args.role),
        {"user": args.name, "roles": args.role},
    )


def user_passwd(args: argparse.Namespace) -> int:
    password = _password(args)

    def change(store: object) -> None:
        store.set_password(args.name, password)  # type: ignore[attr-defined]
        if args.name == "admin":
            from portway.config import load_settings as _load

            (_load(args.config).server.data_dir / "admin.password").unlink(missing_ok=True)

    return _run(args, "user.passwd", change, {"user": args.name})


def user_disable(args: argparse.Namespace) -> int:
    return _run(
        args, "user.disable", lambda s: s.disable_user(args.name, True), {"user": args.name}
    )


def user_enable(args: argparse.Namespace) -> int:
    return _run(
        args, "user.enable", lambda s: s.disable_user(args.name, False), {"user": args.name}
    )


def user_delete(args: argparse.Namespace) -> int:
    return _run(args, "user.delete", lambda s: s.delete_user(args.name), {"user": args.name})


def user_unlock(args: argparse.Namespace) -> int:
    """Forgive a user's failed logins (every address), and an address's with --address."""
    from portway.auth.ratelimit import LoginLimiter

    forgiven: list[int] = []

    def unlock(store: object) -> None:
        from portway.auth.store import StoreError, UserStore

        assert isinstance(store, UserStore)
        if store.get_user(args.name) is None:
            raise StoreError(f"no user {args.name!r}")
        forgiven.append(LoginLimiter(store.engine).unlock(args.name, args.address))

    detail = {"user": args.name, "address": args.address}
    done = _run(args, "user.unlock", unlock, detail)
    if done == 0:
        where = f" and from {args.address}" if args.address else ""
        print(f"unlocked {args.name}{where}: {forgiven[0]} failed logins forgiven")
    return done


def user_roles(args: argparse.Namespace) -> int:
    return _run(
        args,
        "user.roles",
        lambda s: s.set_user_roles(args.name, args.roles),
        {"user": args.name, "roles": args.roles},
    )


def user_list(args: argparse.Namespace) -> int:
    from portway.auth.store import UserStore

    with _store(args) as (store, _audit):
        assert isinstance(store, UserStore)
        print(f"{'USER':<24} {'STATE':<9} ROLES")
        for user in store.list_users():
            state = "disabled" if user.disabled else "active"
            print(f"{user.name:<24} {state:<9} {','.join(user.roles)}")
    return 0


def _privilege(text: str) -> object:
    from portway.auth.privileges import Privilege

    repo, sep, actions = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected REPOSITORY:ACTIONS, e.g. docker-hosted-*:browse,read,add"
        )
    return Privilege(repo, frozenset(a.strip() for a in actions.split(",") if a.strip()))


def role_add(args: argparse.Namespace) -> int:
    from portway.auth.privileges import Privilege, PrivilegeError, Role

    try:
        privileges = tuple(_privilege(p) for p in args.privilege)
        role = Role(
            args.name,
            privileges=tuple(p for p in privileges if isinstance(p, Privilege)),
            roles=tuple(args.include),
            description=args.description,
        )
    except (PrivilegeError, argparse.ArgumentTypeError) as exc:
        print(f"portway: {exc}", file=sys.stderr)
        return 2
    return _run(
        args,
        "role.put",
        lambda s: s.put_role(role),
        {"role": args.name, "privileges": args.privilege, "include": args.include},
    )


def role_delete(args: argparse.Namespace) -> int:
    return _run(args, "role.delete", lambda s: s.delete_role(args.name), {"role": args.name})


def role_list(args: argparse.Namespace) -> int:
    from portway.auth.store import UserStore

    with _store(args) as (store, _audit):
        assert isinstance(store, UserStore)
        for role in store.list_roles():
            privs = " ".join(
                f"{p.repository}:{','.join(sorted(p.actions))}" for p in role.privileges
            )
            extra = f" includes={','.join(role.roles)}" if role.roles else ""
            admin = f" admin={','.join(sorted(role.admin))}" if role.admin else ""
            print(f"{role.name}: {privs}{extra}{admin}")
    return 0


def _keyring(args: argparse.Namespace) -> object:
    from portway.auth.keys import KeyRing

    return KeyRing.in_data_dir(load_settings(args.config).server.data_dir)


def key_rotate(args: argparse.Namespace) -> int:
    from portway.auth.audit import AuditLog
    from portway.auth.keys import KeyFolderError, KeyRing

    ring = _keyring(args)
    assert isinstance(ring, KeyRing)
    try:
        ring.load()
        kid = ring.rotate()
    except KeyFolderError as exc:
        print(f"portway: {exc}; the signing keys are unchanged", file=sys.stderr)
        return 1
    data_dir = load_settings(args.config).server.data_dir
    AuditLog(data_dir / "audit.log").write("key.rotate", principal="cli", detail={"kid": kid})
    print(kid)
    return 0


def key_list(args: argparse.Namespace) -> int:
    from portway.auth.keys import KeyFolderError, KeyRing

    ring = _keyring(args)
    assert isinstance(ring, KeyRing)
    try:
        current = ring.current.kid
    except KeyFolderError as exc:
        print(f"portway: {exc}", file=sys.stderr)
        return 1
    for kid in ring.kids():
        print(f"{kid}{'  (current)' if kid == current else ''}")
    return 0


def key_remove(args: argparse.Namespace) -> int:
    from portway.auth.audit import AuditLog
    from portway.auth.keys import KeyFolderError, KeyRing

    ring = _keyring(args)
    assert isinstance(ring, KeyRing)
    try:
        ring.remove(args.kid)
    except KeyFolderError as exc:
        print(f"portway: {exc}", file=sys.stderr)
        return 1
    data_dir = load_settings(args.config).server.data_dir
    AuditLog(data_dir / "audit.log").write("key.remove", principal="cli", detail={"kid": args.kid})
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
        return p

    def with_password(p: argparse.ArgumentParser) -> None:
        p.add_argument("--password-stdin", action="store_true", help="read it from stdin")
        p.add_argument("--password", help="the password (visible to other local users)")

    user = sub.add_parser("user", help="local users")
    us = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    p = common(us.add_parser("add", help="create a user"))
    p.add_argument("name")
    p.add_argument("--role", action="append", default=[], help="role to hold (repeatable)")
    with_password(p)
    p.set_defaults(func=user_add)
    p = common(us.add_parser("passwd", help="change a password"))
    p.add_argument("name")
    with_password(p)
    p.set_defaults(func=user_passwd)
    for name, fn in (("disable", user_disable), ("enable", user_enable), ("delete", user_delete)):
        p = common(us.add_parser(name, help=f"{name} a user"))
        p.add_argument("name")
        p.set_defaults(func=fn)
    p = common(
        us.add_parser(
            "unlock",
            help="forgive a user's failed logins (from every address)",
            description="Forgive NAME's failed logins from every address, so the user may log "
            "in again at once. With --address, also forgive every failed login from that "
            "client address (whatever user it named).",
        )
    )
    p.add_argument("name")
    p.add_argument("--address", help="also unlock this client address")
    p.set_defaults(func=user_unlock)
    p = common(us.add_parser("roles", help="set a user's roles"))
    p.add_argument("name")
    p.add_argument("roles", nargs="*")
    p.set_defaults(func=user_roles)
    common(us.add_parser("list", help="list users")).set_defaults(func=user_list)

    role = sub.add_parser("role", help="roles and their privileges")
    rs = role.add_subparsers(dest="role_command", required=True, metavar="ACTION")
    p = common(rs.add_parser("add", help="create or replace a role"))
    p.add_argument("name")
    p.add_argument(
        "--privilege",
        action="append",
        default=[],
        help="REPOSITORY:ACTIONS (browse,read,add,edit,delete); '*' wildcards; repeatable",
    )
    p.add_argument("--include", action="append", default=[], help="include another role")
    p.add_argument("--description", default="")
    p.set_defaults(func=role_add)
    p = common(rs.add_parser("delete", help="delete a role"))
    p.add_argument("name")
    p.set_defaults(func=role_delete)
    common(rs.add_parser("list", help="list roles")).set_defaults(func=role_list)

    key = sub.add_parser(
        "key",
        help="token signing keys",
        description="Token signing keys in <data>/keys. Running servers take a rotation or a "
        "removal within a second; tokens signed by a removed key are refused from then on.",
    )
    ks = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    common(ks.add_parser("rotate", help="new signing key (old ones keep verifying)")).set_defaults(
        func=key_rotate
    )
    common(ks.add_parser("list", help="list keys, the signing one marked")).set_defaults(
        func=key_list
    )
    p = common(ks.add_parser("remove", help="stop accepting tokens signed by KID"))
    p.add_argument("kid")
    p.set_defaults(func=key_remove)
