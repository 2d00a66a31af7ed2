"""Password hashing: argon2id, PHC-encoded, verified in constant time."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_BYTES = 1024
"""Longer passwords are refused outright: hashing megabytes is a cheap denial of service."""


@dataclass(frozen=True)
class HashParams:
    """argon2id cost. The default is RFC 9106's second recommendation (64 MiB, t=3, p=4)."""

    time_cost: int = 3
    memory_cost: int = 65536  # KiB
    parallelism: int = 4


LOGIN_THREAD_NICENESS = 10


def lower_thread_priority() -> None:
    """Run the calling thread at nice 10 (Linux: per thread; the threads argon2 starts for its
    lanes inherit it): on a busy machine the event loop's short requests are scheduled before
    a login's third of a second of hashing. Where the system refuses, nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOGIN_THREAD_NICENESS)


FAST_TEST_PARAMS = HashParams(time_cost=1, memory_cost=1024, parallelism=1)
"""Cheap parameters for tests only; never for stored production hashes."""

_DUMMY_PASSWORD = "portway-no-such-user"
_DEFAULT_DUMMY = (
    "$argon2id$v=19$m=65536,t=3,p=4$KT+mdVNVCYyR+99IF+Neow"
    "$JKQ/Mv6e8ZErU4eTqgXQzQuzVW6ytzzXtYLaAGq1SoE"
)
"""`_DUMMY_PASSWORD` hashed once with the default `HashParams` (the salt is no secret: anyone
may know the dummy), so a process does not spend a hash on it at every start."""


class PasswordHasher:
    """Hash and verify passwords. `verify` never raises on a wrong password or a bad hash."""

    def __init__(self, params: HashParams | None = None) -> None:
        p = params or HashParams()
        self._argon2 = _Argon2(
            time_cost=p.time_cost,
            memory_cost=p.memory_cost,
            parallelism=p.parallelism,
            type=Type.ID,
        )
        # A hash of nothing anyone knows, verified when a user does not exist, so a login for
        # an unknown name costs the same time as one for a known name: the verification's cost
        # is the one the hash names, so it must be made with these parameters.
        self._dummy = _DEFAULT_DUMMY if p == HashParams() else self._argon2.hash(_DUMMY_PASSWORD)

    def hash(self, password: str) -> str:
        _check_length(password)
        return str(self._argon2.hash(password))

    def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; the comparison inside argon2 is constant time."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            return False
        try:
            return bool(self._argon2.verify(password_hash, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def verify_dummy(self, password: str) -> None:
        """Spend the time of one verification; call it when there is no hash to check."""
        self.verify(self._dummy, password[:MAX_PASSWORD_BYTES])

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the stored hash used other parameters (or another variant) than ours."""
        try:
            return bool(self._argon2.check_needs_rehash(password_hash))
        except (InvalidHashError, ValueError):
            return True


class PasswordTooLong(ValueError):
    pass


def _check_length(password: str) -> None:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordTooLong(f"passwords are at most {MAX_PASSWORD_BYTES} bytes")
