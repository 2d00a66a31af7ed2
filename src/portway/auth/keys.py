"""Token signing keys in `<data_dir>/keys/`: created on first use, rotatable, `kid`-addressed.

Layout: one private key per file, `<kid>.pem` (PKCS#8, mode 0600), and `current`, a file naming
the kid that signs new tokens. Rotating writes a new key and points `current` at it; older keys
keep verifying until their file is removed. The kid is the key's RFC 7638 JWK thumbprint, so it
is stable, filename-safe and never names a key that is not in the folder.

Files are written whole or not at all: a key goes to a temporary file, is synced, then renamed
into place, so a full disk or a crash never leaves a half-written `<kid>.pem`. A file that
cannot be read anyway (damaged, foreign, cut short by another tool) is skipped and reported in
the log, never fatal to the ring: the other keys keep verifying, and a ring left with no usable
key makes a new one. A rotation that cannot be written leaves the ring as it was.

Several worker processes may share the folder: a process that meets an unknown kid rereads the
folder (at most once per `reload_interval` seconds) before refusing the token, and every process
rereads it every `refresh_interval` seconds, so a rotation or a removal reaches all workers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
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

log = logging.getLogger("portway.auth")

KID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CURRENT = "current"


class KeyFolderError(Exception):
    """The key folder cannot be used (a key cannot be written, an unknown kid to remove)."""


class UnusableKey(ValueError):
    """One key file cannot be used (unreadable, damaged, unsupported type, wrong name)."""


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
            raise UnusableKey(f"EC signing keys must be P-256, not {key.curve.name}")
        return "ES256"
    if key.key_size < 2048:
        raise UnusableKey("RSA signing keys must have at least 2048 bits")
    return "RS256"


def _generate(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def write_private(path: Path, data: bytes) -> None:
    """Put `data` at `path` whole or not at all, mode 0600 from the first instant.

    Written to a temporary file in the same folder, synced, renamed over `path`, then the
    folder is synced so the rename survives a crash. On any failure (a full disk) the
    temporary file is removed and `path` is untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_key(path: Path) -> SigningKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UnusableKey(f"cannot read it ({reason})") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UnusableKey("only EC P-256 and RSA signing keys are supported")
    kid = thumbprint(private.public_key())
    if kid != path.stem:
        raise UnusableKey(f"the file name does not match the key's thumbprint {kid}")
    return SigningKey(kid, _algorithm_of(private), private)


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
        self._reported: set[str] = set()
        self.revision = 0
        """Bumped whenever the set of verifying keys changes (what a token cache keys on)."""

    @classmethod
    def in_data_dir(cls, data_dir: Path, algorithm: Algorithm = "ES256") -> KeyRing:
        return cls(data_dir / "keys", algorithm)

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read the folder, creating the first key when there is no usable one.

        Raises KeyFolderError when that key cannot be written; the ring then stays unloaded
        (or as it was) and the next use tries again.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyFolderError(f"cannot create the key folder {self.directory}: {exc}") from None
        keys: dict[str, SigningKey] = {}
        for path in sorted(self.directory.glob("*.pem")):
            key = self._read(path)
            if key is not None:
                keys[key.kid] = key
        current = self._read_current()
        if not keys:
            created = self._create(self.algorithm)  # raises, leaving the ring as it was
            keys, current = {created.kid: created}, created.kid
        elif current not in keys:
            current = max(keys, key=self._mtime)
        if keys.keys() != self._keys.keys():
            self.revision += 1
        self._keys = keys
        self._current = current
        self._loaded_at = self._clock()
        self._folder_stamp = self._stamp()

    def reload_if_changed(self) -> None:
        """Reread the folder now if it changed since it was read (a key rotated or removed by
        `portway key`); a stat, so it can run often (every second)."""
        if self._loaded_at is not None and self._stamp() != self._folder_stamp:
            with contextlib.suppress(KeyFolderError, OSError):
                self.load()

    def _stamp(self) -> int | None:
        try:
            return self.directory.stat().st_mtime_ns
        except OSError:
            return None

    def _read(self, path: Path) -> SigningKey | None:
        """The key in `path`, or None (reported once per file) when it cannot be used."""
        if not KID_RE.match(path.stem):
            return None
        try:
            key = _load_key(path)
        except UnusableKey as exc:
            if path.name not in self._reported:
                self._reported.add(path.name)
                log.error("skipping signing key %s: %s", path, exc)
            return None
        self._reported.discard(path.name)
        return key

    def _read_current(self) -> str | None:
        try:
            kid = (self.directory / CURRENT).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return kid if KID_RE.match(kid) else None

    def _mtime(self, kid: str) -> float:
        try:
            return (self.directory / f"{kid}.pem").stat().st_mtime
        except OSError:
            return 0.0

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
        try:
            self._ensure_loaded()
        except KeyFolderError:
            return None  # no key could be written yet: nothing of ours to verify with
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
        """Create a new key and make it current; returns its kid. Old keys still verify.

        Raises KeyFolderError when the key or the `current` pointer cannot be written (a full
        disk): the folder and the ring are then as they were before the call.
        """
        key = self._create(algorithm or self.algorithm)
        self._keys = {**self._keys, key.kid: key}
        self._current = key.kid
        if self._loaded_at is None:
            self._loaded_at = self._clock()
        return key.kid

    def _create(self, algorithm: Algorithm) -> SigningKey:
        """Write a new key and point `current` at it, both or neither."""
        private = _generate(algorithm)
        kid = thumbprint(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.directory / f"{kid}.pem"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, pem)
            try:
                write_private(self.directory / CURRENT, kid.encode() + b"\n")
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise KeyFolderError(
                f"cannot write a new signing key in {self.directory}: {reason}"
            ) from None
        return SigningKey(kid, _algorithm_of(private), private)

    def remove(self, kid: str) -> None:
        """Stop verifying tokens signed by `kid`. The current key cannot be removed."""
        self._ensure_loaded()
        if kid == self._current:
            raise KeyFolderError("the current signing key cannot be removed; rotate first")
        if not KID_RE.match(kid) or kid not in self._keys:
            raise KeyFolderError(f"no signing key {kid!r}")
        (self.directory / f"{kid}.pem").unlink(missing_ok=True)
        del self._keys[kid]
        self.revision += 1
