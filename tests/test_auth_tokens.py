"""Bearer tokens with real keys: signing, verification, rotation, forgery; scope parsing."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from portway.auth.keys import KeyFolderError, KeyRing
from portway.auth.scopes import Scope, ScopeError, parse_scope, parse_scopes
from portway.auth.tokens import (
    Access,
    TokenAuthority,
    TokenError,
    TokenExpired,
    TokenWrongRepository,
)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


@pytest.fixture
def authority(keys: KeyRing, clock: Clock) -> TokenAuthority:
    return TokenAuthority(keys, issuer="portway-test", ttl=300, clock=clock)


PULL = (Access("repository", "app", ("pull",)),)


def _issue(authority: TokenAuthority, repo: str | None = "team-a-hosted") -> str:
    return authority.issue_access("alice", "portway", repo, PULL, {"read", "browse"}).token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    head, body, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(body))),
        sig,
    )


def test_round_trip(authority: TokenAuthority, keys: KeyRing) -> None:
    token = _issue(authority)
    header, claims, _ = _parts(token)
    assert header["alg"] == "ES256" and header["kid"] == keys.current.kid
    assert claims["iss"] == "portway-test" and claims["sub"] == "alice"
    assert claims["aud"] == "portway"
    assert claims["exp"] == claims["iat"] + 300 == int(T0) + 300  # type: ignore[operator]
    assert claims["access"] == [{"type": "repository", "name": "app", "actions": ["pull"]}]
    verified = authority.verify(token, "team-a-hosted", audience="portway")
    assert verified.subject == "alice"
    assert verified.repository == "team-a-hosted"
    assert verified.actions == {"read", "browse"}
    assert verified.access == PULL
    assert verified.kind == "access" and not verified.anonymous


def test_key_files_created_with_mode_0600(authority: TokenAuthority, keys: KeyRing) -> None:
    _issue(authority)
    pems = list(keys.directory.glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((keys.directory / "current").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700


def test_key_survives_restart(authority: TokenAuthority, keys: KeyRing, clock: Clock) -> None:
    token = _issue(authority)
    again = TokenAuthority(KeyRing(keys.directory), issuer="portway-test", clock=clock)
    assert again.verify(token, "team-a-hosted").subject == "alice"
    assert again.keys.current.kid == keys.current.kid


def test_expired(authority: TokenAuthority, clock: Clock) -> None:
    token = _issue(authority)
    clock.now = T0 + 299
    authority.verify(token, "team-a-hosted")
    clock.now = T0 + 300
    with pytest.raises(TokenExpired):
        authority.verify(token, "team-a-hosted")


def test_not_yet_valid(authority: TokenAuthority, clock: Clock) -> None:
    token = _issue(authority)
    clock.now = T0 - 60
    with pytest.raises(TokenError, match="not yet valid"):
        authority.verify(token, "team-a-hosted")


def test_bound_to_one_repository(authority: TokenAuthority) -> None:
    token = _issue(authority, "team-a-hosted")
    with pytest.raises(TokenWrongRepository):
        authority.verify(token, "team-b-hosted")
    with pytest.raises(TokenWrongRepository):
        authority.verify(token, None)
    unbound = _issue(authority, None)
    assert authority.verify(unbound, None).repository is None
    with pytest.raises(TokenWrongRepository):
        authority.verify(unbound, "team-a-hosted")


def test_tampered_claims_refused(authority: TokenAuthority) -> None:
    token = _issue(authority, "team-a-hosted")
    head, _body, sig = token.split(".")
    _, claims, _ = _parts(token)
    claims["portway"] = {**claims["portway"], "repo": "team-b-hosted"}  # type: ignore[dict-item]
    forged_body = _b64(json.dumps(claims).encode())
    with pytest.raises(TokenError, match="invalid token"):
        authority.verify(f"{head}.{forged_body}.{sig}", "team-b-hosted")


def test_tampered_signature_refused(authority: TokenAuthority) -> None:
    token = _issue(authority)
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    with pytest.raises(TokenError):
        authority.verify(f"{head}.{body}.{_b64(bytes(raw))}", "team-a-hosted")


def test_alg_none_refused(authority: TokenAuthority, keys: KeyRing) -> None:
    _, claims, _ = _parts(_issue(authority))
    for alg in ("none", "None", "NONE", "HS256"):
        header = {"alg": alg, "typ": "JWT", "kid": keys.current.kid}
        forged = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        with pytest.raises(TokenError, match="refused"):
            authority.verify(forged, "team-a-hosted")


def test_hs256_with_public_key_as_secret_refused(authority: TokenAuthority, keys: KeyRing) -> None:
    """The classic algorithm-confusion forgery: HMAC keyed with the public key's PEM."""
    _, claims, _ = _parts(_issue(authority))
    from cryptography.hazmat.primitives import serialization

    pem = keys.current.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": keys.current.kid}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    import hashlib
    import hmac

    sig = _b64(hmac.new(pem, signing.encode(), hashlib.sha256).digest())
    with pytest.raises(TokenError):
        authority.verify(f"{signing}.{sig}", "team-a-hosted")


def test_unknown_kid_refused(authority: TokenAuthority, clock: Clock) -> None:
    _, claims, _ = _parts(_issue(authority))
    stranger = ec.generate_private_key(ec.SECP256R1())
    for kid in ("A" * 43, "../../etc/passwd", None):
        headers = {} if kid is None else {"kid": kid}
        forged = jwt.encode(claims, stranger, algorithm="ES256", headers=headers)
        with pytest.raises(TokenError):
            authority.verify(forged, "team-a-hosted")


def test_signed_by_stranger_with_our_kid_refused(authority: TokenAuthority, keys: KeyRing) -> None:
    _, claims, _ = _parts(_issue(authority))
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": keys.current.kid})
    with pytest.raises(TokenError, match="invalid token"):
        authority.verify(forged, "team-a-hosted")


def test_rotation(authority: TokenAuthority, keys: KeyRing) -> None:
    old_kid = keys.current.kid
    old_token = _issue(authority)
    new_kid = keys.rotate()
    assert new_kid != old_kid and keys.current.kid == new_kid
    new_token = _issue(authority)
    assert _parts(new_token)[0]["kid"] == new_kid
    assert authority.verify(old_token, "team-a-hosted").subject == "alice"
    assert authority.verify(new_token, "team-a-hosted").subject == "alice"
    with pytest.raises(KeyFolderError):
        keys.remove(new_kid)  # the current key stays
    keys.remove(old_kid)
    with pytest.raises(TokenError, match="unknown signing key"):
        authority.verify(old_token, "team-a-hosted")
    authority.verify(new_token, "team-a-hosted")


def test_rotation_seen_by_another_worker(tmp_path: Path, clock: Clock) -> None:
    monotonic = Clock(0.0)
    worker_1 = TokenAuthority(KeyRing(tmp_path / "k", clock=monotonic), clock=clock)
    worker_2 = TokenAuthority(KeyRing(tmp_path / "k", clock=monotonic), clock=clock)
    first = worker_1.issue_access("u", "s", "r", PULL, {"read"}).token
    assert worker_2.verify(first, "r").subject == "u"
    worker_1.keys.rotate()
    second = worker_1.issue_access("u", "s", "r", PULL, {"read"}).token
    # The key folder changed, so the unknown kid makes worker 2 reread it at once.
    assert worker_2.verify(second, "r").subject == "u"
    # An unknown kid with an unchanged folder is refused without a reread.
    forged = worker_1.issue_access("u", "s", "r", PULL, {"read"}).token
    head, _, rest = forged.partition(".")
    bogus = _b64(json.dumps({**_parts(forged)[0], "kid": "A" * 43}).encode()) + "." + rest
    assert head != bogus.partition(".")[0]
    with pytest.raises(TokenError, match="unknown signing key"):
        worker_2.verify(bogus, "r")
    monotonic.now = 100.0
    assert worker_2.keys.current.kid == worker_1.keys.current.kid  # periodic reread


def test_rs256_keys(tmp_path: Path, clock: Clock) -> None:
    authority = TokenAuthority(KeyRing(tmp_path / "rsa", "RS256"), clock=clock)
    token = authority.issue_access("u", "s", "r", PULL, {"read"}).token
    assert _parts(token)[0]["alg"] == "RS256"
    assert authority.verify(token, "r").actions == {"read"}


def test_audience_checked_when_given(authority: TokenAuthority) -> None:
    token = _issue(authority)
    authority.verify(token, "team-a-hosted", audience="portway")
    with pytest.raises(TokenError, match="another service"):
        authority.verify(token, "team-a-hosted", audience="other")


def test_other_issuer_refused(keys: KeyRing, clock: Clock) -> None:
    mine = TokenAuthority(keys, issuer="a", clock=clock)
    other = TokenAuthority(keys, issuer="b", clock=clock)
    token = other.issue_access("u", "s", "r", PULL, {"read"}).token
    with pytest.raises(TokenError):
        mine.verify(token, "r")


def test_refresh_and_access_kinds_do_not_mix(authority: TokenAuthority, clock: Clock) -> None:
    refresh = authority.issue_refresh("alice", "portway", "team-a-hosted")
    assert refresh.expires_in == authority.refresh_ttl > authority.ttl
    claims = authority.verify(refresh.token, "team-a-hosted", kind="refresh")
    assert claims.subject == "alice" and claims.access == ()
    with pytest.raises(TokenError, match="access token"):
        authority.verify(refresh.token, "team-a-hosted")
    with pytest.raises(TokenError, match="refresh token"):
        authority.verify(_issue(authority), "team-a-hosted", kind="refresh")
    with pytest.raises(TokenWrongRepository):
        authority.verify(refresh.token, "team-b-hosted", kind="refresh")
    clock.now = T0 + authority.refresh_ttl
    with pytest.raises(TokenExpired):
        authority.verify(refresh.token, "team-a-hosted", kind="refresh")


def test_garbage_tokens(authority: TokenAuthority) -> None:
    for junk in ("", "abc", "a.b.c", "x" * 20000, "...", "eyJhbGciOiJFUzI1NiJ9.e30."):
        with pytest.raises(TokenError):
            authority.verify(junk, "team-a-hosted")


# -- scopes ----------------------------------------------------------------------------------


def test_parse_scope_forms() -> None:
    assert parse_scope("repository:library/alpine:pull,push") == Scope(
        "repository", "library/alpine", ("pull", "push")
    )
    assert parse_scope("repository(plugin):vieux/sshfs:pull") == Scope(
        "repository", "vieux/sshfs", ("pull",), "plugin"
    )
    catalog = parse_scope("registry:catalog:*")
    assert catalog.is_catalog and catalog.actions == ("*",)
    ported = parse_scope("repository:localhost:5000/app:pull")
    assert ported.name == "localhost:5000/app"
    assert parse_scope("repository:app:pull,pull").actions == ("pull",)
    assert str(parse_scope("repository:app:pull,push")) == "repository:app:pull,push"


@pytest.mark.parametrize(
    "bad",
    [
        "repository",
        "repository:app",
        "repository::pull",
        ":app:pull",
        "repository:app:",
        "repository:app:pull,,push",
        "repository:App Name:pull",
        "repo sitory:app:pull",
        'repository:app":pull',
        "repository:app:pull\r\nX",
        "repository:" + "a" * 600 + ":pull",
    ],
)
def test_parse_scope_rejects(bad: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(bad)


def test_parse_scopes_merge_split_and_cap() -> None:
    scopes = parse_scopes(
        ["repository:app:pull", "repository:app:push registry:catalog:*", "repository:b:pull"]
    )
    assert [str(s) for s in scopes] == [
        "repository:app:pull,push",
        "registry:catalog:*",
        "repository:b:pull",
    ]
    assert parse_scopes([]) == []
    many = [f"repository:img{i}:pull" for i in range(16)]
    assert len(parse_scopes(many)) == 16
    with pytest.raises(ScopeError, match="too many scopes"):
        parse_scopes([*many, "repository:one-more:pull"])
    with pytest.raises(ScopeError, match="too many scopes"):
        parse_scopes([" ".join([*many, "repository:x:pull"])])
    with pytest.raises(ScopeError, match="at most 2"):
        parse_scopes(["repository:a:pull", "repository:b:pull", "repository:c:pull"], limit=2)
