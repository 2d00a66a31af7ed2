"""Token signing keys in `<data_dir>/keys/`: created on first use, rotatable, `kid`-addressed.

Layout: one private key per file, `<kid>.pem` (PKCS#8, mode 0600), and `current`, a file naming
the kid that signs new tokens. Rotating writes a new key and points `current` at it; older keys
keep verifying until their file is removed. The kid is the key's RFC 7638 JWK thumbprint, so it
is stable, filename-safe and never names a key that is not in the folder.

Several worker processes may share the folder: a process that meets an unknown kid rereads the
folder (at most once per `reload_interval` seconds) before refusing the token, and every process
rereads it every `refresh_interval` seconds, so a rotation or a removal reaches all workers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

Algorithm = Literal["ES256", "RS256"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CURRENT = "current"


class KeyFolderError(Exception):
    """The key folder cannot be used (unreadable file, unsupported key type)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: Algorithm
    private: PrivateKey

    @property
    def public(self) -> PublicKey:
        return self.private.public_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url without padding."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(_int_bytes(nums.x, size)),
            "y": _b64(_int_bytes(nums.y, size)),
        }
    else:
        rnums = key.public_numbers()
        jwk = {"e": _b64(_int_bytes(rnums.e)), "kty": "RSA", "n": _b64(_int_bytes(rnums.n))}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return _b64(hashlib.sha256(canonical).digest())


def _algorithm_of(key: PrivateKey) -> Algorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFolderError(f"EC signing keys must be P-256, not {key.curve.name}")
        return "ES256"
    if key.key_size < 2048:
        raise KeyFolderError("RSA signing keys must have at least 2048 bits")
    return "RS256"


def _generate(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (never readable by others, not even for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyRing:
    """The signing key and every key that still verifies."""

    def __init__(
        self,
        directory: Path,
        algorithm: Algorithm = "ES256",
        *,
        clock: Callable[[], float] = time.monotonic,
        reload_interval: float = 5.0,
        refresh_interval: float = 60.0,
    ) -> None:
        self.directory = directory
        self.algorithm: Algorithm = algorithm
        self._clock = clock
        self._reload_interval = reload_interval
        self._refresh_interval = refresh_interval
        self._keys: dict[str, SigningKey] = {}
        self._current: str | None = None
        self._loaded_at: float | None = None
        self._folder_stamp: int | None = None

    @classmethod
    def in_data_dir(cls, data_dir: Path, algorithm: Algorithm = "ES256") -> KeyRing:
        return cls(data_dir / "keys", algorithm)

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read the folder, creating the first key when there is none."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys: dict[str, SigningKey] = {}
        for path in sorted(self.directory.glob("*.pem")):
            key = self._read(path)
            if key is not None:
                keys[key.kid] = key
        self._keys = keys
        self._loaded_at = self._clock()
        self._folder_stamp = self._stamp()
        current = self._read_current()
        if current not in keys:
            current = None
        if current is None:
            current = self.rotate() if not keys else max(keys, key=self._mtime)
        self._current = current

    def _stamp(self) -> int | None:
        try:
            return self.directory.stat().st_mtime_ns
        except OSError:
            return None

    def _read(self, path: Path) -> SigningKey | None:
        if not KID_RE.match(path.stem):
            return None
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise KeyFolderError(f"cannot read signing key {path}: {exc}") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyFolderError(f"{path}: only EC P-256 and RSA signing keys are supported")
        kid = thumbprint(private.public_key())
        if kid != path.stem:
            raise KeyFolderError(f"{path}: file name does not match the key's thumbprint {kid}")
        return SigningKey(kid, _algorithm_of(private), private)

    def _read_current(self) -> str | None:
        try:
            kid = (self.directory / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return kid if KID_RE.match(kid) else None

    def _mtime(self, kid: str) -> float:
        return (self.directory / f"{kid}.pem").stat().st_mtime

    def _ensure_loaded(self) -> None:
        if self._loaded_at is None:
            self.load()
        elif self._clock() - self._loaded_at >= self._refresh_interval:
            with contextlib.suppress(KeyFolderError, OSError):
                self.load()

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        self._ensure_loaded()
        assert self._current is not None
        return self._keys[self._current]

    def kids(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._keys)

    def verification_key(self, kid: str) -> SigningKey | None:
        """The key named `kid`, or None. Rereads the folder for a kid not seen yet (throttled)."""
        if not KID_RE.match(kid):
            return None
        self._ensure_loaded()
        key = self._keys.get(kid)
        loaded_at = self._loaded_at or 0.0
        # Reread for an unknown kid when the folder changed (a rotation by `portway key`),
        # else at most every reload interval (a forged kid must not make us reread each time).
        changed = self._stamp() != self._folder_stamp
        if key is None and (changed or self._clock() - loaded_at >= self._reload_interval):
            with contextlib.suppress(KeyFolderError, OSError):
                self.load()
            key = self._keys.get(kid)
        return key

    # -- changing --------------------------------------------------------------------------

    def rotate(self, algorithm: Algorithm | None = None) -> str:
        """Create a new key and make it current; returns its kid. Old keys still verify."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = _generate(algorithm or self.algorithm)
        kid = thumbprint(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(self.directory / f"{kid}.pem", pem)
        tmp = self.directory / f".{CURRENT}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        _write_private(tmp, kid.encode() + b"\n")
        os.replace(tmp, self.directory / CURRENT)
        self._keys[kid] = SigningKey(kid, _algorithm_of(private), private)
        self._current = kid
        if self._loaded_at is None:
            self._loaded_at = self._clock()
        return kid

    def remove(self, kid: str) -> None:
        """Stop verifying tokens signed by `kid`. The current key cannot be removed."""
        self._ensure_loaded()
        if kid == self._current:
            raise KeyFolderError("the current signing key cannot be removed; rotate first")
        if not KID_RE.match(kid) or kid not in self._keys:
            raise KeyFolderError(f"no signing key {kid!r}")
        (self.directory / f"{kid}.pem").unlink(missing_ok=True)
        del self._keys[kid]
