"""OCI image layouts built on disk without any container engine.

Layers are real gzipped tar archives, each holding one file of pseudo-random bytes under
`portway-test/`, so engines can unpack them and tests can look for the files after a pull.
Everything is deterministic for a given `seed`: the same call writes the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
FILE_DIR = "portway-test"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzipped blob
    diff_id: str  # of the uncompressed tar
    size: int
    path: str  # the file inside the layer, e.g. "portway-test/layer-0-1234.bin"
    file_sha256: str  # hex digest of that file's content


@dataclass(frozen=True)
class OciImage:
    layout: Path
    tag: str
    manifest_digest: str
    manifest_size: int
    config_digest: str
    layers: tuple[Layer, ...]
    architecture: str = "amd64"
    os: str = "linux"

    @property
    def ref(self) -> str:
        """`oci:DIR:TAG`, as skopeo and podman name it."""
        return f"oci:{self.layout}:{self.tag}"

    @property
    def files(self) -> dict[str, str]:
        """Path inside the image → sha256 hex of its content."""
        return {layer.path: layer.file_sha256 for layer in self.layers}

    @property
    def image_id(self) -> str:
        """Docker and podman name an image by its config digest."""
        return self.config_digest


@dataclass(frozen=True)
class MultiArchImage:
    layout: Path
    tag: str
    index_digest: str
    images: tuple[OciImage, ...] = field(default_factory=tuple)

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def manifest_digests(self) -> dict[tuple[str, str], str]:
        """(architecture, os) → manifest digest."""
        return {(i.architecture, i.os): i.manifest_digest for i in self.images}


class _Layout:
    """Writes blobs into an OCI layout and keeps index.json up to date."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.index_path = root / "index.json"
        if not self.index_path.exists():
            self._write_index({"schemaVersion": 2, "manifests": []})

    def put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.exists():
            path.write_bytes(data)
        return digest

    def put_json(self, doc: dict[str, Any]) -> tuple[str, int, bytes]:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        return self.put(data), len(data), data

    def tag(self, tag: str, media_type: str, digest: str, size: int) -> None:
        index = json.loads(self.index_path.read_text())
        manifests = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
        manifests.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {REF_NAME: tag},
            }
        )
        index["manifests"] = manifests
        self._write_index(index)

    def _write_index(self, index: dict[str, Any]) -> None:
        self.index_path.write_text(json.dumps(index, indent=2))


def layer_tar(path: str, content: bytes) -> bytes:
    """An uncompressed tar holding `path` (and its parent directory), with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parent = tarfile.TarInfo(path.rpartition("/")[0])
        parent.type = tarfile.DIRTYPE
        parent.mode = 0o755
        parent.mtime = 1_700_000_000
        tar.addfile(parent)
        info = tarfile.TarInfo(path)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def _write_image(
    layout: _Layout,
    *,
    layers: int,
    layer_size: int,
    seed: int,
    architecture: str,
    os_name: str,
) -> tuple[str, int, str, tuple[Layer, ...]]:
    rng = random.Random(f"{seed}/{architecture}/{os_name}")
    written: list[Layer] = []
    for i in range(layers):
        content = rng.randbytes(layer_size)
        path = f"{FILE_DIR}/layer-{i}-{seed}-{architecture}.bin"
        tar = layer_tar(path, content)
        blob = gzip_bytes(tar)
        digest = layout.put(blob)
        written.append(
            Layer(
                digest=digest,
                diff_id=sha256_digest(tar),
                size=len(blob),
                path=path,
                file_sha256=hashlib.sha256(content).hexdigest(),
            )
        )
    config = {
        "architecture": architecture,
        "os": os_name,
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Cmd": ["/portway-test/none"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.example.portway-test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in written]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(layers)
        ],
    }
    config_digest, config_size, _ = layout.put_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in written
        ],
    }
    digest, size, _ = layout.put_json(manifest)
    return digest, size, config_digest, tuple(written)


def make_oci_layout(
    directory: Path,
    tag: str = "latest",
    *,
    layers: int = 3,
    layer_size: int = 256 * 1024,
    seed: int = 0,
    architecture: str = "amd64",
    os_name: str = "linux",
) -> OciImage:
    """Write (or add `tag` to) an OCI layout at `directory` holding a single-platform image."""
    layout = _Layout(directory)
    digest, size, config_digest, written = _write_image(
        layout,
        layers=layers,
        layer_size=layer_size,
        seed=seed,
        architecture=architecture,
        os_name=os_name,
    )
    layout.tag(tag, OCI_MANIFEST, digest, size)
    return OciImage(
        layout=directory,
        tag=tag,
        manifest_digest=digest,
        manifest_size=size,
        config_digest=config_digest,
        layers=written,
        architecture=architecture,
        os=os_name,
    )


def make_multiarch_layout(
    directory: Path,
    tag: str = "latest",
    *,
    platforms: tuple[tuple[str, str], ...] = (("amd64", "linux"), ("arm64", "linux")),
    layers: int = 2,
    layer_size: int = 128 * 1024,
    seed: int = 0,
) -> MultiArchImage:
    """Write an OCI image index over one image per (architecture, os) and tag it `tag`."""
    layout = _Layout(directory)
    images: list[OciImage] = []
    entries: list[dict[str, Any]] = []
    for architecture, os_name in platforms:
        digest, size, config_digest, written = _write_image(
            layout,
            layers=layers,
            layer_size=layer_size,
            seed=seed,
            architecture=architecture,
            os_name=os_name,
        )
        images.append(
            OciImage(
                layout=directory,
                tag=tag,
                manifest_digest=digest,
                manifest_size=size,
                config_digest=config_digest,
                layers=written,
                architecture=architecture,
                os=os_name,
            )
        )
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"architecture": architecture, "os": os_name},
            }
        )
    index_digest, index_size, _ = layout.put_json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    )
    layout.tag(tag, OCI_INDEX, index_digest, index_size)
    return MultiArchImage(
        layout=directory, tag=tag, index_digest=index_digest, images=tuple(images)
    )


def read_layout_manifest(directory: Path, tag: str) -> tuple[str, dict[str, Any]]:
    """The digest and parsed manifest (or index) that `tag` names in an OCI layout."""
    index = json.loads((directory / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            digest: str = entry["digest"]
            blob = directory / "blobs" / "sha256" / digest.removeprefix("sha256:")
            return digest, json.loads(blob.read_bytes())
    raise KeyError(f"tag {tag!r} not in {directory}/index.json")


def files_in_layer(blob: bytes) -> dict[str, str]:
    """Regular files in a (possibly gzipped) layer tar → sha256 hex of their content."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    out: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                out[member.name.removeprefix("./")] = hashlib.sha256(fh.read()).hexdigest()
    return out


def files_in_docker_archive(archive: Path) -> dict[str, str]:
    """Files of every layer of a `docker save` / `podman save` archive → sha256 hex."""
    out: dict[str, str] = {}
    with tarfile.open(archive, mode="r:*") as tar:
        manifest_fh = tar.extractfile("manifest.json")
        assert manifest_fh is not None
        manifest = json.loads(manifest_fh.read())
        for layer_path in manifest[0]["Layers"]:
            fh = tar.extractfile(layer_path)
            assert fh is not None
            out.update(files_in_layer(fh.read()))
    return out
