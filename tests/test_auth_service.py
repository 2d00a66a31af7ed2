"""The facade the HTTP layer calls: Basic, token endpoint, bearer verification, challenges.

Real argon2, real keys, real SQLite; only the clocks are fake.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from portway.auth.audit import AuditLog
from portway.auth.basic import LOCK_RECHECK
from portway.auth.errors import InvalidCredentials, InvalidToken, LoginLocked
from portway.auth.grants import Grant
from portway.auth.keys import KeyRing
from portway.auth.passwords import FAST_TEST_PARAMS, PasswordHasher
from portway.auth.privileges import Privilege, Role
from portway.auth.ratelimit import LoginLimiter
from portway.auth.scopes import parse_scopes
from portway.auth.service import AuthService
from portway.auth.state import GENERATION_CHECK
from portway.auth.store import UserStore
from portway.auth.tokens import TokenAuthority
from portway.config import RepositoryConfig
from portway.db.migrations import migrate

T0 = 1_700_000_000.0
SERVICE = "portway"
REPOS = (
    RepositoryConfig(name="team-a-hosted", type="hosted"),
    RepositoryConfig(name="team-b-hosted", type="hosted"),
    RepositoryConfig(name="public-hosted", type="hosted", anonymous_pull=True),
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, tmp: Path) -> None:
        engine = create_engine(f"sqlite:///{tmp / 'meta.db'}")
        migrate(engine)
        self.wall = Clock(T0)
        self.mono = Clock(0.0)
        self.store = UserStore(engine, PasswordHasher(FAST_TEST_PARAMS), clock=self.wall)
        self.admin_password = self.store.ensure_admin(tmp / "data")
        for team in ("a", "b"):
            self.store.put_role(
                Role(
                    f"team-{team}",
                    privileges=(Privilege(f"team-{team}-*", frozenset({"browse", "read", "add"})),),
                )
            )
            self.store.add_user(f"dev-{team}", f"pw-{team}", [f"team-{team}"])
        self.store.add_user("nobody", "pw-n")
        self.audit_path = tmp / "audit.log"
        self.tokens = TokenAuthority(KeyRing(tmp / "keys"), clock=self.wall)
        self.auth = AuthService(
            self.store,
            self.tokens,
            limiter=LoginLimiter(engine, max_failures=3, window=300, clock=self.wall),
            audit=AuditLog(self.audit_path, clock=self.wall),
            repositories=REPOS,
            clock=self.mono,
        )

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def token(
        self, user: str | None, password: str, repo: str | None, *scopes: str, offline: bool = False
    ) -> dict[str, Any]:
        principal = self.auth.authenticate_basic(basic(user, password) if user else None, "c")
        return self.auth.issue_token(
            principal, SERVICE, parse_scopes(scopes), repo, "192.0.2.1", offline_token=offline
        )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_basic_authentication(world: World) -> None:
    auth = world.auth
    alice = auth.authenticate_basic(basic("dev-a", "pw-a"), "192.0.2.1")
    assert alice.name == "dev-a" and not alice.anonymous
    anon = auth.authenticate_basic(None, "192.0.2.1")
    assert anon.anonymous and anon.name == "anonymous"
    assert auth.authenticate_basic("", "192.0.2.1").anonymous
    for bad in (
        basic("dev-a", "wrong"),
        basic("ghost", "pw-a"),
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer abc",
        "Basic " + "A" * 9000,
    ):
        with pytest.raises(InvalidCredentials):
            auth.authenticate_basic(bad, "192.0.2.50")
    assert auth.authenticate_basic(basic("dev-a", "pw-a"), "192.0.2.1").name == "dev-a"
    assert world.admin_password is not None
    admin = auth.authenticate_basic(basic("admin", world.admin_password), "192.0.2.1")
    assert admin.is_admin


def test_password_with_colon(world: World) -> None:
    world.store.add_user("carol", "a:b:c")
    assert world.auth.authenticate_basic(basic("carol", "a:b:c"), "x").name == "carol"


def test_lockout_answers_429_with_retry_after_then_recovers(world: World) -> None:
    auth = world.auth
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            auth.authenticate_password("dev-a", "wrong", "203.0.113.9")
    with pytest.raises(LoginLocked) as locked:
        auth.authenticate_password("dev-a", "pw-a", "203.0.113.9")  # right password, too late
    assert locked.value.status == 429 and locked.value.retry_after == 300
    # From another address the user is not locked out by those failures.
    assert auth.authenticate_password("dev-a", "pw-a", "198.51.100.1").name == "dev-a"
    world.wall.now += 301
    assert auth.authenticate_password("dev-a", "pw-a", "203.0.113.9").name == "dev-a"
    outcomes = [(r["event"], r["principal"], r["outcome"]) for r in world.audit()]
    assert outcomes[-6:] == [
        ("login", "dev-a", "failure"),
        ("login", "dev-a", "failure"),
        ("login", "dev-a", "failure"),
        ("login", "dev-a", "locked"),
        ("login", "dev-a", "success"),
        ("login", "dev-a", "success"),
    ]


def test_basic_logins_remembered_briefly(world: World) -> None:
    header = basic("dev-a", "pw-a")
    world.auth.authenticate_basic(header, "x")
    world.auth.authenticate_basic(header, "x")
    assert sum(r["event"] == "login" for r in world.audit()) == 1
    world.mono.now = 31
    world.auth.authenticate_basic(header, "x")
    assert sum(r["event"] == "login" for r in world.audit()) == 2
    with pytest.raises(InvalidCredentials):  # a different password is never a cache hit
        world.auth.authenticate_basic(basic("dev-a", "pw-a "), "x")


def test_security_changes_end_remembered_logins(world: World) -> None:
    """A login remembered for 30 s is checked again once users or roles change (in any
    process: the generation lives in the database), within GENERATION_CHECK seconds."""
    header = basic("dev-a", "pw-a")
    assert world.auth.authenticate_basic(header, "x").name == "dev-a"
    other_process = UserStore(world.store.engine, PasswordHasher(FAST_TEST_PARAMS))
    other_process.disable_user("dev-a")
    world.mono.now += GENERATION_CHECK
    with pytest.raises(InvalidCredentials):
        world.auth.authenticate_basic(header, "x")
    other_process.disable_user("dev-a", False)
    world.mono.now += GENERATION_CHECK
    assert world.auth.authenticate_basic(header, "x").name == "dev-a"
    # A role losing a privilege: the remembered principal is rebuilt without it.
    before = world.auth.authenticate_basic(header, "x")
    assert "add" in world.auth.authorize(before, "team-a-x").actions
    other_process.put_role(
        Role("team-a", privileges=(Privilege("team-a-*", frozenset({"browse", "read"})),))
    )
    world.mono.now += GENERATION_CHECK
    principal = world.auth.authenticate_basic(header, "x")
    assert "add" not in world.auth.authorize(principal, "team-a-x").actions


def test_grant_is_intersection_of_requested_and_allowed(world: World) -> None:
    body = world.token("dev-a", "pw-a", "team-a-hosted", "repository:app:pull,push,delete")
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"] == "2023-11-14T22:13:20Z"
    assert body["scope"] == "repository:app:pull,push"
    assert "refresh_token" not in body
    grant = world.auth.verify_bearer(body["token"], "team-a-hosted", SERVICE)
    assert grant.principal == "dev-a"
    assert grant.actions == {"browse", "read", "add"}
    assert grant.permits("read", "app") and grant.permits("add", "app")
    assert not grant.permits("edit", "app")  # overwrite needs edit: not held
    assert not grant.permits("delete", "app")
    assert not grant.permits("read", "other-image")  # not named in the token


def test_nothing_granted_is_still_a_token(world: World) -> None:
    body = world.token("nobody", "pw-n", "team-a-hosted", "repository:app:pull")
    assert body["scope"] == ""
    grant = world.auth.verify_bearer(body["token"], "team-a-hosted")
    assert grant.actions == frozenset() and not grant.permits("read", "app")


def test_token_from_team_a_refused_on_team_b(world: World) -> None:
    body = world.token("dev-a", "pw-a", "team-a-hosted", "repository:app:pull")
    with pytest.raises(InvalidToken) as refused:
        world.auth.verify_bearer(body["token"], "team-b-hosted")
    assert refused.value.status == 401
    replay = world.audit()[-1]
    assert replay["event"] == "token.replay" and replay["repository"] == "team-b-hosted"
    # and team B's user asking on team A's route gets nothing for the same image name
    b_on_a = world.token("dev-b", "pw-b", "team-a-hosted", "repository:app:pull")
    assert world.auth.verify_bearer(b_on_a["token"], "team-a-hosted").actions == frozenset()


def test_anonymous_pull_switch(world: World) -> None:
    public = world.token(None, "", "public-hosted", "repository:app:pull,push")
    assert public["scope"] == "repository:app:pull"
    grant = world.auth.verify_bearer(public["token"], "public-hosted")
    assert grant.anonymous and grant.permits("read", "app") and not grant.permits("add", "app")
    private = world.token(None, "", "team-a-hosted", "repository:app:pull")
    assert private["scope"] == ""
    # users get what anonymous pull allows, too
    user = world.token("dev-b", "pw-b", "public-hosted", "repository:app:pull")
    assert user["scope"] == "repository:app:pull"
    # anonymous never gets a refresh token
    assert "refresh_token" not in world.token(
        None, "", "public-hosted", "repository:app:pull", offline=True
    )


def test_catalog_lists_only_browsable(world: World) -> None:
    names = [r.name for r in REPOS]
    dev_a = world.auth.authenticate_basic(basic("dev-a", "pw-a"), "x")
    assert world.auth.catalog(dev_a, names) == ["team-a-hosted", "public-hosted"]
    assert world.auth.catalog(world.auth.anonymous(), names) == ["public-hosted"]
    body = world.token("dev-a", "pw-a", None, "registry:catalog:*", "repository:app:pull")
    assert body["scope"] == "registry:catalog:*"  # no repository on an unbound route
    grant = world.auth.verify_bearer(body["token"], None)
    assert grant.catalog and grant.actions == frozenset()
    principal = world.auth.principal_of(grant)
    assert principal is not None
    assert world.auth.catalog(principal, names) == ["team-a-hosted", "public-hosted"]
    no_catalog = world.token("dev-a", "pw-a", None, "repository:app:pull")
    assert not world.auth.verify_bearer(no_catalog["token"], None).catalog


def test_basic_grant(world: World) -> None:
    dev_a = world.auth.authenticate_basic(basic("dev-a", "pw-a"), "x")
    grant = world.auth.authorize(dev_a, "team-a-hosted")
    assert grant == Grant("dev-a", False, "team-a-hosted", frozenset({"browse", "read", "add"}))
    assert grant.permits("add", "any/image") and grant.catalog
    assert world.auth.authorize(dev_a, "team-b-hosted").actions == frozenset()


def test_expired_bearer(world: World) -> None:
    body = world.token("dev-a", "pw-a", "team-a-hosted", "repository:app:pull")
    world.wall.now = T0 + 301
    with pytest.raises(InvalidToken, match="expired"):
        world.auth.verify_bearer(body["token"], "team-a-hosted")


def test_refresh_token_flow(world: World) -> None:
    body = world.token("dev-a", "pw-a", "team-a-hosted", "repository:app:pull", offline=True)
    refresh = body["refresh_token"]
    world.wall.now = T0 + 3600  # the access token is long expired
    again = world.auth.refresh(
        refresh, SERVICE, parse_scopes(["repository:app:pull,push"]), "team-a-hosted", "x"
    )
    assert again["refresh_token"] == refresh
    assert again["scope"] == "repository:app:pull,push"
    assert world.auth.verify_bearer(again["token"], "team-a-hosted").permits("add", "app")
    with pytest.raises(InvalidToken):  # bound to its repository
        world.auth.refresh(refresh, SERVICE, [], "team-b-hosted", "x")
    with pytest.raises(InvalidToken):  # an access token is not a refresh token
        world.auth.refresh(again["token"], SERVICE, [], "team-a-hosted", "x")
    world.store.disable_user("dev-a")
    with pytest.raises(InvalidToken):
        world.auth.refresh(refresh, SERVICE, [], "team-a-hosted", "x")
    world.store.disable_user("dev-a", False)
    with pytest.raises(InvalidToken):  # disabling revoked it for good
        world.auth.refresh(refresh, SERVICE, [], "team-a-hosted", "x")


def test_password_change_revokes_refresh_tokens(world: World) -> None:
    body = world.token("dev-b", "pw-b", "team-b-hosted", "repository:x:pull", offline=True)
    world.store.set_password("dev-b", "new")
    with pytest.raises(InvalidToken):
        world.auth.refresh(body["refresh_token"], SERVICE, [], "team-b-hosted", "x")


def test_audit_never_holds_secrets(world: World) -> None:
    body = world.token("dev-a", "pw-a", "team-a-hosted", "repository:app:pull", offline=True)
    world.auth.refresh(body["refresh_token"], SERVICE, [], "team-a-hosted", "x")
    with pytest.raises(InvalidCredentials):
        world.auth.authenticate_basic(basic("dev-a", "Tr0ub4dor&3"), "x")
    with pytest.raises(InvalidToken):
        world.auth.verify_bearer(body["token"], "team-b-hosted")
    text = world.audit_path.read_text()
    assert world.audit()
    for secret in ("pw-a", "Tr0ub4dor", body["token"], body["refresh_token"]):
        assert secret not in text
    for part in (*body["token"].split("."), *body["refresh_token"].split(".")):
        assert part not in text
    assert world.admin_password is not None and world.admin_password not in text


def test_challenge_header() -> None:
    value = AuthService.challenge(
        "https://reg.example.com/v2/token", "portway", "repository:app:pull"
    )
    assert value == (
        'Bearer realm="https://reg.example.com/v2/token",service="portway",'
        'scope="repository:app:pull"'
    )
    two = AuthService.challenge(
        "r", "s", ["repository:a:pull", "repository:b:pull"], "insufficient_scope"
    )
    assert (
        two == 'Bearer realm="r",service="s",'
        'scope="repository:a:pull repository:b:pull",error="insufficient_scope"'
    )
    assert AuthService.challenge("r", "s") == 'Bearer realm="r",service="s"'
    evil = AuthService.challenge('x"\r\nSet-Cookie: a', "s\\")
    assert "\r" not in evil and "\n" not in evil
    assert evil == 'Bearer realm="x\\"Set-Cookie: a",service="s\\\\"'
    assert AuthService.basic_challenge("portway") == 'Basic realm="portway"'


def test_remembered_basic_login_skips_the_thread_and_the_database_but_not_a_lockout(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Basic on every request: a login checked before for the same client address is
    answered from memory (no failed-login query, no password hash), while a lockout, a
    security change or another address still go the full way."""
    auth = world.auth
    header = basic("dev-a", "pw-a")
    assert auth.remembered_basic(header, "192.0.2.7") is None  # never checked: the full way
    assert auth.authenticate_basic(header, "192.0.2.7").name == "dev-a"
    checks: list[tuple[str, str | None]] = []
    real_check = auth.limiter.check

    def counting_check(user: str, client: str | None) -> Any:
        checks.append((user, client))
        return real_check(user, client)

    monkeypatch.setattr(auth.limiter, "check", counting_check)
    hit = auth.remembered_basic(header, "192.0.2.7")
    assert hit is not None and hit.name == "dev-a" and checks == []
    assert auth.remembered_basic(header, "192.0.2.8") is None  # another address
    assert auth.remembered_basic(basic("dev-a", "pw-b"), "192.0.2.7") is None
    assert auth.remembered_basic("Basic !!!", "192.0.2.7") is None
    # The user gets locked out (failures from elsewhere): within LOCK_RECHECK seconds the
    # remembered login is refused too.
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            auth.authenticate_password("dev-a", "wrong", "192.0.2.7")
    world.mono.now += LOCK_RECHECK
    assert auth.remembered_basic(header, "192.0.2.7") is None
    with pytest.raises(LoginLocked):
        auth.authenticate_basic(header, "192.0.2.7")
    world.wall.now += 301  # the lock ends; a full check remembers the login again
    assert auth.authenticate_basic(header, "192.0.2.7").name == "dev-a"
    assert auth.remembered_basic(header, "192.0.2.7") is not None
    # A disabled user: refused once the generation moved (GENERATION_CHECK seconds).
    world.store.disable_user("dev-a")
    world.mono.now += GENERATION_CHECK
    assert auth.remembered_basic(header, "192.0.2.7") is None
    with pytest.raises(InvalidCredentials):
        auth.authenticate_basic(header, "192.0.2.7")
