"""Content digests (`algorithm:hex`), as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from portway.oci.errors import RegistryError

_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; raise DIGEST_INVALID for anything a registry must refuse."""
        if len(value) > 256 or not _DIGEST_RE.match(value):
            raise RegistryError("DIGEST_INVALID", f"invalid digest {value[:80]!r}")
        algorithm, _, hexpart = value.partition(":")
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise RegistryError(
                "DIGEST_INVALID", f"unsupported digest algorithm {algorithm!r} (sha256, sha512)"
            )
        if len(hexpart) != length or not re.fullmatch(r"[a-f0-9]+", hexpart):
            raise RegistryError("DIGEST_INVALID", f"invalid {algorithm} digest {value[:80]!r}")
        return cls(algorithm, hexpart)

    @classmethod
    def is_digest(cls, value: str) -> bool:
        return ":" in value

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
