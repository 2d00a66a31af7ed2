"""Referrers API: manifests whose `subject` names a digest, with `artifactType` filtering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api_support import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Api,
    assert_error,
    canonical,
    descriptor,
    running_server,
    sha256,
    unique,
)
from support.server import PortwayServer

SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "api-referrers") as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


def push_referrer(
    api: Api,
    image: str,
    subject: dict[str, Any],
    artifact_type: str | None,
    annotations: dict[str, str] | None = None,
    config_type: str = OCI_EMPTY,
) -> tuple[str, bytes]:
    api.push_blob(image, EMPTY_JSON)
    payload = unique("payload").encode()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, EMPTY_JSON),
        "layers": [descriptor("application/octet-stream", payload, api.push_blob(image, payload))],
        "subject": subject,
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    body = canonical(doc)
    r = api.put_manifest(image, sha256(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == subject["digest"]
    return sha256(body), body


@pytest.fixture
def subject(api: Api) -> tuple[str, dict[str, Any]]:
    image = unique("subject")
    digest, body = api.push_image(image, "v1")
    return image, descriptor(OCI_MANIFEST, body, digest)


def referrers(api: Api, image: str, digest: str, **params: str) -> dict[str, Any]:
    r = api.get(image, f"referrers/{digest}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == OCI_INDEX
    doc: dict[str, Any] = r.json()
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == OCI_INDEX
    doc["_filters"] = r.headers.get("OCI-Filters-Applied")
    return doc


def test_no_referrers_is_an_empty_index(api: Api, subject: tuple[str, dict[str, Any]]) -> None:
    image, desc = subject
    doc = referrers(api, image, desc["digest"])
    assert doc["manifests"] == []
    # a digest nothing refers to, even one never pushed, is not an error either
    assert referrers(api, image, sha256(b"never pushed"))["manifests"] == []


def test_list_and_filter(api: Api, subject: tuple[str, dict[str, Any]]) -> None:
    image, desc = subject
    sbom_digest, sbom_body = push_referrer(api, image, desc, SBOM, {"org.example.k": "v"})
    sig_digest, sig_body = push_referrer(api, image, desc, SIG)
    plain_digest, _ = push_referrer(api, image, desc, None, config_type="application/x-cfg")

    doc = referrers(api, image, desc["digest"])
    assert doc["_filters"] is None
    entries = {e["digest"]: e for e in doc["manifests"]}
    assert set(entries) == {sbom_digest, sig_digest, plain_digest}
    assert entries[sbom_digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom_digest,
        "size": len(sbom_body),
        "artifactType": SBOM,
        "annotations": {"org.example.k": "v"},
    }
    assert entries[sig_digest]["size"] == len(sig_body)
    assert "annotations" not in entries[sig_digest]
    # without artifactType, an image manifest's config media type stands in
    assert entries[plain_digest]["artifactType"] == "application/x-cfg"

    filtered = referrers(api, image, desc["digest"], artifactType=SIG)
    assert filtered["_filters"] == "artifactType"
    assert [e["digest"] for e in filtered["manifests"]] == [sig_digest]
    none = referrers(api, image, desc["digest"], artifactType="application/nothing")
    assert none["manifests"] == [] and none["_filters"] == "artifactType"


def test_referrer_before_its_subject(api: Api) -> None:
    image = unique("early")
    ghost = {"mediaType": OCI_MANIFEST, "digest": sha256(b"later"), "size": 5}
    digest, _ = push_referrer(api, image, ghost, SBOM)
    assert [e["digest"] for e in referrers(api, image, ghost["digest"])["manifests"]] == [digest]


def test_index_as_referrer(api: Api, subject: tuple[str, dict[str, Any]]) -> None:
    image, desc = subject
    child_digest, child_body = api.push_image(image, None)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [descriptor(OCI_MANIFEST, child_body, child_digest)],
        "subject": desc,
    }
    body = canonical(doc)
    r = api.put_manifest(image, sha256(body), body, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == desc["digest"]
    (entry,) = referrers(api, image, desc["digest"])["manifests"]
    assert entry["mediaType"] == OCI_INDEX
    assert entry["artifactType"] == "application/vnd.example.bundle"


def test_deleted_referrer_disappears(api: Api, subject: tuple[str, dict[str, Any]]) -> None:
    image, desc = subject
    keep, _ = push_referrer(api, image, desc, SBOM)
    gone, _ = push_referrer(api, image, desc, SIG)
    assert api.request("DELETE", image, f"manifests/{gone}").status_code == 202
    assert [e["digest"] for e in referrers(api, image, desc["digest"])["manifests"]] == [keep]


def test_referrers_are_per_image(api: Api, subject: tuple[str, dict[str, Any]]) -> None:
    image, desc = subject
    push_referrer(api, image, desc, SBOM)
    assert referrers(api, unique("elsewhere"), desc["digest"])["manifests"] == []


@pytest.mark.parametrize("digest", ["sha256:abc", "latest", "md5:" + "0" * 32])
def test_bad_digest(api: Api, digest: str) -> None:
    assert_error(api.get(unique("img"), f"referrers/{digest}"), 400, "DIGEST_INVALID")
