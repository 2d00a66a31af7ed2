"""What the metadata store hands out and takes in: plain frozen rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """A stored manifest: what a manifest GET answers with (repositories call it Manifest)."""

    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ReferrerRow:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    repo_id: int
    image: str
    created: float
    updated: float
    size: int = 0  # bytes stored (sessions kept in parts; the filesystem's file says itself)
    state: str | None = None  # the blob backend's multipart state, JSON


@dataclass(frozen=True, slots=True)
class NewManifest:
    digest: str
    media_type: str
    body: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str] | None
    refs: Sequence[tuple[str, bool]]  # (digest, is_manifest)


TagGuard = Callable[[str, str | None], None]
"""(tag, digest it points at now) -> raise to refuse. Called inside the write transaction that
moves the tag, so "now" is what the move replaces: decide tag moves here, never on a read made
before the transaction (two concurrent pushes would both see the tag as new)."""
