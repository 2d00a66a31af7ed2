"""`portway user ...` and `portway role ...`: identities and privileges, until the admin API.

Each command parses, calls one service of the composition root (portway/compose.py) and
prints; the services store the change and write its audit record.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from portway.config import load_settings

if TYPE_CHECKING:
    from portway.compose import Portway

CLI = "cli"  # the audit log's principal for changes made here


@contextmanager
def _root(args: argparse.Namespace) -> Iterator[Portway]:
    from portway.compose import Portway

    with Portway(load_settings(args.config)) as root:
        yield root


def _password(args: argparse.Namespace) -> str:
    """The new password from stdin, the option or the terminal, checked against the limits;
    any problem ends the command with one line (no traceback)."""
    from portway.auth.services import PasswordRejected, check_password

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
    try:
        check_password(password, load_settings(args.config).security)
    except PasswordRejected as exc:
        raise SystemExit(f"portway: {exc}") from None
    return password


def _run(args: argparse.Namespace, change: Callable[[Portway], object]) -> int:
    """One change through the services (which write its audit record); a refused one ends
    the command with one line and status 1."""
    from portway.auth.privileges import PrivilegeError
    from portway.auth.store_base import StoreError

    with _root(args) as root:
        try:
            change(root)
        except (StoreError, PrivilegeError) as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 1
    return 0


def user_add(args: argparse.Namespace) -> int:
    password = _password(args)
    return _run(args, lambda r: r.users.add(args.name, password, args.role, actor=CLI))


def user_passwd(args: argparse.Namespace) -> int:
    password = _password(args)
    return _run(args, lambda r: r.users.set_password(args.name, password, actor=CLI))


def user_disable(args: argparse.Namespace) -> int:
    return _run(args, lambda r: r.users.set_disabled(args.name, True, actor=CLI))


def user_enable(args: argparse.Namespace) -> int:
    return _run(args, lambda r: r.users.set_disabled(args.name, False, actor=CLI))


def user_delete(args: argparse.Namespace) -> int:
    return _run(args, lambda r: r.users.delete(args.name, actor=CLI))


def user_unlock(args: argparse.Namespace) -> int:
    """Forgive a user's failed logins (every address), and an address's with --address."""
    forgiven: list[int] = []
    done = _run(args, lambda r: forgiven.append(r.users.unlock(args.name, args.address, actor=CLI)))
    if done == 0:
        where = f" and from {args.address}" if args.address else ""
        print(f"unlocked {args.name}{where}: {forgiven[0]} failed logins forgiven")
    return done


def user_roles(args: argparse.Namespace) -> int:
    return _run(args, lambda r: r.users.set_roles(args.name, args.roles, actor=CLI))


def user_list(args: argparse.Namespace) -> int:
    with _root(args) as root:
        print(f"{'USER':<24} {'STATE':<9} ROLES")
        for user in root.users.list():
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
    return _run(args, lambda r: r.roles.put(role, actor=CLI))


def role_delete(args: argparse.Namespace) -> int:
    return _run(args, lambda r: r.roles.delete(args.name, actor=CLI))


def role_list(args: argparse.Namespace) -> int:
    with _root(args) as root:
        for role in root.roles.list():
            privs = " ".join(
                f"{p.repository}:{','.join(sorted(p.actions))}" for p in role.privileges
            )
            extra = f" includes={','.join(role.roles)}" if role.roles else ""
            admin = f" admin={','.join(sorted(role.admin))}" if role.admin else ""
            print(f"{role.name}: {privs}{extra}{admin}")
    return 0


def key_rotate(args: argparse.Namespace) -> int:
    from portway.auth.keys import KeyFolderError

    with _root(args) as root:
        try:
            kid = root.keys.rotate(actor=CLI)
        except KeyFolderError as exc:
            print(f"portway: {exc}; the signing keys are unchanged", file=sys.stderr)
            return 1
    print(kid)
    return 0


def key_list(args: argparse.Namespace) -> int:
    from portway.auth.keys import KeyFolderError

    with _root(args) as root:
        try:
            current, kids = root.keys.list()
        except KeyFolderError as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 1
    for kid in kids:
        print(f"{kid}{'  (current)' if kid == current else ''}")
    return 0


def key_remove(args: argparse.Namespace) -> int:
    from portway.auth.keys import KeyFolderError

    with _root(args) as root:
        try:
            root.keys.remove(args.kid, actor=CLI)
        except KeyFolderError as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 1
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
