"""What the manifest page shows: platforms of an index (attestations named as such), layers
with sizes, the config, and the referrers of the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ATTESTATION = "attestation-manifest"


@dataclass
class Child:
    digest: str
    media_type: str
    size: int
    label: str  # "linux/amd64", "attestation for sha256:..."
    attestation: bool


@dataclass
class ManifestView:
    digest: str
    media_type: str
    size: int
    kind: str  # "index" or "image"
    children: list[Child] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    artifact_type: str | None = None
    subject: str | None = None
    total: int = 0


def _platform(p: Any) -> str:
    if not isinstance(p, dict):
        return "no platform given"
    text = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return text + (f"/{p['variant']}" if p.get("variant") else "")


def describe(digest: str, media_type: str, body: bytes) -> ManifestView:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    view = ManifestView(digest, media_type, len(body), "image")
    if isinstance(doc.get("manifests"), list):
        view.kind = "index"
        for c in doc["manifests"]:
            if not isinstance(c, dict):
                continue
            notes = c.get("annotations") or {}
            attestation = notes.get("vnd.docker.reference.type") == ATTESTATION
            if attestation:
                label = f"attestation for {notes.get('vnd.docker.reference.digest', '?')}"
            else:
                label = _platform(c.get("platform"))
            view.children.append(Child(str(c.get("digest")), str(c.get("mediaType", "")),
                                       int(c.get("size") or 0), label, attestation))  # fmt: skip
    layers = doc.get("layers")
    if isinstance(layers, list):
        view.layers = [x for x in layers if isinstance(x, dict)]
        view.total = sum(int(x.get("size") or 0) for x in view.layers)
    if isinstance(doc.get("config"), dict):
        view.config = doc["config"]
        view.total += int(doc["config"].get("size") or 0)
    view.artifact_type = doc.get("artifactType") or (
        (view.config or {}).get("mediaType") if doc.get("subject") else None)  # fmt: skip
    if isinstance(doc.get("subject"), dict):
        view.subject = str(doc["subject"].get("digest"))
    return view
