"""Manifest parsing and validation: what a manifest references, pure, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from portway.oci import mediatypes as mt
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    blobs: tuple[Descriptor, ...] = ()  # config and layers: must be blobs in the repository
    children: tuple[Descriptor, ...] = ()  # index entries: must be manifests in the repository
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    foreign: tuple[Descriptor, ...] = field(default=())  # layers with urls: not required locally


def _invalid(detail: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", f"manifest invalid: {detail}", detail=detail)


def _descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media_type = raw.get("mediaType")
    digest = raw.get("digest")
    size = raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest is missing")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    try:
        parsed = Digest.parse(digest)
    except RegistryError:
        raise _invalid(f"{where}.digest {digest[:80]!r} is not a valid digest") from None
    annotations = raw.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise _invalid(f"{where}.annotations must map strings to strings")
    artifact_type = raw.get("artifactType")
    platform = raw.get("platform")
    return Descriptor(
        media_type=media_type,
        digest=parsed,
        size=size,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=annotations,
        platform=platform if isinstance(platform, dict) else None,
    )


def detect_media_type(doc: dict[str, Any]) -> str | None:
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc or "layers" in doc:
        return mt.OCI_MANIFEST
    return None


def parse_manifest(
    body: bytes, content_type: str | None, *, strict: bool = False
) -> ParsedManifest:
    """Validate a pushed manifest and list what it references.

    `content_type` is the request's Content-Type (parameters stripped). The body's own
    `mediaType`, when present, must agree with it. With `strict`, the Content-Type must be a
    manifest type this registry knows.
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(
            "MANIFEST_INVALID",
            f"manifest is larger than {MAX_MANIFEST_BYTES} bytes",
            status=413,
        )
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"not valid JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise _invalid("JSON nested too deeply") from None
    except ValueError:  # e.g. an integer beyond Python's digit limit
        raise _invalid("JSON value out of range") from None
    if not isinstance(doc, dict):
        raise _invalid("not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if (
        content_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED)
        or doc.get("schemaVersion") == 1
    ):
        raise RegistryError(
            "MANIFEST_INVALID",
            "Docker schema 1 manifests are not supported; push schema 2 or OCI",
            detail="schema1",
        )
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    if content_type and content_type not in ("application/json", "application/octet-stream"):
        if declared and declared != content_type:
            raise _invalid(
                f"Content-Type {content_type!r} does not match the manifest's "
                f"mediaType {declared!r}"
            )
        media_type = content_type
    else:
        detected = detect_media_type(doc)
        if detected is None:
            raise _invalid("cannot tell the manifest type: no mediaType, config or manifests")
        media_type = detected
    if strict and media_type not in mt.MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type!r}")

    subject = _descriptor(doc["subject"], "subject") if "subject" in doc else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise _invalid("annotations must be an object")

    if "manifests" in doc or media_type in mt.INDEXES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _invalid("an index needs a manifests list")
        children = tuple(_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries))
        return ParsedManifest(
            media_type=media_type,
            children=children,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    config = _descriptor(doc.get("config"), "config")
    layers_raw = doc.get("layers", [])
    if not isinstance(layers_raw, list):
        raise _invalid("layers must be a list")
    layers = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_raw)]
    foreign = tuple(
        d
        for d, raw in zip(layers, layers_raw, strict=True)
        if isinstance(raw, dict) and raw.get("urls")
    )
    local = tuple(d for d in layers if d not in foreign)
    # Referrers report an image manifest's artifactType, or else its config's media type.
    return ParsedManifest(
        media_type=media_type,
        blobs=(config, *local),
        subject=subject,
        artifact_type=artifact_type or config.media_type,
        annotations=annotations,
        foreign=foreign,
    )


def negotiate(stored_type: str, accept: list[str]) -> bool:
    """True when the client accepts the stored type (no Accept at all accepts everything)."""
    if not accept:
        return True
    return any(a in ("*/*", stored_type) or a == "application/*" for a in accept)


def parse_accept(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            media = part.split(";", 1)[0].strip()
            if media:
                out.append(media)
    return out


def default_platform_child(index_body: bytes, accept: list[str]) -> str | None:
    """The digest of an index's linux/amd64 entry whose media type the client accepts."""
    try:
        doc = json.loads(index_body)
    except ValueError:
        return None
    for entry in doc.get("manifests", []) if isinstance(doc, dict) else []:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform") or {}
        if (
            isinstance(platform, dict)
            and platform.get("os") == "linux"
            and platform.get("architecture") == "amd64"
            and negotiate(str(entry.get("mediaType", "")), accept)
            and isinstance(entry.get("digest"), str)
        ):
            return str(entry["digest"])
    return None
