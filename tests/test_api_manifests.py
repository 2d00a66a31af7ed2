"""Manifests: GET/HEAD/PUT/DELETE by tag and digest, every format, validation and limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from api_support import (
    API_VERSION,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Api,
    assert_error,
    canonical,
    descriptor,
    random_bytes,
    running_server,
    sha256,
    sha512,
    unique,
)
from support.server import PortwayServer

MAX_MANIFEST = 4 * 1024 * 1024
# Every test twice: on the embedded SQLite and on a server whose [database] is PostgreSQL.
pytestmark = pytest.mark.parametrize("module_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[PortwayServer]:
    repositories = [
        {"name": "docker-hosted", "type": "hosted", "path_routing": True},
        {"name": "docker-strict", "type": "hosted", "strict_content_types": True},
    ]
    with running_server(
        tmp_path_factory, "api-manifests", repositories=repositories, database_url=module_database
    ) as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


def image_doc(api: Api, image: str, media_type: str = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    """A manifest whose config and layer are pushed to `image`."""
    config = json.dumps({"os": "linux", "id": unique("cfg")}).encode()
    layer = random_bytes(1024)
    docker = media_type == DOCKER_MANIFEST
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(
            "application/vnd.docker.container.image.v1+json" if docker else OCI_CONFIG,
            config,
            api.push_blob(image, config),
        ),
        "layers": [
            descriptor(
                "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker else OCI_LAYER,
                layer,
                api.push_blob(image, layer),
            )
        ],
        **extra,
    }


def check_manifest_answer(r: Any, digest: str, media_type: str, body: bytes) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == media_type
    assert int(r.headers["Content-Length"]) == len(body)
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


# -- push and pull -------------------------------------------------------------------------
@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_put_by_tag_then_get_and_head(api: Api, media_type: str) -> None:
    image = unique("img")
    body = canonical(image_doc(api, image, media_type))
    digest = sha256(body)
    r = api.put_manifest(image, "v1", body, media_type)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == api.path(image, f"manifests/{digest}")
    assert "OCI-Subject" not in r.headers
    for reference in ("v1", digest):
        got = api.get(image, f"manifests/{reference}", headers={"Accept": media_type})
        check_manifest_answer(got, digest, media_type, body)
        assert got.content == body
        head = api.head(image, f"manifests/{reference}", headers={"Accept": media_type})
        check_manifest_answer(head, digest, media_type, body)
        assert head.content == b""


def test_put_by_digest(api: Api) -> None:
    image = unique("bydigest")
    body = canonical(image_doc(api, image))
    digest = sha256(body)
    r = api.put_manifest(image, digest, body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert api.get(image, f"manifests/{digest}").content == body
    assert api.get(image, "tags/list").json()["tags"] == []


def test_put_by_sha512_digest(api: Api) -> None:
    image = unique("sha512")
    body = canonical(image_doc(api, image))
    digest = sha512(body)
    r = api.put_manifest(image, digest, body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    got = api.get(image, f"manifests/{digest}")
    assert got.status_code == 200 and got.content == body
    assert got.headers["Docker-Content-Digest"] == digest


def test_put_by_wrong_digest(api: Api) -> None:
    image = unique("wrongdigest")
    body = canonical(image_doc(api, image))
    wrong = sha256(body + b" ")
    assert_error(api.put_manifest(image, wrong, body), 400, "DIGEST_INVALID")
    assert api.head(image, f"manifests/{wrong}").status_code == 404
    assert api.head(image, f"manifests/{sha256(body)}").status_code == 404


def test_put_by_digest_with_several_tags(api: Api) -> None:
    image = unique("tags")
    body = canonical(image_doc(api, image))
    digest = sha256(body)
    r = api.put_manifest(
        image, digest, body, params=[("tag", "1.0"), ("tag", "1"), ("tag", "stable")]
    )
    assert r.status_code == 201, r.text
    assert sorted(t.strip() for t in r.headers["OCI-Tag"].split(",")) == ["1", "1.0", "stable"]
    assert api.get(image, "tags/list").json()["tags"] == ["1", "1.0", "stable"]
    for tag in ("1.0", "1", "stable"):
        assert api.head(image, f"manifests/{tag}").headers["Docker-Content-Digest"] == digest


def test_put_with_an_invalid_extra_tag_changes_nothing(api: Api) -> None:
    image = unique("badtags")
    body = canonical(image_doc(api, image))
    digest = sha256(body)
    r = api.put_manifest(image, digest, body, params=[("tag", "good"), ("tag", "-bad")])
    assert_error(r, 400, "TAG_INVALID")
    assert api.head(image, f"manifests/{digest}").status_code == 404
    assert api.head(image, "manifests/good").status_code == 404


def test_retag_and_idempotent_repush(api: Api) -> None:
    image = unique("retag")
    first = canonical(image_doc(api, image))
    second = canonical(image_doc(api, image))
    assert api.put_manifest(image, "latest", first).status_code == 201
    assert api.put_manifest(image, "latest", first).status_code == 201
    assert api.put_manifest(image, "latest", second).status_code == 201
    assert api.get(image, "manifests/latest").content == second
    # the earlier manifest stays reachable by digest
    assert api.get(image, f"manifests/{sha256(first)}").content == first


def test_manifest_is_scoped_to_its_image(api: Api) -> None:
    image = unique("scoped")
    digest, _ = api.push_image(image, "v1")
    other = unique("other")
    assert_error(api.get(other, "manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.get(other, f"manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        f"{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9, {OCI_INDEX}",
        [DOCKER_LIST, OCI_MANIFEST],
    ],
)
def test_accept_variants_return_the_stored_type(api: Api, accept: str | list[str] | None) -> None:
    image = unique("accept")
    digest, body = api.push_image(image, "v1")
    headers: dict[str, str] = {}
    if isinstance(accept, list):
        headers["Accept"] = ", ".join(accept)
    elif accept is not None:
        headers["Accept"] = accept
    else:
        api.http.headers.pop("Accept", None)
    r = api.get(image, "manifests/v1", headers=headers)
    check_manifest_answer(r, digest, OCI_MANIFEST, body)


# -- indexes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("index_type", "child_type"), [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)]
)
def test_index_of_pushed_children(api: Api, index_type: str, child_type: str) -> None:
    image = unique("index")
    children = []
    for arch in ("amd64", "arm64"):
        digest, body = api.push_image(image, None, media_type=child_type)
        children.append(
            {
                **descriptor(child_type, body, digest),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = canonical({"schemaVersion": 2, "mediaType": index_type, "manifests": children})
    r = api.put_manifest(image, "multi", index, index_type)
    assert r.status_code == 201, r.text
    got = api.get(image, "manifests/multi", headers={"Accept": f"{index_type}, {child_type}"})
    check_manifest_answer(got, sha256(index), index_type, index)
    child = api.get(image, f"manifests/{children[1]['digest']}")
    assert child.status_code == 200 and child.headers["Content-Type"] == child_type


def test_client_without_index_support_gets_the_amd64_image(api: Api) -> None:
    """An old client that accepts only Docker schema 2 images gets the linux/amd64 entry of a
    manifest list instead of the list; a client that accepts lists gets the list."""
    image = unique("no-index")
    children = {}
    for arch in ("arm64", "amd64"):
        digest, body = api.push_image(image, None, media_type=DOCKER_MANIFEST)
        children[arch] = {
            **descriptor(DOCKER_MANIFEST, body, digest),
            "platform": {"os": "linux", "architecture": arch},
        }
    index = canonical(
        {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": list(children.values())}
    )
    assert api.put_manifest(image, "multi", index, DOCKER_LIST).status_code == 201
    old = api.get(image, "manifests/multi", headers={"Accept": DOCKER_MANIFEST})
    assert old.status_code == 200
    assert old.headers["Content-Type"] == DOCKER_MANIFEST
    assert old.headers["Docker-Content-Digest"] == children["amd64"]["digest"]
    new = api.get(image, "manifests/multi", headers={"Accept": f"{DOCKER_LIST}, {DOCKER_MANIFEST}"})
    assert new.headers["Docker-Content-Digest"] == sha256(index)


def test_index_with_a_missing_child(api: Api) -> None:
    image = unique("index-missing")
    digest, body = api.push_image(image, None)
    ghost = sha256(b"no such manifest")
    index = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, body, digest),
                {"mediaType": OCI_MANIFEST, "digest": ghost, "size": 10},
            ],
        }
    )
    r = api.put_manifest(image, "multi", index, OCI_INDEX)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert ghost in r.text
    assert api.head(image, "manifests/multi").status_code == 404


def test_index_child_from_another_image_is_unknown(api: Api) -> None:
    elsewhere = unique("elsewhere")
    digest, body = api.push_image(elsewhere, None)
    image = unique("index-foreign")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, body, digest)],
    }
    assert_error(api.put_manifest(image, "v1", index, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


# -- references must exist -----------------------------------------------------------------
@pytest.mark.parametrize("missing", ["config", "layer"])
def test_missing_blob(api: Api, missing: str) -> None:
    image = unique("missing")
    doc = image_doc(api, image)
    ghost = sha256(random_bytes(64))
    if missing == "config":
        doc["config"]["digest"] = ghost
    else:
        doc["layers"][0]["digest"] = ghost
    r = api.put_manifest(image, "v1", doc)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert ghost in r.text
    assert api.head(image, "manifests/v1").status_code == 404


def test_blob_of_another_image_does_not_count(api: Api) -> None:
    owner = unique("owner")
    doc = image_doc(api, owner)
    image = unique("borrower")
    assert_error(api.put_manifest(image, "v1", doc), 400, "MANIFEST_BLOB_UNKNOWN")


def test_foreign_layers_need_not_be_pushed(api: Api) -> None:
    image = unique("foreign")
    doc = image_doc(api, image, DOCKER_MANIFEST)
    doc["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": sha256(b"windows base layer"),
            "size": 18,
            "urls": ["https://example.invalid/layer"],
        }
    )
    assert api.put_manifest(image, "v1", doc, DOCKER_MANIFEST).status_code == 201


# -- artifacts and subject -----------------------------------------------------------------
def test_artifact_with_empty_config(api: Api) -> None:
    image = unique("artifact")
    empty = api.push_blob(image, EMPTY_JSON)
    payload = b"signature bytes"
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON, empty),
        "layers": [
            descriptor("application/vnd.example.sig", payload, api.push_blob(image, payload))
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    r = api.put_manifest(image, "sig", doc)
    assert r.status_code == 201, r.text
    got = api.get(image, "manifests/sig")
    assert got.json()["artifactType"] == "application/vnd.example.signature.v1"
    assert api.get(image, f"blobs/{empty}").content == EMPTY_JSON


def test_artifact_with_empty_config_never_pushed(api: Api) -> None:
    image = unique("artifact-nocfg")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON),
        "layers": [descriptor(OCI_EMPTY, EMPTY_JSON)],
    }
    assert api.put_manifest(image, "v1", doc).status_code == 201


def test_subject_header(api: Api) -> None:
    image = unique("subject")
    subject_digest, subject_body = api.push_image(image, "v1")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON, api.push_blob(image, EMPTY_JSON)),
        "layers": [descriptor(OCI_EMPTY, EMPTY_JSON)],
        "subject": descriptor(OCI_MANIFEST, subject_body, subject_digest),
    }
    body = canonical(doc)
    r = api.put_manifest(image, sha256(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == subject_digest


def test_subject_may_not_exist_yet(api: Api) -> None:
    image = unique("subject-later")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON),
        "layers": [descriptor(OCI_EMPTY, EMPTY_JSON)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(b"later"), "size": 5},
    }
    r = api.put_manifest(image, "sbom", doc)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == sha256(b"later")


# -- content type and body -----------------------------------------------------------------
def test_content_type_disagrees_with_media_type(api: Api) -> None:
    image = unique("mismatch")
    doc = image_doc(api, image, OCI_MANIFEST)
    assert_error(api.put_manifest(image, "v1", doc, DOCKER_MANIFEST), 400, "MANIFEST_INVALID")
    assert api.head(image, "manifests/v1").status_code == 404


def test_without_content_type_the_body_decides(api: Api) -> None:
    image = unique("notype")
    body = canonical(image_doc(api, image, DOCKER_MANIFEST))
    r = api.put_manifest(image, "v1", body, media_type=None)
    assert r.status_code == 201, r.text
    assert api.get(image, "manifests/v1").headers["Content-Type"] == DOCKER_MANIFEST


def test_oci_manifest_without_media_type_field(api: Api) -> None:
    image = unique("nofield")
    doc = image_doc(api, image)
    del doc["mediaType"]
    body = canonical(doc)
    assert api.put_manifest(image, "v1", body, OCI_MANIFEST).status_code == 201
    assert api.get(image, "manifests/v1").headers["Content-Type"] == OCI_MANIFEST


def test_body_is_stored_byte_for_byte(api: Api) -> None:
    image = unique("bytes")
    doc = image_doc(api, image)
    body = json.dumps(doc, indent=3).encode() + b"\n"
    r = api.put_manifest(image, "v1", body)
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    assert api.get(image, "manifests/v1").content == body


def test_size_limit(api: Api, server: PortwayServer) -> None:
    image = unique("big")
    doc = image_doc(api, image)
    doc["annotations"] = {"pad": ""}
    overhead = len(canonical(doc))
    doc["annotations"]["pad"] = "x" * (MAX_MANIFEST - overhead)
    exact = canonical(doc)
    assert len(exact) == MAX_MANIFEST
    assert api.put_manifest(image, "exact", exact).status_code == 201
    doc["annotations"]["pad"] += "x"
    over = canonical(doc)
    r = api.put_manifest(image, "over", over)
    assert_error(r, 413, "MANIFEST_INVALID")
    assert api.head(image, "manifests/over").status_code == 404


def test_oversized_streamed_manifest(api: Api) -> None:
    """No Content-Length (chunked): the limit still applies while reading."""
    image = unique("bigstream")

    def gen() -> Iterator[bytes]:
        yield b'{"schemaVersion": 2, "annotations": {"pad": "'
        for _ in range(5):
            yield b"y" * (1024 * 1024)
        yield b'"}}'

    r = api.request(
        "PUT", image, "manifests/v1", data=gen(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert_error(r, 413, "MANIFEST_INVALID")


def test_strict_content_types(server: PortwayServer) -> None:
    strict, lax = Api(server, "docker-strict"), Api(server, "docker-hosted")
    for api in (strict, lax):
        image = unique("custom")
        doc = image_doc(api, image)
        del doc["mediaType"]
        custom = "application/vnd.example.custom+json"
        r = api.put_manifest(image, "v1", doc, custom)
        if api is strict:
            assert_error(r, 400, "MANIFEST_INVALID")
            assert api.head(image, "manifests/v1").status_code == 404
            # known types are still accepted
            assert api.put_manifest(image, "v2", doc, OCI_MANIFEST).status_code == 201
        else:
            assert r.status_code == 201, r.text
            assert api.get(image, "manifests/v1").headers["Content-Type"] == custom


def test_schema1_is_refused(api: Api) -> None:
    image = unique("schema1")
    doc = {"schemaVersion": 1, "name": image, "tag": "v1", "fsLayers": [], "history": []}
    r = api.put_manifest(
        image, "v1", doc, "application/vnd.docker.distribution.manifest.v1+prettyjws"
    )
    assert r.status_code == 400
    assert_error(r, 400, "MANIFEST_INVALID")


# -- delete --------------------------------------------------------------------------------
def test_delete_by_digest(api: Api) -> None:
    image = unique("del")
    digest, _ = api.push_image(image, "v1")
    assert api.put_manifest(image, "v2", api.get(image, "manifests/v1").content).status_code == 201
    r = api.request("DELETE", image, f"manifests/{digest}")
    assert r.status_code == 202
    assert_error(api.get(image, f"manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.get(image, "manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.get(image, "manifests/v2"), 404, "MANIFEST_UNKNOWN")
    assert "v1" not in (api.get(image, "tags/list").json().get("tags") or [])
    assert_error(api.request("DELETE", image, f"manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


def test_delete_by_tag_untags(api: Api) -> None:
    image = unique("untag")
    digest, body = api.push_image(image, "v1")
    assert api.put_manifest(image, "v2", body).status_code == 201
    r = api.request("DELETE", image, "manifests/v1")
    assert r.status_code == 202
    assert_error(api.get(image, "manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert api.get(image, "manifests/v2").status_code == 200
    assert api.get(image, f"manifests/{digest}").content == body
    assert api.get(image, "tags/list").json()["tags"] == ["v2"]
    assert_error(api.request("DELETE", image, "manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_get_unknown(api: Api) -> None:
    image = unique("unknown")
    api.push_image(image, "v1")
    assert_error(api.get(image, "manifests/v9"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.get(image, f"manifests/{sha256(b'x')}"), 404, "MANIFEST_UNKNOWN")
    assert api.head(image, "manifests/v9").status_code == 404
