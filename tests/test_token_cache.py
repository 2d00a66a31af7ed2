"""Verified bearer tokens are remembered (one signature check per token, not per request), and
what is remembered still gives way: a disabled user, a revoked role and a removed signing key
stop a token that already worked within the security generation check (a second; the tests
allow 5 s), on every worker; a token stops at its own expiry; a refused token is not
remembered. Real servers with two workers and `portway user|role|key` from another process,
plus the service in process for what cannot be seen from outside (how often it verifies)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import jwt
import pytest
import requests
from sqlalchemy import create_engine

from admin_api_support import worker_of
from portway.auth.errors import InvalidToken
from portway.auth.keys import KeyRing
from portway.auth.passwords import FAST_TEST_PARAMS, PasswordHasher
from portway.auth.privileges import Privilege, Role
from portway.auth.scopes import parse_scopes
from portway.auth.service import AuthService
from portway.auth.state import GENERATION_CHECK
from portway.auth.store import UserStore
from portway.auth.tokencache import token_key
from portway.auth.tokens import TokenAuthority, TokenClaims
from portway.config import RepositoryConfig
from portway.db.schema import metadata
from portway.http import auth as http_auth
from portway.http.auth import SecurityAuthorizer
from portway.http.protocol import RegistryRequestHandler
from support.security import (
    OCI_MANIFEST,
    admin_client,
    cli,
    make_image,
    parse_challenge,
    push_image,
)
from support.server import PortwayServer

REPO = "team-a-hosted"
BOUND = 5.0  # seconds; the README promises a second
SETTLE = 8  # answers in a row (from each worker, in stops_within) that must agree
START_TIMEOUT = 60.0  # two workers starting on a busy machine


def seeded(root: Path, *, token_ttl: int, workers: int = 1) -> PortwayServer:
    """A started server with REPO on a connector, the `team-a` role (browse and read on
    `team-a-*`) and `app:v1` pushed there."""
    srv = PortwayServer(
        root,
        repositories=[{"name": REPO, "type": "hosted"}],
        connectors=[{"repository": REPO}],
        workers=workers,
        security={"enabled": True, "token_ttl": token_ttl},
    )
    srv.start(timeout=START_TIMEOUT)
    try:
        cli(srv, "role", "add", "team-a", "--privilege", "team-a-*:browse,read")
        admin = admin_client(srv, f"/repository/{REPO}")
        assert push_image(admin, "app", "v1", make_image("app")).status_code == 201
    except BaseException:
        srv.stop()
        print(srv.log()[-3000:])
        raise
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    srv = seeded(tmp_path_factory.mktemp("token-cache"), token_ttl=300, workers=2)
    try:
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


def add_user(server: PortwayServer, name: str) -> tuple[str, str]:
    user = (name, f"{name}-Quite-Secret-7")
    cli(server, "user", "add", user[0], "--password", user[1], "--role", "team-a")
    return user


def token_for(server: PortwayServer, user: tuple[str, str]) -> str:
    answer = requests.get(
        f"http://127.0.0.1:{server.connector_port(0)}/v2/token",
        params={"service": "portway", "scope": "repository:app:pull"},
        auth=user,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def pull(server: PortwayServer, token: str) -> requests.Response:
    # A new connection each time, so the answers come from both workers.
    return requests.get(
        f"http://127.0.0.1:{server.connector_port(0)}/v2/app/manifests/v1",
        headers={"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST, "Connection": "close"},
        timeout=30,
    )


def works(server: PortwayServer, token: str) -> None:
    """The token pulls, many times (each worker verifies it once and then remembers it)."""
    for _ in range(SETTLE):
        answer = pull(server, token)
        assert answer.status_code == 200, answer.text


def stops_within(server: PortwayServer, token: str, status: int, bound: float = BOUND) -> float:
    """Seconds until every worker answers `status` for the token, SETTLE times in a row each
    (a worker is told by its request ids; eight answers in a row can all come from one)."""
    started = time.monotonic()
    in_a_row: dict[str, int] = {}
    while len(in_a_row) < server.workers or min(in_a_row.values()) < SETTLE:
        answer = pull(server, token)
        worker = worker_of(answer)
        in_a_row[worker] = in_a_row.get(worker, 0) + 1 if answer.status_code == status else 0
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"the token still answers {answer.status_code} after {elapsed:.1f}s"
    return time.monotonic() - started


def refused_token(answer: requests.Response) -> None:
    assert answer.status_code == 401, answer.text
    scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
    assert scheme == "bearer" and params.get("error") == "invalid_token"


def test_disabled_user_token_stops(server: PortwayServer) -> None:
    user = add_user(server, "dora")
    token = token_for(server, user)
    works(server, token)
    cli(server, "user", "disable", user[0])
    stops_within(server, token, 401)
    refused_token(pull(server, token))
    # Enabled again, the same (unexpired) token works again: nothing was remembered wrongly.
    cli(server, "user", "enable", user[0])
    stops_within(server, token, 200)


def test_deleted_user_token_stops(server: PortwayServer) -> None:
    user = add_user(server, "dirk")
    token = token_for(server, user)
    works(server, token)
    cli(server, "user", "delete", user[0])
    stops_within(server, token, 401)


def test_revoked_role_token_stops(server: PortwayServer) -> None:
    """The token says `pull`; once the user holds no role that may read, the pull is refused
    like any read the user may not make (404, no existence leak), and given back with it."""
    user = add_user(server, "rhea")
    token = token_for(server, user)
    works(server, token)
    cli(server, "user", "roles", user[0])  # no roles left
    stops_within(server, token, 404)
    cli(server, "user", "roles", user[0], "team-a")
    stops_within(server, token, 200)


def test_unrelated_change_keeps_tokens_working(server: PortwayServer) -> None:
    """A change to someone else makes every remembered token be checked again, and pass."""
    token = token_for(server, add_user(server, "ulla"))
    works(server, token)
    add_user(server, "ulrich")
    time.sleep(GENERATION_CHECK + 0.2)
    works(server, token)


def test_removed_key_token_stops(server: PortwayServer) -> None:
    """A token signed by a key that `portway key remove` took away is refused within a
    second on every running worker (no restart, no minute-long refresh)."""
    user = add_user(server, "kurt")
    token = token_for(server, user)
    old_kid = jwt.get_unverified_header(token)["kid"]
    works(server, token)
    new_kid = cli(server, "key", "rotate").stdout.strip()
    assert new_kid != old_kid
    works(server, token)  # rotating alone does not stop tokens signed by the old key
    cli(server, "key", "remove", old_kid)
    stops_within(server, token, 401)
    refused_token(pull(server, token))
    fresh = token_for(server, user)
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    works(server, fresh)


@pytest.fixture(scope="module", autouse=True)
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PortwayServer, str]]:
    """A server whose tokens live 30 s (the shortest lifetime allowed) and a token it issued
    that works. Autouse, so it is made before the module's first test: the token's 30 s run
    out while the other tests run, instead of in a wait of their own."""
    srv = seeded(tmp_path_factory.mktemp("token-expiry"), token_ttl=30)
    try:
        token = token_for(srv, add_user(srv, "eve"))
        works(srv, token)
        assert time.time() < jwt.decode(token, options={"verify_signature": False})["exp"]
        yield srv, token
    finally:
        srv.stop()


def test_token_stops_at_its_expiry(expiring: tuple[PortwayServer, str]) -> None:
    srv, token = expiring
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 30
    while time.time() < claims["exp"]:
        time.sleep(0.1)
    for _ in range(SETTLE):
        refused_token(pull(srv, token))


# -- in process: how often a token is verified ------------------------------------------------


class CountingAuthority(TokenAuthority):
    """The real authority, counting full verifications (signature and claims)."""

    verified = 0

    def verify(self, token: str, repository_route: str | None, **kwargs: Any) -> TokenClaims:
        self.verified += 1
        return super().verify(token, repository_route, **kwargs)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> tuple[AuthService, CountingAuthority, UserStore, Clock, Clock]:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    metadata.create_all(engine)
    wall, mono = Clock(1_700_000_000.0), Clock(0.0)
    store = UserStore(engine, PasswordHasher(FAST_TEST_PARAMS), clock=wall)
    store.put_role(Role("team-a", privileges=(Privilege("team-a-*", frozenset({"read"})),)))
    store.add_user("dev", "pw-dev-1", ["team-a"])
    tokens = CountingAuthority(KeyRing(tmp_path / "keys"), clock=wall, ttl=60)
    auth = AuthService(
        store,
        tokens,
        repositories=[RepositoryConfig(name=REPO, type="hosted")],
        clock=mono,
    )
    return auth, tokens, store, wall, mono


def _issue(auth: AuthService) -> str:
    principal = auth.store.principal("dev")
    assert principal is not None
    body = auth.issue_token(principal, "portway", parse_scopes(["repository:app:pull"]), REPO, None)
    token: str = body["token"]
    return token


def test_signature_checked_once_per_token(
    service: tuple[AuthService, CountingAuthority, UserStore, Clock, Clock],
) -> None:
    auth, tokens, store, wall, mono = service
    token = _issue(auth)
    for _ in range(100):
        assert auth.verify_bearer(token, REPO, "portway").permits("read", "app")
    assert tokens.verified == 1
    assert auth.remembered_bearer(token, REPO, "portway") is not None
    # Another route or another service is another entry (and a refusal there).
    with pytest.raises(InvalidToken):
        auth.verify_bearer(token, "team-b-hosted", "portway")
    assert auth.remembered_bearer(token, "team-b-hosted", "portway") is None
    # A change to users or roles: checked again once, then remembered again.
    store.add_user("other", "pw-other-1")
    mono.now += GENERATION_CHECK
    assert auth.remembered_bearer(token, REPO, "portway") is None
    before = tokens.verified
    for _ in range(10):
        auth.verify_bearer(token, REPO, "portway")
    assert tokens.verified == before + 1
    # Expired: refused, though it was remembered.
    wall.now += 61
    assert auth.remembered_bearer(token, REPO, "portway") is None
    with pytest.raises(InvalidToken):
        auth.verify_bearer(token, REPO, "portway")


def test_refused_tokens_are_not_remembered(
    service: tuple[AuthService, CountingAuthority, UserStore, Clock, Clock],
) -> None:
    auth, tokens, _, _, _ = service
    token = _issue(auth)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    for n in range(1, 4):
        with pytest.raises(InvalidToken):
            auth.verify_bearer(forged, REPO, "portway")
        assert tokens.verified == n
    assert auth.remembered_bearer(forged, REPO, "portway") is None


def test_a_connection_hashes_its_token_once(
    service: tuple[AuthService, CountingAuthority, UserStore, Clock, Clock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client sends one token request after request on a kept-alive connection: its cache
    key is worked out once; another token or another route on that connection is not taken
    for the one before."""
    auth = service[0]
    authorizer = SecurityAuthorizer(auth, "portway")
    hashed: list[tuple[Any, ...]] = []

    def counted(*args: Any) -> bytes:
        hashed.append(args)
        return token_key(*args)

    monkeypatch.setattr(http_auth, "token_key", counted)
    request = cast(Any, SimpleNamespace(protocol=object.__new__(RegistryRequestHandler)))
    token, other = _issue(auth), _issue(auth)
    assert token != other
    keys = {authorizer._token_key(request, token, REPO) for _ in range(5)}
    assert keys == {token_key(token, REPO, "portway")} and len(hashed) == 1
    assert authorizer._token_key(request, other, REPO) == token_key(other, REPO, "portway")
    assert authorizer._token_key(request, other, "team-b") == token_key(other, "team-b", "portway")
    assert authorizer._token_key(request, token, REPO) == token_key(token, REPO, "portway")
    assert len(hashed) == 4
    authorizer.pool.shutdown()


def test_a_kept_alive_connection_honours_a_disabled_user(server: PortwayServer) -> None:
    """The same token again and again on one connection (the connection's memo of its key)
    still stops when its user is disabled, and a second user's token on that connection is
    judged as that user's."""
    user = add_user(server, "kora")
    token = token_for(server, user)
    url = f"http://127.0.0.1:{server.connector_port(0)}/v2/app/manifests/v1"
    with requests.Session() as session:

        def kept(bearer: str) -> requests.Response:
            headers = {"Authorization": f"Bearer {bearer}", "Accept": OCI_MANIFEST}
            return session.get(url, headers=headers, timeout=30)

        assert kept(token).status_code == 200
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        refused_token(kept(forged))
        assert kept(token).status_code == 200
        cli(server, "user", "disable", user[0])
        deadline = time.monotonic() + BOUND
        while kept(token).status_code == 200:
            assert time.monotonic() < deadline, "the disabled user's token still pulls"
        refused_token(kept(token))
