"""Hardening against a live server: failed-login limits (per user, per client address, no
spoofing from an untrusted peer), token expiry, refresh tokens, key rotation, forged and
tampered tokens, `alg: none`, secrets kept out of logs, and the audit trail."""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portway.auth.keys import KeyRing, thumbprint
from portway.auth.tokens import Access, TokenAuthority
from support.security import (
    OCI_MANIFEST,
    Client,
    admin_client,
    basic,
    cli,
    make_image,
    parse_challenge,
    push_image,
)
from support.server import PortwayServer

REPO = "team-a-hosted"
ALICE = ("alice", "alice-Very-Secret-1")
CAROL = ("carol", "carol-Very-Secret-2")
MAX_FAILURES = 10  # per user and address: the limiter's default
MAX_PER_ADDRESS = 12  # per address: set below (the default is 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    srv = PortwayServer(
        tmp_path_factory.mktemp("security-tokens"),
        repositories=[
            {"name": REPO, "type": "hosted"},
            {"name": "team-b-hosted", "type": "hosted"},
        ],
        connectors=[{"repository": REPO}, {"repository": "team-b-hosted"}],
        server={"log_level": "debug"},  # access logs too: nothing secret may show there
        security={
            "enabled": True,
            "token_ttl": 30,
            "login_max_failures_per_address": MAX_PER_ADDRESS,
        },
    )
    srv.start()
    try:
        cli(srv, "role", "add", "team-a", "--privilege", "team-a-*:browse,read,add,edit,delete")
        for user, password in (ALICE, CAROL):
            cli(srv, "user", "add", user, "--password", password, "--role", "team-a")
        admin = admin_client(srv, f"/repository/{REPO}")
        assert push_image(admin, "app", "v1", make_image("app")).status_code == 201
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


def team_a(server: PortwayServer, user: tuple[str, str] | None = ALICE) -> Client:
    base = f"http://127.0.0.1:{server.connector_port(0)}"
    return Client(base, user=user[0] if user else None, password=user[1] if user else None)


def token_url(server: PortwayServer, index: int = 0) -> str:
    return f"http://127.0.0.1:{server.connector_port(index)}/v2/token"


def get_token(
    server: PortwayServer, user: tuple[str, str], index: int = 0, **params: Any
) -> requests.Response:
    query = {"service": "portway", "scope": "repository:app:pull", **params}
    return requests.get(token_url(server, index), params=query, auth=user, timeout=30)


def pull_with(server: PortwayServer, token: str, index: int = 0) -> requests.Response:
    return requests.get(
        f"http://127.0.0.1:{server.connector_port(index)}/v2/app/manifests/v1",
        headers={"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST},
        timeout=30,
    )


def refused_token(answer: requests.Response) -> None:
    assert answer.status_code == 401, answer.text
    scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
    assert scheme == "bearer" and params.get("error") == "invalid_token"
    assert "eyJ" not in answer.text  # the token is not echoed back


# -- failed-login limits ---------------------------------------------------------------------


def _token_from(server: PortwayServer, source: str, user: str, password: str) -> int:
    """A token request from a chosen loopback source address (no forwarded headers)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.connector_port(0), timeout=30, source_address=(source, 0)
    )
    try:
        conn.request(
            "GET", "/v2/token?service=portway", headers={"Authorization": basic(user, password)}
        )
        return conn.getresponse().status
    finally:
        conn.close()  # fmt: skip


def test_failed_logins_lock_the_user_at_that_address(server: PortwayServer) -> None:
    """Per user and address: after the allowance even the right password from that address
    gets 429; from another address the user logs in (a stranger cannot lock anyone out)."""
    there = {"X-Forwarded-For": "192.0.2.1"}
    for i in range(MAX_FAILURES):
        answer = requests.get(
            token_url(server), auth=(CAROL[0], f"wrong-{i}"), headers=there, timeout=30
        )
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["message"] == "incorrect username or password"
    locked = requests.get(token_url(server), auth=CAROL, headers=there, timeout=30)
    assert locked.status_code == 429
    assert locked.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 0 < int(locked.headers["Retry-After"]) <= 300
    # Basic on a registry request is limited the same way.
    direct = requests.get(
        f"http://127.0.0.1:{server.connector_port(0)}/v2/app/tags/list",
        auth=CAROL,
        headers=there,
        timeout=30,
    )
    assert direct.status_code == 429 and "Retry-After" in direct.headers
    elsewhere = {"X-Forwarded-For": "192.0.2.200"}
    assert requests.get(token_url(server), auth=CAROL, headers=elsewhere, timeout=30).ok
    # Other users are not affected.
    assert get_token(server, ALICE).status_code == 200


def test_failed_logins_lock_the_client_address(server: PortwayServer) -> None:
    """Per address (as a trusted proxy reports it): guessing at many users from one address
    locks that address, not the users and not other addresses."""
    spray = {"X-Forwarded-For": "198.51.100.7"}
    for i in range(MAX_PER_ADDRESS):
        answer = requests.get(token_url(server), auth=(f"ghost{i}", "x"), headers=spray, timeout=30)
        assert answer.status_code == 401
    locked = requests.get(token_url(server), auth=ALICE, headers=spray, timeout=30)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    elsewhere = {"X-Forwarded-For": "198.51.100.8"}
    assert requests.get(token_url(server), auth=ALICE, headers=elsewhere, timeout=30).ok


def test_untrusted_peer_cannot_spoof_its_address(server: PortwayServer) -> None:
    """127.0.0.2 is not a trusted proxy (only 127.0.0.1/32 is): its X-Forwarded-For is
    ignored, so rotating the header does not reset its allowance."""
    for i in range(MAX_PER_ADDRESS):
        assert _token_from(server, "127.0.0.2", f"spoofer{i}", "x") == 401
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.connector_port(0), timeout=30, source_address=("127.0.0.2", 0)
    )
    conn.request(
        "GET",
        "/v2/token",
        headers={"Authorization": basic(*ALICE), "X-Forwarded-For": "203.0.113.99"},
    )
    answer = conn.getresponse()
    conn.close()
    assert answer.status == 429


# -- expiry, refresh -------------------------------------------------------------------------


def _authority(server: PortwayServer, **kwargs: Any) -> TokenAuthority:
    """Tokens signed with the server's own current key (from its data directory)."""
    return TokenAuthority(KeyRing.in_data_dir(server.data_dir), issuer="portway", **kwargs)


def _crafted(
    authority: TokenAuthority, repo: str = REPO, actions: tuple[str, ...] = ("pull",)
) -> str:
    access = [Access("repository", "app", actions)]
    return authority.issue_access("alice", "portway", repo, access, {"read", "browse"}).token


def test_token_expiry(server: PortwayServer) -> None:
    issued = get_token(server, ALICE).json()
    assert issued["expires_in"] == 30  # token_ttl
    fresh = _crafted(_authority(server, ttl=30))
    assert pull_with(server, fresh).status_code == 200  # the control: our crafting is right
    expired = _crafted(_authority(server, ttl=30, clock=lambda: time.time() - 31))
    refused_token(pull_with(server, expired))
    future = _crafted(_authority(server, ttl=300, clock=lambda: time.time() + 120))
    refused_token(pull_with(server, future))  # not valid before its nbf


def test_refresh_token(server: PortwayServer) -> None:
    user = ("refresher", "refresher-Secret-9")
    cli(server, "user", "add", user[0], "--password", user[1], "--role", "team-a")
    # docker login's GET with offline_token=true gets no refresh token (ADR 0006)...
    assert "refresh_token" not in get_token(server, user, offline_token="true").json()
    # ...the OAuth2 password grant with access_type=offline does.
    pw = {
        "grant_type": "password",
        "username": user[0],
        "password": user[1],
        "service": "portway",
        "access_type": "offline",
        "scope": "repository:app:pull",
    }
    refresh = requests.post(token_url(server), data=pw, timeout=30).json()["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": "portway",
            "scope": "repository:app:pull"}  # fmt: skip
    answer = requests.post(token_url(server), data=form, timeout=30)
    assert answer.status_code == 200, answer.text
    assert pull_with(server, answer.json()["access_token"]).status_code == 200
    # Not a bearer token, and not valid on team B's route.
    refused_token(pull_with(server, refresh))
    other = requests.post(token_url(server, 1), data=form, timeout=30)
    assert other.status_code == 401
    # Without access_type=offline the password grant gives none.
    online = {k: v for k, v in pw.items() if k != "access_type"}
    assert "refresh_token" not in requests.post(token_url(server), data=online, timeout=30).json()
    # Disabled: the refresh token is refused at once.
    cli(server, "user", "disable", user[0])
    denied = requests.post(token_url(server), data=form, timeout=30)
    assert denied.status_code == 401 and "access_token" not in denied.text


def test_disabled_user_is_refused_within_a_second(server: PortwayServer) -> None:
    """Basic logins are remembered for 30 s; `portway user disable` (another process) still
    takes effect within the security generation check (1 s), and enabling again too."""
    dave = ("dave", "dave-Quite-Secret-3")
    cli(server, "user", "add", dave[0], "--password", dave[1], "--role", "team-a")
    url = f"http://127.0.0.1:{server.connector_port(0)}/v2/app/tags/list"

    def status() -> int:
        return requests.get(url, auth=dave, timeout=30).status_code

    assert status() == 200 and status() == 200  # the second one from the remembered login
    cli(server, "user", "disable", dave[0])
    started = time.monotonic()
    while status() != 401:
        assert time.monotonic() - started < 5, "a disabled user still pulls"
        time.sleep(0.1)
    cli(server, "user", "enable", dave[0])
    started = time.monotonic()
    while status() != 200:
        assert time.monotonic() - started < 5, "an enabled user is still refused"
        time.sleep(0.1)


def test_deleted_user_is_gone(server: PortwayServer) -> None:
    """`portway user delete`: the user's logins stop within a second and the name is free."""
    erin = ("erin", "erin-Quite-Secret-4")
    cli(server, "user", "add", erin[0], "--password", erin[1], "--role", "team-a")
    url = f"http://127.0.0.1:{server.connector_port(0)}/v2/app/tags/list"
    assert requests.get(url, auth=erin, timeout=30).status_code == 200
    cli(server, "user", "delete", erin[0])
    started = time.monotonic()
    while requests.get(url, auth=erin, timeout=30).status_code != 401:
        assert time.monotonic() - started < 5, "a deleted user still pulls"
        time.sleep(0.1)
    assert erin[0] not in cli(server, "user", "list").stdout
    again = cli(server, "user", "delete", erin[0], check=False)
    assert again.returncode == 1 and "no user" in again.stderr


# -- keys ------------------------------------------------------------------------------------


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = _segments(token)[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_forged_and_tampered_tokens(server: PortwayServer) -> None:
    genuine = get_token(server, ALICE).json()["token"]
    assert pull_with(server, genuine).status_code == 200
    header_b64, _, signature = _segments(genuine)
    header = jwt.get_unverified_header(genuine)
    claims = _claims(genuine)

    # Tampered: bound to team B instead, the signature kept.
    moved = {**claims, "portway": {**claims["portway"], "repo": "team-b-hosted"}}
    refused_token(pull_with(server, f"{header_b64}.{_b64(moved)}.{signature}", index=1))
    # Tampered: more actions.
    more = {**claims, "access": [{"type": "repository", "name": "app", "actions": ["*"]}]}
    refused_token(pull_with(server, f"{header_b64}.{_b64(more)}.{signature}"))
    # Tampered signature.
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    refused_token(pull_with(server, f"{header_b64}.{_b64(claims)}.{flipped}"))
    # Forged: signed by a key of our own under the server's kid.
    mine = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, mine, algorithm="ES256", headers={"kid": header["kid"]})
    refused_token(pull_with(server, forged))
    # alg: none, with and without the kid.
    none_header = _b64({"alg": "none", "typ": "JWT", "kid": header["kid"]})
    refused_token(pull_with(server, f"{none_header}.{_b64(claims)}."))
    refused_token(pull_with(server, f"{_b64({'alg': 'none'})}.{_b64(claims)}."))
    # Algorithm confusion: HS256 keyed with the public key's PEM.
    hs_header = _b64({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})
    refused_token(pull_with(server, f"{hs_header}.{_b64(claims)}.{signature}"))
    # Garbage.
    refused_token(pull_with(server, "not-a-token"))


def test_key_rotation(server: PortwayServer) -> None:
    """`portway key rotate`: old tokens keep working; after `portway key remove` (and a
    restart, or within a minute) they are refused."""
    before = get_token(server, ALICE).json()["token"]
    old_kid = jwt.get_unverified_header(before)["kid"]
    new_kid = cli(server, "key", "rotate").stdout.strip()
    assert new_kid != old_kid
    listed = cli(server, "key", "list").stdout
    assert f"{new_kid}  (current)" in listed and old_kid in listed
    # The running server meets the new kid and rereads the key folder.
    signed_new = _crafted(_authority(server))
    assert jwt.get_unverified_header(signed_new)["kid"] == new_kid
    assert pull_with(server, signed_new).status_code == 200
    assert pull_with(server, before).status_code == 200  # the old key still verifies

    cli(server, "key", "remove", old_kid)
    assert cli(server, "key", "remove", new_kid, check=False).returncode == 1  # the current one
    server.restart()
    refused_token(pull_with(server, before))
    assert pull_with(server, signed_new).status_code == 200
    after = get_token(server, ALICE).json()["token"]
    assert jwt.get_unverified_header(after)["kid"] == new_kid


def test_key_remove_kid_beginning_with_dash(server: PortwayServer) -> None:
    """A kid is base64url: one in 64 begins with "-". `portway key remove KID` takes it all the
    same, in the order an operator types it (the kid, then --config)."""
    while True:
        private = ec.generate_private_key(ec.SECP256R1())
        kid = thumbprint(private.public_key())
        if kid.startswith("-"):
            break
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keys = server.data_dir / "keys"
    (keys / f"{kid}.pem").write_bytes(pem)
    assert kid in cli(server, "key", "list").stdout
    cli(server, "key", "remove", kid)  # runs `portway key remove KID --config FILE`
    assert not (keys / f"{kid}.pem").exists()
    assert kid not in cli(server, "key", "list").stdout


# -- logs --------------------------------------------------------------------------------------


def _audit(server: PortwayServer) -> list[dict[str, Any]]:
    text = (server.data_dir / "audit.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_audit_trail_and_no_secrets_in_logs(server: PortwayServer) -> None:
    client = team_a(server)
    image = make_image("audited")
    assert push_image(client, "audited", "v1", image).status_code == 201
    answer = client.request("DELETE", f"/v2/audited/manifests/{image.digest}")
    assert answer.status_code == 202
    tokens = [a.json()["token"] for a in client.token_answers if a.ok]
    assert (
        requests.get(token_url(server), auth=(ALICE[0], "typo-" + ALICE[1]), timeout=30).status_code
        == 401
    )

    records = _audit(server)
    logins = [r for r in records if r["event"] == "login" and r["principal"] == "alice"]
    assert {"success", "failure"} <= {r["outcome"] for r in logins}
    assert all(r["client"] for r in logins)
    pushes = [r for r in records if r["event"] == "push" and r["detail"].get("image") == "audited"]
    assert pushes and pushes[0]["principal"] == "alice" and pushes[0]["repository"] == REPO
    assert pushes[0]["client"]
    deletes = [
        r for r in records if r["event"] == "delete" and r["detail"].get("image") == "audited"
    ]
    assert deletes and deletes[0]["principal"] == "alice" and deletes[0]["repository"] == REPO
    assert any(r["event"] == "user.add" for r in records)
    # A token of team A's route replayed on team B's: refused and audited with the client.
    refused_token(pull_with(server, tokens[0], index=1))
    replays = [r for r in _audit(server) if r["event"] == "token.replay"]
    assert replays and replays[-1]["repository"] == "team-b-hosted" and replays[-1]["client"]

    secrets = [ALICE[1], "typo-" + ALICE[1], CAROL[1], *tokens]
    audit_text = (server.data_dir / "audit.log").read_text()
    for name, text in (("server log", server.log()), ("audit log", audit_text)):
        for secret in secrets:
            assert secret not in text, f"a secret in the {name}"
        assert "eyJ" not in text, f"something like a JWT in the {name}"
    # The admin's first password is printed once on the console by design, never audited.
    assert (server.admin_password() or "?") not in audit_text
