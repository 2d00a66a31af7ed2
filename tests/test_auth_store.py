"""UserStore on a real SQLite file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select

import portway.db.auth_schema as auth_schema
from portway.auth.passwords import FAST_TEST_PARAMS, HashParams, PasswordHasher
from portway.auth.privileges import ACTIONS, Privilege, Role, allowed_actions
from portway.auth.store import UserStore
from portway.auth.store_base import StoreError
from portway.auth.users_store import ADMIN_PASSWORD_FILE
from portway.db.schema import metadata

HASHER = PasswordHasher(FAST_TEST_PARAMS)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    metadata.create_all(engine)
    return engine


@pytest.fixture
def store(engine: Engine) -> UserStore:
    s = UserStore(engine, HASHER)
    s.ensure_builtin_roles()
    return s


DEV = Role(
    "team-a-dev",
    privileges=(Privilege("team-a-*", frozenset({"browse", "read", "add"})),),
    description="team A developers",
)


def test_tables_on_shared_metadata() -> None:
    for table in ("users", "roles", "role_privileges", "user_roles", "refresh_tokens"):
        assert table in metadata.tables
    assert auth_schema.users.metadata is metadata


def test_add_and_authenticate(store: UserStore) -> None:
    store.put_role(DEV)
    store.add_user("alice", "pw-alice", ["team-a-dev"])
    principal = store.authenticate("alice", "pw-alice")
    assert principal is not None and principal.name == "alice"
    assert not principal.is_admin and not principal.anonymous
    assert allowed_actions(principal, "team-a-hosted") == {"browse", "read", "add"}
    assert store.authenticate("alice", "wrong") is None
    assert store.authenticate("nobody", "pw-alice") is None


def test_duplicate_and_bad_names(store: UserStore) -> None:
    store.add_user("alice", "pw")
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("alice", "pw2")
    for bad in ("", "anonymous", "a b", "x" * 200, "../admin"):
        with pytest.raises(StoreError):
            store.add_user(bad, "pw")
    with pytest.raises(StoreError, match="unknown roles"):
        store.add_user("bob", "pw", ["no-such-role"])
    assert store.get_user("bob") is None  # nothing half-created
    with pytest.raises(StoreError, match="empty"):
        store.add_user("carol", "")


def test_passwd_disable_list(store: UserStore) -> None:
    store.put_role(DEV)
    store.add_user("bob", "old", ["team-a-dev"])
    store.add_user("alice", "pw")
    store.set_password("bob", "new")
    assert store.authenticate("bob", "old") is None
    assert store.authenticate("bob", "new") is not None
    store.disable_user("bob")
    assert store.authenticate("bob", "new") is None
    assert store.principal("bob") is None
    listed = store.list_users()
    assert [(u.name, u.disabled, u.roles) for u in listed] == [
        ("alice", False, ()),
        ("bob", True, ("team-a-dev",)),
    ]
    assert listed[0].created.tzinfo is not None
    store.disable_user("bob", False)
    assert store.authenticate("bob", "new") is not None
    with pytest.raises(StoreError):
        store.set_password("ghost", "x")
    with pytest.raises(StoreError):
        store.disable_user("ghost")
    store.delete_user("alice")
    assert store.get_user("alice") is None


def test_hash_upgraded_on_login(engine: Engine) -> None:
    weak = UserStore(engine, HASHER)
    weak.add_user("alice", "pw")
    stronger = UserStore(engine, PasswordHasher(HashParams(2, 2048, 1)))
    with engine.connect() as conn:
        before = conn.execute(select(auth_schema.users.c.password_hash)).scalar_one()
    assert stronger.authenticate("alice", "pw") is not None
    with engine.connect() as conn:
        after = conn.execute(select(auth_schema.users.c.password_hash)).scalar_one()
    assert before != after and "t=2" in after


def test_roles_crud_and_nesting(store: UserStore) -> None:
    store.put_role(DEV)
    lead = Role(
        "team-a-lead",
        privileges=(Privilege("team-a-hosted", frozenset({"edit", "delete"})),),
        roles=("team-a-dev",),
        admin=frozenset({"audit"}),
    )
    store.put_role(lead)
    assert store.get_role("team-a-lead") == lead
    assert store.get_role("team-a-dev") == DEV
    assert [r.name for r in store.list_roles()] == [
        "admin",
        "anonymous",
        "team-a-dev",
        "team-a-lead",
    ]
    store.add_user("bob", "pw", ["team-a-lead"])
    bob = store.authenticate("bob", "pw")
    assert bob is not None
    assert allowed_actions(bob, "team-a-hosted") == ACTIONS
    assert allowed_actions(bob, "team-a-group") == {"browse", "read", "add"}
    assert bob.has_admin("audit") and not bob.has_admin("users")
    # replace: privileges are rewritten, not merged
    store.put_role(Role("team-a-dev", privileges=(Privilege("team-a-group", frozenset({"read"})),)))
    bob = store.principal("bob")
    assert bob is not None
    assert allowed_actions(bob, "team-a-group") == {"read"}
    store.delete_role("team-a-dev")
    assert store.get_role("team-a-lead") == Role("team-a-lead", lead.privileges, (), lead.admin, "")
    with pytest.raises(StoreError):
        store.delete_role("admin")
    with pytest.raises(StoreError):
        store.delete_role("nope")
    with pytest.raises(StoreError):
        store.put_role(Role("admin"))
    with pytest.raises(StoreError, match="unknown roles"):
        store.put_role(Role("x", roles=("missing",)))
    with pytest.raises(StoreError):
        store.put_role(Role("self", roles=("self",)))
    store.set_user_roles("bob", [])
    assert store.get_user("bob").roles == ()  # type: ignore[union-attr]


def test_anonymous_role_is_editable(store: UserStore) -> None:
    assert store.anonymous_roles()[0].privileges == ()
    store.put_role(
        Role("anonymous", privileges=(Privilege("public", frozenset({"browse", "read"})),))
    )
    assert store.anonymous_roles()[0].privileges[0].repository == "public"


def test_ensure_admin_bootstrap(store: UserStore, tmp_path: Path) -> None:
    data = tmp_path / "data"
    password = store.ensure_admin(data)
    assert password is not None and len(password) >= 20
    secret = data / ADMIN_PASSWORD_FILE
    assert secret.read_text().strip() == password
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    admin = store.authenticate("admin", password)
    assert admin is not None and admin.is_admin
    assert allowed_actions(admin, "anything") == ACTIONS
    # second start: nothing new, file untouched
    assert store.ensure_admin(data) is None
    assert secret.read_text().strip() == password
    assert not list(data.glob(".*.tmp"))


def test_ensure_admin_when_file_unwritable_creates_nobody(store: UserStore, tmp_path: Path) -> None:
    data = tmp_path / "data"
    blocker = data / ADMIN_PASSWORD_FILE
    (blocker / "in-the-way").mkdir(parents=True)  # a folder where the file must go
    with pytest.raises(OSError):
        store.ensure_admin(data)
    assert store.get_user("admin") is None
    assert not list(data.glob(".*.tmp"))  # no stray copy of the password
    (blocker / "in-the-way").rmdir()
    blocker.rmdir()
    assert store.ensure_admin(data) is not None


def test_refresh_token_records(store: UserStore) -> None:
    store.add_user("alice", "pw")
    far = 4_000_000_000
    store.record_refresh("j1", "alice", "team-a-hosted", far)
    store.record_refresh("j2", "alice", "team-a-hosted", far)
    store.record_refresh("old", "alice", "team-a-hosted", 1_000)
    assert store.refresh_valid("j1", "alice", "team-a-hosted")
    assert not store.refresh_valid("j1", "alice", "team-b-hosted")
    assert not store.refresh_valid("j1", "bob", "team-a-hosted")
    assert not store.refresh_valid("old", "alice", "team-a-hosted")
    assert not store.refresh_valid("nope", "alice", "team-a-hosted")
    store.revoke_refresh("j1")
    assert not store.refresh_valid("j1", "alice", "team-a-hosted")
    store.disable_user("alice")
    store.disable_user("alice", False)
    assert not store.refresh_valid("j2", "alice", "team-a-hosted")  # disabling revoked it
    assert store.purge_refresh_tokens() == 1
