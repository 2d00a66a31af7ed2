"""argon2id password hashing."""

from __future__ import annotations

import pytest

from portway.auth import passwords
from portway.auth.passwords import (
    FAST_TEST_PARAMS,
    MAX_PASSWORD_BYTES,
    HashParams,
    PasswordHasher,
    PasswordTooLong,
)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(FAST_TEST_PARAMS)


def test_hash_is_argon2id_and_salted(hasher: PasswordHasher) -> None:
    one, two = hasher.hash("s3cret"), hasher.hash("s3cret")
    assert one.startswith("$argon2id$")
    assert one != two
    assert "s3cret" not in one


def test_verify_good_and_bad(hasher: PasswordHasher) -> None:
    stored = hasher.hash("correct horse")
    assert hasher.verify(stored, "correct horse")
    assert not hasher.verify(stored, "correct horsE")
    assert not hasher.verify(stored, "")


def test_verify_never_raises_on_garbage_hash(hasher: PasswordHasher) -> None:
    assert not hasher.verify("not-a-hash", "x")
    assert not hasher.verify("", "x")
    assert not hasher.verify("$argon2id$v=19$m=1,t=1,p=1$AAAA$BBBB", "x")


def test_unicode_password(hasher: PasswordHasher) -> None:
    stored = hasher.hash("pässwörd-🔑")
    assert hasher.verify(stored, "pässwörd-🔑")
    assert not hasher.verify(stored, "passwort-🔑")


def test_overlong_password_refused(hasher: PasswordHasher) -> None:
    with pytest.raises(PasswordTooLong):
        hasher.hash("x" * (MAX_PASSWORD_BYTES + 1))
    stored = hasher.hash("x" * MAX_PASSWORD_BYTES)
    assert hasher.verify(stored, "x" * MAX_PASSWORD_BYTES)
    assert not hasher.verify(stored, "x" * (MAX_PASSWORD_BYTES + 1))


def test_needs_rehash_when_parameters_change(hasher: PasswordHasher) -> None:
    stored = hasher.hash("pw")
    assert not hasher.needs_rehash(stored)
    stronger = PasswordHasher(HashParams(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.needs_rehash(stored)
    assert stronger.verify(stored, "pw")  # old hashes still verify
    assert hasher.needs_rehash("garbage")


def test_dummy_verify_takes_time_without_error(hasher: PasswordHasher) -> None:
    hasher.verify_dummy("anything")
    hasher.verify_dummy("y" * 10_000)


def test_the_dummy_hash_of_the_default_parameters_costs_what_a_real_one_costs() -> None:
    """The default hasher's dummy is a constant (no hash at every start); it must be a real
    hash of the dummy password made with the default parameters, or an unknown user's login
    would take another time than a known user's."""
    default = PasswordHasher()
    assert default._dummy == passwords._DEFAULT_DUMMY
    assert not default.needs_rehash(default._dummy)  # the default parameters, argon2id
    assert default.verify(default._dummy, passwords._DUMMY_PASSWORD)
    assert default.needs_rehash(PasswordHasher(FAST_TEST_PARAMS)._dummy)  # others: their own
